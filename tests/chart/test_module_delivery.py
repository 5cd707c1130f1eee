"""HTTP delivery of the Wasm module under STRICT mTLS (issue 11, defect 2).

istio-agent downloads an http(s) module itself (istio/istio pkg/wasm/httpfetcher.go: a plain
Go http.Client in the agent process, whose own traffic the sidecar does not capture), so the
request reaches the auth server without mTLS, and the auth server's sidecar refuses it under
STRICT. The chart serves the module on a port of its own that only serves the module
(TOLLGATE_MODULE_LISTEN) and leaves that port out of the sidecar's inbound capture; the API
port stays captured (mTLS).
"""
from __future__ import annotations

from urllib.parse import urlparse

from chartlib import render_docs
from test_module_pins import edge_pin


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def authserver_deployment(docs):
    [d] = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-authserver")]
    return d


def test_module_delivery_under_strict_mtls_bypasses_the_sidecar():
    for kind in ("envoyFilter", "wasmPlugin"):
        docs = render_docs([], {"edge": {"kind": kind}})
        url = urlparse(edge_pin(docs)[0])
        assert url.scheme == "http" and url.path == "/edge/module.wasm"
        dep = authserver_deployment(docs)
        pod = dep["spec"]["template"]
        excluded = pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]
        assert str(url.port) in excluded.split(","), "the agent's plain-HTTP fetch meets the sidecar"
        [c] = [c for c in pod["spec"]["containers"] if c["name"] == "authserver"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["module"] == url.port
        assert str(ports["http"]) not in excluded.split(","), "the API port must stay under mTLS"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TOLLGATE_MODULE_LISTEN"] == f"0.0.0.0:{url.port}"
        [svc] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-authserver")]
        assert {"name": "module", "port": url.port, "targetPort": "module", "protocol": "TCP",
                "appProtocol": "http"} in svc["spec"]["ports"]
        assert url.hostname.startswith(svc["metadata"]["name"] + ".")
        # The gateways (their istio-agent) may reach the module port.
        [np] = [n for n in by_kind(docs, "NetworkPolicy") if n["metadata"]["name"] == dep["metadata"]["name"]]
        rules = [r for r in np["spec"]["ingress"] if {"protocol": "TCP", "port": url.port} in r["ports"]]
        assert rules and all("ingressgateway" in str(r["from"]) for r in rules)


def test_no_module_port_without_the_module():
    docs = render_docs([], {"authserver": {"serveEdgeModule": False},
                            "edge": {"module": {"url": "https://example.org/f.wasm"}}})
    dep = authserver_deployment(docs)
    assert "traffic.sidecar.istio.io/excludeInboundPorts" not in dep["spec"]["template"]["metadata"]["annotations"]
    [c] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "authserver"]
    assert "TOLLGATE_MODULE_LISTEN" not in {e["name"] for e in c["env"]}
    assert [p["name"] for p in c["ports"]] == ["http", "admin"]


def test_http_source_without_a_module_to_serve_is_refused():
    import pytest

    with pytest.raises(Exception, match="serveEdgeModule"):
        render_docs([], {"authserver": {"serveEdgeModule": False}})
