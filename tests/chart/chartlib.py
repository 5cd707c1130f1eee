"""Shared helpers for the chart / GitOps / bootstrap tests.

Everything is rendered with Helm's own SDK (PyPI `helm-python-sdk`), offline. Renders are
cached per (values files, overrides) so the suites share the work.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "chart"
ARGOCD = ROOT / "argocd"
K8S = ROOT / "k8s"
RELEASE = "tollgate"
NAMESPACE = "tollgate"
KUBE_VERSION = "1.30.0"

# The environments the chart ships, and the CI values of chart/ci/.
ENV_FILES = {
    "dev": [],
    "staging": ["values-staging.yaml"],
    "production": ["values-production.yaml"],
}
CI_FILES = {f"ci/{p.name}": [f"ci/{p.name}"] for p in sorted((CHART / "ci").glob("*.yaml"))}
ALL_VARIANTS = {**ENV_FILES, **CI_FILES}

FILTER_WASM = Path(
    os.environ.get("FILTER_WASM", ROOT / "target/wasm32-wasip1/release/tollgate_filter.wasm")
)


def module_sha256() -> str:
    """sha256 of the built filter module when it exists, else of a fixed marker."""
    if FILTER_WASM.is_file():
        return hashlib.sha256(FILTER_WASM.read_bytes()).hexdigest()
    return hashlib.sha256(b"tollgate-filter-not-built").hexdigest()


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def values_for(files: list[str], overrides: dict | None = None) -> dict:
    """User-supplied values: the environment files merged in order, then overrides. The
    module's pins are the chart's own (edge.module.pins, those of the built module)."""
    vals: dict = {}
    for f in files:
        vals = deep_merge(vals, yaml.safe_load((CHART / f).read_text()) or {})
    if overrides:
        vals = deep_merge(vals, overrides)
    return vals


@lru_cache(maxsize=None)
def _render_cached(key: str, name: str = RELEASE, namespace: str = NAMESPACE) -> tuple[tuple[str, str], ...]:
    import helm_python as helm

    vals = json.loads(key)
    out = helm.Chart.load(str(CHART)).render(
        vals, name=name, namespace=namespace, is_install=True
    )
    return tuple(sorted(out.items()))


def render(values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """`helm template` (no cluster: `lookup` is empty), as Argo CD renders."""
    return dict(_render_cached(json.dumps(values, sort_keys=True), name, namespace))


def docs_of(rendered: dict[str, str], include_tests: bool = True) -> list[dict]:
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        if not include_tests and "/templates/tests/" in path:
            continue
        for d in yaml.safe_load_all(text):
            if d:
                d.setdefault("metadata", {})
                docs.append(d)
    return docs


def render_docs(files: list[str], overrides: dict | None = None) -> list[dict]:
    return docs_of(render(values_for(files, overrides)))


def pod_templates(doc: dict) -> list[tuple[dict, dict]]:
    """(pod metadata, pod spec) of every pod a workload creates."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return [(doc["metadata"], spec)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        t = spec["template"]
        return [(t.get("metadata") or {}, t["spec"])]
    if kind == "CronJob":
        t = spec["jobTemplate"]["spec"]["template"]
        return [(t.get("metadata") or {}, t["spec"])]
    return []


def all_containers(pod_spec: dict) -> list[dict]:
    return (
        list(pod_spec.get("initContainers") or [])
        + list(pod_spec.get("containers") or [])
        + list(pod_spec.get("ephemeralContainers") or [])
    )


@pytest.fixture(params=sorted(ALL_VARIANTS), ids=lambda v: v.replace("/", "-"))
def variant(request) -> str:
    return request.param


@pytest.fixture
def variant_docs(variant) -> list[dict]:
    return render_docs(ALL_VARIANTS[variant])


def crd_schema_dir() -> Path | None:
    p = Path(os.environ.get("TOLLGATE_CRD_SCHEMAS", ROOT.parent / "shared/schemas/crds"))
    return p if p.is_dir() else None
