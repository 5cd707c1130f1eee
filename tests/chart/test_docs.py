"""Docs that must follow the chart: the values reference and one runbook per alert."""

from __future__ import annotations

import re

import yaml

from chartlib import ALL_VARIANTS, CHART, ROOT, render_docs
from gen_values_doc import entries, render as render_values_doc


def test_values_reference_is_current():
    doc = (ROOT / "docs/chart-values.md").read_text()
    assert doc == render_values_doc(), "docs/chart-values.md is stale: python tests/chart/gen_values_doc.py > docs/chart-values.md"


def test_every_value_is_documented():
    documented = {k for k, _, _ in entries()}
    vals = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(d, prefix=()):
        for k, v in d.items():
            path = prefix + (k,)
            if ".".join(path) in documented:
                continue
            if isinstance(v, dict) and v:
                yield from leaves(v, path)
            else:
                yield ".".join(path)

    missing = list(leaves(vals))
    assert not missing, f"values without a `# --` description: {missing}"


def test_every_alert_has_a_runbook_section():
    runbooks = (ROOT / "docs/runbooks.md").read_text()
    sections = set(re.findall(r"^## (\S+)$", runbooks, re.M))
    alerts = set()
    for files in ALL_VARIANTS.values():
        for d in render_docs(files):
            if d["kind"] == "PrometheusRule":
                alerts |= {r["alert"] for g in d["spec"]["groups"] for r in g["rules"]}
    src = yaml.safe_load((CHART / "files/alerts/alerts.yaml").read_text())
    alerts |= {r["alert"] for g in src for r in g["rules"]}
    assert len(alerts) >= 20
    missing = alerts - sections
    assert not missing, f"alerts without a runbook section in docs/runbooks.md: {sorted(missing)}"
    for name in alerts:
        body = runbooks.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "**Diagnose:**" in body and "**Mitigate:**" in body, name


def test_install_guide_covers_helm_per_environment_and_argocd():
    text = (ROOT / "docs/install.md").read_text()
    for needle in ("values-staging.yaml", "values-production.yaml", "applicationset.yaml",
                   "edge.module.sha256", "helm test", "kubectl apply -k", "existingSecret"):
        assert needle in text, needle


def test_values_schema_is_current():
    from gen_values_schema import render as render_schema

    assert (CHART / "values.schema.json").read_text() == render_schema(), (
        "chart/values.schema.json is stale: python tests/chart/gen_values_schema.py"
    )
