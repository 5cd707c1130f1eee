"""A capacity model of a Tollgate installation, computed from what `make bench` measured.

Nothing here is typed in: every per-request cost comes from tests/bench/results/*.json
(CPU time per request of Envoy, of the auth server and of redis-server, read from /proc
over the measured runs; Redis's own `INFO commandstats` over the same windows). The model
then answers, for N gateway replicas with W Envoy workers each, M auth-server replicas with
C cores each and a Redis of each mode: how many requests, token issuances and revocations
per second the installation holds, and which part runs out first.

The model is deliberately simple and its assumptions are stated next to its output
(docs/benchmarks.md, "Capacity model"): one busy Envoy worker or auth-server core = one
CPU second per second; one Redis primary = one core (Redis executes commands on one
thread); costs add linearly; a Sentinel set-up writes to one primary like a standalone
Redis; a Cluster spreads keys over its shards except the keys that are in one slot by
design (the revocation feed, the token cleanup index, the statistics hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

US = 1_000_000.0  # CPU microseconds one core gives per second


@dataclass(frozen=True)
class Inputs:
    """Per-request costs in CPU microseconds, each with where it was measured."""

    gw_hit: float  # Envoy with the filter, repeated token (verified-token cache hit)
    gw_miss: float  # Envoy with the filter, a token never seen (signature check)
    as_token: float  # auth server, client_credentials -> ES256 JWT
    redis_token: float  # redis-server, the same issuance
    redis_token_hot: float  # ... of which in commands on keys that live in one slot
    as_feed: float  # auth server, one answer of the revocation feed
    redis_feed: float  # redis-server, the same answer
    date: str
    # Measured, not modelled: the auth server's CPU with many idle gateways holding a long
    # poll vs polling every second (bench_longpoll.py), when that run is in the results.
    idle: dict[str, Any] | None = None

    def source(self) -> str:
        return (f"Envoy CPU/request with the filter: {self.gw_hit:.1f} µs (cached token), "
                f"{self.gw_miss:.1f} µs (new token); auth server CPU/issuance "
                f"{self.as_token:.1f} µs, Redis {self.redis_token:.1f} µs of which "
                f"{self.redis_token_hot:.1f} µs on one-slot keys; one feed answer: auth "
                f"server {self.as_feed:.1f} µs, Redis {self.redis_feed:.1f} µs")


def _cpu(row: dict[str, Any] | None, who: str) -> float | None:
    v = ((row or {}).get("cpu_us_per_request") or {}).get(who)
    return float(v) if v else None


def hot_share(row: dict[str, Any]) -> float:
    """The share of Redis's work per issuance spent on keys that are in one Cluster slot
    whatever the shard count: per issuance one ZADD to the cleanup index and one HINCRBY of
    the statistics hash (the other ZADD goes to the client's token index, a key of its own).
    EXEC's time contains its queued commands again, so it is left out of the total."""
    stats = row.get("redis_per_request") or {}
    total = sum(v["usec"] for c, v in stats.items() if c not in ("exec", "multi"))
    if total <= 0:
        return 0.0
    zadd = stats.get("zadd", {"usec": 0.0, "calls": 0.0})
    one_zadd = zadd["usec"] / zadd["calls"] if zadd["calls"] else 0.0
    hot = one_zadd + stats.get("hincrby", {"usec": 0.0})["usec"]
    return min(hot / total, 1.0)


def inputs(auth: dict[str, Any] | None, gw: dict[str, Any] | None) -> Inputs | None:
    """The model's inputs from the bench JSON, or None when a figure is missing (the bench
    that measures it was not run, or ran before it measured CPU)."""
    if not auth or not gw:
        return None
    t = auth.get("tollgate") or {}
    tol = (gw.get("gateways") or {}).get("tollgate") or {}
    hit = (tol.get("repeated") or {}).get("envoy_cpu_us_per_request")
    miss = (tol.get("distinct") or {}).get("envoy_cpu_us_per_request")
    token, feed = t.get("token_jwt"), t.get("edge_feed")
    vals = [hit, miss, _cpu(token, "authserver"), _cpu(token, "redis"),
            _cpu(feed, "authserver"), _cpu(feed, "redis")]
    if any(v is None for v in vals) or token is None:
        return None
    redis_token = float(vals[3])
    return Inputs(gw_hit=float(hit), gw_miss=float(miss), as_token=float(vals[2]),
                  redis_token=redis_token,
                  redis_token_hot=round(redis_token * hot_share(token), 2),
                  as_feed=float(vals[4]), redis_feed=float(vals[5]),
                  date=f"{auth.get('date_utc', '?')} / {gw.get('date_utc', '?')}",
                  idle=((gw.get("edge") or {}).get("longpoll") or {}).get("idle_gateways"))


@dataclass(frozen=True)
class Setup:
    gateways: int  # N replicas
    workers: int  # W Envoy workers each
    servers: int  # M auth-server replicas
    cores: int  # C cores each
    redis: str  # "standalone", "sentinel", "cluster"
    shards: int = 1  # primaries of a Cluster

    def label(self) -> str:
        redis = f"Cluster, {self.shards} shards" if self.redis == "cluster" else (
            "Sentinel (1 primary)" if self.redis == "sentinel" else "standalone")
        return (f"{self.gateways} × {self.workers} workers, {self.servers} × {self.cores} "
                f"cores, Redis {redis}")


def redis_issuance_limit(i: Inputs, s: Setup) -> float:
    """Issuances/s Redis holds: standalone and Sentinel, one primary's core; Cluster, the
    most loaded shard: its share of the spread keys plus all the one-slot keys (worst case:
    the cleanup index and the statistics hash on the same shard)."""
    if s.redis != "cluster":
        return US / i.redis_token
    spread = i.redis_token - i.redis_token_hot
    return US / (spread / max(s.shards, 1) + i.redis_token_hot)


def model(i: Inputs, s: Setup) -> dict[str, Any]:
    """What the set-up holds per second, and what runs out first."""
    gw_cores = s.gateways * s.workers
    as_cores = s.servers * s.cores
    # Issuance: auth-server CPU vs Redis.
    issue = {"auth-server CPU": as_cores * US / i.as_token,
             "Redis": redis_issuance_limit(i, s)}
    issue_limit = min(issue, key=issue.__getitem__)
    # Revocations pushed (long poll): each one answers every gateway's waiting poll, so the
    # feed costs N answers per revocation on the auth servers and on the one Redis slot
    # that holds the feed (in every mode: its keys share a hash tag). Beyond this rate the
    # answers batch several revocations each: delivery slows down, nothing is lost.
    push = {"auth-server CPU (feed fan-out)": as_cores * US / (s.gateways * i.as_feed),
            "Redis (feed slot)": US / (s.gateways * i.redis_feed)}
    push_limit = min(push, key=push.__getitem__)
    return {
        "requests_cached": gw_cores * US / i.gw_hit,
        "requests_new_token": gw_cores * US / i.gw_miss,
        "issuances": issue[issue_limit],
        "issuances_limit": issue_limit,
        "revocations_pushed": push[push_limit],
        "revocations_limit": push_limit,
        # Polling fallback, one poll per gateway per second: the load it puts on the
        # auth servers whether or not anything is revoked, in cores.
        "poll_1s_cores": s.gateways * i.as_feed / US,
    }


SETUPS = [
    Setup(2, 2, 2, 2, "standalone"),
    Setup(10, 2, 3, 2, "sentinel"),
    Setup(10, 2, 3, 2, "cluster", 3),
    Setup(50, 4, 6, 2, "cluster", 6),
    Setup(200, 4, 12, 2, "cluster", 6),
]


def _si(x: float) -> str:
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:,.1f}{unit}"
    return f"{x:,.0f}"


def capacity_md(i: Inputs) -> str:
    lines = [
        "| set-up (gateways × workers, auth servers × cores, Redis) | edge requests/s, cached "
        "token | new tokens | issuances/s (runs out first) | revocations/s pushed to every "
        "gateway (runs out first) | 1 s polling instead: auth-server cores |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in SETUPS:
        m = model(i, s)
        lines.append(
            f"| {s.label()} | {_si(m['requests_cached'])} | {_si(m['requests_new_token'])} "
            f"| {_si(m['issuances'])} ({m['issuances_limit']}) "
            f"| {_si(m['revocations_pushed'])} ({m['revocations_limit']}) "
            f"| {m['poll_1s_cores']:.3g} |")
    notes = [
        f"- Inputs (runs {i.date}): {i.source()}.",
        "- Gateways: requests/s = N × W × 10⁶ / Envoy CPU per request. The edge needs "
        "nothing from the auth server or Redis per request, so this column is independent "
        "of them.",
    ] + findings(i)
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def findings(i: Inputs) -> list[str]:
    """What the model says, computed (so that the sentences follow the numbers)."""
    out = []
    one = Setup(1, 2, 1, 2, "standalone")
    as_per_core = US / i.as_token
    redis_primary = redis_issuance_limit(i, one)
    cores = redis_primary / as_per_core
    out.append(
        f"- Issuance: one auth-server core issues {_si(as_per_core)} ES256 JWTs/s and one "
        f"Redis primary holds {_si(redis_primary)}/s, so a standalone or Sentinel Redis "
        f"runs out once the auth servers have more than {cores:.1f} cores in all.")
    c3, c6, c12 = (redis_issuance_limit(i, Setup(1, 2, 1, 2, "cluster", n)) for n in (3, 6, 12))
    ceiling = US / i.redis_token_hot if i.redis_token_hot else float("inf")
    out.append(
        f"- A Redis Cluster holds {_si(c3)}, {_si(c6)} and {_si(c12)} issuances/s with 3, 6 "
        f"and 12 shards: the one-slot keys cap it at {_si(ceiling)}/s whatever the shard "
        "count.")
    for n in (100, 1000):
        m = model(i, Setup(n, 2, 2, 2, "standalone"))
        out.append(
            f"- Revocations pushed to {n:,} gateways: {_si(m['revocations_pushed'])}/s before "
            f"answers batch ({m['revocations_limit']} runs out first); polling every second "
            f"instead costs {m['poll_1s_cores'] * 100:.1f} % of one auth-server core with "
            "nothing revoked.")
    idle = i.idle or {}
    lp, poll = idle.get("long_poll_wait_25s"), idle.get("poll_1s")
    if lp and poll:
        out.append(
            f"- Measured with {idle['gateways']:,} simulated idle gateways on one auth server: "
            f"holding a long poll each costs {lp['cpu_percent']} % of a core, polling every "
            f"second {poll['cpu_percent']} % ({poll['answers_per_s']:,.0f} answers/s).")
    return out


def capacity_png(i: Inputs, out: Any, plt: Any) -> None:
    ns = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    fig, ax = plt.subplots(figsize=(10, 5))
    req = [model(i, Setup(n, 2, 2, 2, "standalone"))["requests_cached"] for n in ns]
    ax.plot(ns, req, "-o", color="#1f6f8b", label="edge requests/s, cached token (W = 2)")
    req_new = [model(i, Setup(n, 2, 2, 2, "standalone"))["requests_new_token"] for n in ns]
    ax.plot(ns, req_new, "--o", color="#1f6f8b", alpha=0.6,
            label="edge requests/s, new tokens (W = 2)")
    for m_srv, redis, shards, style in ((2, "standalone", 1, "-"), (6, "cluster", 6, "--")):
        iss = model(i, Setup(1, 2, m_srv, 2, redis, shards))["issuances"]
        ax.axhline(iss, color="#e0a030", ls=style,
                   label=f"issuances/s, {m_srv} auth servers × 2 cores, Redis {redis}"
                   + (f" ({shards} shards)" if redis == "cluster" else ""))
    rev = [model(i, Setup(n, 2, 2, 2, "standalone")) for n in ns]
    ax.plot(ns, [m["revocations_pushed"] for m in rev], "-s", color="#c03030",
            label="revocations/s pushed to all N gateways, 2 auth servers × 2 cores "
            f"({rev[-1]['revocations_limit']} runs out first)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gateway replicas N")
    ax.set_ylabel("per second (log)")
    ax.set_title(f"capacity model from the measured costs ({i.date})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
