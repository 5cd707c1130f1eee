#!/usr/bin/env python3
"""`make demo` and `make demo-check`: the auth server (in-memory store), Envoy with the
Tollgate filter and an echo upstream, all on loopback.

    demo.py            start everything, seed a demo client, print the tour, stream the
                       components' logs prefixed by name; Ctrl-C stops them all
    demo.py --check    the same start, then run the tour and fail on any unexpected answer

Ports: AUTHSERVER_PORT (9080), AUTHSERVER_ADMIN_PORT (9081: the auth server's admin
listener), GATEWAY_PORT (10000), ENVOY_ADMIN_PORT (9901), ECHO_PORT (free). TOLLGATE_ADMIN_TOKEN is used when set; otherwise a random one is made
and printed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(HERE))

import dpop  # noqa: E402

from harness.envoy import envoy_binary, filter_wasm, issuer_entry, render_config  # noqa: E402
from harness.ports import free_port  # noqa: E402

COLORS = {"authserver": "36", "envoy": "35", "echo": "33", "demo": "32"}
_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    tty = sys.stdout.isatty()
    prefix = f"[{name}]".ljust(13)
    if tty:
        prefix = f"\x1b[{COLORS.get(name, '0')}m{prefix}\x1b[0m"
    with _print_lock:
        print(f"{prefix}{line}", flush=True)


def demo_filter_config(issuer: str, edge: dict) -> dict:
    """The demo's routes, as docs/filter.md describes them. `edge` is the gateway's own
    client at the auth server (scope tollgate:edge): it reads the revocation feed."""
    return {
        "issuers": [issuer_entry(issuer, "tollgate-authserver", audiences=["tollgate"],
                                 algorithms=["ES256"], refresh_interval_s=60,
                                 min_refresh_interval_s=5)],
        "auth_server": {"cluster": "tollgate-authserver", "client_id": edge["client_id"],
                        "client_secret": edge["client_secret"], "timeout_ms": 1000},
        "revocation": {"poll_interval_ms": 1000},
        "rules": [
            {"name": "public", "path_prefix": "/public/", "allow_anonymous": True},
            {"name": "api-read", "path_prefix": "/api/", "methods": ["GET", "HEAD"],
             "scopes": ["api:read"]},
            {"name": "api-write", "path_prefix": "/api/", "scopes": ["api:write"]},
            {"name": "limited", "path_prefix": "/limited/",
             "rate_limit": {"requests": 5, "period_s": 60, "key": "client_id"}},
        ],
        "default_rule": {"allow_anonymous": False},
    }


class Echo(BaseHTTPRequestHandler):
    """Answers with the request headers it received, as JSON, and logs one line."""
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers},
                          indent=2).encode() + b"\n"
        who = headers.get("x-tollgate-sub", "anonymous")
        say("echo", f"{self.command} {self.path} sub={who}")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


class Component:
    """A child process whose output lines are printed with its name in front."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
                 quiet: bool = False):
        self.name = name
        self.lines: list[str] = []
        self.quiet = quiet
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if not self.quiet:
                say(self.name, line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def wait_http(url: str, what: str, proc: Component, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise SystemExit(f"{what} exited:\n" + "\n".join(proc.lines[-30:]))
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready at {url}")


class Demo:
    def __init__(self, quiet: bool):
        self.auth_port = int(os.environ.get("AUTHSERVER_PORT", "9080"))
        # The auth server's admin listener: registration, /admin/*, /metrics.
        self.auth_admin_port = int(os.environ.get("AUTHSERVER_ADMIN_PORT", "9081"))
        self.gw_port = int(os.environ.get("GATEWAY_PORT", "10000"))
        self.admin_port = int(os.environ.get("ENVOY_ADMIN_PORT", "9901"))
        self.echo_port = int(os.environ.get("ECHO_PORT", "0")) or free_port()
        self.admin_token = os.environ.get("TOLLGATE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
        self.generated_token = "TOLLGATE_ADMIN_TOKEN" not in os.environ
        self.issuer = f"http://127.0.0.1:{self.auth_port}"
        self.auth_base = self.issuer
        self.auth_admin_base = f"http://127.0.0.1:{self.auth_admin_port}"
        self.gateway = f"http://127.0.0.1:{self.gw_port}"
        self.quiet = quiet
        self.parts: list[Component] = []
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-demo-"))

    def start(self) -> None:
        binary = os.environ.get("AUTHSERVER_BIN") or str(REPO / "target/release/authserver")
        auth = Component("authserver", [binary, "serve"], env={
            "TOLLGATE_LISTEN": f"127.0.0.1:{self.auth_port}",
            "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{self.auth_admin_port}",
            "TOLLGATE_ISSUER": self.issuer,
            "TOLLGATE_STORE": "memory",
            "TOLLGATE_ADMIN_TOKEN": self.admin_token,
            "TOLLGATE_SECRET_PEPPER": secrets.token_urlsafe(32),
            "TOLLGATE_LOG": "info",
        }, quiet=self.quiet)
        self.parts.append(auth)
        wait_http(f"{self.auth_base}/readyz", "the auth server", auth)

        server = ThreadingHTTPServer(("127.0.0.1", self.echo_port), Echo)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if not self.quiet:
            say("echo", f"upstream listening on 127.0.0.1:{self.echo_port}")

        self.edge = self.register({"client_name": "gateway", "scope": "tollgate:edge",
                                   "grant_types": ["client_credentials"]})
        cfg = self.dir / "envoy.yaml"
        cfg.write_text(render_config(
            filter_config=demo_filter_config(self.issuer, self.edge), admin_port=self.admin_port,
            listen_port=self.gw_port, upstream_port=self.echo_port, auth_port=self.auth_port,
            wasm_path=filter_wasm()))
        envoy = Component("envoy", [envoy_binary(), "-c", str(cfg), "--concurrency", "2",
                                    "--base-id", str(secrets.randbelow(2**20) + 100),
                                    "-l", "warning", "--disable-hot-restart"],
                          quiet=self.quiet)
        self.parts.append(envoy)
        wait_http(f"http://127.0.0.1:{self.admin_port}/ready", "Envoy", envoy)
        # The filter loads the JWKS in the background; wait until the gateway answers.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.gateway}/public/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def register(self, metadata: dict) -> dict:
        r = requests.post(f"{self.auth_admin_base}/oauth2/register", timeout=5,
                          headers={"authorization": f"Bearer {self.admin_token}"},
                          json=metadata)
        r.raise_for_status()
        return r.json()

    def seed(self) -> dict:
        return self.register({"client_name": "demo", "scope": "api:read",
                              "grant_types": ["client_credentials"]})

    def stop(self) -> None:
        for p in reversed(self.parts):
            p.stop()


def tour_text(d: Demo, client: dict) -> str:
    cid, secret = client["client_id"], client["client_secret"]
    a, g = d.auth_base, d.gateway
    cred = shlex.quote(f"{cid}:{secret}")
    lines = [
        "",
        "Tollgate demo is running:",
        f"  auth server  {a}   (in-memory store; admin listener {d.auth_admin_base})",
        f"  gateway      {g}   (Envoy + Tollgate filter; admin http://127.0.0.1:{d.admin_port})",
        f"  upstream     http://127.0.0.1:{d.echo_port}   (echoes the headers it receives)",
    ]
    if d.generated_token:
        lines.append(f"  admin token  {d.admin_token}   (generated; set TOLLGATE_ADMIN_TOKEN to choose)")
    lines += [
        "",
        f"Demo client: {cid} (scope api:read)",
        "",
        "Try, in another terminal:",
        "",
        "# 1. get an access token (client_credentials)",
        f"TOKEN=$(curl -s -u {cred} -d grant_type=client_credentials {a}/oauth2/token"
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        "",
        "# 2. call the API through the gateway: the upstream sees x-tollgate-* identity headers",
        f"curl -s -H \"Authorization: Bearer $TOKEN\" {g}/api/hello",
        "",
        "# 3. no token: 401 with WWW-Authenticate",
        f"curl -si {g}/api/hello | head -n 5",
        "",
        "# 4. a public route, anonymously",
        f"curl -s {g}/public/hello",
        "",
        "# 5. a route that needs a scope the token lacks (POST needs api:write): 403",
        f"curl -si -X POST -H \"Authorization: Bearer $TOKEN\" {g}/api/hello | head -n 5",
        "",
        "# 6. /limited/ allows 5 requests a minute per client: the 6th is 429 with Retry-After",
        f"for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H \"Authorization: Bearer $TOKEN\" {g}/limited/; done; echo",
        f"curl -si -H \"Authorization: Bearer $TOKEN\" {g}/limited/ | grep -i -E '^(HTTP|retry-after|ratelimit)'",
        "",
        "# 7. revoke the token at the auth server: within a second the gateway refuses it",
        f"curl -s -u {cred} -d \"token=$TOKEN\" {a}/oauth2/revoke",
        "sleep 1.5",
        f"curl -si -H \"Authorization: Bearer $TOKEN\" {g}/api/hello | head -n 5",
        "",
        "# 9. a DPoP-bound token (RFC 9449): usable only with proofs signed by its key",
        "KEY=$(mktemp -d)/dpop-key.json; python3 tests/demo/dpop.py keygen $KEY",
        f"DPOP_TOKEN=$(curl -s -u {cred} -d grant_type=client_credentials"
        f" -H \"DPoP: $(python3 tests/demo/dpop.py proof $KEY POST {a}/oauth2/token)\""
        f" {a}/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f"curl -s -H \"Authorization: DPoP $DPOP_TOKEN\""
        f" -H \"DPoP: $(python3 tests/demo/dpop.py proof $KEY GET {g}/api/hello $DPOP_TOKEN)\" {g}/api/hello",
        "#    replayed by someone holding the token but another key: 401 invalid_dpop_proof",
        "python3 tests/demo/dpop.py keygen $KEY.other",
        f"curl -si -H \"Authorization: DPoP $DPOP_TOKEN\""
        f" -H \"DPoP: $(python3 tests/demo/dpop.py proof $KEY.other GET {g}/api/hello $DPOP_TOKEN)\" {g}/api/hello | head -n 5",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


class Check:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def expect(self, what: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            say("demo", f"ok    {what}")
        else:
            self.failures.append(what)
            say("demo", f"FAIL  {what} {detail}")


def run_tour(d: Demo, client: dict) -> Check:
    c = Check()
    auth = (client["client_id"], client["client_secret"])
    r = requests.post(f"{d.auth_base}/oauth2/token", auth=auth,
                      data={"grant_type": "client_credentials"}, timeout=5)
    c.expect("1. token endpoint issues a token", r.status_code == 200, r.text)
    token = r.json().get("access_token", "")
    bearer = {"authorization": f"Bearer {token}"}

    r = requests.get(f"{d.gateway}/api/hello", headers=bearer, timeout=5)
    seen = r.json().get("headers", {}) if r.status_code == 200 else {}
    c.expect("2. /api/hello with the token: 200", r.status_code == 200, r.text)
    c.expect("2. upstream sees x-tollgate-sub", seen.get("x-tollgate-sub") == client["client_id"],
             json.dumps(seen))
    c.expect("2. upstream sees x-tollgate-scope", seen.get("x-tollgate-scope") == "api:read")
    c.expect("2. upstream sees x-tollgate-iss", seen.get("x-tollgate-iss") == d.issuer)

    r = requests.get(f"{d.gateway}/api/hello", timeout=5)
    c.expect("3. no token: 401", r.status_code == 401, r.text)
    c.expect("3. WWW-Authenticate: Bearer",
             r.headers.get("www-authenticate", "").startswith("Bearer"))

    r = requests.get(f"{d.gateway}/public/hello", timeout=5)
    c.expect("4. /public/ anonymously: 200", r.status_code == 200, r.text)

    r = requests.post(f"{d.gateway}/api/hello", headers=bearer, timeout=5)
    c.expect("5. POST without api:write: 403", r.status_code == 403, r.text)
    c.expect("5. error insufficient_scope",
             'error="insufficient_scope"' in r.headers.get("www-authenticate", ""))

    spoofed = {**bearer, "x-tollgate-sub": "admin"}
    r = requests.get(f"{d.gateway}/api/hello", headers=spoofed, timeout=5)
    c.expect("   a spoofed x-tollgate-sub is replaced",
             r.status_code == 200 and r.json()["headers"].get("x-tollgate-sub") == client["client_id"])

    codes = [requests.get(f"{d.gateway}/limited/", headers=bearer, timeout=5) for _ in range(6)]
    c.expect("6. /limited/: 5 allowed, then 429",
             [r.status_code for r in codes] == [200] * 5 + [429], str([r.status_code for r in codes]))
    last = codes[-1]
    c.expect("6. 429 carries Retry-After and RateLimit headers",
             bool(last.headers.get("retry-after")) and "ratelimit-policy" in last.headers
             and "ratelimit" in last.headers, str(dict(last.headers)))

    r = requests.post(f"{d.auth_base}/oauth2/revoke", auth=auth, data={"token": token}, timeout=5)
    c.expect("7. revocation accepted", r.status_code == 200, r.text)
    start = time.monotonic()
    while True:
        r = requests.get(f"{d.gateway}/api/hello", headers=bearer, timeout=5)
        if r.status_code == 401 or time.monotonic() - start > 5:
            break
        time.sleep(0.05)
    c.expect("7. the gateway refuses the revoked token", r.status_code == 401, r.text)
    say("demo", f"      (the revocation reached the gateway {time.monotonic() - start:.2f} s "
                "after the revoke answer)")
    dpop_steps(d, client, c)
    return c


def dpop_steps(d: Demo, client: dict, c: Check) -> None:
    """9. A DPoP-bound token works with proofs of its key and nowhere else."""
    auth = (client["client_id"], client["client_secret"])
    key, other = (dpop.secrets.randbelow(dpop.N - 1) + 1 for _ in range(2))
    token_url, api = f"{d.auth_base}/oauth2/token", f"{d.gateway}/api/hello"
    r = requests.post(token_url, auth=auth, data={"grant_type": "client_credentials"},
                      headers={"DPoP": dpop.proof(key, "POST", token_url)}, timeout=5)
    body = r.json() if r.status_code == 200 else {}
    c.expect("9. token endpoint issues a DPoP-bound token",
             body.get("token_type") == "DPoP", r.text)
    token = body.get("access_token", "")

    def call(scheme: str, proof_key: int | None) -> requests.Response:
        headers = {"authorization": f"{scheme} {token}"}
        if proof_key is not None:
            headers["DPoP"] = dpop.proof(proof_key, "GET", api, token)
        return requests.get(api, headers=headers, timeout=5)

    r = call("DPoP", key)
    c.expect("9. with a proof of its key: 200", r.status_code == 200, r.text)
    r = call("DPoP", other)
    c.expect("9. replayed with another key's proof: 401 invalid_dpop_proof",
             r.status_code == 401
             and 'error="invalid_dpop_proof"' in r.headers.get("www-authenticate", ""),
             f"{r.status_code} {r.headers.get('www-authenticate')}")
    r = call("Bearer", None)
    c.expect("9. sent as a plain Bearer token: 401 invalid_token",
             r.status_code == 401 and 'error="invalid_token"' in r.headers.get(
                 "www-authenticate", ""), f"{r.status_code} {r.headers.get('www-authenticate')}")


def readme_tour() -> str:
    """The shell block of the README's tour section, as a reader copies it."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The tour", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def run_readme_tour(d: Demo, c: Check) -> None:
    """Run the README's tour commands verbatim (ports substituted when overridden) with a
    client of their own, and check what they print."""
    client = d.seed()
    script = readme_tour().replace("127.0.0.1:9080", f"127.0.0.1:{d.auth_port}") \
                          .replace("127.0.0.1:9081", f"127.0.0.1:{d.auth_admin_port}") \
                          .replace("127.0.0.1:10000", f"127.0.0.1:{d.gw_port}")
    env = {**os.environ, "CLIENT_ID": client["client_id"], "CLIENT_SECRET": client["client_secret"]}
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    out = r.stdout
    for what, ok in [
        ("README tour runs", r.returncode == 0),
        ("README 2: identity headers upstream", f'"x-tollgate-sub": "{client["client_id"]}"' in out),
        ("README 3: 401 with WWW-Authenticate", "HTTP/1.1 401" in out and "www-authenticate: bearer" in out.lower()),
        ("README 4: public route", '"path": "/public/hello"' in out),
        ("README 5: 403 insufficient_scope", "HTTP/1.1 403" in out and "insufficient_scope" in out),
        ("README 6: five 200 then 429", "200 200 200 200 200 429" in out),
        ("README 6: Retry-After and RateLimit headers", "retry-after:" in out.lower() and "ratelimit-policy:" in out.lower()),
        ("README 7: revoked token refused",
         "HTTP/1.1 401" in "\n".join(out.split("public /metrics:")[0].splitlines()[-5:])),
        ("README 8: no /metrics on the public port", "public /metrics: 404" in out),
        ("README 8: metrics on the admin listener", "\ntollgate_tokens_issued_total" in out),
        ("README 9: the DPoP-bound token with its key reaches the upstream",
         out.count(f'"x-tollgate-sub": "{client["client_id"]}"') >= 2),
        ("README 9: another key's proof: 401 invalid_dpop_proof",
         "invalid_dpop_proof" in out.split("tollgate_tokens_issued_total")[-1]),
    ]:
        c.expect(what, ok, "" if ok else f"\n--- output ---\n{out}\n--- stderr ---\n{r.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="run the tour and exit")
    args = ap.parse_args()
    d = Demo(quiet=args.check)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        d.start()
        client = d.seed()
        if args.check:
            c = run_tour(d, client)
            run_readme_tour(d, c)
            say("demo", f"{c.passed} passed, {len(c.failures)} failed")
            return 1 if c.failures else 0
        print(tour_text(d, client), flush=True)
        while not stop.is_set():
            for p in d.parts:
                if p.proc.poll() is not None:
                    say("demo", f"{p.name} exited with {p.proc.returncode}; stopping")
                    return 1
            stop.wait(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("demo", "stopping")
        d.stop()


if __name__ == "__main__":
    sys.exit(main())
