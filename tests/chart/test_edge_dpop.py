"""Issue 14: DPoP (RFC 9449) at the edge, turned on per route from chart values. The rules
and the `dpop` settings reach the filter's configuration in both attachment modes, and
values.schema.json holds them to the filter's own configuration schema, so that a typo
fails `helm install` instead of the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest

from chartlib import docs_of, render, values_for
from test_edge_identity import edge_cr, filter_config

FILTER_SCHEMA = jsonschema.Draft202012Validator(json.loads(
    (Path(__file__).resolve().parents[2] / "plugin/filter/config.schema.json").read_text()))

BOUND_ROUTE = {"name": "payments", "path_prefix": "/payments/", "scopes": ["payments:write"],
               "require": "sender_constrained"}
DPOP = {"iat_window_s": 30, "scheme_header": "x-forwarded-proto", "replay_shards": 2048}


def config(overrides: dict) -> dict:
    return filter_config(edge_cr(docs_of(render(values_for([], overrides)))))


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_a_route_requires_sender_constrained_tokens(kind):
    cfg = config({"edge": {"kind": kind, "rules": [BOUND_ROUTE], "dpop": DPOP}})
    assert BOUND_ROUTE in cfg["rules"]
    assert cfg["dpop"] == DPOP
    FILTER_SCHEMA.validate(cfg)  # what the filter itself accepts


def test_no_dpop_settings_by_default():
    cfg = config({})
    assert "dpop" not in cfg
    assert not any(r.get("require") for r in cfg["rules"])
    FILTER_SCHEMA.validate(cfg)


@pytest.mark.parametrize("edge,needle", [
    ({"rules": [{**BOUND_ROUTE, "require": "sender-constrained"}]}, "/edge/rules/0/require"),
    ({"rules": [{**BOUND_ROUTE, "requires": "sender_constrained"}]}, "'requires' not allowed"),
    ({"dpop": {"iat_window_s": 0}}, "/edge/dpop/iat_window_s"),
    ({"dpop": {"iat_window_s": 601}}, "/edge/dpop/iat_window_s"),
    ({"dpop": {"nonce": True}}, "/edge/dpop/nonce"),
    ({"dpop": {"nonce": {"secret": "inline"}}}, "/edge/dpop/nonce"),
    ({"dpop": {"scheme_header": "x forwarded proto"}}, "/edge/dpop/scheme_header"),
])
def test_schema_rejects_what_the_filter_would(edge, needle):
    with pytest.raises(helm.HelmValuesError) as e:
        render(values_for([], {"edge": edge}))
    assert needle in str(e.value)


def authserver_env(ds):
    [dep] = [d for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("authserver")]
    [c] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "authserver"]
    return {e["name"]: e.get("value") for e in c["env"]}


def test_certificate_bound_tokens_from_the_mesh():
    """RFC 8705: off by default; on, the auth server reads its sidecar's XFCC, so the chart
    refuses it without sidecar injection; routes demand it with require: sender_constrained."""
    assert authserver_env(docs_of(render(values_for([], {}))))["TOLLGATE_CERT_BOUND_TOKENS"] == "false"
    ds = docs_of(render(values_for([], {"authserver": {"certBoundTokens": True},
                                        "edge": {"rules": [BOUND_ROUTE]}})))
    assert authserver_env(ds)["TOLLGATE_CERT_BOUND_TOKENS"] == "true"
    assert BOUND_ROUTE in filter_config(edge_cr(ds))["rules"]
    with pytest.raises(helm.HelmError, match="certBoundTokens needs mesh.sidecarInjection"):
        render(values_for([], {"authserver": {"certBoundTokens": True},
                               "mesh": {"sidecarInjection": False},
                               "edge": {"authServer": {"credentials": "secret",
                                                       "secretRef": {"name": "gw"}}}}))
