"""Revocation at the edge, opaque-token introspection and shared rate limits, in real Envoy
(--concurrency 2: two workers share the state) in front of the real auth server."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import socket
import time

import pytest
import requests

import test_filter_schema
from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import Envoy, filter_config, issuer_entry

POLL_MS = 1000
TICK_MS = 100


def edge_client(auth: AuthServer) -> dict:
    return auth.register_client(scope="tollgate:edge", name="gateway")


def gateway(auth: AuthServer, echo, edge: dict, rules=None, **extra) -> Envoy:
    cfg = filter_config(
        issuers=[issuer_entry(auth.issuer, "tollgate-authserver", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        auth_server={"cluster": "tollgate-authserver", "client_id": edge["client_id"],
                     "client_secret": edge["client_secret"], "timeout_ms": 1000},
        revocation={"poll_interval_ms": POLL_MS, **extra.pop("revocation", {})},
        rules=rules or [],
        tick_ms=TICK_MS,
        **extra,
    )
    test_filter_schema.VALIDATOR.validate(cfg)  # the chart's schema accepts what we run
    return Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port)


def call(gw: Envoy, token: str | None, path: str = "/r", headers=None) -> requests.Response:
    h = {"connection": "close", **(headers or {})}  # a new connection: either worker
    if token:
        h["authorization"] = f"Bearer {token}"
    return requests.get(gw.url(path), headers=h, timeout=20)


def revoke(auth: AuthServer, client: dict, token: str) -> None:
    r = requests.post(f"{auth.base}/oauth2/revoke", data={"token": token}, timeout=5,
                      auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200, r.text


@contextlib.contextmanager
def restartable_auth(tmp_path):
    """An auth server over a real Redis: stopped and started again it keeps its clients,
    keys and tokens (an in-memory store would forget the gateway's own client)."""
    from harness.redis import RedisServer
    with RedisServer(tmp_path) as redis:
        auth = AuthServer(env={"TOLLGATE_STORE": redis.url(0),
                               "TOLLGATE_SECRET_PEPPER": "e2e-pepper"})
        try:
            yield auth
        finally:
            auth.stop()


def wait_status(gw, token, want, timeout=10.0, path="/r") -> tuple[requests.Response, float]:
    start = time.monotonic()
    while True:
        r = call(gw, token, path)
        if r.status_code == want or time.monotonic() - start > timeout:
            return r, time.monotonic() - start
        time.sleep(0.02)


def test_revoked_token_is_rejected_within_one_poll_interval(echo, wasm):
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge) as gw:
            client = auth.register_client(scope="api:read")
            tok = auth.token(client)
            other = auth.token(client)
            assert call(gw, tok).status_code == 200  # verified and cached by now
            revoke(auth, client, tok)
            r, elapsed = wait_status(gw, tok, 401)
            assert r.status_code == 401, r.text
            print(f"revocation propagation (revoke answered -> gateway 401): {elapsed:.3f} s")
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
            assert "revoked" in r.json()["error_description"]
            # The bound: one poll interval, plus the timer granularity and the request.
            assert elapsed <= (POLL_MS + 2 * TICK_MS) / 1000 + 0.5, elapsed
            # Both workers refuse it; the other token of the same client still passes.
            assert all(call(gw, tok).status_code == 401 for _ in range(6))
            assert call(gw, other).status_code == 200


def test_deleted_clients_tokens_are_refused_at_the_edge(echo, wasm):
    """Deleting a client revokes the access tokens it was issued: the gateway refuses them
    from its next feed poll, not only once they expire (issue 12)."""
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge) as gw:
            doomed = auth.register_client(scope="api:read")
            kept = auth.register_client(scope="api:read")
            toks = [auth.token(doomed) for _ in range(2)]
            other = auth.token(kept)
            assert all(call(gw, t).status_code == 200 for t in toks + [other])
            r = requests.delete(f"{auth.admin_base}/oauth2/register/{doomed['client_id']}",
                                headers={"authorization": f"Bearer {auth.admin_token}"},
                                timeout=10)
            assert r.status_code == 204, r.text
            for t in toks:
                r, _ = wait_status(gw, t, 401)
                assert r.status_code == 401, r.text
                assert "revoked" in r.json()["error_description"]
            assert call(gw, other).status_code == 200


def test_gap_in_polling_catches_up_and_resyncs(echo, wasm, tmp_path):
    """The gateway loses the auth server while tokens are revoked elsewhere (more than
    the feed keeps): on return it resyncs and rejects all of them."""
    require_authserver()
    from harness.redis import RedisServer
    with RedisServer(tmp_path) as redis:
        env = {"TOLLGATE_STORE": redis.url(0), "TOLLGATE_REVOCATION_FEED_MAX": "2",
               "TOLLGATE_SECRET_PEPPER": "e2e-pepper"}
        auth = AuthServer(env=env)
        try:
            edge = edge_client(auth)
            with gateway(auth, echo, edge) as gw:
                client = auth.register_client(scope="api:read")
                toks = [auth.token(client) for _ in range(5)]
                assert all(call(gw, t).status_code == 200 for t in toks)
                auth.stop()
                with AuthServer(env=env) as other:  # another replica, same Redis
                    for t in toks:
                        revoke(other, client, t)
                assert all(call(gw, t).status_code == 200 for t in toks), "gateway cannot know yet"
                auth.start()
                for t in toks:
                    r, _ = wait_status(gw, t, 401)
                    assert r.status_code == 401
        finally:
            auth.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_stale_feed_follows_the_configured_mode(mode, echo, wasm, tmp_path):
    require_authserver()
    with restartable_auth(tmp_path) as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge,
                     revocation={"stale_after_s": 2, "stale_mode": mode}) as gw:
            client = auth.register_client(scope="api:read")
            tok = auth.token(client)
            assert call(gw, tok).status_code == 200
            auth.stop()
            time.sleep(3.5)
            r = call(gw, tok)
            if mode == "open":
                assert r.status_code == 200
            else:
                assert r.status_code == 503, r.text
                assert r.headers.get("retry-after")
            assert gw.counter("tollgate_revocation_stale") > 0
            auth.start()
            r, _ = wait_status(gw, tok, 200)
            assert r.status_code == 200, "recovers without an Envoy restart"


def test_rate_limit_is_shared_by_both_workers(echo, wasm):
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        rules = [{"name": "limited", "path_prefix": "/limited/",
                  "rate_limit": {"requests": 5, "period_s": 60, "key": "client_id"}},
                 {"name": "fast", "path_prefix": "/fast/",
                  "rate_limit": {"requests": 2, "period_s": 2, "key": "client_id"}}]
        with gateway(auth, echo, edge, rules=rules) as gw:
            a = auth.register_client(scope="api:read")
            b = auth.register_client(scope="api:read")
            ta, tb = auth.token(a), auth.token(b)
            codes = [call(gw, ta, "/limited/x") for _ in range(12)]
            ok = [r for r in codes if r.status_code == 200]
            limited = [r for r in codes if r.status_code == 429]
            assert len(ok) == 5 and len(limited) == 7, [r.status_code for r in codes]
            r = limited[0]
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["ratelimit-policy"] == '"limited";q=5;w=60'
            assert r.headers["ratelimit"].startswith('"limited";r=0;t=')
            assert r.json()["error"] == "rate_limited"
            assert ok[0].headers["ratelimit"] .startswith('"limited";r=4')
            # Another client has its own bucket.
            assert call(gw, tb, "/limited/x").status_code == 200
            # Recovery: 2 per 2 s refills one token a second.
            assert [call(gw, ta, "/fast/").status_code for _ in range(3)] == [200, 200, 429]
            time.sleep(1.1)
            assert call(gw, ta, "/fast/").status_code == 200


def test_rate_limit_by_client_ip_and_header(echo, wasm):
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        rules = [{"name": "by-ip", "path_prefix": "/ip/", "allow_anonymous": True,
                  "rate_limit": {"requests": 2, "period_s": 60, "key": "client_ip"}},
                 {"name": "by-key", "path_prefix": "/key/", "allow_anonymous": True,
                  "rate_limit": {"requests": 1, "period_s": 60, "key": {"header": "x-api-key"}}}]
        with gateway(auth, echo, edge, rules=rules, client_ip={"xff_hops": 1}) as gw:
            def ip(addr):
                return [call(gw, None, "/ip/", {"x-forwarded-for": f"10.9.9.9, {addr}"}).status_code
                        for _ in range(3)]
            assert ip("192.0.2.1") == [200, 200, 429]
            assert ip("192.0.2.2") == [200, 200, 429], "the trusted hop, not the spoofable first"
            # Without X-Forwarded-For the key is the downstream peer address (the filter
            # reads `source.address` only for such rules): two loopback sources, two buckets.
            assert [peer_status(gw, "/ip/", "127.0.0.3") for _ in range(3)] == [200, 200, 429]
            assert [peer_status(gw, "/ip/", "127.0.0.4") for _ in range(3)] == [200, 200, 429]
            assert [call(gw, None, "/key/", {"x-api-key": "k1"}).status_code for _ in range(2)] == [200, 429]
            assert call(gw, None, "/key/", {"x-api-key": "k2"}).status_code == 200


def peer_status(gw: Envoy, path: str, source_ip: str) -> int:
    """Status of a GET sent from `source_ip` (a loopback address: all of 127/8 is local)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20,
                                  source_address=(source_ip, 0)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n".encode())
        head = s.recv(64).decode("latin-1")
    return int(head.split(" ", 2)[1])


def introspections(auth: AuthServer) -> int:
    r = requests.get(f"{auth.admin_base}/admin/stats", timeout=5,
                     headers={"authorization": f"Bearer {auth.admin_token}"})
    return int(r.json()["auth_stats"].get("introspections", 0))


def test_opaque_tokens_by_introspection(echo, wasm):
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge, introspection={"issuer": auth.issuer,
                                                      "negative_ttl_s": 5}) as gw:
            client = auth.register_client(scope="api:read", access_token_format="opaque")
            tok = auth.token(client)
            assert tok.startswith("tg_at_")
            r = call(gw, tok)
            assert r.status_code == 200, r.text
            seen = r.json()["headers"]
            assert seen["x-tollgate-sub"] == client["client_id"]
            assert seen["x-tollgate-scope"] == "api:read"
            # Inactive (unknown) token.
            assert call(gw, "tg_at_" + "A" * 43).status_code == 401
            # One introspection for a burst of identical uncached requests on both workers.
            fresh = auth.token(client)
            before = introspections(auth)
            with cf.ThreadPoolExecutor(16) as ex:
                codes = list(ex.map(lambda _: call(gw, fresh).status_code, range(32)))
            assert codes == [200] * 32
            assert introspections(auth) - before == 1
            # Revoked: the feed carries it; the cached active answer is overridden.
            revoke(auth, client, fresh)
            r, _ = wait_status(gw, fresh, 401)
            assert r.status_code == 401


def test_opaque_tokens_fail_closed_when_the_auth_server_is_down(echo, wasm, tmp_path):
    require_authserver()
    with restartable_auth(tmp_path) as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge, introspection={"issuer": auth.issuer}) as gw:
            client = auth.register_client(scope="api:read", access_token_format="opaque")
            cached, uncached = auth.token(client), auth.token(client)
            assert call(gw, cached).status_code == 200
            auth.stop()
            assert call(gw, cached).status_code == 200, "a cached answer keeps serving"
            r = call(gw, uncached)
            assert r.status_code == 503, r.text
            auth.start()
            r, _ = wait_status(gw, uncached, 200)
            assert r.status_code == 200


def jwt_exp(token: str) -> int:
    import base64
    import json
    payload = token.split(".")[1]
    return int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


def test_revoked_token_stays_refused_within_the_clock_skew_after_exp(echo, wasm):
    """Issue 12 item 5: the gateway accepts a token until exp + clock_skew_s, so its
    revocation is kept that long (up to 600 s) by the gateway and by the auth server's
    feed: past exp, the revoked token stays refused, also at a gateway that starts then
    (full resync)."""
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge, clock_skew_s=600) as gw:
            client = auth.register_client(scope="api:read", access_token_ttl=5)
            tok = auth.token(client)
            exp = jwt_exp(tok)
            r, _ = wait_status(gw, tok, 200)
            assert r.status_code == 200, r.text
            revoke(auth, client, tok)
            r, _ = wait_status(gw, tok, 401)
            assert r.json()["error_description"] == "token revoked", r.text
            # Past exp (within the skew), after more polls of the feed.
            time.sleep(max(0.0, exp + 1 - time.time()) + 2 * POLL_MS / 1000)
            for _ in range(6):
                r = call(gw, tok)
                assert r.status_code == 401, r.text
                assert r.json()["error_description"] == "token revoked", r.text
        # A gateway started now loads the revoked set by a full resync: it is listed.
        with gateway(auth, echo, edge, clock_skew_s=600) as gw2:
            r, _ = wait_status(gw2, tok, 401, timeout=15)
            assert r.status_code == 401, r.text
            assert r.json()["error_description"] == "token revoked", r.text


def test_introspection_abuse_costs_no_auth_server_calls(echo, wasm):
    """Issue 12 item 14: strings that cannot be opaque tokens of the issuer are refused
    without an introspection call, and new opaque tokens over the per-address miss limit
    get 429 without a call (counted at the auth server and in the filter's metrics)."""
    require_authserver()
    import secrets
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge,
                     introspection={"issuer": auth.issuer, "negative_ttl_s": 60,
                                    "miss_limit": {"requests": 6, "period_s": 3600}}) as gw:
            client = auth.register_client(scope="api:read", access_token_format="opaque")
            tok = auth.token(client)
            r, _ = wait_status(gw, tok, 200)
            assert r.status_code == 200, r.text
            calls = introspections(auth)
            garbage = ["x", "garbage", "tg_at_short", "tg_at_" + "A" * 44,
                       "tg_at_" + "A" * 42 + "!", "tg_rt_" + "A" * 43, "a.b", "a.b.c.d",
                       "A" * 4000]
            for g in garbage:
                r = call(gw, g)
                assert r.status_code == 401, (g, r.text)
                assert r.json()["error"] == "invalid_token"
            assert introspections(auth) == calls, "garbage cost an introspection"
            assert gw.counter("tollgate_denied_opaque_shape") == len(garbage)
            # Well-shaped unknown tokens: one call each until the address's limit, then
            # 429 without a call.
            codes = [call(gw, "tg_at_" + secrets.token_urlsafe(32)).status_code
                     for _ in range(12)]
            answered = codes.count(401)
            assert answered >= 1 and codes == [401] * answered + [429] * (12 - answered), codes
            assert introspections(auth) - calls == answered
            assert gw.counter("tollgate_introspection_limited") == 12 - answered
            # A cached token still passes: the limit counts only calls.
            assert call(gw, tok).status_code == 200
