#!/usr/bin/env python3
"""The Wasm module's two pins, and the OCI image that carries it (standard library only).

Istio checks a WasmPlugin's / EnvoyFilter's `sha256` against different bytes per source
(istio/istio pkg/wasm):

- http(s):// URLs: the SHA-256 of the downloaded `.wasm` file (`file` pin);
- oci:// URLs: the digest of the image *manifest* (`oci` pin), compared before any layer is
  pulled; the `.wasm` inside is not hashed at all.

So the image has to be built deterministically for its manifest digest to be known before
it is pushed. This writes an OCI image layout in Istio's "compat" variant (one
`application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, the manifest
annotated `module.wasm.image/variant=compat`; pkg/wasm/imagefetcher.go
extractOCIStandardImage), with every byte fixed: tar entry with mtime 0, uid/gid 0, mode
0444; gzip without timestamp or name, deflate in stored blocks (so no zlib version can
change the bytes); JSON with sorted keys. The same module gives the same manifest digest on
any machine; the release pushes exactly this layout (`oras cp --from-oci-layout`).

    module_pins.py pins MODULE                     # {"file": ..., "oci": ...}
    module_pins.py layout MODULE DIR --tag 0.1.0   # write the OCI layout, print the pins
    module_pins.py check-chart MODULE CHART        # the chart's committed pins are MODULE's
    module_pins.py write-chart MODULE CHART        # write MODULE's pins into the chart
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import struct
import sys
import tarfile
import zlib
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ANNOTATIONS = {
    "module.wasm.image/variant": "compat",
    "org.opencontainers.image.title": "tollgate-filter",
    "org.opencontainers.image.source": "https://github.com/tollgate-auth/tollgate",
    "org.opencontainers.image.licenses": "Apache-2.0",
}


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_of(wasm: bytes) -> bytes:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mtime, info.mode = len(wasm), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        t.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_stored(data: bytes) -> bytes:
    """RFC 1952 gzip of `data` in stored (uncompressed) deflate blocks: no mtime, no name,
    OS 255, and no compressor whose output could change between versions."""
    out = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
    blocks = [data[i:i + 0xFFFF] for i in range(0, len(data), 0xFFFF)] or [b""]
    for i, chunk in enumerate(blocks):
        final = 1 if i == len(blocks) - 1 else 0
        out += bytes([final]) + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk
    out += struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return bytes(out)


def image(wasm: bytes) -> dict[str, bytes]:
    """The blobs of the image: layer, config and manifest."""
    tar = tar_of(wasm)
    layer = gzip_stored(tar)
    config = canonical_json({
        "architecture": "wasm", "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(tar)}"]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{sha256(config)}",
                   "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{sha256(layer)}",
                    "size": len(layer)}],
        "annotations": ANNOTATIONS,
    })
    return {"layer": layer, "config": config, "manifest": manifest}


def pins(wasm: bytes) -> dict[str, str]:
    return {"file": sha256(wasm), "oci": sha256(image(wasm)["manifest"])}


def write_layout(wasm: bytes, out: Path, tag: str) -> dict[str, str]:
    blobs = image(wasm)
    d = out / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    for b in blobs.values():
        (d / sha256(b)).write_bytes(b)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    m = blobs["manifest"]
    (out / "index.json").write_bytes(canonical_json({
        "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": f"sha256:{sha256(m)}",
                       "size": len(m),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return pins(wasm)


# ------------------------------------------------------------------ the chart's pins
# values.yaml: edge.module.pins.file / .oci; Chart.yaml: annotations tollgate.dev/module-*.
VALUE_KEYS = {"file": "file", "oci": "oci"}
ANNOTATION_KEYS = {"file": "tollgate.dev/module-sha256", "oci": "tollgate.dev/module-oci-digest"}


def chart_pins(chart: Path) -> dict[str, dict[str, str]]:
    values = (chart / "values.yaml").read_text()
    block = re.search(r"^    pins:\n((?:      .*\n|\s*#.*\n)+)", values, re.M)
    got_values = dict(re.findall(r"^      (file|oci): \"?([0-9a-f]*)\"?", block.group(1), re.M)) \
        if block else {}
    chart_yaml = (chart / "Chart.yaml").read_text()
    got_ann = {k: m.group(1) for k, a in ANNOTATION_KEYS.items()
               if (m := re.search(rf"^  {re.escape(a)}: \"?([0-9a-f]*)\"?$", chart_yaml, re.M))}
    return {"values": got_values, "annotations": got_ann}


def write_chart(chart: Path, p: dict[str, str]) -> None:
    vpath = chart / "values.yaml"
    values = vpath.read_text()
    for k in ("file", "oci"):
        values, n = re.subn(rf"^(      {k}: )\"?[0-9a-f]*\"?$", rf'\g<1>"{p[k]}"', values,
                            count=1, flags=re.M)
        if n != 1:
            sys.exit(f"{vpath}: no edge.module.pins.{k}")
    vpath.write_text(values)
    cpath = chart / "Chart.yaml"
    text = cpath.read_text()
    for k, a in ANNOTATION_KEYS.items():
        text, n = re.subn(rf"^(  {re.escape(a)}: )\"?[0-9a-f]*\"?$", rf'\g<1>"{p[k]}"', text,
                          count=1, flags=re.M)
        if n != 1:
            sys.exit(f"{cpath}: no annotation {a}")
    cpath.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("pins", "layout", "check-chart", "write-chart"):
        s = sub.add_parser(name)
        s.add_argument("module", type=Path)
        if name == "layout":
            s.add_argument("out", type=Path)
            s.add_argument("--tag", required=True)
        if name in ("check-chart", "write-chart"):
            s.add_argument("chart", type=Path)
    a = ap.parse_args()
    wasm = a.module.read_bytes()
    if not wasm.startswith(b"\0asm"):
        sys.exit(f"{a.module} is not a Wasm module")
    p = pins(wasm)
    if a.cmd == "layout":
        write_layout(wasm, a.out, a.tag)
    if a.cmd == "write-chart":
        write_chart(a.chart, p)
    if a.cmd == "check-chart":
        got = chart_pins(a.chart)
        if got["values"] != p or got["annotations"] != p:
            print(f"the chart's module pins are not those of {a.module}:\n"
                  f"  module:            {json.dumps(p)}\n"
                  f"  values.yaml:       {json.dumps(got['values'])}\n"
                  f"  Chart.yaml:        {json.dumps(got['annotations'])}\n"
                  "run `make module-pins` and commit the chart", file=sys.stderr)
            return 1
    print(json.dumps(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
