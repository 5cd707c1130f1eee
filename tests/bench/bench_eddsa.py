"""EdDSA (Ed25519) tokens at the gateway, in `make bench-gateway`: the filter's own EdDSA
path (a table per issuer key, plugin/core/src/eddsa.rs) beside Envoy's native jwt_authn
(BoringSSL's Ed25519), on distinct tokens, where every request is a signature check.

A second Tollgate auth server signs with EdDSA (TOLLGATE_SIGNING_ALG); it mints a stream of
distinct tokens beforehand (at most `BENCH_EDDSA_MINT_S` seconds, up to
`BENCH_EDDSA_TOKENS`), both gateways load its JWKS, and each token is sent at most once
(`common.measure_one_pass`), native then Tollgate. The repeated-token case is not measured
again: a cache hit does not depend on the algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
from bench_authserver import jose_header
from common import BenchError, Processes, Settings


def run(gw: Any, settings: Settings, procs: Processes, workdir: Path,
        concurrency: int) -> dict[str, Any]:
    """`gw`: the bench_gateway module (AuthServer, start_gateway, ENVOY_PIDS)."""
    auth = gw.AuthServer(procs, settings, alg="EdDSA")
    token = auth.token()
    header = jose_header(token)
    if header.get("alg") != "EdDSA":
        raise BenchError(f"expected EdDSA tokens, got {header}")
    audience = common.token_audience(token)
    minted = auth.mint(settings, workdir, common.env_int("BENCH_EDDSA_TOKENS", 60000),
                       common.env_float("BENCH_EDDSA_MINT_S", 20.0))
    if len(minted) < 1000:
        raise BenchError(f"the EdDSA auth server minted only {len(minted)} tokens")
    print(f"minted {len(minted)} distinct EdDSA tokens", flush=True)
    stream = workdir / "tokens-eddsa.txt"
    stream.write_text("\n".join(minted) + "\n")
    kinds = {"native_eddsa": ("native", None),
             "tollgate_eddsa": (None, gw.tollgate_filter_config(auth, audience))}
    urls = {kind: gw.start_gateway(kind, procs, settings, workdir, auth, audience, token,
                                   stream, concurrency, filter_config=cfg,
                                   template=template)[0]
            for kind, (template, cfg) in kinds.items()}
    out: dict[str, Any] = {"tokens": len(minted)}
    duration = common.env_float("BENCH_DISTINCT_DURATION", 3.0)
    try:
        for kind, url in urls.items():
            # The first 3 tokens were sent at start-up; the rest at most once each.
            res = common.measure_one_pass(settings, url, minted[3:], workdir,
                                          f"{kind}: distinct EdDSA tokens", duration,
                                          pid=gw.ENVOY_PIDS[kind])
            if res.get("non_2xx"):
                raise BenchError(f"{kind}: {res['non_2xx']} EdDSA answers were not 2xx")
            out[kind] = res
    finally:
        stream.unlink(missing_ok=True)
    t, n = out["tollgate_eddsa"], out["native_eddsa"]
    out["ratio_rps"] = round(t["rps"] / n["rps"], 2) if n["rps"] else None
    tc, nc = t.get("envoy_cpu_us_per_request"), n.get("envoy_cpu_us_per_request")
    out["ratio_cpu"] = round(nc / tc, 2) if nc and tc else None
    print(f"EdDSA at the gateway, distinct tokens: Tollgate / native "
          f"{common.fmt_ratio(out['ratio_rps'])} in requests/s, "
          f"{common.fmt_ratio(out['ratio_cpu'])} in Envoy CPU per request", flush=True)
    return out
