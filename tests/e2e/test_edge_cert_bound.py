"""Issue 14: certificate-bound access tokens (RFC 8705 §3) from the mesh's mTLS identity.

A workload gets its token through a real Envoy configured as Istio's sidecar inbound
listener (client certificate required, XFCC `APPEND_FORWARD`, upstream bound to 127.0.0.6)
in front of the real auth server with `TOLLGATE_CERT_BOUND_TOKENS`, on both stores: the
token carries `cnf.x5t#S256`, the SHA-256 of the workload's certificate. A real gateway
Envoy with the filter, on a TLS listener that asks for client certificates (as a mesh
gateway's or a sidecar's does), accepts the token only on a connection that presents that
certificate: another workload's certificate, no certificate, and the token sent over a
plain listener are refused with 401 `invalid_token`. The certificates are made by the test,
as Istio's CA makes workload certificates (tests/e2e/test_edge_mesh_identity.py).
"""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import test_filter_schema
from conftest import require_authserver
from harness.authserver import AuthServer
from harness.envoy import TEMPLATE, Envoy, filter_config, issuer_entry
from harness.redis import RedisServer
from test_edge_mesh_identity import OTHER, Pki, Sidecar

CART = "spiffe://cluster.local/ns/shop/sa/cart"


def x5t(cert_path: str) -> str:
    der = x509.load_pem_x509_certificate(open(cert_path, "rb").read()).public_bytes(
        serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def claims(jwt: str) -> dict:
    p = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def tls_gateway_template(tmp_path, cert: str, key: str, ca: str):
    """The e2e gateway with its listener on TLS that requests a client certificate and
    verifies it against the mesh CA, without requiring one (so the filter sees both)."""
    t = TEMPLATE.read_text()
    anchor = "    filter_chains:\n    - filters:\n"
    assert t.count(anchor) == 1
    tls = f"""    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
            validation_context:
              trusted_ca: {{ filename: "{ca}" }}
      filters:
"""
    p = tmp_path / "gateway-tls.yaml.tmpl"
    p.write_text(t.replace(anchor, tls))
    return p


@pytest.fixture(params=["memory", "redis"])
def store_env(request, tmp_path):
    if request.param == "memory":
        yield {}
        return
    r = RedisServer(tmp_path / "redis")
    try:
        yield {"TOLLGATE_STORE": r.url(0)}
    finally:
        r.proc.terminate()
        r.proc.wait(10)


def test_certificate_bound_token_only_from_its_workload(echo, wasm, tmp_path, store_env):
    require_authserver()
    pki = Pki(tmp_path)
    cart = pki.leaf("cart", CART)
    other = pki.leaf("other", OTHER)
    gw_cert, gw_key = pki.leaf("gateway", "spiffe://cluster.local/ns/istio-system/sa/gw",
                               dns="localhost")
    ca = str(pki.ca_path)
    with AuthServer(env={"TOLLGATE_CERT_BOUND_TOKENS": "true", **store_env}) as auth, \
            Sidecar(pki, auth.port) as sidecar:
        client = auth.register_client(scope="api:read",
                                      tls_client_certificate_bound_access_tokens=True)
        basic = (client["client_id"], client["client_secret"])
        token_url = f"https://127.0.0.1:{sidecar.port}/oauth2/token"

        def get_token(cert, **headers) -> requests.Response:
            return requests.post(token_url, data={"grant_type": "client_credentials"},
                                 auth=basic, cert=cert, verify=ca, headers=headers, timeout=10)

        # The workload's token, through the sidecar: bound to its certificate.
        r = get_token(cart)
        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "Bearer"
        tok = r.json()["access_token"]
        assert claims(tok)["cnf"] == {"x5t#S256": x5t(cart[0])}
        intro = requests.post(f"{auth.base}/oauth2/introspect", data={"token": tok},
                              auth=basic, timeout=5).json()
        assert intro["active"] is True and intro["cnf"] == {"x5t#S256": x5t(cart[0])}
        # A forged XFCC naming another certificate is not what the sidecar appends last.
        r = get_token(other, **{"x-forwarded-client-cert": f"Hash={'0' * 64}"})
        assert claims(r.json()["access_token"])["cnf"] == {"x5t#S256": x5t(other[0])}
        # Straight to the auth server (no sidecar): no certificate it may trust, no token.
        r = requests.post(f"{auth.base}/oauth2/token", auth=basic, timeout=5,
                          data={"grant_type": "client_credentials"},
                          headers={"x-forwarded-client-cert": f"Hash={hashlib.sha256(b'x').hexdigest()}"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        # A request a gateway forwarded (X-Forwarded-For): the certificate is the gateway's.
        r = get_token(cart, **{"x-forwarded-for": "203.0.113.9"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text

        cfg = filter_config(
            issuers=[issuer_entry(auth.issuer, "tollgate-authserver", algorithms=["ES256"])],
            rules=[{"name": "pay", "path_prefix": "/pay/", "require": "sender_constrained"}])
        test_filter_schema.VALIDATOR.validate(cfg)
        tmpl = tls_gateway_template(tmp_path, gw_cert, gw_key, ca)
        with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port,
                   template=tmpl) as gw:
            url = f"https://localhost:{gw.port}"

            def call(cert, path="/r", scheme="Bearer"):
                return requests.get(url + path, cert=cert, verify=ca, timeout=10,
                                    headers={"authorization": f"{scheme} {tok}",
                                             "connection": "close"})

            r = call(cart)
            assert r.status_code == 200, r.text
            assert r.json()["headers"]["x-tollgate-sub"] == client["client_id"]
            # ... also on a route that requires sender-constrained tokens
            assert call(cart, "/pay/x").status_code == 200
            for cert, reason in ((other, "mtls_mismatch"), (None, "mtls_no_certificate")):
                r = call(cert)
                assert r.status_code == 401, r.text
                challenge = r.headers["www-authenticate"]
                assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge
                assert gw.counter(f"tollgate_denied_{reason}") >= 1
            # A plain token on the route that requires binding is refused.
            plain = auth.token(auth.register_client(scope="api:read"))
            r = requests.get(url + "/pay/x", cert=cart, verify=ca, timeout=10,
                             headers={"authorization": f"Bearer {plain}"})
            assert r.status_code == 401, r.text

        # A gateway listener without TLS never has the certificate: refused.
        with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port) as plain_gw:
            r = requests.get(plain_gw.url("/r"), headers={"authorization": f"Bearer {tok}"},
                             timeout=10)
            assert r.status_code == 401, r.text
            assert plain_gw.counter("tollgate_denied_mtls_no_certificate") >= 1


def secretless_token(base: str, client_id: str, cert, ca: str) -> requests.Response:
    """client_credentials for a client that authenticates with its TLS certificate (RFC 8705
    §2): `client_id` in the body, no secret, `cert` (or None) presented."""
    return requests.post(f"{base}/oauth2/token", cert=cert, verify=ca, timeout=10,
                         data={"grant_type": "client_credentials", "client_id": client_id})


def self_signed(tmp_path, name: str, uri: str | None = None) -> tuple[str, str]:
    """A self-signed client certificate (no CA): RFC 8705 §3 binds to it as well. With `uri`,
    it claims that SPIFFE ID as its SAN, as a workload's certificate does."""
    import datetime

    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import hashes as _hashes
    from cryptography.hazmat.primitives.asymmetric import ec as _ec
    from cryptography.x509.oid import NameOID

    key = _ec.generate_private_key(_ec.SECP256R1())
    subject = _x509.Name([_x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (_x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(_x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if uri:
        builder = builder.add_extension(
            _x509.SubjectAlternativeName([_x509.UniformResourceIdentifier(uri)]), critical=False)
    cert = builder.sign(key, _hashes.SHA256())
    c, k = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def test_certificate_bound_token_from_the_auth_servers_tls_listener(echo, wasm, tmp_path,
                                                                    store_env):
    """Without a mesh: the auth server's own TLS listener (TOLLGATE_TLS_LISTEN) binds the token
    to the certificate the client presented there, CA-issued or self-signed; the gateway then
    accepts it only with that certificate."""
    from harness.ports import free_port

    require_authserver()
    pki = Pki(tmp_path)
    cart, other = pki.leaf("cart", CART), pki.leaf("other", OTHER)
    server_cert, server_key = pki.leaf("authserver-tls", "spiffe://cluster.local/ns/t/sa/t",
                                       dns="localhost")
    ca = str(pki.ca_path)
    tls_port = free_port()
    env = {"TOLLGATE_TLS_LISTEN": f"127.0.0.1:{tls_port}", "TOLLGATE_TLS_CERT": server_cert,
           "TOLLGATE_TLS_KEY": server_key, **store_env}
    with AuthServer(env=env) as auth:
        client = auth.register_client(scope="api:read",
                                      tls_client_certificate_bound_access_tokens=True)
        basic = (client["client_id"], client["client_secret"])

        def get_token(cert, base=f"https://localhost:{tls_port}"):
            return requests.post(f"{base}/oauth2/token", auth=basic, cert=cert, verify=ca,
                                 data={"grant_type": "client_credentials"}, timeout=10)

        meta = requests.get(f"{auth.base}/.well-known/oauth-authorization-server", timeout=5)
        assert meta.json()["tls_client_certificate_bound_access_tokens"] is True
        r = get_token(cart)
        assert r.status_code == 200, r.text
        tok = r.json()["access_token"]
        assert claims(tok)["cnf"] == {"x5t#S256": x5t(cart[0])}
        mine = self_signed(tmp_path, "self-signed")
        r = get_token(mine)
        assert r.status_code == 200, r.text
        assert claims(r.json()["access_token"])["cnf"] == {"x5t#S256": x5t(mine[0])}
        # No certificate on the TLS listener, or the plain listener: no token.
        for r in (get_token(None), requests.post(f"{auth.base}/oauth2/token", auth=basic,
                                                 data={"grant_type": "client_credentials"},
                                                 timeout=10)):
            assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        # RFC 8705 §2.2 self_signed_tls_client_auth: no secret, the client proves possession
        # of a certificate registered in its jwks (x5c), on the TLS listener only.
        assert "self_signed_tls_client_auth" in meta.json()["token_endpoint_auth_methods_supported"]
        der = base64.b64encode(x509.load_pem_x509_certificate(open(mine[0], "rb").read())
                               .public_bytes(serialization.Encoding.DER)).decode()
        ss = auth.register_client(scope="api:read", token_endpoint_auth_method="self_signed_tls_client_auth",
                                  tls_client_certificate_bound_access_tokens=True,
                                  jwks={"keys": [{"kty": "EC", "crv": "P-256", "x5c": [der]}]})
        assert "client_secret" not in ss

        def ss_token(cert, base=f"https://localhost:{tls_port}"):
            return secretless_token(base, ss["client_id"], cert, ca)
        r = ss_token(mine)
        assert r.status_code == 200, r.text
        assert claims(r.json()["access_token"])["cnf"] == {"x5t#S256": x5t(mine[0])}
        for r in (ss_token(self_signed(tmp_path, "another")), ss_token(cart), ss_token(None),
                  requests.post(f"{auth.base}/oauth2/token", timeout=10,
                                data={"grant_type": "client_credentials",
                                      "client_id": ss["client_id"]})):
            assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
        # The same client's secret is still checked on the TLS listener.
        r = requests.post(f"https://localhost:{tls_port}/oauth2/token", cert=cart, verify=ca,
                          auth=(client["client_id"], "wrong"), timeout=10,
                          data={"grant_type": "client_credentials"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text

        cfg = filter_config(issuers=[issuer_entry(auth.issuer, "tollgate-authserver",
                                                  algorithms=["ES256"])])
        gw_cert, gw_key = pki.leaf("gateway", "spiffe://cluster.local/ns/x/sa/gw", dns="localhost")
        with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=auth.port,
                   template=tls_gateway_template(tmp_path, gw_cert, gw_key, ca)) as gw:
            def call(cert):
                return requests.get(f"https://localhost:{gw.port}/r", cert=cert, verify=ca,
                                    headers={"authorization": f"Bearer {tok}"}, timeout=10)
            assert call(cart).status_code == 200
            r = call(other)
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_tls_client_auth_by_the_mesh_ca(tmp_path, store_env):
    """RFC 8705 §2.1 tls_client_auth on the auth server's own TLS listener, with the mesh CA
    as TOLLGATE_TLS_CLIENT_CA: a client registered with its workload's SPIFFE ID
    (tls_client_auth_san_uri) authenticates with that workload's certificate and no secret,
    and its token is bound to it. Refused with 401 invalid_client: the same CA's certificate of
    another workload, a self-signed certificate claiming the same SPIFFE ID, no certificate,
    and the plain listener."""
    from harness.ports import free_port

    require_authserver()
    pki = Pki(tmp_path)
    cart = pki.leaf("cart", CART)
    other = pki.leaf("orders", "spiffe://cluster.local/ns/shop/sa/orders")
    server_cert, server_key = pki.leaf("authserver-tls", "spiffe://cluster.local/ns/t/sa/t",
                                       dns="localhost")
    ca = str(pki.ca_path)
    tls_port = free_port()
    env = {"TOLLGATE_TLS_LISTEN": f"127.0.0.1:{tls_port}", "TOLLGATE_TLS_CERT": server_cert,
           "TOLLGATE_TLS_KEY": server_key, "TOLLGATE_TLS_CLIENT_CA": ca, **store_env}
    with AuthServer(env=env) as auth:
        meta = requests.get(f"{auth.base}/.well-known/oauth-authorization-server", timeout=5)
        assert "tls_client_auth" in meta.json()["token_endpoint_auth_methods_supported"]
        c = auth.register_client(scope="api:read", token_endpoint_auth_method="tls_client_auth",
                                 tls_client_auth_san_uri=CART,
                                 tls_client_certificate_bound_access_tokens=True)
        assert "client_secret" not in c

        def token(cert, base=f"https://localhost:{tls_port}"):
            return secretless_token(base, c["client_id"], cert, ca)
        r = token(cart)
        assert r.status_code == 200, r.text
        tok = r.json()["access_token"]
        assert claims(tok)["cnf"] == {"x5t#S256": x5t(cart[0])}
        assert claims(tok)["client_id"] == c["client_id"]
        # The same connection kind authenticates it at introspection.
        r = requests.post(f"https://localhost:{tls_port}/oauth2/introspect", cert=cart,
                          verify=ca, timeout=10, data={"token": tok, "client_id": c["client_id"]})
        assert r.status_code == 200 and r.json()["active"] is True, r.text
        for r in (token(other), token(self_signed(tmp_path, "impostor", uri=CART)), token(None),
                  token(cart, base=auth.base)):
            assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
