"""kube-score and kubeconform (both built from the Go module proxy by `make deps-go`) on the
render of every environment the ApplicationSet deploys, and kubeconform on k8s/ and argocd/.

kube-score: no CRITICAL grade. Every check we do not follow is listed in KUBE_SCORE_ACCEPTED
below with its reason, and scoped to the objects it concerns.
kubeconform: -strict, core kinds against Kubernetes 1.37's schemas (the ones
kubernetes-validate ships, made standalone), custom resources against the openAPIV3Schema of
the real CRDs from the Istio, Argo CD, Prometheus Operator and cert-manager modules.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from clusterlib import ARGOCD, ENV_FILES, K8S, argocd_values, crd_docs, kustomize_docs, tool
from chartlib import all_containers, docs_of, pod_templates, render

# The one place where kube-score checks are accepted, each with the objects it applies to
# (kind/name; "*" = every object) and why.
KUBE_SCORE_ACCEPTED = {
    "container-ephemeral-storage-request-and-limit": (
        "*",
        "every container runs with readOnlyRootFilesystem and writes only to emptyDir "
        "volumes that carry a sizeLimit (asserted by "
        "test_ephemeral_storage_is_bounded_without_requests), so a pod's local storage is "
        "bounded by the kubelet's emptyDir eviction; logs go to stdout and are rotated by "
        "the kubelet.",
    ),
    "pod-probes-identical": (
        "StatefulSet/tollgate-redis",
        "the redis_exporter sidecar's /health answers as long as the exporter process "
        "serves HTTP, independent of Redis: failing it means the process is wedged, for "
        "which a restart is the right answer whether liveness or readiness sees it first. "
        "The redis container's own probes differ (TCP liveness, PING readiness).",
    ),
}

CRITICAL = 1  # kube-score's grade numbers: 1 critical, 5 warning, 7 almost OK, 10 OK


def env_docs(env: str) -> list[dict]:
    return docs_of(render(argocd_values(env)))


def _kube_score(docs: list[dict], tmp: Path) -> list[dict]:
    f = tmp / "all.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [tool("kube-score"), "score", str(f), "--output-format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.stdout.strip(), f"kube-score printed nothing (rc={proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def _criticals(report: list[dict]) -> list[tuple[str, str, str]]:
    out = []
    for obj in report:
        kind_name = f"{obj['type_meta']['kind']}/{obj['object_meta']['name']}"
        for c in obj["checks"] or []:
            if c["skipped"] or c["grade"] != CRITICAL:
                continue
            msgs = "; ".join(
                f"({x.get('path', '')}) {x['summary']}" for x in (c.get("comments") or [])
            )
            out.append((c["check"]["id"], kind_name, msgs))
    return out


def _accepted(check_id: str, kind_name: str) -> bool:
    scope = KUBE_SCORE_ACCEPTED.get(check_id, (None,))[0]
    return scope == "*" or scope == kind_name


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_kube_score_no_critical(env, tmp_path):
    report = _kube_score(env_docs(env), tmp_path)
    assert len(report) > 10, "kube-score scored too few objects"
    bad = [c for c in _criticals(report) if not _accepted(c[0], c[1])]
    assert not bad, "\n".join(f"[CRITICAL] {i} {o}: {m}" for i, o, m in bad)


def test_kube_score_flags_a_critical(tmp_path):
    """kube-score is really scoring our objects: a privileged copy of the auth server fails."""
    docs = env_docs("production")
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    found = _criticals(_kube_score([dep], tmp_path))
    assert ("container-security-context-privileged", f"Deployment/{dep['metadata']['name']}") in {
        (i, o) for i, o, _ in found
    }


def test_kube_score_accepted_checks_are_real_ids():
    proc = subprocess.run([tool("kube-score"), "list"], capture_output=True, text=True, timeout=60)
    ids = {line.split(",")[0] for line in proc.stdout.splitlines()}
    assert set(KUBE_SCORE_ACCEPTED) <= ids, set(KUBE_SCORE_ACCEPTED) - ids


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_ephemeral_storage_is_bounded_without_requests(env):
    """The justification of the accepted ephemeral-storage check holds."""
    for d in env_docs(env):
        for _meta, spec in pod_templates(d):
            for c in all_containers(spec):
                assert (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is True, (
                    d["kind"], d["metadata"]["name"], c["name"])
            for v in spec.get("volumes") or []:
                if "emptyDir" in v:
                    assert (v["emptyDir"] or {}).get("sizeLimit"), (
                        d["kind"], d["metadata"]["name"], v["name"])


# ---------------------------------------------------------------- kubeconform

def _strict(schema):
    """additionalProperties: false wherever a CRD schema lists properties and does not keep
    unknown fields (what kubeconform's openapi2jsonschema does for -strict)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schemas")
    # Core kinds: kubernetes-validate's 1.37 strict schemas, each made standalone (its
    # definitions inlined under $defs), since kubeconform does not follow its /api/ refs.
    kv = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema/v1.37.0-local-strict"
    defs = json.loads((kv / "_definitions.json").read_text())["$defs"]
    core = root / "core"
    core.mkdir()
    # Only the kinds validated here: each standalone file carries every definition.
    docs = [d for env in ENV_FILES for d in env_docs(env)] + _k8s_argocd_docs()
    names = set()
    for d in docs:
        group, _, version = d["apiVersion"].rpartition("/")
        suffix = "-".join(p for p in (group.split(".")[0], version) if p)
        names.add(f"{d['kind'].lower()}-{suffix}.json")
    for name in sorted(names):
        f = kv / name
        if not f.is_file():
            continue  # a custom resource: its schema comes from the CRDs below
        s = json.loads(f.read_text().replace('"/api/_definitions.json#', '"#'))
        s["$defs"] = defs
        (core / f.name).write_text(json.dumps(s))
    # Custom resources: the real CRDs.
    for crd in crd_docs():
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"].lower()
        (root / group).mkdir(exist_ok=True)
        for v in crd["spec"]["versions"]:
            schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
            # The API server serves apiVersion, kind and metadata on every custom resource,
            # whether or not the CRD's schema lists them (Istio's do not).
            props = schema.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props.setdefault("metadata", {"type": "object"})
            schema = _strict(schema)
            (root / group / f"{kind}_{v['name']}.json").write_text(json.dumps(schema))
    return root


def _kubeconform(schema_dir: Path, docs: list[dict], tmp: Path) -> subprocess.CompletedProcess:
    f = tmp / "all.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [
            tool("kubeconform"), "-strict", "-summary", "-output", "text",
            "-schema-location", f"{schema_dir}/core/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            "-schema-location",
            f"{schema_dir}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
            str(f),
        ],
        capture_output=True, text=True, timeout=300,
    )


def _k8s_argocd_docs(overlay: str | None = None) -> list[dict]:
    docs = []
    for o in [overlay] if overlay else ["dev", "staging", "production"]:
        docs += [d for d in kustomize_docs(K8S / "overlays" / o) if d["kind"] != "Kustomization"]
    for f in sorted(ARGOCD.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_kubeconform_strict_chart(schema_dir, env, tmp_path):
    docs = env_docs(env)
    proc = _kubeconform(schema_dir, docs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(docs)}," in proc.stdout, proc.stdout


@pytest.mark.parametrize("overlay", ["dev", "staging", "production"])
def test_kubeconform_strict_k8s_and_argocd(schema_dir, overlay, tmp_path):
    docs = _k8s_argocd_docs(overlay)
    proc = _kubeconform(schema_dir, docs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(docs)}," in proc.stdout, proc.stdout


def test_kubeconform_refuses_unknown_fields(schema_dir, tmp_path):
    """Strict for core kinds and for custom resources alike."""
    docs = env_docs("production")
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    custom = copy.deepcopy(next(d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin")))
    custom["spec"]["selectorr"] = {}
    for bad, word in ((dep, "imagePullPolicyy"), (custom, "selectorr")):
        proc = _kubeconform(schema_dir, [bad], tmp_path)
        assert proc.returncode != 0 and word in proc.stdout, proc.stdout
