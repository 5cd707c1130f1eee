"""`make bench-authserver`: Tollgate's auth server against node oidc-provider, Keycloak and
Ory Hydra (peer_servers.py), same run.

Both use one throw-away redis-server on loopback (Tollgate db 0, oidc-provider db 1). Both
run side by side and are measured one at a time: each scenario on Tollgate, then at once
on oidc-provider. For each: client_credentials
token requests (client_secret_basic) and RFC 7662 introspection requests authenticated as
the client, each a 2 s warm-up then a 10 s measurement with wrk (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import requests

import common
from common import BenchError, Processes, Settings

PEER_DIR = common.BENCH_DIR / "peers" / "oidc-provider"
PEER_JWT_RESOURCE = "urn:tollgate:bench:jwt"
PEER_OPAQUE_RESOURCE = "urn:tollgate:bench:opaque"
SCOPE = "api:read"

# (key, label) in table order
SCENARIOS = [
    ("token_jwt", "token: client_credentials -> ES256 JWT"),
    ("token_jwt_rs256", "token: client_credentials -> RS256 JWT"),
    ("token_opaque", "token: client_credentials -> opaque"),
    ("introspect_opaque", "introspect: opaque token"),
    ("introspect_jwt", "introspect: ES256 JWT"),
    ("edge_feed", "edge: revocation feed, nothing new"),
]
# The peers beside oidc-provider (BENCH_PEERS), each with its set-up line for the report.
MORE_PEERS = {
    "keycloak": ("Keycloak", "Keycloak {version} (Maven Central), kc.sh build --db=dev-file "
                 "then start --optimized (production mode, dev-file H2 database, HTTP, local "
                 "caches), realm imported at start, ES256 and RS256 clients, JIT warm-up"),
    "hydra": ("Ory Hydra", "Ory Hydra {version} (Go module proxy), serve all --dev, "
              "DSN=memory; introspection on its admin listener, without client credentials"),
}
# Process ids whose CPU time per request is measured on Tollgate's side (capacity.py).
TOLLGATE_PIDS: dict[str, int] = {}


def jose_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def authserver_bin() -> Path:
    path = Path(os.environ.get("AUTHSERVER_BIN", common.ROOT / "target/release/authserver"))
    if not path.is_file():
        raise BenchError(f"{path} not found: run `make build-authserver`")
    return path


# ----------------------------------------------------------------------- Tollgate

Spec = tuple[str, dict[str, str]]  # (base URL, wrk environment) of one measurement


def start_tollgate(procs: Processes, settings: Settings, redis_port: int) -> dict[str, Any]:
    """Start and check the auth server; return what to measure, per scenario. A second one,
    with RS256 signing keys (`TOLLGATE_SIGNING_ALG`, one algorithm per deployment) on Redis
    db 2, serves the RS256 row."""
    specs = start_one_tollgate(procs, settings, redis_port, "ES256")
    rs = start_one_tollgate(procs, settings, redis_port, "RS256")
    specs["token_jwt_rs256"] = rs["token_jwt"]
    return specs


def start_one_tollgate(procs: Processes, settings: Settings, redis_port: int,
                       alg: str) -> dict[str, Any]:
    port, admin_port = common.free_port(), common.free_port()
    admin = secrets.token_urlsafe(32)
    base = f"http://127.0.0.1:{port}"
    admin_base = f"http://127.0.0.1:{admin_port}"  # registration is on the admin listener
    env = {
        "TOLLGATE_STORE": f"redis://127.0.0.1:{redis_port}/{0 if alg == 'ES256' else 2}",
        "TOLLGATE_SIGNING_ALG": alg,
        "TOLLGATE_LISTEN": f"127.0.0.1:{port}",
        "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "TOLLGATE_ADMIN_TOKEN": admin,
        "TOLLGATE_LOG": "warn",
        "RUST_LOG": "warn",
        "TOLLGATE_LOG_FORMAT": "text",
        # The default limits (per client, per IP) would turn most requests into 429:
        # 0 switches each limit off (docs/configuration.md). The RS256 server keeps the
        # per-client quota on, with a limit no run reaches, so that its rows (and their
        # MONITOR count) include what a quota costs: a lease of 100 requests at a time.
        "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0" if alg == "ES256" else "1000000000",
        "TOLLGATE_RATE_LIMIT_PER_IP": "0",
        "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
    }
    proc = procs.start(f"authserver-{alg}", settings.server_prefix() +
                       [str(authserver_bin()), "serve"], env=env)
    TOLLGATE_PIDS["authserver" if alg == "ES256" else "authserver_rs256"] = proc.pid
    common.wait_until("authserver /readyz",
                      lambda: requests.get(f"{base}/readyz", timeout=1).status_code == 200,
                      procs=procs, watch=proc)

    def register(extra: dict[str, Any]) -> tuple[str, str]:
        body = {"client_name": "bench", "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic", "scope": SCOPE, **extra}
        r = requests.post(f"{admin_base}/oauth2/register", json=body, timeout=5,
                          headers={"Authorization": f"Bearer {admin}"})
        if r.status_code not in (200, 201):
            raise BenchError(f"register: {r.status_code} {r.text[:300]}")
        data = r.json()
        return data["client_id"], data["client_secret"]

    jwt_client = register({})
    opaque_client = register({"access_token_format": "opaque"})
    # A gateway's client for the revocation feed (what the filter polls, once per gateway).
    edge_client = register({"scope": "tollgate:edge", "rate_limit_per_minute": 0})

    def issue(client: tuple[str, str]) -> str:
        r = requests.post(f"{base}/oauth2/token", timeout=5,
                          data={"grant_type": "client_credentials", "scope": SCOPE},
                          headers={"Authorization": common.basic_auth(*client)})
        if r.status_code != 200:
            raise BenchError(f"token: {r.status_code} {r.text[:300]}")
        return r.json()["access_token"]

    def check_introspect(client: tuple[str, str], token: str) -> None:
        r = requests.post(f"{base}/oauth2/introspect", data={"token": token}, timeout=5,
                          headers={"Authorization": common.basic_auth(*client)})
        if r.status_code != 200 or r.json().get("active") is not True:
            raise BenchError(f"introspect: {r.status_code} {r.text[:300]}")

    jwt = issue(jwt_client)
    header = jose_header(jwt)
    if header.get("alg") != alg:
        raise BenchError(f"expected an {alg} JWT, got header {header}")
    opaque = issue(opaque_client)
    if opaque.count(".") == 2:
        raise BenchError("the opaque client received a JWT")
    check_introspect(jwt_client, jwt)
    check_introspect(opaque_client, opaque)
    edge_auth = common.basic_auth(*edge_client)
    r = requests.get(f"{base}/edge/revocations", timeout=5,
                     headers={"Authorization": edge_auth})
    if r.status_code != 200:
        raise BenchError(f"edge feed: {r.status_code} {r.text[:300]}")
    feed_path = f"/edge/revocations?since={r.json()['cursor']}"

    token_body = f"grant_type=client_credentials&scope={SCOPE.replace(':', '%3A')}"
    print(f"Tollgate auth server ({alg}): {base}", flush=True)
    return {
        "token_jwt": (base, {"BENCH_PATH": "/oauth2/token", "BENCH_BODY": token_body,
                             "BENCH_AUTH": common.basic_auth(*jwt_client)}),
        "token_opaque": (base, {"BENCH_PATH": "/oauth2/token", "BENCH_BODY": token_body,
                                "BENCH_AUTH": common.basic_auth(*opaque_client)}),
        "introspect_opaque": (base, {"BENCH_PATH": "/oauth2/introspect",
                                     "BENCH_BODY": f"token={opaque}",
                                     "BENCH_AUTH": common.basic_auth(*opaque_client)}),
        "introspect_jwt": (base, {"BENCH_PATH": "/oauth2/introspect",
                                  "BENCH_BODY": f"token={jwt}",
                                  "BENCH_AUTH": common.basic_auth(*jwt_client)}),
        "edge_feed": (base, {"BENCH_PATH": feed_path, "BENCH_AUTH": edge_auth,
                             "BENCH_SCRIPT": "get.lua"}),
    }


# ------------------------------------------------------------------ oidc-provider

def start_peer(procs: Processes, settings: Settings, redis_port: int,
               workers: int) -> dict[str, Any]:
    """Start and check oidc-provider; return what to measure, per scenario."""
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise BenchError(f"run `npm ci` in {PEER_DIR} (make bench-authserver does)")
    if not shutil.which("node"):
        raise BenchError("node not found")
    port = common.free_port()
    base = f"http://127.0.0.1:{port}"
    client = ("bench-client", secrets.token_urlsafe(24))
    env = {
        "PEER_LISTEN": f"127.0.0.1:{port}",
        "PEER_REDIS": f"redis://127.0.0.1:{redis_port}/1",
        "PEER_WORKERS": str(workers),
        "PEER_CLIENT_ID": client[0],
        "PEER_CLIENT_SECRET": client[1],
        "NODE_ENV": "production",
    }
    proc = procs.start("oidc-provider", settings.server_prefix() + ["node", "server.mjs"],
                       env=env, cwd=PEER_DIR)
    common.wait_until(
        "oidc-provider discovery",
        lambda: requests.get(f"{base}/.well-known/openid-configuration",
                             timeout=1).status_code == 200,
        procs=procs, watch=proc)
    auth = {"Authorization": common.basic_auth(*client)}

    def issue(resource: str) -> str:
        r = requests.post(f"{base}/token", headers=auth, timeout=5, data={
            "grant_type": "client_credentials", "scope": SCOPE, "resource": resource})
        if r.status_code != 200:
            raise BenchError(f"peer token: {r.status_code} {r.text[:300]}")
        return r.json()["access_token"]

    jwt = issue(PEER_JWT_RESOURCE)
    header = jose_header(jwt)
    if header.get("alg") != "ES256" or header.get("typ") != "at+jwt":
        raise BenchError(f"peer: expected an ES256 at+jwt, got {header}")
    opaque = issue(PEER_OPAQUE_RESOURCE)
    r = requests.post(f"{base}/token/introspection", headers=auth, data={"token": opaque},
                      timeout=5)
    if r.status_code != 200 or r.json().get("active") is not True:
        raise BenchError(f"peer introspection: {r.status_code} {r.text[:300]}")
    r = requests.post(f"{base}/token/introspection", headers=auth, data={"token": jwt},
                      timeout=5)
    jwt_refusal = f"{r.status_code} {r.json().get('error', '')}".strip()

    def body(resource: str) -> str:
        from urllib.parse import urlencode
        return urlencode({"grant_type": "client_credentials", "scope": SCOPE,
                          "resource": resource})

    basic = common.basic_auth(*client)
    print(f"oidc-provider: {base}, {workers} worker(s), redis db 1", flush=True)
    return {
        "token_jwt": (base, {"BENCH_PATH": "/token", "BENCH_BODY": body(PEER_JWT_RESOURCE),
                             "BENCH_AUTH": basic}),
        "token_opaque": (base, {"BENCH_PATH": "/token",
                                "BENCH_BODY": body(PEER_OPAQUE_RESOURCE),
                                "BENCH_AUTH": basic}),
        "introspect_opaque": (base, {"BENCH_PATH": "/token/introspection",
                                     "BENCH_BODY": f"token={opaque}", "BENCH_AUTH": basic}),
        "introspect_jwt": {"unsupported": "oidc-provider refuses to introspect JWT access "
                                          f"tokens (answered {jwt_refusal})"},
        "token_jwt_rs256": {"unsupported": "oidc-provider is set up with one ES256 key"},
        "edge_feed": {"unsupported": "oidc-provider has no revocation feed for gateways"},
    }


def hydra_version() -> str:
    """The Hydra version the recipe pins (tests/bench/peers/hydra/go.mod)."""
    gomod = common.BENCH_DIR / "peers" / "hydra" / "go.mod"
    for line in gomod.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "github.com/ory/hydra/v2":
            return parts[1]
    return "?"


# ------------------------------------------------------------------------ report

def monitor_round_trips(url: str, env: dict[str, str], redis_port: int,
                        db: int) -> dict[str, Any]:
    """Redis round trips per request of one Tollgate row, counted with `MONITOR` over 300
    requests one after the other (after 50 that warm the server: its client cache fills
    once its pub/sub subscription is up)."""
    session = requests.Session()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if env.get("BENCH_AUTH"):
        headers["Authorization"] = env["BENCH_AUTH"]

    def one() -> None:
        r = session.post(url + env["BENCH_PATH"], data=env.get("BENCH_BODY", ""),
                         headers=headers, timeout=5)
        if r.status_code != 200:
            raise BenchError(f"{env['BENCH_PATH']}: {r.status_code} {r.text[:200]}")

    for _ in range(50):
        one()
    return common.redis_round_trips(redis_port, db, one, 300)


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or "rps" not in a or "rps" not in b or not b["rps"]:
        return None
    return round(a["rps"] / b["rps"], 2)


def report(data: dict[str, Any]) -> None:
    rows = []
    for key, label in SCENARIOS:
        t = data["tollgate"].get(key)
        p = data["peer"].get(key)
        rows.append([
            label,
            common.fmt_ratio(data["ratios"].get(key)),
            f"{t['rps']:,.0f}" if t and "rps" in t else "n/a",
            f"{t['p50_ms']:.2f}" if t and "rps" in t else "",
            f"{t['p99_ms']:.2f}" if t and "rps" in t else "",
            f"{p['rps']:,.0f}" if p and "rps" in p else "n/a",
            f"{p['p50_ms']:.2f}" if p and "rps" in p else "",
            f"{p['p99_ms']:.2f}" if p and "rps" in p else "",
        ])
    common.print_table(
        f"bench-authserver ({data['machine']['nproc']} cores, {data['machine']['cpu_model']}); "
        f"oidc-provider: {data['peer_setup']}",
        ["scenario", "Tollgate/peer", "Tollgate req/s", "p50 ms", "p99 ms",
         "oidc-provider req/s", "p50 ms", "p99 ms"], rows)
    for key, block in data.get("more_peers", {}).items():
        if "error" in block:
            print(f"\n{block['name']}: not measured: {block['error']}")
            continue
        prow = []
        for k, lbl in [(s["key"], s["label"]) for s in data["scenarios"]]:
            t, p = data["tollgate"].get(k), block["results"].get(k)
            prow.append([lbl, common.fmt_ratio(block["ratios"].get(k)),
                         f"{t['rps']:,.0f}" if t and "rps" in t else "n/a",
                         f"{p['rps']:,.0f}" if p and "rps" in p else "n/a",
                         f"{p['p99_ms']:.2f}" if p and "rps" in p else ""])
        common.print_table(f"Tollgate vs {block['name']}: {block['setup']}",
                           ["scenario", f"Tollgate/{block['name']}", "Tollgate req/s",
                            f"{block['name']} req/s", "p99 ms"], prow)
        print(f">= 3x {block['name']} on every measured row: "
              f"{'met' if block['all_rows_3x'] else 'NOT met'}")
    trips = [(label, data["tollgate"][key]["redis_monitor"]) for key, label in SCENARIOS
             if "redis_monitor" in (data["tollgate"].get(key) or {})]
    if trips:
        print("\nRedis round trips per request, counted with MONITOR (300 requests in a row, "
              "each marked; the mean includes the server's background work):")
        for label, m in trips:
            cmds = ", ".join(f"{k} {v:g}" for k, v in m["commands_per_request"].items())
            print(f"  {label:<44} median {m['round_trips_per_request']:g}, mean "
                  f"{m['round_trips_mean']:g}, max {m['round_trips_max']}  ({cmds})")
    targets = data["targets"]
    print("\ntargets (issue): tokens/s >= 5000: "
          f"{'met' if targets['tokens_per_s_5000'] else 'NOT met'}; introspections/s >= 10000: "
          f"{'met' if targets['introspections_per_s_10000'] else 'NOT met'}; >= 3x "
          f"oidc-provider on tokens: {'met' if targets['tokens_3x_peer'] else 'NOT met'}, "
          f"on introspection: {'met' if targets['introspections_3x_peer'] else 'NOT met'}; "
          "<= 1 Redis round trip per issuance: "
          f"{'met' if targets.get('round_trips_per_issuance_1') else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer-workers", type=int,
                        default=common.env_int("BENCH_PEER_WORKERS", 2),
                        help="node:cluster workers for oidc-provider (default 2 = cores)")
    parser.add_argument("--peers", default=os.environ.get("BENCH_PEERS",
                                                          "oidc-provider,keycloak,hydra"),
                        help="comma-separated peers (oidc-provider, keycloak, hydra)")
    parser.add_argument("--skip-tollgate", action="store_true",
                        help="measure only the peer (to debug the harness)")
    args = parser.parse_args()
    common.install_signal_handlers()
    settings = Settings()
    workdir = common.new_workdir("authserver")
    procs = Processes(workdir)
    try:
        machine = common.machine_info({
            "node": ["node", "--version"],
            "redis-server": ["redis-server", "--version"],
            "oidc-provider": ["node", "-p", "require(process.argv[1]).version",
                              str(PEER_DIR / "node_modules/oidc-provider/package.json")],
            "authserver": [str(authserver_bin()), "--version"],
        })
        redis_port = common.start_redis(procs, settings)
        TOLLGATE_PIDS["redis"] = next(p.pid for n, p, _ in procs.procs if n == "redis")
        wanted = [p for p in args.peers.split(",") if p]
        specs = {"tollgate": {} if args.skip_tollgate
                 else start_tollgate(procs, settings, redis_port),
                 "peer": (start_peer(procs, settings, redis_port, args.peer_workers)
                          if "oidc-provider" in wanted else {})}
        import peer_servers
        more: dict[str, dict[str, Any]] = {}
        for key in MORE_PEERS:
            if key not in wanted:
                continue
            start = peer_servers.start_keycloak if key == "keycloak" else peer_servers.start_hydra
            try:
                specs[key] = start(procs, settings, workdir)
                more[key] = {}
            except BenchError as exc:  # a peer that cannot start is a row saying why
                print(f"{MORE_PEERS[key][0]} not measured: {exc}", flush=True)
                more[key] = {"error": str(exc)}
        # Both servers are up (the idle one costs nothing); each scenario is measured on
        # Tollgate then right after on oidc-provider, so that a change in background load
        # during the run affects both sides of a ratio alike.
        results: dict[str, dict[str, Any]] = {"tollgate": {}, "peer": {},
                                              **{k: {} for k in more}}
        sides = [("tollgate", "Tollgate"), ("peer", "oidc-provider"),
                 *((k, MORE_PEERS[k][0]) for k in more if k in specs)]
        for key, label in SCENARIOS:
            for side, name in sides:
                spec = specs[side].get(key)
                if spec is None:
                    continue
                if isinstance(spec, dict):
                    results[side][key] = spec
                    print(f"  {name + ': ' + label:<52} n/a: {spec['unsupported']}")
                    continue
                url, env = spec
                script = env.get("BENCH_SCRIPT", "form_post.lua")
                if side == "tollgate":  # with the CPU per request of the server and Redis
                    server = "authserver_rs256" if key == "token_jwt_rs256" else "authserver"
                    pids = {"authserver": TOLLGATE_PIDS[server],
                            "redis": TOLLGATE_PIDS["redis"]}
                    monitored = None
                    if env.get("BENCH_BODY") is not None and script == "form_post.lua":
                        monitored = monitor_round_trips(
                            url, env, redis_port, 2 if key == "token_jwt_rs256" else 0)
                        print(f"  {name + ': ' + label:<52} Redis round trips per request "
                              f"(MONITOR): {monitored['round_trips_per_request']}", flush=True)
                    results[side][key] = common.measure_cpu(
                        settings, url, script, env, f"{name}: {label}", pids,
                        redis_port=redis_port)
                    if monitored:
                        results[side][key]["redis_monitor"] = monitored
                else:
                    results[side][key] = common.measure(settings, url, script, env,
                                                        f"{name}: {label}")
        tollgate, peer = results["tollgate"], results["peer"]
    except BenchError as exc:
        print(f"bench-authserver failed: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        procs.close()

    ratios = {key: ratio(tollgate.get(key), peer.get(key)) for key, _ in SCENARIOS}
    versions = {"keycloak": os.environ.get("KEYCLOAK_HOME", "").rstrip("/").rsplit("-", 1)[-1],
                "hydra": hydra_version()}
    for key, block in more.items():
        block["name"] = MORE_PEERS[key][0]
        block["setup"] = MORE_PEERS[key][1].format(version=versions[key])
        if "error" in block:
            continue
        block["results"] = results[key]
        block["ratios"] = {k: ratio(tollgate.get(k), results[key].get(k))
                           for k, _ in SCENARIOS}
        measured = [r for r in block["ratios"].values() if r is not None]
        block["all_rows_3x"] = bool(measured) and min(measured) >= 3
    t_tok = tollgate.get("token_jwt", {}).get("rps", 0)
    t_int = max(tollgate.get("introspect_jwt", {}).get("rps", 0),
                tollgate.get("introspect_opaque", {}).get("rps", 0))
    data = {
        "machine": machine,
        "settings": settings.as_dict(),
        "peer_setup": (f"node:cluster with {args.peer_workers} worker(s), Redis adapter "
                       "(ioredis), static client, ES256 key"),
        "scenarios": [{"key": k, "label": lbl} for k, lbl in SCENARIOS],
        "tollgate": tollgate,
        "peer": peer,
        "ratios": ratios,
        "more_peers": more,
        "targets": {
            "tokens_per_s_5000": t_tok >= 5000,
            "introspections_per_s_10000": t_int >= 10000,
            "tokens_3x_peer": (ratios.get("token_jwt") or 0) >= 3,
            "introspections_3x_peer": (ratios.get("introspect_opaque") or 0) >= 3,
            "round_trips_per_issuance_1": all(
                (tollgate.get(k) or {}).get("redis_monitor", {}).get(
                    "round_trips_per_request", 99) <= 1
                for k in ("token_jwt", "token_jwt_rs256", "token_opaque")),
        },
    }
    if args.skip_tollgate:
        print(json.dumps(peer, indent=1))
        return 0
    path = common.save_results("authserver", data)
    report(data)
    print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
