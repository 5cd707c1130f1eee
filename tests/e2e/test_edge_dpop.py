"""DPoP (RFC 9449) at the edge, through real Envoy (--concurrency 2): DPoP-bound tokens
(`cnf.jkt`) with proofs made here with `cryptography` + PyJWT, as a client would: a valid
proof is accepted, a replayed one refused (on whichever worker it lands), the bound token
sent as Bearer refused, an unbound token refused on a `require: sender_constrained` route;
each with its RFC 9449 §7.1 `WWW-Authenticate: DPoP` challenge and its counter."""
from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from harness.envoy import Envoy, filter_config, issuer_entry
from harness.issuer import TestIssuer


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class DpopKey:
    """A client's P-256 DPoP key."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256",
                    "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}

    def jkt(self) -> str:
        """RFC 7638 thumbprint: required members, lexicographic order, no whitespace."""
        canonical = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")},
                               separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode()).digest())

    def proof(self, method: str, url: str, token: str, **claims) -> str:
        c = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time()),
             "ath": b64url(hashlib.sha256(token.encode()).digest())}
        c.update(claims)
        return pyjwt.encode(c, self.key, algorithm="ES256",
                            headers={"typ": "dpop+jwt", "jwk": self.jwk})


@pytest.fixture(scope="module")
def iss():
    i = TestIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(iss, echo, wasm):
    cfg = filter_config(
        issuers=[issuer_entry(iss.issuer, "test-issuer", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        rules=[{"name": "bound-only", "path_prefix": "/bound",
                "require": "sender_constrained"}],
        dpop={"iat_window_s": 60},
    )
    with Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=iss.port) as g:
        yield g


def call(gw: Envoy, path: str, auth: str | None, proofs: list[str] = ()) -> requests.Response:
    # A new connection per request spreads requests over both Envoy workers. Two proofs go
    # out as one comma-joined value (what a proxy makes of two field lines).
    s = requests.Session()
    req = requests.Request("GET", gw.url(path)).prepare()
    req.headers["connection"] = "close"
    if auth:
        req.headers["authorization"] = auth
    if len(proofs) == 1:
        req.headers["dpop"] = proofs[0]
    elif proofs:
        req.headers["dpop"] = ", ".join(proofs)
    return s.send(req, timeout=10)


def wait_jwks(gw: Envoy, iss: TestIssuer) -> None:
    tok = iss.mint(kid=es256_kid(iss))
    deadline = time.monotonic() + 10
    while call(gw, "/resource", f"Bearer {tok}").status_code != 200:
        assert time.monotonic() < deadline, "JWKS never loaded"
        time.sleep(0.1)


def es256_kid(iss: TestIssuer) -> str:
    return next(k for k, (_, alg) in iss.keys.items() if alg == "ES256")


def assert_dpop_challenge(r: requests.Response, error: str) -> None:
    assert r.status_code == 401, r.text
    www = r.headers["www-authenticate"]
    assert www.startswith('DPoP realm="tollgate"'), www
    assert f'error="{error}"' in www, www
    assert 'algs="ES256"' in www, www
    assert r.json()["error"] == error


def test_valid_proof_accepted_replay_and_downgrade_refused(gw, iss):
    kid = es256_kid(iss)
    client = DpopKey()
    tok = iss.mint(kid=kid, cnf={"jkt": client.jkt()})
    url = gw.url("/resource")
    before = gw.counters()

    deadline = time.monotonic() + 10
    while True:  # the first JWKS load may be in flight
        r = call(gw, "/resource", f"DPoP {tok}", [client.proof("GET", url, tok)])
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    assert r.json()["headers"]["x-tollgate-sub"] == "client-1"

    # The same proof again: refused, on whichever worker it lands (shared replay set).
    proof = client.proof("GET", url, tok)
    assert call(gw, "/resource", f"DPoP {tok}", [proof]).status_code == 200
    for _ in range(4):
        assert_dpop_challenge(call(gw, "/resource", f"DPoP {tok}", [proof]),
                              "invalid_dpop_proof")

    # The bound token as a Bearer token (a stolen token without the key): refused.
    assert_dpop_challenge(call(gw, "/resource", f"Bearer {tok}"), "invalid_token")

    # A proof made for another URL, or by another key: refused.
    assert_dpop_challenge(call(gw, "/resource", f"DPoP {tok}",
                               [client.proof("GET", gw.url("/other"), tok)]),
                          "invalid_dpop_proof")
    assert_dpop_challenge(call(gw, "/resource", f"DPoP {tok}",
                               [DpopKey().proof("GET", url, tok)]), "invalid_dpop_proof")
    # Two proofs.
    assert_dpop_challenge(call(gw, "/resource", f"DPoP {tok}",
                               [client.proof("GET", url, tok), client.proof("GET", url, tok)]),
                          "invalid_dpop_proof")

    after = gw.counters()

    def delta(name: str) -> int:
        n = f"wasmcustom.tollgate_denied_{name}"
        return after.get(n, 0) - before.get(n, 0)

    assert delta("dpop_replay") == 4
    assert delta("dpop_bearer") == 1
    assert delta("dpop_htu") == 1
    assert delta("dpop_key") == 1
    assert delta("dpop_repeated") == 1


def test_route_requiring_sender_constrained_tokens(gw, iss):
    kid = es256_kid(iss)
    plain = iss.mint(kid=kid)
    client = DpopKey()
    bound = iss.mint(kid=kid, cnf={"jkt": client.jkt()})
    wait_jwks(gw, iss)
    # Negative: an unbound Bearer token is refused on the route, accepted elsewhere.
    assert_dpop_challenge(call(gw, "/bound/x", f"Bearer {plain}"), "invalid_token")
    assert call(gw, "/resource", f"Bearer {plain}").status_code == 200
    # No token there: the challenge names the DPoP scheme and its algorithms.
    r = call(gw, "/bound/x", None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'DPoP realm="tollgate", algs="ES256"'
    r = call(gw, "/bound/x", f"DPoP {bound}",
             [client.proof("GET", gw.url("/bound/x"), bound)])
    assert r.status_code == 200, r.text


def test_filter_issued_nonces(iss, echo, wasm, tmp_path):
    """RFC 9449 §9 at the edge: with `dpop.nonce`, a proof without a current nonce gets
    401 use_dpop_nonce and the nonce in DPoP-Nonce; the retry with it passes, on either
    worker and on a second gateway with the same secret (from the VM environment)."""
    from harness.envoy import TEMPLATE

    secret = "e2e nonce secret shared by the gateway replicas"
    anchor = "                  vm_id: tollgate\n"
    t = TEMPLATE.read_text()
    assert t.count(anchor) == 1
    tmpl = tmp_path / "nonce.yaml.tmpl"
    tmpl.write_text(t.replace(anchor, anchor + (
        "                  environment_variables:\n"
        "                    key_values:\n"
        f"                      DPOP_NONCE_KEY: \"{secret}\"\n")))
    cfg = filter_config(
        issuers=[issuer_entry(iss.issuer, "test-issuer", algorithms=["ES256"],
                              refresh_interval_s=60, min_refresh_interval_s=1,
                              retry_interval_s=1, timeout_ms=1000)],
        dpop={"nonce": {"secret_env": "DPOP_NONCE_KEY", "lifetime_s": 60}},
    )
    with Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=iss.port,
               template=tmpl) as a, \
            Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=iss.port,
                  template=tmpl) as b:
        wait_jwks(a, iss)
        wait_jwks(b, iss)
        client = DpopKey()
        tok = iss.mint(kid=es256_kid(iss), cnf={"jkt": client.jkt()})
        r = call(a, "/resource", f"DPoP {tok}", [client.proof("GET", a.url("/resource"), tok)])
        assert_dpop_challenge(r, "use_dpop_nonce")
        nonce = r.headers["dpop-nonce"]
        for gw in (a, a, b):  # new connections: both workers, and the other replica
            url = gw.url("/resource")
            r = call(gw, "/resource", f"DPoP {tok}", [client.proof("GET", url, tok, nonce=nonce)])
            assert r.status_code == 200, (r.status_code, r.headers, r.text)
        r = call(a, "/resource", f"DPoP {tok}",
                 [client.proof("GET", a.url("/resource"), tok, nonce="forged" + nonce[6:])])
        assert_dpop_challenge(r, "use_dpop_nonce")
        assert a.counter("tollgate_denied_dpop_nonce") == 2
