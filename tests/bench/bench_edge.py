"""The edge scenarios of `make bench-gateway` (issue 5), run by bench_gateway.py after the
JWT scenarios, against the same native and Tollgate gateways plus a fourth Envoy, "edge":
Tollgate with revocation at the edge and opaque-token introspection on.

- rate limit, allowed path: a route limited to 10^7 requests/s (never reached), native
  `local_ratelimit` vs Tollgate `rules[].rate_limit`, and Tollgate's unlimited route in the
  same rounds: the cost of the limiter when it lets requests through;
- rate limit, over the limit: a route limited to 100 requests/s with a burst of 100, so
  that nearly every request is refused: 429 throughput (answers/s) of both, and how many
  requests each let through (it must be the limit);
- opaque token: the same opaque token on every request (Tollgate: introspection cache),
  then a stream of opaque tokens never seen (one introspection call each); Envoy has no
  native introspection, so the comparison is the JWT path of native jwt_authn (same
  repeated / distinct shape) — said so in the tables;
- revocation propagation: tokens revoked one by one through the auth server at random
  moments of the poll cycle; time from the revoke response to the first 401 at the gateway.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import requests

import common
from common import BenchError, Settings

# (requests, period_s, burst) of the two rate-limited routes, the same on both gateways.
RL_ALLOWED = (10_000_000, 1, 10_000_000)
RL_OVER = (100, 1, 100)
POLL_INTERVAL_MS = 1000  # Tollgate's default revocation.poll_interval_ms (not configured)


def native_limits() -> dict[str, Any]:
    """Template values of envoy/native.yaml's rate-limited routes."""
    out: dict[str, Any] = {}
    for name, (req, period, burst) in (("allowed", RL_ALLOWED), ("over", RL_OVER)):
        out[f"rl_{name}_requests"] = req
        out[f"rl_{name}_burst"] = burst
        out[f"rl_{name}_period"] = f"{period}s"
    return out


def tollgate_rate_limit_rules() -> list[dict[str, Any]]:
    """The same limits as Tollgate rules (key: client_id; the benchmark has one client)."""
    return [
        {"name": f"rl-{name}", "path_prefix": f"/rl/{name}",
         "rate_limit": {"requests": req, "period_s": period, "burst": burst,
                        "key": "client_id"}}
        for name, (req, period, burst) in (("allowed", RL_ALLOWED), ("over", RL_OVER))]


def edge_filter_config(gw: Any, auth: Any, audience: str) -> str:
    """Tollgate with the auth server as its own client: revocation feed (defaults: poll
    every 1 s, tick 200 ms) and introspection of opaque tokens (defaults)."""
    edge_client = auth.register("bench-gateway-edge", "tollgate:edge",
                                rate_limit_per_minute=0)
    return gw.tollgate_filter_config(auth, audience, {
        "auth_server": {"cluster": "tollgate_authserver",
                        "authority": f"127.0.0.1:{auth.port}",
                        "client_id": edge_client[0], "client_secret": edge_client[1],
                        "timeout_ms": 1000},
        "revocation": {},
        # No per-address limit on new opaque tokens: the distinct-token run is one address.
        "introspection": {"issuer": auth.issuer, "miss_limit": {"requests": 0}},
    })


def _get(url: str, token: str | None, session: requests.Session | None = None,
         close: bool = False) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if close:
        headers["Connection"] = "close"  # a new connection: either Envoy worker
    return (session or requests).get(url, headers=headers, timeout=5)


def _check_rate_limited(kind: str, base: str, token: str) -> None:
    """Both routes answer as configured before anything is measured."""
    r = _get(f"{base}/rl/allowed", token)
    if r.status_code != 200:
        raise BenchError(f"{kind}: /rl/allowed answered {r.status_code}")
    if not any(h.lower().startswith(("ratelimit", "x-ratelimit")) for h in r.headers):
        raise BenchError(f"{kind}: /rl/allowed answered without rate-limit headers")
    with requests.Session() as s:
        codes = [_get(f"{base}/rl/over", token, s).status_code for _ in range(3 * RL_OVER[2])]
    if codes.count(429) < RL_OVER[2] or set(codes) - {200, 429}:
        raise BenchError(f"{kind}: /rl/over gave {codes.count(429)} x 429 of {len(codes)} "
                         f"(statuses {sorted(set(codes))})")


def _interleaved(settings: Settings, runs: dict[str, tuple[str, str, dict[str, str]]],
                 rounds: int, per_round: float) -> dict[str, dict[str, Any]]:
    """`runs`: label → (url, script, env). A short warm-up of each, then `rounds` rounds of
    every run in turn; every answer must be 2xx."""
    for url, script, env in runs.values():
        common.run_wrk(settings, url, script, env, 1)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    for i in range(rounds):
        for label, (url, script, env) in runs.items():
            r = common.run_wrk(settings, url, script, env, per_round)
            print(f"  {label}: round {i + 1}: {r['rps']:,.0f} req/s", flush=True)
            if r["non_2xx"] or sum(r["socket_errors"].values()):
                raise BenchError(f"{label}: {r['non_2xx']} answers not 2xx, socket errors "
                                 f"{r['socket_errors']}")
            results[label].append(r)
    return {k: common.combine_rounds(k, v) for k, v in results.items()}


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b.get("rps"):
        return None
    return round(a["rps"] / b["rps"], 2)


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def revocation_propagation(auth: Any, url: str, count: int, workers: int,
                           poll_s: float) -> dict[str, Any]:
    """Revoke `count` tokens one by one (each: mint, verify at the gateway so that it is in
    the caches, wait a random fraction of the poll interval, revoke); time from the revoke
    response to the first 401 `token revoked` at the gateway, probing every 10 ms on new
    connections. `workers` threads do this side by side (each its own sequence), to keep the
    run short; their revocations land at independent random moments of the poll cycle."""
    rng = random.Random()
    lock = threading.Lock()
    per_worker = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    probe_every = 0.01

    def one_worker(n: int) -> list[float]:
        out: list[float] = []
        with requests.Session() as s:
            for _ in range(n):
                token = auth.token(session=s)
                r = _get(url, token, s)
                if r.status_code != 200:
                    raise BenchError(f"edge: a fresh token answered {r.status_code}")
                with lock:
                    delay = rng.uniform(0, poll_s)
                time.sleep(delay)
                auth.revoke(token, session=s)
                t0 = time.monotonic()
                deadline = t0 + 10 * poll_s + 5
                while True:
                    r = _get(url, token, close=True)
                    if r.status_code == 401:
                        elapsed = time.monotonic() - t0
                        if "revoked" not in r.text:
                            raise BenchError(f"edge: revoked token refused for another "
                                             f"reason: {r.text[:200]}")
                        out.append(elapsed)
                        break
                    if r.status_code != 200:
                        raise BenchError(f"edge: revoked token answered {r.status_code}")
                    if time.monotonic() > deadline:
                        raise BenchError("edge: a revoked token was still accepted after "
                                         f"{deadline - t0:.0f} s")
                    time.sleep(probe_every)
        return out

    t_start = time.monotonic()
    with cf.ThreadPoolExecutor(workers) as ex:
        samples = [x for part in ex.map(one_worker, per_worker) for x in part]
    wall = time.monotonic() - t_start
    ms = [round(x * 1000, 1) for x in samples]
    res = {
        "revocations": len(ms),
        "workers": workers,
        "poll_interval_ms": int(poll_s * 1000),
        "probe_interval_ms": int(probe_every * 1000),
        "p50_ms": round(_percentile(ms, 0.5), 1),
        "p90_ms": round(_percentile(ms, 0.9), 1),
        "p99_ms": round(_percentile(ms, 0.99), 1),
        "max_ms": max(ms),
        "min_ms": min(ms),
        "mean_ms": round(statistics.fmean(ms), 1),
        "samples_ms": ms,
        "wall_s": round(wall, 1),
    }
    print(f"  revocation propagation ({len(ms)} revocations): p50 {res['p50_ms']:.0f} ms, "
          f"p99 {res['p99_ms']:.0f} ms, max {res['max_ms']:.0f} ms, min "
          f"{res['min_ms']:.0f} ms ({wall:.0f} s)", flush=True)
    return res


def run(gw: Any, settings: Settings, procs: common.Processes, workdir: Path, auth: Any,
        audience: str, token: str, tokens_file: Path, n_minted: int, concurrency: int,
        urls: dict[str, tuple[str, int]], stats, native_used: int) -> dict[str, Any]:
    """All edge scenarios; `gw` is the bench_gateway module (start_gateway, configs)."""
    rounds = max(1, common.env_int("BENCH_ROUNDS", 3))
    per_round = common.env_float("BENCH_EDGE_ROUND", 2.0)
    over_duration = common.env_float("BENCH_RL_OVER_DURATION", 3.0)
    n_revocations = common.env_int("BENCH_REVOCATIONS", 50)
    out: dict[str, Any] = {"limits": {
        "allowed": dict(zip(("requests", "period_s", "burst"), RL_ALLOWED, strict=True)),
        "over": dict(zip(("requests", "period_s", "burst"), RL_OVER, strict=True))}}
    native, tollgate = urls["native"][0], urls["tollgate"][0]
    base = {k: u.rsplit("/api/", 1)[0] for k, (u, _) in urls.items()}
    single = workdir / "token-repeated.txt"

    # ---------------------------------------------------------------- the edge gateway
    edge_cfg = edge_filter_config(gw, auth, audience)
    edge_url, edge_admin = gw.start_gateway("edge", procs, settings, workdir, auth, audience,
                                            token, tokens_file, concurrency,
                                            filter_config=edge_cfg)
    (workdir / "envoy-edge.yaml").unlink(missing_ok=True)  # holds the edge client secret
    opaque_client = auth.register("bench-gateway-opaque", "api:read",
                                  access_token_format="opaque", rate_limit_per_minute=0)
    opaque = auth.token(opaque_client)
    if "." in opaque:
        raise BenchError("the opaque client received a JWT")
    for label, tok, want in (("opaque token", opaque, 200),
                             ("unknown opaque token", "tg_at_" + "A" * 43, 401)):
        code = _get(edge_url, tok).status_code
        if code != want:
            raise BenchError(f"edge: {label} answered {code}, expected {want}")
    if _get(native, opaque).status_code != 401:
        raise BenchError("native: an opaque token was not refused")
    for kind in ("native", "tollgate"):
        _check_rate_limited(kind, base[kind], token)
    # the over-limit bucket was just drained; it refills in burst / rate seconds
    time.sleep(RL_OVER[2] / RL_OVER[0] * RL_OVER[1])

    # ---------------------------------------------------------------- rate limit, allowed
    print("rate limit, allowed path (limit never reached):", flush=True)
    env = {"BENCH_PATH": "/rl/allowed", "BENCH_TOKENS_FILE": str(single)}
    env_plain = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)}
    res = _interleaved(settings, {
        "native /rl/allowed": (f"{base['native']}/rl/allowed", "bearer.lua", env),
        "tollgate /rl/allowed": (f"{base['tollgate']}/rl/allowed", "bearer.lua", env),
        "tollgate /api/resource (no limit)": (tollgate, "bearer.lua", env_plain),
    }, rounds, per_round)
    nat, tg, tg0 = (res["native /rl/allowed"], res["tollgate /rl/allowed"],
                    res["tollgate /api/resource (no limit)"])
    nat["filter_stats_after"] = stats(urls["native"][1])
    tg["filter_stats_after"] = stats(urls["tollgate"][1])
    out["ratelimit_allowed"] = {
        "native": nat, "tollgate": tg, "tollgate_unlimited": tg0,
        "tollgate_vs_native": _ratio(tg, nat),
        "tollgate_limited_vs_unlimited": _ratio(tg, tg0),
    }

    # ---------------------------------------------------------------- rate limit, over
    print("rate limit, over the limit (most answers 429):", flush=True)
    env = {"BENCH_PATH": "/rl/over", "BENCH_TOKENS_FILE": str(single)}
    over: dict[str, Any] = {}
    for kind in ("native", "tollgate"):
        r = common.run_wrk(settings, f"{base[kind]}/rl/over", "status.lua", env, over_duration)
        counts = {int(k): v for k, v in r.get("status_counts", {}).items()}
        if set(counts) - {200, 429} or not counts.get(429):
            raise BenchError(f"{kind}: /rl/over statuses {counts}")
        r["status_counts"] = {str(k): v for k, v in sorted(counts.items())}
        r["allowed"] = counts.get(200, 0)
        r["limited"] = counts.get(429, 0)
        r["limited_per_s"] = round(r["limited"] / r["seconds"], 1)
        r["allowed_per_s"] = round(r["allowed"] / r["seconds"], 1)
        # at most burst + rate × time may pass (a bucket full at the start)
        r["allowed_bound"] = int(RL_OVER[2] + RL_OVER[0] / RL_OVER[1] * r["seconds"]) + 1
        r["filter_stats_after"] = stats(urls[kind][1])
        print(f"  {kind}: {r['rps']:,.0f} answers/s ({r['limited_per_s']:,.0f} x 429/s), "
              f"{r['allowed']} allowed in {r['seconds']:.1f} s (bound "
              f"{r['allowed_bound']}), p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms",
              flush=True)
        over[kind] = r
        time.sleep(RL_OVER[2] / RL_OVER[0] * RL_OVER[1])
    over["tollgate_vs_native"] = _ratio(over["tollgate"], over["native"])
    out["ratelimit_over"] = over

    # ---------------------------------------------------------------- opaque tokens
    print("opaque token (Tollgate introspection cache) vs JWT (native jwt_authn):", flush=True)
    opaque_file = workdir / "token-opaque.txt"
    opaque_file.write_text(opaque + "\n")
    env_op = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(opaque_file)}
    res = _interleaved(settings, {
        "native, JWT": (native, "bearer.lua", env_plain),
        "edge, JWT": (edge_url, "bearer.lua", env_plain),
        "edge, opaque": (edge_url, "bearer.lua", env_op),
    }, rounds, per_round)
    res["edge, opaque"]["filter_stats_after"] = stats(edge_admin)
    repeated = {"native_jwt": res["native, JWT"], "edge_jwt": res["edge, JWT"],
                "edge_opaque": res["edge, opaque"],
                "opaque_vs_native_jwt": _ratio(res["edge, opaque"], res["native, JWT"]),
                "opaque_vs_edge_jwt": _ratio(res["edge, opaque"], res["edge, JWT"]),
                "edge_jwt_vs_native_jwt": _ratio(res["edge, JWT"], res["native, JWT"])}
    # Distinct: opaque tokens never seen (one introspection call each) vs JWTs never seen
    # by native: the part of the list after the tokens its distinct-token run used.
    distinct_s = common.env_float("BENCH_DISTINCT_DURATION", 3.0)
    t0 = time.monotonic()
    minted = auth.mint(settings, workdir, common.env_int("BENCH_OPAQUE_TOKENS", 20000),
                       max_seconds=3, client=opaque_client)
    print(f"  minted {len(minted)} opaque tokens in {time.monotonic() - t0:.1f} s", flush=True)
    if len(minted) < 500:
        raise BenchError(f"only {len(minted)} opaque tokens minted")
    op_file = workdir / "tokens-opaque.txt"
    op_file.write_text("\n".join(minted) + "\n")
    offset = min(3 + native_used, n_minted - 1000)
    nat_d = common.measure(settings, native, "bearer.lua",
                           {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(tokens_file),
                            "BENCH_TOKEN_OFFSET": str(offset)},
                           "native: distinct JWTs (not sent before)", duration=distinct_s, warmup=0)
    nat_d["distinct_tokens"] = n_minted - offset
    nat_d["passes"] = round(nat_d["requests"] / max(n_minted - offset, 1), 2)
    op_d = common.measure(settings, edge_url, "bearer.lua",
                          {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(op_file)},
                          "edge: distinct opaque tokens", duration=distinct_s, warmup=0)
    op_d["distinct_tokens"] = len(minted)
    op_d["passes"] = round(op_d["requests"] / len(minted), 2)
    op_d["filter_stats_after"] = stats(edge_admin)
    out["opaque"] = {"repeated": repeated,
                     "distinct": {"native_jwt": nat_d, "edge_opaque": op_d,
                                  "opaque_vs_native_jwt": _ratio(op_d, nat_d)}}

    # ---------------------------------------------------------------- revocation
    print(f"revocation propagation, {n_revocations} tokens, poll interval "
          f"{POLL_INTERVAL_MS} ms (default):", flush=True)
    out["revocation"] = revocation_propagation(
        auth, edge_url, n_revocations, common.env_int("BENCH_REVOCATION_WORKERS", 5),
        POLL_INTERVAL_MS / 1000)
    out["revocation"]["target_p99_ms"] = 1500
    out["revocation"]["target_met"] = out["revocation"]["p99_ms"] <= 1500
    out["revocation"]["filter_stats_after"] = stats(edge_admin)
    if common.env_int("BENCH_DPOP", 1):  # the cost of a DPoP proof per request
        import bench_dpop
        print("DPoP at the gateway (a new proof per request):", flush=True)
        out["dpop"] = bench_dpop.run(auth, tollgate, gw.ENVOY_PIDS["tollgate"], settings,
                                     workdir)
    if common.env_int("BENCH_LONGPOLL", 1):  # long poll vs poll, idle gateways' CPU
        import bench_longpoll
        out["longpoll"] = bench_longpoll.run(gw, settings, procs, workdir, auth, audience,
                                             token, tokens_file, concurrency, edge_url, stats)
    return out


def report(e: dict[str, Any]) -> None:
    a, o = e["ratelimit_allowed"], e["ratelimit_over"]
    rows = [
        ["rate limit, allowed", common.fmt_ratio(a["tollgate_vs_native"]),
         f"{a['native']['rps']:,.0f}", f"{a['native']['p99_ms']:.2f}",
         f"{a['tollgate']['rps']:,.0f}", f"{a['tollgate']['p99_ms']:.2f}"],
        ["rate limit, over (429s)", common.fmt_ratio(o["tollgate_vs_native"]),
         f"{o['native']['rps']:,.0f}", f"{o['native']['p99_ms']:.2f}",
         f"{o['tollgate']['rps']:,.0f}", f"{o['tollgate']['p99_ms']:.2f}"],
    ]
    rr, rd = e["opaque"]["repeated"], e["opaque"]["distinct"]
    rows.append(["opaque repeated vs native JWT", common.fmt_ratio(rr["opaque_vs_native_jwt"]),
                 f"{rr['native_jwt']['rps']:,.0f}", f"{rr['native_jwt']['p99_ms']:.2f}",
                 f"{rr['edge_opaque']['rps']:,.0f}", f"{rr['edge_opaque']['p99_ms']:.2f}"])
    rows.append(["opaque distinct vs native JWT", common.fmt_ratio(rd["opaque_vs_native_jwt"]),
                 f"{rd['native_jwt']['rps']:,.0f}", f"{rd['native_jwt']['p99_ms']:.2f}",
                 f"{rd['edge_opaque']['rps']:,.0f}", f"{rd['edge_opaque']['p99_ms']:.2f}"])
    common.print_table("bench-gateway, edge scenarios (native: local_ratelimit / jwt_authn "
                       "JWT path; there is no native introspection)",
                       ["scenario", "Tollgate/native", "native req/s", "p99 ms",
                        "Tollgate req/s", "p99 ms"], rows)
    print(f"rate limit: Tollgate limited/unlimited route "
          f"{common.fmt_ratio(a['tollgate_limited_vs_unlimited'])}; over the limit "
          f"allowed {o['native']['allowed']} (native) / {o['tollgate']['allowed']} (Tollgate) "
          f"in ~{o['tollgate']['seconds']:.0f} s at {RL_OVER[0]}/{RL_OVER[1]} s, burst "
          f"{RL_OVER[2]}")
    print(f"edge gateway (revocation + introspection on), JWT repeated: "
          f"{rr['edge_jwt']['rps']:,.0f} req/s = "
          f"{common.fmt_ratio(rr['edge_jwt_vs_native_jwt'])} native")
    r = e["revocation"]
    print(f"revocation propagation ({r['revocations']} revocations, poll "
          f"{r['poll_interval_ms']} ms): p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
          f"max {r['max_ms']:.0f} ms; target p99 <= 1500 ms: "
          f"{'met' if r['target_met'] else 'NOT met'}")
    import bench_longpoll
    bench_longpoll.report(e)
