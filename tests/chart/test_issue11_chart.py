"""Issue 11, render-level regressions, one or more tests per defect (test_defectN_*).

Renders go through Helm's SDK offline, the way Argo CD renders (`helm template`: no
cluster, `lookup` empty). What needs a real API server or istiod (admission of the pods,
the generator against the API server, istiod's generated filter chain) is in the
test-cluster suite; each test here says what it covers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from chartlib import CHART, ENV_FILES, K8S, ROOT, deep_merge, docs_of, render, render_docs, values_for
from test_gitops import KUBECTL, generated_applications
from test_security import selector_matches

GENERATOR = CHART / "files/generate-secrets.sh"


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def app_render(app: dict) -> list[dict]:
    """The chart as the Application renders it: its value files, its release name and
    destination namespace (plus the module pin the promotion commit supplies)."""
    vals = values_for([])
    for vf in app["spec"]["source"]["helm"]["valueFiles"]:
        over = yaml.safe_load((CHART / vf).read_text()) or {}
        if not ((over.get("edge") or {}).get("module") or {}).get("sha256", "x"):
            over["edge"]["module"].pop("sha256")
        vals = deep_merge(vals, over)
    return docs_of(render(vals, name=app["spec"]["source"]["helm"].get("releaseName", app["metadata"]["name"]),
                          namespace=app["spec"]["destination"]["namespace"]))


def overlay_docs(env: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / env)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ----------------------------------------------------------------------------- defect 3

def test_defect3_injection_without_cni_is_refused():
    """PSS restricted + sidecar injection needs Istio CNI: without it istio-init runs as
    root with NET_ADMIN/NET_RAW (Istio's injection-template.yaml), so the chart refuses."""
    with pytest.raises(helm.HelmError, match="Istio CNI"):
        render(values_for([], {"mesh": {"cni": {"enabled": False}}}))
    for level in ("restricted", "baseline"):
        with pytest.raises(helm.HelmError, match="istio-init"):
            render(values_for([], {"mesh": {"cni": {"enabled": False}}, "namespace": {"podSecurityLevel": level}}))
    # The ways out render: CNI, no sidecar, or a privileged namespace.
    assert render_docs([], {"mesh": {"cni": {"enabled": True}}})
    # (No sidecar: the gateways authenticate to /edge/* with a client secret, defect 7.)
    assert render_docs([], {"mesh": {"cni": {"enabled": False}, "sidecarInjection": False},
                            "edge": {"authServer": {"credentials": "secret",
                                                    "secretRef": {"name": "gw-client"}}}})
    assert render_docs([], {"mesh": {"cni": {"enabled": False}}, "namespace": {"podSecurityLevel": "privileged"}})


def test_defect3_cni_is_a_stated_prerequisite():
    notes = render(values_for([]))["tollgate/templates/NOTES.txt"]
    assert "Istio CNI" in notes and "NET_ADMIN" in notes
    install = (ROOT / "docs/install.md").read_text()
    assert "injection-template.yaml" in install and "istio-cni" in install.lower()


# ----------------------------------------------------------------------------- defect 4

def test_defect4_environments_write_no_object_twice():
    """dev, staging and production as the ApplicationSet renders them (release name,
    destination namespace, value files) plus the k8s overlays, applied to one cluster:
    no two objects share (apiVersion, kind, namespace, name)."""
    seen: dict[tuple, str] = {}
    dupes = []

    def add(doc, origin):
        key = (doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
        if key in seen:
            dupes.append(f"{key}: {seen[key]} and {origin}")
        seen[key] = origin

    for app in generated_applications():
        for d in app_render(app):
            add(d, app["metadata"]["name"])
    if KUBECTL:
        for env in ENV_FILES:
            for d in overlay_docs(env):
                add(d, f"k8s/overlays/{env}")
    assert not dupes, "\n".join(dupes)


def test_defect4_no_two_filters_select_the_same_workload():
    """Two filters with different issuers on one proxy would each reject the other's
    tokens: every environment attaches to its own gateway pods, and its k8s overlay's
    Gateway selects those same pods."""
    attach = []
    for app in generated_applications():
        env = app["metadata"]["labels"]["tollgate.dev/environment"]
        for d in app_render(app):
            if d["kind"] == "EnvoyFilter":
                attach.append((env, d["spec"]["workloadSelector"]["labels"]))
            elif d["kind"] == "WasmPlugin":
                attach.append((env, d["spec"]["selector"]["matchLabels"]))
    assert len(attach) == 3, attach
    for i, (env_a, sel_a) in enumerate(attach):
        for env_b, sel_b in attach[i + 1:]:
            # A workload carrying the labels of one selector must not match the other.
            assert not selector_matches({"matchLabels": sel_b}, sel_a), (env_a, env_b)
            assert not selector_matches({"matchLabels": sel_a}, sel_b), (env_a, env_b)
    if KUBECTL:
        for env, sel in attach:
            gw = next(d for d in overlay_docs(env) if d["kind"] == "Gateway")
            assert gw["spec"]["selector"] == sel, env
    # The NetworkPolicy admits exactly that environment's gateway pods.
    for app in generated_applications():
        docs = app_render(app)
        edge = next(d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin"))
        sel = (edge["spec"].get("workloadSelector") or {}).get("labels") or edge["spec"]["selector"]["matchLabels"]
        np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-authserver"))
        peers = [p for r in np["spec"]["ingress"] for p in r["from"]]
        assert any(p.get("podSelector") == {"matchLabels": sel} for p in peers), app["metadata"]["name"]


# ----------------------------------------------------------------------------- defect 5

@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_defect5_two_renders_give_identical_secrets(env):
    """Argo CD renders on every sync without lookup: a Secret that differs between two
    renders would rotate the admin token, the pepper (every stored client-secret hash) and
    the Redis passwords. Two renders are byte-identical, Secrets and pod templates."""
    import helm_python as h

    def fresh():  # no cache: two real renders
        return h.Chart.load(str(CHART)).render(values_for(ENV_FILES[env]), name="tollgate", namespace="tollgate",
                                              is_install=True)

    a, b = fresh(), fresh()
    assert a == b
    secrets = [d for d in docs_of(a) if d["kind"] == "Secret"]
    for s in secrets:  # only values-given material is ever rendered
        for v in (s.get("data") or {}).values():
            assert base64.b64decode(v)


def test_defect5_values_given_secrets_render_and_partial_values_are_refused():
    kek = base64.b64encode(b"k" * 32).decode()
    given = {"authserver": {"adminToken": "a" * 40, "secretPepper": "p" * 40, "keyEncryptionKey": kek}}
    docs = render_docs([], given)
    sec = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "tollgate-authserver")
    assert base64.b64decode(sec["data"]["secret-pepper"]).decode() == "p" * 40
    assert base64.b64decode(sec["data"]["key-encryption-key"]).decode() == kek
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "tollgate-secret-generator")
    keys = next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "KEYS")
    assert "tollgate-authserver" not in keys  # the chart owns it now
    for partial in ({"adminToken": "a" * 40}, {"adminToken": "a" * 40, "secretPepper": "p" * 40}):
        with pytest.raises(helm.HelmError, match="set all three"):
            render(values_for([], {"authserver": partial}))
    with pytest.raises(helm.HelmError, match="all five"):
        render(values_for([], {"redis": {"auth": {"cachePassword": "c" * 20}}}))


def generator_job(docs):
    return next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-secret-generator"))


def test_defect5_generator_covers_every_secret_the_pods_read():
    """Every secretKeyRef to a Secret the chart neither renders nor takes from
    existingSecret is a key the generator creates; its Role allows create/patch on exactly
    those Secret names and nothing else; it runs before everything (PreSync / pre-install)."""
    docs = render_docs([])
    rendered = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    job = generator_job(docs)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    pairs = {tuple(line.split()[:2]) for line in env["KEYS"].splitlines()}
    needed = set()
    for d in docs:
        for c in json.dumps(d).split('"secretKeyRef": ')[1:]:
            ref = json.loads(c[: c.index("}") + 1])
            # optional keys (the previous key-encryption keys of a rotation) are the operator's
            if ref["name"] not in rendered and not ref["name"].startswith("orders") and not ref.get("optional"):
                needed.add((ref["name"], ref["key"]))
    assert needed and needed <= pairs, needed - pairs
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == job["metadata"]["name"])
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                              "resourceNames": sorted({p[0] for p in pairs}), "verbs": ["create", "patch"]}]
    ann = job["metadata"]["annotations"]
    assert ann["argocd.argoproj.io/hook"] == "PreSync" and "pre-install" in ann["helm.sh/hook"]
    labels = json.loads(env["LABELS"])
    assert labels["app.kubernetes.io/part-of"] == "tollgate"
    # Argo CD's tracking label would make a Secret it did not render look like its own.
    assert "app.kubernetes.io/instance" not in labels and "app.kubernetes.io/managed-by" not in labels
    # The script the Job runs is the chart's file, verbatim.
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][2] == GENERATOR.read_text()
    # With existing Secrets everywhere there is nothing to generate.
    docs = render_docs(ENV_FILES["production"])
    assert not [d for d in docs if d["metadata"]["name"].endswith("-secret-generator")]


def sh_lib(expr: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f'. "{GENERATOR}"; {expr}'], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "TOLLGATE_GENERATOR_LIB": "1", **(env or {})})


def test_defect5_generator_script_logic():
    """The generator's own logic, run by a real POSIX shell: values are 48 URL-safe
    alphanumerics (usable in redis:// URLs), each apply body carries one key only (so an
    existing key is never sent), 409 Conflict means kept and only 200/201 mean created,
    and bad names are refused. Not covered here (no API server): the API server's answers
    themselves (server-side apply, force=false, 409 on a key another manager owns): the
    test-cluster suite runs this script against a real kube-apiserver."""
    r = sh_lib("random_value 48; echo; random_value 48")
    a, b = r.stdout.split()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", a) and re.fullmatch(r"[A-Za-z0-9]{48}", b) and a != b
    body = json.loads(sh_lib('apply_body tollgate-authserver secret-pepper "$(printf x | base64)"').stdout)
    assert body == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tollgate-authserver"},
                    "data": {"secret-pepper": "eA=="}}
    # a key-encryption key: base64 of 32 random bytes; an unknown format is refused
    k1, k2 = (base64.b64decode(sh_lib("new_value bytes32").stdout, validate=True) for _ in range(2))
    assert len(k1) == 32 and len(k2) == 32 and k1 != k2
    assert re.fullmatch(r"[A-Za-z0-9]{48}", sh_lib('new_value ""').stdout)
    assert sh_lib("new_value hex64").returncode != 0
    lab = json.loads(sh_lib("label_body tollgate-redis", {"LABELS": '{"a":"b"}'}).stdout)
    assert lab["metadata"] == {"name": "tollgate-redis", "labels": {"a": "b"}} and "data" not in lab
    for code, out in (("201", "created"), ("200", "created"), ("409", "kept"), ("403", "error"),
                      ("422", "error"), ("000", "error")):
        assert sh_lib(f"outcome {code}").stdout.strip() == out, code
    assert sh_lib("valid_pair tollgate-redis cache-password").returncode == 0
    for bad in ('"Bad_Name" key', 'ok "bad key"', '"a;b" k', 'ok ""'):
        assert sh_lib(f"valid_pair {bad}").returncode != 0, bad
    # main refuses to run without input, before any API call.
    r = subprocess.run(["sh", str(GENERATOR)], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "NAMESPACE": "x", "KUBERNETES_API": "https://127.0.0.1:1"})
    assert r.returncode == 2 and "no keys" in r.stderr


def test_defect5_one_more_generated_key_is_one_line():
    tpl = (CHART / "templates/_helpers.tpl").read_text()
    block = tpl[tpl.index('define "tollgate.generatedKeys"'):]
    block = block[: block.index("{{- end -}}\n\n")]
    lines = [ln for ln in block.splitlines() if re.fullmatch(r"\{\{ \$\w+ \}\} [a-z-]+( bytes32)?", ln)]
    assert len(lines) == 8, lines


def test_defect5_pods_roll_on_secret_change_only():
    def checksums(over=None):
        docs = render_docs([], over)
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
                for d in docs if d["kind"] in ("Deployment", "StatefulSet")}

    base = checksums()
    assert base and base == checksums()
    changed = checksums({"authserver": {"existingSecret": "other"}})
    assert all(changed[k] != base[k] for k in base)


# ----------------------------------------------------------------------------- defect 6

@pytest.mark.parametrize("env", ["staging", "production"])
def test_defect6_backup_pvc_is_consumed_in_its_own_wave(env):
    """Argo CD's PVC health (gitops-engine pkg/health/health_pvc.go): Pending is
    Progressing, and a WaitForFirstConsumer PVC stays Pending until a pod mounts it. Every
    PVC must have a pod-creating object (not a CronJob: it runs hours later) in the same
    or an earlier sync wave, or the sync never gets past that wave."""
    docs = render_docs(ENV_FILES[env])
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert pvcs

    def wave(d):
        return int((d["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))

    for pvc in pvcs:
        consumers = []
        for d in docs:
            if d["kind"] not in ("Job", "Deployment", "StatefulSet", "Pod"):
                continue
            t = d if d["kind"] == "Pod" else d["spec"]["template"]
            claims = [v["persistentVolumeClaim"]["claimName"] for v in t["spec"].get("volumes") or []
                      if "persistentVolumeClaim" in v]
            if pvc["metadata"]["name"] in claims and wave(d) <= wave(pvc):
                consumers.append(d)
        assert consumers, f"{pvc['metadata']['name']} (wave {wave(pvc)}) has no consumer before the CronJob"
        hook = consumers[0]["metadata"]["annotations"]
        assert hook.get("argocd.argoproj.io/hook") == "Sync"


# ----------------------------------------------------------------------------- defect 8

# The HTTP filters of an Istio gateway's connection manager as istiod builds them
# (pilot/pkg/networking/core/listener_builder.go: metadata exchange, CUSTOM ext_authz,
# AUTHN WasmPlugins, jwt_authn + istio_authn, AUTHZ, RBAC, STATS, then the router).
ISTIO_CHAIN = ["istio.metadata_exchange", "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn",
               "istio_authn", "envoy.filters.http.rbac", "istio.stats", "envoy.filters.http.router"]


def apply_http_filter_patch(chain: list[str], patch: dict) -> list[str]:
    """Istio's EnvoyFilter HTTP_FILTER semantics (envoyfilter/listener_patch.go)."""
    op = patch["patch"]["operation"]
    name = patch["patch"]["value"]["name"]
    sub = (patch["match"]["listener"]["filterChain"]["filter"].get("subFilter") or {}).get("name")
    if op == "INSERT_FIRST":
        return [name] + chain
    if op == "INSERT_BEFORE":
        i = chain.index(sub)
        return chain[:i] + [name] + chain[i:]
    raise AssertionError(op)


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_defect8_filter_is_first_in_the_chain(env):
    """No AuthorizationPolicy (RBAC, CUSTOM ext_authz) nor RequestAuthentication sees a
    client-sent x-tollgate-* header: the filter (which strips them) runs first."""
    for kind in ("envoyFilter", "wasmPlugin"):
        over = {"edge": {"kind": kind}}
        if kind == "wasmPlugin":
            over["edge"]["module"] = {"source": "oci"}
        docs = render_docs(ENV_FILES[env], over)
        if kind == "envoyFilter":
            ef = by_kind(docs, "EnvoyFilter")[0]
            patch = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER")
            assert patch["match"]["listener"]["filterChain"]["filter"] == {
                "name": "envoy.filters.network.http_connection_manager"}
            chain = apply_http_filter_patch(ISTIO_CHAIN, patch)
            assert chain.index(ef["metadata"]["name"]) == 0, chain
        else:
            wp = by_kind(docs, "WasmPlugin")[0]["spec"]
            # AUTHN: ahead of jwt_authn/istio_authn and RBAC; highest priority of the phase
            # (Istio orders a phase by descending priority).
            assert wp["phase"] == "AUTHN"
            assert wp["priority"] >= 1000


# ----------------------------------------------------------------------------- defect 9

def test_defect9_trusted_hops_rendered():
    docs = render_docs([])
    for d in docs:
        if d["kind"] in ("Deployment",):
            env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env["TOLLGATE_TRUSTED_PROXY_HOPS"] == "1"
    docs = render_docs([], {"authserver": {"trustedProxyHops": 2}})
    dep = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TOLLGATE_TRUSTED_PROXY_HOPS", "value": "2"} in dep["env"]


# ----------------------------------------------------------------------------- defect 10

def test_defect10_cluster_domain_is_a_value():
    # Istio's trust domain is its own value (mesh.trustDomain, default cluster.local whatever
    # the cluster domain): set it too, so any cluster.local left is a hard-coded name.
    text = "\n".join(render(values_for(ENV_FILES["production"], {
        "clusterDomain": "corp.internal", "mesh": {"trustDomain": "corp.internal"}})).values())
    assert "cluster.local" not in text
    assert "tollgate-authserver.tollgate.svc.corp.internal" in text
    assert "svc.cluster.local" in "\n".join(render(values_for([])).values())


def test_defect10_istiod_and_dns_peers_are_values():
    over = {"networkPolicy": {
        "istiodNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-cp"}},
        "istiodPodSelector": {"matchLabels": {"app": "istiod", "istio.io/rev": "canary"}},
        "dnsPeers": [{"ipBlock": {"cidr": "169.254.20.10/32"}},
                     {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                      "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    }}
    docs = render_docs([], over)
    np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tollgate-authserver")
    egress = np["spec"]["egress"]
    dns = next(r for r in egress if {"protocol": "UDP", "port": 53} in r["ports"])
    assert dns["to"] == over["networkPolicy"]["dnsPeers"]
    istiod = next(r for r in egress if {"protocol": "TCP", "port": 15012} in r["ports"])
    assert istiod["to"] == [{"namespaceSelector": over["networkPolicy"]["istiodNamespaceSelector"],
                             "podSelector": over["networkPolicy"]["istiodPodSelector"]}]


def test_defect10_servicemonitors_select_after_argocd_label_tracking():
    """Argo CD's label tracking sets app.kubernetes.io/instance to the Application name
    (tollgate-<env>) on every object it applies, the Services included, while the release
    is `tollgate`: a ServiceMonitor selecting on that label would select nothing."""
    for app in generated_applications():
        docs = app_render(app)
        services = [d for d in docs if d["kind"] == "Service"]
        for s in services:
            s["metadata"]["labels"]["app.kubernetes.io/instance"] = app["metadata"]["name"]
        sms = by_kind(docs, "ServiceMonitor")
        if app["metadata"]["labels"]["tollgate.dev/environment"] != "dev":
            assert sms
        for sm in sms:
            assert any(selector_matches(sm["spec"]["selector"], s["metadata"]["labels"]) for s in services), \
                sm["metadata"]["name"]


def test_defect10_istio_api_version():
    """networking.istio.io/v1 needs Istio >= 1.22: stated, and v1beta1 selectable."""
    for f in ("Chart.yaml",):
        assert "1.22" in (CHART / f).read_text()
    docs = render_docs(ENV_FILES["production"], {"mesh": {"networkingApiVersion": "networking.istio.io/v1beta1"}})
    nets = [d for d in docs if d["apiVersion"].startswith("networking.istio.io/") and d["kind"] != "EnvoyFilter"]
    assert {d["kind"] for d in nets} >= {"DestinationRule", "Gateway", "VirtualService"}
    assert {d["apiVersion"] for d in nets} == {"networking.istio.io/v1beta1"}
    with pytest.raises(helm.HelmError):
        render(values_for([], {"mesh": {"networkingApiVersion": "networking.istio.io/v2"}}))
    assert "1.22" in (ROOT / "docs/install.md").read_text()


# ----------------------------------------------------------------------------- defect 11

ADMIN_PATHS = ["/admin/clients", "/admin/users", "/admin/stats", "/oauth2/register", "/oauth2/register/abc",
               "/metrics", "/edge/revocations", "/edge/ratelimit/lease", "/edge/module.wasm", "/healthz", "/readyz"]
PUBLIC_PATHS = ["/.well-known/oauth-authorization-server", "/oauth2/jwks", "/oauth2/token", "/oauth2/revoke",
                "/oauth2/introspect"]


def routes(vs: dict, path: str) -> list[dict]:
    """Istio's HTTP route matching on the path (exact / prefix / regex; the first match)."""
    for r in vs["spec"]["http"]:
        for m in r.get("match") or [{}]:
            u = m.get("uri") or {}
            if ("exact" in u and u["exact"] == path) or ("prefix" in u and path.startswith(u["prefix"])) or \
                    ("regex" in u and re.fullmatch(u["regex"], path)) or not u:
                return r["route"]
    return []


def test_defect11_production_issuer_is_routed_public_paths_only():
    docs = render_docs(ENV_FILES["production"])
    vs = by_kind(docs, "VirtualService")
    assert len(vs) == 1
    vs = vs[0]
    assert vs["spec"]["hosts"] == ["auth.example.com"]
    gw = next(d for d in by_kind(docs, "Gateway") if f"{d['metadata']['namespace']}/{d['metadata']['name']}"
              in vs["spec"]["gateways"])
    assert all(s["hosts"] == ["auth.example.com"] for s in gw["spec"]["servers"])
    edge = by_kind(docs, "WasmPlugin")[0]
    assert gw["spec"]["selector"] == edge["spec"]["selector"]["matchLabels"]
    port = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "tollgate-authserver")
    public_port = next(p["port"] for p in port["spec"]["ports"] if p["name"] == "http")
    for p in PUBLIC_PATHS:
        r = routes(vs, p)
        assert r and r[0]["destination"]["host"] == "tollgate-authserver.tollgate.svc.cluster.local", p
        assert r[0]["destination"]["port"]["number"] == public_port
    for p in ADMIN_PATHS + ["/admin", "/oauth2/token/../../admin/clients"]:
        assert routes(vs, p) == [], p
    # The filter lets the issuer host's token-less requests through to the auth server.
    rule = edge["spec"]["pluginConfig"]["rules"][0]
    assert rule == {"name": "tollgate-issuer", "hosts": ["auth.example.com"], "allow_anonymous": True}


@pytest.mark.parametrize("path", ["/admin/clients", "/oauth2/register", "/metrics", "/edge/revocations"])
def test_defect11_admin_paths_cannot_be_exposed(path):
    with pytest.raises(helm.HelmError, match="not a public endpoint"):
        render(values_for(ENV_FILES["production"], {"expose": {"paths": ["/oauth2/token", path]}}))


# ----------------------------------------------------------------------------- defect 12

INSTALL = ROOT / "docs/install.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def sh_blocks(path: Path) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(path.read_text()) if m.group(1) == "sh"]


def test_defect12_install_defines_every_variable_before_use():
    """install.md top to bottom: every $VAR a command uses was assigned by an earlier
    command of the page (or is the shell's own)."""
    defined = {"HOME", "PATH", "PWD"}
    missing = []
    for body in sh_blocks(INSTALL):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if not line or line.startswith("#"):
                continue
            for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", line):
                if var not in defined:
                    missing.append(f"{var}: {line}")
            for var in re.findall(r"(?:^|[\s;(])([A-Z_][A-Z0-9_]*)=", line):
                defined.add(var)
    text = INSTALL.read_text()
    # Variables only shown inside inline code in the prose are defined in the prose.
    for var in set(re.findall(r"`[^`]*\$\{?([A-Z_][A-Z0-9_]*)[^`]*`", text)) - defined:
        assert re.search(rf"`{var}`|{var}=", text), f"{var} is used in install.md but never defined"
    assert not missing, missing


def test_defect12_install_has_no_circular_step():
    """No step before the install needs a running auth server (the module pin is known
    from the release), and the Tollgate namespace is always $NS."""
    text = INSTALL.read_text()
    before_install = text[: text.index("helm install tollgate")]
    assert "port-forward" not in before_install and "/edge/module.wasm.sha256" not in before_install
    for body in sh_blocks(INSTALL):
        for ns in re.findall(r"-n\s+([\w\"$-]+)", body):
            assert ns in ('"$NS"', "istio-system", "argocd"), f"namespace {ns} in install.md"


def test_defect12_install_documents_clusterissuer_promotion_and_prerequisites():
    text = INSTALL.read_text()
    prod = yaml.safe_load((CHART / "values-production.yaml").read_text())
    ref = prod["redis"]["tls"]["certManager"]["issuerRef"]
    manifests = [d for m in FENCE.finditer(text) if m.group(1) == "yaml"
                 for d in yaml.safe_load_all(m.group(2)) if d]
    assert any(d.get("kind") == ref["kind"] and d["metadata"]["name"] == ref["name"] for d in manifests)
    apps = {a["metadata"]["labels"]["tollgate.dev/environment"]: a for a in generated_applications()}
    rev = apps["production"]["spec"]["source"]["targetRevision"]
    assert f"`{rev}` branch" in text and f"refs/heads/{rev}" in text
    for env in ENV_FILES:
        assert f"k8s/overlays/$ENV" in text and env in text
    # The picture: namespaces, mesh boundary, NetworkPolicy flows, the module's way.
    pictures = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "text"]
    assert any("istio-system" in p and "outside the mesh" in p for p in pictures)
    assert any("istio-agent" in p and "sha256" in p for p in pictures)
    assert "| from | to | port | why |" in text


def test_defect12_chart_icon_exists():
    icon = yaml.safe_load((CHART / "Chart.yaml").read_text())["icon"]
    rel = icon.split("/main/", 1)[1]
    assert (ROOT / rel).is_file(), rel


def test_defect12_runbook_commands_work_under_tls_and_strict():
    """Under STRICT mTLS nothing outside the mesh (a laptop, a gateway pod's curl) calls the
    auth server's Service in plain HTTP; with Redis TLS the plain port is closed, so every
    redis-cli carries the TLS flags."""
    for doc in ("runbooks.md", "operations.md", "install.md"):
        text = (ROOT / "docs" / doc).read_text()
        assert not re.search(r"curl[^`\n]*http://tollgate-authserver\.", text), doc
        for cmd in re.findall(r"`([^`]*redis-cli[^`]*)`", text):
            if "exec" in cmd:
                assert "$REDIS_TLS" in cmd, (doc, cmd)


def test_defect12_wrong_claims_fixed():
    ops = (ROOT / "docs/operations.md").read_text()
    assert "TOLLGATE_REDIS_WAIT_REPLICAS=1` (the chart's" not in ops
    assert "+@all -@dangerous" not in ops
    render_sh = (CHART / "files/redis/render.sh").read_text()
    assert 'DATA_RULES="-@all ' in render_sh  # what operations.md now says
    pa = (K8S / "base/peerauthentication.yaml").read_text()
    assert "auth server or Redis from outside the mesh are refused" not in pa
    ns = (K8S / "base/namespace.yaml").read_text()
    assert "Redis clients)" not in ns


def test_defect8_no_policy_after_the_filter_sees_a_client_sent_identity(tmp_path):
    """Real Envoy, the chart's EnvoyFilter and the real module, with an RBAC filter (what an
    AuthorizationPolicy becomes) that admits only `x-tollgate-client-id: orders-service`.
    The filter goes where the rendered patch puts it in the chain istiod builds (RBAC, then
    the router): first, so a client's forged header is gone before RBAC looks."""
    import hashlib
    import urllib.error
    import urllib.request

    from chartlib import FILTER_WASM
    from test_envoy_attachment import ENVOY, AuthServerStandIn, EchoServer, Envoy, TestIssuer, bootstrap_from
    from test_redis_runtime import free_port

    if ENVOY is None or not FILTER_WASM.is_file():
        pytest.skip("needs envoy and the built filter (make build-filter)")
    module = FILTER_WASM.read_bytes()
    docs = render_docs([], {"edge": {"module": {"sha256": hashlib.sha256(module).hexdigest()}}})
    ef = by_kind(docs, "EnvoyFilter")[0]
    patch = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER")
    cfg = json.loads(ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]["value"])
    issuer = TestIssuer(issuer=cfg["issuers"][0]["issuer"], audience=cfg["issuers"][0]["audiences"][0])
    auth = AuthServerStandIn(issuer, module)
    echo = EchoServer()
    listen, admin = free_port(), free_port()
    boot, _ = bootstrap_from(ef, auth.port, echo.port, listen, admin)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm, router = hcm["http_filters"]
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"orders-only": {
            "permissions": [{"any": True}],
            "principals": [{"header": {"name": "x-tollgate-client-id",
                                       "string_match": {"exact": "orders-service"}}}]}}}}}
    by_name = {wasm["name"]: wasm, rbac["name"]: rbac, router["name"]: router}
    order = apply_http_filter_patch([rbac["name"], router["name"]], patch)
    hcm["http_filters"] = [by_name[n] for n in order]
    envoy = Envoy(boot, tmp_path, admin, base_id=44000 + listen % 1000)

    def get(path: str, headers: dict) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{listen}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        envoy.wait_ready()
        # Anonymous path (the chart's `health` rule) with a forged identity: RBAC sees none.
        assert get("/healthz", {"x-tollgate-client-id": "orders-service"}) == 403
        assert echo.requests == 0
        # Another client's token plus the forged header: RBAC sees the verified identity.
        other = issuer.mint(claims=issuer.claims(sub="billing"))
        assert get("/orders", {"Authorization": f"Bearer {other}", "x-tollgate-client-id": "orders-service"}) == 403
        assert echo.requests == 0
        ok = issuer.mint(claims=issuer.claims(sub="orders-service"))
        assert get("/orders", {"Authorization": f"Bearer {ok}"}) == 200
    finally:
        envoy.stop()
        echo.stop()
        auth.stop()
        issuer.stop()
