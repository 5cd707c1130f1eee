"""Generate docs/chart-values.md from chart/values.yaml (the `# --` comments above each key).

    python tests/chart/gen_values_doc.py > docs/chart-values.md

test_docs.py checks the committed page equals this output, so the reference cannot drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "chart/values.yaml"

HEADER = """# Chart values reference

Generated from `chart/values.yaml` by `tests/chart/gen_values_doc.py` (the test suite checks
it is current). `values.schema.json` rejects unknown top-level keys and wrong types.
Per-environment overrides: `chart/values-staging.yaml`, `chart/values-production.yaml`;
install steps: [install.md](install.md).

| key | type | default | description |
|---|---|---|---|
"""


def lookup(data, path):
    for p in path:
        data = data[p]
    return data


def entries():
    data = yaml.safe_load(VALUES.read_text())
    lines = VALUES.read_text().splitlines()
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    in_comment = False
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("# -- "):
            comment = [stripped[4:].strip()]
            in_comment = True
            continue
        if stripped.startswith("#"):
            if in_comment:
                comment.append(stripped[1:].strip())
            continue
        if not stripped:
            in_comment = False
            comment = []
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", line)
        if not m:
            continue  # list items and continuation lines belong to the key above
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = [k for _, k in stack]
        try:
            value = lookup(data, path)
        except (KeyError, TypeError):
            comment, in_comment = [], False
            continue
        if comment:
            out.append((".".join(path), value, " ".join(comment)))
        comment, in_comment = [], False
    return out


def type_of(v) -> str:
    return {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "object"}.get(type(v), "any")


def render() -> str:
    rows = []
    for key, value, desc in entries():
        default = json.dumps(value, separators=(",", ":"))
        if len(default) > 60:
            default = default[:57] + "..."
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | {type_of(value)} | `{default}` | {desc} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
