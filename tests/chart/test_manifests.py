"""Every rendered object is valid against its schema (core kinds: kubernetes-validate
--strict; custom resources: the CRD JSON schemas), and checkov finds nothing unjustified."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chartlib import ALL_VARIANTS, ROOT, render_docs
from validation import is_custom, validate_core, validate_custom

VENV_BIN = Path(sys.executable).parent


def test_core_objects_strict(variant_docs):
    core = [d for d in variant_docs if not is_custom(d)]
    assert core
    for d in core:
        validate_core(d)


def test_custom_resources_against_crd_schemas(variant_docs):
    custom = [d for d in variant_docs if is_custom(d)]
    assert custom, "every variant attaches the filter, so it renders at least one custom resource"
    for d in custom:
        validate_custom(d)


def test_strict_validation_catches_a_typo():
    """The validators are not vacuous: an unknown field fails both."""
    docs = render_docs([])
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        validate_core(dep)
    ef = copy.deepcopy(next(d for d in docs if d["kind"] == "EnvoyFilter"))
    ef["spec"]["configPatches"][1]["match"]["context"] = "EVERYWHERE"
    with pytest.raises((AssertionError, pytest.skip.Exception)):
        validate_custom(ef)


def _write_rendered(tmp: Path, docs: list[dict]) -> None:
    for i, d in enumerate(docs):
        (tmp / f"{i:03d}-{d['kind'].lower()}-{d['metadata']['name']}.yaml").write_text(
            yaml.safe_dump(d, sort_keys=False)
        )


def _checkov(dirpath: Path) -> dict:
    exe = VENV_BIN / "checkov"
    if not exe.exists():
        exe = Path(shutil.which("checkov") or "checkov")
    proc = subprocess.run(
        [str(exe), "-d", str(dirpath), "--framework", "kubernetes", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout.strip()
    assert out, f"checkov printed nothing (rc={proc.returncode}): {proc.stderr[-2000:]}"
    data = json.loads(out)
    if isinstance(data, list):
        data = data[0]
    return data


@pytest.fixture(scope="module")
def checkov_all(tmp_path_factory) -> dict:
    """One checkov run over every variant (one sub-directory each): checkov's start-up
    dominates its run time."""
    root = tmp_path_factory.mktemp("checkov")
    for name, files in ALL_VARIANTS.items():
        d = root / name.replace("/", "-")
        d.mkdir()
        _write_rendered(d, render_docs(files))
    return {"root": root, "data": _checkov(root)}


@pytest.mark.parametrize("variant_name", sorted(ALL_VARIANTS), ids=lambda v: v.replace("/", "-"))
def test_checkov_no_failed_checks(checkov_all, variant_name):
    data = checkov_all["data"]
    sub = "/" + variant_name.replace("/", "-") + "/"
    results = data.get("results") or {}
    mine = lambda lst: [r for r in (lst or []) if sub in r.get("file_path", "")]  # noqa: E731
    failed = mine(results.get("failed_checks"))
    assert not failed, "\n".join(f"{f['check_id']} {f['check_name']} in {f['resource']}" for f in failed)
    assert len(mine(results.get("passed_checks"))) > 50, "checkov ran too few checks on this variant"
    # Every suppression carries its justification inline in the chart.
    for s in mine(results.get("skipped_checks")):
        reason = (s.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{s['check_id']} on {s['resource']} is skipped without a reason"


def test_checkov_fails_a_privileged_pod(tmp_path):
    """checkov is really evaluating our objects: a privileged variant of our pod fails."""
    docs = render_docs([])
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    _write_rendered(tmp_path, [dep])
    data = _checkov(tmp_path)
    failed = {f["check_id"] for f in (data.get("results") or {}).get("failed_checks") or []}
    assert "CKV_K8S_16" in failed, failed


def test_hpa_managed_replicas_are_ignored_by_argocd():
    app = yaml.safe_load((ROOT / "argocd/applicationset.yaml").read_text())
    ign = app["spec"]["template"]["spec"]["ignoreDifferences"]
    assert any(i["kind"] == "Deployment" and "/spec/replicas" in i.get("jsonPointers", []) for i in ign)
