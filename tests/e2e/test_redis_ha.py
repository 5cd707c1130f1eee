"""Redis high availability and durability over real processes (docs/reliability.md).

The release auth server under concurrent load (client_credentials issuance, refresh-token
rotation, revocation) while Redis fails:

- Sentinel (master + 1 replica + 3 Sentinels, TOLLGATE_REDIS_WAIT_REPLICAS=1): the master is
  SIGKILLed, or demoted by a switchover (``SENTINEL FAILOVER``: the old master stays up as a
  replica, so the server's open connection gets ``READONLY``);
- standalone Redis with AOF (``appendfsync always``): the auth server is SIGKILLed and
  restarted, then Redis is;
- a backup (``redis-cli --rdb``, as the chart's backup CronJob takes it) under load,
  restored into a fresh redis-server.

Afterwards every acknowledged write must hold: each refresh token answered 200 and not
presented since works exactly once (a second use is ``invalid_grant``), each refresh token
rotated away stays refused, each revoked token is inactive at introspection and listed by
``/edge/revocations``, each registered client still authenticates. The error window
(first to last failed request) and the failure counts are printed (docs/reliability.md
quotes them).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from harness.authserver import AuthServer, authserver_binary
from harness.redis import RedisServer, SentinelGroup

REQUIRED = bool(os.environ.get("TOLLGATE_REQUIRE_REDIS"))
PEPPER = "ha-test-pepper-0123456789abcdef"
PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/cb"   # never contacted: the code is read from the Location


@pytest.fixture(autouse=True)
def _binaries():
    missing = [b for b in ("redis-server", "redis-sentinel", "redis-cli") if not shutil.which(b)]
    if authserver_binary() is None:
        missing.append("the auth server (make build-authserver)")
    if missing:
        msg = f"{', '.join(missing)} missing (apt: redis-server redis-sentinel redis-tools)"
        if REQUIRED:
            pytest.fail(f"TOLLGATE_REQUIRE_REDIS is set and {msg}")
        pytest.skip(msg)


def auth_env(store: str, **extra: str) -> dict[str, str]:
    return {"TOLLGATE_STORE": store, "TOLLGATE_SECRET_PEPPER": PEPPER,
            # The load would trip the limits; they are not what is tested here.
            "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0", "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
            "TOLLGATE_RATE_LIMIT_PER_IP": "0", **extra}


# ------------------------------------------------------------------ clients, users, tokens

@dataclass
class Tenants:
    svc: dict                 # client_credentials client
    app: dict                 # authorization_code + refresh_token client (skip_consent)
    browser: requests.Session  # logged-in user session (cookie)


def admin(a: AuthServer) -> dict:
    return {"authorization": f"Bearer {a.admin_token}"}


def register(a: AuthServer, **md) -> dict:
    r = requests.post(f"{a.admin_base}/oauth2/register", json=md, headers=admin(a), timeout=15)
    assert r.status_code == 201, r.text
    return r.json()


def hidden(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no hidden {name} in the page"
    return html.unescape(m.group(1))


def authorize_params(app: dict) -> tuple[dict, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    return ({"response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT,
             "scope": "api:read", "state": "s", "code_challenge": challenge,
             "code_challenge_method": "S256"}, verifier)


def setup_tenants(a: AuthServer) -> Tenants:
    svc = register(a, client_name="ha-svc", grant_types=["client_credentials"],
                   scope="api:read")
    app = register(a, client_name="ha-app", grant_types=["authorization_code", "refresh_token"],
                   redirect_uris=[REDIRECT], scope="api:read", skip_consent=True,
                   token_endpoint_auth_method="client_secret_basic")
    r = requests.post(f"{a.admin_base}/admin/users", json={"username": "alice", "password": PASSWORD},
                      headers=admin(a), timeout=15)
    assert r.status_code == 201, r.text
    browser = requests.Session()
    params, _ = authorize_params(app)
    page = browser.get(f"{a.base}/oauth2/authorize", params=params, allow_redirects=False,
                       timeout=15)
    assert page.status_code == 200, page.text
    r = browser.post(f"{a.base}/oauth2/login", allow_redirects=False, timeout=15, data={
        "csrf": hidden(page.text, "csrf"), "authz": hidden(page.text, "authz"),
        "username": "alice", "password": PASSWORD})
    assert r.status_code == 303, r.text
    return Tenants(svc, app, browser)


def new_refresh_token(a: AuthServer, t: Tenants) -> str:
    """A fresh grant through the logged-in session: code + PKCE, then the code exchange."""
    params, verifier = authorize_params(t.app)
    r = t.browser.get(f"{a.base}/oauth2/authorize", params=params, allow_redirects=False,
                      timeout=15)
    assert r.status_code == 303, r.text
    code = parse_qs(urlparse(r.headers["location"]).query)["code"][0]
    r = requests.post(f"{a.base}/oauth2/token", timeout=15,
                      auth=(t.app["client_id"], t.app["client_secret"]),
                      data={"grant_type": "authorization_code", "code": code,
                            "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    return r.json()["refresh_token"]


def refresh(base: str, t: Tenants, rt: str, session=requests) -> requests.Response:
    return session.post(f"{base}/oauth2/token", timeout=20,
                        auth=(t.app["client_id"], t.app["client_secret"]),
                        data={"grant_type": "refresh_token", "refresh_token": rt})


def cc_token(base: str, client: dict, session=requests) -> requests.Response:
    return session.post(f"{base}/oauth2/token", timeout=20,
                        auth=(client["client_id"], client["client_secret"]),
                        data={"grant_type": "client_credentials"})


def jti_of(jwt: str) -> str:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


# ------------------------------------------------------------------ load

@dataclass
class Chain:
    """A refresh-token chain, used as a client would: ``live`` is the last token answered
    200; ``rotated`` the ones it replaced (consumed: each must stay refused). A request that
    failed (no answer, 5xx) leaves ``uncertain`` set and the client presents the same token
    again: 200 continues the chain; ``invalid_grant`` means the failed request had consumed
    it (the reuse then revokes the grant: the chain is ``dead``, the user would log in
    again). ``invalid_grant`` for a token answered 200 and not presented since is a lost
    acknowledged write: a ``violation``."""
    live: str
    acked_at: float
    rotated: list[str] = field(default_factory=list)
    uncertain: bool = False
    dead: bool = False
    violations: list[str] = field(default_factory=list)


class Load:
    """Threads that issue, rotate and revoke until stopped; every request is logged as
    (kind, start, end, ok)."""

    def __init__(self, a: AuthServer, t: Tenants, chains: list[Chain], register: bool = False):
        self.base, self.t, self.chains = a.base, t, chains
        self.admin_base = a.admin_base
        self.admin_headers = admin(a)
        self.events: list[tuple[str, float, float, bool]] = []
        self.failures: dict[str, int] = {}             # "kind status body" -> count
        self.revoked: list[tuple[str, float]] = []      # (access token, acknowledged at)
        self.clients: list[tuple[dict, float]] = []     # registrations acknowledged
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        workers = [self._issue, self._revoke] + [
            (lambda part=part: self._rotate(part)) for part in (0, 1)]
        if register:
            workers.append(self._register)
        self.threads = [threading.Thread(target=w, daemon=True) for w in workers]

    def __enter__(self) -> "Load":
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_flag.set()
        for th in self.threads:
            th.join(60)
        assert not any(th.is_alive() for th in self.threads), "a load thread hangs"

    def _log(self, kind: str, t0: float, ok: bool, status: str) -> None:
        with self.lock:
            self.events.append((kind, t0, time.monotonic(), ok))
            if not ok:
                self.failures[f"{kind} {status}"] = self.failures.get(f"{kind} {status}", 0) + 1

    def _call(self, kind: str, fn):
        t0 = time.monotonic()
        try:
            r = fn()
        except requests.RequestException as e:
            self._log(kind, t0, False, type(e).__name__)
            return None
        ok = r.status_code in (200, 201)
        self._log(kind, t0, ok, "" if ok else f"{r.status_code} {r.text[:80]}")
        return r

    def _issue(self) -> None:
        s = requests.Session()
        while not self.stop_flag.is_set():
            self._call("issue", lambda: cc_token(self.base, self.t.svc, s))

    def _revoke(self) -> None:
        s = requests.Session()
        while not self.stop_flag.is_set():
            r = self._call("issue", lambda: cc_token(self.base, self.t.svc, s))
            if r is None or r.status_code != 200:
                continue
            at = r.json()["access_token"]
            r = self._call("revoke", lambda: s.post(
                f"{self.base}/oauth2/revoke", timeout=20, data={"token": at},
                auth=(self.t.svc["client_id"], self.t.svc["client_secret"])))
            if r is not None and r.status_code == 200:
                with self.lock:
                    self.revoked.append((at, time.monotonic()))

    def _rotate(self, part: int) -> None:
        s = requests.Session()
        mine = [c for i, c in enumerate(self.chains) if i % 2 == part]
        while not self.stop_flag.is_set():
            active = [c for c in mine if not c.dead]
            if not active:
                return
            for c in active:
                if self.stop_flag.is_set():
                    return
                r = self._call("refresh", lambda: refresh(self.base, self.t, c.live, s))
                with self.lock:
                    if r is None or r.status_code >= 500:
                        c.uncertain = True
                    elif r.status_code == 200:
                        c.rotated.append(c.live)
                        c.live, c.acked_at = r.json()["refresh_token"], time.monotonic()
                        c.uncertain = False
                    elif c.uncertain and r.json().get("error") == "invalid_grant":
                        c.dead = True
                    else:
                        c.violations.append(f"{r.status_code} {r.text}")
                        c.dead = True
                if r is None or r.status_code >= 500:
                    time.sleep(0.1)

    def _register(self) -> None:
        s = requests.Session()
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            r = self._call("register", lambda: s.post(
                f"{self.admin_base}/oauth2/register", timeout=20, headers=self.admin_headers,
                json={"client_name": f"load-{n}", "grant_types": ["client_credentials"],
                      "scope": "api:read"}))
            if r is not None and r.status_code == 201:
                with self.lock:
                    self.clients.append((r.json(), time.monotonic()))
            time.sleep(0.05)

    def count(self, kind: str | None = None, ok: bool | None = None,
              after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for k, t0, _t1, good in self.events
                       if (kind is None or k == kind) and (ok is None or good == ok)
                       and t0 >= after)

    def wait_successes(self, since: float, kinds=("issue", "refresh", "revoke"), n: int = 3,
                       timeout: float = 30.0) -> None:
        """Until each kind has ``n`` successful requests started after ``since``."""
        deadline = time.monotonic() + timeout
        while any(self.count(k, True, since) < n for k in kinds):
            if time.monotonic() > deadline:
                got = {k: self.count(k, True, since) for k in kinds}
                raise AssertionError(f"the load did not recover: {got}")
            time.sleep(0.05)

    def figures(self, fault_at: float) -> dict:
        with self.lock:
            failed = [(k, t0, t1) for k, t0, t1, ok in self.events if not ok]
            total = len(self.events)
        with self.lock:
            slowest = max((t1 - t0 for _k, t0, t1, _ok in self.events), default=0.0)
        out = {"requests": total, "failed": len(failed), "failures": dict(self.failures),
               "slowest_request_s": round(slowest, 2)}
        if failed:
            first = min(t0 for _k, t0, _t1 in failed)
            last = max(t1 for _k, _t0, t1 in failed)
            out["error_window_s"] = round(last - first, 2)
            out["first_failure_after_fault_s"] = round(first - fault_at, 2)
        else:
            out["error_window_s"] = 0.0
        return out


def seed_chains(a: AuthServer, t: Tenants, n: int) -> list[Chain]:
    return [Chain(live=new_refresh_token(a, t), acked_at=time.monotonic()) for _ in range(n)]


# ------------------------------------------------------------------ checks

def check_acknowledged(base: str, t: Tenants, admin_headers: dict, chains: list[Chain],
                       revoked: list[tuple[str, float]], clients: list[dict],
                       acked_before: float | None = None) -> dict:
    """Every acknowledged write holds. ``acked_before``: only what was acknowledged before
    that instant (a backup's start) is required."""
    def in_scope(at: float) -> bool:
        return acked_before is None or at < acked_before

    s = requests.Session()
    # Revocations: inactive at introspection, listed by the full feed.
    feed = s.get(f"{base}/edge/revocations", headers=admin_headers, timeout=20)
    assert feed.status_code == 200, feed.text
    listed = {e["jti"] for e in feed.json()["revocations"]}
    checked_revocations = 0
    for at, acked in revoked:
        if not in_scope(acked):
            continue
        jti = jti_of(at)
        assert jti in listed, f"acknowledged revocation {jti} missing from /edge/revocations"
        r = s.post(f"{base}/oauth2/introspect", data={"token": at}, timeout=20,
                   auth=(t.svc["client_id"], t.svc["client_secret"]))
        assert r.status_code == 200 and r.json() == {"active": False}, (jti, r.text)
        checked_revocations += 1
    # Clients: each still authenticates with its secret (introspection needs no grant type).
    for c in clients:
        r = s.post(f"{base}/oauth2/introspect", data={"token": "x"}, timeout=20,
                   auth=(c["client_id"], c["client_secret"]))
        assert r.status_code == 200, f"client {c['client_id']} lost: {r.text}"
    # Refresh tokens. Half the chains: a token rotated away (consumed, acknowledged) stays
    # refused. The other half: the live token works exactly once. (Presenting a rotated
    # token revokes its family, so one check per chain.)
    live_ok = rotated_refused = uncertain = dead = 0
    for i, c in enumerate(chains):
        assert not c.violations, f"acknowledged refresh token refused: {c.violations}"
        if c.dead:
            dead += 1
            for rt in c.rotated[-1:]:
                assert refresh(base, t, rt, s).status_code == 400
            continue
        if c.uncertain:
            uncertain += 1
            r = refresh(base, t, c.live, s)   # the last request failed: never a 5xx now,
            assert r.status_code in (200, 400), r.text   # and never usable twice
            if r.status_code == 200:
                assert refresh(base, t, c.live, s).json()["error"] == "invalid_grant"
            continue
        if i % 2 == 0 and c.rotated:
            r = refresh(base, t, c.rotated[-1], s)
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
            rotated_refused += 1
        else:
            r = refresh(base, t, c.live, s)
            assert r.status_code == 200, f"acknowledged refresh token lost: {r.text}"
            r = refresh(base, t, c.live, s)
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
            live_ok += 1
    return {"revocations_checked": checked_revocations, "refresh_live_ok": live_ok,
            "refresh_rotated_refused": rotated_refused, "chains_uncertain_at_end": uncertain,
            "chains_ended_by_a_failed_rotation": dead, "clients_checked": len(clients)}


def report(capsys, name: str, figures: dict) -> None:
    with capsys.disabled():
        print(f"\n[redis-ha] {name}: {json.dumps(figures, sort_keys=True)}")


# ------------------------------------------------------------------ Sentinel

@pytest.mark.parametrize("fault,replicas,wait", [("sigkill", 1, 1), ("switchover", 1, 1),
                                                 ("switchover", 2, 2)])
def test_sentinel_failover_under_load_loses_nothing_acknowledged(fault, replicas, wait,
                                                                 tmp_path, capsys):
    """WAIT must count every replica for a switchover to lose nothing: the demoted master
    stays master until the Sentinels reconfigure it, and a replica not yet moved to the new
    master would confirm writes there that the failover then discards (with 2 replicas and
    WAIT 1 that lost about a second of acknowledged writes: docs/reliability.md). With WAIT
    = replicas, durable writes answer 503 until a replica follows the new master again: the
    restarted node after a SIGKILL, the demoted master after a switchover."""
    with SentinelGroup(tmp_path, replicas=replicas) as g:
        a = AuthServer(env=auth_env(g.url(0), TOLLGATE_REDIS_WAIT_REPLICAS=str(wait),
                                    TOLLGATE_REDIS_WAIT_TIMEOUT_MS="500"))
        try:
            t = setup_tenants(a)
            chains = seed_chains(a, t, 12)
            parked = seed_chains(a, t, 4)       # acknowledged, never used during the load
            with Load(a, t, chains) as load:
                load.wait_successes(0.0, n=20)
                old = g.master()
                fault_at = time.monotonic()
                if fault == "sigkill":
                    old.kill()
                else:
                    g.sentinels[0].call("SENTINEL", "FAILOVER", g.master_name)
                new = g.wait_failover(old.port)
                failover_s = time.monotonic() - fault_at
                if fault == "sigkill":
                    # As the chart's StatefulSet does: the node comes back as a replica.
                    g.restart_as_replica(old)
                new.wait_replicas(wait)
                recovered_at = time.monotonic()
                load.wait_successes(recovered_at, n=20)
            figures = load.figures(fault_at)
            # A failover is a 503 (temporarily_unavailable) to the client, never a 500.
            assert all(" 503 " in f" {k} " or k.startswith("refresh 400")
                       for k in figures["failures"]), figures["failures"]
            figures.update(failover_s=round(failover_s, 2),
                           replica_back_s=round(recovered_at - fault_at, 2))
            figures.update(check_acknowledged(a.base, t, admin(a), chains + parked,
                                              load.revoked, [t.svc, t.app]))
            assert figures["refresh_live_ok"] >= len(parked)
            assert figures["revocations_checked"] > 0
            # The old master serves again, as a replica of the new one (after a switchover,
            # once the Sentinels reconfigure it: their INFO period is 10 s).
            deadline = time.monotonic() + 30
            while old.info()["role"] != "slave" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert old.info()["role"] == "slave" and g.master().port == new.port
            # The server followed the failover without a restart and wrote through WAIT.
            status = subprocess.run([str(a.binary), "status"], env={**os.environ, **a.env},
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            st = json.loads(status.stdout)
            assert st["store"]["role"] == "master"
            assert st["effective_config"]["redis_wait_replicas"] == wait
            assert a.proc is not None and a.proc.alive()
            report(capsys, f"sentinel {fault}, {replicas} replica(s), WAIT {wait}", figures)
        finally:
            a.stop()


# ------------------------------------------------------------------ restarts with AOF

def test_auth_server_and_redis_restarts_with_aof_lose_nothing_acknowledged(tmp_path, capsys):
    redis = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always")
    a = AuthServer(env=auth_env(redis.url(0)))
    try:
        t = setup_tenants(a)
        chains = seed_chains(a, t, 8)
        parked = seed_chains(a, t, 4)
        with Load(a, t, chains, register=True) as load:
            load.wait_successes(0.0, n=15)
            # The auth server crashes mid-load and comes back on the same port.
            kill_at = time.monotonic()
            a.proc.proc.kill()
            a.proc.proc.wait()
            a.proc.stop()
            a.start()
            load.wait_successes(time.monotonic(), n=15)
            # Redis crashes mid-load; the AOF (fsync on every write) brings it all back.
            redis.kill()
            redis.start()
            redis.wait_loaded()
            load.wait_successes(time.monotonic(), n=15)
        figures = load.figures(kill_at)
        # Broken connections while the auth server is down, 503s while Redis is: no 500.
        assert not [k for k in figures["failures"] if " 500 " in f" {k} "], figures["failures"]
        figures.update(check_acknowledged(a.base, t, admin(a), chains + parked, load.revoked,
                                          [t.svc, t.app] + [c for c, _ in load.clients]))
        assert figures["refresh_live_ok"] >= len(parked)
        assert figures["revocations_checked"] > 0
        report(capsys, "restarts (AOF always)", figures)
    finally:
        a.stop()
        redis.stop()


# ------------------------------------------------------------------ backup and restore

def test_backup_under_load_restores_everything_acknowledged_before_it(tmp_path, capsys):
    redis = RedisServer(tmp_path / "live")
    a = AuthServer(env=auth_env(redis.url(0)))
    restored = b = None
    try:
        t = setup_tenants(a)
        chains = seed_chains(a, t, 6)
        parked = seed_chains(a, t, 6)     # live refresh tokens that nobody touches
        with Load(a, t, chains, register=True) as load:
            load.wait_successes(0.0, n=15, kinds=("issue", "refresh", "revoke", "register"))
            backup_dir = tmp_path / "backup"
            backup_dir.mkdir()
            started = time.monotonic()
            r = subprocess.run(["redis-cli", "-p", str(redis.port), "--rdb",
                                str(backup_dir / "dump.rdb")],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            load.wait_successes(time.monotonic(), n=5,
                                kinds=("issue", "refresh", "revoke", "register"))
        clients_before = [c for c, at in load.clients if at < started]
        revoked_after = sum(1 for _, at in load.revoked if at >= started)
        # A fresh server from the snapshot, and an auth server (same pepper) on it.
        backup_s = round(time.monotonic() - started, 2)
        restored = RedisServer(backup_dir)
        restored.wait_loaded()
        b = AuthServer(env=auth_env(restored.url(0)))
        figures = check_acknowledged(b.base, t, admin(b), [], load.revoked,
                                     [t.svc, t.app] + clients_before, acked_before=started)
        for c in parked:
            r = refresh(b.base, t, c.live)
            assert r.status_code == 200, f"live refresh token missing after restore: {r.text}"
            assert refresh(b.base, t, c.live).json()["error"] == "invalid_grant"
        # Tokens signed before the backup verify with the restored JWKS (same keys).
        jwks = requests.get(f"{b.base}/oauth2/jwks", timeout=10).json()
        header = load.revoked[0][0].split(".")[0]
        kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
        assert kid in {k["kid"] for k in jwks["keys"]}
        figures.update(parked_refresh_ok=len(parked), revocations_after_backup=revoked_after,
                       clients_before_backup=len(clients_before),
                       backup_s=backup_s)
        assert figures["revocations_checked"] > 0 and clients_before
        report(capsys, "backup and restore", figures)
    finally:
        a.stop()
        if b:
            b.stop()
        if restored:
            restored.stop()
        redis.stop()


# ------------------------------------------------------------------ Cluster

def test_cluster_wait_counts_the_replicas_of_the_shard_that_owns_the_key(tmp_path, capsys):
    """On a Cluster, WAIT travels in the pipeline of the write, so it reaches the primary that
    owns the key and counts that primary's replicas: with the replica of one shard down,
    exactly the durable writes to that shard's keys answer 503, the others succeed."""
    from harness.redis import RedisCluster

    with RedisCluster(tmp_path, masters=3, replicas=1) as c:
        a = AuthServer(env=auth_env(c.url(), TOLLGATE_REDIS_WAIT_REPLICAS="1",
                                    TOLLGATE_REDIS_WAIT_TIMEOUT_MS="300",
                                    TOLLGATE_STORE_RETRY_MS="300"))
        try:
            degraded = c.primaries()[0]
            c.kill(c.replica_of(degraded)[0])
            deadline = time.monotonic() + 30
            while c.info(degraded, "replication").get("connected_slaves") != "0":
                assert time.monotonic() < deadline, "the primary still counts its replica"
                time.sleep(0.05)
            status = {}
            for i in range(30):
                r = requests.post(f"{a.admin_base}/admin/users", headers=admin(a), timeout=20,
                                  json={"username": f"user{i}", "password": PASSWORD})
                assert r.status_code in (201, 503), r.text
                status[f"auth:user:user{i}"] = r.status_code
            owner = {k: p for p, keys in c.keys_by_primary("auth:user:*").items() for k in keys}
            # A 503 write ran on its primary all the same (not acknowledged, not undone).
            assert set(owner) == set(status)
            on_degraded = {k for k in status if owner[k] == degraded}
            assert on_degraded and len(on_degraded) < len(status)
            assert {k for k, s in status.items() if s == 503} == on_degraded
            report(capsys, "cluster WAIT routing", {
                "users": len(status), "on_degraded_shard_503": len(on_degraded),
                "elsewhere_201": len(status) - len(on_degraded)})
        finally:
            a.stop()
