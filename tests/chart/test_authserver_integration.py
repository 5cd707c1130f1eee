"""The chart's objects driving the real auth server: the Redis node configured by the
chart's ConfigMap (ACL users and all), the Job, CronJob and Deployment environments as
Kubernetes would expand them, the rendered seed file, and the helm test pod's script.

The only rewrites are what a laptop lacks: cluster DNS names become 127.0.0.1 and the
listen address is loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from chartlib import FILTER_WASM, ROOT, render_docs
from test_redis_runtime import CLI, PASSWORDS, REDIS, Cluster, free_port

AUTHSERVER = Path(os.environ.get("AUTHSERVER_BIN", ROOT / "target/release/authserver"))
pytestmark = [
    pytest.mark.skipif(not AUTHSERVER.is_file(), reason=f"auth server not built: {AUTHSERVER} (make build-authserver)"),
    pytest.mark.skipif(not (REDIS and CLI), reason="redis-server / redis-cli needed"),
]

CLIENT_SECRET = "orders-client-secret-0123456789abcdef"
GATEWAY_SECRET = "edge-gateway-secret-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef0123456789"
SECRETS = {
    ("tollgate-redis", "authserver-password"): PASSWORDS["AUTH_PASSWORD"],
    ("tollgate-redis", "cache-password"): PASSWORDS["CACHE_PASSWORD"],
    ("tollgate-authserver", "admin-token"): ADMIN,
    ("tollgate-authserver", "secret-pepper"): "pepper-0123456789abcdef0123456789",
    ("tollgate-authserver", "key-encryption-key"): b64encode(bytes(range(32))).decode(),
    ("orders-service-client", "client-secret"): CLIENT_SECRET,
    ("tollgate-edge-gateway", "client-secret"): GATEWAY_SECRET,
}
OVERRIDES = {
    "authserver": {"existingSecret": "tollgate-authserver"},
    # No sidecar here: the gateway's client (seeded by the init Job from its Secret) and its
    # secret from the proxy's environment (issue 11 defect 7; mesh identity: tests/e2e).
    "edge": {"authServer": {"credentials": "secret",
                            "secretRef": {"name": "tollgate-edge-gateway", "key": "client-secret"}}},
    "redis": {"auth": {"existingSecret": "tollgate-redis"}},
    "seed": {
        "config": {"access_token_ttl": 600, "rate_limit_per_client": 1000},
        "cacheConfig": {"default_ttl": 3600, "max_entries_per_service": 100},
        "clients": [{
            "client_id": "orders-service", "client_name": "Orders service",
            "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic",
            "scope": "orders:read orders:write", "secretRef": {"name": "orders-service-client", "key": "client-secret"},
        }],
    },
}


def k8s_env(container: dict, redis_port: int) -> dict:
    """The container's environment as the kubelet builds it: secretKeyRef resolved, $(VAR)
    expanded from earlier entries; then cluster DNS names mapped to 127.0.0.1."""
    env: dict[str, str] = {}
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            if ref.get("optional") and (ref["name"], ref["key"]) not in SECRETS:
                continue
            env[e["name"]] = SECRETS[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
    for k in ("TOLLGATE_STORE", "TOLLGATE_CACHE_STORE"):
        env[k] = env[k].replace("tollgate-redis.tollgate.svc.cluster.local:6379", f"127.0.0.1:{redis_port}")
    return env


def run(args: list[str], env: dict, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(AUTHSERVER), *args], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=timeout)


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
         timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_chart_environment_runs_the_real_auth_server(tmp_path):
    docs = render_docs([], OVERRIDES)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    c = Cluster(tmp_path, env="dev")
    try:
        c.start_redis(0)
        port = c.redis_ports[0]

        # --- init Job: the rendered seed file and the Job's environment
        job = by[("Job", "tollgate-init")]["spec"]["template"]["spec"]["containers"][0]
        seed = tmp_path / "seed.yaml"
        seed.write_text(by[("ConfigMap", "tollgate-authserver")]["data"]["seed.yaml"])
        args = [a.replace("/etc/tollgate/seed.yaml", str(seed)) for a in job["args"]]
        r = run(args, k8s_env(job, port))
        assert r.returncode == 0, r.stdout + r.stderr
        assert CLIENT_SECRET not in r.stdout + r.stderr
        # Idempotent, as a Helm hook / Argo CD Sync hook re-runs it on every sync.
        r = run(args, k8s_env(job, port))
        assert r.returncode == 0, r.stdout + r.stderr
        # Everything it wrote is inside the auth user's key space (the ACL allowed it).
        keys = c.as_user(port, "EXPORTER_USER", "info", "keyspace")
        assert "db0:keys=" in keys, keys

        # --- the Deployment's container
        dep = by[("Deployment", "tollgate-authserver")]["spec"]["template"]["spec"]["containers"][0]
        env = k8s_env(dep, port)
        assert env["TOLLGATE_LISTEN"] == "0.0.0.0:9080"
        assert env["TOLLGATE_ADMIN_LISTEN"] == "0.0.0.0:9081"
        assert env["TOLLGATE_DPOP_NONCE"] == "false"
        listen, admin_listen = free_port(), free_port()
        env["TOLLGATE_LISTEN"] = f"127.0.0.1:{listen}"
        env["TOLLGATE_ADMIN_LISTEN"] = f"127.0.0.1:{admin_listen}"
        assert env["TOLLGATE_MODULE_LISTEN"] == "0.0.0.0:9082"
        if FILTER_WASM.is_file():
            env["TOLLGATE_EDGE_MODULE"] = str(FILTER_WASM)
            env["TOLLGATE_MODULE_LISTEN"] = f"127.0.0.1:{free_port()}"
        else:
            env.pop("TOLLGATE_EDGE_MODULE", None)
            env.pop("TOLLGATE_MODULE_LISTEN", None)
        log = open(tmp_path / "authserver.log", "w")
        proc = subprocess.Popen([str(AUTHSERVER), *dep["args"]], env={"PATH": os.environ["PATH"], **env},
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{listen}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "authserver.log").read_text()[-3000:]
                try:
                    if http(base + "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError("auth server never ready: " + (tmp_path / "authserver.log").read_text()[-3000:])
            # Probes the Deployment declares answer.
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert http(base + dep[probe]["httpGet"]["path"])[0] == 200, probe
            # The ServiceMonitor scrapes the container port it names: the admin listener.
            sm = by[("ServiceMonitor", "tollgate-authserver")]["spec"]["endpoints"][0] \
                if ("ServiceMonitor", "tollgate-authserver") in by else {"port": "admin", "path": "/metrics"}
            scraped = {p["name"]: p["containerPort"] for p in dep["ports"]}[sm["port"]]
            assert scraped == 9081
            status, text = http(f"http://127.0.0.1:{admin_listen}{sm['path']}")
            assert status == 200 and b"tollgate_http_requests_total" in text, text[:300]
            assert http(base + "/metrics")[0] == 404

            # The seeded client gets a token with the secret that came from its Secret.
            basic = b64encode(f"orders-service:{CLIENT_SECRET}".encode()).decode()
            status, body = http(base + "/oauth2/token", b"grant_type=client_credentials&scope=orders:read",
                                {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
            assert status == 200, body
            tok = json.loads(body)
            assert tok["token_type"].lower() == "bearer" and tok["expires_in"] <= 600

            announcements_pass_the_acl(base, f"http://127.0.0.1:{admin_listen}", basic)

            # The helm test pod's script, pointed at this server.
            test_pod = by[("Pod", "tollgate-test")]["spec"]["containers"][0]
            script = test_pod["command"][-1]
            script = re.sub(r"^base=.*$", f"base={base}", script, flags=re.M)
            script = re.sub(r"^admin=.*$", f"admin=http://127.0.0.1:{admin_listen}", script, flags=re.M)
            if shutil.which("wget"):
                r = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60,
                                   env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)})
                assert r.returncode == 0 and "ready" in r.stdout, r.stdout + r.stderr

            # The module the chart's HTTP-URL option points at, with its digest.
            if FILTER_WASM.is_file():
                status, digest = http(base + "/edge/module.wasm.sha256")
                assert status == 200
                assert digest.decode().split()[0] == hashlib.sha256(FILTER_WASM.read_bytes()).hexdigest()
                gateway_through_the_chart_envoyfilter(by, listen, tok["access_token"], tmp_path)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

        # --- the CronJobs
        for name in ("tollgate-cleanup", "tollgate-cache-cleanup"):
            cj = by[("CronJob", name)]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            r = run(cj["args"], k8s_env(cj, port))
            assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        assert "NOPERM" not in (tmp_path / "authserver.log").read_text()
    finally:
        c.stop()


def announcements_pass_the_acl(base: str, admin: str, basic: str) -> None:
    """What the auth server publishes and subscribes to, as the chart's ACL user: a
    revocation (its script publishes on `auth:{revocations}:published`) wakes a held long
    poll of the gateways' feed, and a client changed through the admin API (its script
    publishes on `auth:clients:changed`) is served the change."""
    import threading

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = http(base + "/oauth2/token", b"grant_type=client_credentials&scope=orders:read",
                        {"Authorization": f"Basic {basic}", **form})
    assert status == 200, body
    token = json.loads(body)["access_token"]
    gw = {"Authorization": "Basic " + b64encode(f"tollgate-edge-gateway:{GATEWAY_SECRET}".encode()).decode()}
    status, body = http(base + "/edge/revocations", headers=gw)
    assert status == 200, body
    cursor = json.loads(body)["cursor"]
    held: dict = {}

    def long_poll() -> None:
        # Held until a revocation is announced; a lost announcement would hold it for the
        # whole wait (20 s), past this call's time limit.
        try:
            held["answer"] = http(f"{base}/edge/revocations?since={cursor}&wait=20", headers=gw, timeout=10)
        except OSError as e:
            held["error"] = repr(e)

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # the poll is held
    status, body = http(base + "/oauth2/revoke", f"token={token}".encode(),
                        {"Authorization": f"Basic {basic}", **form})
    assert status == 200, body
    poller.join(timeout=15)
    assert "answer" in held, held
    status, body = held["answer"]
    assert status == 200 and json.loads(body)["revocations"], body
    status, body = http(base + "/oauth2/introspect", f"token={token}".encode(),
                        {"Authorization": f"Basic {basic}", **form})
    assert status == 200 and json.loads(body)["active"] is False, body

    # A change of the seeded client (its scope narrowed) through the admin listener.
    auth = {"Authorization": f"Bearer {ADMIN}"}
    status, body = http(admin + "/oauth2/register/orders-service", headers=auth)
    assert status == 200, body
    md = json.loads(body)
    md["scope"] = "orders:read"
    status, body = http(admin + "/oauth2/register/orders-service", json.dumps(md).encode(),
                        {**auth, "Content-Type": "application/json"}, method="PUT")
    assert status == 200, body
    status, body = http(base + "/oauth2/token", b"grant_type=client_credentials&scope=orders:write",
                        {"Authorization": f"Basic {basic}", **form})
    assert status == 400 and json.loads(body)["error"] == "invalid_scope", body


def gateway_through_the_chart_envoyfilter(by: dict, auth_port: int, token: str, tmp_path: Path) -> None:
    """Real Envoy + the chart's EnvoyFilter + the module downloaded from the real auth
    server (sha256-pinned) + a token the real auth server issued."""
    from test_envoy_attachment import ENVOY, EchoServer, Envoy, bootstrap_from, request

    if ENVOY is None:
        pytest.skip("envoy not found")
    ef = next(d for (kind, _), d in by.items() if kind == "EnvoyFilter")
    echo = EchoServer()
    listen, admin = free_port(), free_port()
    boot, _ = bootstrap_from(ef, auth_port, echo.port, listen, admin)
    # The gateway's istio-proxy has the client secret in its environment (host_env_keys).
    env_name = json.loads(ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
                          ["configuration"]["value"])["auth_server"]["client_secret_env"]
    old = os.environ.get(env_name)
    os.environ[env_name] = GATEWAY_SECRET
    try:
        envoy = Envoy(boot, tmp_path, admin, base_id=43000 + listen % 1000)
    finally:
        if old is None:
            os.environ.pop(env_name)
        else:
            os.environ[env_name] = old
    try:
        envoy.wait_ready()
        assert request(listen, "/orders")[0] == 401, envoy.log.read_text()[-3000:]
        status, _, body = request(listen, "/orders", token=token)
        assert status == 200, (body, envoy.log.read_text()[-2000:])
        assert json.loads(body)["headers"]["x-tollgate-client-id"] == "orders-service"
        assert request(listen, "/orders", token=token[:-4] + "AAAA")[0] == 401
        # The revocation feed, on by default, answers the seeded gateway client.
        deadline = time.monotonic() + 20
        while envoy.stat("wasmcustom.tollgate_revocation_poll_ok") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert envoy.stat("wasmcustom.tollgate_revocation_poll_ok") >= 1, envoy.log.read_text()[-2000:]
        assert envoy.stat("wasmcustom.tollgate_revocation_poll_failed") == 0
    finally:
        envoy.stop()
        echo.stop()


def test_defect9_callers_behind_one_hop_do_not_share_lockout(tmp_path):
    """Behind the sidecar every TCP peer is 127.0.0.1. With the chart's environment the
    auth server takes the client address the ingress gateway appended to X-Forwarded-For
    (one trusted hop; the sidecar's inbound listener appends nothing), so one caller's
    failed logins lock out that caller only, not everyone behind the same proxy."""
    docs = render_docs([], OVERRIDES)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    c = Cluster(tmp_path, env="dev")
    try:
        c.start_redis(0)
        port = c.redis_ports[0]
        job = by[("Job", "tollgate-init")]["spec"]["template"]["spec"]["containers"][0]
        seed = tmp_path / "seed.yaml"
        seed.write_text(by[("ConfigMap", "tollgate-authserver")]["data"]["seed.yaml"])
        r = run([a.replace("/etc/tollgate/seed.yaml", str(seed)) for a in job["args"]], k8s_env(job, port))
        assert r.returncode == 0, r.stdout + r.stderr

        dep = by[("Deployment", "tollgate-authserver")]["spec"]["template"]["spec"]["containers"][0]
        env = k8s_env(dep, port)
        assert env["TOLLGATE_TRUSTED_PROXY_HOPS"] == "1"
        env.pop("TOLLGATE_EDGE_MODULE", None)
        env.pop("TOLLGATE_MODULE_LISTEN", None)
        listen = free_port()
        env["TOLLGATE_LISTEN"] = f"127.0.0.1:{listen}"
        env["TOLLGATE_ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
        log = open(tmp_path / "authserver.log", "w")
        proc = subprocess.Popen([str(AUTHSERVER), *dep["args"]], env={"PATH": os.environ["PATH"], **env},
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{listen}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (tmp_path / "authserver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "auth server never ready"
                try:
                    if http(base + "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)

            def token(secret: str, xff: str) -> int:
                basic = b64encode(f"orders-service:{secret}".encode()).decode()
                # What the gateway sends: the client's own (untrusted) XFF entries, then the
                # address the gateway saw, appended.
                return http(base + "/oauth2/token", b"grant_type=client_credentials",
                            {"Authorization": f"Basic {basic}", "X-Forwarded-For": xff,
                             "Content-Type": "application/x-www-form-urlencoded"})[0]

            attacker = "10.9.9.9, 198.51.100.7"  # forged first entry; the gateway saw .7
            statuses = [token("wrong-secret", attacker) for _ in range(60)]
            assert statuses[0] == 401 and statuses[-1] == 429, statuses
            # The attacker's failures stay limited with a new forged entry: the counter is
            # keyed by the address the gateway appended, not by what the client wrote ...
            assert token("wrong-secret", "10.1.1.1, 198.51.100.7") == 429
            # ... while another caller behind the same proxy hop has a counter of its own
            # (a wrong secret is a plain 401, not 429), and right credentials always pass.
            assert token("wrong-secret", "198.51.100.8") == 401
            assert token(CLIENT_SECRET, "198.51.100.8") == 200
            assert token(CLIENT_SECRET, attacker) == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        c.stop()
