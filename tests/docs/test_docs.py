"""The docs stay true: every shell block parses, every `authserver` command, flag and
`TOLLGATE_*` variable they show exists, every `make` target exists, every relative link and
every file a command names exists, and every auth server endpoint a `curl` line calls is
served. (The README tour itself is run by `make demo-check`.)"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from harness.authserver import AuthServer, authserver_binary  # noqa: E402

DOCS = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md"),
               *(REPO / "chart").glob("*.md"), *(REPO / "tests").glob("*/README.md"),
               *(REPO / "tests" / "e2e").glob("*/README.md")])

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(lang: str) -> list[tuple[Path, str]]:
    out = []
    for d in DOCS:
        for m in FENCE.finditer(d.read_text()):
            if m.group(1) == lang:
                out.append((d, m.group(2)))
    return out


def sh_lines() -> list[tuple[Path, str]]:
    """Logical lines of every sh block (continuations joined, comments dropped)."""
    out = []
    for doc, body in blocks("sh"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out.append((doc, line))
    return out


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


@pytest.mark.parametrize("doc,body", blocks("sh"), ids=lambda v: rel(v) if isinstance(v, Path) else "")
def test_shell_blocks_parse(doc, body):
    r = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
    assert r.returncode == 0, f"{rel(doc)}: {r.stderr}"


def authserver_help(words: list[str]) -> str:
    binary = authserver_binary()
    if binary is None:
        pytest.fail("target/release/authserver is not built (make build-authserver)")
    r = subprocess.run([str(binary), *words, "--help"], capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, f"`authserver {' '.join(words)}` does not exist: {r.stderr}"
    return r.stdout


def authserver_invocations() -> list[tuple[Path, list[str]]]:
    out = []
    for doc, line in sh_lines():
        for seg in re.split(r"\|\||&&|;|\|", line):
            try:
                words = shlex.split(seg)
            except ValueError:
                continue
            for i, w in enumerate(words):
                if w.endswith("authserver") and not w.startswith("-") and "=" not in w \
                        and (i == 0 or words[i - 1] in ("--", "exec") or "/" in w):
                    out.append((doc, words[i + 1:]))
                    break
    for doc in DOCS:
        for m in re.finditer(r"`authserver ([^`]+)`", doc.read_text()):
            out.append((doc, shlex.split(m.group(1).replace("|", " "))))
    return out


def test_authserver_commands_and_flags_exist():
    checked = 0
    for doc, args in authserver_invocations():
        sub = []
        for a in args:
            if a.startswith("-") or a.startswith("<") or "/" in a or "." in a:
                break
            sub.append(a)
        # Keep only words that are subcommands (stop at positional values).
        help_text = authserver_help([])
        words = []
        for w in sub:
            if not re.search(rf"^\s+{re.escape(w)}\b", authserver_help(words), re.M):
                break
            words.append(w)
        text = authserver_help(words)
        for a in args:
            if a.startswith("--"):
                flag = a.split("=")[0]
                assert flag in text or flag in help_text, \
                    f"{rel(doc)}: `authserver {' '.join(args)}`: {flag} is not an option"
        checked += 1
    assert checked >= 5


def test_every_tollgate_variable_in_the_docs_exists():
    known = authserver_help([]) + authserver_help(["init"])
    sources = "".join(p.read_text(errors="ignore") for p in
                      [*(REPO / "authserver" / "src").rglob("*.rs"), REPO / "tests/demo/demo.py",
                       *(REPO / "chart" / "templates").rglob("*"), REPO / "Makefile"]
                      if p.is_file())
    missing = set()
    for doc in DOCS:
        for var in set(re.findall(r"\bTOLLGATE_[A-Z0-9_]+\b", doc.read_text())):
            if var.startswith("TOLLGATE_SEED_CLIENT_SECRET") or var == "TOLLGATE_REQUIRE_REDIS":
                continue
            if var not in known and var not in sources:
                missing.add(f"{rel(doc)}: {var}")
    assert not missing, sorted(missing)


def make_targets() -> set[str]:
    r = subprocess.run(["make", "-qp", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True)
    return set(re.findall(r"^([a-zA-Z0-9_.-]+):", r.stdout, re.M))


def test_make_targets_named_in_the_docs_exist():
    """`make X` in inline code or in a shell block names a target that exists."""
    targets = make_targets()
    named = set()
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", doc.read_text()):
            named.update((doc, t) for t in re.findall(r"^make ([a-z][a-z0-9-]*[a-z0-9])$", span.strip()))
    for doc, line in sh_lines():
        named.update((doc, t) for t in re.findall(r"(?:^|&&|;)\s*make ([a-z][a-z0-9-]*[a-z0-9])\b", line))
    missing = [f"{rel(d)}: make {t}" for d, t in sorted(named) if t not in targets]
    assert not missing, missing
    assert len(named) >= 5
    assert {"demo", "test", "bench"} <= targets


def test_relative_links_resolve():
    bad = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            if not (doc.parent / target).exists():
                bad.append(f"{rel(doc)} -> {target}")
    assert not bad, bad


def test_files_named_by_commands_exist():
    bad = []
    for doc, line in sh_lines():
        for m in re.finditer(r"(?:-f|-k|--file|--values|-c)\s+((?:chart|argocd|k8s|tests|docs)/[\w./-]+)", line):
            if not (REPO / m.group(1)).exists():
                bad.append(f"{rel(doc)}: {m.group(1)}")
    assert not bad, bad


def test_endpoints_called_by_curl_in_the_docs_are_served():
    """Run every documented `curl` against a real auth server: none may hit a missing route
    or a wrong method, on the listener it names ($ISSUER, $AUTH or :9080 for the public one;
    $ADMIN_URL or :9081 for the admin listener)."""
    calls = set()
    for doc, line in sh_lines():
        if "curl" not in line:
            continue
        for m in re.finditer(r"(\$ISSUER|\$\{ISSUER\}|http://127\.0\.0\.1:9080|\$AUTH|"
                             r"\$ADMIN_URL|\$\{ADMIN_URL\}|http://127\.0\.0\.1:9081)(/[\w./{}-]*)", line):
            admin = m.group(1) in ("$ADMIN_URL", "${ADMIN_URL}", "http://127.0.0.1:9081")
            method = "POST" if re.search(r"(-d |--data|-X POST|-F )", line) else "GET"
            if "-X DELETE" in line:
                method = "DELETE"
            if "-X PUT" in line:
                method = "PUT"
            calls.add((admin, method, m.group(2)))
    assert calls, "no documented auth server calls found"
    from harness.envoy import filter_wasm
    with AuthServer(env={"TOLLGATE_EDGE_MODULE": str(filter_wasm())}) as auth:
        h = {"authorization": f"Bearer {auth.admin_token}"}
        for admin, method, path in sorted(calls):
            path = re.sub(r"\{[^}]+\}", "x", path)
            base = auth.admin_base if admin else auth.base
            r = requests.request(method, base + path, headers=h, timeout=5,
                                 data={"token": secrets.token_urlsafe(8)} if method == "POST" else None)
            if not admin and (path.startswith("/admin/") or path in ("/metrics", "/oauth2/register")):
                # Shown on the public listener only to say it is not there.
                assert r.status_code == 404, f"{method} {path} on the public listener: {r.status_code}"
                continue
            assert r.status_code not in (404, 405) or path.startswith("/admin/users/"), \
                f"{method} {path}: {r.status_code} {r.text[:200]}"
