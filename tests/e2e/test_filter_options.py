"""Configuration options in real Envoy: token from a cookie or a query parameter, custom
identity header names, Authorization stripping, several issuers, host rules."""
from __future__ import annotations

import time

import pytest
import requests

from harness.envoy import Envoy, filter_config, issuer_entry
from harness.issuer import TestIssuer


@pytest.fixture(scope="module")
def issuers():
    a, b = TestIssuer(), TestIssuer(audience="other-api", first_alg="EdDSA")
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(issuers, echo, wasm):
    a, b = issuers
    # Two issuers behind one JWKS cluster is not possible with the template's fixed
    # clusters, so the second issuer uses the "tollgate-authserver" cluster slot.
    cfg = filter_config(
        issuers=[issuer_entry(a.issuer, "test-issuer"),
                 issuer_entry(b.issuer, "tollgate-authserver", audiences=["other-api"],
                              algorithms=["EdDSA"], typ=None)],
        token_sources=[{"header": {"name": "authorization", "prefix": "Bearer "}},
                       {"cookie": {"name": "tg_at"}},
                       {"query": {"name": "access_token"}}],
        headers={"sub": "x-user", "scope": "x-scopes", "strip_authorization": True,
                 "claims": {"aud": "x-aud"}},
        rules=[{"hosts": ["*.internal.test"], "allow_anonymous": True}],
    )
    with Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=a.port,
               auth_port=b.port) as g:
        yield g


def get(gw, path="/r", **kw):
    deadline = time.monotonic() + 10
    while True:
        r = requests.get(gw.url(path), timeout=10, **kw)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_header_token_stripped_and_renamed(gw, issuers):
    a, _ = issuers
    r = get(gw, headers={"authorization": f"Bearer {a.mint(sub='u1', scope='s1 s2')}",
                         "x-user": "spoof"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert "authorization" not in seen
    assert seen["x-user"] == "u1"
    assert seen["x-scopes"] == "s1 s2"
    assert seen["x-aud"] == "tollgate"
    assert "x-tollgate-sub" not in seen


def test_cookie_and_query_tokens(gw, issuers):
    a, _ = issuers
    r = get(gw, headers={"cookie": f"theme=dark; tg_at={a.mint(sub='from-cookie')}"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-user"] == "from-cookie"
    r = get(gw, path=f"/r?x=1&access_token={a.mint(sub='from-query')}")
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-user"] == "from-query"
    assert get(gw, path="/r?access_token=garbage").status_code == 401


def test_second_issuer_with_its_own_audience_and_algorithm(gw, issuers):
    a, b = issuers
    r = get(gw, headers={"authorization": f"Bearer {b.mint(sub='from-b')}"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-tollgate-iss"] == b.issuer
    # Issuer A's audience is not accepted for issuer B, and B allows only EdDSA.
    r = get(gw, headers={"authorization": f"Bearer {b.mint(claims={**b.claims(), 'aud': 'tollgate'})}"})
    assert r.status_code == 401
    b.add_key("es", "ES256")
    r = get(gw, headers={"authorization": f"Bearer {b.mint(kid='es')}"})
    assert r.status_code == 401
    assert "signing algorithm not accepted" in r.json()["error_description"]


def test_host_rule(gw):
    assert get(gw, headers={"host": "svc.internal.test"}).status_code == 200
    assert get(gw, headers={"host": "svc.public.test"}).status_code == 401
