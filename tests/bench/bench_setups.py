"""The repeated-token gateway comparison across set-ups (issue 13: "performance claims hold
across set-ups; report the spread, not the best run"). For each set-up — Envoy
`--concurrency` 1 or 2 (`BENCH_SETUP_CONCURRENCY`, default "1,2") × wrk 1 or 2 threads
(`BENCH_SETUP_THREADS`, default "1,2") — four fresh gateways (no auth, native jwt_authn +
local_ratelimit, Tollgate, and the do-nothing Wasm filter as the floor) are started and measured in interleaved rounds with the same
repeated token, as the main scenario does; requests/s and Envoy CPU per request of each,
the ratios, and then the spread of the ratios over the set-ups.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import common
from common import Settings

KINDS = ("noauth", "native", "tollgate", "floor")


def _stop(procs: common.Processes, pid: int) -> None:
    for _, p, _ in list(procs.procs):
        if p.pid == pid:
            procs.stop(p)
            return


def run(gw: Any, settings: Settings, procs: common.Processes, workdir: Path, auth: Any,
        audience: str, token: str, tokens_file: Path) -> dict[str, Any]:
    concurrencies = [int(x) for x in
                     os.environ.get("BENCH_SETUP_CONCURRENCY", "1,2").split(",") if x]
    threads = [int(x) for x in os.environ.get("BENCH_SETUP_THREADS", "1,2").split(",") if x]
    per_round = common.env_float("BENCH_SETUP_ROUND", 3.0)
    rounds = max(1, common.env_int("BENCH_ROUNDS", 3))
    single = workdir / "token-setups.txt"
    single.write_text(token + "\n")
    env = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)}
    saved = dict(gw.ENVOY_PIDS)
    out: list[dict[str, Any]] = []
    try:
        for c in concurrencies:
            urls = {k: gw.start_gateway(k, procs, settings, workdir, auth, audience, token,
                                        tokens_file, c)[0] for k in KINDS}
            pids = {k: gw.ENVOY_PIDS[k] for k in KINDS}
            try:
                for t in threads:
                    for url in urls.values():
                        common.run_wrk(settings, url, "bearer.lua", env, 1.0, threads=t)
                    reqs = {k: 0 for k in KINDS}
                    secs = {k: 0.0 for k in KINDS}
                    cpu = {k: 0 for k in KINDS}
                    ratio_rounds = []
                    for _ in range(rounds):
                        rps = {}
                        for k in KINDS:
                            c0 = common.process_cpu_ns(pids[k])
                            r = common.run_wrk(settings, urls[k], "bearer.lua", env, per_round,
                                               threads=t)
                            c1 = common.process_cpu_ns(pids[k])
                            if r["non_2xx"]:
                                raise common.BenchError(f"{k}: {r['non_2xx']} answers not 2xx")
                            reqs[k] += r["requests"]
                            secs[k] += r["seconds"]
                            cpu[k] += (c1 - c0) if c0 is not None and c1 is not None else 0
                            rps[k] = r["rps"]
                        ratio_rounds.append(round(rps["tollgate"] / rps["native"], 3))
                    row: dict[str, Any] = {"envoy_concurrency": c, "wrk_threads": t,
                                           "rounds": rounds, "round_s": per_round}
                    for k in KINDS:
                        row[k] = {"rps": round(reqs[k] / secs[k], 1) if secs[k] else 0.0,
                                  "envoy_cpu_us_per_request":
                                      common.cpu_us_per_request(cpu[k], reqs[k])}
                    row["tollgate_vs_native"] = round(row["tollgate"]["rps"] / row["native"]["rps"], 3)
                    row["tollgate_vs_noauth"] = round(row["tollgate"]["rps"] / row["noauth"]["rps"], 3)
                    row["tollgate_vs_floor"] = round(row["tollgate"]["rps"] / row["floor"]["rps"], 3)
                    row["tollgate_vs_native_rounds"] = ratio_rounds
                    out.append(row)
                    print(f"  set-up envoy --concurrency {c}, wrk -t{t}: Tollgate/native "
                          f"{row['tollgate_vs_native']:.2f}x (rounds "
                          f"{', '.join(f'{x:.2f}' for x in ratio_rounds)}), /no-auth "
                          f"{row['tollgate_vs_noauth']:.2f}x; Envoy CPU/request noauth "
                          f"{row['noauth']['envoy_cpu_us_per_request']}, native "
                          f"{row['native']['envoy_cpu_us_per_request']}, Tollgate "
                          f"{row['tollgate']['envoy_cpu_us_per_request']}, do-nothing Wasm "
                          f"filter {row['floor']['envoy_cpu_us_per_request']} us", flush=True)
            finally:
                for k in KINDS:
                    _stop(procs, pids[k])
    finally:
        gw.ENVOY_PIDS.update(saved)
        single.unlink(missing_ok=True)
    ratios = [r["tollgate_vs_native"] for r in out]
    return {"setups": out,
            "tollgate_vs_native_min": min(ratios) if ratios else None,
            "tollgate_vs_native_max": max(ratios) if ratios else None}
