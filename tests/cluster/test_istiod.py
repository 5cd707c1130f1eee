"""The chart, k8s/ and the filter module against a real istiod (pilot-discovery from the
pinned istio.io/istio module, `make deps-go`) connected to the suite's kube-apiserver
(tests/cluster/istiod.py: Istio's own charts give its config and webhooks).

- validation: every Istio object of every environment's render and of k8s/ goes through the
  API server to istiod's validation webhook (dry-run server-side apply) and is accepted; an
  invalid one is refused with istiod's message (the webhook is really called);
- injection (defect 3): every workload's pod, created in a namespace labelled as the
  ApplicationSet labels it (istio-injection: enabled, Pod Security restricted), is injected by
  istiod and admitted with Istio CNI on (values pilot.cni.enabled, the injector ConfigMap),
  and refused by Pod Security with CNI off (istio-init needs NET_ADMIN, NET_RAW and root);
- xDS (defect 8): the gateway's configuration as istiod generates it for a router proxy
  (tools/istio/xdsclient, ADS over istiod's plaintext port): the Tollgate filter is the first
  HTTP filter, ahead of jwt_authn / istio_authn / RBAC, in EnvoyFilter and WasmPlugin mode; the
  clusters the filter's config names exist in the gateway's CDS; the ECDS config carries the
  pin and the URL, and istio-agent's conversion (istio.io/istio/pkg/wasm) fetches the module
  from the real auth server and accepts it with the chart's pin, refuses a wrong one;
- module fetch (tools/istio/wasmfetch): Istio's module cache fetches the module over HTTP from
  the real auth server's module port and over OCI from a registry serving the layout
  `make module` writes, and accepts it with the chart's pins only.

What it cannot show here: no kubelet, so no pod starts: injected pods are admitted, never
run; and no Envoy or istio-proxy runs the generated config (the xDS client is the proxy's
side of ADS, not Envoy: listeners are checked as istiod sends them, not as Envoy loads them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import time

import pytest
import yaml

import istiod as istiodlib
from chartlib import FILTER_WASM, K8S
from clusterlib import ENV_FILES, ROOT, argocd_values, docs_of, kustomize_docs, render_in
from test_apiserver import NS_LABELS, _apply, _pods_of

sys.path.insert(0, str(ROOT / "tests/e2e"))
sys.path.insert(0, str(ROOT / "plugin/tools"))

ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io",
                "extensions.istio.io")
HCM = "envoy.filters.network.http_connection_manager"
GW_IP = "10.1.0.9"


def _is_istio(d: dict) -> bool:
    return d["apiVersion"].split("/")[0] in ISTIO_GROUPS


def _values(env: str, overrides: dict | None = None) -> dict:
    return argocd_values(env, overrides)


@pytest.fixture(scope="module")
def istiod(cluster, tmp_path_factory):
    d = istiodlib.start(cluster, tmp_path_factory.mktemp("istiod"), cni=True)
    try:
        yield d
    finally:
        istiodlib.stop(d)


@pytest.fixture(scope="module")
def gobin(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gobin"))


# ---------------------------------------------------------------- istiod itself

def test_istio_module_pin_is_one():
    """The module istiod and the test programs are built from (tools/istio/go.mod) is the one
    the CRDs and Istio's charts come from."""
    mod = (istiodlib.TOOLS / "go.mod").read_text()
    version = istiodlib.ISTIO_MODULE.split("@")[1]
    assert re.search(rf"^\tistio\.io/istio {re.escape(version)}$", mod, re.M), mod[:400]
    assert "\ntool istio.io/istio/pilot/cmd/pilot-discovery\n" in mod


def test_webhooks_carry_istiods_own_ca(istiod):
    """The caBundle istiod patched into every webhook is its self-signed root (the one it
    publishes in istio-ca-root-cert), and its serving cert on the webhook port is signed by
    it for 127.0.0.1."""
    root = istiodlib.root_cert(istiod.cluster)
    bundles = istiodlib.ca_bundles(istiod.cluster)
    assert len(bundles) >= 3 and all(b == root for b in bundles.values()), bundles.keys()
    ca = istiod.log.parent / "istiod-root.pem"
    ca.write_bytes(root)
    import requests

    # TLS verified against that root, host 127.0.0.1: the API server's view of the webhook
    r = requests.post(f"https://127.0.0.1:{istiod.https}/validate", data=b"{}",
                      headers={"content-type": "application/json"}, verify=str(ca), timeout=10)
    assert r.status_code < 500, r.text


# ---------------------------------------------------------------- validation webhook

@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_validation_webhook_accepts_every_istio_object_of_the_chart(istiod, env):
    ns = f"ivw-{env}"
    istiod.cluster.namespace(ns, NS_LABELS)
    for kind in ("envoyFilter", "wasmPlugin"):
        docs = [d for d in docs_of(render_in(_values(env, {"edge": {"kind": kind}}), ns))
                if _is_istio(d)]
        assert docs, env
        proc = _apply(istiod.cluster, docs, ns, "--dry-run=server", check=False)
        assert proc.returncode == 0, f"{env}/{kind}: {proc.stderr}"
        assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


@pytest.mark.parametrize("overlay", ["dev", "staging", "production"])
def test_validation_webhook_accepts_every_istio_object_of_k8s(istiod, overlay):
    docs = [d for d in kustomize_docs(K8S / "overlays" / overlay) if d["kind"] != "Kustomization"]
    for d in docs:
        if d["kind"] == "Namespace":
            istiod.cluster.namespace(d["metadata"]["name"], d["metadata"].get("labels"))
    istio = [d for d in docs if _is_istio(d)]
    assert istio, overlay
    proc = _apply(istiod.cluster, istio, "default", "--dry-run=server", check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(istio), proc.stdout


def test_validation_webhook_is_called_and_refuses_an_invalid_object(istiod):
    """Not vacuous: objects the CRD schema accepts but istiod's validation refuses are
    refused through the API server, with istiod's message. One is the chart's own
    EnvoyFilter with a match no proxy could satisfy; one the dev
    Gateway of k8s/ with a host istiod refuses."""
    ns = "ivw-negative"
    istiod.cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(_values("dev"), ns))
    ef = copy.deepcopy(next(d for d in docs if d["kind"] == "EnvoyFilter"))
    http = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER")
    # a sub-filter (an HTTP filter) under a network filter that is not a connection manager
    http["match"]["listener"]["filterChain"]["filter"] = {
        "name": "envoy.filters.network.tcp_proxy", "subFilter": {"name": "envoy.filters.http.router"}}
    proc = _apply(istiod.cluster, [ef], ns, "--dry-run=server", check=False)
    assert proc.returncode != 0, proc.stdout
    assert 'admission webhook "validation.istio.io" denied the request' in proc.stderr, proc.stderr
    assert "subfilter match requires filter match with " + HCM in proc.stderr, proc.stderr
    gw = copy.deepcopy(next(d for d in kustomize_docs(K8S / "overlays" / "dev")
                            if d["kind"] == "Gateway"))
    gw["metadata"]["namespace"] = ns
    gw["spec"]["servers"][1]["hosts"] = ["shop/*/bad"]
    proc = _apply(istiod.cluster, [gw], ns, "--dry-run=server", check=False)
    assert proc.returncode != 0, proc.stdout
    assert 'admission webhook "validation.istio.io" denied the request' in proc.stderr, proc.stderr


# ---------------------------------------------------------------- injection + PSS (defect 3)

def _wait_injection_mode(istiod, cni: bool) -> None:
    """istiod has loaded the injector ConfigMap with this CNI switch: a probe pod in an
    injection namespace without Pod Security gets istio-validation (CNI) or istio-init."""
    ns = "inject-probe"
    istiod.cluster.namespace(ns, {"istio-injection": "enabled"})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": ns},
           "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}
    want = "istio-validation" if cni else "istio-init"
    deadline = time.monotonic() + 120
    seen = None
    while time.monotonic() < deadline:
        p = istiod.cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                   input=yaml.safe_dump(pod), check=False)
        if p.returncode == 0:
            seen = [c["name"] for c in json.loads(p.stdout)["spec"].get("initContainers") or []]
            if want in seen:
                return
        time.sleep(1)
    raise AssertionError(f"injection never switched to {want}: last init containers {seen}; "
                         f"{istiod.log_tail()}")


def _create_pods(istiod, env: str, ns: str) -> list[tuple[str, subprocess.CompletedProcess]]:
    istiod.cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(_values(env), ns))
    sas = [d for d in docs if d["kind"] == "ServiceAccount"]
    istiod.cluster.kubectl("apply", "--server-side", "--field-manager=test", "-n", ns, "-f", "-",
                           input=yaml.safe_dump_all(sas))
    pods = _pods_of(docs, ns)
    assert len(pods) >= 3
    return [(p["metadata"]["name"], istiod.cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(p),
        check=False)) for p in pods]


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_injected_pods_are_admitted_by_pss_restricted_with_cni(istiod, env):
    """Istio CNI on: the injected pod has istio-validation (no capabilities, non-root) and
    istio-proxy, and every workload's pod is admitted under restricted."""
    istiod.set_cni(True)
    _wait_injection_mode(istiod, cni=True)
    ns = f"inject-cni-{env}"
    injected = 0
    for name, proc in _create_pods(istiod, env, ns):
        assert proc.returncode == 0, f"{env} {name}: {proc.stderr}"
        assert "violate" not in proc.stderr, proc.stderr
        spec = json.loads(proc.stdout)["spec"]
        names = [c["name"] for c in (spec.get("initContainers") or []) + spec["containers"]]
        if "istio-proxy" in names:
            injected += 1
            assert "istio-validation" in names and "istio-init" not in names, names
    # the auth server (and the other meshed workloads) were really injected
    assert injected >= 1, "no pod was injected: the injection webhook was not called"


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_injected_pods_are_refused_by_pss_restricted_without_cni(istiod, env):
    """Istio CNI off: istio-init (NET_ADMIN, NET_RAW, runAsUser 0) makes every injected pod
    violate restricted, and Pod Security (not istiod) refuses it; pods that opt out of
    injection are still admitted."""
    istiod.set_cni(False)
    try:
        _wait_injection_mode(istiod, cni=False)
        ns = f"inject-nocni-{env}"
        refused = 0
        for name, proc in _create_pods(istiod, env, ns):
            if proc.returncode == 0:
                spec = json.loads(proc.stdout)["spec"]
                names = [c["name"] for c in (spec.get("initContainers") or []) + spec["containers"]]
                assert "istio-proxy" not in names, f"{name} injected and admitted: {names}"
                continue
            refused += 1
            assert 'violates PodSecurity "restricted:latest"' in proc.stderr, proc.stderr
            assert 'container "istio-init"' in proc.stderr, proc.stderr
            assert re.search(r"NET_ADMIN|runAsNonRoot|runAsUser", proc.stderr), proc.stderr
        assert refused >= 1, "no injected pod was refused"
    finally:
        istiod.set_cni(True)


# ---------------------------------------------------------------- xDS (defect 8)

def _module_authserver():
    """The real release auth server serving the built module on its module port."""
    from harness.authserver import AuthServer
    from harness.ports import free_port

    if not FILTER_WASM.is_file():
        pytest.fail(f"{FILTER_WASM} is missing: run `make build-filter`")
    port = free_port()
    auth = AuthServer(env={"TOLLGATE_EDGE_MODULE": str(FILTER_WASM),
                           "TOLLGATE_MODULE_LISTEN": f"127.0.0.1:{port}"})
    return auth, f"http://127.0.0.1:{port}/edge/module.wasm"


@pytest.fixture(scope="module")
def module_url():
    try:
        auth, url = _module_authserver()
    except FileNotFoundError as e:
        pytest.fail(f"{e}")
    try:
        yield url
    finally:
        auth.stop()


def _xds(istiod, gobin: str, labels: dict, pod: str, cache) -> dict:
    node = f"router~{GW_IP}~{pod}.{istiodlib.NAMESPACE}~{istiodlib.NAMESPACE}.svc.cluster.local"
    meta = {"NAMESPACE": istiodlib.NAMESPACE, "LABELS": labels, "WORKLOAD_NAME": pod,
            "ISTIO_VERSION": istiodlib.istio_version(), "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local", "SERVICE_ACCOUNT": "istio-ingressgateway",
            "INSTANCE_IPS": GW_IP, "NAME": pod}
    p = subprocess.run([istiodlib.go_program("xdsclient", gobin),
                        "-addr", f"127.0.0.1:{istiod.grpc}", "-node", node,
                        "-meta", json.dumps(meta), "-cache", str(cache)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["stderr"] = p.stderr
    return out


def _http_filter_chains(listeners: list[dict]) -> list[list[str]]:
    chains = []
    for lst in listeners or []:
        for fc in lst.get("filterChains") or []:
            for f in fc.get("filters") or []:
                if f["name"] == HCM:
                    chains.append([h["name"] for h in f["typedConfig"].get("httpFilters") or []])
    return chains


def _clusters_named(cfg) -> set[str]:
    """Every `cluster` value of the filter's JSON configuration."""
    out = set()
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k == "cluster" and isinstance(v, str):
                out.add(v)
            else:
                out |= _clusters_named(v)
    elif isinstance(cfg, list):
        for v in cfg:
            out |= _clusters_named(v)
    return out


def _install_for_xds(istiod, kind: str, module_url: str, sha256: str | None = None):
    """The chart (dev values, server-side applied as Argo CD does) with its own gateway
    selector, the dev Gateway of k8s/ pointed at it, and a RequestAuthentication +
    AuthorizationPolicy on that gateway (so jwt_authn, istio_authn and RBAC are in the chain)."""
    release = {"envoyFilter": "tg-ef", "wasmPlugin": "tg-wp"}[kind] + ("-bad" if sha256 else "")
    ns = f"xds-{release}"
    labels = {"istio": f"gw-{release}"}
    istiod.cluster.namespace(ns, NS_LABELS)
    edge = {"kind": kind, "workloadSelector": labels, "module": {"url": module_url}}
    if sha256:
        edge["module"]["sha256"] = sha256
    docs = [d for d in docs_of(render_in(_values("dev", {"edge": edge}), ns, release=release))
            if "test" not in ((d["metadata"].get("annotations") or {}).get("helm.sh/hook", ""))]
    _apply(istiod.cluster, docs, ns)
    gw = copy.deepcopy(next(d for d in kustomize_docs(K8S / "overlays" / "dev")
                            if d["kind"] == "Gateway"))
    gw["metadata"].update({"namespace": ns, "name": f"{release}-gw"})
    gw["spec"]["selector"] = labels
    sel = {"matchLabels": labels}
    policies = [
        gw,
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": f"{release}-jwt", "namespace": istiodlib.NAMESPACE},
         "spec": {"selector": sel, "jwtRules": [{
             "issuer": "https://issuer.example", "jwks": json.dumps({"keys": [{
                 "kty": "EC", "crv": "P-256", "kid": "k",
                 "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                 "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": f"{release}-authz", "namespace": istiodlib.NAMESPACE},
         "spec": {"selector": sel, "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}},
    ]
    istiod.cluster.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-",
                           input=yaml.safe_dump_all(policies))
    name = next(d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin"))
    return release, labels, docs, name


def _gateway_config(istiod, gobin, labels, release, filter_name, tmp_path) -> dict:
    """Ask istiod until the gateway's listeners carry the filter (istiod has seen the
    objects), then return that config."""
    deadline = time.monotonic() + 120
    out = None
    while time.monotonic() < deadline:
        out = _xds(istiod, gobin, labels, f"{release}-gw-0", tmp_path / "wasm-cache")
        chains = _http_filter_chains(out["listeners"])
        if chains and all(any(filter_name in f for f in c) for c in chains) and \
                all("envoy.filters.http.rbac" in c for c in chains):
            return out
        time.sleep(1)
    raise AssertionError(f"the gateway's listeners never carried {filter_name}: "
                         f"{_http_filter_chains(out['listeners']) if out else None}; "
                         f"{istiod.log_tail()}")


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_gateway_config_from_istiod_puts_the_filter_first(istiod, gobin, module_url, kind,
                                                          tmp_path):
    release, labels, docs, obj = _install_for_xds(istiod, kind, module_url)
    fname = obj["metadata"]["name"]
    out = _gateway_config(istiod, gobin, labels, release, fname, tmp_path)
    chains = _http_filter_chains(out["listeners"])
    for chain in chains:
        mine = [i for i, f in enumerate(chain) if fname in f]
        assert len(mine) == 1, chain
        i = mine[0]
        for other in ("envoy.filters.http.jwt_authn", "istio_authn", "envoy.filters.http.rbac",
                      "envoy.filters.http.ext_authz"):
            if other in chain:
                assert i < chain.index(other), chain
        assert "envoy.filters.http.jwt_authn" in chain and "envoy.filters.http.rbac" in chain
        if kind == "envoyFilter":
            # INSERT_FIRST: the very first HTTP filter
            assert i == 0, chain
        else:
            # AUTHN phase: after Istio's own pre-authn filters only (no authn/authz before it)
            assert all(not re.search(r"authn|authz|rbac|jwt", f) for f in chain[:i]), chain

    # the ECDS config istiod sends: the module's URL and pin
    [ext] = [e for e in out["ecds"] if fname in e.get("name", "")]
    wasm = ext["typedConfig"]["config"]
    remote = wasm["vmConfig"]["code"]["remote"]
    pin = yaml.safe_load((ROOT / "chart/values.yaml").read_text())["edge"]["module"]["pins"]["file"]
    assert remote["httpUri"]["uri"] == module_url, remote
    assert remote["sha256"] == pin, remote

    # the clusters the filter's configuration names exist in the gateway's CDS
    cfg = json.loads(wasm["configuration"]["value"])
    named = _clusters_named(cfg)
    assert named, cfg
    if kind == "envoyFilter":
        # the EnvoyFilter's remote source names the auth server's cluster too
        named.add(remote["httpUri"]["cluster"])
    missing = named - set(out["clusters"])
    assert not missing, f"{missing} not in CDS: {[c for c in out['clusters'] if 'authserver' in c]}"

    # istio-agent's conversion: fetched from the auth server, pin checked, a local file
    [conv] = [e for e in out["converted"] if fname in e.get("name", "")]
    assert conv["typedConfig"]["@type"].endswith("envoy.extensions.filters.http.wasm.v3.Wasm"), \
        (conv, out["stderr"][-3000:])
    local = conv["typedConfig"]["config"]["vmConfig"]["code"]
    assert "local" in local, (conv, out["stderr"][-3000:])
    with open(local["local"]["filename"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == pin


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_filter_config_names_the_auth_server_cluster(istiod, gobin, module_url, kind, tmp_path):
    """`auth_server.cluster` of the filter's config (the auth server's cluster for the
    filter's own calls) is a cluster of the gateway's CDS."""
    release, labels, docs, obj = _install_for_xds(istiod, kind, module_url)
    fname = obj["metadata"]["name"]
    if kind == "envoyFilter":
        patch = next(p for p in obj["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG")
        cfg = json.loads(patch["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
    else:
        cfg = obj["spec"]["pluginConfig"]
    cluster = (cfg.get("auth_server") or {}).get("cluster")
    if not cluster:
        pytest.skip("the rendered filter config has no auth_server.cluster (not in this chart "
                    "version): only the JWKS cluster is checked, by "
                    "test_gateway_config_from_istiod_puts_the_filter_first")
    out = _gateway_config(istiod, gobin, labels, release, fname, tmp_path)
    assert cluster in out["clusters"], [c for c in out["clusters"] if "authserver" in c]


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_agent_refuses_the_module_with_a_wrong_pin(istiod, gobin, module_url, kind, tmp_path):
    """The same chain with a pin that is not the module's: istio-agent's conversion refuses
    the download (checksum mismatch) and, FAIL_CLOSE, hands Envoy a deny-all RBAC filter."""
    wrong = hashlib.sha256(b"not the module").hexdigest()
    release, labels, docs, obj = _install_for_xds(istiod, kind, module_url, sha256=wrong)
    fname = obj["metadata"]["name"]
    out = _gateway_config(istiod, gobin, labels, release, fname, tmp_path)
    [ext] = [e for e in out["ecds"] if fname in e.get("name", "")]
    assert ext["typedConfig"]["config"]["vmConfig"]["code"]["remote"]["sha256"] == wrong
    [conv] = [e for e in out["converted"] if fname in e.get("name", "")]
    assert conv["typedConfig"]["@type"].endswith("envoy.extensions.filters.http.rbac.v3.RBAC"), conv
    # empty rules (ALLOW, no policy): deny all
    assert conv["typedConfig"].get("rules") == {}, conv
    assert conv["typedConfig"]["rulesStatPrefix"] == "wasm-default-deny", conv
    assert "which does not match" in out["stderr"] and wrong in out["stderr"], out["stderr"][-3000:]


# ---------------------------------------------------------------- module fetch (pkg/wasm)

def _wasmfetch(gobin, *args) -> dict:
    p = subprocess.run([istiodlib.go_program("wasmfetch", gobin), *args],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_istio_wasm_cache_fetches_the_module_over_http_with_the_pin(gobin, module_url):
    pins = yaml.safe_load((ROOT / "chart/values.yaml").read_text())["edge"]["module"]["pins"]
    ok = _wasmfetch(gobin, "-url", module_url, "-sha256", pins["file"])
    assert ok["ok"] and ok["file_sha256"] == pins["file"], ok
    wrong = hashlib.sha256(b"x").hexdigest()
    bad = _wasmfetch(gobin, "-url", module_url, "-sha256", wrong)
    assert not bad["ok"] and "which does not match" in bad["error"] and wrong in bad["error"], bad
    # the OCI pin is not the file's: Istio compares http(s) modules with the file's sha256
    assert not _wasmfetch(gobin, "-url", module_url, "-sha256", pins["oci"])["ok"]


def test_istio_wasm_cache_fetches_the_module_over_oci_with_the_pin(gobin, tmp_path):
    import module_pins

    pins = yaml.safe_load((ROOT / "chart/values.yaml").read_text())["edge"]["module"]["pins"]
    layout = tmp_path / "oci"
    written = module_pins.write_layout(FILTER_WASM.read_bytes(), layout, "test")
    assert written == pins, "rebuild the filter and run `make module-pins`"
    ok = _wasmfetch(gobin, "-layout", str(layout), "-sha256", pins["oci"])
    assert ok["ok"] and ok["file_sha256"] == pins["file"], ok
    bad = _wasmfetch(gobin, "-layout", str(layout), "-sha256", pins["file"])
    assert not bad["ok"] and "which does not match" in bad["error"], bad
