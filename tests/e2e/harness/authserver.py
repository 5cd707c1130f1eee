"""The real Tollgate auth server (binary target/release/authserver, or $AUTHSERVER_BIN),
driven as docs/contracts.md describes.

    with AuthServer() as a:                       # in-memory store, random ports
        c = a.register_client(scope="api:read api:write")   # on the admin listener
        requests.get(f"{a.admin_base}/admin/clients", headers=a.admin_headers)
        tok = a.token(c, scope="api:read")
        a.stop(); a.start()                        # same port, e.g. for outage tests
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import requests

from .ports import free_ports
from .procs import Process

REPO = Path(__file__).resolve().parents[3]


def authserver_binary() -> Path | None:
    """Path of the auth server binary, or None when it has not been built."""
    p = Path(os.environ.get("AUTHSERVER_BIN") or REPO / "target" / "release" / "authserver")
    return p if p.exists() and os.access(p, os.X_OK) else None


class AuthServer:
    def __init__(self, port: int | None = None, env: dict[str, str] | None = None,
                 start: bool = True, admin_port: int | None = None):
        binary = authserver_binary()
        if binary is None:
            raise FileNotFoundError("auth server binary missing: run `make build-authserver`")
        self.binary = binary
        # The admin listener (TOLLGATE_ADMIN_LISTEN): /admin/*, registration, /metrics; a
        # port of its own (two free_port() calls in a row may return the same port).
        picked = free_ports(2)
        self.port = port or next(p for p in picked if p != admin_port)
        self.admin_port = admin_port or next(p for p in picked if p != self.port)
        self.admin_token = secrets.token_urlsafe(24)
        self.admin_headers = {"authorization": f"Bearer {self.admin_token}"}
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_base = f"http://127.0.0.1:{self.admin_port}"
        self.issuer = self.base
        self.env = {"TOLLGATE_LISTEN": f"127.0.0.1:{self.port}",
                    "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
                    "TOLLGATE_ADMIN_TOKEN": self.admin_token,
                    "TOLLGATE_LOG_FORMAT": "text", **(env or {})}
        self.issuer = self.env.get("TOLLGATE_ISSUER", self.base)
        self.proc: Process | None = None
        if start:
            self.start()

    def start(self, timeout: float = 20.0) -> None:
        self.proc = Process([str(self.binary), "serve"], env=self.env, name="authserver")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"authserver exited:\n{self.proc.tail()}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"authserver not healthy:\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def register_client(self, scope: str = "api:read api:write", name: str = "e2e",
                        **extra) -> dict:
        """RFC 7591 registration with the admin token, on the admin listener; returns the
        registration response (client_id, client_secret, ...)."""
        body = {"client_name": name, "grant_types": ["client_credentials"], "scope": scope,
                **extra}
        r = requests.post(f"{self.admin_base}/oauth2/register", json=body, timeout=5,
                          headers=self.admin_headers)
        r.raise_for_status()
        return r.json()

    def token(self, client: dict, scope: str | None = None, **form) -> str:
        """A client_credentials access token (client_secret_basic)."""
        data = {"grant_type": "client_credentials", **form}
        if scope:
            data["scope"] = scope
        r = requests.post(f"{self.base}/oauth2/token", data=data, timeout=5,
                          auth=(client["client_id"], client["client_secret"]))
        r.raise_for_status()
        return r.json()["access_token"]

    def __enter__(self) -> "AuthServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
