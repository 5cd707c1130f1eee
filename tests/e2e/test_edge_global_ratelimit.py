"""Global rate limits: two Envoy processes (--concurrency 2 each) take quota leases from one
real auth server (`POST /edge/ratelimit/lease`) and keep one limit together."""
from __future__ import annotations

import requests

import test_filter_schema
from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import Envoy, filter_config, issuer_entry

TICK_MS = 100
LIMIT = 20
# The documented default: clamp(requests / 10, 1, requests).
LEASE = max(1, min(LIMIT // 10, LIMIT))


def gateway(auth: AuthServer, echo, edge: dict, rules: list) -> Envoy:
    cfg = filter_config(
        issuers=[issuer_entry(auth.issuer, "tollgate-authserver", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        auth_server={"cluster": "tollgate-authserver", "client_id": edge["client_id"],
                     "client_secret": edge["client_secret"], "timeout_ms": 1000},
        rules=rules,
        tick_ms=TICK_MS,
    )
    test_filter_schema.VALIDATOR.validate(cfg)  # the chart's schema accepts what we run
    return Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port)


def call(gw: Envoy, token: str, path: str) -> requests.Response:
    # A new connection per request: either worker of the Envoy takes it.
    return requests.get(gw.url(path), timeout=20,
                        headers={"connection": "close", "authorization": f"Bearer {token}"})


def edge_client(auth: AuthServer) -> dict:
    # The gateway's own client: lease calls must not be throttled by the token endpoint limit.
    return auth.register_client(scope="tollgate:edge", name="gateway", rate_limit_per_minute=0)


GLOBAL_RULE = {"name": "global", "path_prefix": "/g/",
               "rate_limit": {"requests": LIMIT, "period_s": 60, "key": "client_id",
                              "mode": "global"}}


def test_two_gateways_keep_one_limit_within_the_lease_size(echo, wasm):
    require_authserver()
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge, [GLOBAL_RULE]) as g1, \
                gateway(auth, echo, edge, [GLOBAL_RULE]) as g2:
            client = auth.register_client(scope="api:read")
            tok = auth.token(client)
            gws = [g1, g2]
            codes = [call(gws[i % 2], tok, "/g/x") for i in range(3 * LIMIT)]
            ok = [r for r in codes if r.status_code == 200]
            statuses = [r.status_code for r in codes]
            assert set(statuses) <= {200, 429}, statuses
            # The documented bound: one lease record per key and gateway (shared by its
            # workers), so the combined limit errs low by at most one lease per gateway.
            assert LIMIT - LEASE * len(gws) <= len(ok) <= LIMIT, statuses
            print(f"global limit {LIMIT}, lease {LEASE}, 2 gateways: {len(ok)} admitted")
            assert ok[0].headers["ratelimit-policy"] == f'"global";q={LIMIT};w=60'
            assert ok[0].headers["ratelimit"].startswith('"global";r=')
            # Both gateways now refuse, with the window's Retry-After.
            assert statuses[-4:] == [429] * 4, statuses
            calls = [gw.counter("tollgate_rate_limit_lease") for gw in gws]
            assert all(c >= 1 for c in calls), calls
            for gw in gws:
                r = call(gw, tok, "/g/x")
                assert r.status_code == 429, r.text
                retry = int(r.headers["retry-after"])
                assert 1 <= retry <= 60
                assert r.headers["ratelimit-policy"] == f'"global";q={LIMIT};w=60'
                assert r.headers["ratelimit"] == f'"global";r=0;t={retry}'
                assert r.headers["cache-control"] == "no-store"
                assert r.json()["error"] == "rate_limited"
            # An exhausted key costs the auth server nothing more until its window ends.
            for i in range(6):
                assert call(gws[i % 2], tok, "/g/x").status_code == 429
            assert [gw.counter("tollgate_rate_limit_lease") for gw in gws] == calls
            assert all(gw.counter("tollgate_rate_limit_lease_failed") == 0 for gw in gws)
            # Another client has its own window.
            other = auth.token(auth.register_client(scope="api:read"))
            assert call(g2, other, "/g/x").status_code == 200


def test_auth_server_unreachable_follows_the_fail_mode(echo, wasm):
    require_authserver()
    rules = [{"name": "local", "path_prefix": "/local/",
              "rate_limit": {"requests": 3, "period_s": 60, "key": "client_id",
                             "mode": "global", "fail_mode": "local"}},
             {"name": "closed", "path_prefix": "/closed/",
              "rate_limit": {"requests": 3, "period_s": 60, "key": "client_id",
                             "mode": "global", "fail_mode": "closed"}},
             {"name": "open", "path_prefix": "/open/",
              "rate_limit": {"requests": 3, "period_s": 60, "key": "client_id",
                             "mode": "global", "fail_mode": "open"}}]
    with AuthServer() as auth:
        edge = edge_client(auth)
        with gateway(auth, echo, edge, rules) as gw:
            tok = auth.token(auth.register_client(scope="api:read"))
            assert call(gw, tok, "/unlimited").status_code == 200  # JWKS loaded, token cached
            auth.stop()
            # fail_mode local: the gateway's own bucket (3 per 60 s).
            local = [call(gw, tok, "/local/").status_code for _ in range(5)]
            assert local == [200, 200, 200, 429, 429], local
            r = call(gw, tok, "/closed/")
            assert r.status_code == 503, r.text
            assert r.headers.get("retry-after")
            assert [call(gw, tok, "/open/").status_code for _ in range(5)] == [200] * 5
            assert gw.counter("tollgate_rate_limit_lease_failed") >= 1
            assert gw.counter("tollgate_rate_limit_fallback") >= 11
