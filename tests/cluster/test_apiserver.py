"""The chart, k8s/ and argocd/ against a real kube-apiserver (etcd, Pod Security admission,
RBAC, the real CRDs of Istio, Argo CD, Prometheus Operator and cert-manager), driven by
Helm's own SDK (install, upgrade, rollback) and by server-side apply as Argo CD does it.

What it cannot show here: there is no kubelet and no controller manager, so no pod starts,
no Job (Helm hook) runs and no Deployment rolls out. Helm hooks are therefore not run by the
install/upgrade/rollback tests (Helm would wait forever for a Job no kubelet runs); the hook
objects are still validated server-side and their pods admitted by Pod Security below.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess

import helm_python as helm
import pytest
import yaml
from helm_python import _native

from apiserver import Cluster, resources
from chartlib import K8S, deep_merge, pod_templates
from clusterlib import CHART, ENV_FILES, appset_elements, appset_template, argocd_values
from clusterlib import docs_of, kustomize_docs, render_in

ENV_NS = {e["env"]: e["namespace"] for e in appset_elements()}
SYNC = appset_template()["spec"]["syncPolicy"]
NS_LABELS = SYNC["managedNamespaceMetadata"]["labels"]
ARGOCD_MANAGER = "argocd-controller"  # the field manager of Argo CD's server-side apply
HELM_TIMEOUT = 120


def _is_test_hook(d: dict) -> bool:
    hook = ((d.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook", "")
    return "test" in hook.split(",")


CLUSTER_SCOPED = {"Namespace", "ClusterIssuer", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition"}


def _apply(cluster: Cluster, docs: list[dict], namespace: str, *extra: str, check=True):
    """Server-side apply as Argo CD does: objects without a namespace go to the
    destination namespace, the others (the mesh attachment) where they say."""
    docs = copy.deepcopy(docs)
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            d["metadata"].setdefault("namespace", namespace)
    return cluster.kubectl(
        "apply", "--server-side", f"--field-manager={ARGOCD_MANAGER}",
        *extra, "-f", "-", input=yaml.safe_dump_all(docs), check=check,
    )


def _existing_secrets(cluster: Cluster, ns: str) -> None:
    """The Secrets staging and production expect to exist (docs/install.md, step 4)."""
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tollgate-authserver"},
         "stringData": {"admin-token": "a" * 64, "secret-pepper": "p" * 64,
                        "key-encryption-key": base64.b64encode(b"k" * 32).decode()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tollgate-redis"},
         "stringData": {k: f"{k[:4]}{'x' * 40}" for k in (
             "authserver-password", "cache-password", "replication-password",
             "sentinel-password", "exporter-password")}},
    ]
    cluster.kubectl("apply", "--server-side", "--field-manager=test", "-n", ns, "-f", "-",
                    input=yaml.safe_dump_all(docs))


def _run_secret_generator(cluster: Cluster, ns: str, docs: list[dict], workdir) -> list[str]:
    """What the chart's secret generator hook does in the cluster, against the real API
    server: its ServiceAccount, Role and RoleBinding as rendered, a token of that
    ServiceAccount (TokenRequest), and the script (chart/files/generate-secrets.sh, from the
    rendered Job's command) with the Job's KEYS and LABELS. Returns its output lines."""
    gen = [d for d in docs if d["metadata"]["name"].endswith("-secret-generator")]
    job = next(d for d in gen if d["kind"] == "Job")
    rbac = [d for d in gen if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
    _apply(cluster, rbac, ns)
    sa = job["spec"]["template"]["spec"]["serviceAccountName"]
    token = cluster.kubectl("create", "token", sa, "-n", ns).stdout.strip()
    sa_dir = workdir / f"sa-{ns}"
    sa_dir.mkdir(exist_ok=True)
    (sa_dir / "token").write_text(token)
    (sa_dir / "ca.crt").write_bytes(cluster.ca.read_bytes())
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    script = str(CHART / "files" / "generate-secrets.sh")
    proc = subprocess.run(
        ["sh", script], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "NAMESPACE": ns, "KEYS": env["KEYS"],
             "LABELS": env.get("LABELS", "{}"), "KUBERNETES_API": cluster.url,
             "SA_DIR": str(sa_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def _secrets(cluster: Cluster, ns: str) -> dict[str, dict]:
    items = json.loads(cluster.kubectl("get", "secrets", "-n", ns, "-o", "json").stdout)["items"]
    return {
        s["metadata"]["name"]: s.get("data") or {}
        for s in items if s.get("type") != "helm.sh/release.v1"
    }


def _helm(cluster: Cluster, ns: str) -> helm.Config:
    return helm.Config(kubeconfig_path=str(cluster.kubeconfig), namespace=ns)


def _helm_action(cfg: helm.Config, action: str, *args, **opts):
    """install / upgrade through the SDK with hooks disabled (see the module docstring):
    Config.install/upgrade do not expose Helm's disable_hooks option."""
    chart = helm.Chart.load(str(CHART))
    payload = _native.call_string(
        action, cfg._raw(), _native.HANDLE(0), chart._raw(), None, *args,
        json.dumps({"disable_hooks": True, "timeout_seconds": HELM_TIMEOUT, **opts}),
    )
    return json.loads(payload)


def _install(cluster, ns, name, values):
    with _helm(cluster, ns) as cfg:
        return _helm_action(cfg, "helm_install", name, json.dumps(values), namespace=ns)


def _upgrade(cluster, ns, name, values):
    with _helm(cluster, ns) as cfg:
        return _helm_action(cfg, "helm_upgrade", name, json.dumps(values), namespace=ns)


# ---------------------------------------------------------------- the API server itself

def test_crds_from_the_projects_modules_are_served(cluster):
    served = resources(cluster)
    wanted = set()
    docs = [d for env in ENV_FILES for d in docs_of(render_in(argocd_values(env), ENV_NS[env]))]
    for o in ("dev", "staging", "production"):
        docs += kustomize_docs(K8S / "overlays" / o)
    for d in docs:
        group = d["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io") and d["kind"] != "Kustomization":
            wanted.add(f"{d['apiVersion']}/{d['kind']}")
    wanted |= {f"argoproj.io/v1alpha1/{k}" for k in ("Application", "ApplicationSet", "AppProject")}
    assert wanted and wanted <= served, wanted - served


# ---------------------------------------------------------------- server-side validation

@pytest.mark.parametrize("kind", ["envoyFilter", "wasmPlugin"])
@pytest.mark.parametrize("credentials", ["meshIdentity", "secret"])
def test_edge_attachment_and_authorization_policy_pass_server_side_validation(cluster, kind, credentials):
    """Issue 11 defect 7: the filter attachment in both credential modes (WasmPlugin
    `vmConfig.env` valueFrom HOST against the CRD's CEL rule, EnvoyFilter host_env_keys)
    and the AuthorizationPolicy keeping /edge/* to the gateways, against Istio's CRDs."""
    ns = f"ssv-edge-{kind.lower()}-{credentials.lower()}"
    cluster.namespace(ns, NS_LABELS)
    edge = {"kind": kind, "authServer": {"credentials": credentials}}
    if credentials == "secret":
        edge["authServer"]["secretRef"] = {"name": "edge-gateway-client"}
    docs = [d for d in docs_of(render_in(argocd_values("dev", {"edge": edge}), ns))
            if d["kind"] in ("EnvoyFilter", "WasmPlugin", "AuthorizationPolicy")]
    assert sorted(d["kind"] for d in docs) == sorted(
        ["AuthorizationPolicy", "WasmPlugin" if kind == "wasmPlugin" else "EnvoyFilter"])
    if credentials == "secret" and kind == "wasmPlugin":
        [wp] = [d for d in docs if d["kind"] == "WasmPlugin"]
        # The CRD's CEL rule refuses a value with valueFrom HOST: a secret cannot hide there.
        bad = copy.deepcopy(wp)
        bad["spec"]["vmConfig"]["env"][0]["value"] = "inline-secret"
        proc = _apply(cluster, [bad], ns, "--dry-run=server", "--validate=strict", check=False)
        assert proc.returncode != 0 and "valueFrom" in proc.stderr, proc.stdout + proc.stderr
    proc = _apply(cluster, docs, ns, "--dry-run=server", "--validate=strict")
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_every_object_passes_server_side_validation(cluster, env):
    """Every object of the render (hooks included) passes the API server's validation:
    strict field validation, the CRDs' schemas and their CEL rules, admission."""
    ns = f"ssv-{env}"
    cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(argocd_values(env), ns))
    proc = _apply(cluster, docs, ns, "--dry-run=server", "--validate=strict")
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


@pytest.mark.parametrize("overlay", ["dev", "staging", "production"])
def test_k8s_and_argocd_pass_server_side_validation(cluster, overlay):
    docs = [d for d in kustomize_docs(K8S / "overlays" / overlay) if d["kind"] != "Kustomization"]
    nss = [d for d in docs if d["kind"] == "Namespace"]
    for d in nss:
        cluster.namespace(d["metadata"]["name"], d["metadata"].get("labels"))
    cluster.namespace("argocd")
    from clusterlib import ARGOCD

    for f in sorted(ARGOCD.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    rest = [d for d in docs if d["kind"] != "Namespace"]
    proc = _apply(cluster, rest, "default", "--dry-run=server", "--validate=strict")
    assert proc.stdout.count("(server dry run)") == len(rest), proc.stdout


def test_server_side_validation_refuses_unknown_fields_and_cel_violations(cluster):
    """Not vacuous: an unknown field in a core object, one in a custom resource, and a
    WasmPlugin breaking a CEL rule of Istio's CRD are all refused."""
    ns = "ssv-negative"
    cluster.namespace(ns)
    docs = docs_of(render_in(argocd_values("production"), ns))
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    ef = copy.deepcopy(next(d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin")))
    ef["spec"]["selectorr"] = {}
    for bad, word in ((dep, "imagePullPolicyy"), (ef, "selectorr")):
        proc = _apply(cluster, [bad], ns, "--dry-run=server", "--validate=strict", check=False)
        assert proc.returncode != 0 and word in proc.stderr, proc.stderr
    wp = {
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "cel-check", "namespace": ns},
        "spec": {"url": "oci://example.invalid/filter:1", "selector": {"matchLabels": {"a": "b"}}},
    }
    assert _apply(cluster, [wp], ns, "--dry-run=server", check=False).returncode == 0
    wp["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io",
                                 "name": "edge"}]
    proc = _apply(cluster, [wp], ns, "--dry-run=server", check=False)
    assert "only one of targetRefs or selector can be set" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- Pod Security admission

def _pods_of(docs: list[dict], ns: str) -> list[dict]:
    pods = []
    for d in docs:
        for meta, spec in pod_templates(d):
            spec = copy.deepcopy(spec)
            # a StatefulSet's claims reach its pods as volumes: here as generic ephemeral
            # volumes with the same claim spec (allowed under restricted, like PVCs)
            for t in (d.get("spec") or {}).get("volumeClaimTemplates") or []:
                spec.setdefault("volumes", []).append({
                    "name": t["metadata"]["name"],
                    "ephemeral": {"volumeClaimTemplate": {"spec": t["spec"]}},
                })
            pods.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{d['kind']}-{d['metadata']['name']}".lower()[:63],
                             "namespace": ns, "labels": meta.get("labels") or {},
                             "annotations": meta.get("annotations") or {}},
                "spec": spec,
            })
    return pods


@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_every_pod_template_is_admitted_by_pss_restricted(cluster, env):
    """Each workload's pod template (Deployments, StatefulSets, Jobs, CronJobs, hooks and
    the test pod), created as a Pod in a namespace labelled as the ApplicationSet labels it
    (enforce: restricted, latest), passes Pod Security admission. No kubelet: admitted only."""
    ns = f"pss-{env}"
    cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(argocd_values(env), ns))
    sas = [d for d in docs if d["kind"] == "ServiceAccount"]
    if sas:
        cluster.kubectl("apply", "--server-side", "--field-manager=test", "-n", ns, "-f", "-",
                        input=yaml.safe_dump_all(sas))
    pods = _pods_of(docs, ns)
    assert len(pods) >= 3
    for pod in pods:
        proc = cluster.kubectl("create", "--dry-run=server", "-f", "-",
                               input=yaml.safe_dump(pod), check=False)
        assert proc.returncode == 0, f"{pod['metadata']['name']}: {proc.stderr}"
        assert "violate" not in proc.stderr, proc.stderr


def test_pss_restricted_refuses_a_privileged_pod(cluster):
    ns = "pss-negative"
    cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(argocd_values("production"), ns))
    pod = _pods_of([next(d for d in docs if d["kind"] == "Deployment")], ns)[0]
    pod["spec"]["serviceAccountName"] = "default"
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod),
                           check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- Helm: side by side

def test_environments_install_side_by_side(cluster):
    """dev, staging and production, each released as `tollgate` into its ApplicationSet
    namespace, install next to each other (defect 4: today they all write
    istio-system/tollgate-edge and the second install is refused), and the objects they put
    in shared namespaces have distinct names and select distinct gateways."""
    shared = {}
    for env in ("dev", "staging", "production"):
        ns = ENV_NS[env]
        cluster.namespace(ns, NS_LABELS)
        if env != "dev":
            _existing_secrets(cluster, ns)
        rel = _install(cluster, ns, "tollgate", argocd_values(env))
        assert rel["status"] == "deployed", rel["status"]
        for d in yaml.safe_load_all(rel["manifest"]):
            if d and (d["metadata"].get("namespace") or ns) != ns:
                key = (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                assert key not in shared, f"{env} and {shared.get(key)} both write {key}"
                shared[key] = env
    selectors = {}
    for (kind, ns, name), env in shared.items():
        obj = json.loads(cluster.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)
        spec = obj.get("spec") or {}
        sel = json.dumps(spec.get("workloadSelector") or spec.get("selector") or
                         spec.get("targetRefs"), sort_keys=True)
        if kind in ("EnvoyFilter", "WasmPlugin"):
            assert sel not in selectors, f"{env} and {selectors.get(sel)} attach to {sel}"
            selectors[sel] = env


# ---------------------------------------------------------------- Helm: upgrade, rollback

@pytest.mark.parametrize("env", ["dev", "production"])
def test_upgrade_and_rollback_keep_every_secret(cluster, env, tmp_path):
    """install, upgrade with a changed value, upgrade again unchanged, roll back to the
    first revision: no error (no immutable field touched: StatefulSet volumeClaimTemplates
    and selectors, Job specs) and every Secret identical throughout."""
    ns = f"upg-{env}"
    cluster.namespace(ns, NS_LABELS)
    # the mesh attachment in the release namespace, so that this test does not depend on
    # the environments' separation in istio-system (test_environments_install_side_by_side)
    base = deep_merge(argocd_values(env), {"edge": {"namespace": ns}})
    if env == "dev":
        # dev's Secrets come from the generator hook (hooks are off in these installs)
        _run_secret_generator(cluster, ns, docs_of(render_in(base, ns)), tmp_path)
    else:
        _existing_secrets(cluster, ns)
    _install(cluster, ns, "tollgate", base)
    before = _secrets(cluster, ns)
    assert before, "the release has Secrets"
    changed = deep_merge(base, {"authserver": {"logLevel": "debug"}})
    assert _upgrade(cluster, ns, "tollgate", changed)["revision"] == 2
    assert _secrets(cluster, ns) == before
    assert _upgrade(cluster, ns, "tollgate", changed)["revision"] == 3
    assert _secrets(cluster, ns) == before
    with _helm(cluster, ns) as cfg:
        cfg.rollback("tollgate", version=1, timeout=HELM_TIMEOUT)
        assert cfg.status("tollgate")["revision"] == 4
    assert _secrets(cluster, ns) == before


def test_secret_generator_creates_each_key_once_with_the_charts_rbac(cluster, tmp_path):
    """Defect 5 against the real API server: the generator, run with the token of the
    chart's own ServiceAccount and Role, creates every missing key (the key-encryption key as
    base64 of 32 bytes); run again it keeps every key byte for byte (409 from server-side
    apply with force=false); a key someone else set is never overwritten; and the Role
    allows nothing beyond the generated Secrets."""
    ns = "gen-dev"
    cluster.namespace(ns, NS_LABELS)
    docs = docs_of(render_in(argocd_values("dev"), ns))
    # a key set beforehand by someone else (an operator's own admin token) must survive
    cluster.kubectl("create", "secret", "generic", "tollgate-authserver", "-n", ns,
                    "--from-literal=admin-token=" + "o" * 48)
    first = _run_secret_generator(cluster, ns, docs, tmp_path)
    assert "tollgate-authserver/admin-token: kept" in first, first
    created = [line for line in first if line.endswith(": created")]
    assert "tollgate-authserver/key-encryption-key: created" in created, first
    assert len(created) >= 7, first
    after = _secrets(cluster, ns)
    assert base64.b64decode(after["tollgate-authserver"]["admin-token"]).decode() == "o" * 48
    kek = base64.b64decode(base64.b64decode(after["tollgate-authserver"]["key-encryption-key"]))
    assert len(kek) == 32
    second = _run_secret_generator(cluster, ns, docs, tmp_path)
    assert all(line.endswith(": kept") for line in second), second
    assert _secrets(cluster, ns) == after
    # the generator's ServiceAccount may not touch any other Secret, nor read these
    sa = next(d for d in docs if d["kind"] == "ServiceAccount"
              and d["metadata"]["name"].endswith("-secret-generator"))["metadata"]["name"]
    who = f"--as=system:serviceaccount:{ns}:{sa}"
    for verb, what in (("create", "secrets/other"), ("patch", "secrets/other"),
                       ("get", "secrets/tollgate-authserver"), ("list", "secrets"),
                       ("delete", "secrets/tollgate-authserver")):
        r = cluster.kubectl("auth", "can-i", verb, what, "-n", ns, who, check=False)
        assert r.stdout.strip() == "no", (verb, what, r.stdout, r.stderr)
    r = cluster.kubectl("auth", "can-i", "patch", "secrets/tollgate-authserver", "-n", ns, who, check=False)
    assert r.stdout.strip() == "yes", r.stdout + r.stderr


# ---------------------------------------------------------------- Argo CD's way

@pytest.mark.parametrize("env", sorted(ENV_FILES))
def test_argocd_render_keeps_secrets_and_server_side_applies(cluster, env):
    """Argo CD renders with `helm template` (no lookup) on every sync: two renders must
    carry byte-identical Secrets (defect 5), and both apply server-side with the
    ApplicationSet's sync options (CreateNamespace with its managed labels, ServerSideApply)
    without a conflict, leaving the Secrets as the first sync wrote them."""
    assert "ServerSideApply=true" in SYNC["syncOptions"]
    assert "CreateNamespace=true" in SYNC["syncOptions"]
    ns = f"argo-{env}"
    vals = deep_merge(argocd_values(env), {"edge": {"namespace": ns}})
    first, second = render_in(vals, ns), render_in(vals, ns)
    sec = lambda r: [d for d in docs_of(r) if d["kind"] == "Secret"]  # noqa: E731
    cluster.namespace(ns, NS_LABELS)
    if env != "dev":
        _existing_secrets(cluster, ns)
    for r in (first, second):  # two syncs: both apply without a conflict
        docs = [d for d in docs_of(r) if not _is_test_hook(d)]
        _apply(cluster, docs, ns)
    assert yaml.safe_dump_all(sec(first)) == yaml.safe_dump_all(sec(second)), (
        "Secrets differ between two `helm template` renders: every Argo CD sync rotates them")
    live = _secrets(cluster, ns)
    for s in sec(first):
        want = {k: v for k, v in (s.get("data") or {}).items()}
        if s.get("stringData"):
            import base64

            want.update({k: base64.b64encode(v.encode()).decode()
                         for k, v in s["stringData"].items()})
        assert live[s["metadata"]["name"]] == want, s["metadata"]["name"]
