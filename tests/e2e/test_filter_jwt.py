"""The Tollgate filter inside real Envoy (--concurrency 2) with a test-controlled issuer:
valid tokens, every kind of bad token, scopes, spoofed headers, JWKS refresh and outage."""
from __future__ import annotations

import time

import pytest
import requests

from harness.envoy import Envoy, filter_config, issuer_entry
from harness.issuer import TestIssuer

ALGS = ["ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"]


def gateway_config(iss: TestIssuer, **fields) -> dict:
    return filter_config(
        issuers=[issuer_entry(iss.issuer, "test-issuer", algorithms=ALGS,
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        rules=[
            {"name": "public", "path_prefix": "/public", "allow_anonymous": True},
            {"name": "write", "path_prefix": "/write", "scopes": ["api:write"]},
            {"name": "admin", "path_exact": "/admin", "methods": ["POST"],
             "scopes": ["admin", "ops"], "scope_mode": "any"},
        ],
        headers={"claims": {"jti": "x-tollgate-jti", "tenant": "x-tenant"}},
        **fields,
    )


@pytest.fixture(scope="module")
def iss():
    i = TestIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(iss, echo, wasm):
    with Envoy(filter_config=gateway_config(iss), upstream_port=echo.port,
               issuer_port=iss.port) as g:
        yield g


def call(gw: Envoy, path: str = "/resource", token: str | None = None, method: str = "GET",
         headers: dict | None = None) -> requests.Response:
    h = dict(headers or {})
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    # A new connection per request spreads requests over both Envoy workers.
    return requests.request(method, gw.url(path), headers={**h, "connection": "close"},
                            timeout=10)


def call_until(gw, want: int, timeout: float = 10.0, **kw) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = call(gw, **kw)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def assert_invalid_token(r: requests.Response, description: str | None = None) -> None:
    assert r.status_code == 401, r.text
    www = r.headers["www-authenticate"]
    assert www.startswith('Bearer realm="tollgate", error="invalid_token"'), www
    body = r.json()
    assert body["error"] == "invalid_token"
    if description:
        assert description in body["error_description"], body
        assert description in www


def test_valid_token_forwards_identity(gw, iss):
    tok = iss.mint(sub="client-7", scope="api:read api:write", tenant="acme")
    r = call_until(gw, 200, path="/resource?x=1", token=tok)  # first JWKS load may be in flight
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-tollgate-sub"] == "client-7"
    assert seen["x-tollgate-client-id"] == "client-7"
    assert seen["x-tollgate-scope"] == "api:read api:write"
    assert seen["x-tollgate-iss"] == iss.issuer
    assert seen["x-tenant"] == "acme"
    assert len(seen["x-tollgate-jti"]) == 32
    assert seen["authorization"] == f"Bearer {tok}"  # kept unless strip_authorization


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm(gw, iss, alg):
    kid = f"alg-{alg}"
    if kid not in iss.keys:
        iss.add_key(kid, alg)
    tok = iss.mint(kid=kid)
    r = call_until(gw, 200, token=tok)  # a new kid: refresh, then accepted
    assert r.status_code == 200, r.text


def test_missing_token(gw):
    r = call(gw)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="tollgate"'
    assert r.json()["error"] == "invalid_request"
    r = call(gw, headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert_invalid_token(r)


def test_anonymous_route(gw, echo):
    r = call(gw, path="/public/page")
    assert r.status_code == 200
    assert "x-tollgate-sub" not in r.json()["headers"]


@pytest.mark.parametrize("case,description", [
    ("expired", "token expired"),
    ("not_yet_valid", "token not yet valid"),
    ("wrong_issuer", "issuer not accepted"),
    ("wrong_audience", "audience not accepted"),
    ("bad_signature", "signature invalid"),
    ("foreign_key_same_kid", "signature invalid"),
    ("alg_none", None),
    ("hs256_public_key", "signing algorithm not accepted"),
    ("jwk_header", "token header not accepted"),
    ("jku_header", "token header not accepted"),
    ("x5u_header", "token header not accepted"),
    ("malformed_base64", "malformed token"),
    ("not_a_jwt", "malformed token"),
    ("wrong_typ", "token type not accepted"),
    ("no_exp", "required claim missing or invalid: exp"),
])
def test_bad_tokens_are_refused(gw, iss, case, description):
    now = int(time.time())
    call_until(gw, 200, token=iss.mint())  # JWKS loaded
    if case == "expired":
        tok = iss.mint(claims=iss.claims(exp=now - 120, iat=now - 600, nbf=now - 600))
    elif case == "not_yet_valid":
        tok = iss.mint(claims=iss.claims(nbf=now + 600))
    elif case == "wrong_issuer":
        tok = iss.mint(claims={**iss.claims(), "iss": "http://elsewhere.test"})
    elif case == "wrong_audience":
        tok = iss.mint(claims={**iss.claims(), "aud": "someone-else"})
    elif case == "bad_signature":
        good = iss.mint(scope="api:read")
        h, _, sig = good.split(".")
        forged_body = TestIssuer.raw_token({}, iss.claims(scope="api:write admin")).split(".")[1]
        tok = f"{h}.{forged_body}.{sig}"
    elif case == "foreign_key_same_kid":
        other = TestIssuer(issuer=iss.issuer)
        tok = other.mint(kid="k1")
        other.stop()
    elif case == "alg_none":
        tok = TestIssuer.raw_token({"alg": "none", "typ": "at+jwt", "kid": "k1"},
                                   iss.claims(), b"")[:-1] + "."
        tok = tok.rstrip(".") + "."
    elif case == "hs256_public_key":
        tok = iss.hs256_with_public_key()
    elif case == "jwk_header":
        attacker = TestIssuer(issuer=iss.issuer)
        from harness.issuer import public_jwk
        key, alg = attacker.keys["k1"]
        tok = attacker.mint(headers={"jwk": public_jwk(key, "k1", alg)})
        attacker.stop()
    elif case == "jku_header":
        tok = iss.mint(headers={"jku": "http://127.0.0.1:1/evil-jwks"})
    elif case == "x5u_header":
        tok = iss.mint(headers={"x5u": "http://127.0.0.1:1/evil.pem"})
    elif case == "malformed_base64":
        h, p, s = iss.mint().split(".")
        tok = f"{h}.{p[:10]}*{p[11:]}.{s}"
    elif case == "not_a_jwt":
        tok = "definitely-not-a-jwt"
    elif case == "wrong_typ":
        tok = iss.mint(headers={"typ": "JWT"})
    elif case == "no_exp":
        tok = iss.mint(claims={k: v for k, v in iss.claims().items() if k != "exp"})
    else:
        raise AssertionError(case)
    r = call(gw, token=tok)
    assert_invalid_token(r, description)
    # And the gateway is still serving.
    assert call(gw, token=iss.mint()).status_code == 200


def test_alg_none_unsigned(gw, iss):
    call_until(gw, 200, token=iss.mint())
    head = TestIssuer.raw_token({"alg": "none", "typ": "at+jwt"}, iss.claims()).rsplit(".", 1)[0]
    for tok in (head + ".", head):
        assert_invalid_token(call(gw, token=tok))


def test_huge_header_is_refused_without_crash(gw, iss):
    call_until(gw, 200, token=iss.mint())
    huge = "A" * (64 * 1024)
    r = call(gw, token=huge)
    assert_invalid_token(r, "token too large")
    # A JWT-shaped one (three segments) too.
    assert_invalid_token(call(gw, token=f"{huge[:40000]}.{huge[:20000]}.{huge[:4000]}"),
                         "token too large")
    # A big non-token header does not disturb a valid token.
    r = call(gw, token=iss.mint(), headers={"x-filler": "B" * (32 * 1024)})
    assert r.status_code == 200
    assert gw.proc.alive()


def test_insufficient_scope(gw, iss):
    tok = iss.mint(scope="api:read")
    r = call_until(gw, 403, path="/write/items", token=tok)
    assert r.status_code == 403
    www = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in www and 'scope="api:write"' in www, www
    assert r.json() == {"error": "insufficient_scope",
                        "error_description": "the token lacks a required scope",
                        "scope": "api:write"}
    assert call(gw, path="/write/items", token=iss.mint(scope="api:write")).status_code == 200
    # scope_mode any + method match
    assert call(gw, path="/admin", method="POST", token=iss.mint(scope="ops")).status_code == 200
    assert call(gw, path="/admin", method="POST", token=tok).status_code == 403
    assert call(gw, path="/admin", method="GET", token=tok).status_code == 200


def test_spoofed_identity_headers_are_removed(gw, iss):
    spoof = {"x-tollgate-sub": "admin", "x-tollgate-scope": "admin", "x-tenant": "other",
             "x-tollgate-made-up": "1", "X-Tollgate-Client-Id": "root"}
    r = call(gw, path="/public/x", headers=spoof)
    assert r.status_code == 200
    seen = r.json()["headers"]
    for k in spoof:
        assert k.lower() not in seen, k
    r = call_until(gw, 200, token=iss.mint(sub="real", scope="api:read"), headers=spoof)
    seen = r.json()["headers"]
    assert seen["x-tollgate-sub"] == "real"
    assert seen["x-tollgate-scope"] == "api:read"
    assert seen["x-tollgate-client-id"] == "real"
    assert "x-tenant" not in seen and "x-tollgate-made-up" not in seen


def test_verified_tokens_are_cached_across_workers(gw, iss):
    call_until(gw, 200, token=iss.mint())
    tok = iss.mint(sub="cached")
    before = gw.counters()
    for _ in range(20):
        assert call(gw, token=tok).status_code == 200
    after = gw.counters()
    misses = after["wasmcustom.tollgate_cache_miss"] - before.get("wasmcustom.tollgate_cache_miss", 0)
    hits = after["wasmcustom.tollgate_cache_hit"] - before.get("wasmcustom.tollgate_cache_hit", 0)
    assert misses == 1 and hits == 19, (misses, hits)


def test_unknown_kid_refreshes_jwks_once(gw, iss):
    call_until(gw, 200, token=iss.mint())
    iss.add_key("rotated", "ES256", publish=False)
    tok = iss.mint(kid="rotated")
    fetches = iss.jwks_requests
    # Not published yet: refused, and a burst of unknown kids causes few fetches.
    t0 = time.monotonic()
    for _ in range(30):
        assert_invalid_token(call(gw, token=tok), "signing key not found")
    elapsed = time.monotonic() - t0
    # min_refresh_interval_s = 1: at most one refresh per started second (+1 in flight).
    assert iss.jwks_requests - fetches <= int(elapsed) + 3, (iss.jwks_requests - fetches, elapsed)
    iss.publish("rotated")
    r = call_until(gw, 200, token=tok, timeout=10)
    assert r.status_code == 200, r.text
    assert gw.counter("tollgate_jwks_unknown_kid_refresh") >= 1


def test_jwks_outage_keeps_serving_stale_keys(gw, iss):
    tok = iss.mint(sub="before-outage")
    call_until(gw, 200, token=tok)
    iss.mode = "down"
    try:
        failed = gw.counter("tollgate_jwks_refresh_failed")
        # Force refresh attempts with an unknown kid, and wait for them to fail.
        iss.add_key("during-outage", "ES256")
        unknown = iss.mint(kid="during-outage")
        deadline = time.monotonic() + 10
        while gw.counter("tollgate_jwks_refresh_failed") == failed and time.monotonic() < deadline:
            call(gw, token=unknown)
            time.sleep(0.3)
        assert gw.counter("tollgate_jwks_refresh_failed") > failed
        # Cached token, and a token never seen (verified on the stale JWKS), both pass.
        assert call(gw, token=tok).status_code == 200
        assert call(gw, token=iss.mint(sub="new-during-outage")).status_code == 200
        iss.mode = "garbage"
        time.sleep(1.5)
        assert call(gw, token=iss.mint(sub="garbage-jwks")).status_code == 200
    finally:
        iss.mode = "ok"
    assert call_until(gw, 200, token=unknown).status_code == 200
