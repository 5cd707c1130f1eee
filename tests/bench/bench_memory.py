"""`make bench-memory`: what the gateway's caches cost in memory, measured on real Envoy.

1. Verified tokens: three Envoys (no auth filter, native jwt_authn, Tollgate's filter), each
   with a verified-token cache large enough for BENCH_MEMORY_TOKENS (100,000) tokens minted
   by the auth server; every token is sent once, and the Envoy's resident set (VmRSS) is read
   before and after. The no-auth Envoy, sent the same requests, is the control: its growth
   is what the traffic itself costs (buffers, connections, allocator), not a cache.
2. Revocations: Tollgate's edge configuration (revocation feed on); BENCH_MEMORY_REVOCATIONS
   (20,000) tokens are revoked at the auth server, and once the gateway refuses the last of
   them (the feed is applied in order, so all are in), its VmRSS is read again.

Bytes per entry = (RSS after - RSS before - the control's growth) / entries held. For
Tollgate's direct-mapped cache the entries held are computed exactly (distinct slots of the
minted tokens' SHA-256); for jwt_authn every token is held (its LRU caches per worker are
large enough). The layout sizes (what the filter itself stores per entry) are printed beside
the measured figures; the measured ones include the host's own overhead per shared-data
key (Envoy keeps shared data in a hash map of strings), which is what a user pays.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

import bench_edge
import bench_gateway as gw
import common
from common import BenchError, Processes, Settings

SLOTS = 1_048_576  # the largest cache.slots the filter accepts


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def settle_rss(pid: int) -> int:
    """VmRSS once it stops moving (allocator and V8 settle after traffic), at most 5 s."""
    last = rss_bytes(pid)
    for _ in range(10):
        time.sleep(0.5)
        now = rss_bytes(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def split(url: str) -> tuple[str, str]:
    """(scheme://host:port, path) of a URL: wrk takes the first, the Lua scripts the path."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}", u.path or "/"


def send_each(settings: Settings, url: str, script: str, tokens_file: Path, count: int,
              extra_env: dict[str, str] | None = None) -> int:
    """Send every line of `tokens_file` at least once (wrk runs of 3 s, each starting where
    the previous one stopped); returns the requests made."""
    base, path = split(url)
    sent = 0
    while sent < count:
        env = {"BENCH_PATH": path, "BENCH_TOKENS_FILE": str(tokens_file),
               "BENCH_TOKEN_OFFSET": str(sent), **(extra_env or {})}
        r = common.run_wrk(settings, base, script, env, 3.0)
        if r["requests"] == 0:
            raise BenchError(f"{url}: no request answered")
        sent += r["requests"]
    return sent


def tollgate_slots_held(tokens: list[str], slots: int) -> int:
    """Distinct cache slots the tokens map to (the filter's `slot_key`): the entries a
    direct-mapped cache holds after seeing each token once."""
    return len({int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "big") % slots
                for t in tokens})


def main() -> int:
    common.install_signal_handlers()
    settings = Settings()
    n_tokens = common.env_int("BENCH_MEMORY_TOKENS", 100_000)
    n_revoked = common.env_int("BENCH_MEMORY_REVOCATIONS", 20_000)
    concurrency = common.env_int("BENCH_ENVOY_CONCURRENCY", 2)
    workdir = common.new_workdir("memory")
    procs = Processes(workdir)
    out: dict[str, Any] = {}
    try:
        machine = common.machine_info({"envoy": [gw.envoy_bin(), "--version"]})
        machine["versions"]["envoy"] = machine["versions"]["envoy"].split("version: ")[-1]
        auth = gw.AuthServer(procs, settings)
        token = auth.token()
        audience = common.token_audience(token)
        t0 = time.monotonic()
        minted = auth.mint(settings, workdir, n_tokens, max_seconds=180)
        print(f"minted {len(minted)} distinct tokens in {time.monotonic() - t0:.1f} s",
              flush=True)
        if len(minted) < min(n_tokens, 1000):
            raise BenchError(f"only {len(minted)} tokens minted")
        tokens_file = workdir / "tokens-memory.txt"
        tokens_file.write_text("\n".join(minted) + "\n")
        gw.CACHE_SIZE = SLOTS  # read by start_gateway for both filters' cache sizes
        urls = {kind: gw.start_gateway(kind, procs, settings, workdir, auth, audience, token,
                                       tokens_file, concurrency)
                for kind in ("noauth", "native", "tollgate")}
        tokens: dict[str, Any] = {}
        for kind, (url, admin) in urls.items():
            pid = gw.ENVOY_PIDS[kind]
            # The same warm-up everywhere: connections, buffers, the repeated token.
            single = workdir / "token-repeated.txt"
            single.write_text(token + "\n")
            common.run_wrk(settings, split(url)[0], "bearer.lua",
                           {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)},
                           2.0)
            before = settle_rss(pid)
            sent = send_each(settings, url, "bearer.lua", tokens_file, len(minted))
            after = settle_rss(pid)
            tokens[kind] = {"rss_before": before, "rss_after": after, "requests": sent,
                            "growth": after - before, "stats": gw.filter_stats(admin)}
            print(f"  {kind}: VmRSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB after "
                  f"{sent:,} requests ({len(minted):,} distinct tokens)", flush=True)
        control = tokens["noauth"]["growth"]
        held = {"native": len(minted), "tollgate": tollgate_slots_held(minted, SLOTS)}
        for kind in ("native", "tollgate"):
            tokens[kind]["entries"] = held[kind]
            tokens[kind]["bytes_per_entry"] = round(
                (tokens[kind]["growth"] - control) / max(held[kind], 1), 1)
        out["tokens"] = {"minted": len(minted), "slots": SLOTS, **tokens}

        # ------------------------------------------------------------- revocations
        revoked = minted[:n_revoked]
        rev_file = workdir / "tokens-revoked.txt"
        rev_file.write_text("\n".join(revoked) + "\n")
        edge_url, _ = gw.start_gateway(
            "edge", procs, settings, workdir, auth, audience, token, tokens_file, concurrency,
            filter_config=bench_edge.edge_filter_config(gw, auth, audience))
        (workdir / "envoy-edge.yaml").unlink(missing_ok=True)  # holds the edge client secret
        pid = gw.ENVOY_PIDS["edge"]
        common.run_wrk(settings, split(edge_url)[0], "bearer.lua",
                       {"BENCH_PATH": "/api/resource",
                        "BENCH_TOKENS_FILE": str(workdir / "token-repeated.txt")}, 2.0)
        before = settle_rss(pid)
        t0 = time.monotonic()
        send_each(settings, f"{auth.base}/oauth2/revoke", "post_each_token.lua", rev_file,
                  len(revoked), {"BENCH_AUTH": common.basic_auth(*auth.client)})
        last = revoked[-1]
        common.wait_until("the edge gateway refuses the last revoked token",
                          lambda: requests.get(edge_url, timeout=5, headers={
                              "Authorization": f"Bearer {last}"}).status_code == 401,
                          timeout=120)
        applied_s = time.monotonic() - t0
        after = settle_rss(pid)
        out["revocations"] = {
            "revoked": len(revoked), "rss_before": before, "rss_after": after,
            "growth": after - before, "seconds_to_apply": round(applied_s, 1),
            "bytes_per_entry": round((after - before) / max(len(revoked), 1), 1)}
        print(f"  edge: VmRSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB with "
              f"{len(revoked):,} revocations applied", flush=True)
    except BenchError as exc:
        print(f"bench-memory failed: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        procs.close()
        for leftover in (*workdir.glob("token*.txt"), *workdir.glob("mint*")):
            leftover.unlink(missing_ok=True)
    data = {"machine": machine, "settings": settings.as_dict(),
            "envoy_concurrency": concurrency, **out}
    path = common.save_results("memory", data)
    t = out["tokens"]
    print(f"\nverified-token cache, {t['minted']:,} tokens: Tollgate "
          f"{t['tollgate']['bytes_per_entry']:,.0f} B/entry ({t['tollgate']['entries']:,} "
          f"held in {SLOTS:,} slots), jwt_authn {t['native']['bytes_per_entry']:,.0f} B/entry; "
          f"control growth {t['noauth']['growth'] / 2**20:.1f} MiB")
    r = out["revocations"]
    print(f"revocations: {r['bytes_per_entry']:,.0f} B/entry ({r['revoked']:,} applied in "
          f"{r['seconds_to_apply']} s)")
    print(f"results: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
