"""Issue 11 defect 7: the edge features with no secret in the filter configuration.

Mesh identity: a real Envoy gateway with the filter calls the auth server over mutual TLS
(its certificate carries the gateway's SPIFFE ID as URI SAN) through a second real Envoy
configured as Istio configures a sidecar's inbound listener (client certificate required,
`forward_client_cert_details: APPEND_FORWARD`, `set_current_client_cert_details` subject,
uri, dns; upstream bound to 127.0.0.6 like Istio's inbound clusters) in front of the real
auth server with `TOLLGATE_EDGE_TRUSTED_PRINCIPALS`. The revocation feed and a global
(leased) rate limit work; a gateway with another workload's certificate is refused, and so
is a client that sends its own X-Forwarded-Client-Cert naming the gateway.

Secret from the environment: `auth_server.client_secret_env` read from
`vm_config.environment_variables` (`key_values`, and `host_env_keys` from Envoy's own
environment, which is what the chart's EnvoyFilter renders).
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import random
import tempfile
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import test_filter_schema
from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import TEMPLATE, Envoy, envoy_binary, filter_config, issuer_entry
from harness.ports import free_port
from harness.procs import Process
from test_edge_revocation import call, revoke, wait_status

GW = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
OTHER = "spiffe://cluster.local/ns/shop/sa/cart"
AUTHSERVER_ID = "spiffe://cluster.local/ns/tollgate/sa/tollgate"
LIMIT = 6
GLOBAL_RULE = {"name": "global", "path_prefix": "/g/",
               "rate_limit": {"requests": LIMIT, "period_s": 60, "key": "client_id",
                              "mode": "global", "fail_mode": "closed"}}


# ------------------------------------------------------------------------------ certificates

class Pki:
    """A CA and leaf certificates with URI SANs, as Istio's CA issues workload certificates."""

    def __init__(self, d: Path):
        self.dir = d
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_path = d / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, name: str, uri: str, dns: str | None = None) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        if dns:
            sans += [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=True)
                .sign(self.key, hashes.SHA256()))
        c, k = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return str(c), str(k)


# ------------------------------------------------------------------------------ the sidecar

class Sidecar:
    """Envoy as the auth server's Istio sidecar: the inbound listener of
    pilot/pkg/networking/core/listener_inbound.go (mTLS required, XFCC APPEND_FORWARD with
    the peer's subject, URI and DNS) and an inbound cluster bound to 127.0.0.6
    (cluster_builder.go, InboundPassthroughBindIpv4)."""

    def __init__(self, pki: Pki, auth_port: int):
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-sidecar-"))
        cert, key = pki.leaf("authserver", AUTHSERVER_ID, dns="localhost")
        self.port, self.admin_port = free_port(), free_port()
        cfg = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {
                "listeners": [{
                    "name": "virtualInbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                    "enable_reuse_port": False,
                    "filter_chains": [{
                        "transport_socket": {
                            "name": "envoy.transport_sockets.tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                                "require_client_certificate": True,
                                "common_tls_context": {
                                    "tls_certificates": [{"certificate_chain": {"filename": cert},
                                                          "private_key": {"filename": key}}],
                                    "validation_context": {"trusted_ca": {"filename": str(pki.ca_path)}},
                                }}},
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "inbound",
                                "forward_client_cert_details": "APPEND_FORWARD",
                                "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
                                "use_remote_address": False,
                                "route_config": {"virtual_hosts": [{
                                    "name": "inbound", "domains": ["*"],
                                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound"}}]}]},
                                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                            }}],
                    }],
                }],
                "clusters": [{
                    "name": "inbound", "type": "STATIC", "connect_timeout": "1s",
                    "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
                    "load_assignment": {"cluster_name": "inbound", "endpoints": [{"lb_endpoints": [{
                        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                    "port_value": auth_port}}}}]}]},
                }],
            },
        }
        path = self.dir / "sidecar.json"
        path.write_text(json.dumps(cfg))
        self.proc = Process([envoy_binary(), "-c", str(path), "--concurrency", "1",
                             "--base-id", str(random.randint(1000, 2**30)), "-l", "info",
                             "--disable-hot-restart"], name="sidecar", log_path=self.dir / "envoy.log")
        Envoy.wait_ready(self)  # the same readiness check (admin /ready)

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def mtls_template(d: Path, cert: str, key: str, ca: str, env_block: str = "") -> Path:
    """The e2e gateway template with its auth-server cluster over mutual TLS (as Istio's
    ISTIO_MUTUAL outbound cluster: the workload certificate, the mesh CA, the server's
    SPIFFE ID checked) and, optionally, VM environment variables."""
    t = TEMPLATE.read_text()
    tls = f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates:
          - certificate_chain: {{ filename: "{cert}" }}
            private_key: {{ filename: "{key}" }}
          validation_context:
            trusted_ca: {{ filename: "{ca}" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: "{AUTHSERVER_ID}" }}
"""
    anchor = "    load_assignment:\n      cluster_name: tollgate-authserver\n"
    assert t.count(anchor) == 1
    t = t.replace(anchor, tls + anchor)
    if env_block:
        t = with_env(t, env_block)
    p = d / "gateway-mtls.yaml.tmpl"
    p.write_text(t)
    return p


def with_env(t: str, env_block: str) -> str:
    anchor = "                  vm_id: tollgate\n"
    assert t.count(anchor) == 1
    return t.replace(anchor, anchor + env_block)


def gateway_config(auth: AuthServer, auth_server: dict, rules=None) -> dict:
    cfg = filter_config(
        issuers=[issuer_entry(auth.issuer, "tollgate-authserver", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        auth_server={"cluster": "tollgate-authserver", "timeout_ms": 1000, **auth_server},
        revocation={"poll_interval_ms": 500},
        rules=rules or [GLOBAL_RULE],
        tick_ms=100,
    )
    test_filter_schema.VALIDATOR.validate(cfg)
    return cfg


def test_gateway_reaches_the_edge_endpoints_by_mesh_identity(echo, wasm, tmp_path):
    require_authserver()
    pki = Pki(tmp_path)
    gw_cert, gw_key = pki.leaf("gateway", GW)
    other_cert, other_key = pki.leaf("other", OTHER)
    with AuthServer(env={"TOLLGATE_EDGE_TRUSTED_PRINCIPALS": GW}) as auth, \
            Sidecar(pki, auth.port) as sidecar:
        # The filter configuration: no client, no secret.
        cfg = gateway_config(auth, {})
        assert "client" not in json.dumps(cfg["auth_server"])
        tmpl = mtls_template(tmp_path, gw_cert, gw_key, str(pki.ca_path))
        with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=sidecar.port,
                   template=tmpl) as gw:
            assert "auth server calls by mesh identity" in gw.log()
            client = auth.register_client(scope="api:read")
            tok, other_tok = auth.token(client), auth.token(client)
            # Revocation at the edge, fed through the sidecar.
            assert call(gw, tok, "/r").status_code == 200
            revoke(auth, client, tok)
            r, _ = wait_status(gw, tok, 401)
            assert r.status_code == 401 and "revoked" in r.json()["error_description"], r.text
            assert gw.counter("tollgate_revocation_poll_ok") >= 1
            assert gw.counter("tollgate_revocation_poll_failed") == 0
            # A global limit from leases (fail_mode closed: a refused lease would be 503).
            statuses = [call(gw, other_tok, "/g/x").status_code for _ in range(LIMIT + 3)]
            assert statuses == [200] * LIMIT + [429] * 3, statuses
            assert gw.counter("tollgate_rate_limit_lease") >= 1
            assert gw.counter("tollgate_rate_limit_lease_failed") == 0

        # A gateway with another workload's certificate: the sidecar accepts the connection
        # (same mesh CA) but the auth server refuses its identity.
        tmpl = mtls_template(tmp_path, other_cert, other_key, str(pki.ca_path))
        with Envoy(filter_config=gateway_config(auth, {}), upstream_port=echo.port,
                   auth_port=sidecar.port, template=tmpl) as bad:
            tok = auth.token(auth.register_client(scope="api:read"))
            r = call(bad, tok, "/g/x")
            assert r.status_code == 503, r.text  # no lease: fail_mode closed
            assert bad.counter("tollgate_rate_limit_lease_failed") >= 1
            deadline = 0
            while bad.counter("tollgate_revocation_poll_failed") == 0 and deadline < 100:
                call(bad, tok, "/r")
                deadline += 1
            assert bad.counter("tollgate_revocation_poll_failed") >= 1
            assert bad.counter("tollgate_revocation_poll_ok") == 0

        # The same over raw requests through the real sidecar: the element the sidecar
        # appends is the one that counts.
        url = f"https://127.0.0.1:{sidecar.port}/edge/revocations"

        def feed(cert, xfcc=None, **headers):
            h = {"x-forwarded-client-cert": xfcc} if xfcc is not None else {}
            h.update({k.replace("_", "-"): v for k, v in headers.items()})
            return requests.get(url, cert=cert, verify=str(pki.ca_path), headers=h, timeout=10)
        assert feed((gw_cert, gw_key)).status_code == 200
        # A client request the gateway forwarded carries X-Forwarded-For: not the gateway's
        # own call, even with the gateway's certificate.
        r = feed((gw_cert, gw_key), x_forwarded_for="203.0.113.9")
        assert r.status_code == 403, r.text
        r = feed((other_cert, other_key))
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope", r.text
        # A client-written element naming the gateway, before the sidecar's real one.
        r = feed((other_cert, other_key), f"By={AUTHSERVER_ID};URI={GW}")
        assert r.status_code == 403, r.text
        # Garbage before the sidecar's element: refused as malformed, never a 5xx.
        r = feed((other_cert, other_key), 'URI="unterminated')
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        # Straight to the auth server (not through the sidecar): the header is not read.
        r = requests.get(f"{auth.base}/edge/revocations", timeout=10,
                         headers={"x-forwarded-client-cert": f"URI={GW}"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text


def test_gateway_client_secret_from_the_vm_environment(echo, wasm, monkeypatch):
    """`client_secret_env`: Envoy hands vm_config.environment_variables to the module's WASI
    environ_get, both `key_values` and `host_env_keys` (Envoy's own environment, what the
    chart's EnvoyFilter uses; WasmPlugin vmConfig.env valueFrom HOST renders the same)."""
    require_authserver()
    d = Path(tempfile.mkdtemp(prefix="tollgate-env-"))
    with AuthServer() as auth:
        edge = auth.register_client(scope="tollgate:edge", name="gateway", rate_limit_per_minute=0)
        cfg = gateway_config(auth, {"client_id": edge["client_id"],
                                    "client_secret_env": "EDGE_FILTER_CLIENT_SECRET"})
        assert edge["client_secret"] not in json.dumps(cfg)
        inline = d / "kv.yaml.tmpl"
        inline.write_text(with_env(TEMPLATE.read_text(), (
            "                  environment_variables:\n"
            "                    key_values:\n"
            f"                      EDGE_FILTER_CLIENT_SECRET: \"{edge['client_secret']}\"\n")))
        host = d / "host.yaml.tmpl"
        host.write_text(with_env(TEMPLATE.read_text(), (
            "                  environment_variables:\n"
            "                    host_env_keys: [EDGE_FILTER_CLIENT_SECRET]\n")))
        monkeypatch.setenv("EDGE_FILTER_CLIENT_SECRET", edge["client_secret"])
        for tmpl in (inline, host):
            with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port,
                       template=tmpl) as gw:
                assert "auth server calls with client credentials" in gw.log()
                client = auth.register_client(scope="api:read")
                tok, other = auth.token(client), auth.token(client)
                assert call(gw, tok, "/r").status_code == 200
                revoke(auth, client, tok)
                r, _ = wait_status(gw, tok, 401)
                assert r.status_code == 401, r.text
                statuses = [call(gw, other, "/g/x").status_code for _ in range(LIMIT + 2)]
                assert statuses == [200] * LIMIT + [429] * 2, statuses
        # Without the variable the filter refuses its configuration with a clear message.
        monkeypatch.delenv("EDGE_FILTER_CLIENT_SECRET")
        gw = Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port,
                   template=host, wait=False)
        try:
            import time
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "EDGE_FILTER_CLIENT_SECRET is not set" not in gw.log():
                time.sleep(0.2)
            assert "EDGE_FILTER_CLIENT_SECRET is not set" in gw.log(), gw.log()[-3000:]
            assert edge["client_secret"] not in gw.log()
        finally:
            gw.stop()
