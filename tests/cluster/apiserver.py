"""etcd + kube-apiserver on loopback, with generated certificates, Pod Security admission on,
RBAC with an admin client certificate (group system:masters), and the real CRDs applied.

There is no kubelet and no controller manager: objects are stored, validated and admitted,
but no pod ever starts, no Job completes and no namespace finalizes its deletion.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from clusterlib import crd_docs, kubectl_bin, tool

ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,"
    "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(subject: str, key, issuer_cert, issuer_key, *, ca=False, org=None, sans=(), client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        alt = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@dataclass
class Cluster:
    url: str
    dir: Path
    kubeconfig: Path
    ca: Path
    client_cert: Path
    client_key: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [kubectl_bin(), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}"
        return proc

    def get(self, path: str) -> requests.Response:
        return requests.get(
            self.url + path, cert=(str(self.client_cert), str(self.client_key)),
            verify=str(self.ca), timeout=30,
        )

    def namespace(self, name: str, labels: dict | None = None) -> None:
        """A namespace with its `default` ServiceAccount (which the controller manager,
        absent here, would create)."""
        ns = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": name, "labels": labels or {}}}
        sa = {"apiVersion": "v1", "kind": "ServiceAccount",
              "metadata": {"name": "default", "namespace": name}}
        self.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-",
                     input=yaml.safe_dump_all([ns, sa]))


def _wait(url_check, what: str, proc: subprocess.Popen, log: Path, seconds: int = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}): {log.read_text()[-4000:]}")
        try:
            if url_check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {seconds} s: {log.read_text()[-4000:]}")


def start(workdir: Path) -> tuple[Cluster, list[subprocess.Popen]]:
    etcd_bin, apiserver_bin = tool("etcd"), tool("kube-apiserver")
    d = workdir
    d.mkdir(parents=True, exist_ok=True)

    # --- certificates: one CA, the API server's serving cert, an admin client cert, the
    # service-account signing key.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("tollgate-test-ca", ca_key, None, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("kube-apiserver", srv_key, ca, ca_key,
                sans=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"))
    adm_key = ec.generate_private_key(ec.SECP256R1())
    adm = _cert("tollgate-test-admin", adm_key, ca, ca_key, org="system:masters", client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "apiserver.crt": srv.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(srv_key),
        "admin.crt": adm.public_bytes(serialization.Encoding.PEM),
        "admin.key": _pem_key(adm_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for n, b in files.items():
        (d / n).write_bytes(b)
        (d / n).chmod(0o600)

    procs: list[subprocess.Popen] = []
    client_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_log = d / "etcd.log"
    etcd = subprocess.Popen(
        [etcd_bin, "--name", "tg", "--data-dir", str(d / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"tg=http://127.0.0.1:{peer_port}",
         "--unsafe-no-fsync", "--log-level", "warn"],
        stdout=etcd_log.open("w"), stderr=subprocess.STDOUT,
    )
    procs.append(etcd)
    _wait(lambda: requests.get(f"http://127.0.0.1:{client_port}/health", timeout=2).ok,
          "etcd", etcd, etcd_log)

    api_log = d / "kube-apiserver.log"
    api = subprocess.Popen(
        [apiserver_bin,
         f"--etcd-servers=http://127.0.0.1:{client_port}",
         "--bind-address=127.0.0.1", f"--secure-port={api_port}",
         "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
         f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
         f"--client-ca-file={d / 'ca.crt'}",
         "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
         f"--service-account-key-file={d / 'sa.pub'}",
         f"--service-account-signing-key-file={d / 'sa.key'}",
         "--service-cluster-ip-range=10.96.0.0/16",
         "--authorization-mode=RBAC",
         f"--enable-admission-plugins={ADMISSION_PLUGINS}",
         # privileged containers are allowed by the server: Pod Security admission, not
         # this flag, is what must refuse them in a restricted namespace
         "--allow-privileged=true",
         "--profiling=false"],
        stdout=api_log.open("w"), stderr=subprocess.STDOUT,
    )
    procs.append(api)
    url = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(url, d, d / "kubeconfig", d / "ca.crt", d / "admin.crt", d / "admin.key")
    _wait(lambda: cluster.get("/readyz").ok, "kube-apiserver", api, api_log)

    cluster.kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": url, "certificate-authority": str(cluster.ca)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(cluster.client_cert),
            "client-key": str(cluster.client_key)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
    }))
    cluster.kubeconfig.chmod(0o600)

    # --- the real CRDs, server-side applied, then Established
    crds = d / "crds.yaml"
    crds.write_text(yaml.safe_dump_all(list(crd_docs())))
    cluster.kubectl("apply", "--server-side", "--field-manager=test", "-f", str(crds))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=180s")
    return cluster, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def resources(cluster: Cluster) -> set[str]:
    """`group/version/Kind` of every resource the API server serves, in every version."""
    out = set()
    disc = json.loads(cluster.kubectl("get", "--raw", "/apis").stdout)
    for g in disc["groups"]:
        for v in g["versions"]:
            gv = v["groupVersion"]
            for r in json.loads(cluster.kubectl("get", "--raw", f"/apis/{gv}").stdout)["resources"]:
                out.add(f"{gv}/{r['kind']}")
    return out


