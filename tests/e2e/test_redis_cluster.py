"""The auth server on a real Redis Cluster.

A three-primary cluster with one replica per primary (six `redis-server --cluster-enabled
yes` on free loopback ports, formed by `redis-cli --cluster create`) and the release auth
server with `TOLLGATE_STORE=redis+cluster://p1,p2,p3`:

- client registration, client_credentials, authorization code + PKCE, refresh rotation
  and reuse detection (the whole family revoked), revocation, the revocation feed and
  introspection all work, and `authserver status`, `cleanup` and `cache-cleanup` run
  against the cluster;
- the keys really spread over the three primaries (checked with `redis-cli` on each), while
  the keys one Lua script touches together share a slot (`auth:family:{grant}:*`,
  `auth:{revocations}:*`);
- the service cache lives beside the auth data in DB 0 (Cluster has no DB 1), told apart by
  its `cache:` prefix: `cache-cleanup` touches only it;
- SIGKILL of a primary: once its replica has taken over, the same auth server (no restart)
  serves clients whose records live on that shard again.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlencode, urlparse

import requests

from conftest import require_authserver
from harness.authserver import AuthServer
from harness.redis import RedisCluster

REDIRECT = "http://127.0.0.1:8765/callback"
PASSWORD = "correct horse battery staple"


def admin(a: AuthServer) -> dict:
    return {"authorization": f"Bearer {a.admin_token}"}


def register(a: AuthServer, **md) -> dict:
    r = requests.post(f"{a.admin_base}/oauth2/register", json=md, headers=admin(a), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def token(a: AuthServer, c: dict, **form) -> requests.Response:
    return requests.post(f"{a.base}/oauth2/token", timeout=10,
                         data={"grant_type": "client_credentials", **form},
                         auth=(c["client_id"], c["client_secret"]))


def introspect(a: AuthServer, c: dict, t: str) -> dict:
    r = requests.post(f"{a.base}/oauth2/introspect", data={"token": t}, timeout=10,
                      auth=(c["client_id"], c["client_secret"]))
    assert r.status_code == 200, r.text
    return r.json()


def claims(jwt: str) -> dict:
    body = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def hidden(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no hidden {name} in the page"
    return html.unescape(m.group(1))


def code_flow(a: AuthServer, client_id: str) -> dict:
    """Authorization code + PKCE with a scripted login; the token response."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = urlencode({"response_type": "code", "client_id": client_id,
                       "redirect_uri": REDIRECT, "scope": "api:read", "state": "s1",
                       "code_challenge": challenge, "code_challenge_method": "S256"})
    b = requests.Session()
    page = b.get(f"{a.base}/oauth2/authorize?{query}", allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text
    r = b.post(f"{a.base}/oauth2/login", allow_redirects=False, timeout=10, data={
        "csrf": hidden(page.text, "csrf"), "authz": hidden(page.text, "authz"),
        "username": "alice", "password": PASSWORD})
    assert r.status_code == 303, r.text
    r = b.get(r.headers["location"], allow_redirects=False, timeout=10)
    assert r.status_code == 303, r.text
    code = parse_qs(urlparse(r.headers["location"]).query)["code"][0]
    r = requests.post(f"{a.base}/oauth2/token", timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": client_id, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    return r.json()


def job(a: AuthServer, *cmd: str) -> dict:
    """Run an `authserver` job against the same store; its JSON report."""
    env = {**os.environ, **a.env}
    r = subprocess.run([str(a.binary), *cmd], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"authserver {' '.join(cmd)}: {r.stderr}"
    return json.loads(r.stdout)


def test_auth_server_on_a_redis_cluster(tmp_path):
    require_authserver()
    with RedisCluster(tmp_path / "cluster", masters=3, replicas=1,
                      node_timeout_ms=1000) as cluster, \
            AuthServer(env={"TOLLGATE_STORE": cluster.url()}) as a:
        assert requests.get(f"{a.base}/readyz", timeout=10).status_code == 200

        # client_credentials: a dozen clients, a token each, introspected.
        clients = [register(a, client_name=f"svc{i}", grant_types=["client_credentials"],
                            scope="api:read tollgate:edge") for i in range(12)]
        tokens = {}
        for c in clients:
            r = token(a, c, scope="api:read")
            assert r.status_code == 200, r.text
            tokens[c["client_id"]] = r.json()["access_token"]
            got = introspect(a, c, tokens[c["client_id"]])
            assert got["active"] is True and got["client_id"] == c["client_id"]
        edge = clients[0]

        # Revocation: introspection and the feed see it.
        victim = clients[1]
        revoked_jti = claims(tokens[victim["client_id"]])["jti"]
        r = requests.post(f"{a.base}/oauth2/revoke", data={"token": tokens[victim["client_id"]]},
                          auth=(victim["client_id"], victim["client_secret"]), timeout=10)
        assert r.status_code == 200, r.text
        assert introspect(a, victim, tokens[victim["client_id"]]) == {"active": False}
        feed = requests.get(f"{a.base}/edge/revocations", timeout=10,
                            auth=(edge["client_id"], edge["client_secret"])).json()
        assert feed["resync"] is True
        assert revoked_jti in {e["jti"] for e in feed["revocations"]}
        cursor = feed["cursor"]

        # Authorization code + PKCE, refresh rotation, reuse detection.
        r = requests.post(f"{a.admin_base}/admin/users", json={"username": "alice",
                          "password": PASSWORD}, headers=admin(a), timeout=10)
        assert r.status_code == 201, r.text
        app = register(a, client_name="spa", redirect_uris=[REDIRECT],
                       grant_types=["authorization_code", "refresh_token"],
                       token_endpoint_auth_method="none", scope="api:read",
                       skip_consent=True)
        first = code_flow(a, app["client_id"])
        grant = first["refresh_token"]
        r = requests.post(f"{a.base}/oauth2/token", timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": grant,
            "client_id": app["client_id"]})
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["refresh_token"] != grant
        assert introspect(a, edge, second["access_token"])["active"] is True
        r = requests.post(f"{a.base}/oauth2/token", timeout=10, data={
            "grant_type": "refresh_token", "refresh_token": grant,
            "client_id": app["client_id"]})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        for t in (second["access_token"], second["refresh_token"], first["access_token"]):
            assert introspect(a, edge, t) == {"active": False}
        feed = requests.get(f"{a.base}/edge/revocations", params={"since": cursor},
                            timeout=10, auth=(edge["client_id"], edge["client_secret"])).json()
        assert feed["resync"] is False
        assert claims(second["access_token"])["jti"] in {e["jti"] for e in feed["revocations"]}

        # The layout spreads over the primaries; what one script touches shares a slot.
        by_primary = cluster.keys_by_primary("auth*")
        assert len([p for p, keys in by_primary.items() if keys]) == 3, \
            {p: len(k) for p, k in by_primary.items()}
        holders = lambda prefix: {p for p, keys in by_primary.items()  # noqa: E731
                                  if any(k.startswith(prefix) for k in keys)}
        assert len(holders("auth:client:")) >= 2
        assert len(holders("auth:{revocations}:")) == 1
        families = {k.split("}")[0] for keys in by_primary.values() for k in keys
                    if k.startswith("auth:family:{")}
        assert families
        for f in families:
            assert len(holders(f + "}")) == 1, f
        # redis-cli -c follows MOVED from any node to the record.
        cid = clients[5]["client_id"]
        for port in cluster.primaries():
            out = cluster.cli(port, "-c", "HGET", f"auth:client:{cid}", "client_id")
            assert out.strip() == cid

        # authserver status on the cluster: every node's role and replication.
        st = job(a, "status")
        assert st["store"]["kind"] == "redis+cluster"
        d = st["store"]["details"]
        assert d["cluster_state"] == "ok" and d["cluster_slots_ok"] == "16384"
        assert (d["primaries"], d["replicas"]) == ("3", "3")
        for p in cluster.primaries():
            assert d[f"node.127.0.0.1:{p}.role"] == "master"
            assert d[f"node.127.0.0.1:{p}.connected_slaves"] == "1"
        assert st["clients"] == len(clients) + 1
        assert st["live_access_tokens"] >= len(clients)

        # authserver cleanup: expired tokens leave the cleanup index on the cluster.
        short = register(a, client_name="short", grant_types=["client_credentials"],
                         scope="api:read", access_token_ttl=1)
        for _ in range(3):
            assert token(a, short).status_code == 200
        time.sleep(2.2)
        report = job(a, "cleanup")
        assert report["expired_tokens"] == 3, report
        assert job(a, "cleanup")["expired_tokens"] == 0

        # The service cache: DB 0 beside the auth data, told apart by its prefix.
        cache_keys = [f"cache:resource:{svc}:{i}" for svc in ("users", "orders")
                      for i in range(20)]
        any_node = cluster.primaries()[0]
        for k in cache_keys:
            cluster.cli(any_node, "-c", "SET", k, "v")
        auth_before = sorted(k for keys in cluster.keys_by_primary("auth:client:*").values()
                             for k in keys)
        report = job(a, "cache-cleanup")
        assert (report["services"], report["entries"], report["ttl_set"]) == (2, 40, 40), report
        cached = cluster.keys_by_primary("cache:resource:*")
        assert len([p for p, keys in cached.items() if keys]) >= 2
        for k in cache_keys[:3]:
            assert 0 < int(cluster.cli(any_node, "-c", "TTL", k)) <= 86400
        assert sorted(k for keys in cluster.keys_by_primary("auth:client:*").values()
                      for k in keys) == auth_before
        assert int(cluster.cli(any_node, "-c", "TTL", f"auth:client:{cid}")) == -1

        # Failover: SIGKILL the primary that holds the most client records; its replica takes
        # over and the same auth server serves those clients again.
        per_primary = cluster.keys_by_primary("auth:client:*")
        dead = max(per_primary, key=lambda p: len(per_primary[p]))
        on_dead = {k.removeprefix("auth:client:") for k in per_primary[dead]}
        affected = [c for c in clients if c["client_id"] in on_dead]
        assert affected
        # Make sure the replica has every write before the crash (replication is async).
        assert int(cluster.cli(dead, "WAIT", "1", "5000")) == 1
        # One client asks for tokens all along: during the failover it may get 503
        # temporarily_unavailable (never another error), and 200 again afterwards.
        seen: list[tuple[float, int]] = []
        bodies: list[str] = []
        slowest = [0.0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = token(a, affected[0], scope="api:read")
                    code = r.status_code
                    if code != 200:
                        bodies.append(r.text)
                except requests.RequestException as e:
                    code = -1
                    bodies.append(str(e))
                seen.append((time.monotonic(), code))
                slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.05)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            cluster.kill(dead)
            cluster.wait_failover(dead)
            failover_s = time.monotonic() - t0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (seen and seen[-1][0] > t0 + failover_s
                                                       and seen[-1][1] == 200):
                time.sleep(0.05)
        finally:
            stop.set()
            loader.join(15)
        codes = {c for _, c in seen}
        assert codes <= {200, 503}, (sorted(codes), bodies[:3], a.proc.tail(20))
        assert seen[-1][1] == 200, seen[-5:]
        failed = [t for t, c in seen if c != 200]
        window = (max(failed) - min(failed)) if failed else 0.0
        for c in affected + clients[2:4]:
            r = token(a, c, scope="api:read")
            assert r.status_code == 200, r.text
            assert introspect(a, c, r.json()["access_token"])["active"] is True
        assert introspect(a, victim, tokens[victim["client_id"]]) == {"active": False}
        assert requests.get(f"{a.base}/readyz", timeout=10).status_code == 200
        d = job(a, "status")["store"]["details"]
        assert d["cluster_state"] == "ok" and d["primaries"] == "3", d
        print(f"\nfailover of :{dead}: cluster ok again after {failover_s:.1f} s; token "
              f"requests to its shard: {len(seen)}, failed (503) {len(failed)}, "
              f"error window {window:.1f} s, slowest request {slowest[0]:.1f} s")
