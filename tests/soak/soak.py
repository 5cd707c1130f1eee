"""`make soak`: a bounded soak of the whole system, with memory and throughput over time.

Starts a throw-away redis-server, the release auth server on it (or on its in-memory store:
SOAK_STORE=memory), an upstream Envoy that answers 200 itself, and the gateway: Envoy
`--concurrency 2` with the Tollgate filter (JWKS, revocation feed, introspection, a local and
a global rate-limited route). Then, interval after interval (SOAK_INTERVAL, 10 s) until
SOAK_SECONDS (600) have passed, it drives all of these together, each stream a wrk process:

- auth server: client_credentials issuance (ES256 JWT and opaque tokens), introspection of
  JWT and opaque tokens, revocations (SOAK_REVOCATIONS of each kind per interval);
- gateway: one repeated JWT; the rolling set of distinct JWTs minted in the interval before
  (caches fill, then churn at their bounds); opaque tokens (one hot, the rest new); the
  tokens revoked in the interval before (must all be refused); two rate-limited routes
  (local and global mode) with one hot key and SOAK_RL_KEYS rolling keys;
- `authserver cleanup` every SOAK_CLEANUP_EVERY seconds, as the CronJob does (Redis store).

After every interval it samples throughput per stream, answers by kind, the RSS of every
process (/proc/<pid>/status VmRSS), Envoy's server.memory_* and Wasm statistics, and Redis
`used_memory` and key counts. Unexpected answers (anything but 2xx, except 429 on the
rate-limited routes and 401 "token revoked" / "token inactive" for revoked tokens) fail the
soak, as does memory growth from the end of the warm-up (the first 20 % of the run) to the
end beyond the tolerance (SOAK_TOLERANCE_PCT of the value after warm-up, at least
SOAK_TOLERANCE_MIB). Writes tests/soak/results/soak.json, docs/img/soak.png and the figures
in docs/reliability.md (SOAK_STORE=memory: results/soak-memory.json and .png only); exit 1
on failure. See tests/soak/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import secrets
import signal
import socket
import statistics
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

SOAK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SOAK_DIR.parent / "bench"))

import bench_gateway  # noqa: E402
import common  # noqa: E402
from bench_authserver import authserver_bin  # noqa: E402
from common import BenchError, Processes, Settings, env_float, env_int  # noqa: E402

LUA = SOAK_DIR / "lua" / "soak.lua"
GATEWAY_TEMPLATE = SOAK_DIR / "envoy" / "gateway.yaml"
RESULTS = SOAK_DIR / "results" / "soak.json"
PLOT = common.IMG_DIR / "soak.png"


def outputs(store: str) -> tuple[Path, Path]:
    """Results and plot of a run: the Redis store (the production shape) is the one
    docs/reliability.md shows; an in-memory-store run gets files of its own."""
    if store == "redis":
        return RESULTS, PLOT
    return RESULTS.with_name(f"soak-{store}.json"), RESULTS.with_name(f"soak-{store}.png")
DOC = common.ROOT / "docs" / "reliability.md"
SCOPE = "api:read"
WARMUP_FRACTION = 0.2
MIB = 1024 * 1024

# Rate-limited routes of the gateway: (path, rate_limit). Keyed by the x-soak-key header.
RL_ROUTES = {
    "rl_local": ("/rl/local", {"requests": 5, "period_s": 1, "burst": 5,
                               "key": {"header": "x-soak-key"}}),
    "rl_global": ("/rl/global", {"requests": 20, "period_s": 10, "mode": "global", "lease": 5,
                                 "key": {"header": "x-soak-key"}}),
}

# stream → (what it is, planned non-2xx answers: prefixes of the kinds soak.lua counts)
STREAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tok_jwt": ("auth: client_credentials → ES256 JWT", ()),
    "tok_opaque": ("auth: client_credentials → opaque token", ()),
    "introspect": ("auth: introspection, JWT and opaque tokens", ()),
    "gw_repeated": ("gateway: one repeated JWT", ()),
    "gw_distinct": ("gateway: distinct JWTs (minted the interval before)", ()),
    "gw_opaque": ("gateway: opaque tokens, one hot and the rest new", ()),
    "gw_revoked": ("gateway: tokens revoked the interval before",
                   ("401 token revoked", "401 token inactive")),
    "rl_local": ("gateway: local rate limit, hot + rolling keys", ("429",)),
    "rl_global": ("gateway: global rate limit (leases), hot + rolling keys", ("429",)),
}
# what must be seen at least once over the run (else the stream did not test its path)
MUST_SEE = {"gw_revoked": "401 token revoked", "rl_local": "429", "rl_global": "429"}


@dataclass
class Knobs:
    """All overridable from the environment (tests/soak/README.md)."""

    seconds: float = field(default_factory=lambda: env_float("SOAK_SECONDS", 600.0))
    interval: int = field(default_factory=lambda: env_int("SOAK_INTERVAL", 10))
    store: str = field(default_factory=lambda: os.environ.get("SOAK_STORE", "redis"))
    connections: int = field(default_factory=lambda: env_int("SOAK_CONNECTIONS", 2))
    token_ttl: int = field(default_factory=lambda: env_int("SOAK_TOKEN_TTL", 60))
    cleanup_every: float = field(default_factory=lambda: env_float("SOAK_CLEANUP_EVERY", 60.0))
    revocations: int = field(default_factory=lambda: env_int("SOAK_REVOCATIONS", 20))
    rl_keys: int = field(default_factory=lambda: env_int("SOAK_RL_KEYS", 5000))
    envoy_concurrency: int = field(default_factory=lambda: env_int("SOAK_ENVOY_CONCURRENCY", 2))
    tolerance_pct: float = field(default_factory=lambda: env_float("SOAK_TOLERANCE_PCT", 10.0))
    tolerance_mib: float = field(default_factory=lambda: env_float("SOAK_TOLERANCE_MIB", 8.0))

    def check(self) -> None:
        if self.store not in ("redis", "memory"):
            raise BenchError(f"SOAK_STORE must be redis or memory, not {self.store!r}")
        if self.interval < 2:
            raise BenchError("SOAK_INTERVAL must be at least 2 (seconds)")
        if self.seconds < 5 * self.interval:
            raise BenchError(f"SOAK_SECONDS must be at least 5 intervals ({5 * self.interval})")
        # tokens are sent up to ~3 intervals after they were minted (revoked ones)
        if self.token_ttl < 4 * self.interval:
            raise BenchError(f"SOAK_TOKEN_TTL must be at least 4 intervals ({4 * self.interval})")


# ------------------------------------------------------------------------------ processes

def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process (bytes), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def kill_wrk_children() -> None:
    """The wrk processes this runner started (run_wrk gives no handle): SIGTERM each by pid."""
    me = os.getpid()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            stat = (proc_dir / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ")"
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        if ppid == me and comm == "wrk":
            try:
                os.kill(int(proc_dir.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


class Redis:
    """Just enough RESP for INFO, DBSIZE and ZCARD on the soak's own redis-server."""

    def __init__(self, port: int) -> None:
        self.port = port

    def cmd(self, *args: str) -> Any:
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(payload.encode())
            with s.makefile("rb") as f:
                return self._read(f)

    def _read(self, f: Any) -> Any:
        line = f.readline()
        if not line:
            raise OSError("redis closed the connection")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise OSError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:n].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise OSError(f"redis: unexpected answer {line[:40]!r}")

    def info(self, section: str) -> dict[str, str]:
        out = {}
        for line in str(self.cmd("INFO", section)).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v.strip()
        return out

    def sample(self) -> dict[str, Any]:
        mem = self.info("memory")
        return {
            "redis_used_memory": int(mem["used_memory"]),
            "redis_keys": int(self.cmd("DBSIZE")),
            "redis_cleanup_index": int(self.cmd("ZCARD", "auth_token_cleanup")),
            "redis_feed": int(self.cmd("ZCARD", "auth:{revocations}:feed")),
            "redis_revoked_index": int(self.cmd("ZCARD", "auth:{revocations}:index")),
        }


class Auth(bench_gateway.AuthServer):
    """The auth server of the soak: Redis (or in-memory) store, short token lifetime, its own
    limits off (the soak drives far more than the per-client default). Reuses the bench's
    register / token / revoke / mint."""

    def __init__(self, procs: Processes, settings: Settings, knobs: Knobs,
                 redis_port: int | None) -> None:
        self.port = common.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_port = common.free_port()
        self.admin_base = f"http://127.0.0.1:{self.admin_port}"
        self.admin = secrets.token_urlsafe(32)
        self.env = {
            "TOLLGATE_STORE": (f"redis://127.0.0.1:{redis_port}/0" if redis_port
                               else "memory"),
            "TOLLGATE_LISTEN": f"127.0.0.1:{self.port}",
            "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "TOLLGATE_ADMIN_TOKEN": self.admin,
            "TOLLGATE_LOG": "warn",
            "RUST_LOG": "warn",
            "TOLLGATE_ACCESS_TOKEN_TTL": str(knobs.token_ttl),
            "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0",
            "TOLLGATE_RATE_LIMIT_PER_IP": "0",
            "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
        }
        self.proc = procs.start("authserver", settings.server_prefix() +
                                [str(authserver_bin()), "serve"], env=self.env)
        common.wait_until("authserver /readyz",
                          lambda: requests.get(f"{self.base}/readyz",
                                               timeout=1).status_code == 200,
                          procs=procs, watch=self.proc)
        meta = requests.get(f"{self.base}/.well-known/oauth-authorization-server",
                            timeout=5).json()
        self.issuer = meta["issuer"]
        self.jwks_uri = meta.get("jwks_uri", f"{self.base}/oauth2/jwks")
        self.client = self.register("soak-jwt", SCOPE, rate_limit_per_minute=0)
        self.opaque_client = self.register("soak-opaque", SCOPE, access_token_format="opaque",
                                           rate_limit_per_minute=0)
        self.introspector = self.register("soak-introspector", "tollgate:introspect",
                                          rate_limit_per_minute=0)
        self.edge_client = self.register("soak-gateway", "tollgate:edge",
                                         rate_limit_per_minute=0)

    def cleanup(self) -> dict[str, Any]:
        """One `authserver cleanup` pass (what the CronJob runs), bounded in time."""
        t0 = time.monotonic()
        r = subprocess.run([str(authserver_bin()), "cleanup"], capture_output=True, text=True,
                           env={**os.environ, **self.env}, timeout=120, check=False)
        if r.returncode != 0:
            raise BenchError(f"authserver cleanup failed ({r.returncode}): {r.stderr[-500:]}")
        report = json.loads(r.stdout)
        report["seconds"] = round(time.monotonic() - t0, 2)
        return report


# ------------------------------------------------------------------------------ gateway

def filter_config(auth: Auth, audience: str) -> str:
    return bench_gateway.tollgate_filter_config(auth, audience, {
        "auth_server": {"cluster": "tollgate_authserver", "authority": f"127.0.0.1:{auth.port}",
                        "client_id": auth.edge_client[0], "client_secret": auth.edge_client[1],
                        "timeout_ms": 1000},
        "revocation": {},
        "introspection": {"issuer": auth.issuer},
        "rules": [{"name": name, "path_prefix": path, "rate_limit": rl}
                  for name, (path, rl) in RL_ROUTES.items()],
        "rate_limit": {"slots": 1024},
    })


def start_envoys(procs: Processes, settings: Settings, knobs: Knobs, workdir: Path,
                 auth: Auth, audience: str) -> dict[str, Any]:
    envoy = bench_gateway.envoy_bin()
    # The upstream: bench's no-auth Envoy (answers 200 "ok" itself), one worker.
    up_port, up_admin = common.free_port(), common.free_port()
    up_cfg = bench_gateway.render_config("upstream", {"listen_port": up_port,
                                                      "admin_port": up_admin},
                                         workdir, "noauth")
    upstream = procs.start("envoy-upstream", settings.server_prefix() + [
        envoy, "-c", str(up_cfg), "--concurrency", "1", "--disable-hot-restart",
        "-l", "warning"])
    listen, admin = common.free_port(), common.free_port()
    cfg = workdir / "envoy-gateway.yaml"
    cfg.write_text(string.Template(GATEWAY_TEMPLATE.read_text()).substitute({
        "listen_port": listen, "admin_port": admin, "upstream_port": up_port,
        "auth_port": auth.port, "wasm": str(bench_gateway.filter_wasm()),
        "filter_config": filter_config(auth, audience)}))
    gateway = procs.start("envoy-gateway", settings.server_prefix() + [
        envoy, "-c", str(cfg), "--concurrency", str(knobs.envoy_concurrency),
        "--disable-hot-restart", "-l", "warning"])
    for name, proc, port in (("upstream", upstream, up_admin), ("gateway", gateway, admin)):
        common.wait_until(f"envoy ({name}) ready",
                          lambda p=port: requests.get(f"http://127.0.0.1:{p}/ready",
                                                      timeout=1).status_code == 200,
                          timeout=30, procs=procs, watch=proc)
    cfg.unlink()  # holds the edge client's secret; Envoy has read it
    return {"base": f"http://127.0.0.1:{listen}", "admin": admin, "proc": gateway,
            "upstream_proc": upstream}


def check_gateway(gw: dict[str, Any], auth: Auth, procs: Processes) -> None:
    """Before any load: the gateway accepts and refuses what it should."""
    base = gw["base"]
    jwt, opaque = auth.token(), auth.token(auth.opaque_client)

    def get(path: str, token: str | None, **headers: str) -> requests.Response:
        h = dict(headers)
        if token:
            h["Authorization"] = f"Bearer {token}"
        return requests.get(base + path, headers=h, timeout=5)

    common.wait_until("the gateway accepts a token (JWKS loaded)",
                      lambda: get("/api/x", jwt).status_code == 200, timeout=20, procs=procs,
                      watch=gw["proc"])
    want = [("/api/x", None, 401), ("/api/x", "not-a-jwt", 401), ("/api/x", opaque, 200),
            ("/api/x", "tg_at_" + "A" * 43, 401)]
    for path, tok, code in want:
        got = get(path, tok).status_code
        if got != code:
            raise BenchError(f"gateway: {path} with {'no token' if tok is None else 'a token'} "
                             f"answered {got}, expected {code}")
    for name, (path, rl) in RL_ROUTES.items():
        codes = [get(path, jwt, **{"x-soak-key": "startup-check"}).status_code
                 for _ in range(rl["requests"] + 2)]
        if set(codes) - {200, 429} or 429 not in codes:
            raise BenchError(f"gateway: {name} answered {codes}")
    auth.revoke(jwt)
    common.wait_until("the gateway refuses a revoked token",
                      lambda: get("/api/x", jwt).status_code == 401, timeout=10, procs=procs,
                      watch=gw["proc"])


def envoy_stats(admin: int) -> dict[str, int]:
    """Envoy's memory gauges and the Wasm statistics (VMs, Tollgate's counters)."""
    r = requests.get(f"http://127.0.0.1:{admin}/stats?format=json&filter="
                     r"^(server\.memory_|wasm)", timeout=10)
    return {st["name"]: st["value"] for st in r.json().get("stats", [])
            if isinstance(st.get("value"), int)
            and (st["value"] or st["name"].startswith("server."))}


# ------------------------------------------------------------------------------ one interval

def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def interleave(a: list[str], b: list[str], limit: int) -> list[str]:
    out: list[str] = []
    for x, y in zip(a, b, strict=False):
        out += [x, y]
    return (out or a or b)[:limit]


def mint_env(auth: Auth, client: tuple[str, str], prefix: Path) -> dict[str, str]:
    return {"BENCH_PATH": "/oauth2/token",
            "BENCH_BODY": f"grant_type=client_credentials&scope={SCOPE.replace(':', '%3A')}",
            "BENCH_AUTH": common.basic_auth(*client), "BENCH_MINT_PREFIX": str(prefix)}


def collect_minted(prefix: Path) -> list[str]:
    tokens: list[str] = []
    for part in sorted(prefix.parent.glob(prefix.name + ".*")):
        tokens += [t for t in part.read_text().split("\n") if t]
        part.unlink()
    return tokens


class Soak:
    def __init__(self, knobs: Knobs, settings: Settings, procs: Processes, workdir: Path,
                 auth: Auth, gw: dict[str, Any], redis: Redis | None) -> None:
        self.knobs, self.settings, self.procs, self.workdir = knobs, settings, procs, workdir
        self.auth, self.gw, self.redis = auth, gw, redis
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.last_cleanup = self.t0
        self.pool = cf.ThreadPoolExecutor(max_workers=len(STREAMS) + 3)
        self.redis_pid: int | None = None

    # -- sampling
    def sample(self, index: int, streams: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        for proc in (self.auth.proc, self.gw["proc"], self.gw["upstream_proc"]):
            self.procs.check_alive(proc)
        mem: dict[str, Any] = {
            "authserver_rss": rss_bytes(self.auth.proc.pid),
            "envoy_rss": rss_bytes(self.gw["proc"].pid),
            "upstream_rss": rss_bytes(self.gw["upstream_proc"].pid),
        }
        stats = envoy_stats(self.gw["admin"])
        mem["envoy_allocated"] = stats.get("server.memory_allocated")
        mem["envoy_heap_size"] = stats.get("server.memory_heap_size")
        mem["envoy_physical"] = stats.get("server.memory_physical_size")
        if mem["envoy_rss"] is not None and mem["envoy_physical"] is not None:
            # what tcmalloc does not hold: the Wasm VMs' linear memories and V8's own heaps,
            # code and thread stacks
            mem["envoy_outside_tcmalloc"] = mem["envoy_rss"] - mem["envoy_physical"]
        if self.redis is not None:
            mem["redis_rss"] = rss_bytes(self.redis_pid) if self.redis_pid else None
            mem.update(self.redis.sample())
        s = {"interval": index, "t": round(time.monotonic() - self.t0, 1), "memory": mem,
             "envoy_stats": stats, "streams": streams,
             "load_avg": [round(x, 2) for x in os.getloadavg()], **extra}
        self.samples.append(s)
        return s

    # -- the load of one interval
    def run_interval(self, index: int, jwts: list[str], opaques: list[str],
                     revoked_before: list[str]
                     ) -> tuple[list[str], list[str], list[str], dict[str, Any], dict[str, Any]]:
        k, wd, interval = self.knobs, self.workdir, self.knobs.interval
        r = max(0, min(k.revocations, len(jwts) - 3, len(opaques) - 3))
        if len(jwts) < 3 or len(opaques) < 3:
            raise BenchError(f"interval {index}: too few tokens minted the interval before "
                             f"({len(jwts)} JWTs, {len(opaques)} opaque)")
        to_revoke = [(t, self.auth.client) for t in jwts[:r]] + \
                    [(t, self.auth.opaque_client) for t in opaques[:r]]
        jwts, opaques = jwts[r:], opaques[r:]
        repeated = write_lines(wd / "token-repeated.txt", [jwts[0]])
        files = {
            "gw_distinct": write_lines(wd / "tokens-distinct.txt", jwts[1:] or jwts),
            "gw_opaque": write_lines(wd / "tokens-opaque.txt",
                                     interleave([opaques[0]] * (len(opaques) - 1),
                                                opaques[1:], 200_000)),
            "introspect": write_lines(wd / "tokens-introspect.txt",
                                      interleave(jwts[1:], opaques[1:], 50_000)),
        }
        if revoked_before:
            files["gw_revoked"] = write_lines(wd / "tokens-revoked.txt", revoked_before)
        mint_jwt, mint_opaque = wd / f"mint-jwt-{index}", wd / f"mint-opaque-{index}"
        gw, auth = self.gw["base"], self.auth.base
        jobs: dict[str, tuple[str, str, dict[str, str]]] = {
            "tok_jwt": (auth, "mint_tokens.lua", mint_env(self.auth, self.auth.client, mint_jwt)),
            "tok_opaque": (auth, "mint_tokens.lua",
                           mint_env(self.auth, self.auth.opaque_client, mint_opaque)),
            "introspect": (auth, str(LUA), {"SOAK_MODE": "introspect",
                                            "BENCH_TOKENS_FILE": str(files["introspect"]),
                                            "BENCH_AUTH": common.basic_auth(
                                                *self.auth.introspector)}),
            "gw_repeated": (gw, str(LUA), {"SOAK_MODE": "bearer", "BENCH_PATH": "/api/repeated",
                                           "BENCH_TOKENS_FILE": str(repeated)}),
            "gw_distinct": (gw, str(LUA), {"SOAK_MODE": "bearer", "BENCH_PATH": "/api/distinct",
                                           "BENCH_TOKENS_FILE": str(files["gw_distinct"])}),
            "gw_opaque": (gw, str(LUA), {"SOAK_MODE": "bearer", "BENCH_PATH": "/api/opaque",
                                         "BENCH_TOKENS_FILE": str(files["gw_opaque"])}),
        }
        if "gw_revoked" in files:
            jobs["gw_revoked"] = (gw, str(LUA), {"SOAK_MODE": "bearer",
                                                 "BENCH_PATH": "/api/revoked",
                                                 "BENCH_TOKENS_FILE": str(files["gw_revoked"])})
        for name, (path, _) in RL_ROUTES.items():
            jobs[name] = (gw, str(LUA), {"SOAK_MODE": "ratelimit", "BENCH_PATH": path + "/x",
                                         "BENCH_TOKENS_FILE": str(repeated),
                                         "SOAK_KEYS": str(k.rl_keys)})
        # rl_global's requests for a new key wait for a lease (up to a tick or two) without
        # costing CPU: more connections keep lease churn going
        futures = {name: self.pool.submit(common.run_wrk, self.settings, url, script, env,
                                          interval,
                                          k.connections * (4 if name == "rl_global" else 1), 1)
                   for name, (url, script, env) in jobs.items()}
        revoke_f = self.pool.submit(self.revoke, to_revoke, interval / 2)
        cleanup_f = None
        if self.redis is not None and time.monotonic() - self.last_cleanup >= k.cleanup_every:
            self.last_cleanup = time.monotonic()
            cleanup_f = self.pool.submit(self.auth.cleanup)
        streams: dict[str, Any] = {}
        failures: list[str] = []
        for name, fut in futures.items():
            try:
                res = fut.result(timeout=interval + 120)
            except BenchError as exc:
                failures.append(f"{name}: {exc}")
                continue
            streams[name] = summarize(name, res)
        revoked, revoke_errors = revoke_f.result(timeout=interval + 120)
        cleanup = cleanup_f.result(timeout=180) if cleanup_f else None
        if failures:
            raise BenchError("a load generator failed: " + "; ".join(failures))
        minted_jwt, minted_opaque = collect_minted(mint_jwt), collect_minted(mint_opaque)
        for f in (repeated, *files.values()):
            f.unlink(missing_ok=True)
        extra = {"revocations": len(revoked), "revoke_errors": revoke_errors,
                 "cleanup": cleanup}
        return minted_jwt, minted_opaque, revoked, streams, extra

    def revoke(self, tokens: list[tuple[str, tuple[str, str]]],
               within: float) -> tuple[list[str], dict[str, int]]:
        """Revoke each token by its own client, evenly spread over the first `within` s."""
        done: list[str] = []
        errors: dict[str, int] = {}
        start = time.monotonic()
        step = within / max(len(tokens), 1)
        with requests.Session() as s:
            for i, (tok, client) in enumerate(tokens):
                delay = start + i * step - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    r = s.post(f"{self.auth.base}/oauth2/revoke", data={"token": tok}, timeout=10,
                               headers={"Authorization": common.basic_auth(*client)})
                    kind = None if r.status_code == 200 else f"revoke {r.status_code}"
                except requests.RequestException as exc:
                    kind = f"revoke {type(exc).__name__}"
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1
                else:
                    done.append(tok)
        return done, errors

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def summarize(name: str, res: dict[str, Any]) -> dict[str, Any]:
    """One stream's interval: throughput, latency, answers by kind, the unexpected ones."""
    counts = dict(res.get("status_counts") or {})
    if not counts:  # mint_tokens.lua counts nothing itself
        ok = res["requests"] - res["non_2xx"]
        counts = {"200": ok} if ok else {}
        if res["non_2xx"]:
            counts["non-2xx"] = res["non_2xx"]
    planned = STREAMS[name][1]
    unexpected = {}
    for kind, n in counts.items():
        good = kind.startswith("2") and kind != "200 inactive" and name != "gw_revoked"
        if not good and not kind.startswith(planned or ("\0",)):
            unexpected[kind] = n
    for kind, n in res["socket_errors"].items():
        if n:
            unexpected[f"socket {kind}"] = n
    return {"requests": res["requests"], "rps": res["rps"], "p50_ms": res["p50_ms"],
            "p99_ms": res["p99_ms"], "counts": counts, "unexpected": unexpected}


# ------------------------------------------------------------------------------ verdict

def series(samples: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(s["t"], s["memory"][key]) for s in samples
            if s["interval"] > 0 and s["memory"].get(key) is not None]


def judge(samples: list[dict[str, Any]], key: str, seconds: float, knobs: Knobs,
          label: str) -> dict[str, Any]:
    """Memory after warm-up (median of the first 3 samples at or after 20 % of the run)
    against the end (median of the last 3 samples); fails beyond the tolerance."""
    pts = series(samples, key)
    start = next((s["memory"].get(key) for s in samples if s["interval"] == 0), None)
    post = [v for t, v in pts if t >= WARMUP_FRACTION * seconds]
    out: dict[str, Any] = {"label": label, "start": start}
    if len(post) < 2:
        return {**out, "ok": None, "why": "too few samples after the warm-up"}
    w = max(1, min(3, len(post) // 2))
    base, end = statistics.median(post[:w]), statistics.median(post[-w:])
    growth = end - base
    allowed = max(base * knobs.tolerance_pct / 100.0, knobs.tolerance_mib * MIB)
    # least-squares slope over every sample after the warm-up, per minute
    tp = [(t, v) for t, v in pts if t >= WARMUP_FRACTION * seconds]
    mt = statistics.fmean(t for t, _ in tp)
    mv = statistics.fmean(v for _, v in tp)
    den = sum((t - mt) ** 2 for t, _ in tp)
    slope = sum((t - mt) * (v - mv) for t, v in tp) / den * 60 if den else 0.0
    return {**out, "after_warmup": base, "end": end, "growth": growth, "allowed": allowed,
            "growth_pct": round(100.0 * growth / base, 2) if base else None,
            "slope_per_min": slope, "peak": max(v for _, v in pts), "ok": growth <= allowed}


# judged: growth beyond the tolerance fails the soak
JUDGED = [
    ("authserver_rss", "auth server RSS"),
    ("envoy_rss", "Envoy (gateway) RSS, Wasm VMs included"),
    ("envoy_allocated", "Envoy heap in use (tcmalloc: shared data, connections)"),
]
# shown with the same arithmetic, not judged (see tests/soak/README.md)
REPORTED = [
    ("envoy_outside_tcmalloc", "Envoy RSS outside tcmalloc (Wasm VMs, V8, code)"),
    ("upstream_rss", "upstream Envoy RSS"),
    ("redis_used_memory", "Redis used_memory"),
    ("redis_rss", "Redis RSS"),
]


def totals(samples: list[dict[str, Any]]) -> dict[str, Any]:
    per_stream: dict[str, dict[str, Any]] = {}
    for s in samples:
        for name, st in s.get("streams", {}).items():
            acc = per_stream.setdefault(name, {"requests": 0, "counts": {}, "unexpected": {}})
            acc["requests"] += st["requests"]
            for src, dst in (("counts", "counts"), ("unexpected", "unexpected")):
                for kind, n in st[src].items():
                    acc[dst][kind] = acc[dst].get(kind, 0) + n
    return per_stream


# ------------------------------------------------------------------------------ output

def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / MIB:,.1f}"


SHORT = {"tok_jwt": "tok jwt", "tok_opaque": "tok opq", "introspect": "intro",
         "gw_repeated": "gw rep", "gw_distinct": "gw dist", "gw_opaque": "gw opq",
         "gw_revoked": "gw revk", "rl_local": "rl loc", "rl_global": "rl glob"}


def print_over_time(samples: list[dict[str, Any]]) -> None:
    header = ["t s", *(SHORT[n] for n in STREAMS), "unexp", "401 rvk", "429",
              "auth MiB", "envoy MiB", "env heap", "redis MiB", "keys"]
    rows = []
    for s in samples:
        st = s.get("streams", {})
        row = [f"{s['t']:.0f}"]
        row += [f"{st[n]['rps']:,.0f}" if n in st else "-" for n in STREAMS]
        unexp = sum(sum(x["unexpected"].values()) for x in st.values()) + \
            sum(s.get("revoke_errors", {}).values())

        def planned(prefix: str, st: dict[str, Any] = st) -> int:
            return sum(n for x in st.values() for k, n in x["counts"].items()
                       if k.startswith(prefix) and k not in x["unexpected"])

        m = s["memory"]
        row += [str(unexp), str(planned("401")), str(planned("429")),
                mib(m.get("authserver_rss")),
                mib(m.get("envoy_rss")), mib(m.get("envoy_allocated")),
                mib(m.get("redis_used_memory")), str(m.get("redis_keys", "-"))]
        rows.append(row)
    common.print_table("soak over time (req/s per stream; memory at the end of each interval)",
                       header, rows)


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data["samples"]
    loaded = [s for s in samples if s["interval"] > 0]
    seconds = data["settings"]["seconds"]
    fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(14, 11), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 3, 1.4]})
    for name in STREAMS:
        pts = [(s["t"], s["streams"][name]["rps"]) for s in loaded if name in s["streams"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=STREAMS[name][0], lw=1.3)
    ax.set_ylabel("requests/s per stream")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("throughput")
    for key, label in [*JUDGED, *REPORTED]:
        pts = [(s["t"], s["memory"][key] / MIB) for s in samples
               if s["memory"].get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), label=label, lw=1.3,
                     ls="--" if key.startswith("redis") else "-")
    ax2.set_ylabel("MiB")
    ax2.set_title("memory (t = 0: started and checked, before any load)")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax2.set_ylim(bottom=0)
    errs = [(s["t"], sum(sum(x["unexpected"].values()) for x in s["streams"].values()))
            for s in loaded]
    planned = [(s["t"], sum(n for x in s["streams"].values() for k, n in x["counts"].items()
                            if k.startswith(("401", "429")))) for s in loaded]
    if planned:
        ax3.plot(*zip(*planned, strict=True), label="planned 401 (revoked) + 429 per interval",
                 color="#888")
    if errs:
        ax3.plot(*zip(*errs, strict=True), label="unexpected answers per interval",
                 color="#c03030", lw=2)
    ax3.set_yscale("symlog")
    ax3.set_ylabel("answers")
    ax3.set_xlabel("seconds since the start of the load")
    ax3.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    for a in (ax, ax2, ax3):
        a.axvspan(0, WARMUP_FRACTION * seconds, color="#eee", zorder=0)
        a.grid(alpha=0.3)
    ax2.annotate("warm-up", (WARMUP_FRACTION * seconds / 2, 0), textcoords="offset points",
                 xytext=(0, 4), ha="center", fontsize=8, color="#777")
    m = data["machine"]
    verdict = "memory flat" if data["verdict"]["memory_ok"] else "MEMORY GREW"
    fig.suptitle(f"make soak — {seconds:.0f} s, store {data['settings']['store']}, "
                 f"{m['nproc']} cores, {m['cpu_model']}, envoy --concurrency "
                 f"{data['settings']['envoy_concurrency']}, {data['date_utc']}: {verdict}, "
                 f"{data['verdict']['unexpected_total']} unexpected answers", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def docs_block(data: dict[str, Any]) -> str:
    """The figures of a run as the markdown docs/reliability.md shows between its
    `<!-- soak:begin -->` / `<!-- soak:end -->` markers (written by every run)."""
    st, m, v = data["settings"], data["machine"], data["verdict"]
    loaded = [s for s in data["samples"] if s["interval"] > 0]
    lines = [
        f"Run {data['date_utc']}: {st['seconds']:.0f} s, store `{st['store']}`, "
        f"{len(loaded)} intervals of {st['interval']} s, envoy --concurrency "
        f"{st['envoy_concurrency']}, {st['wrk_connections_per_stream']} wrk connections per "
        f"stream, tokens living {st['token_ttl']} s; {m['nproc']} cores ({m['cpu_model']}), "
        f"load average {m['load_avg_before'][0]} before, {m['load_avg_after'][0]} after. "
        f"Verdict: **{'passed' if v['ok'] else 'FAILED'}**"
        + ("" if v["ok"] else " (" + "; ".join(v["reasons"]) + ")") + ".",
        "",
        "| memory, MiB | start (idle) | after warm-up | end | growth | trend after warm-up "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for j in data["memory"].values():
        if "after_warmup" not in j:
            continue
        verdict = (("ok" if j["ok"] else "**grew**") + f" (≤ {mib(j['allowed'])})"
                   if j.get("judged", True) else "reported")
        lines.append(f"| {j['label']} | {mib(j['start'])} | {mib(j['after_warmup'])} "
                     f"| {mib(j['end'])} | {j['growth'] / MIB:+,.1f} ({j['growth_pct']:+.1f} %) "
                     f"| {j['slope_per_min'] / MIB:+.2f} MiB/min | {verdict} |")
    lines += ["", "| stream | requests | req/s: mean (min – max per interval) "
              "| planned non-2xx | unexpected |", "|---|---:|---:|---|---:|"]
    for name, acc in sorted(data["totals"].items(), key=lambda kv: list(STREAMS).index(kv[0])):
        rates = [s["streams"][name]["rps"] for s in loaded if name in s["streams"]]
        planned = {k: n for k, n in acc["counts"].items()
                   if k not in acc["unexpected"] and not k.startswith("2")}
        lines.append(
            f"| {data['streams'][name]} | {acc['requests']:,} "
            f"| {statistics.fmean(rates):,.0f} ({min(rates):,.0f} – {max(rates):,.0f}) "
            f"| {', '.join(f'{k}: {n:,}' for k, n in sorted(planned.items())) or '—'} "
            f"| {sum(acc['unexpected'].values()):,} |")
    last = loaded[-1]["envoy_stats"] if loaded else {}
    warm = [s for s in loaded if s["t"] >= WARMUP_FRACTION * st["seconds"]]

    def span(key: str) -> str:
        vals = [s["memory"][key] for s in warm if s["memory"].get(key) is not None]
        return f"{min(vals):,} – {max(vals):,}" if vals else "n/a"

    counters = ", ".join(f"{k.removeprefix('wasmcustom.tollgate_')} {last.get(k, 0):,}" for k in (
        "wasmcustom.tollgate_cache_miss", "wasmcustom.tollgate_cache_hit",
        "wasmcustom.tollgate_introspection_call", "wasmcustom.tollgate_denied_revoked",
        "wasmcustom.tollgate_denied_inactive", "wasmcustom.tollgate_rate_limited",
        "wasmcustom.tollgate_rate_limit_lease", "wasmcustom.tollgate_revocation_poll_ok"))
    lines += ["", f"- Filter counters over the run: {counters}."]
    if st["store"] == "redis":
        cleanups = [s["cleanup"] for s in loaded if s.get("cleanup")]
        lines.append(
            f"- Redis after the warm-up: {span('redis_keys')} keys, cleanup index "
            f"{span('redis_cleanup_index')} entries, revocation feed {span('redis_feed')} "
            f"entries; `authserver cleanup` ran {len(cleanups)} times, removing "
            f"{sum(c['expired_tokens'] for c in cleanups):,} expired tokens.")
    lines.append("- " + "; ".join(v["notes"]) + ".")
    return "\n".join(lines) + "\n"


def update_docs(data: dict[str, Any]) -> None:
    if not DOC.is_file():
        return
    text = DOC.read_text()
    pattern = re.compile(r"(<!-- soak:begin -->\n).*?(<!-- soak:end -->)", re.S)
    if not pattern.search(text):
        print(f"{DOC.relative_to(common.ROOT)} has no soak markers; left as is", file=sys.stderr)
        return
    DOC.write_text(pattern.sub(lambda mt: mt.group(1) + docs_block(data) + mt.group(2), text))


def report(data: dict[str, Any]) -> None:
    print_over_time(data["samples"])
    rows = []
    for name, acc in sorted(data["totals"].items(), key=lambda kv: list(STREAMS).index(kv[0])):
        planned = {k: n for k, n in acc["counts"].items() if k not in acc["unexpected"]
                   and not k.startswith("2")}
        rows.append([name, f"{acc['requests']:,}",
                     ", ".join(f"{k}: {n:,}" for k, n in sorted(planned.items())) or "-",
                     ", ".join(f"{k}: {n:,}" for k, n in sorted(acc["unexpected"].items()))
                     or "0"])
    common.print_table("answers over the whole run", ["stream", "requests", "planned non-2xx",
                                                       "unexpected"], rows)
    rows = []
    for j in data["memory"].values():
        if j.get("ok") is None and "after_warmup" not in j:
            rows.append([j["label"], mib(j["start"]), "-", "-", "-", "-", j.get("why", "")])
            continue
        rows.append([j["label"], mib(j["start"]), mib(j["after_warmup"]), mib(j["end"]),
                     f"{j['growth'] / MIB:+,.1f} ({j['growth_pct']:+.1f} %)",
                     f"{j['slope_per_min'] / MIB:+.2f}",
                     ("ok" if j["ok"] else "GREW") + f" (≤ {mib(j['allowed'])})"
                     if j.get("judged", True) else "reported"])
    common.print_table("memory, MiB: start (idle), after warm-up, end", [
        "what", "start", "after warm-up", "end", "growth", "MiB/min", "verdict"], rows)
    v = data["verdict"]
    for line in v["notes"]:
        print(f"note: {line}")
    print(f"\nsoak {'PASSED' if v['ok'] else 'FAILED'}: " + "; ".join(v["reasons"] or ["ok"]))


# ------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true",
                        help="from tests/soak/results/soak.json: print the report, redraw "
                             "docs/img/soak.png and the figures in docs/reliability.md")
    args = parser.parse_args()
    if args.report_only:
        results, png = outputs(os.environ.get("SOAK_STORE", "redis"))
        data = json.loads(results.read_text())
        report(data)
        plot(data, png)
        if data["settings"]["store"] == "redis":
            update_docs(data)
        return 0
    common.install_signal_handlers()
    knobs, settings = Knobs(), Settings()
    workdir = common.new_workdir("soak")
    procs = Processes(workdir)
    soak: Soak | None = None
    try:
        knobs.check()
        machine = common.machine_info({"envoy": [bench_gateway.envoy_bin(), "--version"],
                                       "authserver": [str(authserver_bin()), "--version"],
                                       "redis-server": ["redis-server", "--version"]})
        machine["versions"]["envoy"] = machine["versions"]["envoy"].split("version: ")[-1]
        redis = None
        redis_port = None
        if knobs.store == "redis":
            redis_port = common.start_redis(procs, settings)
            redis = Redis(redis_port)
        auth = Auth(procs, settings, knobs, redis_port)
        token = auth.token()
        payload = token.split(".")[1]
        claims = json.loads(__import__("base64").urlsafe_b64decode(
            payload + "=" * (-len(payload) % 4)))
        audience = claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]
        gw = start_envoys(procs, settings, knobs, workdir, auth, audience)
        check_gateway(gw, auth, procs)
        print(f"soak: store {knobs.store}, auth server {auth.base}, gateway {gw['base']} "
              f"(envoy --concurrency {knobs.envoy_concurrency}), {knobs.seconds:.0f} s in "
              f"{knobs.interval} s intervals; logs in {workdir}", flush=True)
        soak = Soak(knobs, settings, procs, workdir, auth, gw, redis)
        if redis is not None:
            soak.redis_pid = next(p.pid for n, p, _ in procs.procs if n == "redis")
        # t = 0: everything started and checked, no load yet
        soak.sample(0, {}, {})
        # tokens for the first interval
        first_jwt, first_opaque = workdir / "mint-jwt-0", workdir / "mint-opaque-0"
        futs = [soak.pool.submit(common.run_wrk, settings, auth.base, "mint_tokens.lua",
                                 mint_env(auth, c, p), 2, knobs.connections, 1)
                for c, p in ((auth.client, first_jwt), (auth.opaque_client, first_opaque))]
        for f in futs:
            f.result(timeout=120)
        jwts, opaques = collect_minted(first_jwt), collect_minted(first_opaque)
        revoked: list[str] = []
        soak.t0 = time.monotonic()
        soak.last_cleanup = soak.t0
        index = 0
        while time.monotonic() - soak.t0 < knobs.seconds - knobs.interval / 2:
            index += 1
            jwts, opaques, revoked, streams, extra = soak.run_interval(index, jwts, opaques,
                                                                       revoked)
            s = soak.sample(index, streams, extra)
            unexp = sum(sum(x["unexpected"].values()) for x in s["streams"].values())
            m = s["memory"]
            print(f"  t={s['t']:>6.0f} s  " + "  ".join(
                f"{SHORT[n]} {x['rps']:,.0f}" for n, x in s["streams"].items())
                + f"  | unexpected {unexp}  auth {mib(m['authserver_rss'])} MiB  envoy "
                f"{mib(m['envoy_rss'])} MiB  redis {mib(m.get('redis_used_memory'))} MiB"
                f"  load {s['load_avg'][0]}", flush=True)
        seconds = round(time.monotonic() - soak.t0, 1)
    except BenchError as exc:
        print(f"soak failed: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        if soak is not None:
            soak.close()
        kill_wrk_children()
        procs.close()
        for leftover in (*workdir.glob("token*.txt"), *workdir.glob("mint-*"),
                         workdir / "envoy-gateway.yaml"):
            leftover.unlink(missing_ok=True)

    data = build_results(soak, knobs, machine, seconds)
    results, png = outputs(knobs.store)
    results.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1) + "\n"
    results.write_text(text)
    (workdir / "soak.json").write_text(text)
    report(data)
    plot(data, png)
    if knobs.store == "redis":
        update_docs(data)
    print(f"\nresults: {results.relative_to(common.ROOT)}, plot: {png.relative_to(common.ROOT)}")
    return 0 if data["verdict"]["ok"] else 1


def build_results(soak: Soak, knobs: Knobs, machine: dict[str, Any],
                  seconds: float) -> dict[str, Any]:
    samples = soak.samples
    memory = {key: judge(samples, key, seconds, knobs, label) for key, label in JUDGED}
    for key, label in REPORTED:
        if any(s["memory"].get(key) is not None for s in samples):
            memory[key] = {**judge(samples, key, seconds, knobs, label), "judged": False}
    tot = totals(samples)
    reasons, notes = [], []
    unexpected_total = sum(sum(a["unexpected"].values()) for a in tot.values())
    revoke_errors = sum(sum(s.get("revoke_errors", {}).values()) for s in samples)
    if unexpected_total or revoke_errors:
        kinds: dict[str, int] = {}
        for name, a in tot.items():
            for k, n in a["unexpected"].items():
                kinds[f"{name} {k}"] = kinds.get(f"{name} {k}", 0) + n
        for s in samples:
            for k, n in s.get("revoke_errors", {}).items():
                kinds[k] = kinds.get(k, 0) + n
        reasons.append(f"{unexpected_total + revoke_errors} unexpected answers ("
                       + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")")
    for key, j in memory.items():
        if j.get("judged", True) and j.get("ok") is False:
            reasons.append(f"{j['label']} grew {j['growth'] / MIB:+.1f} MiB "
                           f"({j['growth_pct']:+.1f} %) from after the warm-up to the end, "
                           f"more than the {j['allowed'] / MIB:.1f} MiB allowed")
    for name, kind in MUST_SEE.items():
        if not any(k.startswith(kind) for k in tot.get(name, {}).get("counts", {})):
            reasons.append(f"{name} never answered {kind}: its path was not exercised")
    for name in STREAMS:
        if not tot.get(name, {}).get("requests"):
            reasons.append(f"stream {name} made no requests")
    last = samples[-1]["envoy_stats"] if samples else {}
    misses = last.get("wasmcustom.tollgate_cache_miss", 0)
    calls = last.get("wasmcustom.tollgate_introspection_call", 0)
    cache_slots = bench_gateway.CACHE_SIZE
    warm = [s for s in samples if s["interval"] > 0 and s["t"] <= WARMUP_FRACTION * seconds]
    warm_misses = warm[-1]["envoy_stats"].get("wasmcustom.tollgate_cache_miss", 0) if warm else 0
    notes.append(f"verified-token cache: {misses:,} misses over the run for {cache_slots:,} "
                 f"slots ({warm_misses:,} by the end of the warm-up); introspection calls: "
                 f"{calls:,} for 4,096 slots")
    if warm_misses < cache_slots:
        notes.append("the verified-token cache was not yet full at the end of the warm-up: "
                     "memory growth after it may be the cache filling, not a leak")
    if knobs.store == "memory":
        notes.append("in-memory store: the auth server holds every token record itself")
    return {
        "kind": "soak",
        "date_utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        "machine": {**machine, "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": {**asdict(knobs), "seconds": seconds, "requested_seconds": knobs.seconds,
                     "warmup_fraction": WARMUP_FRACTION, "cache_slots": cache_slots,
                     "rate_limits": {k: v[1] for k, v in RL_ROUTES.items()},
                     "wrk_connections_per_stream": knobs.connections},
        "streams": {k: v[0] for k, v in STREAMS.items()},
        "samples": samples,
        "totals": tot,
        "memory": memory,
        "verdict": {"ok": not reasons, "reasons": reasons, "notes": notes,
                    "memory_ok": all(j.get("ok") is not False for j in memory.values()
                                     if j.get("judged", True)),
                    "unexpected_total": unexpected_total + revoke_errors},
    }


if __name__ == "__main__":
    sys.exit(main())
