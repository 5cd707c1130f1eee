"""Keycloak and Ory Hydra as peers of `make bench-authserver`, beside node oidc-provider.

Each `start_*` starts the server on loopback, checks that it issues and introspects what
the bench will ask for, and returns what to measure per scenario of bench_authserver.py:
`(base URL, wrk environment)`, or `{"unsupported": reason}` for a scenario the server has no
equivalent of. Set-ups (docs/benchmarks.md, "Keycloak and Ory Hydra"):

- Keycloak: the distribution from Maven Central (Makefile `KEYCLOAK_VERSION`), copied into
  the bench's work directory, built there (`kc.sh build --db=dev-file --health-enabled=true`:
  its dev-file H2 database) and started in production mode (`kc.sh start --optimized`, HTTP,
  local caches), a realm imported at start: a confidential client per signing algorithm
  (ES256, and RS256, Keycloak's default), service accounts for client_credentials, client
  scope `api:read`. Its JVM is warmed up before it is measured (`jit_warmup`).
- Ory Hydra: built from the Go module proxy (tests/bench/peers/hydra), `hydra serve all
  --dev` with `DSN=memory` (in-memory SQLite), clients made through its admin API: one with
  opaque access tokens (Hydra's default), one with JWT access tokens (RS256, its only JWT
  algorithm). Introspection is on Hydra's admin listener and takes no client credentials.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

import common
from common import BenchError, Processes, Settings

SCOPE = "api:read"
# The gateway bench verifies Keycloak's tokens for this audience (bench_gateway.py).
KEYCLOAK_AUDIENCE = "tollgate-bench"


def _alg(token: str) -> str:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("alg", "")


def keycloak_java_home() -> str:
    """A JDK >= 21 for Keycloak 26: KEYCLOAK_JAVA_HOME, else the newest under /usr/lib/jvm."""
    if os.environ.get("KEYCLOAK_JAVA_HOME"):
        return os.environ["KEYCLOAK_JAVA_HOME"]
    found = []
    for d in Path("/usr/lib/jvm").glob("*"):
        release = d / "release"
        if not release.is_file():
            continue
        for line in release.read_text(errors="replace").splitlines():
            if line.startswith("JAVA_VERSION="):
                major = line.split("=", 1)[1].strip('"').split(".")[0]
                if major.isdigit() and int(major) >= 21:
                    found.append((int(major), str(d)))
    if not found:
        raise BenchError("Keycloak needs a JDK >= 21: set KEYCLOAK_JAVA_HOME")
    return max(found)[1]


def keycloak_realm(secret: str) -> dict[str, Any]:
    audience = {"name": "audience", "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.custom.audience": KEYCLOAK_AUDIENCE,
                           "access.token.claim": "true"}}
    client = {"enabled": True, "publicClient": False, "secret": secret,
              "clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": True,
              "standardFlowEnabled": False, "directAccessGrantsEnabled": False,
              "defaultClientScopes": [SCOPE], "protocolMappers": [audience]}
    return {
        "realm": "bench", "enabled": True, "sslRequired": "none", "accessTokenLifespan": 900,
        "clientScopes": [{"name": SCOPE, "protocol": "openid-connect",
                          "attributes": {"include.in.token.scope": "true"}}],
        "clients": [
            {**client, "clientId": "bench-es256",
             "attributes": {"access.token.signed.response.alg": "ES256"}},
            {**client, "clientId": "bench-rs256"},
        ],
        "components": {"org.keycloak.keys.KeyProvider": [
            {"name": "rsa", "providerId": "rsa-generated",
             "config": {"priority": ["100"], "keySize": ["2048"], "algorithm": ["RS256"]}},
            {"name": "ecdsa", "providerId": "ecdsa-generated",
             "config": {"priority": ["100"], "ecdsaEllipticCurveKey": ["P-256"]}},
        ]},
    }


class Keycloak:
    """A running Keycloak with the bench realm; `token(alg)` issues one access token."""

    def __init__(self, procs: Processes, settings: Settings, workdir: Path) -> None:
        src = Path(os.environ.get("KEYCLOAK_HOME", ""))
        if not (src / "bin" / "kc.sh").is_file():
            raise BenchError(f"Keycloak not found in KEYCLOAK_HOME={src!s} (make bench-authserver "
                             "fetches it)")
        home = workdir / "keycloak"
        shutil.rmtree(home, ignore_errors=True)
        # A copy per run: `kc.sh build` writes into lib/, the database lives in data/.
        shutil.copytree(src, home, symlinks=True)
        self.secret = secrets.token_urlsafe(24)
        (home / "data" / "import").mkdir(parents=True, exist_ok=True)
        (home / "data" / "import" / "bench-realm.json").write_text(
            json.dumps(keycloak_realm(self.secret)))
        port, mgmt = common.free_port(), common.free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.realm = f"{self.base}/realms/bench"
        self.issuer = self.realm
        self.jwks_uri = f"{self.realm}/protocol/openid-connect/certs"
        self.port = port
        env = {"JAVA_HOME": keycloak_java_home(),
               "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
               "KC_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(16),
               # Java 25 refuses Keycloak's reflective access to java.lang without it
               # (IllegalAccessError on its executor threads).
               "JAVA_OPTS_APPEND": "--add-opens=java.base/java.lang=ALL-UNNAMED"}
        build = subprocess.run([str(home / "bin" / "kc.sh"), "build", "--db=dev-file",
                                "--health-enabled=true"], env={**os.environ, **env},
                               cwd=home, capture_output=True, text=True, timeout=300)
        if build.returncode != 0:
            raise BenchError(f"kc.sh build: {build.stdout[-500:]} {build.stderr[-500:]}")
        proc = procs.start("keycloak", settings.server_prefix() + [
            str(home / "bin" / "kc.sh"), "start", "--optimized", "--http-enabled=true",
            "--http-host=127.0.0.1", f"--http-port={port}", f"--http-management-port={mgmt}",
            "--hostname-strict=false", "--cache=local", "--import-realm",
            "--log-level=warn"], env=env, cwd=home)
        self.pid = proc.pid
        common.wait_until("Keycloak realm discovery", lambda: requests.get(
            f"{self.realm}/.well-known/openid-configuration", timeout=2).status_code == 200,
            timeout=240, procs=procs, watch=proc)
        self.token_path = "/realms/bench/protocol/openid-connect/token"

    def token(self, alg: str) -> str:
        r = requests.post(f"{self.base}{self.token_path}", timeout=10,
                          auth=(f"bench-{alg.lower()}", self.secret),
                          data={"grant_type": "client_credentials"})
        if r.status_code != 200:
            raise BenchError(f"keycloak token: {r.status_code} {r.text[:300]}")
        tok = r.json()["access_token"]
        if _alg(tok) != alg:
            raise BenchError(f"keycloak: expected an {alg} token, got {_alg(tok)}")
        return tok

    def specs(self) -> dict[str, Any]:
        introspect = "/realms/bench/protocol/openid-connect/token/introspect"
        es = self.token("ES256")
        r = requests.post(f"{self.base}{introspect}", data={"token": es}, timeout=10,
                          auth=("bench-es256", self.secret))
        if r.status_code != 200 or r.json().get("active") is not True:
            raise BenchError(f"keycloak introspection: {r.status_code} {r.text[:300]}")
        self.token("RS256")
        body = urlencode({"grant_type": "client_credentials"})
        auth = {alg: common.basic_auth(f"bench-{alg.lower()}", self.secret)
                for alg in ("ES256", "RS256")}
        return {
            "token_jwt": (self.base, {"BENCH_PATH": self.token_path, "BENCH_BODY": body,
                                      "BENCH_AUTH": auth["ES256"]}),
            "token_jwt_rs256": (self.base, {"BENCH_PATH": self.token_path, "BENCH_BODY": body,
                                            "BENCH_AUTH": auth["RS256"]}),
            "token_opaque": {"unsupported": "Keycloak issues JWT access tokens only"},
            "introspect_opaque": {"unsupported": "Keycloak issues JWT access tokens only"},
            "introspect_jwt": (self.base, {"BENCH_PATH": introspect,
                                           "BENCH_BODY": urlencode({"token": es}),
                                           "BENCH_AUTH": auth["ES256"]}),
            "edge_feed": {"unsupported": "Keycloak has no revocation feed for gateways"},
        }


def jit_warmup(settings: Settings, specs: dict[str, Any]) -> None:
    """A JVM compiles its hot paths only after many calls (Keycloak's ES256 tokens went from
    ≈ 330 to ≈ 4,200/s over 160 s of load here): BENCH_JVM_WARMUP seconds (default 120) of
    load, in 10 s turns over every measured row, before the first measurement, so that
    Keycloak is measured at its steady state and not while the JIT is still at work."""
    rows = [spec for spec in specs.values() if isinstance(spec, tuple)]
    left = common.env_float("BENCH_JVM_WARMUP", 120.0)
    while rows and left > 0:
        for url, env in rows:
            turn = min(10.0, left)
            if turn <= 0:
                break
            common.run_wrk(settings, url, "form_post.lua", env, turn)
            left -= turn


def start_keycloak(procs: Processes, settings: Settings, workdir: Path) -> dict[str, Any]:
    kc = Keycloak(procs, settings, workdir)
    specs = kc.specs()
    jit_warmup(settings, specs)
    print(f"Keycloak: {kc.base}, dev-file database, realm bench", flush=True)
    return specs


def start_hydra(procs: Processes, settings: Settings, workdir: Path) -> dict[str, Any]:
    binary = os.environ.get("HYDRA_BIN", "")
    if not binary or not Path(binary).is_file():
        raise BenchError(f"Ory Hydra not found at HYDRA_BIN={binary!r} (make bench-authserver "
                         "builds it)")
    port, admin = common.free_port(), common.free_port()
    base, admin_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    env = {"DSN": "memory", "SECRETS_SYSTEM": secrets.token_urlsafe(32),
           "URLS_SELF_ISSUER": base, "SERVE_PUBLIC_HOST": "127.0.0.1",
           "SERVE_PUBLIC_PORT": str(port), "SERVE_ADMIN_HOST": "127.0.0.1",
           "SERVE_ADMIN_PORT": str(admin), "LOG_LEVEL": "warn",
           "SQA_OPT_OUT": "true"}
    proc = procs.start("hydra", settings.server_prefix() + [binary, "serve", "all", "--dev"],
                       env=env, cwd=workdir)
    common.wait_until("hydra ready", lambda: requests.get(
        f"{admin_base}/health/ready", timeout=2).status_code == 200,
        timeout=60, procs=procs, watch=proc)
    secret = secrets.token_urlsafe(24)

    def client(client_id: str, strategy: str) -> str:
        r = requests.post(f"{admin_base}/admin/clients", timeout=10, json={
            "client_id": client_id, "client_secret": secret,
            "grant_types": ["client_credentials"], "scope": SCOPE,
            "token_endpoint_auth_method": "client_secret_basic",
            "access_token_strategy": strategy})
        if r.status_code not in (200, 201):
            raise BenchError(f"hydra client: {r.status_code} {r.text[:300]}")
        r = requests.post(f"{base}/oauth2/token", auth=(client_id, secret), timeout=10,
                          data={"grant_type": "client_credentials", "scope": SCOPE})
        if r.status_code != 200:
            raise BenchError(f"hydra token: {r.status_code} {r.text[:300]}")
        tok = r.json()["access_token"]
        r = requests.post(f"{admin_base}/admin/oauth2/introspect", data={"token": tok},
                          timeout=10)
        if r.status_code != 200 or r.json().get("active") is not True:
            raise BenchError(f"hydra introspection: {r.status_code} {r.text[:300]}")
        return tok

    opaque = client("bench-opaque", "opaque")
    jwt = client("bench-jwt", "jwt")
    if jwt.count(".") != 2 or _alg(jwt) != "RS256":
        raise BenchError("hydra: expected an RS256 JWT access token")
    body = urlencode({"grant_type": "client_credentials", "scope": SCOPE})
    print(f"Ory Hydra: {base} (admin {admin_base}), DSN=memory", flush=True)
    return {
        "token_jwt": {"unsupported": "Hydra signs JWT access tokens with RS256 only"},
        "token_jwt_rs256": (base, {"BENCH_PATH": "/oauth2/token", "BENCH_BODY": body,
                                   "BENCH_AUTH": common.basic_auth("bench-jwt", secret)}),
        "token_opaque": (base, {"BENCH_PATH": "/oauth2/token", "BENCH_BODY": body,
                                "BENCH_AUTH": common.basic_auth("bench-opaque", secret)}),
        "introspect_opaque": (admin_base, {"BENCH_PATH": "/admin/oauth2/introspect",
                                           "BENCH_BODY": urlencode({"token": opaque})}),
        "introspect_jwt": (admin_base, {"BENCH_PATH": "/admin/oauth2/introspect",
                                        "BENCH_BODY": urlencode({"token": jwt})}),
        "edge_feed": {"unsupported": "Hydra has no revocation feed for gateways"},
    }
