"""The revocation feed as a long poll (issue 13), run by bench_edge.py after its own
revocation scenario:

- propagation under load: the edge gateway (revocation `mode: long_poll`, the default) and
  a fifth Envoy with `mode: poll` (every 1 s), each under a wrk load on its JWT path
  while tokens are revoked one by one (bench_edge.revocation_propagation: time from the
  revoke answer to the first 401 at the gateway); p50/p99 of both;
- auth-server CPU for 1,000 idle gateways: a separate auth server (in-memory store, enough
  connections) and 1,000 concurrent asyncio clients, each one gateway's poller: long
  polls (`wait=25`, held the whole window: what idle gateways cost) against polls every
  1 s (the former default); the auth server's CPU from /proc over the window.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import requests

import bench_edge
import common
from common import BenchError, Settings


def poll_filter_config(gw: Any, auth: Any, audience: str) -> str:
    """The edge gateway's configuration with `revocation.mode: poll` (every 1 s)."""
    edge_client = auth.register("bench-gateway-edge-poll", "tollgate:edge",
                                rate_limit_per_minute=0)
    return gw.tollgate_filter_config(auth, audience, {
        "auth_server": {"cluster": "tollgate_authserver",
                        "authority": f"127.0.0.1:{auth.port}",
                        "client_id": edge_client[0], "client_secret": edge_client[1],
                        "timeout_ms": 1000},
        "revocation": {"mode": "poll"},
        "introspection": {"issuer": auth.issuer, "miss_limit": {"requests": 0}},
    })


class _Load:
    """wrk against `url` in back-to-back runs until stopped (the load during a scenario)."""

    def __init__(self, settings: Settings, url: str, env: dict[str, str]) -> None:
        self.stop = threading.Event()
        self.runs: list[dict[str, Any]] = []
        self.errors: list[str] = []

        def loop() -> None:
            while not self.stop.is_set():
                try:
                    self.runs.append(common.run_wrk(settings, url, "bearer.lua", env, 3,
                                                    connections=settings.connections))
                except BenchError as e:
                    self.errors.append(str(e))
                    return
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def end(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join(timeout=30)
        reqs = sum(r["requests"] for r in self.runs)
        secs = sum(r["seconds"] for r in self.runs)
        return {"wrk_runs": len(self.runs), "rps": round(reqs / secs, 1) if secs else 0.0,
                "connections": self.runs[0]["connections"] if self.runs else None,
                "errors": self.errors}


def propagation_under_load(gw: Any, settings: Settings, procs: common.Processes,
                           workdir: Path, auth: Any, audience: str, token: str,
                           tokens_file: Path, concurrency: int, edge_url: str,
                           stats) -> dict[str, Any]:
    n = common.env_int("BENCH_LONGPOLL_REVOCATIONS", 40)
    workers = common.env_int("BENCH_REVOCATION_WORKERS", 5)
    poll_url, poll_admin = gw.start_gateway("edge-poll", procs, settings, workdir, auth,
                                            audience, token, tokens_file, concurrency,
                                            filter_config=poll_filter_config(gw, auth, audience))
    (workdir / "envoy-edge-poll.yaml").unlink(missing_ok=True)  # holds the client secret
    single = workdir / "token-repeated.txt"
    env = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)}
    out: dict[str, Any] = {}
    for mode, url in (("long_poll", edge_url), ("poll", poll_url)):
        print(f"revocation propagation under load, mode {mode}, {n} tokens:", flush=True)
        load = _Load(settings, url, env)
        try:
            # Revocations at random moments of a 1 s cycle (the poll interval of `poll`).
            res = bench_edge.revocation_propagation(auth, url, n, workers, 1.0)
        finally:
            res_load = load.end()
        res["load"] = res_load
        print(f"  (under {res_load['rps']:,.0f} req/s of wrk on the same gateway)", flush=True)
        out[mode] = res
    out["poll"]["filter_stats_after"] = stats(poll_admin)
    return out


# ---------------------------------------------------------------- idle gateways' CPU cost

def _start_auth(settings: Settings, procs: common.Processes,
                clients: int) -> tuple[Any, str, str]:
    """A separate auth server for the idle-client measurement: (process, base URL, the
    Authorization header of an edge client)."""
    from bench_gateway import authserver_bin
    port, admin_port = common.free_port(), common.free_port()
    admin = secrets.token_urlsafe(32)
    env = {"TOLLGATE_STORE": "memory", "TOLLGATE_LISTEN": f"127.0.0.1:{port}",
           "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}", "TOLLGATE_ADMIN_TOKEN": admin,
           "TOLLGATE_LOG": "warn", "RUST_LOG": "warn",
           "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0", "TOLLGATE_RATE_LIMIT_PER_IP": "0",
           "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
           "TOLLGATE_MAX_CONNECTIONS": str(clients + 256),
           "TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS": str(clients + 256)}
    proc = procs.start("authserver-longpoll", settings.server_prefix() +
                       [str(authserver_bin()), "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    common.wait_until("authserver (long polls) /readyz",
                      lambda: requests.get(f"{base}/readyz", timeout=1).status_code == 200,
                      procs=procs, watch=proc)
    r = requests.post(f"http://127.0.0.1:{admin_port}/oauth2/register", timeout=5,
                      headers={"Authorization": f"Bearer {admin}"},
                      json={"client_name": "bench-idle-gateways",
                            "grant_types": ["client_credentials"],
                            "token_endpoint_auth_method": "client_secret_basic",
                            "scope": "tollgate:edge", "rate_limit_per_minute": 0})
    if r.status_code not in (200, 201):
        raise BenchError(f"register: {r.status_code} {r.text[:300]}")
    cid, secret = r.json()["client_id"], r.json()["client_secret"]
    return proc, base, "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()


async def _clients(base: str, auth: str, n: int, wait_s: int | None, interval_s: float,
                   window_s: float, pid: int) -> dict[str, Any]:
    """`n` pollers for a ramp then `window_s`: long polls (`wait_s`) or polls every
    `interval_s`; the auth server's CPU and the answers over the window."""
    import aiohttp
    cursor = requests.get(f"{base}/edge/revocations", headers={"Authorization": auth},
                          timeout=5).json()["cursor"]
    q = f"?since={cursor}" + (f"&wait={wait_s}" if wait_s else "")
    answered = [0]
    failed = [0]
    stop = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=(wait_s or 0) + 30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        async def poller(i: int) -> None:
            # Spread the start (and so the poll phases) over one interval.
            await asyncio.sleep(interval_s * i / n)
            while not stop.is_set():
                try:
                    async with session.get(f"{base}/edge/revocations{q}",
                                           headers={"Authorization": auth}) as r:
                        await r.read()
                        if r.status == 200:
                            answered[0] += 1
                        else:
                            failed[0] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    failed[0] += 1
                if not wait_s:
                    await asyncio.sleep(interval_s)
        tasks = [asyncio.create_task(poller(i)) for i in range(n)]
        await asyncio.sleep(interval_s + 3)  # every poller started and, for long polls, held
        a0, f0, c0, t0 = answered[0], failed[0], common.process_cpu_ns(pid), time.monotonic()
        await asyncio.sleep(window_s)
        a1, f1, c1, t1 = answered[0], failed[0], common.process_cpu_ns(pid), time.monotonic()
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu_s = (c1 - c0) / 1e9 if c0 is not None and c1 is not None else None
    secs = t1 - t0
    return {"answers": a1 - a0, "failed": f1 - f0, "window_s": round(secs, 2),
            "answers_per_s": round((a1 - a0) / secs, 1),
            "cpu_s": round(cpu_s, 3) if cpu_s is not None else None,
            "cpu_percent": round(100 * cpu_s / secs, 2) if cpu_s is not None else None}


def idle_gateways_cpu(settings: Settings, procs: common.Processes) -> dict[str, Any]:
    n = common.env_int("BENCH_IDLE_GATEWAYS", 1000)
    window = common.env_float("BENCH_IDLE_WINDOW", 10.0)
    proc, base, auth = _start_auth(settings, procs, n)
    try:
        out: dict[str, Any] = {"gateways": n, "store": "memory"}
        for label, wait_s, interval in (("long_poll_wait_25s", 25, 1.0), ("poll_1s", None, 1.0)):
            r = asyncio.run(_clients(base, auth, n, wait_s, interval, window, proc.pid))
            rss = Path(f"/proc/{proc.pid}/status").read_text()
            r["rss_kb_after"] = next((int(x.split()[1]) for x in rss.splitlines()
                                      if x.startswith("VmRSS:")), None)
            print(f"  {n} idle gateways, {label}: auth server CPU {r['cpu_percent']}% of a "
                  f"core over {r['window_s']} s, {r['answers_per_s']:,.0f} answers/s, "
                  f"{r['failed']} failed", flush=True)
            out[label] = r
        return out
    finally:
        procs.stop(proc)


def run(gw: Any, settings: Settings, procs: common.Processes, workdir: Path, auth: Any,
        audience: str, token: str, tokens_file: Path, concurrency: int, edge_url: str,
        stats) -> dict[str, Any]:
    out = {"propagation": propagation_under_load(gw, settings, procs, workdir, auth, audience,
                                                 token, tokens_file, concurrency, edge_url,
                                                 stats)}
    print("auth-server CPU for idle gateways (1 poller each):", flush=True)
    out["idle_gateways"] = idle_gateways_cpu(settings, procs)
    return out


def report(e: dict[str, Any]) -> None:
    lp = e.get("longpoll")
    if not lp:
        return
    p = lp["propagation"]
    for mode in ("long_poll", "poll"):
        r = p[mode]
        print(f"revocation propagation under load, {mode}: p50 {r['p50_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms "
              f"({r['revocations']} revocations, wrk {r['load']['rps']:,.0f} req/s)")
    i = lp["idle_gateways"]
    for k in ("long_poll_wait_25s", "poll_1s"):
        print(f"{i['gateways']} idle gateways, {k}: auth-server CPU "
              f"{i[k]['cpu_percent']}% of a core, {i[k]['answers_per_s']:,.0f} answers/s")
