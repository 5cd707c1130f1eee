"""A token issuer the test controls: it makes keys, serves their JWKS over HTTP on
127.0.0.1, can go down or answer garbage on demand, and mints tokens -- well-formed ones
and deliberately broken ones.

    iss = TestIssuer()                       # ES256 key "k1" published
    tok = iss.mint(sub="alice", scope="api:read")
    iss.add_key("rsa1", "RS256")             # published at the next JWKS fetch
    iss.mode = "down"                        # JWKS endpoint answers 503
    iss.mode = "slow"                        # the JWKS, after iss.slow_s seconds
    iss.mode = "invalid-json"                # or any other of GARBAGE_MODES
    iss.jwks_requests                        # how many times the JWKS was fetched
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .ports import free_port

ALG_KEYGEN = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "RS384": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "RS512": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "PS384": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "PS512": lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096),
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
}

# Broken JWKS answers (mode -> (status, content-type, body)). Every one of them must leave a
# filter's previous key set serving. "garbage" is the historical name of the HTML one.
_HTML = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
         b"<body><h1>Bad Gateway</h1><p>The upstream is unavailable.</p></body></html>")
GARBAGE_MODES: dict[str, tuple[int, str, bytes]] = {
    "garbage": (200, "application/json", b"<html>not a jwks</html>"),
    "invalid-json": (200, "application/json", b'{"keys": [{"kty": "EC", "crv": "P-256", "x": '),
    "not-an-object": (200, "application/json", b'["keys", 1, null]'),
    "no-keys": (200, "application/json", b'{"issuer": "https://elsewhere.example", "jwks": []}'),
    "empty-keys": (200, "application/json", b'{"keys": []}'),
    "keys-not-a-list": (200, "application/json", b'{"keys": {"kty": "EC", "kid": "k1"}}'),
    "wrong-types": (200, "application/json", json.dumps({"keys": [
        {"kty": 7, "kid": ["k1"], "crv": None, "x": 1, "y": True},
        {"kty": "EC", "crv": "P-256", "kid": "k1", "x": 12345, "y": {"a": 1}},
        {"kty": "EC", "crv": "P-256", "kid": 42, "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "bm90IDMyIGJ5dGVz"},
        "k1", 3.5, None]}).encode()),
    "private-only": (200, "application/json",
                     b'{"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}'),
    "error-500": (500, "application/json",
                  b'{"error": "server_error", "error_description": "boom"}'),
    "html": (200, "text/html; charset=utf-8", _HTML),
    "html-404": (404, "text/html", _HTML),
    "binary": (200, "application/json", bytes(range(256)) * 4),  # not even UTF-8
    # Larger than the filter reads (256 KiB): refused without parsing.
    "huge": (200, "application/json",
             b'{"keys": [], "padding": "' + b"x" * (300 * 1024) + b'"}'),
}
# Modes that are not a fixed answer: "ok", "down" (503), "slow" (the real JWKS after
# `slow_s`), "truncated" (a content-length longer than the body, then the connection closes).
MODES = ("ok", "down", "slow", "truncated", *GARBAGE_MODES)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key, kid: str, alg: str) -> dict:
    pub = key.public_key()
    if alg == "EdDSA":
        raw = pub.public_bytes_raw()
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": kid, "use": "sig",
                "alg": alg}
    jwk = json.loads(pyjwt.algorithms.get_default_algorithms()[alg].to_jwk(pub))
    jwk.update({"kid": kid, "use": "sig", "alg": alg})
    return jwk


class TestIssuer:
    __test__ = False  # not a pytest test class

    def __init__(self, issuer: str | None = None, audience: str = "tollgate",
                 port: int | None = None, first_alg: str = "ES256"):
        self.port = port or free_port()
        self.issuer = issuer or f"http://test-issuer.local:{self.port}"
        self.audience = audience
        self.keys: dict[str, tuple[Any, str]] = {}   # kid -> (private key, alg)
        self.published: set[str] = set()
        self.mode = "ok"              # "ok" | "down" (503) | "garbage" (200, not a JWKS) | MODES
        self.slow_s = 3.0             # how long "slow" waits before answering
        self.jwks_requests = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.add_key("k1", first_alg)
        issuer_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                with issuer_self._lock:
                    issuer_self.jwks_requests += 1
                    mode = issuer_self.mode
                    body = json.dumps(issuer_self.jwks()).encode()
                ctype = "application/json"
                if self.path.split("?")[0] != "/oauth2/jwks":
                    status, body = 404, b"{}"
                elif mode == "down":
                    status, body = 503, b'{"error":"down"}'
                elif mode in GARBAGE_MODES:
                    status, ctype, body = GARBAGE_MODES[mode]
                elif mode == "slow":
                    # Wait (interruptibly: stop() ends it), then answer the real JWKS.
                    issuer_self._stopping.wait(issuer_self.slow_s)
                    status = 200
                elif mode == "truncated":
                    self.send_response(200)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body) + 100))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                elif mode != "ok":
                    raise ValueError(f"unknown issuer mode {mode!r}; one of {MODES}")
                else:
                    status = 200
                try:
                    self.send_response(status)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a "slow" answer after its timeout)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    # ------------------------------------------------------------------ keys
    def add_key(self, kid: str, alg: str = "ES256", publish: bool = True) -> None:
        with self._lock:
            self.keys[kid] = (ALG_KEYGEN[alg](), alg)
            if publish:
                self.published.add(kid)

    def publish(self, kid: str) -> None:
        with self._lock:
            self.published.add(kid)

    def jwks(self) -> dict:
        return {"keys": [public_jwk(k, kid, alg) for kid, (k, alg) in self.keys.items()
                         if kid in self.published]}

    # ------------------------------------------------------------------ tokens
    def claims(self, sub: str = "client-1", scope: str = "api:read", ttl: int = 300,
               **extra) -> dict:
        now = int(time.time())
        c = {"iss": self.issuer, "sub": sub, "aud": self.audience, "exp": now + ttl,
             "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "client_id": sub,
             "scope": scope}
        c.update(extra)
        return {k: v for k, v in c.items() if v is not None}

    def mint(self, kid: str = "k1", headers: dict | None = None, claims: dict | None = None,
             **claim_args) -> str:
        """A signed token; ``claims`` replaces the default claims entirely."""
        key, alg = self.keys[kid]
        h = {"typ": "at+jwt", "kid": kid}
        h.update(headers or {})
        return pyjwt.encode(claims if claims is not None else self.claims(**claim_args),
                            key, algorithm=alg, headers=h)

    @staticmethod
    def raw_token(header: dict, claims: dict, signature: bytes = b"sig") -> str:
        """An arbitrary (unverifiable) token from parts."""
        return ".".join([b64url(json.dumps(header).encode()),
                         b64url(json.dumps(claims).encode()), b64url(signature)])

    def hs256_with_public_key(self, kid: str = "k1", **claim_args) -> str:
        """HS256 'signed' with the issuer's public key (JWK JSON and PEM tried by attackers)
        as the HMAC secret: the classic algorithm-confusion attack."""
        key, alg = self.keys[kid]
        secret = json.dumps(public_jwk(key, kid, alg)).encode()
        head = b64url(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
        body = b64url(json.dumps(self.claims(**claim_args)).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64url(mac)}"

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
