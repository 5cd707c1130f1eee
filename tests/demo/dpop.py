#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) for the demo tour, with nothing but Python's standard library.

    dpop.py keygen KEYFILE                      a new P-256 key (JSON, mode 0600)
    dpop.py proof KEYFILE METHOD URL [TOKEN]    a fresh proof JWT (ES256) for one request;
                                                with TOKEN, its `ath` (hash of the token)
    dpop.py thumbprint KEYFILE                  the key's RFC 7638 thumbprint (`cnf.jkt`)

A teaching tool for the tour: real clients use a DPoP library (oauth4webapi, for one, is
what the end-to-end tests drive). The ECDSA here is plain affine arithmetic on Python
integers with a fresh random nonce per signature (from `secrets`).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import time

# P-256 (SEC 2 / FIPS 186-4)
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def _add(p1: tuple[int, int] | None, p2: tuple[int, int] | None) -> tuple[int, int] | None:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def _mul(k: int, pt: tuple[int, int]) -> tuple[int, int]:
    acc, add = None, pt
    while k:
        if k & 1:
            acc = _add(acc, add)
        add = _add(add, add)
        k >>= 1
    if acc is None:
        raise ValueError("scalar is a multiple of the group order")
    return acc


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(d: int) -> dict[str, str]:
    x, y = _mul(d, G)
    return {"kty": "EC", "crv": "P-256", "x": b64u(x.to_bytes(32, "big")),
            "y": b64u(y.to_bytes(32, "big"))}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace."""
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64u(hashlib.sha256(canon.encode()).digest())


def sign_es256(d: int, message: bytes) -> bytes:
    z = int.from_bytes(hashlib.sha256(message).digest(), "big")
    while True:
        k = secrets.randbelow(N - 1) + 1
        r = _mul(k, G)[0] % N
        s = pow(k, -1, N) * (z + r * d) % N
        if r and s:
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def proof(d: int, method: str, url: str, token: str | None = None) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(d)}
    # htu without query and fragment (RFC 9449 §4.2)
    htu = url.split("#", 1)[0].split("?", 1)[0]
    claims: dict[str, object] = {"jti": b64u(secrets.token_bytes(16)), "htm": method.upper(),
                                 "htu": htu, "iat": int(time.time())}
    if token:
        claims["ath"] = b64u(hashlib.sha256(token.encode()).digest())
    signing_input = (b64u(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64u(json.dumps(claims, separators=(",", ":")).encode()))
    return signing_input + "." + b64u(sign_es256(d, signing_input.encode()))


def load_key(path: str) -> int:
    with open(path) as fh:
        return int(json.load(fh)["d"], 16)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "keygen":
        d = secrets.randbelow(N - 1) + 1
        fd = os.open(argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"kty": "EC", "crv": "P-256", "d": f"{d:064x}"}, fh)
        return 0
    if len(argv) == 3 and argv[1] == "thumbprint":
        print(thumbprint(public_jwk(load_key(argv[2]))))
        return 0
    if len(argv) in (5, 6) and argv[1] == "proof":
        print(proof(load_key(argv[2]), argv[3], argv[4], argv[5] if len(argv) == 6 else None))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
