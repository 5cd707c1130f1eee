"""The real auth server's module listener (TOLLGATE_MODULE_LISTEN, issue 11 defect 2): the
port the chart leaves outside the sidecar's mTLS serves the module and its sha256, and
nothing else."""
from __future__ import annotations

import hashlib

import requests

from conftest import require_authserver
from harness.authserver import AuthServer
from harness.ports import free_port


def test_module_delivery_port_serves_only_the_module(wasm):
    require_authserver()
    port = free_port()
    env = {"TOLLGATE_EDGE_MODULE": str(wasm), "TOLLGATE_MODULE_LISTEN": f"127.0.0.1:{port}"}
    with AuthServer(env=env) as auth:
        base = f"http://127.0.0.1:{port}"
        r = requests.get(f"{base}/edge/module.wasm", timeout=10)
        assert r.status_code == 200 and r.content == wasm.read_bytes()
        assert r.headers["content-type"] == "application/wasm"
        sha = requests.get(f"{base}/edge/module.wasm.sha256", timeout=5).text.split()[0]
        assert sha == hashlib.sha256(wasm.read_bytes()).hexdigest()
        for path in ("/oauth2/jwks", "/metrics", "/admin/clients", "/edge/revocations", "/readyz"):
            assert requests.get(f"{base}{path}", timeout=5).status_code == 404, path
        assert requests.post(f"{base}/oauth2/token", timeout=5).status_code == 404
        # The API port is unchanged.
        assert requests.get(f"{auth.base}/oauth2/jwks", timeout=5).status_code == 200
