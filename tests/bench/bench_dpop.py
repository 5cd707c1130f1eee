"""DPoP at the gateway (issue 14): what a proof costs per request, in `make bench-gateway`.

A DPoP-bound token is minted by the auth server (client_credentials with a proof); then
Tollgate's gateway is sent the same token two ways, back to back: as a plain repeated
Bearer token (no binding, the cached path) and, for a bound token, as real clients send it:
`Authorization: DPoP` with a fresh proof per request (each proof made beforehand for that
method and URL, used once: the filter verifies its ES256 signature, its thumbprint, `ath`,
`htu`, `iat` and claims its `jti` in the shared replay set). The difference of Envoy CPU per
request is the cost of a proof. Native Envoy has no DPoP: there is no peer row.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import common
from common import BenchError, Settings


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        n = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": _b64(n.x.to_bytes(32, "big")),
                    "y": _b64(n.y.to_bytes(32, "big"))}
        self.head = _b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk},
                                    separators=(",", ":")).encode())

    def proof(self, method: str, url: str, token: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": _b64(secrets.token_bytes(12)), "htm": method,
                                  "htu": url, "iat": int(time.time())}
        if token:
            claims["ath"] = _b64(hashlib.sha256(token.encode()).digest())
        signing_input = self.head + "." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(),
                                                  ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def run(auth: Any, url: str, envoy_pid: int, settings: Settings, workdir: Path) -> dict[str, Any]:
    """`url`: Tollgate's gateway (`http://127.0.0.1:<port>/api/resource`)."""
    duration = common.env_float("BENCH_DPOP_DURATION", 3.0)
    n_proofs = common.env_int("BENCH_DPOP_PROOFS", 20000)
    key = Key()
    token_url = f"{auth.issuer}/oauth2/token"
    r = requests.post(token_url, timeout=5, data={"grant_type": "client_credentials",
                                                  "scope": "api:read"},
                      headers={"Authorization": common.basic_auth(*auth.client),
                               "DPoP": key.proof("POST", token_url)})
    if r.status_code != 200 or r.json().get("token_type") != "DPoP":
        raise BenchError(f"DPoP token: {r.status_code} {r.text[:300]}")
    token = r.json()["access_token"]
    base = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    path = urlsplit(url).path
    # The gateway refuses the token without a proof, and accepts it with one.
    if requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code != 401:
        raise BenchError("the gateway accepted a DPoP-bound token as a Bearer token")
    ok = requests.get(url, timeout=5, headers={"Authorization": f"DPoP {token}",
                                               "DPoP": key.proof("GET", url, token)})
    if ok.status_code != 200:
        raise BenchError(f"the gateway refused a valid DPoP proof: {ok.status_code} {ok.text}")
    t0 = time.monotonic()
    proofs = workdir / "dpop-proofs.txt"
    proofs.write_text("\n".join(key.proof("GET", url, token) for _ in range(n_proofs)) + "\n")
    made_s = time.monotonic() - t0
    single = workdir / "token-dpop-bearer.txt"
    single.write_text(auth.token() + "\n")
    out: dict[str, Any] = {"proofs": n_proofs, "proofs_made_s": round(made_s, 1)}
    try:
        for kind, script, env in (
                ("bearer", "bearer.lua", {"BENCH_PATH": path, "BENCH_TOKENS_FILE": str(single)}),
                ("dpop", "dpop.lua", {"BENCH_PATH": path, "BENCH_TOKEN": token,
                                      "BENCH_PROOFS_FILE": str(proofs)})):
            c0 = common.process_cpu_ns(envoy_pid)
            res = common.measure(settings, base, script, env,
                                 f"tollgate: {'repeated Bearer token' if kind == 'bearer' else 'DPoP, a new proof per request'}",
                                 duration=duration, warmup=0)
            c1 = common.process_cpu_ns(envoy_pid)
            res["envoy_cpu_us_per_request"] = common.cpu_us_per_request(
                c1 - c0 if c0 is not None and c1 is not None else None, res["requests"])
            out[kind] = res
    finally:
        proofs.unlink(missing_ok=True)
        single.unlink(missing_ok=True)
    if out["dpop"]["requests"] > n_proofs:
        raise BenchError(f"{out['dpop']['requests']} requests but {n_proofs} proofs: raise "
                         "BENCH_DPOP_PROOFS (a proof used twice is a replay)")
    b, d = out["bearer"]["envoy_cpu_us_per_request"], out["dpop"]["envoy_cpu_us_per_request"]
    out["proof_cost_us"] = round(d - b, 1) if b is not None and d is not None else None
    out["dpop_vs_bearer"] = round(out["dpop"]["rps"] / out["bearer"]["rps"], 3)
    print(f"  DPoP: {out['dpop']['rps']:,.0f} req/s = {out['dpop_vs_bearer']:.2f}x the repeated "
          f"Bearer token; Envoy CPU per request {d} vs {b} us: a proof costs "
          f"{out['proof_cost_us']} us", flush=True)
    return out
