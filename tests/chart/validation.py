"""Schema validation shared by the chart and GitOps tests: kubernetes-validate (--strict)
for core kinds, the offline CRD JSON schemas for custom resources."""

from __future__ import annotations

import json
from functools import lru_cache

import jsonschema
import kubernetes_validate
import pytest

from chartlib import KUBE_VERSION, crd_schema_dir

CUSTOM_GROUPS = {
    "networking.istio.io",
    "security.istio.io",
    "extensions.istio.io",
    "argoproj.io",
    "monitoring.coreos.com",
    "cert-manager.io",
    "bitnami.com",
    "external-secrets.io",
}


def is_custom(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def validate_core(doc: dict) -> None:
    """Raise with the offending path when a core object does not match its schema."""
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata'].get('name')}: {e.message} at {where}"
        ) from None


@lru_cache(maxsize=None)
def _crd_validator(group: str, kind: str, version: str):
    base = crd_schema_dir()
    if base is None:
        return None
    path = base / group / f"{kind.lower()}_{version}.json"
    if not path.is_file():
        raise AssertionError(f"no schema for {group}/{version} {kind} at {path}")
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate_custom(doc: dict) -> None:
    if crd_schema_dir() is None:
        pytest.skip(
            "custom resource schemas not found: set TOLLGATE_CRD_SCHEMAS or provide "
            "../shared/schemas/crds/ (see shared/schemas/README.md)"
        )
    group, version = doc["apiVersion"].split("/")
    v = _crd_validator(group, doc["kind"], version)
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        msg = "; ".join(f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5])
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')}: {msg}")


def validate_any(doc: dict) -> None:
    if is_custom(doc):
        validate_custom(doc)
    else:
        validate_core(doc)
