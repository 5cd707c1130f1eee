"""The Wasm module's pins (issue 11, defect 1).

Istio checks a WasmPlugin's / EnvoyFilter's `sha256` against the image *manifest digest* for
oci:// URLs and against the `.wasm` file for http(s):// URLs (istio/istio pkg/wasm). The chart
ships both pins of the module built from this tree (edge.module.pins, written by
`make module-pins`), uses the right one per source, and renders without any --set.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from chartlib import CHART, FILTER_WASM, ROOT, render_docs

sys.path.insert(0, str(ROOT / "plugin/tools"))
import module_pins  # noqa: E402

TOOL = ROOT / "plugin/tools/module_pins.py"


def edge_pin(docs: list[dict]) -> tuple[str, str]:
    """(url, sha256) of the rendered WasmPlugin or EnvoyFilter."""
    for d in docs:
        if d["kind"] == "WasmPlugin":
            return d["spec"]["url"], d["spec"]["sha256"]
        if d["kind"] == "EnvoyFilter" and "-edge" in d["metadata"]["name"]:
            for p in d["spec"]["configPatches"]:
                if p["applyTo"] == "EXTENSION_CONFIG":
                    remote = p["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"]
                    return remote["http_uri"]["uri"], remote["sha256"]
    raise AssertionError("no edge filter rendered")


def committed_pins() -> dict[str, str]:
    return yaml.safe_load((CHART / "values.yaml").read_text())["edge"]["module"]["pins"]


def test_module_pin_chart_renders_and_pins_without_set():
    """Defect 1: `helm install tollgate ./chart` with no --set renders and pins the module,
    with the pin Istio compares for each source."""
    pins = committed_pins()
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    for kind in ("envoyFilter", "wasmPlugin"):
        url, sha = edge_pin(render_docs([], {"edge": {"kind": kind}}))
        assert url.startswith("http://") and url.endswith("/edge/module.wasm")
        assert sha == pins["file"], "http(s) sources: the sha256 of the .wasm file"
        url, sha = edge_pin(render_docs([], {"edge": {"kind": kind, "module": {"source": "oci"}}}))
        assert url == f"oci://ghcr.io/tollgate-auth/tollgate-filter:{app_version}"
        assert sha == pins["oci"], "oci sources: the digest of the image manifest"
    assert pins["file"] != pins["oci"]
    # An explicit sha256 still wins (a module the chart does not ship).
    other = "ab" * 32
    _, sha = edge_pin(render_docs([], {"edge": {"module": {"source": "oci", "sha256": other,
                                                            "oci": "oci://r.example/f:1"}}}))
    assert sha == other


def test_committed_module_pins_are_those_of_the_built_module():
    """The development tree pins the module `make build-filter` builds from it (rebuild and
    `make module-pins` after a change to the filter or the toolchain)."""
    assert FILTER_WASM.is_file(), f"{FILTER_WASM} missing: make build-filter"
    r = subprocess.run([sys.executable, str(TOOL), "check-chart", str(FILTER_WASM), str(CHART)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == committed_pins()


def test_the_pin_check_can_fail(tmp_path):
    chart = tmp_path / "chart"
    chart.mkdir()
    for f in ("values.yaml", "Chart.yaml"):
        (chart / f).write_text((CHART / f).read_text())
    other = tmp_path / "other.wasm"
    other.write_bytes(b"\0asm\1\0\0\0")
    r = subprocess.run([sys.executable, str(TOOL), "check-chart", str(other), str(chart)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "make module-pins" in r.stderr
    subprocess.run([sys.executable, str(TOOL), "write-chart", str(other), str(chart)], check=True)
    r = subprocess.run([sys.executable, str(TOOL), "check-chart", str(other), str(chart)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Only the pins changed.
    before = (CHART / "values.yaml").read_text().splitlines()
    after = (chart / "values.yaml").read_text().splitlines()
    assert len(before) == len(after)
    assert [(a, b) for a, b in zip(before, after) if a != b] == [
        (a, b) for a, b in zip(before, after) if re.match(r"\s+(file|oci): ", a) and a != b]


def test_oci_layout_is_deterministic_and_istio_compat(tmp_path):
    """The image Istio's fetcher accepts as the *compat* variant (pkg/wasm/imagefetcher.go
    extractOCIStandardImage: an OCI manifest whose last layer is
    application/vnd.oci.image.layer.v1.tar+gzip holding plugin.wasm), the same bytes from two
    writes, and a manifest digest equal to the oci pin."""
    wasm = b"\0asm\1\0\0\0" + bytes(range(256)) * 700   # > one 64 KiB stored block
    a = module_pins.write_layout(wasm, tmp_path / "a", "1.2.3")
    b = module_pins.write_layout(wasm, tmp_path / "b", "1.2.3")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                             if p.is_file())
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a == b == module_pins.pins(wasm)
    assert a["file"] == hashlib.sha256(wasm).hexdigest()

    root = tmp_path / "a"
    blob = lambda d: (root / "blobs/sha256" / d.removeprefix("sha256:")).read_bytes()  # noqa: E731
    index = json.loads((root / "index.json").read_text())
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [desc] = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "1.2.3"
    manifest_bytes = blob(desc["digest"])
    assert desc["digest"] == f"sha256:{a['oci']}" == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert desc["size"] == len(manifest_bytes)
    m = json.loads(manifest_bytes)
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"  # not Docker schema 2
    assert m["annotations"]["module.wasm.image/variant"] == "compat"
    [layer] = m["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_bytes = blob(layer["digest"])
    assert layer["size"] == len(layer_bytes)
    assert hashlib.sha256(layer_bytes).hexdigest() == layer["digest"].removeprefix("sha256:")
    tar_bytes = gzip.decompress(layer_bytes)                 # a valid gzip stream
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        [member] = t.getmembers()
        assert (member.name, member.mtime, member.uid, member.gid) == ("plugin.wasm", 0, 0, 0)
        assert t.extractfile(member).read() == wasm
    config = json.loads(blob(m["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]
    # The tag is not part of the manifest: another tag, the same pin.
    assert module_pins.write_layout(wasm, tmp_path / "c", "9.9.9") == a


def test_module_build_is_pinned_and_path_independent():
    """The toolchain is pinned, the image builds the auth server with it and takes the module
    from the release build instead of compiling its own; the module build remaps the paths
    rustc would embed."""
    toolchain = (ROOT / "rust-toolchain.toml").read_text()
    channel = re.search(r'^channel = "([0-9.]+)"$', toolchain, re.M).group(1)
    assert "wasm32-wasip1" in toolchain
    dockerfile = (ROOT / "authserver/Dockerfile").read_text()
    assert re.search(rf"rust:{re.escape(channel)}-", dockerfile), "image Rust != rust-toolchain.toml"
    assert "wasm32-wasip1" not in dockerfile and "tollgate-filter" not in dockerfile
    assert "COPY dist/module/tollgate_filter.wasm" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    for prefix in ("$(CARGO_HOME_DIR)", "$(ROOT)", "$(TARGET_DIR)"):
        assert f"--remap-path-prefix={prefix}=" in makefile, prefix


def test_module_embeds_no_build_path():
    """No absolute path of this checkout or of the crates' sources is in the built module
    (they would make its bytes depend on where it was built)."""
    data = FILTER_WASM.read_bytes()
    for p in (str(ROOT), str(Path.home() / ".cargo")):
        assert p.encode() not in data, p
    assert b"/cargo/registry/src/" in data, "the crates' paths, remapped"


def test_module_pin_istio_fetcher_sees_the_oci_pin(tmp_path):
    """The layout of the built module, pushed to a registry (go-containerregistry's, in
    process) and fetched back by Istio's own module cache (istio.io/istio/pkg/wasm, its OCI
    image fetcher: tests/cluster/tools/istio/wasmfetch, from the module istiod is built
    from): it accepts the oci pin (the manifest digest Istio compares with `sha256`), the
    module it extracts is the one whose sha256 is the file pin, and it refuses the file pin
    (not a manifest digest)."""
    layout = tmp_path / "oci"
    pins = module_pins.write_layout(FILTER_WASM.read_bytes(), layout, "test")
    index = json.loads((layout / "index.json").read_text())
    assert [m["mediaType"] for m in index["manifests"]] == [
        "application/vnd.oci.image.manifest.v1+json"]

    def fetch(pin: str) -> dict:
        r = subprocess.run(["go", "run", "-trimpath", "./wasmfetch", "-layout", str(layout),
                            "-sha256", pin], cwd=ROOT / "tests/cluster/tools/istio",
                           capture_output=True, text=True, timeout=1800,
                           env={**os.environ, "GOFLAGS": "-mod=mod"})
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    got = fetch(pins["oci"])
    assert got["ok"] and got["file_sha256"] == pins["file"], got
    bad = fetch(pins["file"])
    assert not bad["ok"] and "which does not match" in bad["error"], bad
    assert pins == committed_pins()
