"""Hostile input at the HTTP level against the real auth server (release binary, in-memory
store, one server for the module).

Every endpoint of the router (read from authserver/src/http/mod.rs, cross-checked with the
metadata document) with every wrong method; repeated parameters and headers; unknown
content types; oversized bodies and heads; bytes that are not UTF-8 in the request line,
headers, forms and JSON; JSON with repeated members or deep nesting; slow clients (one
header byte a second, idle connections, a body that trickles, a client that never reads).
Each gets the documented answer (docs/security.md, "Hostile input"): an RFC 6749 JSON error
with `Cache-Control: no-store` (and `WWW-Authenticate` where RFC 6750/6749 want it), or
hyper's bare 400/431 for what is not HTTP at all, or a closed connection for a client too
slow. No answer carries a panic message, a backtrace, a source path or a secret, and after
each burst the server is healthy, its memory did not explode and a normal token request
works.

Raw sockets (harness/rawhttp.py) where `requests` would normalize the input. The server
runs with short timeouts (below) so that the slow-client cases take seconds, and with the
per-IP limits off: hundreds of deliberate failures from 127.0.0.1 would otherwise (rightly)
turn into 429s and hide the answers under test.
"""
from __future__ import annotations

import json
import re
import secrets
import selectors
import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import require_authserver
from harness.authserver import AuthServer
from harness.rawhttp import build, exchange, parse, read_until_closed

REPO = Path(__file__).resolve().parents[2]
HEADER_TIMEOUT_MS = 2000
SEND_TIMEOUT_MS = 1500
REQUEST_TIMEOUT_MS = 2000
MAX_BODY = 65536
MODULE_BYTES = 8 << 20
# What no answer may contain (besides the secrets of the module's server).
LEAK_MARKERS = [b"panicked", b"backtrace", b"RUST_BACKTRACE", b".rs:", b"/src/", b"/root/",
                b"/home/", b"/tmp/", b"thread '", b"stack overflow", b"called `Result::"]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"]
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def router_routes(name: str = "router") -> dict[str, set[str]]:
    """Path template -> methods, from `pub fn <name>` in authserver/src/http/mod.rs
    (`router`: the public listener, `admin_router`: the admin listener)."""
    src = (REPO / "authserver" / "src" / "http" / "mod.rs").read_text()
    body = src[src.index(f"pub fn {name}("):]
    body = body[:body.index("\n}\n")]
    routes: dict[str, set[str]] = {}
    for chunk in body.split(".route(")[1:]:
        path = re.match(r'\s*"([^"]+)"', chunk).group(1)
        handlers = re.split(r"\.(?:route_layer|layer|fallback|merge|with_state)\(", chunk)[0]
        methods = {m.upper() for m in re.findall(r"\b(get|post|put|delete|patch)\(", handlers)}
        if re.search(r"\bany\(", handlers):  # e.g. /edge/authz: ext_authz keeps the method
            methods = set(ALL_METHODS)
        assert methods, f"no handler found for {path}"
        routes[path] = methods
    return routes


def admin_bound(target: str | bytes, headers) -> bool:
    """Whether an operator sends this request to the admin listener (docs/contracts.md,
    "Listeners"): the admin API, /metrics, registration, client management with the admin
    token."""
    path = (target.decode("latin-1") if isinstance(target, bytes) else target).split("?")[0]
    return (path.startswith("/admin/") or path in ("/metrics", "/oauth2/register")
            or (path.startswith("/oauth2/register/")
                and any(k.lower() == "authorization" and v.startswith("Bearer ")
                        and v[7:] == ADMIN_TOKEN[0] for k, v in headers)))


ADMIN_TOKEN: list[str] = [""]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", path)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Srv:
    """The server under test, its secrets, and checked raw requests."""

    def __init__(self, a: AuthServer):
        self.a = a
        self.port = a.port
        self.secrets: list[bytes] = [a.admin_token.encode()]

    def secret(self, s: str) -> str:
        self.secrets.append(s.encode())
        return s

    def check_clean(self, raw: bytes) -> None:
        for m in LEAK_MARKERS:
            assert m not in raw, f"answer contains {m!r}: {raw[:600]!r}"
        for s in self.secrets:
            assert s not in raw, f"answer leaks a secret: {raw[:600]!r}"

    def send(self, data: bytes, head: bool = False, timeout: float = 10.0,
             port: int | None = None):
        r = exchange(port or self.port, data, timeout=timeout, head=head)
        self.check_clean(r.raw)
        return r

    def req(self, method: str, target: str | bytes, headers=(), body: bytes | None = None,
            **kw):
        """A request to the listener an operator would use (see `admin_bound`), or to
        `port=`."""
        headers = list(headers)
        if "port" not in kw and admin_bound(target, headers):
            kw["port"] = self.a.admin_port
        return self.send(build(method, target, headers, body), head=method == "HEAD", **kw)

    @property
    def admin(self) -> tuple[str, str]:
        return ("Authorization", f"Bearer {self.a.admin_token}")

    @property
    def basic(self) -> tuple[str, str]:
        import base64
        c = self.client
        cred = base64.b64encode(f"{c['client_id']}:{c['client_secret']}".encode()).decode()
        return ("Authorization", f"Basic {cred}")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    require_authserver()
    module = tmp_path_factory.mktemp("hostile") / "module.wasm"
    module.write_bytes(secrets.token_bytes(MODULE_BYTES))
    a = AuthServer(env={
        "TOLLGATE_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
        "TOLLGATE_SEND_TIMEOUT_MS": str(SEND_TIMEOUT_MS),
        "TOLLGATE_REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
        "TOLLGATE_MAX_BODY_BYTES": str(MAX_BODY),
        "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
        "TOLLGATE_RATE_LIMIT_PER_IP": "0",
        "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0",
        "TOLLGATE_EDGE_MODULE": str(module),
    })
    try:
        s = Srv(a)
        ADMIN_TOKEN[0] = a.admin_token
        s.client = a.register_client(scope="api:read tollgate:edge")
        s.secret(s.client["client_secret"])
        s.secret(s.client["registration_access_token"])
        s.password = s.secret(secrets.token_urlsafe(18))
        r = requests.post(f"{a.admin_base}/admin/users", timeout=10,
                          json={"username": "alice", "password": s.password},
                          headers={"authorization": f"Bearer {a.admin_token}"})
        assert r.status_code == 201, r.text
        s.token = s.secret(a.token(s.client))
        s.rss0 = rss_kib(a.proc.pid)
        yield s
    finally:
        a.stop()


def assert_healthy(s: Srv) -> None:
    """Alive, /healthz answers, a normal token request works, memory did not explode, no
    panic in the log."""
    assert s.a.proc.alive(), s.a.proc.tail()
    assert requests.get(f"{s.a.base}/healthz", timeout=5).status_code == 200
    assert s.a.token(s.client).count(".") == 2
    grown = rss_kib(s.a.proc.pid) - s.rss0
    assert grown < 128 * 1024, f"RSS grew by {grown} KiB"
    log = s.a.proc.log()
    assert "panicked" not in log, log[-2000:]


def assert_error(r, status: int, code: str | None = None, www: str | None = None) -> dict:
    """An RFC 6749 error answer: status, JSON `error` (+ optional description), no-store."""
    assert r.status == status, (r.status, r.raw[:400])
    assert (r.header("content-type") or "").startswith(JSON), r.raw[:400]
    assert r.header("cache-control") == "no-store", r.raw[:400]
    body = r.json()
    assert isinstance(body.get("error"), str) and set(body) <= {"error", "error_description"}
    assert isinstance(body.get("error_description", ""), str)
    if code:
        assert body["error"] == code, body
    if www:
        assert (r.header("www-authenticate") or "").startswith(www), r.headers
    return body


def assert_html_error(r, status: int = 400, contains: str = "invalid_request") -> None:
    """The authorization endpoint answers the user, not the client: an HTML page, never a
    redirect to an unvalidated URI (RFC 6749 §4.1.2.1)."""
    assert r.status == status, r.raw[:400]
    assert r.header("location") is None
    assert (r.header("content-type") or "").startswith("text/html")
    assert r.header("cache-control") == "no-store"
    assert contains in r.text, r.text[:800]


# ---------------------------------------------------------------- methods

@pytest.mark.parametrize("listener", ["public", "admin"])
def test_every_endpoint_answers_every_wrong_method_with_405_and_allow(srv, listener):
    routes = router_routes("router" if listener == "public" else "admin_router")
    port = srv.a.port if listener == "public" else srv.a.admin_port
    assert len(routes) >= (14 if listener == "public" else 7), routes
    meta = requests.get(f"{srv.a.base}/.well-known/oauth-authorization-server", timeout=5).json()
    advertised = {v[len(srv.a.issuer):] for k, v in meta.items()
                  if (k.endswith("_endpoint") or k == "jwks_uri") and isinstance(v, str)}
    if listener == "public":
        assert advertised and advertised <= set(routes), advertised - set(routes)
    checked = 0
    for path, allowed in routes.items():
        allow = allowed | ({"HEAD"} if "GET" in allowed else set())
        target = concrete(path)
        for m in ALL_METHODS:
            if m in allow:
                # The route exists for this method (the enumeration is right).
                r = srv.req(m, target, [srv.admin], port=port)
                assert r.status != 405, (m, path)
                if r.status == 404 and m != "HEAD":
                    assert r.json().get("error_description") != "no such endpoint", (m, path)
                continue
            r = srv.req(m, target, [srv.admin], b"" if m in ("POST", "PUT", "PATCH") else None,
                        port=port)
            assert r.status == 405, (m, path, r.raw[:300])
            got = {x.strip() for x in (r.header("allow") or "").split(",") if x.strip()}
            assert got == allow, (m, path, got, allow)
            if m != "HEAD":
                assert_error(r, 405, "invalid_request")
            checked += 1
    assert checked >= (100 if listener == "public" else 40)
    # CONNECT needs an authority-form target: refused, never served.
    r = srv.send(build("CONNECT", "/oauth2/token", [srv.admin]))
    assert r.status in (400, 405), r.raw[:200]
    assert_healthy(srv)


# ---------------------------------------------------------------- repeated parameters

def test_repeated_parameters_are_invalid_request(srv):
    form = [("Content-Type", FORM)]
    # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    for path, auth, body in [
        ("/oauth2/token", srv.basic, b"grant_type=client_credentials&grant_type=client_credentials"),
        ("/oauth2/token", srv.basic, b"grant_type=client_credentials&scope=api:read&scope=x"),
        ("/oauth2/introspect", srv.basic, f"token={srv.token}&token=x".encode()),
        ("/oauth2/revoke", srv.basic, f"token=x&token={srv.token}".encode()),
        ("/edge/ratelimit/lease", srv.admin, b"key=a&key=b&limit=5&window_s=1&want=1"),
        ("/oauth2/login", None, b"csrf=a&csrf=b&username=alice"),
        ("/oauth2/consent", None, b"csrf=a&csrf=a&decision=allow"),
    ]:
        r = srv.req("POST", path, form + ([auth] if auth else []), body)
        if path in ("/oauth2/login", "/oauth2/consent"):
            assert_html_error(r)
            continue
        d = assert_error(r, 400, "invalid_request")
        assert "repeated" in d["error_description"], d
    # The token of a rejected revocation is still active.
    r = requests.post(f"{srv.a.base}/oauth2/introspect", data={"token": srv.token}, timeout=5,
                      auth=(srv.client["client_id"], srv.client["client_secret"]))
    assert r.json()["active"] is True
    # Query parameters: the revocation feed and the authorization endpoint.
    d = assert_error(srv.req("GET", "/edge/revocations?since=1&since=2", [srv.admin]), 400,
                     "invalid_request")
    assert "repeated" in d["error_description"]
    assert_error(srv.req("GET", "/edge/revocations?limit=1&limit=1", [srv.admin]), 400,
                 "invalid_request")
    cid = srv.client["client_id"]
    assert_html_error(srv.req(
        "GET", f"/oauth2/authorize?response_type=code&client_id={cid}&client_id={cid}"
               "&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"))
    # JSON members given twice: the admin API refuses, registration is tested below.
    d = assert_error(srv.req("POST", "/admin/users", [srv.admin, ("Content-Type", JSON)],
                             b'{"username":"bob","username":"mallory","password":"pw-12345678"}'),
                     400, "invalid_request")
    assert "duplicate" in d["error_description"]
    assert requests.get(f"{srv.a.admin_base}/admin/users/mallory", timeout=5,
                        headers={"authorization": f"Bearer {srv.a.admin_token}"}
                        ).status_code == 404
    assert_healthy(srv)


def test_repeated_authorization_and_content_type_headers_are_refused(srv):
    form = ("Content-Type", FORM)
    body = b"grant_type=client_credentials"
    # Even two identical credentials: one credential per request (RFC 6749 §2.3, RFC 6750 §2).
    for headers in ([srv.basic, srv.basic, form],
                    [srv.basic, srv.admin, form],
                    [srv.basic, form, ("Content-Type", "text/plain")],
                    [srv.basic, form, form]):
        d = assert_error(srv.req("POST", "/oauth2/token", headers, body), 400,
                         "invalid_request")
        assert "repeated" in d["error_description"]
    for path in ("/admin/clients", "/admin/users", "/edge/revocations"):
        assert_error(srv.req("GET", path, [srv.admin, srv.admin]), 400, "invalid_request")
        assert_error(srv.req("GET", path, [srv.admin, ("Authorization", "Bearer x")]), 400,
                     "invalid_request")
    assert_healthy(srv)


# ---------------------------------------------------------------- content types

def test_unknown_content_types_are_refused(srv):
    # Form endpoints: 400 invalid_request (RFC 6749 §5.2, RFC 7662, RFC 7009 say a request
    # the endpoint cannot read is invalid_request, 400). JSON endpoints: 415.
    body_form = b"grant_type=client_credentials&token=x&key=a&limit=5&window_s=1&want=1"
    body_json = b'{"client_name":"x","grant_types":["client_credentials"]}'
    for path, auth in [("/oauth2/token", srv.basic), ("/oauth2/introspect", srv.basic),
                       ("/oauth2/revoke", srv.basic), ("/edge/ratelimit/lease", srv.admin)]:
        for ct in [JSON, "text/plain", "multipart/form-data; boundary=x",
                   "application/x-www-form-urlencodedx", b"\xff\xfe/\xff", None]:
            headers = [auth] + ([("Content-Type", ct)] if ct is not None else [])
            assert_error(srv.req("POST", path, headers, body_form), 400, "invalid_request")
    for path, method in [("/oauth2/register", "POST"), ("/admin/users", "POST"),
                         (f"/oauth2/register/{srv.client['client_id']}", "PUT")]:
        for ct in [FORM, "text/json", "application/jsonp", b"application/json\xff", None]:
            headers = [srv.admin] + ([("Content-Type", ct)] if ct is not None else [])
            assert_error(srv.req(method, path, headers, body_json), 415, "invalid_request")
    # Parameters (charset) are fine; the media type is case-insensitive.
    r = srv.req("POST", "/oauth2/token",
                [srv.basic, ("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=UTF-8")],
                b"grant_type=client_credentials")
    assert r.status == 200, r.raw[:300]
    assert_healthy(srv)


# ---------------------------------------------------------------- sizes

def test_oversized_bodies_are_413(srv):
    form = ("Content-Type", FORM)
    big = b"grant_type=client_credentials&pad=" + b"a" * MAX_BODY
    assert_error(srv.req("POST", "/oauth2/token", [srv.basic, form], big), 413,
                 "invalid_request")
    assert_error(srv.req("POST", "/oauth2/register", [srv.admin, ("Content-Type", JSON)],
                         b'{"client_name":"' + b"x" * (2 * MAX_BODY) + b'"}'), 413)
    # Announced, never sent: answered at once from the Content-Length.
    for length in (MAX_BODY + 1, 10 ** 12, 2 ** 63):
        r = srv.send(build("POST", "/oauth2/token",
                           [srv.basic, form, ("Content-Length", str(length))]), timeout=5)
        assert_error(r, 413, "invalid_request")
    # A length hyper cannot represent is a bad head: its bare 431.
    r = srv.send(build("POST", "/oauth2/token", [srv.basic, form,
                                                 ("Content-Length", str(2 ** 64 - 1))]))
    assert r.status == 431
    # Chunked, no length announced: cut off at the limit.
    chunk = b"a" * 8192
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(12)) + b"0\r\n\r\n"
    r = srv.send(build("POST", "/oauth2/token",
                       [srv.basic, form, ("Transfer-Encoding", "chunked")]) + chunked)
    assert_error(r, 413, "invalid_request")
    # Exactly at the limit is read (and then refused for what it says, not its size).
    at = b"grant_type=client_credentials&pad=" + b"a" * (MAX_BODY - 34)
    assert len(at) == MAX_BODY
    assert srv.req("POST", "/oauth2/token", [srv.basic, form], at).status == 200
    assert_healthy(srv)


def test_oversized_heads_are_431_and_the_connection_closes(srv):
    for data in [
        build("GET", "/healthz", [("X-Big", "a" * 40_000)]),
        build("GET", "/healthz", [(f"X-H{i}", "1") for i in range(150)]),
        build("GET", "/oauth2/jwks?" + "a" * 40_000),
        build("POST", "/oauth2/token", [("Authorization", "Bearer " + "A" * 60_000)], b""),
    ]:
        r = srv.send(data)
        # hyper answers a head it will not parse itself: status only, then closes.
        assert r.status == 431, r.raw[:200]
    # Under the limits: fine.
    r = srv.req("GET", "/healthz", [("X-Big", "a" * 16_000)] + [(f"X-H{i}", "1") for i in range(80)])
    assert r.status == 200
    assert_healthy(srv)


# ---------------------------------------------------------------- not UTF-8

def test_bytes_that_are_not_utf8(srv):
    form = ("Content-Type", FORM)
    # Form bodies: raw and percent-encoded.
    for body in [b"grant_type=client_credentials&scope=\xff\xfe",
                 b"grant_type=client_credentials&scope=%ff",
                 b"grant_type=client_credentials&sc\xc3ope=x",
                 b"grant_type=client_credentials&scope=%c3%28",
                 b"grant_type=client_credentials&scope=%",
                 b"grant_type=client_credentials&scope=%zz"]:
        assert_error(srv.req("POST", "/oauth2/token", [srv.basic, form], body), 400,
                     "invalid_request")
    for body in [b"token=\xff", b"token=%ff", b"token=%e2%82", b"tok\xe9n=x"]:
        for path in ("/oauth2/introspect", "/oauth2/revoke"):
            assert_error(srv.req("POST", path, [srv.basic, form], body), 400, "invalid_request")
    # JSON bodies.
    assert_error(srv.req("POST", "/admin/users", [srv.admin, ("Content-Type", JSON)],
                         b'{"username":"\xff","password":"pw-12345678"}'), 400, "invalid_request")
    assert_error(srv.req("POST", "/oauth2/register", [srv.admin, ("Content-Type", JSON)],
                         b'{"client_name":"\xc3\x28"}'), 400, "invalid_client_metadata")
    # Path and query: percent-encoded bytes that decode to no text.
    assert_error(srv.req("GET", "/admin/users/%ff%fe", [srv.admin]), 400, "invalid_request")
    assert_error(srv.req("DELETE", "/oauth2/register/%c3%28", [srv.admin]), 400,
                 "invalid_request")
    assert_error(srv.req("GET", "/edge/revocations?since=%ff", [srv.admin]), 400,
                 "invalid_request")
    assert_html_error(srv.req("GET", "/oauth2/authorize?client_id=%ff&response_type=code"))
    # Raw bytes in the request target that are not UTF-8: hyper's bare 400, connection
    # closed. (Raw UTF-8 is read like its percent-encoded form.)
    for target in [b"/healthz\xff", b"/admin/users/\xff", b"/oauth2/jwks?x=\xfe",
                   b"/edge/revocations?since=\xc3\x28", b"/oauth2/authorize?client_id=\x80"]:
        assert srv.send(build("GET", target, [srv.admin])).status == 400
    r = srv.req("GET", b"/admin/users/\xc3\xa9", [srv.admin])
    assert_error(r, 404, "not_found")
    # Authorization values with such bytes: refused as credentials, RFC-shaped.
    for value in [b"Basic \xff\xfe", b"Bearer \xff", b"\xff\xfe"]:
        assert_error(srv.req("POST", "/oauth2/token", [("Authorization", value), form],
                             b"grant_type=client_credentials"), 401, "invalid_client",
                     www="Basic")
        assert_error(srv.req("GET", "/admin/clients", [("Authorization", value)]), 401,
                     "invalid_token", www="Bearer")
    # Other headers with such bytes are ignored where they mean nothing.
    r = srv.req("POST", "/oauth2/token", [srv.basic, form, ("X-Junk", b"\xff\x80")],
                b"grant_type=client_credentials")
    assert r.status == 200
    # A header name that is not a token: hyper's bare 400.
    assert srv.send(build("GET", "/healthz", [(b"X-\xff", "1")])).status == 400
    assert_healthy(srv)


def test_garbage_credentials_get_standard_errors(srv):
    form = ("Content-Type", FORM)
    body = b"grant_type=client_credentials"
    cid = srv.client["client_id"]
    for value in ["Basic", "Basic ", "Basic !!!", "Basic " + "A" * 9000, "Bearer x",
                  "Basic Og==", "Digest a=b", "Basic " + "dGVzdA==" * 3, "basic",
                  f"Basic {cid}:{srv.client['client_secret']}"]:
        assert_error(srv.req("POST", "/oauth2/token", [("Authorization", value), form], body),
                     401, "invalid_client", www="Basic")
    for value in ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b", f"Basic {srv.a.admin_token}",
                  f"Bearer {srv.a.admin_token}x", f"Bearer {srv.a.admin_token[:-1]}",
                  f"Bearer {srv.a.admin_token},{srv.a.admin_token}", "Bearer " + "A" * 20000]:
        for path in ("/admin/clients", "/admin/users", "/oauth2/register/x"):
            assert_error(srv.req("GET", path, [("Authorization", value)]), 401,
                         "invalid_token", www="Bearer")
    # Secrets sent as other parameters are never echoed (checked on every answer too).
    r = srv.req("POST", "/oauth2/token", [srv.basic, form],
                f"grant_type={srv.client['client_secret']}".encode())
    assert_error(r, 400, "unsupported_grant_type")
    r = srv.req("POST", "/oauth2/revoke", [srv.basic, form],
                f"token=x&token_type_hint={srv.token}".encode())
    assert_error(r, 400, "unsupported_token_type")
    assert_healthy(srv)


# ---------------------------------------------------------------- JSON

def test_json_with_repeated_members_or_deep_nesting_is_refused(srv):
    jh = [srv.admin, ("Content-Type", JSON)]
    before = requests.get(f"{srv.a.admin_base}/admin/clients", timeout=5,
                          headers={"authorization": f"Bearer {srv.a.admin_token}"}).json()
    reg = b'"grant_types":["client_credentials"]'
    for body in [
        b'{"client_name":"a","client_name":"b",' + reg + b'}',
        # The value a second parser would take differs: refuse rather than guess.
        b'{"scope":"api:read",' + reg + b',"scope":"admin"}',
        b'{"token_endpoint_auth_method":"none",' + reg
        + b',"token_endpoint_auth_method":"client_secret_basic"}',
        b'{"client_name":"a",' + reg + b',"jwks":{"keys":[{"kty":"EC","kty":"RSA"}]}}',
        b"[" * 60_000,
        b'{"a":' * 12_000,
        b"[" * 200 + b"]" * 200,
        b'{"client_name":"a",' + reg + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"client_name":"a"',
        b"",
        b"null",
    ]:
        d = assert_error(srv.req("POST", "/oauth2/register", jh, body), 400,
                         "invalid_client_metadata")
        assert len(d.get("error_description", "")) < 300
    cid = srv.client["client_id"]
    d = assert_error(srv.req("PUT", f"/oauth2/register/{cid}", jh,
                             f'{{"client_id":"{cid}","client_id":"other"}}'.encode()),
                     400, "invalid_client_metadata")
    assert "duplicate" in d["error_description"]
    for body in [b'{"username":"carol","password":"pw-12345678","password":"x"}',
                 b"[" * 60_000, b'{"username":' * 5_000]:
        assert_error(srv.req("POST", "/admin/users", jh, body), 400, "invalid_request")
    after = requests.get(f"{srv.a.admin_base}/admin/clients", timeout=5,
                         headers={"authorization": f"Bearer {srv.a.admin_token}"}).json()
    assert after == before
    assert_healthy(srv)


# ---------------------------------------------------------------- slow clients

def test_slow_and_idle_clients_are_disconnected_by_the_header_timeout(srv):
    """Slowloris: request heads sent one byte a second never complete; the server closes
    each connection by itself within TOLLGATE_HEADER_TIMEOUT_MS, as it does idle and
    idle keep-alive connections, and keeps serving everyone else meanwhile."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, dict] = {}

    def open_conn(kind: str) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.setblocking(False)
        conns[s] = {"kind": kind, "start": time.monotonic(), "sent": 0, "closed": None,
                    "data": b""}
        sel.register(s, selectors.EVENT_READ)
        return s

    for _ in range(20):
        open_conn("slowloris")
    for _ in range(5):
        open_conn("idle")
    ka = open_conn("keepalive")
    ka.setblocking(True)
    ka.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    ka.settimeout(5)
    first = ka.recv(4096)
    assert first.startswith(b"HTTP/1.1 200"), first
    ka.setblocking(False)
    conns[ka]["start"] = time.monotonic()

    limit = HEADER_TIMEOUT_MS / 1000
    deadline = time.monotonic() + 3 * limit + 5
    served_meanwhile = 0
    next_byte = time.monotonic()
    try:
        while time.monotonic() < deadline and any(c["closed"] is None for c in conns.values()):
            now = time.monotonic()
            if now >= next_byte:
                next_byte = now + 1.0
                for s, c in conns.items():
                    if c["kind"] == "slowloris" and c["closed"] is None and c["sent"] < len(head):
                        try:
                            s.send(head[c["sent"]:c["sent"] + 1])
                            c["sent"] += 1
                        except (BrokenPipeError, ConnectionResetError):
                            c["closed"] = time.monotonic()
                # Everyone else is served while the slow ones hang on.
                r = requests.get(f"{srv.a.base}/healthz", timeout=5)
                served_meanwhile += r.status_code == 200
            for key, _ in sel.select(timeout=0.1):
                s, c = key.fileobj, conns[key.fileobj]
                try:
                    chunk = s.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    chunk = b""
                if chunk:
                    c["data"] += chunk
                else:
                    c["closed"] = time.monotonic()
                    sel.unregister(s)
        for s, c in conns.items():
            assert c["closed"] is not None, f"{c['kind']} connection still open"
            took = c["closed"] - c["start"]
            assert took <= 2 * limit + 3, f"{c['kind']} closed after {took:.1f} s"
            # Closed without an answer: the head never completed.
            assert c["data"] == b"", c
        slow = [c for c in conns.values() if c["kind"] == "slowloris"]
        assert all(c["sent"] < len(head) for c in slow)
        assert served_meanwhile >= 1
    finally:
        for s in conns:
            s.close()
    assert_healthy(srv)


def test_a_body_that_trickles_or_stops_gets_408(srv):
    form = ("Content-Type", FORM)
    body = b"grant_type=client_credentials"
    results = []
    for trickle in (True, False):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(build("POST", "/oauth2/token", [srv.basic, form,
                                                      ("Content-Length", str(len(body)))]))
            start = time.monotonic()
            if trickle:
                for b in body:
                    try:
                        s.send(bytes([b]))
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    s.settimeout(0.5)
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break
                    except socket.timeout:
                        pass
            else:
                s.sendall(body[:10])
            got, how = read_until_closed(s, REQUEST_TIMEOUT_MS / 1000 + 10)
            results.append((time.monotonic() - start, how))
            r = parse(got)
            assert r is not None, (trickle, how, got)
            srv.check_clean(got)
            assert_error(r, 408, "invalid_request")
            assert r.header("connection") == "close"
            assert how in ("eof", "reset")
    for took, _ in results:
        assert took <= REQUEST_TIMEOUT_MS / 1000 + 5, results
    assert_healthy(srv)


def test_a_client_that_never_reads_is_cut_off_by_the_send_timeout(srv):
    """Pipelined downloads of the 8 MiB edge module on a connection whose reader never
    reads: the server's writes stall; after TOLLGATE_SEND_TIMEOUT_MS it drops the
    connection instead of holding it (and the responses) forever."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.connect(("127.0.0.1", srv.port))
        req = build("GET", "/edge/module.wasm", close=False)
        s.sendall(req * 4)
        # Do not read for well over the send timeout; others are served meanwhile.
        time.sleep(SEND_TIMEOUT_MS / 1000 + 1)
        assert requests.get(f"{srv.a.base}/edge/module.wasm.sha256", timeout=5).status_code == 200
        time.sleep(SEND_TIMEOUT_MS / 1000 + 1)
        got, how = read_until_closed(s, 10)
    finally:
        s.close()
    # Without the send timeout all 4 responses (32 MiB) would arrive now; with it, only
    # what the kernel buffered before the cut (a few MiB).
    assert how in ("eof", "reset"), how
    assert len(got) < 3 * MODULE_BYTES, len(got)
    assert got.startswith(b"HTTP/1.1 200")
    assert_healthy(srv)
