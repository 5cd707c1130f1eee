"""plugin/filter/config.schema.json (for chart values) agrees with docs/filter.md and with
the configurations the end-to-end tests give the filter."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from harness.envoy import filter_config, issuer_entry
from harness.issuer import TestIssuer

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "plugin" / "filter" / "config.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_documented_examples_validate():
    doc = (REPO / "docs" / "filter.md").read_text()
    blocks = [b.split("```")[0] for b in doc.split("```json")[1:]]
    assert len(blocks) >= 2
    for b in blocks[:2]:
        VALIDATOR.validate(json.loads(b))


def test_test_configs_validate():
    import test_filter_jwt

    iss = TestIssuer()
    try:
        VALIDATOR.validate(test_filter_jwt.gateway_config(iss))
    finally:
        iss.stop()


@pytest.mark.parametrize("bad", [
    {},
    {"issuers": []},
    {"issuers": [issuer_entry("i", "c", algorithms=["HS256"])]},
    {"issuers": [issuer_entry("i", "c", algorithms=["none"])]},
    {"issuers": [issuer_entry("i", "c")], "cache_size": 1},
    {"issuers": [issuer_entry("i", "c")], "jwks_wait": {"status": 500}},
    {"issuers": [issuer_entry("i", "c")], "headers": {"sub": "bad header"}},
    filter_config([issuer_entry("i", "c")], token_sources=[{"form": {"name": "x"}}]),
    filter_config([issuer_entry("i", "c")], dpop={"iat_window_s": 0}),
    filter_config([issuer_entry("i", "c")], dpop={"nonce": True}),
    filter_config([issuer_entry("i", "c")], rules=[{"path_prefix": "/", "require": "mtls"}]),
])
def test_schema_refuses_what_the_filter_refuses(bad):
    assert list(VALIDATOR.iter_errors(bad)), bad
