"""Keycloak's tokens at the gateway (issue 13): RS256, the signing algorithm of most
third-party issuers, verified by the Tollgate filter for an issuer it does not ship with,
beside Envoy's native jwt_authn, in `make bench-gateway`.

Keycloak (peer_servers.Keycloak: the Maven Central distribution, a realm imported at start)
issues client_credentials tokens signed RS256 (2048-bit key, its default) with an audience
mapper; both gateways get its real JWKS from its `certs` endpoint (which also lists its
ES256 key and an RSA-OAEP encryption key, as Keycloak publishes them). Two scenarios, each
measured on native then Tollgate back to back:

- repeated: one Keycloak token on every request (the verified-token caches answer);
- distinct: a stream of distinct Keycloak tokens, minted beforehand (at most
  `BENCH_RS256_MINT_S` seconds, up to `BENCH_RS256_TOKENS`), each sent once while the
  stream lasts: every request is an RS256 signature verification. Measured in up to
  `BENCH_DISTINCT_ROUNDS` rounds (3) on disjoint slices of at least `BENCH_RS256_SLICE`
  tokens, the order of the gateways swapped every round; the combined figures and every
  round's ratio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import common
from common import BenchError, Processes, Settings
from peer_servers import KEYCLOAK_AUDIENCE, Keycloak


def mint(kc: Keycloak, settings: Settings, workdir: Path, count: int,
         max_seconds: float) -> list[str]:
    """Distinct RS256 tokens from Keycloak's token endpoint (mint_tokens.lua)."""
    return common.mint_tokens(settings, workdir, kc.base, {
        "BENCH_PATH": kc.token_path,
        "BENCH_BODY": "grant_type=client_credentials",
        "BENCH_AUTH": common.basic_auth("bench-rs256", kc.secret)},
        count, max_seconds, "kc")


def filter_config(kc: Keycloak, cache_size: int) -> str:
    return json.dumps({
        "issuers": [{
            "issuer": kc.issuer,
            "audiences": [KEYCLOAK_AUDIENCE],
            "algorithms": ["RS256"],
            "jwks": {"cluster": "tollgate_authserver",
                     "path": "/realms/bench/protocol/openid-connect/certs",
                     "authority": f"127.0.0.1:{kc.port}"},
        }],
        "cache": {"slots": cache_size},
        "default_rule": {"allow_anonymous": False},
    }, separators=(",", ":"))


def run(gw: Any, settings: Settings, procs: Processes, workdir: Path,
        concurrency: int) -> dict[str, Any]:
    """`gw`: the bench_gateway module (start_gateway, ENVOY_PIDS, CACHE_SIZE)."""
    kc = Keycloak(procs, settings, workdir)
    count = common.env_int("BENCH_RS256_TOKENS", 72000)
    minted = mint(kc, settings, workdir, count,
                  common.env_float("BENCH_RS256_MINT_S", 120.0))
    if len(minted) < 1000:
        raise BenchError(f"Keycloak minted only {len(minted)} tokens")
    print(f"Keycloak minted {len(minted)} distinct RS256 tokens", flush=True)
    stream = workdir / "tokens-rs256.txt"
    stream.write_text("\n".join(minted) + "\n")
    single = workdir / "token-rs256.txt"
    token = kc.token("RS256")
    single.write_text(token + "\n")
    kinds = {"native_rs256": ("native", None),
             "tollgate_rs256": ("tollgate", filter_config(kc, gw.CACHE_SIZE))}
    urls = {kind: gw.start_gateway(kind, procs, settings, workdir, kc, KEYCLOAK_AUDIENCE,
                                   token, stream, concurrency, filter_config=cfg,
                                   template=template)[0]
            for kind, (template, cfg) in kinds.items()}
    out: dict[str, Any] = {"tokens": len(minted), "keycloak": kc.issuer}
    rounds = max(1, common.env_int("BENCH_ROUNDS", 3))
    per_round = max(2.0, round(settings.duration / rounds))
    env = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
    for url in urls.values():
        common.run_wrk(settings, url, "bearer.lua", env, settings.warmup)
    for _ in range(rounds):
        for kind, url in urls.items():
            runs[kind].append(common.run_wrk(settings, url, "bearer.lua", env, per_round))
    for kind in urls:
        out.setdefault(kind, {})["repeated"] = common.combine_rounds(
            f"{kind}: repeated RS256 token", runs[kind])
    duration = common.env_float("BENCH_DISTINCT_DURATION", 3.0)
    # Rounds on disjoint slices of the tokens, the gateways' order swapped every round, so
    # that one short run decides nothing alone: the report gives every round's ratio. Each
    # slice goes at most once through each gateway (the first 3 tokens were sent at
    # start-up): Envoy's jwt_authn cache is per worker, and a worker given fewer than its
    # 8,192 entries' worth of tokens would answer a second pass from its cache. A run lasts
    # at least a second (wrk), in which native gets through up to about 28,000 tokens: a
    # slice has at least BENCH_RS256_SLICE of them, so with fewer tokens there are fewer
    # rounds (22,000-token slices let native make 1.2 to 1.35 passes).
    tokens = minted[3:]
    per_slice = common.env_int("BENCH_RS256_SLICE", 35000)
    slices = max(1, min(common.env_int("BENCH_DISTINCT_ROUNDS", 3), len(tokens) // per_slice))
    size = len(tokens) // slices
    done: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
    order = list(urls.items())
    for r in range(slices):
        part = tokens[r * size:(r + 1) * size]
        for kind, url in (order if r % 2 == 0 else order[::-1]):
            res = common.measure_one_pass(settings, url, part, workdir,
                                          f"{kind}: distinct RS256 tokens, round {r + 1}",
                                          duration, pid=gw.ENVOY_PIDS[kind])
            if res.get("non_2xx"):
                raise BenchError(f"{kind}: {res['non_2xx']} distinct RS256 answers were not 2xx")
            done[kind].append(res)
    for kind, rounds in done.items():
        combined = common.combine_rounds(f"{kind}: distinct RS256 tokens", rounds)
        requests = combined["requests"]
        cpu = [r.get("envoy_cpu_us_per_request") for r in rounds]
        out[kind]["distinct"] = {
            **combined,
            "duration_s": round(sum(r["duration_s"] for r in rounds), 2),
            "passes": max(r["passes"] for r in rounds),
            "envoy_cpu_us_per_request": (
                round(sum(c * r["requests"] for c, r in zip(cpu, rounds)) / requests, 1)
                if requests and all(c is not None for c in cpu) else None),
            "distinct_tokens": sum(r["distinct_tokens"] for r in rounds),
            "rounds": [{k: r.get(k) for k in ("rps", "envoy_cpu_us_per_request", "passes",
                                               "duration_s", "p99_ms")} for r in rounds],
        }
    n_rounds, t_rounds = done["native_rs256"], done["tollgate_rs256"]
    out["distinct_round_ratios"] = {
        "rps": [round(t["rps"] / n["rps"], 2) if n["rps"] else None
                for n, t in zip(n_rounds, t_rounds)],
        "cpu": [round(n["envoy_cpu_us_per_request"] / t["envoy_cpu_us_per_request"], 2)
                if n.get("envoy_cpu_us_per_request") and t.get("envoy_cpu_us_per_request")
                else None for n, t in zip(n_rounds, t_rounds)],
    }
    for sc in ("repeated", "distinct"):
        t, n = out["tollgate_rs256"][sc]["rps"], out["native_rs256"][sc]["rps"]
        out.setdefault("ratios", {})[sc] = round(t / n, 2) if n else None
    for leftover in (stream, single):
        leftover.unlink(missing_ok=True)
    print(f"Keycloak RS256 at the gateway: Tollgate / native repeated "
          f"{common.fmt_ratio(out['ratios']['repeated'])}, distinct "
          f"{common.fmt_ratio(out['ratios']['distinct'])} (target distinct >= 0.8x)", flush=True)
    return out
