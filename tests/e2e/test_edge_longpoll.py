"""The revocation feed as a long poll (issue 13), in real Envoy (--concurrency 2) in front of
the real auth server, on the in-memory store and on Redis.

The poll interval is set to five minutes: a revoked token refused within the tests' hang
guard (20 s) can only have been learnt from a held long poll the auth server answered when
the revocation was published, never from a poll interval. With long polls off on the
server (it answers 404 to `wait`), the gateway must fall back to polling."""
from __future__ import annotations

import contextlib

import pytest

from conftest import require_authserver
from harness.authserver import AuthServer
from test_edge_revocation import call, edge_client, gateway, revoke, wait_status

LONG_INTERVAL_MS = 300_000
REVOCATION = {"mode": "long_poll", "long_poll_wait_s": 25,
              "poll_interval_ms": LONG_INTERVAL_MS, "lease_ms": LONG_INTERVAL_MS + 2000,
              "stale_after_s": 3600}


@contextlib.contextmanager
def auth_servers(store: str, tmp_path, replicas: int = 1, env: dict | None = None):
    """`replicas` auth servers over one store (Redis; one server for `memory`)."""
    if store == "memory":
        with AuthServer(env=env) as a:
            yield [a]
        return
    from harness.redis import RedisServer
    with RedisServer(tmp_path) as redis:
        base = {"TOLLGATE_STORE": redis.url(0), "TOLLGATE_SECRET_PEPPER": "e2e-pepper",
                **(env or {})}
        servers = []
        try:
            for _ in range(replicas):
                servers.append(AuthServer(env=base))
            yield servers
        finally:
            for s in servers:
                s.stop()


def refused(gw, tok) -> None:
    r, _ = wait_status(gw, tok, 401, timeout=20)
    assert r.status_code == 401, r.text
    assert "revoked" in r.json()["error_description"]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_revocation_reaches_the_edge_by_long_poll(echo, wasm, tmp_path, store):
    require_authserver()
    with auth_servers(store, tmp_path, replicas=2 if store == "redis" else 1) as servers:
        auth, other = servers[0], servers[-1]
        edge = edge_client(auth)
        with gateway(auth, echo, edge, revocation=REVOCATION) as gw:
            client = auth.register_client(scope="api:read")
            toks = [auth.token(client) for _ in range(4)]
            keep = auth.token(client)
            assert all(call(gw, t).status_code == 200 for t in toks + [keep])
            # The first revocation may come with the gateway's first poll; the later ones
            # only by a held long poll (the next poll would be minutes away).
            for t in toks:
                # On Redis, revoked through another replica than the one holding the poll:
                # the wake-up crosses replicas by pub/sub.
                revoke(other, client, t)
                refused(gw, t)
            assert all(call(gw, t).status_code == 401 for t in toks for _ in range(3))
            assert call(gw, keep).status_code == 200
            # One held call per gateway VM, not per worker: about one answered poll per
            # revocation (the first poll and a wait's end aside), not one per worker.
            polls = gw.counter("tollgate_revocation_poll_ok")
            assert polls <= len(toks) + 3, polls
            assert gw.counter("tollgate_revocation_poll_failed") == 0


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_gateway_polls_when_the_server_refuses_long_polls(echo, wasm, tmp_path, store):
    """Long polls off on the auth server (`wait` answered 404): the gateway falls back to
    polling at `poll_interval_ms`, and revocations still reach it."""
    require_authserver()
    off = {"TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S": "0"}
    with auth_servers(store, tmp_path, env=off) as (auth,):
        edge = edge_client(auth)
        rv = {**REVOCATION, "poll_interval_ms": 500, "lease_ms": 2000}
        with gateway(auth, echo, edge, revocation=rv) as gw:
            client = auth.register_client(scope="api:read")
            tok = auth.token(client)
            assert call(gw, tok).status_code == 200
            revoke(auth, client, tok)
            refused(gw, tok)
            assert "polling the revocation feed every 500 ms" in gw.log()
            assert gw.counter("tollgate_revocation_poll_ok") >= 1


def test_long_polls_on_sentinel_are_woken_before_and_after_a_switchover(tmp_path):
    """On Sentinel the auth server subscribes on the master the Sentinels name: a held long
    poll is answered when a token is revoked, and again after a switchover, through the new
    master. The old master is kept from being demoted (its `REPLICAOF` is refused by ACL),
    as when it is cut off from the Sentinels: it stays a master, deaf to the new one, so the
    subscription must follow the master the store moved to rather than wait for the
    Sentinels to reconfigure the old one (which would also close its subscribers). The wait
    asked (120 s) is far beyond the hang guard (30 s): an answer inside the guard can only
    come from a wake-up."""
    import concurrent.futures as cf
    import shutil
    import time

    import requests

    from harness.redis import SentinelGroup
    require_authserver()
    if not all(shutil.which(b) for b in ("redis-server", "redis-sentinel", "redis-cli")):
        pytest.skip("redis-server, redis-sentinel or redis-cli missing")
    with SentinelGroup(tmp_path, replicas=1) as g:
        auth = AuthServer(env={"TOLLGATE_STORE": g.url(0),
                               "TOLLGATE_SECRET_PEPPER": "e2e-pepper",
                               "TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S": "120"})
        try:
            edge = edge_client(auth)
            client = auth.register_client(scope="api:read")
            basic = (edge["client_id"], edge["client_secret"])

            def cursor() -> str:
                return requests.get(f"{auth.base}/edge/revocations", auth=basic,
                                    timeout=10).json()["cursor"]

            def held_poll_sees_a_revocation() -> None:
                since = cursor()
                tok = auth.token(client)
                with cf.ThreadPoolExecutor(1) as ex:
                    poll = ex.submit(requests.get, f"{auth.base}/edge/revocations",
                                     params={"since": since, "wait": 120}, auth=basic,
                                     timeout=150)
                    time.sleep(0.5)  # the poll is held by now (if not: answered at once)
                    deadline = time.monotonic() + 30
                    while True:  # during a switchover a revocation may answer 503
                        r = requests.post(f"{auth.base}/oauth2/revoke", data={"token": tok},
                                          auth=(client["client_id"], client["client_secret"]),
                                          timeout=10)
                        if r.status_code == 200 or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
                    assert r.status_code == 200, r.text
                    try:
                        answer = poll.result(timeout=30)
                    except cf.TimeoutError:
                        pytest.fail("the held poll was not woken; auth server log:\n"
                                    + auth.proc.tail(60))
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["wait_s"] == 120
                assert len(body["revocations"]) == 1, body

            held_poll_sees_a_revocation()
            old = g.master()
            old.call("ACL", "SETUSER", "default", "-replicaof", "-slaveof")
            g.sentinels[0].call("SENTINEL", "FAILOVER", g.master_name)
            new = g.wait_failover(old.port)
            # The auth server's store moves to the new master (its check of the master's
            # role, once a second while in use), then a held poll is woken through the
            # subscription, which has followed it.
            moved = f"connected to the Redis master named by Sentinel master=127.0.0.1:{new.port}"
            deadline = time.monotonic() + 60
            while moved not in auth.proc.log() and time.monotonic() < deadline:
                try:
                    cursor()
                except Exception:  # noqa: BLE001 - 503 while the switch settles
                    pass
                time.sleep(0.3)
            assert moved in auth.proc.log(), auth.proc.tail(30)
            assert old.info().get("role") == "master"  # never demoted
            held_poll_sees_a_revocation()
            assert old.info().get("role") == "master"
        finally:
            auth.stop()
