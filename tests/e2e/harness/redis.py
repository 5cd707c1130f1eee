"""Real `redis-server` / `redis-sentinel` processes on free loopback ports, for tests
(stopped on exit).

    with RedisServer(tmp_path) as r:
        url = r.url(0)          # redis://127.0.0.1:<port>/0
        r.call("SET", "k", "v") # one command over RESP (no redis-cli needed)
        r.kill(); r.start()     # a crash (SIGKILL) and a restart on the same port and dir

    with SentinelGroup(tmp_path, replicas=1) as g:   # master + replica + 3 Sentinels
        url = g.url(0)          # redis+sentinel://127.0.0.1:s1,s2,s3/tollgate/0
        old = g.master(); old.kill()
        new = g.wait_failover(old.port)   # the promoted replica
        g.restart_as_replica(old)         # back as a replica of the new master
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .ports import free_port


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-READONLY ...``) of a Redis server."""


def _resp_encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")


def resp_call(port: int, *args, timeout: float = 5.0, host: str = "127.0.0.1"):
    """One command on a fresh connection; the decoded reply (str, int, None or list).
    Raises RespError on an error reply, OSError when nothing answers."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_resp_encode(args))
        with s.makefile("rb") as f:
            return _resp_read(f)


def parse_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.strip().partition(":")
        if sep and not k.startswith("#"):
            out[k] = v
    return out


class RedisServer:
    """``appendfsync`` applies with ``appendonly``; ``replicaof`` is a master port on
    127.0.0.1; ``dbfilename`` names the RDB file in ``workdir`` (loaded at start if it
    exists: how a restore starts)."""

    def __init__(self, workdir: Path, appendonly: bool = False, port: int | None = None,
                 appendfsync: str = "everysec", replicaof: int | None = None,
                 dbfilename: str = "dump.rdb"):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not installed (make deps-apt)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.replicaof = replicaof
        self.dbfilename = dbfilename
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--dbfilename", self.dbfilename,
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync,
                # A replica syncs at once instead of after the default 5 s.
                "--repl-diskless-sync-delay", "0",
                "--logfile", str(self.dir / f"redis-{self.port}.log")]
        if self.replicaof:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def call(self, *args, timeout: float = 5.0):
        return resp_call(self.port, *args, timeout=timeout)

    def info(self, section: str = "replication") -> dict[str, str]:
        return parse_info(self.call("INFO", section))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the fsync policy already wrote."""
        if self.alive():
            self.proc.kill()
        if self.proc:
            self.proc.wait()

    def wait_replicas(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` replicas are online and streaming on this master: Redis 7 reports a
        replica ``online`` after a diskless full sync but streams commands to it only after
        its first ``REPLCONF ACK`` (up to a second later), so ``WAIT`` must count it too."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.info()
                online = [k for k, v in info.items()
                          if k.startswith("slave") and k[5:].isdigit() and "state=online" in v]
                if (info.get("role") == "master" and len(online) >= n
                        and self.call("WAIT", str(n), "200") >= n):
                    return
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} replica(s) not online on :{self.port}")
            time.sleep(0.05)

    def wait_loaded(self, timeout: float = 30.0) -> None:
        """Until the dataset is loaded (no LOADING) and, for a replica, the link is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("PING")
                info = self.info()
                if info.get("role") == "master" or info.get("master_link_status") == "up":
                    return
            except (OSError, RespError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis :{self.port} not ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisCluster:
    """A real Redis Cluster on loopback: ``masters`` primaries sharing the 16384 slots, each
    with ``replicas`` replicas, formed by ``redis-cli --cluster create``; ready when every
    node reports ``cluster_state:ok`` and every replica is linked. Every node is stopped on
    exit (SIGKILL if SIGTERM is not enough).

        with RedisCluster(tmp_path, masters=3, replicas=1) as c:
            url = c.url()                      # redis+cluster://127.0.0.1:p1,...
            c.cli(c.ports[0], "-c", "GET", "k")   # redis-cli (-c follows MOVED)
            c.keys_by_primary("auth:*")        # {port: [keys]} of the current primaries
            c.kill(port); c.wait_failover(port)

    Each node's cluster bus gets a free port of its own (the default, port + 10000, can be
    past 65535 for a port the OS hands out).
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 2000):
        self.server = shutil.which("redis-server")
        self.cli_bin = shutil.which("redis-cli")
        if self.server is None or self.cli_bin is None:
            raise FileNotFoundError("redis-server / redis-cli not installed (make deps-apt)")
        self.dir = Path(workdir)
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.total = masters * (1 + replicas)
        self.procs: dict[int, subprocess.Popen] = {}
        self.ports: list[int] = []
        try:
            for _ in range(self.total):
                self._start_node()
            addrs = [f"127.0.0.1:{p}" for p in self.ports]
            r = subprocess.run([self.cli_bin, "--cluster", "create", *addrs,
                                "--cluster-replicas", str(replicas), "--cluster-yes"],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{r.stdout}{r.stderr}")
            self.wait_ok()
            self.initial_primaries = self.primaries()
        except BaseException:
            self.stop()
            raise

    def _start_node(self) -> None:
        for _attempt in range(5):
            port, bus = free_port(), free_port()
            d = self.dir / f"node-{port}"
            d.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(
                [self.server, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-port", str(bus),
                 "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--dir", str(d), "--save", "", "--appendonly", "no",
                 "--repl-diskless-sync-delay", "0", "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        self.procs[port] = proc
                        self.ports.append(port)
                        return
                except OSError:
                    time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise RuntimeError("a cluster node did not start (ports taken?)")

    def cli(self, port: int, *args: str, timeout: float = 10) -> str:
        """``redis-cli -p <port> args...``; its output (raises on a non-zero exit)."""
        r = subprocess.run([self.cli_bin, "-p", str(port), *args], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {r.stderr}")
        return r.stdout

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def info(self, port: int, what: str = "cluster") -> dict[str, str]:
        """``CLUSTER INFO`` (what="cluster") or ``INFO <what>`` of a node, as a dict."""
        args = ["CLUSTER", "INFO"] if what == "cluster" else ["INFO", what]
        out = {}
        for line in self.cli(port, *args).splitlines():
            k, sep, v = line.strip().partition(":")
            if sep:
                out[k] = v
        return out

    def primaries(self) -> list[int]:
        """Ports of the primaries that serve slots now (as a live node sees them)."""
        nodes = self.cli(self.alive()[0], "CLUSTER", "NODES")
        out = []
        for line in nodes.splitlines():
            f = line.split()
            if len(f) > 8 and "master" in f[2] and "fail" not in f[2]:
                out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(out)

    def replica_of(self, primary: int) -> list[int]:
        """Ports of the replicas of a primary."""
        nodes = self.cli(self.alive()[0], "CLUSTER", "NODES").splitlines()
        pid = next(l.split()[0] for l in nodes
                   if l.split()[1].split("@")[0].endswith(f":{primary}"))
        return sorted(int(l.split()[1].split("@")[0].rsplit(":", 1)[1]) for l in nodes
                      if l.split()[3] == pid)

    def keys_by_primary(self, pattern: str = "*") -> dict[int, list[str]]:
        """Every key matching ``pattern``, by the primary that holds it (``--scan`` on each
        primary: a plain SCAN sees one node only)."""
        return {p: sorted(self.cli(p, "--scan", "--pattern", pattern).split())
                for p in self.primaries()}

    def wait_ok(self, timeout: float = 60) -> None:
        """Every live node: cluster_state ok, all slots served; every replica linked."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                ok = True
                replicas = 0
                for p in self.alive():
                    ci = self.info(p)
                    repl = self.info(p, "replication")
                    if ci.get("cluster_state") != "ok" or ci.get("cluster_slots_ok") != "16384" \
                            or int(ci.get("cluster_known_nodes", 0)) < self.total:
                        ok, last = False, f"{p}: {ci}"
                    elif repl.get("role") != "master":
                        replicas += 1
                        if repl.get("master_link_status") != "up":
                            ok, last = False, f"{p}: replica not linked"
                    # Roles travel by gossip: every node must see every replica as one.
                    seen = [ln for ln in self.cli(p, "CLUSTER", "NODES").splitlines()
                            if "slave" in ln.split()[2] and "fail" not in ln.split()[2]]
                    if len(seen) != len(self.alive()) - self.masters:
                        ok, last = False, f"{p} sees {len(seen)} replicas"
                if ok and len(self.primaries()) == self.masters \
                        and replicas == len(self.alive()) - self.masters:
                    return
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = str(e)
            time.sleep(0.05)
        raise TimeoutError(f"the cluster did not become ok: {last}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash, not a shutdown)."""
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def wait_failover(self, dead: int, timeout: float = 60) -> int:
        """After ``kill(dead)`` of a primary: wait until one of its replicas serves its slots
        and the cluster is ok again on every live node; the new primary's port."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                live = self.alive()
                prim = [p for p in self.primaries() if p in live]
                states = {p: self.info(p).get("cluster_state") for p in live}
                if len(prim) == self.masters and all(s == "ok" for s in states.values()):
                    new = [p for p in prim if p not in self.initial_primaries]
                    if new:
                        return new[0]
                last = f"primaries {prim}, states {states}"
            except (RuntimeError, subprocess.TimeoutExpired, StopIteration) as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"no failover of :{dead}: {last}")

    def url(self) -> str:
        """``redis+cluster://`` with the primaries the cluster was created with."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in
                                            self.initial_primaries)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "RedisCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Sentinel:
    """One ``redis-sentinel`` watching ``master_name`` (quorum, down-after and
    failover-timeout small enough that a failover fits in a test: a few seconds)."""

    def __init__(self, workdir: Path, master_name: str, master_port: int, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000):
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise FileNotFoundError("redis-sentinel not installed (make deps-apt)")
        self.port = free_port()
        self.dir = Path(workdir) / f"sentinel-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.master_name = master_name
        conf = self.dir / "sentinel.conf"   # Sentinel rewrites its config: a file of its own
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1", ""]))
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                resp_call(self.port, "PING", timeout=0.5)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-sentinel did not start on :{self.port}")
                time.sleep(0.02)

    def call(self, *args, timeout: float = 2.0):
        return resp_call(self.port, *args, timeout=timeout)

    def master_port(self) -> int:
        host, port = self.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def master_state(self) -> dict[str, str]:
        flat = self.call("SENTINEL", "MASTER", self.master_name)
        return dict(zip(flat[::2], flat[1::2]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SentinelGroup:
    """A master, ``replicas`` replicas and ``sentinels`` Sentinels (quorum 2) on loopback,
    ready when every Sentinel knows the others and every replica. Data nodes keep their
    directory across restarts (``appendonly`` as given). Everything is stopped on exit."""

    def __init__(self, workdir: Path, replicas: int = 1, sentinels: int = 3,
                 master_name: str = "tollgate", down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, appendonly: bool = False):
        self.dir = Path(workdir)
        self.master_name = master_name
        self.appendonly = appendonly
        self.nodes: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []
        try:
            first = RedisServer(self.dir / "node-0", appendonly=appendonly)
            self.nodes.append(first)
            first.wait_loaded()
            for i in range(replicas):
                self.nodes.append(RedisServer(self.dir / f"node-{i + 1}", appendonly=appendonly,
                                              replicaof=first.port))
            first.wait_replicas(replicas)
            for _ in range(sentinels):
                self.sentinels.append(Sentinel(self.dir, master_name, first.port,
                                               down_after_ms=down_after_ms,
                                               failover_timeout_ms=failover_timeout_ms))
            self.wait_sentinels_agree(replicas)
        except BaseException:
            self.stop()
            raise

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/{db}"

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master(self) -> RedisServer:
        """The node the Sentinels name as master."""
        return self.node(self.sentinels[0].master_port())

    def wait_sentinels_agree(self, replicas: int, timeout: float = 30.0) -> None:
        """Until every Sentinel knows the other Sentinels and ``replicas`` replicas (without
        that a failover may not be authorised, or may find no replica)."""
        deadline = time.monotonic() + timeout
        last = {}
        while True:
            try:
                states = [s.master_state() for s in self.sentinels]
                last = {s.port: (st.get("num-other-sentinels"), st.get("num-slaves"),
                                 st.get("flags")) for s, st in zip(self.sentinels, states)}
                if all(int(st["num-other-sentinels"]) >= len(self.sentinels) - 1
                       and int(st["num-slaves"]) >= replicas and st["flags"] == "master"
                       for st in states):
                    return
            except (OSError, RespError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Sentinels do not agree: {last}")
            time.sleep(0.1)

    def wait_failover(self, old_port: int, timeout: float = 60.0) -> RedisServer:
        """Until every live Sentinel names another master than ``old_port`` and that node
        says it is master; that node."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                ports = {s.master_port() for s in self.sentinels if s.proc.poll() is None}
                if len(ports) == 1 and old_port not in ports:
                    new = self.node(ports.pop())
                    if new.info().get("role") == "master":
                        return new
                last = f"Sentinels name {ports}"
            except (OSError, RespError, ValueError, StopIteration) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no failover away from :{old_port}: {last}")
            time.sleep(0.05)

    def restart_as_replica(self, node: RedisServer) -> None:
        """Start a stopped node again as a replica of the current master, as the chart's
        start script does: never as a master (an empty restarted master could otherwise
        be followed by its replicas and wipe them)."""
        node.replicaof = self.master().port
        node.start()

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> "SentinelGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
