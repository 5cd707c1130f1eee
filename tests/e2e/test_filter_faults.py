"""Filter faults under gateway load: real Envoy (--concurrency 2) with the release filter in
front of the real release auth server, while load threads keep sending requests and count
every answer per phase.

1. The auth server is SIGKILLed under load and restarted on the same port (same Redis: same
   signing key, clients and tokens). Two gateways run side by side, one with every fail mode
   open (`stale_mode: open`, `introspection.fail_mode: open`, rate limit `fail_mode: local`),
   one with every fail mode closed; during the outage each answer is the one docs/filter.md
   promises for its case, and both recover by themselves, without an Envoy restart.
2. The JWKS endpoint is slow, answers garbage of many kinds, or cuts its answer short: the
   cached keys keep serving, a token with a new `kid` is refused with `signing key not
   found`, and it is accepted once the endpoint is fixed.
3. The revocation feed (behind `harness/faultproxy.py`) fails: 500, 401, garbage, timeouts,
   a dropped connection, a cursor going backwards or jumping ahead, pages that are huge. The
   gateways follow their `stale_mode`, and when the feed heals a revocation made during the
   fault is enforced within one poll.

Envoy must stay up with its Wasm VMs (no panic, no VM failure in its log), and no answer
may be a 5xx other than the documented 503 (`Retry-After`, `temporarily_unavailable`).
Figures (requests and status codes per phase, recovery times) are printed (`pytest -s`).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest
import requests

import test_filter_schema
from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import Envoy, filter_config, issuer_entry
from harness.faultproxy import FaultProxy
from harness.issuer import GARBAGE_MODES, TestIssuer
from harness.redis import RedisServer

TICK_MS = 100
LOAD_THREADS = 4

# What Envoy logs when a Wasm VM fails (a panic traps the VM: every later request of that
# worker would fail): the panic message, the trap of the hostcall ("Function: proxy_on_...
# failed: Uncaught RuntimeError: unreachable"), the failed VM.
VM_FAILURE_MARKS = ("panicked at", "RuntimeError", "Uncaught", "Wasm VM failed",
                    "wasm vm failed", "Plugin configured to fail closed")


# --------------------------------------------------------------------------- load
@dataclass
class Case:
    """One kind of request: a gateway, a path and where its token comes from (a fixed token,
    a new one minted for every request, or a pool of never-sent tokens used once each: the
    case pauses when it runs dry)."""
    name: str
    gw: Envoy
    path: str = "/r"
    token: str | None = None
    pool: list[str] | None = None
    mint: Callable[[], str] | None = None

    def next_token(self) -> tuple[bool, str | None]:
        if self.mint is not None:
            return True, self.mint()
        if self.pool is None:
            return True, self.token
        try:
            return True, self.pool.pop()
        except IndexError:
            return False, None


@dataclass
class Rec:
    """One answer. The filter decided it between `sent` and `t`: a check that something
    holds "from a time on" looks at requests *sent* after it, "until a time" (the next
    fault or fix) at requests *answered* before it."""
    sent: float     # monotonic, when the request was sent
    t: float        # monotonic, when the answer arrived
    phase: str      # when the request was sent
    case: str
    status: int     # 0: no HTTP answer at all
    detail: str     # error_description, or "id"/"anon" for 200s (identity headers or not)
    retry_after: bool


@dataclass
class Load:
    """LOAD_THREADS threads send the cases round-robin (a new connection per request, so both
    Envoy workers get them) until stopped or `max_requests` is reached; every answer is
    recorded with the phase current when it arrived."""
    cases: list[Case]
    max_requests: int = 60_000
    phase: str = "warm"
    recs: list[Rec] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Load":
        for i in range(LOAD_THREADS):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, offset: int) -> None:
        s = requests.Session()
        order = self.cases[offset % len(self.cases):] + self.cases[:offset % len(self.cases)]
        for case in itertools.cycle(order):
            if self._stop.is_set() or len(self.recs) >= self.max_requests:
                return
            phase = self.phase  # the phase a request belongs to: when it was sent
            ok, tok = case.next_token()
            if not ok:
                if all(c.pool is not None and not c.pool for c in self.cases):
                    time.sleep(0.05)
                continue
            h = {"connection": "close"}
            if tok:
                h["authorization"] = f"Bearer {tok}"
            sent = time.monotonic()
            try:
                r = s.get(case.gw.url(case.path), headers=h, timeout=15)
                status, retry = r.status_code, "retry-after" in r.headers
                if status == 200:
                    detail = "id" if "x-tollgate-sub" in r.json()["headers"] else "anon"
                else:
                    try:
                        detail = r.json().get("error_description") or r.json().get("error", "")
                    except ValueError:
                        detail = r.text[:80]
            except requests.RequestException as e:
                status, retry, detail = 0, False, type(e).__name__
            with self._lock:
                self.recs.append(Rec(sent, time.monotonic(), phase, case.name, status, detail,
                                     retry))

    def set_phase(self, phase: str) -> float:
        with self._lock:
            self.phase = phase
        return time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=20)

    def of(self, case: str, phase: str | tuple[str, ...] | None = None, since: float = 0.0,
           until: float = float("inf")) -> list[Rec]:
        """Answers of `case` (in `phase`, or one of several) to requests sent from `since`,
        answered by `until`."""
        phases = (phase,) if isinstance(phase, str) else phase
        with self._lock:
            return [r for r in self.recs if r.case == case and (phases is None or r.phase in phases)
                    and since <= r.sent and r.t <= until]

    def count(self, case: str, since: float) -> int:
        return len(self.of(case, since=since))

    def wait_for(self, case: str, since: float, n: int = 3, timeout: float = 10.0) -> None:
        """Until `case` got `n` answers after `since` (the load is slow on a busy machine)."""
        deadline = time.monotonic() + timeout
        while self.count(case, since) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def table(self, title: str) -> str:
        by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        with self._lock:
            for r in self.recs:
                by[r.phase][(r.case, r.status)] += 1
        lines = [f"--- {title}: {len(self.recs)} requests"]
        for phase, c in by.items():
            cases = sorted({k for k, _ in c})
            parts = []
            for name in cases:
                st = " ".join(f"{s}x{n}" for (k, s), n in sorted(c.items()) if k == name)
                parts.append(f"{name}[{st}]")
            lines.append(f"{phase} ({sum(c.values())}): " + ", ".join(parts))
        return "\n".join(lines)


@contextlib.contextmanager
def running(load: Load):
    load.start()
    try:
        yield load
    finally:
        load.stop()


def check_5xx(load: Load) -> None:
    """No answer without HTTP, and every 5xx is the filter's documented 503."""
    bad = [r for r in load.recs if r.status == 0 or (r.status >= 500 and not (
        r.status == 503 and r.retry_after and r.detail and "retry later" in r.detail))]
    assert not bad, f"{len(bad)} undocumented failures, e.g. {bad[:5]}"


def check_envoy_healthy(gw: Envoy, vm_stats_before: dict[str, int]) -> None:
    """Envoy runs, its Wasm VMs were neither re-created nor failed, and it logged no VM
    failure."""
    assert gw.proc.alive(), f"envoy exited:\n{gw.proc.tail(40)}"
    # `wasm.envoy.wasm.runtime.v8.created` / `.active`, `wasm.wasm_vm_count`,
    # `wasm.<plugin>.vm_reload*` (a failed VM being replaced): all as before the faults.
    stats = wasm_stats(gw)
    assert stats == vm_stats_before, (vm_stats_before, stats)
    log = gw.log()
    marks = [m for m in VM_FAILURE_MARKS if m in log]
    assert not marks, f"envoy log shows a Wasm VM failure ({marks}):\n{gw.proc.tail(60)}"
    r = requests.get(gw.admin("/ready"), timeout=5)
    assert r.status_code == 200 and r.text.strip() == "LIVE"


def filter_warnings(gw: Envoy) -> str:
    """The filter's distinct warnings in Envoy's log (numbers masked), with their counts."""
    c: collections.Counter[str] = collections.Counter()
    for line in gw.log().splitlines():
        if "tollgate: " in line and ("[warning]" in line or "[error]" in line):
            msg = line.split("tollgate: ", 1)[1]  # after Envoy's "wasm log <plugin> <vm>: "
            c[re.sub(r"[0-9]{4,}", "N", msg)[:150]] += 1  # keep HTTP statuses
    return "\n".join(f"  {n} x {m}" for m, n in c.most_common())


def wasm_stats(gw: Envoy) -> dict[str, int]:
    """Envoy's own Wasm counters and gauges (`wasm.*`: VMs created and active, failures)."""
    r = requests.get(gw.admin("/stats"), params={"filter": r"^wasm\."}, timeout=5)
    out = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def wait_status(gw: Envoy, token: str, want: int, path: str = "/r",
                timeout: float = 10.0) -> tuple[requests.Response, float]:
    """Send `token` until the answer is `want` (or `timeout`); the last answer and the time."""
    start = time.monotonic()
    while True:
        r = requests.get(gw.url(path), timeout=10, headers={
            "connection": "close", "authorization": f"Bearer {token}"})
        if r.status_code == want or time.monotonic() - start > timeout:
            return r, time.monotonic() - start
        time.sleep(0.02)


def wait_counter(gw: Envoy, name: str, above: int = 0, timeout: float = 10.0) -> int:
    """Until the filter's counter `name` is above `above`; returns it."""
    deadline = time.monotonic() + timeout
    while (v := gw.counter(name)) <= above and time.monotonic() < deadline:
        time.sleep(0.05)
    assert v > above, f"{name} stayed at {v}"
    return v


def polls_done(gw: Envoy) -> int:
    """Revocation-feed polls the gateway has finished, good or failed."""
    return (gw.counter("tollgate_revocation_poll_ok")
            + gw.counter("tollgate_revocation_poll_failed"))


def first_stable(recs: list[Rec], good: Callable[[Rec], bool]) -> Rec | None:
    """The first good answer after which every request sent got a good answer (None: there
    is no such answer)."""
    last_bad = max((r.sent for r in recs if not good(r)), default=float("-inf"))
    after = [r for r in recs if good(r) and r.t >= last_bad]
    return min(after, key=lambda r: r.t) if after else None


# --------------------------------------------------------------------------- auth server
def edge_client(auth: AuthServer) -> dict:
    return auth.register_client(scope="tollgate:edge", name="gateway", rate_limit_per_minute=0)


def revoke(auth: AuthServer, client: dict, token: str) -> None:
    r = requests.post(f"{auth.base}/oauth2/revoke", data={"token": token}, timeout=5,
                      auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200, r.text


def kill(auth: AuthServer) -> None:
    """SIGKILL: no graceful shutdown, connections reset."""
    assert auth.proc is not None
    auth.proc.proc.kill()
    auth.proc.proc.wait(timeout=10)
    auth.stop()


def gateway_config(auth_issuer: str, edge: dict, *, closed: bool, rules=None,
                   poll_ms: int, stale_after_s: int, timeout_ms: int,
                   introspection: bool = True) -> dict:
    cfg = filter_config(
        issuers=[issuer_entry(auth_issuer, "tollgate-authserver", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        auth_server={"cluster": "tollgate-authserver", "client_id": edge["client_id"],
                     "client_secret": edge["client_secret"], "timeout_ms": timeout_ms},
        # Poll mode: these faults are counted poll by poll and phase by phase, and a long
        # poll held across a phase change would be answered with the next phase's fault
        # (the long-poll path and its fallback: test_edge_longpoll.py).
        revocation={"mode": "poll", "poll_interval_ms": poll_ms, "stale_after_s": stale_after_s,
                    "stale_mode": "closed" if closed else "open",
                    "lease_ms": max(5000, timeout_ms + poll_ms)},
        rules=rules or [],
        tick_ms=TICK_MS,
    )
    if introspection:
        cfg["introspection"] = {"issuer": auth_issuer, "negative_ttl_s": 5,
                                "fail_mode": "closed" if closed else "open",
                                # The load's new opaque tokens all come from 127.0.0.1:
                                # this test is about the fail modes, not the per-address
                                # miss limit (test_edge_revocation.py covers that).
                                "miss_limit": {"requests": 1000000, "period_s": 60}}
    test_filter_schema.VALIDATOR.validate(cfg)  # the chart's schema accepts what we run
    return cfg


# --------------------------------------------------------------------------- 1. auth server
POLL_MS = 500
STALE_S = 3
LEASE = 5


def test_auth_server_killed_and_restarted_under_load(echo, wasm, tmp_path):
    require_authserver()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path / "redis"))
        auth = AuthServer(env={"TOLLGATE_STORE": redis.url(0),
                               "TOLLGATE_SECRET_PEPPER": "e2e-faults-pepper"})
        stack.callback(auth.stop)
        edge = edge_client(auth)
        gws: dict[str, Envoy] = {}
        for mode in ("open", "closed"):
            rules = [{"name": "global", "path_prefix": "/g/",
                      "rate_limit": {"requests": 100_000, "period_s": 60, "key": "client_id",
                                     "mode": "global", "lease": LEASE,
                                     "fail_mode": "closed" if mode == "closed" else "local"}}]
            cfg = gateway_config(auth.issuer, edge, closed=mode == "closed", rules=rules,
                                 poll_ms=POLL_MS, stale_after_s=STALE_S, timeout_ms=500)
            gws[mode] = stack.enter_context(
                Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port))

        api = auth.register_client(scope="api:read", rate_limit_per_minute=0)
        opq = auth.register_client(scope="api:read", access_token_format="opaque",
                                   rate_limit_per_minute=0)
        phases = ("warm", "outage", "restarted")
        # Never-sent tokens, used once each (the outage is the longest phase).
        pools = {(kind, gw, ph): [auth.token(api if kind == "jwt" else opq)
                                  for _ in range(60 if ph == "outage" else 15)]
                 for kind in ("jwt", "opq") for gw in gws for ph in phases}
        fixed = {"jwt": auth.token(api), "opq": auth.token(opq), "revoked": auth.token(api),
                 "late": auth.token(api), "glob": auth.token(api)}
        revoke(auth, api, fixed["revoked"])
        assert fixed["opq"].startswith("tg_at_")

        cases: list[Case] = []
        for g, gw in gws.items():
            cases += [Case(f"{g}:jwt_cached", gw, token=fixed["jwt"]),
                      Case(f"{g}:jwt_new", gw, pool=pools[("jwt", g, "warm")]),
                      Case(f"{g}:opq_cached", gw, token=fixed["opq"]),
                      Case(f"{g}:opq_new", gw, pool=pools[("opq", g, "warm")]),
                      Case(f"{g}:revoked", gw, token=fixed["revoked"]),
                      Case(f"{g}:late", gw, token=fixed["late"]),
                      Case(f"{g}:global", gw, "/g/x", token=fixed["glob"])]
        by_name = {c.name: c for c in cases}
        for gw in gws.values():  # the gateways know the revoked token
            r, _ = wait_status(gw, fixed["revoked"], 401)
            assert r.json()["error_description"] == "token revoked"
        vm_before = {g: wasm_stats(gw) for g, gw in gws.items()}
        load = Load(cases)
        with running(load):
            # Warm: every token known, the feed polled, a lease held.
            t_warm = time.monotonic()
            for c in cases:
                load.wait_for(c.name, t_warm, n=5)
            for g, gw in gws.items():
                assert gw.counter("tollgate_revocation_poll_ok") >= 1
                assert gw.counter("tollgate_rate_limit_lease") >= 1

            # Outage: SIGKILL under load. (Requests sent while the phase changes belong to
            # "killing" / "restarting": they are only checked for undocumented failures.)
            t_killing = load.set_phase("killing")
            for g in gws:
                by_name[f"{g}:jwt_new"].pool = pools[("jwt", g, "outage")]
                by_name[f"{g}:opq_new"].pool = pools[("opq", g, "outage")]
            kill(auth)
            t_kill = load.set_phase("outage")
            # Past the staleness bound, and long enough to see it.
            time.sleep(STALE_S + 2.5)
            for c in cases:
                load.wait_for(c.name, t_kill, n=5)
            counters_down = {g: gw.counters() for g, gw in gws.items()}

            # Restart on the same port and Redis: the gateways find it by themselves.
            load.set_phase("restarting")
            for g in gws:
                by_name[f"{g}:jwt_new"].pool = pools[("jwt", g, "restarted")]
                by_name[f"{g}:opq_new"].pool = pools[("opq", g, "restarted")]
            t_restart0 = time.monotonic()
            auth.start()
            t_up = load.set_phase("restarted")
            print(f"auth server restart: healthy after {t_up - t_restart0:.2f} s")
            time.sleep(3.0)
            # A token revoked after the restart is refused within the poll bound, on both
            # gateways (measured by direct requests next to the load).
            revoke(auth, api, fixed["late"])
            t_revoke = time.monotonic()
            late_bound = (POLL_MS + 2 * TICK_MS) / 1000 + 1.5
            for g, gw in gws.items():
                r, _ = wait_status(gw, fixed["late"], 401, timeout=late_bound + 5)
                took = time.monotonic() - t_revoke
                print(f"{g}: revoked after the restart -> 401 in {took:.2f} s")
                assert r.status_code == 401 and r.json()["error_description"] == "token revoked"
                assert took <= late_bound, took
            time.sleep(1.0)
            t_end = time.monotonic()
        print(load.table("auth server SIGKILL + restart"))
        for g, gw in gws.items():
            print(f"{g} gateway, filter warnings:\n{filter_warnings(gw)}")

        check_5xx(load)
        for g, gw in gws.items():
            check_envoy_healthy(gw, vm_before[g])
            # Every failed introspection counts, but the log gets one warning per worker
            # and 10 s, not one per request.
            failed = gw.counter("tollgate_introspection_failed")
            warned = gw.log().count("tollgate: introspection")
            print(f"{g}: {failed} failed introspections, {warned} warning(s) logged")
            assert failed >= 20 and warned <= vm_before[g]["wasm.wasm_vm_count"], (failed, warned)

        # ---- warm: everything passes, the revoked token is refused
        for g in gws:
            for name in ("jwt_cached", "jwt_new", "opq_cached", "opq_new", "late", "global"):
                recs = load.of(f"{g}:{name}", "warm", until=t_killing)
                assert recs and all(r.status == 200 and r.detail == "id" for r in recs), \
                    (g, name, collections.Counter((r.status, r.detail) for r in recs))
            assert all(r.status == 401 and r.detail == "token revoked"
                       for r in load.of(f"{g}:revoked", "warm", until=t_killing))

        # ---- outage, gateway with every fail mode open
        def outage(case):
            return load.of(case, "outage", until=t_restart0)

        def statuses(recs):
            return collections.Counter((r.status, r.detail) for r in recs)

        for name in ("jwt_cached", "jwt_new", "opq_cached", "late"):
            recs = outage(f"open:{name}")
            assert len(recs) >= 5 and all(r.status == 200 and r.detail == "id" for r in recs), \
                (name, statuses(recs))
        # New opaque tokens cannot be introspected: fail_mode open forwards them without
        # identity (the route needs no scope).
        recs = outage("open:opq_new")
        assert len(recs) >= 5 and all(r.status == 200 and r.detail == "anon" for r in recs), \
            statuses(recs)
        assert all(r.status == 401 and r.detail == "token revoked"
                   for r in outage("open:revoked"))
        # Leases: what is left is spent, then the gateway's own bucket (fail_mode local).
        recs = outage("open:global")
        assert len(recs) >= 5 and all(r.status == 200 for r in recs), statuses(recs)
        down = counters_down["open"]
        assert down["wasmcustom.tollgate_rate_limit_lease_failed"] >= 1
        assert down["wasmcustom.tollgate_rate_limit_fallback"] >= 1
        assert down["wasmcustom.tollgate_revocation_stale"] >= 1, "open mode counts staleness"
        assert down["wasmcustom.tollgate_revocation_poll_failed"] >= 1
        assert down["wasmcustom.tollgate_introspection_failed"] >= 1
        assert down["wasmcustom.tollgate_allowed_unverified"] >= 5

        # ---- outage, gateway with every fail mode closed: tokens pass until the feed is
        # stale (the last good poll was at most one interval before the kill), then 503.
        stale_lo = t_kill + STALE_S - POLL_MS / 1000 - 0.5
        stale_hi = t_kill + STALE_S + TICK_MS / 1000 + 1.0
        stale_503 = "revocation status unknown, retry later"
        for name in ("jwt_cached", "jwt_new", "opq_cached", "late"):
            recs = outage(f"closed:{name}")
            early = [r for r in recs if r.t < stale_lo]
            late = [r for r in recs if r.sent > stale_hi]
            assert early and all(r.status == 200 and r.detail == "id" for r in early), \
                (name, statuses(early))
            assert late and all(r.status == 503 and r.detail == stale_503 for r in late), \
                (name, statuses(late))
            assert all((r.status, r.detail) in {(200, "id"), (503, stale_503)} for r in recs)
        recs = outage("closed:opq_new")
        assert len(recs) >= 5 and all(
            r.status == 503 and r.detail == "token cannot be checked now, retry later"
            for r in recs), statuses(recs)
        assert all(r.status == 401 and r.detail == "token revoked"
                   for r in outage("closed:revoked"))
        # Leases: at most what was left of the lease passes, then 503 (fail_mode closed).
        recs = outage("closed:global")
        passed = [r for r in recs if r.status == 200]
        assert len(passed) <= LEASE, statuses(recs)
        assert all(r.status == 503 and r.detail in {
            "rate limit cannot be checked now, retry later", stale_503}
            for r in recs if r.status != 200), statuses(recs)
        assert any(r.detail == "rate limit cannot be checked now, retry later" for r in recs
                   if r.t < stale_lo), statuses(recs)
        assert counters_down["closed"]["wasmcustom.tollgate_denied_unavailable"] >= 10

        # ---- recovery after the restart: per case, from the restart to a stable answer
        print("recovery after the restart (healthy -> first of only good answers):")
        for g in gws:
            for name in ("jwt_cached", "jwt_new", "opq_cached", "opq_new", "global", "late"):
                # (`late` is revoked later: up to then.)
                recs = load.of(f"{g}:{name}", ("restarting", "restarted"),
                               until=t_revoke if name == "late" else float("inf"))
                assert recs, (g, name)
                ok = first_stable(recs, lambda r: r.status == 200 and r.detail == "id")
                assert ok is not None, (g, name, statuses(recs))
                # Before it, only what the outage answered.
                allowed = {(200, "id"), (200, "anon"), (503, stale_503),
                           (503, "token cannot be checked now, retry later"),
                           (503, "rate limit cannot be checked now, retry later")}
                assert all((r.status, r.detail) in allowed for r in recs if r.t < ok.t), \
                    (g, name, statuses(recs))
                print(f"  {g}:{name}: {max(0.0, ok.t - t_up):.2f} s "
                      f"({len(recs)} requests, {statuses(recs)})")
            after = load.of(f"{g}:late", "restarted", since=t_revoke + late_bound, until=t_end)
            assert all(r.status == 401 for r in after), statuses(after)
            assert all(r.status == 401 for r in load.of(f"{g}:revoked", "restarted"))
        for g, gw in gws.items():
            c = gw.counters()
            down = counters_down[g]
            # Leases resumed: new lease calls answered (not failed) after the restart.
            assert c["wasmcustom.tollgate_rate_limit_lease"] > \
                down["wasmcustom.tollgate_rate_limit_lease"]
            assert c["wasmcustom.tollgate_revocation_poll_ok"] > \
                down["wasmcustom.tollgate_revocation_poll_ok"]
            assert c["wasmcustom.tollgate_introspection_call"] > \
                down["wasmcustom.tollgate_introspection_call"]


# --------------------------------------------------------------------------- 2. JWKS
JWKS_TIMEOUT_MS = 500


def test_jwks_slow_or_garbage_under_load(echo, wasm):
    iss = TestIssuer()
    iss.slow_s = JWKS_TIMEOUT_MS / 1000 + 1.5
    cfg = filter_config(
        issuers=[issuer_entry(iss.issuer, "test-issuer", refresh_interval_s=60,
                              min_refresh_interval_s=1, retry_interval_s=1,
                              timeout_ms=JWKS_TIMEOUT_MS)],
        tick_ms=TICK_MS)
    test_filter_schema.VALIDATOR.validate(cfg)
    with contextlib.ExitStack() as stack:
        stack.callback(iss.stop)
        gw = stack.enter_context(Envoy(filter_config=cfg, upstream_port=echo.port,
                                       issuer_port=iss.port))
        cached = iss.mint(sub="cached")
        r = requests.get(gw.url("/r"), headers={"authorization": f"Bearer {cached}"}, timeout=10)
        assert r.status_code == 200, r.text
        vm_before = wasm_stats(gw)

        newkid = Case("newkid", gw, token="")
        # `fresh`: a never-seen token of a cached key on every request.
        cases = [Case("cached", gw, token=cached),
                 Case("fresh", gw, mint=lambda: iss.mint(sub=f"fresh-{uuid.uuid4().hex[:8]}")),
                 newkid]
        load = Load(cases)
        recoveries: dict[str, float] = {}
        fixed_at: dict[str, float] = {}
        # Groups of faults; the endpoint is fixed after each group and the new kid of the
        # group must then be accepted.
        # (Every one of GARBAGE_MODES takes a second here; the ones left out take the same
        # code paths as one that is in: a non-200 status, not a JWKS, no usable key.)
        groups = [["slow"], ["truncated"],
                  ["error-500", "invalid-json", "binary", "no-keys", "html", "wrong-types",
                   "empty-keys", "huge"]]
        assert all(m in GARBAGE_MODES for m in groups[2])
        with running(load):
            for gi, group in enumerate(groups):
                # Requests sent while the token changes belong to no phase checked below.
                load.set_phase(f"switch-{gi}")
                kid = f"rotated-{gi}"
                iss.mode = group[0]
                iss.add_key(kid, "ES256")  # published, but the endpoint is broken
                newkid.token = iss.mint(kid=kid, sub="newkid")
                for mode in group:
                    iss.mode = mode
                    failed = gw.counter("tollgate_jwks_refresh_failed")
                    t0 = load.set_phase(mode)
                    deadline = time.monotonic() + 8
                    while (gw.counter("tollgate_jwks_refresh_failed") <= failed
                           and time.monotonic() < deadline):
                        time.sleep(0.05)
                    assert gw.counter("tollgate_jwks_refresh_failed") > failed, \
                        f"{mode}: no failed fetch seen"
                    for c in cases:
                        load.wait_for(c.name, t0, n=3)
                iss.mode = "ok"
                t_fix = load.set_phase(f"fixed-{gi}")
                fixed_at.update({mode: t_fix for mode in group})
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    ok = [r for r in load.of("newkid", since=t_fix) if r.status == 200]
                    if ok:
                        recoveries["+".join(group) if len(group) < 3 else "garbage"] = \
                            ok[0].t - t_fix
                        break
                    time.sleep(0.05)
                else:
                    seen = collections.Counter(r.status for r in load.of("newkid", since=t_fix))
                    pytest.fail(f"new kid not accepted after fixing {group}: {seen}")
                load.wait_for("newkid", ok[0].t, n=3)
        print(load.table("JWKS faults"))
        print(f"filter warnings:\n{filter_warnings(gw)}")
        print("JWKS fixed -> new kid accepted: " +
              ", ".join(f"{k} {v:.2f} s" for k, v in recoveries.items()))
        check_5xx(load)
        check_envoy_healthy(gw, vm_before)
        fault_phases = {p for g in groups for p in g}
        for r in load.recs:
            if r.case in ("cached", "fresh"):
                assert r.status == 200 and r.detail == "id", r
            elif r.phase in fault_phases and r.t < fixed_at[r.phase]:
                assert r.status == 401 and r.detail == "signing key not found", r
        for mode in fault_phases:
            assert len(load.of("fresh", mode)) >= 1, mode
        # After each fix, once accepted the new kid stays accepted.
        for gi in range(len(groups)):
            recs = load.of("newkid", f"fixed-{gi}")
            ok = first_stable(recs, lambda r: r.status == 200)
            assert ok is not None and ok is min((r for r in recs if r.status == 200),
                                                key=lambda r: r.t), "accepted, then refused"
        assert "no key set loaded yet" not in gw.log()


# --------------------------------------------------------------------------- 3. feed
FEED_POLL_MS = 250
FEED_STALE_S = 1
FEED_TIMEOUT_MS = 500


def test_revocation_feed_faults_under_load(echo, wasm):
    require_authserver()
    with contextlib.ExitStack() as stack:
        auth = stack.enter_context(AuthServer())
        proxy = stack.enter_context(FaultProxy(auth.port))
        edge = edge_client(auth)
        gws = {}
        for mode in ("open", "closed"):
            cfg = gateway_config(auth.issuer, edge, closed=mode == "closed",
                                 poll_ms=FEED_POLL_MS, stale_after_s=FEED_STALE_S,
                                 timeout_ms=FEED_TIMEOUT_MS, introspection=False)
            gws[mode] = stack.enter_context(
                Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=proxy.port))
        api = auth.register_client(scope="api:read", rate_limit_per_minute=0)
        good = auth.token(api)
        feed = f"{auth.base}/edge/revocations"
        creds = (edge["client_id"], edge["client_secret"])
        old_cursor = requests.get(feed, auth=creds, timeout=5).json()["cursor"]
        # A few revocations, so that the feed's cursor is past `old_cursor`.
        for _ in range(3):
            revoke(auth, api, auth.token(api))

        def huge_page(n: int):
            """The real page plus `n` more revocations (the same ones on every poll)."""
            exp = int(time.time()) + 600
            extra = [{"jti": uuid.uuid4().hex, "exp": exp} for _ in range(n)]

            def fn(status: int, body: bytes) -> tuple[int, bytes]:
                page = json.loads(body)
                page["revocations"] += extra
                return status, json.dumps(page).encode()
            return fn

        too_big = (b'{"cursor": "1", "revocations": [], "padding": "'
                   + b"x" * (17 * 1024 * 1024) + b'"}')
        rv = "/edge/revocations"
        # Chains of faults: the faults of a chain follow each other (each until the faulty
        # feed answered twice, then a token is revoked at the auth server), then the feed
        # heals. (chain, polls succeed during it, its answers carry new revocations, faults)
        chains: list[tuple[str, bool, bool, list[tuple[str, Callable[[], None]]]]] = [
            ("answers", False, False, [
                ("500", lambda: proxy.fail(rv, 500)),
                ("401", lambda: proxy.fail(rv, 401, b'{"error":"invalid_client"}')),
                ("invalid-json", lambda: proxy.fail(rv, 200, b'{"cursor": "9", "revocations": [')),
                ("html", lambda: proxy.fail(rv, 200, b"<html>maintenance</html>", "text/html")),
                ("binary", lambda: proxy.fail(rv, 200, bytes(range(256)) * 8)),
                ("wrong-shape", lambda: proxy.fail(
                    rv, 200, b'{"cursor": 12, "revocations": {"jti": "x"}, "more": "yes"}')),
            ]),
            ("transport", False, False, [
                ("timeout", lambda: proxy.delay(rv, FEED_TIMEOUT_MS / 1000 + 1.0)),
                ("dropped", lambda: proxy.drop(rv)),
                # Larger than the filter reads (16 MiB): refused unread, like a failed poll.
                ("too-big", lambda: proxy.fail(rv, 200, too_big)),
            ]),
            # The feed answers, but from the past: the filter's cursor goes back (the set
            # stays, nothing new arrives until it heals, then it catches up from there).
            ("cursor-back", True, False, [("cursor-back", lambda: proxy.fail(
                rv, 200, json.dumps({"cursor": old_cursor, "revocations": []}).encode()))]),
            # A cursor from the future: the feed answers the next poll with a resync.
            ("cursor-ahead", True, False, [("cursor-ahead", lambda: proxy.fail(
                rv, 200, b'{"cursor": "99999999", "revocations": [], "more": false}'))]),
            # A huge (but readable) page: 60 000 more revocations on top of the real page,
            # which still carries the new revocation.
            ("huge-page", True, True, [("huge-page",
                                         lambda: proxy.rewrite(rv, huge_page(60_000)))]),
        ]
        names = [name for _, _, _, faults in chains for name, _ in faults]
        victims = {name: auth.token(api) for name in names}
        cases = []
        for g, gw in gws.items():
            cases.append(Case(f"{g}:good", gw, token=good))
            cases += [Case(f"{g}:v-{name}", gw, token=tok) for name, tok in victims.items()]
        for gw in gws.values():
            wait_counter(gw, "tollgate_revocation_poll_ok")
        load = Load(cases)
        vm_before = {g: wasm_stats(gw) for g, gw in gws.items()}
        times: dict[str, dict[str, float]] = {}
        revoked_at: dict[str, float] = {}
        bound = (FEED_POLL_MS + 2 * TICK_MS) / 1000 + 1.5
        with running(load):
            t0 = time.monotonic()
            for c in cases:
                load.wait_for(c.name, t0, n=2)
            for chain, polls_ok, carries, faults in chains:
                t_fault = load.set_phase(chain)
                for name, start in faults:
                    failed = {g: gw.counter("tollgate_revocation_poll_failed")
                              for g, gw in gws.items()}
                    polls = {g: polls_done(gw) for g, gw in gws.items()}
                    hits = proxy.faulted[rv]
                    start()
                    # Revoke the victim once this fault has answered at least twice, and each
                    # gateway has finished two polls since it started: the second was sent
                    # after the fault began (one poll at a time per gateway), so no poll
                    # forwarded to the real feed before the fault can carry the revocation.
                    deadline = time.monotonic() + 10
                    while (proxy.faulted[rv] < hits + 2
                           or any(polls_done(gw) < polls[g] + 2 for g, gw in gws.items())) \
                            and time.monotonic() < deadline:
                        time.sleep(0.02)
                    for g, gw in gws.items():
                        if polls_ok:
                            assert gw.counter("tollgate_revocation_poll_failed") == failed[g]
                        else:  # both gateways saw this fault as a failed poll
                            wait_counter(gw, "tollgate_revocation_poll_failed", failed[g])
                    revoke(auth, api, victims[name])
                    revoked_at[name] = time.monotonic()
                # Past the staleness bound when polls fail; past the propagation bound when
                # the faulty answers still carry the revocation.
                until = t_fault + (FEED_STALE_S + 1.0 if not polls_ok else 0.8)
                if carries:
                    until = revoked_at[faults[-1][0]] + bound + 0.3
                time.sleep(max(0.0, until - time.monotonic()))
                # Answers to look at in the last part of the fault (past the staleness or
                # propagation bound checked below), also on a loaded machine.
                look_from = (revoked_at[faults[-1][0]] + bound if carries else until - 0.3
                             if polls_ok else t_fault + FEED_STALE_S + TICK_MS / 1000 + 0.8)
                for g in gws:
                    load.wait_for(f"{g}:good", look_from, n=2)
                    if carries:
                        load.wait_for(f"{g}:v-{faults[-1][0]}", look_from, n=2)
                proxy.heal()
                t_heal = load.set_phase(f"healed-{chain}")
                # Every revocation of the chain enforced, the good token passing, on both.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if all(any(r.status == 401 for r in load.of(f"{g}:v-{name}", since=t_heal))
                           for g in gws for name, _ in faults) and \
                            all(any(r.status == 200 for r in load.of(f"{g}:good", since=t_heal))
                                for g in gws):
                        break
                    time.sleep(0.05)
                times[chain] = {"fault": t_fault, "heal": t_heal, "settled": time.monotonic()}
        print(load.table("revocation feed faults"))
        for g, gw in gws.items():
            print(f"{g} gateway, filter warnings:\n{filter_warnings(gw)}")
        check_5xx(load)
        for g, gw in gws.items():
            check_envoy_healthy(gw, vm_before[g])

        print("feed healed -> revocations made during the faults enforced / good token 200:")
        stale_503 = "revocation status unknown, retry later"
        for chain, polls_ok, carries, faults in chains:
            t = times[chain]
            for g in gws:
                good_recs = load.of(f"{g}:good", chain, until=t["heal"])
                assert good_recs, (chain, g)
                for name, _ in faults:
                    victim = load.of(f"{g}:v-{name}", chain, until=t["heal"])
                    assert all(r.status != 401 for r in victim if r.t < revoked_at[name])
                    if carries:
                        # The feed still works: the victim is refused within one poll.
                        late = [r for r in victim if r.sent > revoked_at[name] + bound]
                        assert late and all(r.status == 401 for r in late), (name, g)
                        first = next(r for r in victim if r.status == 401)
                        print(f"  {name:>12} {g:>6}: revoked during the fault, refused after "
                              f"{first.t - revoked_at[name]:.2f} s")
                    else:
                        # The faulty feed does not carry the revocation: not refused yet.
                        assert all(r.status != 401 for r in victim), (name, g)
                if carries:
                    assert all(r.status == 200 for r in good_recs), (chain, g)
                    continue
                chain_recs = good_recs + [r for name, _ in faults
                                          for r in load.of(f"{g}:v-{name}", chain,
                                                           until=t["heal"])]
                if polls_ok or g == "open":
                    # Never stale (or open): every request passes.
                    assert all(r.status == 200 for r in chain_recs), (chain, g)
                else:
                    # Closed: 200 until the feed is stale, 503 after.
                    lo = t["fault"] + FEED_STALE_S - FEED_POLL_MS / 1000 - 0.3
                    hi = t["fault"] + FEED_STALE_S + TICK_MS / 1000 + 0.8
                    for r in chain_recs:
                        if r.t < lo:
                            assert r.status == 200, (chain, g, r)
                        elif r.sent > hi:
                            assert r.status == 503 and r.detail == stale_503, (chain, g, r)
                        else:
                            assert r.status in (200, 503), (chain, g, r)
                    assert any(r.status == 503 for r in good_recs), (chain, g)
                healed_good = load.of(f"{g}:good", f"healed-{chain}")
                ok = first_stable(healed_good, lambda r: r.status == 200)
                assert ok is not None, (chain, g)
                slowest = 0.0
                for name, _ in faults:
                    healed_v = load.of(f"{g}:v-{name}", f"healed-{chain}")
                    first_401 = next((r for r in healed_v if r.status == 401), None)
                    assert first_401 is not None, (name, g, [r.status for r in healed_v])
                    assert first_401.detail == "token revoked"
                    assert all(r.status == 401 for r in healed_v if r.sent > first_401.t), \
                        (name, g, [(round(r.t - t["heal"], 2), r.status) for r in healed_v])
                    # Later phases: it stays refused.
                    later = [r for r in load.of(f"{g}:v-{name}") if r.sent > t["settled"]]
                    assert all(r.status == 401 for r in later), (name, g)
                    slowest = max(slowest, first_401.t - t["heal"])
                    assert first_401.t - t["heal"] <= bound, (name, g, first_401.t - t["heal"])
                print(f"  {chain:>12} {g:>6}: {len(faults)} revocation(s) enforced after "
                      f"{slowest:.2f} s, good token {max(0.0, ok.t - t['heal']):.2f} s")
