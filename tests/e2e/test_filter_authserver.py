"""The filter in real Envoy (--concurrency 2) in front of the REAL auth server: its tokens
and JWKS, scopes, and an auth-server outage (valid tokens keep working on the cached JWKS).

Skipped, with a message, only while target/release/authserver has not been built."""
from __future__ import annotations

import time

import pytest
import requests

from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import Envoy, filter_config, issuer_entry
from harness.issuer import TestIssuer


def gateway(auth: AuthServer, echo, **jwks) -> Envoy:
    cfg = filter_config(
        issuers=[issuer_entry(auth.issuer, "tollgate-authserver",
                              algorithms=["ES256", "RS256", "EdDSA"],
                              **{"refresh_interval_s": 60, "min_refresh_interval_s": 1,
                                 "retry_interval_s": 1, "timeout_ms": 1000, **jwks})],
        rules=[{"name": "write", "path_prefix": "/write", "scopes": ["api:write"]}],
    )
    return Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port)


def call(gw: Envoy, token: str | None, path: str = "/r") -> requests.Response:
    h = {"connection": "close"}
    if token:
        h["authorization"] = f"Bearer {token}"
    return requests.get(gw.url(path), headers=h, timeout=20)


def call_until(gw, token, want=200, path="/r", timeout=10.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = call(gw, token, path)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_auth_server_tokens_accepted_with_identity(alg, echo, wasm):
    require_authserver()
    with AuthServer(env={"TOLLGATE_SIGNING_ALG": alg}) as auth, gateway(auth, echo) as gw:
        client = auth.register_client(scope="api:read api:write", name=f"e2e-{alg}")
        tok = auth.token(client, scope="api:read")
        r = call(gw, tok)  # the first request may wait for the first JWKS: never a 503 here
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert seen["x-tollgate-sub"] == client["client_id"]
        assert seen["x-tollgate-client-id"] == client["client_id"]
        assert seen["x-tollgate-scope"] == "api:read"
        assert seen["x-tollgate-iss"] == auth.issuer
        # Insufficient scope.
        r = call(gw, tok, "/write/x")
        assert r.status_code == 403
        assert 'scope="api:write"' in r.headers["www-authenticate"]
        assert call(gw, auth.token(client, scope="api:write"), "/write/x").status_code == 200
        # No token, and a token of this issuer's shape signed by someone else.
        assert call(gw, None).status_code == 401
        forged = TestIssuer(issuer=auth.issuer)
        try:
            r = call(gw, forged.mint(kid="k1"))
            assert r.status_code == 401
        finally:
            forged.stop()


def test_auth_server_stopped_valid_tokens_keep_working(echo, wasm):
    require_authserver()
    auth = AuthServer()
    try:
        with gateway(auth, echo) as gw:
            client = auth.register_client(scope="api:read")
            seen_before = auth.token(client)
            unseen = auth.token(client)
            assert call_until(gw, seen_before).status_code == 200
            auth.stop()
            failed = gw.counter("tollgate_jwks_refresh_failed")
            # Provoke refresh attempts (unknown kid) while the auth server is down.
            stranger = TestIssuer(issuer=auth.issuer)
            stranger.keys["unknown-kid"] = stranger.keys.pop("k1")
            probe = stranger.mint(kid="unknown-kid")
            stranger.stop()
            deadline = time.monotonic() + 10
            while (gw.counter("tollgate_jwks_refresh_failed") == failed
                   and time.monotonic() < deadline):
                assert call(gw, probe).status_code == 401
                time.sleep(0.3)
            assert gw.counter("tollgate_jwks_refresh_failed") > failed
            # The cached token and a never-seen token (stale JWKS) both pass.
            for _ in range(5):
                assert call(gw, seen_before).status_code == 200
                assert call(gw, unseen).status_code == 200
            # The auth server comes back (in-memory store: new signing key, new kid):
            # the unknown kid triggers a refresh and the new tokens are accepted.
            auth.start()
            client2 = auth.register_client(scope="api:read")
            fresh = auth.token(client2)
            r = call_until(gw, fresh, timeout=15)
            assert r.status_code == 200, r.text
    finally:
        auth.stop()
