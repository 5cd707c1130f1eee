"""Shared parts of the Tollgate benchmarks: processes that always stop, wrk runs, tables.

Every process started here runs in its own session (process group) and is stopped by
`Processes.close()` (SIGTERM to the group, then SIGKILL), which the runners call in a
`finally`; SIGTERM / SIGINT / SIGHUP to the runner turn into SystemExit so the `finally`
runs then too.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent.parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"
IMG_DIR = ROOT / "docs" / "img"
WORK_DIR = ROOT / ".work" / "bench"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


@dataclass
class Settings:
    """Knobs, all overridable from the environment (see docs/benchmarks.md)."""

    duration: float = field(default_factory=lambda: env_float("BENCH_DURATION", 10.0))
    warmup: float = field(default_factory=lambda: env_float("BENCH_WARMUP", 2.0))
    connections: int = field(default_factory=lambda: env_int("BENCH_CONNECTIONS", 32))
    threads: int = field(default_factory=lambda: env_int("BENCH_THREADS", 1))
    # "none": everything shares both cores; "split": wrk on CPU 0, the servers on CPU 1.
    pin: str = field(default_factory=lambda: os.environ.get("BENCH_PIN", "none"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "connections": self.connections,
            "wrk_threads": self.threads,
            "pinning": self.pin,
        }

    def server_prefix(self) -> list[str]:
        return ["taskset", "-c", "1"] if self.pin == "split" else []

    def client_prefix(self) -> list[str]:
        return ["taskset", "-c", "0"] if self.pin == "split" else []


def install_signal_handlers() -> None:
    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode both parts before joining them.
    from urllib.parse import quote

    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class BenchError(RuntimeError):
    pass


class Processes:
    """Starts processes in their own process group and stops them all, in reverse."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(cwd) if cwd else None, start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            name = next((n for n, p, _ in self.procs if p is proc), "?")
            raise BenchError(f"{name} exited with {proc.returncode}; log:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (_, p, log) in enumerate(self.procs):
            if p is proc:
                _terminate(p)
                log.close()
                del self.procs[i]
                return

    def close(self) -> None:
        while self.procs:
            _, proc, log = self.procs.pop()
            _terminate(proc)
            log.close()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def wait_until(what: str, probe, timeout: float = 20.0, procs: Processes | None = None,
               watch: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if procs is not None and watch is not None:
            procs.check_alive(watch)
        try:
            value = probe()
            if value:
                return value
        except (requests.RequestException, OSError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    raise BenchError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


def start_redis(procs: Processes, settings: Settings) -> int:
    """A throw-away redis-server on loopback: no RDB snapshots, no AOF (nothing to keep)."""
    if not shutil.which("redis-server"):
        raise BenchError("redis-server not found: run `make deps-apt`")
    port = free_port()
    proc = procs.start("redis", settings.server_prefix() + [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
        "--dir", str(procs.workdir), "--loglevel", "warning"])

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    wait_until("redis-server", ping, procs=procs, watch=proc)
    return port


# ------------------------------------------------------------------------------ CPU

def process_cpu_ns(pid: int) -> int | None:
    """CPU time a process has used so far (all its threads), in ns: the run times in
    /proc/<pid>/task/*/schedstat (ns resolution), else utime + stime of /proc/<pid>/stat
    (clock ticks). None when the process is gone or /proc is not there."""
    total, found = 0, False
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
                found = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return None
    if found:
        return total
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def worker_cpu_ns(pid: int) -> dict[str, int]:
    """CPU time each Envoy worker thread (`wrk:worker_N`) has used so far, in ns, from
    /proc/<pid>/task/*/schedstat; empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                if name.startswith("wrk:worker_"):
                    out[name] = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return out


def worker_shares(before: dict[str, int], after: dict[str, int]) -> list[float]:
    """Each worker's share of the workers' CPU between two `worker_cpu_ns` readings,
    largest first: with connections balanced, about 1/N each."""
    used = [after[k] - before.get(k, 0) for k in after]
    total = sum(used)
    return sorted((round(u / total, 3) for u in used), reverse=True) if total > 0 else []


def cpu_us_per_request(cpu_ns: int | None, requests: int) -> float | None:
    if cpu_ns is None or requests <= 0:
        return None
    return round(cpu_ns / 1000 / requests, 1)


# ------------------------------------------------------------------------------ wrk

WRK_JSON = re.compile(r"^WRK_JSON (\{.*\})$", re.M)
WRK_STATUS = re.compile(r"^WRK_STATUS (\{.*\})$", re.M)
NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: (.*)")


def run_wrk(settings: Settings, url: str, script: str, env: dict[str, str],
            duration: float, connections: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Run wrk once; returns its statistics (requests/s, latency percentiles in ms)."""
    if not shutil.which("wrk"):
        raise BenchError("wrk not found: run `make deps-apt`")
    threads = threads or settings.threads
    connections = max(connections or settings.connections, threads)
    full_env = dict(os.environ)
    full_env.update(env)
    full_env["BENCH_LUA_DIR"] = str(LUA_DIR)
    full_env["BENCH_THREADS"] = str(threads)
    argv = settings.client_prefix() + [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(duration, 1):.0f}s",
        "--timeout", "5s", "-s", str(LUA_DIR / script), url]
    proc = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                          timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    match = WRK_JSON.search(proc.stdout)
    if not match:
        raise BenchError(f"no statistics in wrk output:\n{proc.stdout[-1000:]}")
    raw = json.loads(match.group(1))
    non2xx = int(NON2XX.search(proc.stdout).group(1)) if NON2XX.search(proc.stdout) else 0
    errors = raw["errors"]
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    status = WRK_STATUS.search(proc.stdout)  # lua/status.lua only
    extra = {"status_counts": json.loads(status.group(1))} if status else {}
    return {
        **extra,
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": lat["p50"] / 1000.0,
        "p90_ms": lat["p90"] / 1000.0,
        "p99_ms": lat["p99"] / 1000.0,
        "p999_ms": lat["p999"] / 1000.0,
        "mean_ms": round(lat["mean"] / 1000.0, 3),
        "max_ms": lat["max"] / 1000.0,
        "non_2xx": non2xx,
        "socket_errors": {k: v for k, v in errors.items() if k != "status"},
        "connections": connections,
        "wrk_threads": threads,
    }


def measure(settings: Settings, url: str, script: str, env: dict[str, str],
            label: str, duration: float | None = None,
            warmup: float | None = None) -> dict[str, Any]:
    """Warm-up run (discarded), then the measured run. Fails when any answer was not 2xx."""
    warm = settings.warmup if warmup is None else warmup
    if warm > 0:
        run_wrk(settings, url, script, env, warm)
    result = run_wrk(settings, url, script, env, duration or settings.duration)
    bad = result["non_2xx"] + sum(result["socket_errors"].values())
    print(f"  {label:<52} {result['rps']:>10,.0f} req/s  p50 {result['p50_ms']:.2f} ms"
          f"  p99 {result['p99_ms']:.2f} ms" + (f"  ({bad} errors)" if bad else ""),
          flush=True)
    if result["non_2xx"]:
        raise BenchError(f"{label}: {result['non_2xx']} answers were not 2xx; the measurement "
                         "would not be of the success path")
    return result


def combine_rounds(label: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same measurement: requests/s over the summed
    requests and time; latency percentiles are the request-weighted mean of the rounds'
    percentiles (wrk gives no histogram to merge), the max is the max."""
    total = sum(r["requests"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)

    def wmean(key: str) -> float:
        return round(sum(r[key] * r["requests"] for r in rounds) / max(total, 1), 3)

    out = dict(rounds[-1])
    out.update({
        "requests": total, "seconds": round(seconds, 3),
        "rps": round(total / seconds, 1) if seconds else 0.0,
        "p50_ms": wmean("p50_ms"), "p90_ms": wmean("p90_ms"), "p99_ms": wmean("p99_ms"),
        "p999_ms": wmean("p999_ms"), "mean_ms": wmean("mean_ms"),
        "max_ms": max(r["max_ms"] for r in rounds),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "rounds": [{"rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
                   for r in rounds],
    })
    print(f"  {label:<52} {out['rps']:>10,.0f} req/s  p50 {out['p50_ms']:.2f} ms"
          f"  p99 {out['p99_ms']:.2f} ms  ({len(rounds)} rounds: "
          + ", ".join(f"{r['rps']:,.0f}" for r in rounds) + ")", flush=True)
    return out


# ------------------------------------------------------------------------------ machine

def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def machine_info(extra: dict[str, list[str]] | None = None) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    versions = {
        "wrk": _version(["wrk", "-v"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    for name, argv in (extra or {}).items():
        versions[name] = _version(argv)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def save_results(kind: str, data: dict[str, Any]) -> Path:
    """Write results/<kind>.json (the latest run, the one docs/benchmarks.md shows) and a
    copy in results/history/ (git-ignored)."""
    (RESULTS_DIR / "history").mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    data = {"kind": kind, "date_utc": stamp, **data}
    if "machine" in data:
        data["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    (RESULTS_DIR / "history" / f"{kind}-{stamp}.json").write_text(text)
    latest = RESULTS_DIR / f"{kind}.json"
    latest.write_text(text)
    return latest


def token_audience(token: str) -> str:
    """The (first) audience of a JWT, read without verifying it."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    sys.stdout.flush()


def new_workdir(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = WORK_DIR / f"{kind}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def redis_command(port: int, *args: str) -> bytes:
    """One command to a loopback redis-server (RESP), its reply's payload (bulk or status)."""
    msg = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msg.encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf[:1] in (b"+", b"-") and buf.endswith(b"\r\n"):
                break
            if buf[:1] == b"$":
                head, _, rest = buf.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[:int(head[1:])]
    if buf[:1] == b"-":
        raise BenchError(f"redis {args[0]}: {buf.decode(errors='replace').strip()}")
    return buf[1:].strip()


def redis_commandstats(port: int) -> dict[str, dict[str, float]]:
    """`INFO commandstats`: per command, calls and the microseconds Redis spent in them."""
    out: dict[str, dict[str, float]] = {}
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            kv = dict(f.split("=", 1) for f in fields.split(","))
            out[name] = {"calls": float(kv["calls"]), "usec": float(kv["usec"])}
    return out


MONITOR_LINE = re.compile(r'^\+?(\d+\.\d+) \[(\d+) ([^\]]+)\] "([^"]+)"')
# Plain commands one connection pipelines are run one after the other from one read:
# MONITOR stamps them microseconds apart (an introspection's HGETALL and EXISTS: 3 µs).
# The next round trip's come after the reply reached the server and it did its work.
SAME_TRIP_US = 15


def round_trips_from_monitor(lines: list[str], db: int) -> tuple[int, dict[str, int]]:
    """Round trips in `MONITOR` output (db `db` only). A `MULTI` ... `EXEC` block is one
    (Redis logs the queued commands at `EXEC`, so their stamps say nothing); outside one, a
    run of commands from one connection, each within SAME_TRIP_US of the line before, is one
    (a pipeline). Commands a script runs (`[0 lua]`) belong to the script. Also the commands
    by name (a transaction's counted inside it)."""
    trips, names = 0, {}
    last_client, last_t, in_tx = None, 0.0, False
    for line in lines:
        m = MONITOR_LINE.match(line)
        if not m or int(m.group(2)) != db:
            continue
        t, client, name = float(m.group(1)), m.group(3), m.group(4).upper()
        if client == "lua":  # run by the script on the line before: time goes on
            last_t = t
            continue
        names[name] = names.get(name, 0) + 1
        if in_tx and client == last_client:
            in_tx = name not in ("EXEC", "DISCARD")
        else:
            if client != last_client or (t - last_t) * 1e6 > SAME_TRIP_US:
                trips += 1
            in_tx = name == "MULTI"
        last_client, last_t = client, t
    return trips, names


def redis_round_trips(port: int, db: int, one_request: Any, n: int) -> dict[str, Any]:
    """`one_request()` n times, one after the other, while a `MONITOR` connection records what
    Redis receives; before each request a `PING` on a connection of our own marks where it
    starts in the log. Round trips of each request (round_trips_from_monitor over the lines
    between two marks): the median and the mean per request, and the commands per request.
    The server's own background work (its subscription's idle `PING`, the key ring's
    reload) lands in whichever request it falls into: the mean includes it, the median
    does not."""
    import statistics
    import threading
    marker = socket.create_connection(("127.0.0.1", port), timeout=10)
    marker_addr = "%s:%d" % marker.getsockname()[:2]
    with marker, socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"MONITOR\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise BenchError("redis MONITOR: connection closed")
            buf += chunk
        if not buf.startswith(b"+OK"):
            raise BenchError(f"redis MONITOR: {buf[:100]!r}")
        chunks = [buf.split(b"\r\n", 1)[1]]
        done = threading.Event()

        def read() -> None:  # drain while the requests run: Redis must never wait on us
            s.settimeout(0.2)
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    if done.is_set():
                        return
                    continue
                if not chunk:
                    return
                chunks.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for _ in range(n + 1):  # the last mark closes the last request
                marker.sendall(b"PING\r\n")
                if marker.recv(64)[:5] != b"+PONG":
                    raise BenchError("redis PING: no PONG")
                if _ < n:
                    one_request()
            time.sleep(0.3)  # the last lines reach the monitor
        finally:
            done.set()
            reader.join(timeout=5)
    per_request: list[int] = []
    names: dict[str, int] = {}
    segment: list[str] | None = None
    for line in b"".join(chunks).decode(errors="replace").split("\r\n"):
        m = MONITOR_LINE.match(line)
        if m and m.group(3) == marker_addr:
            if segment is not None:
                trips, seen = round_trips_from_monitor(segment, db)
                per_request.append(trips)
                for k, v in seen.items():
                    names[k] = names.get(k, 0) + v
            segment = []
        elif segment is not None:
            segment.append(line)
    if len(per_request) != n:
        raise BenchError(f"MONITOR: {len(per_request)} requests marked, {n} sent")
    return {"requests": n, "round_trips_per_request": statistics.median(per_request),
            "round_trips_mean": round(statistics.fmean(per_request), 3),
            "round_trips_max": max(per_request),
            "commands_per_request": {k: round(v / n, 3) for k, v in sorted(names.items())}}


def measure_one_pass(settings: Settings, url: str, tokens: list[str], workdir: Path,
                     label: str, duration: float, path: str = "/api/resource",
                     pid: int | None = None) -> dict[str, Any]:
    """Distinct tokens, each sent at most once: a gateway whose own cache would hold part
    of the list must not be measured on a second pass over it (cache hits would pass for
    verifications). A 0.5 s probe on the list's last tenth (never used again) estimates
    the rate; the measured run then takes the rest, for at most `duration` and at most
    80 % of what one pass would take at that rate. `passes` says what it became; with
    `pid`, the process's CPU time per request over the measured run."""
    probe_n = max(500, len(tokens) // 10)
    main, probe = tokens[:-probe_n], tokens[-probe_n:]
    if len(main) < 1000:
        raise BenchError(f"{label}: {len(tokens)} tokens are too few for a one-pass run")
    files = {}
    for name, part in (("probe", probe), ("main", main)):
        files[name] = workdir / f"tokens-one-pass-{name}.txt"
        files[name].write_text("\n".join(part) + "\n")
    try:
        rate = run_wrk(settings, url, "bearer.lua", {"BENCH_PATH": path,
                                                     "BENCH_TOKENS_FILE": str(files["probe"])},
                       0.5)["rps"]
        capped = min(duration, max(0.5, 0.8 * len(main) / max(rate, 1.0)))
        c0 = process_cpu_ns(pid) if pid else None
        res = measure(settings, url, "bearer.lua",
                      {"BENCH_PATH": path, "BENCH_TOKENS_FILE": str(files["main"])},
                      label, duration=capped, warmup=0)
        c1 = process_cpu_ns(pid) if pid else None
    finally:
        for f in files.values():
            f.unlink(missing_ok=True)
    if pid:
        res["envoy_cpu_us_per_request"] = cpu_us_per_request(
            c1 - c0 if c0 is not None and c1 is not None else None, res["requests"])
    res["distinct_tokens"] = len(main)
    res["passes"] = round(res["requests"] / len(main), 2)
    res["duration_s"] = round(capped, 2)
    return res


def measure_cpu(settings: Settings, url: str, script: str, env: dict[str, str],
                label: str, pids: dict[str, int],
                redis_port: int | None = None) -> dict[str, Any]:
    """`measure`, plus the CPU time each process of `pids` spent per request during the
    measured run only (the warm-up is outside the window): `cpu_us_per_request` by name;
    with `redis_port`, Redis's own command statistics over the same window: commands per
    request and the microseconds spent in each (`redis_per_request`). The capacity model
    (capacity.py) is built from these figures."""
    if settings.warmup > 0:
        run_wrk(settings, url, script, env, settings.warmup)
    if redis_port is not None:
        redis_command(redis_port, "CONFIG", "RESETSTAT")
    before = {name: process_cpu_ns(pid) for name, pid in pids.items()}
    result = measure(settings, url, script, env, label, warmup=0)
    spent = {}
    for name, pid in pids.items():
        after, start = process_cpu_ns(pid), before[name]
        spent[name] = cpu_us_per_request(
            None if after is None or start is None else after - start, result["requests"])
    result["cpu_us_per_request"] = spent
    if redis_port is not None and result["requests"]:
        n = result["requests"]
        result["redis_per_request"] = {
            cmd: {"calls": round(v["calls"] / n, 3), "usec": round(v["usec"] / n, 3)}
            for cmd, v in sorted(redis_commandstats(redis_port).items())
            if v["calls"] >= n / 100}  # what the requests do, not a stray probe
    return result


def mint_tokens(settings: Settings, workdir: Path, base: str, env: dict[str, str], count: int,
                max_seconds: float, tag: str) -> list[str]:
    """Mint up to `count` distinct access tokens with wrk (mint_tokens.lua: the token request
    of `env`, BENCH_PATH/BENCH_BODY/BENCH_AUTH, against `base`), in 3 s runs until there are
    enough or `max_seconds` have passed; the part files are deleted as they are read."""
    tokens: set[str] = set()
    deadline = time.monotonic() + max_seconds
    round_no = 0
    while len(tokens) < count and time.monotonic() < deadline:
        round_no += 1
        prefix = workdir / f"mint-{tag}{round_no}"
        run_wrk(settings, base, "mint_tokens.lua", {**env, "BENCH_MINT_PREFIX": str(prefix)},
                duration=3, threads=2)
        for part in workdir.glob(f"mint-{tag}{round_no}.*"):
            tokens.update(t for t in part.read_text().split("\n") if t)
            part.unlink()
    return sorted(tokens)[:count]
