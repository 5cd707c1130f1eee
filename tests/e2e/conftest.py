"""Shared fixtures of the end-to-end tests (the pieces live in tests/e2e/harness/)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.authserver import AuthServer, authserver_binary  # noqa: E402
from harness.echo import EchoServer  # noqa: E402
from harness.envoy import envoy_binary, filter_wasm  # noqa: E402
from harness.issuer import TestIssuer  # noqa: E402


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return envoy_binary()


@pytest.fixture(scope="session")
def wasm() -> Path:
    """The built filter; a missing build is an error, not a skip (`make test-e2e` builds it)."""
    return filter_wasm()


@pytest.fixture(scope="session")
def echo():
    with EchoServer() as e:
        yield e


@pytest.fixture
def issuer():
    """A fresh test-controlled issuer (own port, own keys) per test."""
    i = TestIssuer()
    yield i
    i.stop()


def require_authserver() -> None:
    if authserver_binary() is None:
        pytest.skip("target/release/authserver not built yet (make build-authserver); "
                    "the real-auth-server tests need it")


@pytest.fixture
def authserver():
    """A real auth server (in-memory store) on a free port; skipped while the binary is
    missing."""
    require_authserver()
    a = AuthServer()
    yield a
    a.stop()
