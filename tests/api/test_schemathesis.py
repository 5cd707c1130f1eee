"""The OpenAPI contract (docs/openapi.json, generated from the handlers) fuzzed by
schemathesis against the running release auth server: both listeners, each with the part
of the contract it serves, on the in-memory store and on a real redis-server.

Every operation; the examples, coverage, fuzzing and stateful phases; the checks
not_a_server_error, status_code_conformance, content_type_conformance and
response_schema_conformance; zero failures. The number of examples is bounded so that the
runs take one to two minutes on two cores (`make test-api`).

The stateful phase follows OpenAPI links: the ones the contract declares (POST
/oauth2/register 201 -> GET/PUT/DELETE /oauth2/register/{client_id}, RFC 7591 -> 7592;
POST /admin/users 201 -> GET/DELETE /admin/users/{username}) and the ones schemathesis
infers (the admin part has 14: 5 declared, 9 inferred). A third run per store, the
stateful phase alone on the registration operations of the admin listener, starts its
scenarios from POST /oauth2/register, which the run on the whole admin part never does
(see the test). The test reads the links covered from schemathesis's NDJSON report and
fails unless every declared link was followed. Measured: 7 of the 14 on the whole admin
part (every user link), 6 of the 7 registration links on the third run (not PUT -> GET),
13 of 14 together. The public part declares no links; of its 2 inferred ones (GET <-> PUT
/oauth2/register/{client_id}) none is covered: no public operation returns a client_id.

Credentials come from a schemathesis config per run, keyed by the contract's security
schemes: `client_basic` (a client with every scope the endpoints check), `admin_token`,
`registration_access_token` (of a client registered for this run).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from harness.authserver import AuthServer, authserver_binary  # noqa: E402
from harness.redis import RedisServer  # noqa: E402

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 25
# The limits would turn the fuzzer's hundreds of requests into 429s (documented, but they
# would hide every other answer).
ENV = {"TOLLGATE_RATE_LIMIT_DEFAULT": "0", "TOLLGATE_RATE_LIMIT_PER_IP": "0",
       "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0"}


def schemathesis() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.fail("schemathesis is not installed: make venv (tests/requirements.txt)")
    return str(exe)


def contract(part: str) -> dict:
    out = subprocess.run([str(authserver_binary()), "openapi", "--part", part],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def toml_str(s: str) -> str:
    return json.dumps(s)


def links_covered(report: Path) -> set[str]:
    """The OpenAPI links the stateful phase followed, from schemathesis's NDJSON report:
    what its "API Links: N covered" line counts (a link is covered when a scenario step
    applied it; the CLI's own rule, schemathesis/cli/commands/run/handlers/output.py)."""
    covered = set()
    for line in report.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if not event or event["phase"] != "stateful" or event["is_final"] \
                or event["status"] in ("interrupted", "skip", None):
            continue
        for case in event["recorder"]["cases"].values():
            if case.get("transition") and case.get("is_transition_applied"):
                covered.add(case["transition"]["id"])
    return covered


def run(tmp: Path, name: str, part: str, base: str, auth: dict[str, dict[str, str]],
        phases: str = "examples,coverage,fuzzing,stateful", only: str | None = None,
        examples: int = MAX_EXAMPLES) -> set[str]:
    """One schemathesis run; the links its stateful phase covered, as `source -> target`."""
    schema = tmp / f"{name}.json"
    schema.write_text(json.dumps(contract(part)))
    cfg = tmp / f"{name}.toml"
    lines = []
    for scheme, values in auth.items():
        lines.append(f"[auth.openapi.{scheme}]")
        lines += [f"{k} = {toml_str(v)}" for k, v in values.items()]
    cfg.write_text("\n".join(lines) + "\n")
    report = tmp / f"{name}.ndjson"
    cmd = [schemathesis(), "--config-file", str(cfg), "run", str(schema), "--url", base,
           "--checks", CHECKS, "--max-examples", str(examples), "--seed", "1",
           "--workers", "2", "--request-timeout", "10", "--max-redirects", "0", "--phases",
           phases, "--suppress-health-check", "all", "--report", "ndjson",
           "--report-ndjson-path", str(report)]
    if only:
        cmd += ["--include-path-regex", only]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"schemathesis found failures on the {name} listener:\n{out[-20000:]}"
    assert "No issues found" in out or " passed" in out, out[-3000:]
    # "<source> -> [<status>] <link name> -> <target>"
    return {f"{t.split(' -> ')[0]} -> {t.split(' -> ')[-1]}" for t in links_covered(report)}


def seed(a: AuthServer) -> dict[str, dict[str, str]]:
    """A client with the scopes the endpoints check, a client of its own for RFC 7592 and
    a user: the credentials of the contract's security schemes."""
    c = a.register_client(scope="api:read tollgate:edge tollgate:introspect",
                          grant_types=["client_credentials"])
    own = a.register_client(scope="api:read")
    r = requests.post(f"{a.admin_base}/admin/users", headers=a.admin_headers, timeout=5,
                      json={"username": "alice", "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    return {
        "client_basic": {"username": c["client_id"], "password": c["client_secret"]},
        "admin_token": {"bearer": a.admin_token},
        "registration_access_token": {"bearer": own["registration_access_token"]},
    }


@pytest.fixture(params=["memory", "redis"])
def server(request, tmp_path):
    if authserver_binary() is None:
        pytest.fail("target/release/authserver is not built: make build-authserver")
    module = tmp_path / "module.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")  # an empty Wasm module: /edge/module.wasm serves it
    env = {**ENV, "TOLLGATE_EDGE_MODULE": str(module)}
    if request.param == "memory":
        with AuthServer(env=env) as a:
            yield a
        return
    with RedisServer(tmp_path / "redis") as redis, \
            AuthServer(env={**env, "TOLLGATE_STORE": redis.url(0)}) as a:
        yield a


def test_the_contract_holds_on_both_listeners(server, tmp_path):
    auth = seed(server)
    # What each listener serves is what its part of the contract says.
    served = requests.get(f"{server.base}/.well-known/openapi.json", timeout=5).json()
    assert served == contract("public")
    assert requests.get(f"{server.admin_base}/.well-known/openapi.json",
                        timeout=5).json() == contract("full")
    # Client management with the registration access token on the public listener, with
    # the admin token on the admin listener (docs/contracts.md, "Listeners").
    public = {k: v for k, v in auth.items() if k != "admin_token"}
    admin = {k: v for k, v in auth.items() if k != "registration_access_token"}
    run(tmp_path, "public", "public", server.base, public)
    covered = run(tmp_path, "admin", "admin", server.admin_base, admin)
    # Registration is never a root of the stateful phase of the whole admin part:
    # schemathesis reads `client_name` as a reference to a "Client" resource (the
    # /admin/clients path) that no operation returns, and starts scenarios only from the
    # operations it deems likely to succeed while there are any (here the user ones). On
    # the registration operations alone it starts from POST /oauth2/register.
    covered |= run(tmp_path, "admin-clients", "admin", server.admin_base, admin,
                   phases="stateful", only="^/oauth2/register", examples=4 * MAX_EXAMPLES)
    # The links the contract declares (RFC 7591 -> RFC 7592; user management) are followed.
    declared = {f"POST {src} -> {m} {dst}"
                for src, dst, methods in (("/oauth2/register", "/oauth2/register/{client_id}",
                                           ("GET", "PUT", "DELETE")),
                                          ("/admin/users", "/admin/users/{username}",
                                           ("GET", "DELETE")))
                for m in methods}
    assert declared <= covered, f"links not covered: {sorted(declared - covered)}; covered: {sorted(covered)}"
