"""Turn tests/bench/results/{authserver,gateway}.json into PNG plots (docs/img/) and the
generated tables of docs/benchmarks.md (between `<!-- bench:NAME:begin -->` and
`<!-- bench:NAME:end -->` markers). Everything shown comes from the JSON the bench
runners wrote; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import capacity  # noqa: E402
import common  # noqa: E402

DOC = common.ROOT / "docs" / "benchmarks.md"
COLORS = {"tollgate": "#1f6f8b", "peer": "#b0b0b0", "native": "#e0a030", "noauth": "#9bc59d"}


def load(kind: str) -> dict[str, Any] | None:
    path = common.RESULTS_DIR / f"{kind}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"**{value:.2f}×**"


def num(m: dict[str, Any] | None, key: str, fmt: str) -> str:
    if not m or key not in m:
        return "n/a"
    return format(m[key], fmt)


# ------------------------------------------------------------------ auth server

def authserver_md(d: dict[str, Any]) -> str:
    lines = [
        "| scenario | Tollgate / oidc-provider | Tollgate req/s | p50 ms | p99 ms "
        "| oidc-provider req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in d["scenarios"]:
        k = sc["key"]
        t, p = d["tollgate"].get(k), d["peer"].get(k)
        lines.append(
            f"| {sc['label']} | {ratio_text(d['ratios'].get(k))} "
            f"| {num(t, 'rps', ',.0f')} | {num(t, 'p50_ms', '.2f')} | {num(t, 'p99_ms', '.2f')} "
            f"| {num(p, 'rps', ',.0f')} | {num(p, 'p50_ms', '.2f')} | {num(p, 'p99_ms', '.2f')} |")
    notes = [f"- oidc-provider set-up: {d['peer_setup']}."]
    for sc in d["scenarios"]:
        p = d["peer"].get(sc["key"]) or {}
        if "unsupported" in p:
            notes.append(f"- {sc['label']}: {p['unsupported']}.")
    cpu = []
    for sc in d["scenarios"]:
        c = (d["tollgate"].get(sc["key"]) or {}).get("cpu_us_per_request") or {}
        if c.get("authserver") and c.get("redis"):
            cpu.append(f"{sc['label']} {c['authserver']:.0f} / {c['redis']:.0f}")
    if cpu:
        notes.append("- CPU time per request on Tollgate's side, µs (auth server / "
                     "redis-server, from /proc over the measured run): " + "; ".join(cpu)
                     + ".")
    trips = []
    for sc in d["scenarios"]:
        m = (d["tollgate"].get(sc["key"]) or {}).get("redis_monitor")
        if m:
            cmds = ", ".join(f"{k} {v:g}" for k, v in m["commands_per_request"].items())
            mean = (f", mean {m['round_trips_mean']:g}, max {m['round_trips_max']}"
                    if "round_trips_mean" in m else "")
            trips.append(f"{sc['label']} **{m['round_trips_per_request']:g}**{mean} ({cmds})")
    if trips:
        notes.append("- Redis round trips per request on Tollgate's side, counted with "
                     "`MONITOR` over 300 requests in a row, each marked in the log by a "
                     "`PING` of the bench (a pipeline or a `MULTI`…`EXEC` block is one; "
                     "median per request in bold; the mean includes the server's background "
                     "work, such as its subscription's idle `PING`; commands per request in "
                     "brackets): " + "; ".join(trips) + ".")
    t = d["targets"]
    notes.append(
        "- Targets of the issue: ≥ 5,000 tokens/s "
        f"({'met' if t['tokens_per_s_5000'] else 'not met'}), ≥ 10,000 introspections/s "
        f"({'met' if t['introspections_per_s_10000'] else 'not met'}), ≥ 3× oidc-provider on "
        f"tokens ({'met' if t['tokens_3x_peer'] else 'not met'}) and on introspection "
        f"({'met' if t['introspections_3x_peer'] else 'not met'}; opaque vs opaque)"
        + ("" if "round_trips_per_issuance_1" not in t else
           ", ≤ 1 Redis round trip per issuance "
           f"({'met' if t['round_trips_per_issuance_1'] else 'not met'})") + ".")
    s = d["settings"]
    notes.append(
        f"- Run {d['date_utc']}: wrk {s['wrk_threads']} thread(s), {s['connections']} "
        f"connections, {s['warmup_s']:.0f} s warm-up then {s['duration_s']:.0f} s per row, "
        f"pinning: {s['pinning']}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + more_peers_md(d)


def more_peers_md(d: dict[str, Any]) -> str:
    """Keycloak and Ory Hydra, measured in the same run: one column pair per peer."""
    peers = {k: b for k, b in (d.get("more_peers") or {}).items()}
    if not peers:
        return ""
    ok = {k: b for k, b in peers.items() if "error" not in b}
    head = "| scenario | Tollgate req/s |" + "".join(
        f" {b['name']} req/s | Tollgate / {b['name']} |" for b in ok.values())
    lines = ["", head, "|---|---:|" + "---:|---:|" * len(ok)]
    rows = [(sc["key"], sc["label"], sc["key"]) for sc in d["scenarios"]]
    for key, label, base in rows:
        t = d["tollgate"].get(base)
        cells = "".join(f" {num(b['results'].get(key), 'rps', ',.0f')} | "
                        f"{ratio_text(b['ratios'].get(key))} |" for b in ok.values())
        lines.append(f"| {label} | {num(t, 'rps', ',.0f')} |{cells}")
    notes = [""]
    for b in peers.values():
        if "error" in b:
            notes.append(f"- {b['name']}: not measured: {b['error']}.")
            continue
        notes.append(f"- {b['name']} set-up: {b['setup']}.")
        for key, label, _ in rows:
            p = b["results"].get(key) or {}
            if "unsupported" in p:
                notes.append(f"  - {label}: {p['unsupported']}.")
        notes.append(f"  - ≥ 3× {b['name']} on every measured row: "
                     f"{'met' if b['all_rows_3x'] else 'not met'}.")
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def authserver_png(d: dict[str, Any], out: Path) -> None:
    scen = d["scenarios"]
    short = {"token_jwt": "token\n(ES256 JWT)", "token_jwt_rs256": "token\n(RS256 JWT)",
             "token_opaque": "token\n(opaque)",
             "introspect_opaque": "introspect\n(opaque)", "introspect_jwt": "introspect\n(JWT)",
             "edge_feed": "edge feed\n(nothing new)"}
    labels = [short.get(s["key"], s["label"]) for s in scen]
    tv = [(d["tollgate"].get(s["key"]) or {}).get("rps", 0) for s in scen]
    pv = [(d["peer"].get(s["key"]) or {}).get("rps", 0) for s in scen]
    x = range(len(scen))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    w = 0.38
    ax.bar([i - w / 2 for i in x], tv, w, label="Tollgate", color=COLORS["tollgate"])
    ax.bar([i + w / 2 for i in x], pv, w, label="oidc-provider", color=COLORS["peer"])
    for i, s in enumerate(scen):
        r = d["ratios"].get(s["key"])
        text = f"{r:.2f}×" if r is not None else "peer\nn/a"
        ax.annotate(text, (i, max(tv[i], pv[i])), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontweight="bold")
    ax.set_xticks(list(x), labels, fontsize=9)
    ax.set_ylabel("requests/s (higher is better)")
    ax.set_title("throughput, ratio Tollgate / oidc-provider")
    ax.legend(loc="upper right")
    ax.set_ylim(0, max(tv + pv + [1]) * 1.35)
    # p99 latency
    t99 = [(d["tollgate"].get(s["key"]) or {}).get("p99_ms", 0) for s in scen]
    p99 = [(d["peer"].get(s["key"]) or {}).get("p99_ms", 0) for s in scen]
    ax2.bar([i - w / 2 for i in x], t99, w, label="Tollgate", color=COLORS["tollgate"])
    ax2.bar([i + w / 2 for i in x], p99, w, label="oidc-provider", color=COLORS["peer"])
    ax2.set_xticks(list(x), labels, fontsize=9)
    ax2.set_ylabel("p99 latency, ms (lower is better)")
    ax2.set_title("p99 latency")
    m = d["machine"]
    fig.suptitle(f"make bench-authserver — {m['nproc']} cores, {m['cpu_model']}, "
                 f"{d['settings']['connections']} connections, {d['date_utc']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ gateway

def gateway_md(d: dict[str, Any]) -> str:
    gws = d["gateways_order"]
    head = "| scenario | Tollgate / native | Tollgate / no-auth | native / no-auth |"
    sep = "|---|---:|---:|---:|"
    for g in gws:
        head += f" {g['label']} req/s | p50 ms | p99 ms |"
        sep += "---:|---:|---:|"
    lines = [head, sep]
    for sc in d["scenarios"]:
        k = sc["key"]
        r = d["ratios"][k]
        row = (f"| {sc['label']} | {ratio_text(r.get('tollgate_vs_native'))} "
               f"| {ratio_text(r.get('tollgate_vs_noauth'))} "
               f"| {ratio_text(r.get('native_vs_noauth'))} |")
        for g in gws:
            m = d["gateways"].get(g["key"], {}).get(k)
            row += (f" {num(m, 'rps', ',.0f')} | {num(m, 'p50_ms', '.2f')} "
                    f"| {num(m, 'p99_ms', '.2f')} |")
        lines.append(row)
    notes = []
    passes = ", ".join(
        f"{g['key']} {d['gateways'][g['key']]['distinct']['passes']}"
        for g in gws if "distinct" in d["gateways"].get(g["key"], {}))
    any_d = next((d["gateways"][g["key"]]["distinct"] for g in gws
                  if "distinct" in d["gateways"].get(g["key"], {})), None)
    if any_d:
        notes.append(
            f"- Distinct tokens: {any_d['distinct_tokens']:,} tokens minted by the auth server "
            f"before the run, {d['settings']['distinct_duration_s']:.0f} s measured; passes "
            f"over the list: {passes} (below 1: every request carried a token the gateway "
            "had never seen).")
    cpu_rows = []
    for sc in d["scenarios"]:
        vals = [(g["label"], (d["gateways"].get(g["key"], {}).get(sc["key"]) or {})
                 .get("envoy_cpu_us_per_request")) for g in gws]
        if any(v is not None for _, v in vals):
            cpu_rows.append(f"{sc['label']}: " + ", ".join(
                f"{lbl} {v:.1f}" if v is not None else f"{lbl} n/a" for lbl, v in vals))
    if cpu_rows:
        notes.append(
            "- Envoy CPU time per request, µs (all threads of the gateway's Envoy, from "
            "/proc, over the measured runs; the repeated-token figure is the median of the "
            "rounds; it depends far less on the machine's other load than requests/s): "
            + "; ".join(cpu_rows) + ".")
    shares = [(g["label"], (d["gateways"].get(g["key"], {}).get("repeated") or {})
               .get("worker_cpu_shares")) for g in gws]
    if any(v for _, v in shares):
        notes.append(
            "- Each Envoy worker's share of the workers' CPU, repeated token (connections "
            "balanced across workers; about 1/N each when they are): " + ", ".join(
                f"{lbl} {' / '.join(f'{x:.2f}' for x in v)}" for lbl, v in shares if v) + ".")
    rep = d["ratios"].get("repeated", {})
    if rep.get("tollgate_vs_floor") is not None:
        cpu = {g: (d["gateways"].get(g, {}).get("repeated") or {}).get("envoy_cpu_us_per_request")
               for g in ("noauth", "floor", "tollgate", "native")}
        notes.append(
            "- The Wasm floor (`plugin/floor`: a proxy-wasm filter that does nothing, with the "
            "exports of Tollgate's filter, in the same rounds, repeated token): do-nothing "
            "filter / no auth "
            f"**{rep['floor_vs_noauth']:.2f}×**, Tollgate / do-nothing filter "
            f"**{rep['tollgate_vs_floor']:.2f}×**; Envoy CPU per request, µs: no auth "
            f"{cpu['noauth']}, do-nothing Wasm filter {cpu['floor']}, Tollgate "
            f"{cpu['tollgate']}, native {cpu['native']}.")
    t = d["targets"]
    notes.append(
        "- Targets of the issue: Tollgate ≥ 1.0× native on repeated tokens "
        f"({'met' if t['repeated_1x_native'] else 'not met'}), ≥ 0.9× no-auth "
        f"({'met' if t['repeated_0.9x_noauth'] else 'not met'}), ≥ 0.5× native on distinct "
        f"tokens ({'met' if t['distinct_0.5x_native'] else 'not met'}).")
    st = d.get("setups")
    if st and st.get("setups"):
        rows = "; ".join(
            f"--concurrency {r['envoy_concurrency']} × wrk -t{r['wrk_threads']}: "
            f"**{r['tollgate_vs_native']:.2f}×** native, {r['tollgate_vs_noauth']:.2f}× no-auth"
            + (f", {r['tollgate_vs_floor']:.2f}× the do-nothing Wasm filter"
               if "floor" in r else "")
            + f" (CPU µs/request {r['noauth']['envoy_cpu_us_per_request']} / "
            f"{r['native']['envoy_cpu_us_per_request']} / {r['tollgate']['envoy_cpu_us_per_request']}"
            + (f" / {r['floor']['envoy_cpu_us_per_request']}" if "floor" in r else "") + ")"
            for r in st["setups"])
        notes.append(
            "- Repeated token across set-ups (fresh gateways per set-up, "
            f"{st['setups'][0]['rounds']} interleaved rounds of {st['setups'][0]['round_s']:.0f} s; "
            "CPU no auth / native / Tollgate / do-nothing Wasm filter): " + rows + f". Spread of Tollgate / native: "
            f"**{st['tollgate_vs_native_min']:.2f}–{st['tollgate_vs_native_max']:.2f}×** "
            "(target ≥ 0.9× in every set-up).")
    x = {sc["key"]: d["ratios"][sc["key"]].get("tollgate_vs_extauthz") for sc in d["scenarios"]}
    if any(v is not None for v in x.values()):
        auth = [(sc["label"], (d["gateways"].get("extauthz", {}).get(sc["key"]) or {})
                 .get("authserver_cpu_us_per_request")) for sc in d["scenarios"]]
        notes.append(
            "- ext_authz (every request asks the auth server's `/edge/authz`): Tollgate / "
            "ext_authz " + ", ".join(f"{sc['label']} {ratio_text(x[sc['key']])}"
                                     for sc in d["scenarios"])
            + "; the auth server's CPU per request on top of Envoy's, µs: "
            + ", ".join(f"{lbl} {v:.1f}" if v is not None else f"{lbl} n/a"
                        for lbl, v in auth) + ".")
    rs = d.get("rs256")
    if rs and "error" in rs:
        notes.append(f"- Keycloak's RS256 tokens at the gateway: not measured: {rs['error']}.")
    elif rs:
        parts = []
        for sc in ("repeated", "distinct"):
            n, t = rs["native_rs256"][sc], rs["tollgate_rs256"][sc]
            parts.append(f"{sc} Tollgate {t['rps']:,.0f} vs native {n['rps']:,.0f} req/s = "
                         f"{ratio_text(rs['ratios'][sc])}")
        dn, dt = rs["native_rs256"]["distinct"], rs["tollgate_rs256"]["distinct"]
        cn, ct = dn.get("envoy_cpu_us_per_request"), dt.get("envoy_cpu_us_per_request")
        cpu_ratio = round(cn / ct, 2) if cn and ct else None
        notes.append(
            f"- Keycloak's tokens at the gateway (RS256, 2048-bit, its real JWKS; "
            f"{rs['tokens']:,} distinct tokens minted by Keycloak): " + "; ".join(parts)
            + f" (distinct: each token sent at most once, {dt.get('duration_s', '?')} / "
            f"{dn.get('duration_s', '?')} s measured, passes {dt.get('passes')} / "
            f"{dn.get('passes')}; Envoy CPU per request, distinct: Tollgate "
            f"{dt.get('envoy_cpu_us_per_request')} vs native "
            f"{dn.get('envoy_cpu_us_per_request')} µs, "
            f"{ratio_text(cpu_ratio)} in CPU; target distinct ≥ 0.8×: "
            f"{'met' if (rs['ratios']['distinct'] or 0) >= 0.8 else 'not met'} in requests/s, "
            f"{'met' if (cpu_ratio or 0) >= 0.8 else 'not met'} in CPU per request"
            + ("" if "distinct_round_ratios" not in rs else
               f"; {len(rs['distinct_round_ratios']['rps'])} round(s) on disjoint slices, "
               "in requests/s: "
               + ", ".join(ratio_text(x) for x in rs["distinct_round_ratios"]["rps"])
               + ", in CPU: "
               + ", ".join(ratio_text(x) for x in rs["distinct_round_ratios"]["cpu"])
               + "; passes is the largest of a round")
            + ").")
    ed = d.get("eddsa")
    if ed and "error" in ed:
        notes.append(f"- EdDSA tokens at the gateway: not measured: {ed['error']}.")
    elif ed:
        dn, dt = ed["native_eddsa"], ed["tollgate_eddsa"]
        notes.append(
            f"- EdDSA (Ed25519) tokens at the gateway ({ed['tokens']:,} distinct tokens from a "
            f"second Tollgate auth server signing with EdDSA, each sent at most once): "
            f"Tollgate {dt['rps']:,.0f} vs native {dn['rps']:,.0f} req/s = "
            f"{ratio_text(ed['ratio_rps'])}; Envoy CPU per request Tollgate "
            f"{dt.get('envoy_cpu_us_per_request')} vs native "
            f"{dn.get('envoy_cpu_us_per_request')} µs, {ratio_text(ed['ratio_cpu'])} in CPU "
            f"(passes {dt.get('passes')} / {dn.get('passes')}).")
    s = d["settings"]
    notes.append(
        f"- Run {d['date_utc']}: envoy --concurrency {d['envoy_concurrency']}, wrk "
        f"{s['wrk_threads']} thread(s), {s['connections']} connections, {s['warmup_s']:.0f} s "
        f"warm-up then {s['duration_s']:.0f} s (repeated token, in "
        f"{s.get('repeated_rounds', 1)} interleaved rounds), pinning: {s['pinning']}; "
        f"verified-token cache capacity {d['cache_size']} in both filters.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def gateway_png(d: dict[str, Any], out: Path) -> None:
    gws = d["gateways_order"]
    scen = d["scenarios"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    w = 0.8 / len(gws)
    for gi, g in enumerate(gws):
        vals = [(d["gateways"].get(g["key"], {}).get(s["key"]) or {}).get("rps", 0)
                for s in scen]
        xs = [i - 0.4 + w / 2 + gi * w for i in range(len(scen))]
        ax.bar(xs, vals, w, label=g["label"], color=COLORS.get(g["key"], None))
        p50 = [(d["gateways"].get(g["key"], {}).get(s["key"]) or {}).get("p50_ms", 0)
               for s in scen]
        p99 = [(d["gateways"].get(g["key"], {}).get(s["key"]) or {}).get("p99_ms", 0)
               for s in scen]
        ax2.bar(xs, p99, w, color=COLORS.get(g["key"], None), alpha=0.45)
        ax2.bar(xs, p50, w, label=g["label"], color=COLORS.get(g["key"], None))
    top = max([(m.get(s["key"]) or {}).get("rps", 0) for m in d["gateways"].values()
               for s in scen] + [1])
    for i, s in enumerate(scen):
        r = d["ratios"][s["key"]]
        parts = []
        if r.get("tollgate_vs_native") is not None:
            parts.append(f"{r['tollgate_vs_native']:.2f}× native")
        if r.get("tollgate_vs_noauth") is not None:
            parts.append(f"{r['tollgate_vs_noauth']:.2f}× no-auth")
        ax.annotate("Tollgate:\n" + "\n".join(parts), (i, top * 1.03), ha="center",
                    fontweight="bold", fontsize=9)
    ax.set_xticks(range(len(scen)), [s["label"] for s in scen])
    ax.set_ylabel("requests/s (higher is better)")
    ax.set_ylim(0, top * 1.3)
    ax.set_title("throughput")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(gws), fontsize=9)
    ax2.set_xticks(range(len(scen)), [s["label"] for s in scen])
    ax2.set_ylabel("latency, ms: p50 solid, p99 light (lower is better)")
    ax2.set_title("latency")
    m = d["machine"]
    fig.suptitle(f"make bench-gateway — {m['nproc']} cores, {m['cpu_model']}, envoy "
                 f"--concurrency {d['envoy_concurrency']}, {d['date_utc']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ gateway, edge scenarios

def _edge_rows(e: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any],
                                                 float | None]]:
    """(label, native side, native result, Tollgate result, ratio) per edge scenario."""
    a, o = e["ratelimit_allowed"], e["ratelimit_over"]
    rr, rd = e["opaque"]["repeated"], e["opaque"]["distinct"]
    la, lo = e["limits"]["allowed"], e["limits"]["over"]
    return [
        (f"rate limit, allowed path ({la['requests']:,}/{la['period_s']} s, never reached)",
         "`local_ratelimit`", a["native"], a["tollgate"], a["tollgate_vs_native"]),
        (f"rate limit, over the limit ({lo['requests']}/{lo['period_s']} s, burst "
         f"{lo['burst']}): answers/s, nearly all 429", "`local_ratelimit`", o["native"],
         o["tollgate"], o["tollgate_vs_native"]),
        ("opaque token, repeated (Tollgate: introspection cache)",
         "`jwt_authn`, repeated **JWT**", rr["native_jwt"], rr["edge_opaque"],
         rr["opaque_vs_native_jwt"]),
        ("opaque tokens, never seen (Tollgate: one introspection call each)",
         "`jwt_authn`, distinct **JWTs**", rd["native_jwt"], rd["edge_opaque"],
         rd["opaque_vs_native_jwt"]),
    ]


def gateway_edge_md(d: dict[str, Any]) -> str:
    e = d["edge"]
    lines = ["| scenario | native side | Tollgate / native | native req/s | p50 ms | p99 ms "
             "| Tollgate req/s | p50 ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, side, n, t, r in _edge_rows(e):
        lines.append(f"| {label} | {side} | {ratio_text(r)} | {num(n, 'rps', ',.0f')} "
                     f"| {num(n, 'p50_ms', '.2f')} | {num(n, 'p99_ms', '.2f')} "
                     f"| {num(t, 'rps', ',.0f')} | {num(t, 'p50_ms', '.2f')} "
                     f"| {num(t, 'p99_ms', '.2f')} |")
    rv = e["revocation"]
    lines += ["", "| revocation propagation (revoke answered → first 401 at the gateway) "
              "| revocations | poll interval | p50 | p90 | p99 | max | min | target p99 ≤ 1.5 s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|",
              f"| Tollgate, JWT in the verified-token cache | {rv['revocations']} "
              f"| {rv['poll_interval_ms']} ms | {rv['p50_ms']:.0f} ms | {rv['p90_ms']:.0f} ms "
              f"| **{rv['p99_ms']:.0f} ms** | {rv['max_ms']:.0f} ms | {rv['min_ms']:.0f} ms "
              f"| {'met' if rv['target_met'] else 'not met'} |"]
    a, o = e["ratelimit_allowed"], e["ratelimit_over"]
    rr, rd = e["opaque"]["repeated"], e["opaque"]["distinct"]
    notes = [
        "",
        f"- Cost of Tollgate's limiter on the allowed path: the limited route ran at "
        f"{ratio_text(a['tollgate_limited_vs_unlimited'])} the requests/s of Tollgate's "
        f"unlimited route in the same rounds ({a['tollgate_unlimited']['rps']:,.0f} req/s). "
        "Native's unlimited route also has `local_ratelimit` on its path (see above).",
        f"- Over the limit, requests let through in {o['tollgate']['seconds']:.1f} s: native "
        f"{o['native']['allowed']}, Tollgate {o['tollgate']['allowed']} (at most "
        f"{o['tollgate']['allowed_bound']}: burst + rate × time); the rest were 429 "
        f"(native {o['native']['limited_per_s']:,.0f}/s, Tollgate "
        f"{o['tollgate']['limited_per_s']:,.0f}/s). Both answers carry rate-limit headers "
        "(native `x-ratelimit-*` draft 03, Tollgate `RateLimit-Policy` / `RateLimit` and "
        "`Retry-After`).",
        "- **Envoy has no native token introspection**: the opaque rows compare Tollgate's "
        "introspection path with native `jwt_authn`'s JWT path of the same shape (cache hit; "
        "token never seen), the closest native setup, not the same work.",
        f"- Opaque, never seen: {rd['edge_opaque']['distinct_tokens']:,} opaque tokens minted "
        f"before the run, passes {rd['edge_opaque']['passes']} (every request one "
        "introspection call to the auth server, which shares the two cores); native: JWTs it "
        f"had not been sent, passes {rd['native_jwt']['passes']}.",
        f"- The edge gateway (revocation feed and introspection on) with a repeated JWT: "
        f"{rr['edge_jwt']['rps']:,.0f} req/s, {ratio_text(rr['edge_jwt_vs_native_jwt'])} "
        "native in the same rounds (the revoked-set lookup on every request).",
        f"- Revocation: {rv['revocations']} tokens, each verified at the gateway first (cached), "
        f"revoked through `POST /oauth2/revoke` after a random wait of 0–1 poll interval, then "
        f"probed every {rv['probe_interval_ms']} ms on new connections; "
        f"{rv['workers']} such sequences side by side. Default `poll_interval_ms` 1000 and "
        "`tick_ms` 200.",
    ]
    lp = e.get("longpoll")
    if lp:
        p, idle = lp["propagation"], lp["idle_gateways"]
        notes.append(
            "- Revocations pushed (long poll, issue 13): propagation under load "
            + ", ".join(f"{m.replace('_', ' ')} p50 {p[m]['p50_ms']:.0f} ms, p99 "
                        f"**{p[m]['p99_ms']:.0f} ms** ({p[m]['revocations']} revocations, "
                        f"{p[m]['load']['rps']:,.0f} req/s of load)"
                        for m in ("long_poll", "poll") if m in p)
            + f" (target p99 ≤ 250 ms with long poll); {idle['gateways']:,} idle gateways "
            f"(one poller each): auth-server CPU {idle['long_poll_wait_25s']['cpu_percent']} % "
            f"of a core holding long polls, {idle['poll_1s']['cpu_percent']} % polling every "
            "second.")
    dp = e.get("dpop")
    if dp:
        notes.append(
            f"- DPoP (issue 14): a DPoP-bound token with a new ES256 proof per request, as real "
            f"clients send, {dp['dpop']['rps']:,.0f} req/s = **{dp['dpop_vs_bearer']:.2f}×** "
            f"the repeated Bearer token on the same gateway ({dp['bearer']['rps']:,.0f} req/s); "
            f"Envoy CPU per request {dp['dpop']['envoy_cpu_us_per_request']} vs "
            f"{dp['bearer']['envoy_cpu_us_per_request']} µs: a proof costs "
            f"{dp['proof_cost_us']} µs (signature, thumbprint, `ath`, replay set). Native Envoy "
            "has no DPoP.")
    return "\n".join(lines + notes) + "\n"


def gateway_edge_png(d: dict[str, Any], out: Path) -> None:
    e = d["edge"]
    rows = _edge_rows(e)
    short = ["rate limit\nallowed", "rate limit\nover (429s)", "opaque, repeated\n(native: JWT)",
             "opaque, never seen\n(native: JWT)"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    w = 0.38
    nv = [r[2]["rps"] for r in rows]
    tv = [r[3]["rps"] for r in rows]
    x = range(len(rows))
    ax.bar([i - w / 2 for i in x], nv, w, label="Envoy native (local_ratelimit / jwt_authn)",
           color=COLORS["native"])
    ax.bar([i + w / 2 for i in x], tv, w, label="Tollgate Wasm filter", color=COLORS["tollgate"])
    top = max(nv + tv + [1])
    for i, r in enumerate(rows):
        if r[4] is not None:
            ax.annotate(f"{r[4]:.2f}×", (i, max(nv[i], tv[i])), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontweight="bold")
    ax.set_xticks(list(x), short, fontsize=9)
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("answers/s (higher is better)")
    ax.set_title("rate limit and opaque tokens, ratio Tollgate / native")
    ax.legend(loc="upper right", fontsize=8)
    rv = e["revocation"]
    xs = sorted(rv["samples_ms"])
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax2.step(xs, ys, where="post", color=COLORS["tollgate"], label="measured")
    ax2.axvline(rv["poll_interval_ms"], color="#888", ls=":", label="poll interval")
    ax2.axvline(1500, color="#c03030", ls="--", label="target p99 ≤ 1.5 s")
    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        ax2.plot([rv[key]], [q], "o", color="black")
        ax2.annotate(f"p{int(q * 100)} {rv[key]:.0f} ms", (rv[key], q),
                     textcoords="offset points", xytext=(-70, 4) if q < 0.9 else (8, -22),
                     fontsize=9)
    ax2.set_xlim(0, max(1600, rv["max_ms"] * 1.1))
    ax2.set_xlabel("revoke answered → first 401 at the gateway, ms")
    ax2.set_ylabel("fraction of revocations")
    ax2.set_title(f"revocation propagation, {rv['revocations']} revocations")
    ax2.legend(loc="lower right", fontsize=8)
    m = d["machine"]
    fig.suptitle(f"make bench-gateway, edge scenarios — {m['nproc']} cores, {m['cpu_model']}, "
                 f"envoy --concurrency {d['envoy_concurrency']}, {d['date_utc']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ memory

def memory_md(d: dict[str, Any]) -> str:
    t, r = d["tokens"], d["revocations"]
    mib = 2 ** 20

    def row(kind: str, label: str) -> str:
        m = t[kind]
        per = f"{m['bytes_per_entry']:,.0f}" if "bytes_per_entry" in m else "n/a"
        held = f"{m['entries']:,}" if "entries" in m else "n/a"
        return (f"| {label} | {m['rss_before'] / mib:,.1f} | {m['rss_after'] / mib:,.1f} "
                f"| {held} | {per} |")
    lines = [
        "| Envoy | VmRSS before, MiB | after, MiB | entries held | bytes per entry |",
        "|---|---:|---:|---:|---:|",
        row("noauth", "no auth filter (control)"),
        row("native", "Envoy jwt_authn"),
        row("tollgate", "Tollgate Wasm filter"),
        f"| Tollgate edge, revocation entries | {r['rss_before'] / mib:,.1f} "
        f"| {r['rss_after'] / mib:,.1f} | {r['revoked']:,} | {r['bytes_per_entry']:,.0f} |",
    ]
    notes = [
        f"- {t['minted']:,} distinct tokens, each sent once to every gateway (the control is "
        "sent the same requests); both caches sized for all of them (Tollgate "
        f"`cache.slots` {t['slots']:,}, jwt_authn `jwt_cache_size` the same); bytes per "
        "entry = (growth - the control's growth) / entries held.",
        f"- Revocations: {r['revoked']:,} tokens revoked at the auth server, all applied at "
        f"the edge gateway {r['seconds_to_apply']} s after the first revoke. The filter stores "
        "24 bytes per entry (16 of the `jti` hash, 8 of the expiry) in its bucket values; a "
        "growth below that is the allocator reusing memory freed during the run, so size with "
        "the 24 bytes.",
        f"- Run {d['date_utc']}: envoy --concurrency {d['envoy_concurrency']}.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# ------------------------------------------------------------------ machine, doc

def machine_md(runs: list[dict[str, Any]]) -> str:
    m = runs[0]["machine"]
    versions: dict[str, str] = {}
    for run in runs:
        versions.update(run["machine"]["versions"])
    lines = [
        "| | |", "|---|---|",
        f"| cores (`nproc`) | {m['nproc']} |",
        f"| CPU (`/proc/cpuinfo`) | {m['cpu_model']} |",
        f"| memory | {m['memory']} |",
    ]
    for run in runs:
        after = run["machine"].get("load_avg_after")
        lines.append(f"| load average (1/5/15 min) before / after `make bench-{run['kind']}` | "
                     f"{' '.join(str(x) for x in run['machine']['load_avg_before'])} / "
                     f"{' '.join(str(x) for x in after) if after else '?'} |")
    for name, v in sorted(versions.items()):
        lines.append(f"| {name} | `{v}` |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name}:begin -->\n).*?(<!-- bench:{name}:end -->)",
                         re.S)
    if not pattern.search(text):
        print(f"docs/benchmarks.md has no bench:{name} markers; left as is", file=sys.stderr)
        return text
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> int:
    common.IMG_DIR.mkdir(parents=True, exist_ok=True)
    auth, gw = load("authserver"), load("gateway")
    text = DOC.read_text() if DOC.is_file() else None
    if auth:
        authserver_png(auth, common.IMG_DIR / "bench-authserver.png")
        if text is not None:
            text = replace_block(text, "authserver", authserver_md(auth))
    if gw:
        gateway_png(gw, common.IMG_DIR / "bench-gateway.png")
        if text is not None:
            text = replace_block(text, "gateway", gateway_md(gw))
        if gw.get("edge"):
            gateway_edge_png(gw, common.IMG_DIR / "bench-gateway-edge.png")
            if text is not None:
                text = replace_block(text, "gateway-edge", gateway_edge_md(gw))
    mem = load("memory")
    if mem and text is not None:
        text = replace_block(text, "memory", memory_md(mem))
    model_inputs = capacity.inputs(auth, gw)
    if model_inputs:
        capacity.capacity_png(model_inputs, common.IMG_DIR / "bench-capacity.png", plt)
        if text is not None:
            text = replace_block(text, "capacity", capacity.capacity_md(model_inputs))
    runs = [r for r in (auth, gw) if r]
    if text is not None and runs:
        text = replace_block(text, "machine", machine_md(runs))
        DOC.write_text(text)
    print("plots: " + ", ".join(str(p) for p in sorted(common.IMG_DIR.glob("bench-*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
