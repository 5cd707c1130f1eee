"""Start-up behaviour in real Envoy: a bad configuration is refused with a clear log line;
requests wait for a first JWKS only while none was ever loaded; then time out or resume."""
from __future__ import annotations

import threading
import time

import requests

from harness.envoy import Envoy, filter_config, issuer_entry
from harness.issuer import TestIssuer


def test_invalid_configuration_is_refused_with_reason(echo, wasm):
    bad = filter_config(issuers=[issuer_entry("http://x", "test-issuer",
                                              algorithms=["HS256"])])
    gw = Envoy(filter_config=bad, upstream_port=echo.port, wait=False)
    try:
        code = gw.proc.wait(timeout=60)
        log = gw.log()
        assert code != 0
        assert "tollgate: configuration refused" in log, log[-3000:]
        assert "issuers[0].algorithms" in log and "HS256" in log
    finally:
        gw.stop()


def test_unknown_field_is_refused(echo, wasm):
    bad = filter_config(issuers=[issuer_entry("http://x", "test-issuer")], cache_size=5)
    gw = Envoy(filter_config=bad, upstream_port=echo.port, wait=False)
    try:
        assert gw.proc.wait(timeout=60) != 0
        assert "unknown field `cache_size`" in gw.log()
    finally:
        gw.stop()


def start_gateway(iss: TestIssuer, echo, max_wait_ms: int) -> Envoy:
    cfg = filter_config(
        issuers=[issuer_entry(iss.issuer, "test-issuer", retry_interval_s=1, timeout_ms=500)],
        jwks_wait={"max_wait_ms": max_wait_ms, "status": 503},
        tick_ms=100,
    )
    return Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=iss.port)


def test_no_jwks_ever_loaded_times_out_with_503(echo, wasm):
    iss = TestIssuer()
    iss.mode = "down"
    try:
        with start_gateway(iss, echo, max_wait_ms=1500) as gw:
            r = requests.get(gw.url("/x"), timeout=20,
                             headers={"authorization": f"Bearer {iss.mint()}"})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "temporarily_unavailable"
            assert gw.counter("tollgate_denied_no_jwks") == 1
            assert gw.counter("tollgate_jwks_refresh_failed") >= 1
            # Requests without a token do not wait at all.
            assert requests.get(gw.url("/x"), timeout=5).status_code == 401
            assert "no key set loaded yet" in gw.log()
    finally:
        iss.stop()


def test_waiting_request_resumes_when_jwks_arrives(echo, wasm):
    iss = TestIssuer()
    iss.mode = "down"
    try:
        with start_gateway(iss, echo, max_wait_ms=15000) as gw:
            tok = iss.mint(sub="patient")
            result: dict = {}

            def send():
                result["r"] = requests.get(gw.url("/x"), timeout=30,
                                           headers={"authorization": f"Bearer {tok}"})

            t = threading.Thread(target=send)
            t.start()
            # The request is held while the JWKS endpoint fails.
            deadline = time.monotonic() + 10
            while gw.counter("tollgate_jwks_refresh_failed") < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.counter("tollgate_jwks_refresh_failed") >= 2
            assert t.is_alive(), "request should still be held"
            iss.mode = "ok"
            t.join(timeout=30)
            r = result["r"]
            assert r.status_code == 200, r.text
            assert r.json()["headers"]["x-tollgate-sub"] == "patient"
    finally:
        iss.stop()


def test_template_validates(tmp_path, envoy_bin, wasm):
    """The reusable template renders into a config `envoy --mode validate` accepts."""
    import subprocess

    from harness.envoy import render_config

    cfg = filter_config(issuers=[issuer_entry("http://127.0.0.1:9080", "tollgate-authserver")])
    path = tmp_path / "envoy.yaml"
    path.write_text(render_config(filter_config=cfg, admin_port=19901, listen_port=19000,
                                  upstream_port=18080, auth_port=19080, issuer_port=19081))
    out = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr
