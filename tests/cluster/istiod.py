"""A real istiod (pilot-discovery, built by `make deps-go` from the pinned istio.io/istio
module) against the suite's kube-apiserver.

istiod runs as a process on loopback with the suite's admin kubeconfig. Its configuration
comes from Istio's own Helm charts in the module (manifests/charts/istio-control/
istio-discovery and manifests/charts/base), rendered with Helm's SDK:

- the mesh config (ConfigMap `istio`) and the injection template and values (ConfigMap
  `istio-sidecar-injector`, keys `config` and `values`), which istiod reads from the API server;
- the injection and validation webhooks (MutatingWebhookConfiguration `istio-sidecar-injector`,
  ValidatingWebhookConfigurations `istio-validator-istio-system` and
  `istiod-default-validator`), rendered with Istio's URL values (`istiodRemote.injectionURL`,
  `base.validationURL`): clientConfig.url is https://127.0.0.1:<port>/inject and /validate.

istiod signs its serving certificate with its self-signed CA (PILOT_CERT_PROVIDER=istiod,
the `istio-ca-secret` it writes), for 127.0.0.1 too (ISTIOD_CUSTOM_HOST: an IP SAN), and
patches the CA into the webhooks' caBundle itself; its validation controller switches the
validating webhooks to failurePolicy Fail once a dry-run of an invalid object is refused.
The Deployment istiod's chart renders gives the environment and the flags (ports moved to
free loopback ports); no Deployment, Service or pod of istiod is created (no kubelet).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import requests
import yaml

from apiserver import Cluster, free_port
from clusterlib import CRD_SOURCES, HERE, docs_of, module_dir, tool

# The Istio module of the CRDs (clusterlib.CRD_SOURCES) is the one istiod is built from
# (tools/istio/go.mod; test_istiod.py checks they agree).
[ISTIO_MODULE] = [m for m in CRD_SOURCES if m.startswith("istio.io/istio@")]
TOOLS = HERE / "tools" / "istio"
NAMESPACE = "istio-system"
WEBHOOKS = {
    "MutatingWebhookConfiguration": ["istio-sidecar-injector"],
    "ValidatingWebhookConfiguration": ["istio-validator-istio-system", "istiod-default-validator"],
}


def istio_dir() -> Path:
    return module_dir(ISTIO_MODULE)


def istio_version() -> str:
    """The module's Istio version (its VERSION file, e.g. 1.31): what the proxy reports."""
    v = (istio_dir() / "VERSION").read_text().strip()
    return v if v.count(".") >= 2 else v + ".0"


@lru_cache(maxsize=None)
def go_program(name: str, outdir: str) -> str:
    """Build one of the Go programs of tests/cluster/tools/istio (the module that pins istiod):
    `go build -trimpath` as `make deps-go` builds pilot-discovery, so they share its cache."""
    out = Path(outdir) / name
    proc = subprocess.run(
        ["go", "build", "-trimpath", "-o", str(out), f"./{name}"],
        cwd=TOOLS, capture_output=True, text=True, timeout=3600,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    assert proc.returncode == 0, f"go build ./{name}: {proc.stderr[-4000:]}"
    return str(out)


def render_istio(https_port: int, cni: bool) -> list[dict]:
    """The objects istiod needs in the API server, from Istio's own charts."""
    import helm_python as helm

    url = f"https://127.0.0.1:{https_port}"
    base = helm.Chart.load(str(istio_dir() / "manifests/charts/base")).render(
        {"base": {"validationURL": f"{url}/validate"}, "global": {"istioNamespace": NAMESPACE}},
        name="istio-base", namespace=NAMESPACE, is_install=True)
    disc = helm.Chart.load(str(istio_dir() / "manifests/charts/istio-control/istio-discovery")).render(
        {"global": {"istioNamespace": NAMESPACE},
         "istiodRemote": {"injectionURL": f"{url}/inject"},
         "base": {"validationURL": f"{url}/validate"},
         # the CNI switch of the injection template (values `pilot.cni.enabled`)
         "pilot": {"cni": {"enabled": cni}}},
        name="istiod", namespace=NAMESPACE, is_install=True)
    return [d for d in docs_of(base) + docs_of(disc)
            if d["kind"] != "CustomResourceDefinition"]


def injector_configmap(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "istio-sidecar-injector")


@dataclass
class Istiod:
    cluster: Cluster
    proc: subprocess.Popen
    log: Path
    http: int
    https: int
    grpc: int
    docs: list[dict]

    def log_tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def set_cni(self, cni: bool) -> None:
        """Re-render the injector ConfigMap with the CNI switch and apply it (istiod watches it)."""
        cm = injector_configmap(render_istio(self.https, cni))
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=test",
                             "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(cm))


def _webhooks_ready(cluster: Cluster) -> tuple[bool, str]:
    """istiod has patched its CA into every webhook and the validating ones fail closed."""
    for kind, names in WEBHOOKS.items():
        for n in names:
            p = cluster.kubectl("get", kind, n, "-o", "json", check=False)
            if p.returncode != 0:
                return False, p.stderr
            for wh in json.loads(p.stdout)["webhooks"]:
                if not wh["clientConfig"].get("caBundle"):
                    return False, f"{kind}/{n} {wh['name']}: no caBundle yet"
                if kind.startswith("Validating") and wh.get("failurePolicy") != "Fail":
                    return False, f"{kind}/{n} {wh['name']}: failurePolicy {wh.get('failurePolicy')}"
    return True, ""


def start(cluster: Cluster, workdir: Path, cni: bool = True) -> Istiod:
    binary = tool("pilot-discovery")
    workdir.mkdir(parents=True, exist_ok=True)
    http, https, grpc, sgrpc, mon, ctrlz = (free_port() for _ in range(6))
    docs = render_istio(https, cni)
    wanted = [d for d in docs if d["kind"] in WEBHOOKS
              or (d["kind"] == "ConfigMap" and d["metadata"]["name"] in ("istio", "istio-sidecar-injector"))]
    assert len(wanted) == 5, [(d["kind"], d["metadata"]["name"]) for d in wanted]
    for d in wanted:
        if d["kind"] == "ConfigMap":
            d["metadata"]["namespace"] = NAMESPACE
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=test",
                    "-f", "-", input=yaml.safe_dump_all(wanted))

    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "istiod")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e and e["name"] != "KUBECONFIG"}
    env.update({
        "POD_NAME": "istiod-test", "POD_NAMESPACE": NAMESPACE, "SERVICE_ACCOUNT": "istiod",
        # the serving certificate also names 127.0.0.1 (an IP SAN): the webhooks' URL host
        "ISTIOD_CUSTOM_HOST": "127.0.0.1",
        "GOMAXPROCS": "2", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
    })
    assert env["REVISION"] == "default" and env["PILOT_CERT_PROVIDER"] == "istiod", env
    args = [a for a in c["args"] if not a.startswith("--monitoringAddr")]
    args += [f"--kubeconfig={cluster.kubeconfig}",
             f"--httpAddr=127.0.0.1:{http}", f"--httpsAddr=127.0.0.1:{https}",
             f"--grpcAddr=127.0.0.1:{grpc}", f"--secureGRPCAddr=127.0.0.1:{sgrpc}",
             f"--monitoringAddr=127.0.0.1:{mon}",
             "--ctrlz_address=127.0.0.1", f"--ctrlz_port={ctrlz}"]
    assert args[0] == "discovery" and "--domain" in args, args
    log = workdir / "istiod.log"
    # cwd: istiod looks for ./etc/cacerts, ./var/lib/istio/inject, ./etc/istio/config/mesh
    # relative to it; an empty directory makes it use the API server's ConfigMaps and its
    # self-signed CA.
    proc = subprocess.Popen([binary, *args], cwd=workdir, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    d = Istiod(cluster, proc, log, http, https, grpc, wanted)
    deadline = time.monotonic() + 300
    why = "not ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"istiod exited ({proc.returncode}): {d.log_tail()}")
        try:
            ready = requests.get(f"http://127.0.0.1:{http}/ready", timeout=2).ok
        except requests.RequestException:
            ready = False
        if ready:
            ok, why = _webhooks_ready(cluster)
            if ok:
                return d
        time.sleep(1)
    stop(d)
    raise AssertionError(f"istiod not ready after 300 s ({why}): {d.log_tail()}")


def stop(d: Istiod) -> None:
    """Remove the webhooks first (they fail closed: with istiod gone, the API server would
    refuse every Istio object and every pod of an injection namespace), then istiod."""
    for kind, names in WEBHOOKS.items():
        for n in names:
            d.cluster.kubectl("delete", kind, n, "--ignore-not-found", check=False)
    d.proc.terminate()
    try:
        d.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        d.proc.wait()


def root_cert(cluster: Cluster) -> bytes:
    """istiod's self-signed root, as it publishes it (ConfigMap istio-ca-root-cert)."""
    cm = json.loads(cluster.kubectl("get", "configmap", "istio-ca-root-cert", "-n", NAMESPACE,
                                    "-o", "json").stdout)
    return cm["data"]["root-cert.pem"].encode()


def ca_bundles(cluster: Cluster) -> dict[str, bytes]:
    out = {}
    for kind, names in WEBHOOKS.items():
        for n in names:
            for wh in json.loads(cluster.kubectl("get", kind, n, "-o", "json").stdout)["webhooks"]:
                out[f"{kind}/{n}/{wh['name']}"] = base64.b64decode(wh["clientConfig"]["caBundle"])
    return out

