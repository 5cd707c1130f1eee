"""The contributor hooks in .pre-commit-config.yaml run here and pass on the tree:
yamllint and shellcheck over the files they select, and the Conventional Commits check on
good and bad messages (rustfmt and clippy are `make lint`)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def hooks() -> dict[str, dict]:
    cfg = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    return {h["id"]: h for repo in cfg["repos"] for h in repo["hooks"]}


def tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True)
    return [f for f in out.stdout.split() if f]


def test_the_promised_hooks_are_configured():
    assert {"rustfmt", "clippy", "yamllint", "shellcheck", "conventional-commit"} <= set(hooks())


def test_yamllint_hook_passes():
    h = hooks()["yamllint"]
    exclude = re.compile(h.get("exclude", "^$"))
    files = [f for f in tracked("*.yaml") + tracked("*.yml") if not exclude.search(f)]
    assert files
    cmd = shlex.split(h["entry"])
    cmd[0] = str(BIN / cmd[0])
    r = subprocess.run([*cmd, *files], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_hook_passes():
    files = [f for f in subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True,
                                       text=True).stdout.split()
             if f.endswith(".sh") or (REPO / f).is_file() and
             (REPO / f).read_bytes()[:32].startswith((b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh"))]
    assert ".ci/run" in files
    r = subprocess.run([str(BIN / "shellcheck"), *files], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_commit_message_check(tmp_path):
    entry = shlex.split(hooks()["conventional-commit"]["entry"])
    for msg, good in [("feat(authserver): add leases", True), ("fix: a bug", True),
                      ("perf!: faster", True), ("docs(docs/x.md): typo", True),
                      ("Merge branch 'x'", True), ("added stuff", False),
                      ("feat:missing space", False), ("feature: nope", False), ("", False)]:
        f = tmp_path / "MSG"
        f.write_text(msg + "\n\nbody\n")
        r = subprocess.run([*entry, str(f)], cwd=REPO, capture_output=True, text=True)
        assert (r.returncode == 0) == good, (msg, r.stderr)
