"""Independent OAuth 2.0 clients against the real auth server binary.

Third-party client libraries, unmodified, drive target/release/authserver (or
$AUTHSERVER_BIN) on a free loopback port, once with the in-memory store and once with a
real redis-server:

- Python `authlib`: authorization code + PKCE (S256) with a scripted login through the
  HTML form, refresh with rotation (and the family revocation on reuse), client
  credentials; tokens verified with PyJWT against the published JWKS.
- Node `oauth4webapi` (tests/e2e/oauth_clients/run.mjs): RFC 8414 discovery, client
  credentials, `validateJwtAccessToken` on our tokens, introspection and revocation; and
  (tests/e2e/oauth_clients/dpop.mjs) DPoP: a key-bound code, token and refresh, calls
  through a real Envoy with the Tollgate filter, and its proofs misused, refused there.
  Plain http on loopback needs its documented `allowInsecureRequests` option; the server
  is not weakened for it.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from harness.authserver import AuthServer, authserver_binary
from harness.ports import free_port, wait_port

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "oauth_clients"
REDIRECT = "http://127.0.0.1:8765/callback"
PASSWORD = "correct horse battery staple"


class RedisServer:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self) -> None:
        exe = shutil.which(os.environ.get("REDIS_SERVER", "redis-server"))
        if exe is None:
            pytest.fail("redis-server is not installed (make deps-apt)")
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.dir.cleanup()


@pytest.fixture(params=["memory", "redis"])
def server(request):
    if authserver_binary() is None:
        pytest.skip("target/release/authserver not built yet (make build-authserver)")
    redis = RedisServer() if request.param == "redis" else None
    env = {"TOLLGATE_STORE": redis.url} if redis else {}
    a = AuthServer(env=env)
    try:
        yield a
    finally:
        a.stop()
        if redis:
            redis.stop()


def admin(a: AuthServer) -> dict:
    return {"authorization": f"Bearer {a.admin_token}"}


def add_user(a: AuthServer, name: str = "alice") -> None:
    r = requests.post(f"{a.admin_base}/admin/users", json={"username": name, "password": PASSWORD},
                      headers=admin(a), timeout=10)
    assert r.status_code == 201, r.text


def register(a: AuthServer, **md) -> dict:
    r = requests.post(f"{a.admin_base}/oauth2/register", json=md, headers=admin(a), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def hidden(page: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert m, f"no hidden {name} in the page"
    return html.unescape(m.group(1))


def browser_login(a: AuthServer, authorize_url: str, user: str = "alice",
                  password: str = PASSWORD) -> str:
    """What a user does in the browser: open the authorization URL, fill in the login form,
    follow the redirects up to the client's redirect URI. Returns that final URL."""
    b = requests.Session()
    page = b.get(authorize_url, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    r = b.post(f"{a.base}/oauth2/login", allow_redirects=False, timeout=10, data={
        "csrf": hidden(page.text, "csrf"), "authz": hidden(page.text, "authz"),
        "username": user, "password": password})
    assert r.status_code == 303, r.text
    r = b.get(r.headers["location"], allow_redirects=False, timeout=10)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(REDIRECT), location
    return location


def verify(a: AuthServer, token: str, audience: str = "tollgate") -> dict:
    jwks = jwt.PyJWKClient(f"{a.base}/oauth2/jwks")
    key = jwks.get_signing_key_from_jwt(token)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=a.issuer)


def test_authlib_authorization_code_pkce_refresh(server: AuthServer):
    a = server
    add_user(a)
    meta = requests.get(f"{a.base}/.well-known/oauth-authorization-server", timeout=10).json()
    c = register(a, client_name="authlib SPA", redirect_uris=[REDIRECT],
                 grant_types=["authorization_code", "refresh_token"],
                 token_endpoint_auth_method="none", scope="api:read api:write",
                 skip_consent=True)
    client = OAuth2Session(c["client_id"], redirect_uri=REDIRECT, scope="api:read",
                           code_challenge_method="S256", token_endpoint_auth_method="none")
    verifier = generate_token(64)
    url, state = client.create_authorization_url(meta["authorization_endpoint"],
                                                  code_verifier=verifier)
    callback = browser_login(a, url)
    q = parse_qs(urlparse(callback).query)
    assert q["state"] == [state]
    assert q["iss"] == [a.issuer]

    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                               code_verifier=verifier)
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "api:read"
    assert token["refresh_token"].startswith("tg_rt_")
    claims = verify(a, token["access_token"])
    assert claims["sub"] == "alice"
    assert claims["client_id"] == c["client_id"]

    # The code is single-use: authlib redeeming it again is refused.
    with pytest.raises(Exception) as e:
        client.fetch_token(meta["token_endpoint"], authorization_response=callback,
                           code_verifier=verifier)
    assert "invalid_grant" in str(e.value)
    # ... and that revoked what it issued.
    r = requests.post(meta["introspection_endpoint"], timeout=10,
                      data={"token": token["access_token"], "client_id": c["client_id"]})
    assert r.json() == {"active": False}

    # A second login and code, then refresh with rotation.
    url, state = client.create_authorization_url(meta["authorization_endpoint"],
                                                  code_verifier=verifier)
    token = client.fetch_token(meta["token_endpoint"],
                               authorization_response=browser_login(a, url),
                               code_verifier=verifier)
    first_refresh = token["refresh_token"]
    new = client.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
    assert new["refresh_token"] != first_refresh
    assert verify(a, new["access_token"])["sub"] == "alice"
    # Reusing the rotated refresh token revokes the family, the new tokens included.
    r = requests.post(meta["token_endpoint"], timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": first_refresh,
        "client_id": c["client_id"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    for t in (new["access_token"], new["refresh_token"]):
        r = requests.post(meta["introspection_endpoint"], timeout=10,
                          data={"token": t, "client_id": c["client_id"]})
        assert r.json()["active"] is False
    feed = requests.get(f"{a.base}/edge/revocations", headers=admin(a), timeout=10).json()
    assert verify(a, new["access_token"])["jti"] in {e["jti"] for e in feed["revocations"]}


def test_authlib_pkce_downgrade_and_wrong_verifier_are_refused(server: AuthServer):
    a = server
    add_user(a)
    meta = requests.get(f"{a.base}/.well-known/oauth-authorization-server", timeout=10).json()
    c = register(a, redirect_uris=[REDIRECT], grant_types=["authorization_code"],
                 token_endpoint_auth_method="none", scope="api:read", skip_consent=True)
    # No PKCE at all: the server answers the client with an error, not a code.
    plain = OAuth2Session(c["client_id"], redirect_uri=REDIRECT, scope="api:read")
    url, state = plain.create_authorization_url(meta["authorization_endpoint"])
    r = requests.get(url, allow_redirects=False, timeout=10)
    assert r.status_code == 303
    q = parse_qs(urlparse(r.headers["location"]).query)
    assert q["error"] == ["invalid_request"] and q["state"] == [state]
    # A wrong verifier.
    client = OAuth2Session(c["client_id"], redirect_uri=REDIRECT, scope="api:read",
                           code_challenge_method="S256", token_endpoint_auth_method="none")
    url, _ = client.create_authorization_url(meta["authorization_endpoint"],
                                              code_verifier=generate_token(64))
    with pytest.raises(Exception) as e:
        client.fetch_token(meta["token_endpoint"], authorization_response=browser_login(a, url),
                           code_verifier=generate_token(64))
    assert "invalid_grant" in str(e.value)


def test_authlib_confidential_client_with_consent(server: AuthServer):
    a = server
    add_user(a, "bob")
    meta = requests.get(f"{a.base}/.well-known/oauth-authorization-server", timeout=10).json()
    c = register(a, client_name="Partner app", redirect_uris=[REDIRECT],
                 grant_types=["authorization_code", "refresh_token"], scope="api:read")
    client = OAuth2Session(c["client_id"], c["client_secret"], redirect_uri=REDIRECT,
                           scope="api:read", code_challenge_method="S256")
    verifier = generate_token(64)
    url, state = client.create_authorization_url(meta["authorization_endpoint"],
                                                  code_verifier=verifier)
    b = requests.Session()
    page = b.get(url, timeout=10)
    r = b.post(f"{a.base}/oauth2/login", allow_redirects=False, timeout=10, data={
        "csrf": hidden(page.text, "csrf"), "authz": hidden(page.text, "authz"),
        "username": "bob", "password": PASSWORD})
    consent = b.get(r.headers["location"], allow_redirects=False, timeout=10)
    assert consent.status_code == 200 and "Partner app" in consent.text
    r = b.post(f"{a.base}/oauth2/consent", allow_redirects=False, timeout=10, data={
        "csrf": hidden(consent.text, "csrf"), "authz": hidden(consent.text, "authz"),
        "decision": "allow"})
    token = client.fetch_token(meta["token_endpoint"], authorization_response=r.headers["location"],
                               code_verifier=verifier)
    assert verify(a, token["access_token"])["sub"] == "bob"
    assert client.refresh_token(meta["token_endpoint"])["access_token"]


def test_authlib_client_credentials(server: AuthServer):
    a = server
    c = register(a, scope="api:read api:write")
    meta = requests.get(f"{a.base}/.well-known/oauth-authorization-server", timeout=10).json()
    client = OAuth2Session(c["client_id"], c["client_secret"], scope="api:read")
    token = client.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert "refresh_token" not in token
    claims = verify(a, token["access_token"])
    assert claims["sub"] == c["client_id"] and claims["scope"] == "api:read"
    bad = OAuth2Session(c["client_id"], "wrong-secret", scope="api:read")
    with pytest.raises(Exception) as e:
        bad.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert "invalid_client" in str(e.value)


@pytest.fixture(scope="module")
def node_client() -> Path:
    """tests/e2e/oauth_clients with its node_modules installed by `npm ci` (pinned by
    package-lock.json)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required for the oauth4webapi tests")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR


def test_oauth4webapi_discovery_client_credentials_and_jwt_validation(server: AuthServer,
                                                                      node_client: Path):
    a = server
    c = register(a, scope="api:read", audience=["https://api.example"])
    env = {**os.environ, "ISSUER": a.issuer, "CLIENT_ID": c["client_id"],
           "CLIENT_SECRET": c["client_secret"], "AUDIENCE": "https://api.example"}
    started = time.monotonic()
    p = subprocess.run(["node", "run.mjs"], cwd=node_client, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"stdout: {p.stdout}\nstderr: {p.stderr}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"oauth4webapi run took {time.monotonic() - started:.2f}s")
    assert out["issuer"] == a.issuer
    assert out["authorization_endpoint"] == f"{a.issuer}/oauth2/authorize"
    assert out["code_challenge_methods_supported"] == ["S256"]
    assert out["token_type"].lower() == "bearer"
    assert out["claims"] == {"sub": c["client_id"], "client_id": c["client_id"],
                             "aud": "https://api.example", "scope": "api:read",
                             "iss": a.issuer}
    assert out["tampered_rejected"] is True
    assert out["wrong_audience_rejected"] is True
    assert out["introspection_active"] is True
    assert out["introspection_after_revoke"] is False


def test_oauth4webapi_dpop_through_the_gateway(server: AuthServer, node_client: Path, echo, wasm):
    """RFC 9449 with a third-party DPoP client: oauth4webapi gets a DPoP-bound token by the
    authorization code flow (code bound to its key with dpop_jkt), calls a real Envoy with
    the Tollgate filter with its own proofs, refreshes (a public client's refresh token is
    bound to the key) and calls again; then its proofs, replayed or aimed elsewhere, and the
    token without them, are refused by the gateway with RFC 9449 / RFC 6750 errors."""
    from harness.envoy import Envoy, filter_config, issuer_entry

    a = server
    add_user(a)
    c = register(a, client_name="oauth4webapi DPoP", redirect_uris=[REDIRECT],
                 grant_types=["authorization_code", "refresh_token"],
                 token_endpoint_auth_method="none", scope="api:read", skip_consent=True)
    cfg = filter_config(issuers=[issuer_entry(a.issuer, "tollgate-authserver",
                                              algorithms=["ES256"])])
    with Envoy(filter_config=cfg, upstream_port=echo.port, auth_port=a.port) as gw:
        env = {**os.environ, "ISSUER": a.issuer, "CLIENT_ID": c["client_id"],
               "REDIRECT": REDIRECT, "API": gw.url("/api/hello")}
        p = subprocess.Popen(["node", "dpop.mjs"], cwd=node_client, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            first = p.stdout.readline()
            assert first.startswith("AUTHORIZE "), first + p.stderr.read()
            callback = browser_login(a, first.split(" ", 1)[1].strip())
            stdout, stderr = p.communicate(f"CALLBACK {callback}\n", timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, f"stdout: {stdout}\nstderr: {stderr}"
        out = json.loads(stdout.strip().splitlines()[-1])
        assert "ES256" in out["dpop_signing_alg_values_supported"]
        assert out["token_type"].lower() == "dpop" and out["has_refresh_token"]
        assert out["call"] == {"status": 200, "sub": "alice"}
        assert out["refreshed_token_type"].lower() == "dpop"
        assert out["call_after_refresh"] == {"status": 200, "sub": "alice"}
        assert out["first_use"]["status"] == 200
        for case in ("replayed", "other_url", "other_method", "stale_iat", "wrong_key",
                     "missing_ath"):
            r = out[case]
            assert r["status"] == 401, (case, r)
            assert r["www_authenticate"].startswith("DPoP"), (case, r)
            assert 'error="invalid_dpop_proof"' in r["www_authenticate"], (case, r)
        r = out["bearer_downgrade"]
        assert r["status"] == 401 and 'error="invalid_token"' in r["www_authenticate"], r
        # Each refusal counted under its own reason.
        for reason in ("replay", "htu", "htm", "iat", "key", "ath", "bearer"):
            assert gw.counter(f"tollgate_denied_dpop_{reason}") >= 1, reason
