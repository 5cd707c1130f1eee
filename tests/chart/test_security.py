"""Pod Security Standards `restricted` over every rendered pod template, and NetworkPolicy
coverage and flows (evaluated on the rendered policies with Kubernetes' selector semantics)."""

from __future__ import annotations

import copy

import pytest

from chartlib import ALL_VARIANTS, NAMESPACE, all_containers, pod_templates, render_docs

# ----------------------------------------------------------------- PSS restricted checker
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted)

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
BASELINE_CAPS = set()  # restricted: only NET_BIND_SERVICE may be added
ALLOWED_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
MIN_ID = 10000


def pss_restricted_violations(meta: dict, spec: dict) -> list[str]:
    v: list[str] = []
    psc = spec.get("securityContext") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            v.append(f"{f} is set")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            v.append(f"volume {vol['name']} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    for s in psc.get("sysctls") or []:
        if s["name"] not in ALLOWED_SYSCTLS:
            v.append(f"sysctl {s['name']}")
    ann = meta.get("annotations") or {}
    for k, val in ann.items():
        if k.startswith("container.apparmor.security.beta.kubernetes.io/") and val not in ("runtime/default",) and not val.startswith("localhost/"):
            v.append(f"apparmor {k}={val}")
    pod_non_root = psc.get("runAsNonRoot")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser 0")
    for f in ("runAsUser", "runAsGroup", "fsGroup"):
        if f in psc and psc[f] < MIN_ID:
            v.append(f"pod {f} {psc[f]} < {MIN_ID}")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        v.append(f"pod seccomp {pod_seccomp}")
    for c in all_containers(spec):
        n = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            v.append(f"{n}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{n}: capabilities not dropping ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            v.append(f"{n}: adds capabilities {sorted(added)}")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{n}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            v.append(f"{n}: runAsNonRoot is not true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        if uid is None or uid < MIN_ID:
            v.append(f"{n}: runAsUser {uid} (need >= {MIN_ID})")
        if gid is None or gid < MIN_ID:
            v.append(f"{n}: runAsGroup {gid} (need >= {MIN_ID})")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{n}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{n}: readOnlyRootFilesystem is not true")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                v.append(f"{n}: hostPort {p['hostPort']}")
        if ((sc.get("seLinuxOptions") or {}).get("type") or "") not in ("", "container_t", "container_init_t", "container_kvm_t"):
            v.append(f"{n}: seLinux type")
        if sc.get("procMount") not in (None, "Default"):
            v.append(f"{n}: procMount")
        if not c.get("resources", {}).get("limits") or not c.get("resources", {}).get("requests"):
            v.append(f"{n}: resources not set")
    return v


def test_every_pod_template_meets_restricted(variant_docs):
    pods = [(d, m, s) for d in variant_docs for m, s in pod_templates(d)]
    assert pods
    problems = []
    for d, meta, spec in pods:
        for p in pss_restricted_violations(meta, spec):
            problems.append(f"{d['kind']}/{d['metadata']['name']}: {p}")
        # Only the secret generator talks to the API server (create/patch of its own Secret
        # names: test_issue11_chart.py::test_defect5_generator_covers_every_secret_the_pods_read).
        generator = d["metadata"]["name"].endswith("-secret-generator")
        if spec.get("automountServiceAccountToken") is not False and not generator:
            problems.append(f"{d['kind']}/{d['metadata']['name']}: service account token mounted")
    assert not problems, "\n".join(problems)


def test_pss_checker_catches_violations():
    docs = render_docs([])
    dep = next(d for d in docs if d["kind"] == "Deployment")
    meta, spec = pod_templates(copy.deepcopy(dep))[0]
    assert pss_restricted_violations(meta, spec) == []
    spec["containers"][0]["securityContext"]["runAsUser"] = 1000
    spec["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["hostNetwork"] = True
    found = "\n".join(pss_restricted_violations(meta, spec))
    for needle in ("runAsUser 1000", "dropping ALL", "hostPath", "hostNetwork"):
        assert needle in found


def test_namespace_carries_pss_labels():
    docs = render_docs(ALL_VARIANTS["ci/standalone-tls-values.yaml"])
    ns = next(d for d in docs if d["kind"] == "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


# ----------------------------------------------------------------- NetworkPolicy evaluation

def selector_matches(sel: dict | None, labels: dict) -> bool:
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e["values"]:
            return False
        if op == "NotIn" and val in e["values"]:
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


class Endpoint:
    def __init__(self, ns: str, ns_labels: dict, labels: dict, name: str):
        self.ns, self.ns_labels, self.labels, self.name = ns, ns_labels, labels, name


def peer_matches(peer: dict, ep: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ep.ns_labels):
            return False
    elif ep.ns != policy_ns:
        return False
    if "podSelector" in peer:
        return selector_matches(peer["podSelector"], ep.labels)
    return True


def port_matches(ports: list | None, port: int, proto: str) -> bool:
    if not ports:
        return True
    return any(p.get("port") in (None, port) and p.get("protocol", "TCP") == proto for p in ports)


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> bool:
    """Kubernetes semantics: a direction is open when no policy selecting the pod has that
    policy type, or when one of those policies has a rule admitting the peer and port."""
    def direction(pod: Endpoint, peer: Endpoint, ptype: str, key: str, peers_key: str) -> bool:
        selecting = [p for p in policies if p["metadata"]["namespace"] == pod.ns
                     and selector_matches(p["spec"]["podSelector"], pod.labels)
                     and ptype in p["spec"].get("policyTypes", ["Ingress"])]
        if not selecting:
            return True
        for p in selecting:
            for rule in p["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if (not peers or any(peer_matches(x, peer, p["metadata"]["namespace"]) for x in peers)) \
                        and port_matches(rule.get("ports"), port, proto):
                    return True
        return False

    return direction(dst, src, "Ingress", "ingress", "from") and direction(src, dst, "Egress", "egress", "to")


def comp_labels(component: str) -> dict:
    return {"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/instance": "tollgate",
            "app.kubernetes.io/component": component}


NS_LABELS = {"kubernetes.io/metadata.name": NAMESPACE}


def ep(component: str) -> Endpoint:
    return Endpoint(NAMESPACE, NS_LABELS, comp_labels(component), component)


GATEWAY = Endpoint("istio-system", {"kubernetes.io/metadata.name": "istio-system"}, {"istio": "ingressgateway"}, "gateway")
PROMETHEUS = Endpoint("monitoring", {"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"}, "prometheus")
DNS = Endpoint("kube-system", {"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"}, "dns")
ISTIOD = Endpoint("istio-system", {"kubernetes.io/metadata.name": "istio-system"}, {"app": "istiod"}, "istiod")
STRANGER = Endpoint("default", {"kubernetes.io/metadata.name": "default"}, {"app": "other"}, "stranger")


def test_every_pod_is_covered_in_both_directions(variant_docs):
    policies = [d for d in variant_docs if d["kind"] == "NetworkPolicy"]
    problems = []
    for d in variant_docs:
        for meta, _spec in pod_templates(d):
            labels = meta.get("labels") or {}
            types = set()
            for p in policies:
                if selector_matches(p["spec"]["podSelector"], labels):
                    types |= set(p["spec"].get("policyTypes") or [])
            if types != {"Ingress", "Egress"}:
                problems.append(f"{d['kind']}/{d['metadata']['name']}: covered for {sorted(types)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("env", ["dev", "staging", "production"])
def test_needed_flows_open_and_others_closed(env):
    docs = render_docs(ALL_VARIANTS[env])
    pol = [d for d in docs if d["kind"] == "NetworkPolicy"]
    edge = next(d for d in docs if d["kind"] in ("EnvoyFilter", "WasmPlugin"))
    # This environment's own gateway pods (defect 4: one gateway per environment).
    GATEWAY = Endpoint("istio-system", {"kubernetes.io/metadata.name": "istio-system"},
                       (edge["spec"].get("workloadSelector") or {}).get("labels")
                       or edge["spec"]["selector"]["matchLabels"], "gateway")
    sentinel = env != "dev"
    auth, redis, sent = ep("authserver"), ep("redis"), ep("sentinel")
    must = [
        (GATEWAY, auth, 9080), (PROMETHEUS, auth, 9081), (ep("test"), auth, 9080),
        (ep("test"), auth, 9081),
        (auth, redis, 6379), (ep("init"), redis, 6379), (ep("cleanup"), redis, 6379),
        (ep("cache-cleanup"), redis, 6379), (PROMETHEUS, redis, 9121),
        (redis, redis, 6379), (auth, ISTIOD, 15012), (ep("test"), ISTIOD, 15012),
    ]
    if sentinel:
        must += [(auth, sent, 26379), (sent, sent, 26379), (sent, redis, 6379), (redis, sent, 26379),
                 (ep("backup"), redis, 6379)]
    for src in (auth, redis, ep("init")):
        assert allowed(pol, src, DNS, 53, "UDP"), f"{src.name} cannot resolve names"
    for src, dst, port in must:
        assert allowed(pol, src, dst, port), f"{src.name} -> {dst.name}:{port} is blocked"
    must_not = [
        (GATEWAY, redis, 6379), (STRANGER, auth, 9080), (STRANGER, redis, 6379),
        (auth, GATEWAY, 8080), (redis, STRANGER, 443), (ep("test"), redis, 6379),
        (GATEWAY, ep("init"), 9080), (PROMETHEUS, redis, 6379), (auth, redis, 9121),
        (ep("cleanup"), auth, 9080), (redis, ISTIOD, 15012), (ep("init"), ISTIOD, 15012),
        # The admin listener: never from a gateway or outside the namespace; metrics moved
        # there, so Prometheus has no business on the public port.
        (GATEWAY, auth, 9081), (STRANGER, auth, 9081), (PROMETHEUS, auth, 9080),
    ]
    if sentinel:
        must_not += [(GATEWAY, sent, 26379), (ep("test"), sent, 26379)]
    for src, dst, port in must_not:
        assert not allowed(pol, src, dst, port), f"{src.name} -> {dst.name}:{port} should be blocked"


def test_mesh_membership():
    """The auth server (and the helm test pod that calls it under STRICT mTLS) are in the
    mesh; Redis, Sentinel and the Jobs are not (Jobs must complete; Redis peers address
    each other by pod hostname)."""
    docs = render_docs(ALL_VARIANTS["staging"], {"backup": {"enabled": True}})
    seen = {}
    for d in docs:
        for meta, _ in pod_templates(d):
            comp = meta["labels"]["app.kubernetes.io/component"]
            seen[comp] = (meta.get("annotations") or {}).get("sidecar.istio.io/inject")
    assert seen.pop("authserver") is None and seen.pop("test") is None
    assert seen and all(v == "false" for v in seen.values()), seen
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    assert "quitquitquit" in test_pod["spec"]["containers"][0]["command"][-1]
