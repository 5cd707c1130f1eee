"""Every metric name the chart's alerts (chart/files/alerts/alerts.yaml, the PrometheusRule),
the runbooks' queries (docs/runbooks.md) and the dashboard (chart/files/dashboard.json) use
is one some component really exports:

- `tollgate_*`: the real auth server's `/metrics` and the real Envoy + filter's
  `/stats/prometheus` (Istio's merged endpoint serves Envoy's Prometheus output), after
  traffic through both (the auth server shows a counter only once it counted);
- `redis_*`, `kube_*`, `certmanager_*`, `istio_agent_*`: the sources of redis_exporter,
  kube-state-metrics, cert-manager and istio-agent, from the Go module cache
  (`go mod download`);
- `up`: written by Prometheus itself for every scrape target.

Issue 11, defect 13: the edge alerts used `envoy_wasmcustom_tollgate_*`, which Envoy never
exports (the filter's stats live in the custom stat namespace `wasmcustom`, which Envoy's
Prometheus output drops: `tollgate_allowed`), so they could never fire.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import requests
import yaml

from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import Envoy, filter_config, issuer_entry

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "chart/files/alerts/alerts.yaml"
DASHBOARD = REPO / "chart/files/dashboard.json"
RUNBOOKS = REPO / "docs/runbooks.md"

# The Go modules that own the names the chart does not export itself, at the versions the
# chart runs (redis_exporter: redis.metrics.exporter.image.tag) or documents.
REDIS_EXPORTER = ("github.com/oliver006/redis_exporter", "v1.62.0")
KUBE_STATE_METRICS = ("k8s.io/kube-state-metrics/v2", "v2.13.0")
CERT_MANAGER = ("github.com/cert-manager/cert-manager", "v1.21.2")
ISTIO = ("istio.io/istio", "v0.0.0-20260827124520-eed52ebb66ad")

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}


# ------------------------------------------------------------------ names in PromQL
def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, `__name__` regexes) an expression selects. A small scanner, enough
    for the expressions of this repository: selectors, functions, aggregations, binary
    operators, ranges, subqueries, offsets, strings."""
    regexes, names = set(), set()

    def selector(m: re.Match) -> str:
        for op, value in re.findall(r'__name__\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"', m.group(0)):
            (regexes if op == "=~" else names).add(value)
        return " "

    e = re.sub(r"\{[^{}]*\}", selector, expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)          # label_replace arguments, ...
    e = re.sub(r"\[[^\]]*\]", " ", e)                   # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        start, end = m.span()
        word = m.group(0)
        if start and (e[start - 1].isdigit() or e[start - 1] == "."):
            continue                                    # 1d, 1e3, 0.5
        if word.lower() in KEYWORDS or re.match(r"\s*\(", e[end:]):
            continue                                    # a keyword or a function call
        names.add(word)
    return names, regexes


def test_the_scanner_finds_names_and_only_names():
    n, r = names_in('sum by (pod) (increase(tollgate_x[10m])) > 0 and sum(rate('
                    'tollgate_y{namespace="a", le=~"b"}[1h] offset 1d)) == 0')
    assert (n, r) == ({"tollgate_x", "tollgate_y"}, set())
    n, r = names_in('sum by (reason) (rate(label_replace({__name__=~"t_.+"}, "reason", '
                    '"$1", "__name__", "t_(.+)")[5m:1m])) / (x_total > 0) > 0.5')
    assert (n, r) == ({"x_total"}, {"t_.+"})
    n, _ = names_in('histogram_quantile(0.99, sum by (le) (rate(h_bucket{a="1"}[5m]))) > 1e3')
    assert n == {"h_bucket"}


def alert_exprs() -> list[tuple[str, str]]:
    raw = ALERTS.read_text()
    raw = re.sub(r"__T_\w+__|__REPLICAS__", "1", raw)     # numeric placeholders
    return [(f"alert {r['alert']}", r["expr"]) for g in yaml.safe_load(raw) for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    return [(f"panel {p['title']!r}", t["expr"])
            for p in d["panels"] for t in p.get("targets", []) if t.get("expr")]


def runbook_exprs() -> list[tuple[str, str]]:
    text = RUNBOOKS.read_text()
    out = []
    for span in re.findall(r"`([^`\n]+)`", text):
        if re.search(r"\b(rate|increase|sum|max|min|count|histogram_quantile|absent)\s*(by\s*\([^)]*\)\s*)?\(", span) \
                or re.fullmatch(r"[a-z_]+\{[^}]*\}.*", span):
            if not span.startswith(("kubectl", "curl", "redis-cli", "helm", "istioctl")):
                # `<redis.sentinel.replicas>`: a value the reader fills in.
                out.append(("docs/runbooks.md", re.sub(r"<[^<>]*>", "1", span)))
    return out


def all_exprs() -> list[tuple[str, str]]:
    return alert_exprs() + dashboard_exprs() + runbook_exprs()


def test_the_queries_are_found():
    assert len(alert_exprs()) >= 30
    assert len(dashboard_exprs()) >= 20
    assert len(runbook_exprs()) >= 20


# ------------------------------------------------------------------ what the components export
def exposition_names(text: str) -> set[str]:
    """Sample names of a Prometheus text exposition (`_bucket`/`_sum`/`_count` included)."""
    out = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return out


def authserver_metrics(auth: AuthServer) -> str:
    """`/metrics` of the auth server: on its admin listener when it has one, else on the
    main listener."""
    for base in (getattr(auth, "admin_base", None), auth.base):
        if not base:
            continue
        r = requests.get(f"{base}/metrics", timeout=5,
                         headers={"authorization": f"Bearer {auth.admin_token}"})
        if r.status_code == 200 and "# TYPE" in r.text:
            return r.text
    raise AssertionError("the auth server serves no /metrics")


@pytest.fixture(scope="module")
def exported(echo, wasm) -> dict[str, set[str]]:
    """Names exported by the real auth server and the real Envoy + filter after traffic:
    tokens, a bad secret, a client over its rate limit, a readiness probe, the gateway
    allowing, denying (missing, malformed), rate limiting with leases, polling revocations."""
    require_authserver()
    with AuthServer() as auth:
        edge = auth.register_client(scope="tollgate:edge", name="gateway",
                                    rate_limit_per_minute=0)
        client = auth.register_client(scope="api:read", rate_limit_per_minute=3)
        tokens = [auth.token(client) for _ in range(3)]
        r = requests.post(f"{auth.base}/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(client["client_id"], client["client_secret"]), timeout=5)
        assert r.status_code == 429, r.text                # tollgate_rate_limited_total
        r = requests.post(f"{auth.base}/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(client["client_id"], "wrong"), timeout=5)
        assert r.status_code == 401, r.text                # client auth failure, token error
        cfg = filter_config(
            issuers=[issuer_entry(auth.issuer, "tollgate-authserver", algorithms=["ES256"],
                                  refresh_interval_s=60, timeout_ms=1000)],
            auth_server={"cluster": "tollgate-authserver", "client_id": edge["client_id"],
                         "client_secret": edge["client_secret"], "timeout_ms": 1000},
            revocation={"poll_interval_ms": 500},
            rules=[{"name": "limited", "path_prefix": "/limited",
                    "rate_limit": {"requests": 1, "period_s": 60, "key": "client_id",
                                   "mode": "global"}}],
            tick_ms=100,
        )
        with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port) as gw:
            h = {"authorization": f"Bearer {tokens[0]}", "connection": "close"}
            assert requests.get(gw.url("/r"), headers=h, timeout=10).status_code == 200
            assert requests.get(gw.url("/r"), headers=h, timeout=10).status_code == 200
            assert requests.get(gw.url("/r"), timeout=10).status_code == 401
            assert requests.get(gw.url("/r"), timeout=10, headers={
                "authorization": "Bearer not.a.jwt"}).status_code == 401
            assert requests.get(gw.url("/limited"), headers=h, timeout=10).status_code == 200
            assert requests.get(gw.url("/limited"), headers=h, timeout=10).status_code == 429
            envoy_text = requests.get(gw.admin("/stats/prometheus"), timeout=10).text
        # The readiness probe (kubelet's, in a cluster) sets tollgate_store_up.
        assert requests.get(f"{auth.base}/readyz", timeout=5).status_code == 200
        auth_text = authserver_metrics(auth)
    return {"envoy": exposition_names(envoy_text), "authserver": exposition_names(auth_text)}


def test_envoy_exports_the_filter_counters_without_prefix(exported):
    """What the old alerts assumed is not there; what the new ones use is."""
    envoy = exported["envoy"]
    assert "tollgate_allowed" in envoy and "tollgate_rate_limited" in envoy
    assert not any(n.startswith("envoy_wasmcustom") for n in envoy)


def test_every_tollgate_metric_in_alerts_runbooks_and_dashboard_is_exported(exported):
    """Defect 13 (issue 11): alerts that can never fire."""
    ours = exported["envoy"] | exported["authserver"]
    missing = []
    for where, expr in all_exprs():
        names, regexes = names_in(expr)
        for n in names:
            if n.startswith("tollgate_") and n not in ours:
                missing.append(f"{where}: {n} in {expr}")
        for rx in regexes:
            if not any(re.fullmatch(rx, n) for n in ours):
                missing.append(f"{where}: nothing matches {rx!r} in {expr}")
    assert not missing, "\n".join(missing)


# ------------------------------------------------------------------ names owned by other projects
@lru_cache(maxsize=None)
def module_dir(module: str, version: str) -> Path:
    # GONOSUMDB: the checksum database does not list every old redis_exporter go.mod; we only
    # read the sources, nothing is built from them.
    env = {**os.environ, "GONOSUMDB": REDIS_EXPORTER[0], "GOFLAGS": "-mod=mod"}
    r = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                       capture_output=True, text=True, env=env, timeout=600, cwd="/")
    info = json.loads(r.stdout or "{}")
    assert info.get("Dir"), f"go mod download {module}@{version}: {r.stdout}{r.stderr}"
    return Path(info["Dir"])


@lru_cache(maxsize=None)
def go_sources(module: str, version: str) -> str:
    root = module_dir(module, version)
    return "\n".join(p.read_text(errors="replace") for p in sorted(root.rglob("*.go"))
                     if not p.name.endswith("_test.go") and "/vendor/" not in str(p))


def quoted(src: str, s: str) -> bool:
    return f'"{s}"' in src


def owner_defines(name: str) -> tuple[str, bool]:
    """(owner, whether its sources define `name`)."""
    if name.startswith("redis_"):
        # redis_exporter: namespace "redis" + the metric's own name from its tables.
        return "redis_exporter", quoted(go_sources(*REDIS_EXPORTER), name.removeprefix("redis_"))
    if name.startswith("kube_"):
        return "kube-state-metrics", quoted(go_sources(*KUBE_STATE_METRICS), name)
    if name.startswith("certmanager_"):
        return "cert-manager", quoted(go_sources(*CERT_MANAGER), name)
    if name.startswith("istio_agent_"):
        # istio-agent: pilot-agent wraps its registry with the prefix "istio_agent_".
        src = go_sources(*ISTIO)
        rest = name.removeprefix("istio_agent_")
        return "istio-agent", ('WrapRegistererWithPrefix("istio_agent_"' in src
                               and re.search(rf'New(Sum|Gauge|Distribution)\(\s*"{re.escape(rest)}"',
                                             src) is not None)
    if name == "up":
        return "prometheus", True  # written by Prometheus for every target it scrapes
    return "unknown", False


def test_names_owned_by_other_projects_exist_in_their_sources():
    missing = []
    for where, expr in all_exprs():
        names, regexes = names_in(expr)
        assert not any(not rx.startswith("tollgate_") for rx in regexes), regexes
        for n in sorted(names):
            if n.startswith("tollgate_"):
                continue
            owner, ok = owner_defines(n)
            if not ok:
                missing.append(f"{where}: {n} ({owner}) in {expr}")
    assert not missing, "\n".join(missing)


def test_the_owner_check_can_fail():
    assert owner_defines("redis_no_such_metric") == ("redis_exporter", False)
    assert owner_defines("kube_deployment_no_such_metric")[1] is False
    assert owner_defines("istio_agent_no_such_metric")[1] is False
    assert owner_defines("envoy_wasmcustom_tollgate_allowed") == ("unknown", False)
