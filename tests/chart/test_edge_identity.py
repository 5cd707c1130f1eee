"""Issue 11 defect 7: the edge features (revocation, the auth server for leases) are on by
default and deployable with no secret in any CR. The gateways authenticate to /edge/* by
their mesh identity (an AuthorizationPolicy + TOLLGATE_EDGE_TRUSTED_PRINCIPALS), or with a
client whose secret the gateway's proxy reads from its environment."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest

from chartlib import docs_of, render, values_for

GW = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
SECRET = {"edge": {"authServer": {"credentials": "secret",
                                  "secretRef": {"name": "gw-client", "key": "client-secret"}}}}


def docs(overrides: dict | None = None) -> list[dict]:
    return docs_of(render(values_for([], overrides)))


def edge_cr(ds: list[dict]) -> dict:
    [cr] = [d for d in ds if d["kind"] in ("EnvoyFilter", "WasmPlugin")]
    return cr


def filter_config(cr: dict) -> dict:
    if cr["kind"] == "WasmPlugin":
        return cr["spec"]["pluginConfig"]
    [ext] = [p for p in cr["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
    return json.loads(ext["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])


def authserver_env(ds: list[dict]) -> dict:
    [dep] = [d for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("authserver")]
    [c] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "authserver"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def secret_like(ds: list[dict]) -> list[str]:
    """Strings in the Istio CRs that look like credentials: a client_secret key, a Basic
    header, or a long random-looking token."""
    found = []

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                if re.search(r"secret(?!_env)|password|token", str(k), re.I) and k not in (
                        "client_secret_env", "token_sources"):
                    found.append(f"{path}.{k}")
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        elif isinstance(v, str):
            if v.startswith("{"):
                try:
                    walk(json.loads(v), path + "<json>")
                except ValueError:
                    pass
            if re.search(r"Basic [A-Za-z0-9+/=]{8,}", v):
                found.append(path)
    for d in ds:
        if d["apiVersion"].split("/")[0].endswith("istio.io"):
            walk(d, f'{d["kind"]}/{d["metadata"]["name"]}')
    return found


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_edge_features_on_by_default_by_mesh_identity(kind):
    ds = docs({"edge": {"kind": kind}})
    cr = edge_cr(ds)
    cfg = filter_config(cr)
    assert cfg["auth_server"] == {
        "cluster": "outbound|9080||tollgate-authserver.tollgate.svc.cluster.local",
        "authority": "tollgate-authserver.tollgate.svc.cluster.local:9080",
        "timeout_ms": 2000,
    }
    assert cfg["revocation"] == {"poll_interval_ms": 1000}
    assert secret_like(ds) == []
    assert "vmConfig" not in cr["spec"]
    assert authserver_env(ds)["TOLLGATE_EDGE_TRUSTED_PRINCIPALS"] == GW


def test_cluster_name_is_istios_outbound_format():
    """pilot/pkg/model/service.go BuildSubsetKey: direction|port|subset|hostname."""
    ds = docs({"clusterDomain": "corp.example", "authserver": {"service": {"port": 9000}}})
    cfg = filter_config(edge_cr(ds))
    assert cfg["auth_server"]["cluster"] == "outbound|9000||tollgate-authserver.tollgate.svc.corp.example"
    assert cfg["issuers"][0]["jwks"]["cluster"] == cfg["auth_server"]["cluster"]


def test_authorization_policy_denies_edge_paths_to_everyone_but_the_gateways():
    ds = docs({"mesh": {"trustDomain": "td.example"}, "edge": {"gatewayServiceAccount": "gw-sa"}})
    [ap] = [d for d in ds if d["kind"] == "AuthorizationPolicy"]
    assert ap["apiVersion"] == "security.istio.io/v1"
    assert ap["spec"]["action"] == "DENY", "an ALLOW policy would deny every path it does not list"
    [rule] = ap["spec"]["rules"]
    assert rule == {
        "from": [{"source": {"notPrincipals": ["td.example/ns/istio-system/sa/gw-sa"]}}],
        "to": [{"operation": {"paths": ["/edge/revocations", "/edge/ratelimit/*"]}}],
    }
    # The policy selects the auth server pods (and only them).
    [dep] = [d for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("authserver")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in ap["spec"]["selector"]["matchLabels"].items())
    assert ap["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "authserver"
    # The auth server trusts the same identity, with its scheme.
    assert authserver_env(ds)["TOLLGATE_EDGE_TRUSTED_PRINCIPALS"] == "spiffe://td.example/ns/istio-system/sa/gw-sa"
    # Explicit principals.
    two = ["spiffe://td/ns/a/sa/gw", "spiffe://td/ns/b/sa/gw"]
    ds = docs({"edge": {"gatewayPrincipals": two}})
    [ap] = [d for d in ds if d["kind"] == "AuthorizationPolicy"]
    assert ap["spec"]["rules"][0]["from"][0]["source"]["notPrincipals"] == ["td/ns/a/sa/gw", "td/ns/b/sa/gw"]
    assert authserver_env(ds)["TOLLGATE_EDGE_TRUSTED_PRINCIPALS"] == ",".join(two)
    for bad in ["gw", "spiffe://td", "spiffe://td/ns/a;URI=x", "spiffe://td/a b"]:
        with pytest.raises(helm.HelmError, match="not a SPIFFE ID"):
            docs({"edge": {"gatewayPrincipals": [bad]}})


def test_mesh_identity_without_a_sidecar_is_refused():
    with pytest.raises(helm.HelmError, match="needs mesh.sidecarInjection"):
        docs({"mesh": {"sidecarInjection": False}, "namespace": {"podSecurityLevel": "restricted"}})
    with pytest.raises(helm.HelmError, match="meshIdentity or secret"):
        docs({"edge": {"authServer": {"credentials": "inline"}}})
    with pytest.raises(helm.HelmError, match="secretRef.name"):
        docs({"edge": {"authServer": {"credentials": "secret"}}})


@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
def test_secret_mode_reads_the_secret_from_the_proxy_environment(kind):
    ds = docs({**SECRET, "edge": {**SECRET["edge"], "kind": kind}})
    cr = edge_cr(ds)
    cfg = filter_config(cr)
    assert cfg["auth_server"]["client_id"] == "tollgate-edge-gateway"
    assert cfg["auth_server"]["client_secret_env"] == "EDGE_FILTER_CLIENT_SECRET"
    assert "client_secret" not in cfg["auth_server"]
    if kind == "wasmPlugin":
        assert cr["spec"]["vmConfig"] == {"env": [{"name": "EDGE_FILTER_CLIENT_SECRET", "valueFrom": "HOST"}]}
    else:
        [ext] = [p for p in cr["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
        vm = ext["patch"]["value"]["typed_config"]["config"]["vm_config"]
        assert vm["environment_variables"] == {"host_env_keys": ["EDGE_FILTER_CLIENT_SECRET"]}
    assert secret_like(ds) == []
    # No mesh-identity trust on the auth server; the DENY policy still keeps /edge/* to the
    # gateways (they still come over mTLS with their identity).
    assert "TOLLGATE_EDGE_TRUSTED_PRINCIPALS" not in authserver_env(ds)
    assert [d for d in ds if d["kind"] == "AuthorizationPolicy"]
    # The init Job seeds the gateways' client from the Secret.
    [cm] = [d for d in ds if d["kind"] == "ConfigMap" and "seed.yaml" in d.get("data", {})]
    import yaml
    seed = yaml.safe_load(cm["data"]["seed.yaml"])
    [gw] = [c for c in seed["clients"] if c["client_id"] == "tollgate-edge-gateway"]
    assert gw["scope"] == "tollgate:edge"
    assert gw["token_endpoint_auth_method"] == "client_secret_basic"
    env_name = gw["client_secret_env"]
    [job] = [d for d in ds if d["kind"] == "Job" and d["metadata"]["name"].endswith("-init")]
    [c] = job["spec"]["template"]["spec"]["containers"]
    [e] = [e for e in c["env"] if e["name"] == env_name]
    assert e["valueFrom"] == {"secretKeyRef": {"name": "gw-client", "key": "client-secret"}}
    # Secret mode works without a sidecar (no AuthorizationPolicy then).
    ds = docs({**SECRET, "mesh": {"sidecarInjection": False}})
    assert not [d for d in ds if d["kind"] == "AuthorizationPolicy"]
    assert filter_config(edge_cr(ds))["auth_server"]["client_secret_env"] == "EDGE_FILTER_CLIENT_SECRET"


def test_revocation_can_be_turned_off():
    cfg = filter_config(edge_cr(docs({"edge": {"revocation": {"enabled": False}}})))
    assert "revocation" not in cfg
    assert "auth_server" in cfg
