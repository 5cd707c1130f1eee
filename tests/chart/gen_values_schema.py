"""Generate chart/values.schema.json from chart/values.yaml plus the constraints below.

    python tests/chart/gen_values_schema.py      # rewrites chart/values.schema.json

test_docs.py checks the committed schema equals this output: add a value to values.yaml,
give it a constraint here when it has one, and regenerate.
"""
import json
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "chart"


def generate() -> dict:
    vals = yaml.safe_load((CHART / "values.yaml").read_text())
    FREE = {'commonLabels','podAnnotations','podLabels','nodeSelector','affinity','config','extraConfig',
            'headers','defaultRule','resources','workloadSelector','gatewayNamespaceSelector','gatewayPodSelector',
            'prometheusNamespaceSelector','prometheusPodSelector','istiodNamespaceSelector','istiodPodSelector',
            'labels','annotations','thresholds','issuerRef','requests','limits'}
    def typ(v):
        if isinstance(v,bool): return {"type":"boolean"}
        if isinstance(v,int): return {"type":"integer"}
        if isinstance(v,float): return {"type":"number"}
        if isinstance(v,str): return {"type":"string"}
        if isinstance(v,list): return {"type":"array"}
        return {}
    def gen(v, key=None):
        if isinstance(v, dict):
            if key in FREE:
                return {"type":"object"}
            return {"type":"object","additionalProperties":False,
                    "properties":{k: gen(x,k) for k,x in v.items()}}
        return typ(v)
    s = gen(vals)
    s["$schema"]="https://json-schema.org/draft-07/schema#"
    s["title"]="Tollgate chart values"
    P=s["properties"]
    def at(path):
        d=s
        for p in path.split('.'):
            d=d["properties"][p]
        return d
    image = lambda p: at(p)["properties"]["digest"].update({"pattern":"^(sha256:[0-9a-f]{64})?$"})
    for p in ["authserver.image","redis.image","redis.exporter.image","tests.image","secretGenerator.image"]:
        image(p)
        if "pullPolicy" in at(p)["properties"]:
            at(p)["properties"]["pullPolicy"]["enum"]=["Always","IfNotPresent","Never"]
        at(p)["properties"]["tag"]["not"]={"const":"latest"}
    at("environment")["pattern"]="^[a-z0-9-]+$"
    at("namespace.podSecurityLevel")["enum"]=["restricted","baseline","privileged"]
    for k in ["runAsUser","runAsGroup","fsGroup"]:
        at("podSecurity."+k)["minimum"]=10000
    at("authserver.replicaCount")["minimum"]=1
    at("authserver.port").update({"minimum":1024,"maximum":65535})
    at("authserver.adminPort").update({"minimum":1024,"maximum":65535})
    at("authserver.service.port").update({"minimum":1,"maximum":65535})
    at("authserver.service.type")["enum"]=["ClusterIP","NodePort","LoadBalancer"]
    at("authserver.signingAlg")["enum"]=["ES256","RS256","EdDSA"]
    at("authserver.logFormat")["enum"]=["json","text"]
    at("authserver.podAntiAffinity")["enum"]=["soft","hard","none"]
    at("authserver.issuer")["pattern"]="^(https?://[^\\s]+)?$"
    for k in ["targetCPUUtilizationPercentage","targetMemoryUtilizationPercentage"]:
        at("authserver.autoscaling."+k).update({"minimum":1,"maximum":100})
    at("authserver.autoscaling.minReplicas")["minimum"]=1
    at("authserver.extraEnv")["items"]={"type":"object","required":["name"]}
    at("imagePullSecrets")["items"]={"type":"object","required":["name"]}
    at("authserver.tolerations")["items"]={"type":"object"}
    at("redis.tolerations")["items"]={"type":"object"}
    at("authserver.pdb.minAvailable")["type"]=["integer","string"]
    at("seed.clients")["items"]={"type":"object","required":["client_id"],
      "properties":{"client_id":{"type":"string","minLength":1},
         "secretRef":{"type":"object","additionalProperties":False,"required":["name","key"],
            "properties":{"name":{"type":"string","minLength":1},"key":{"type":"string","minLength":1}}}}}
    at("redis.mode")["enum"]=["standalone","sentinel","external"]
    at("redis.maxmemoryPolicy")["enum"]=["noeviction","volatile-lru","volatile-lfu","volatile-ttl"]
    at("redis.persistence.appendfsync")["enum"]=["always","everysec","no"]
    at("redis.persistence.rdbSave")["items"]={"type":"string","pattern":"^[0-9]+ [0-9]+$"}
    at("redis.sentinel.sentinels")["minimum"]=3
    at("redis.sentinel.quorum")["minimum"]=2
    at("redis.sentinel.replicas")["minimum"]=1
    at("redis.sentinel.waitReplicas").update({"type":["string","integer"],"pattern":"^(all|[0-9]+)$","minimum":0})
    at("redis.sentinel.waitTimeoutMs").update({"minimum":1,"maximum":1999})
    for k,v in at("redis.auth.users")["properties"].items(): v.update({"pattern":"^[a-zA-Z0-9_-]+$"})
    for k in ["authserverPassword","cachePassword","replicationPassword","sentinelPassword","exporterPassword"]:
        at("redis.auth."+k)["pattern"]="^[A-Za-z0-9._~-]*$"
    at("redis.external.url")["pattern"]="^((redis|rediss|redis\\+sentinel|rediss\\+sentinel)://[^@\\s]+)?$"
    at("redis.external.cacheUrl")["pattern"]="^((redis|rediss|redis\\+sentinel|rediss\\+sentinel)://[^@\\s]+)?$"
    at("redis.external.cidrs")["items"]={"type":"string"}
    at("redis.external.ports")["items"]={"type":"integer","minimum":1,"maximum":65535}
    at("clusterDomain").update({"minLength":1,"pattern":"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"})
    at("mesh.networkingApiVersion")["enum"]=["","networking.istio.io/v1","networking.istio.io/v1beta1"]
    at("authserver.trustedProxyHops").update({"minimum":0,"maximum":10})
    at("networkPolicy.dnsPeers").update({"items":{"type":"object"},"minItems":1})
    at("networkPolicy.apiServerCidrs")["items"]={"type":"string"}
    at("networkPolicy.apiServerPorts")["items"]={"type":"integer","minimum":1,"maximum":65535}
    at("expose.host")["pattern"]="^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"
    at("expose.gateway")["pattern"]="^([a-z0-9-]+/[a-z0-9.-]+)?$"
    at("expose.paths")["items"]={"type":"string","pattern":"^/[^\\s?#]*$"}
    at("secretGenerator.activeDeadlineSeconds")["minimum"]=10
    at("edge.kind")["enum"]=["envoyFilter","wasmPlugin"]
    at("edge.context")["enum"]=["GATEWAY","SIDECAR_INBOUND"]
    at("edge.module.source")["enum"]=["http","oci"]
    at("edge.module.oci")["pattern"]="^(oci://[^\\s]+)?$"
    at("edge.module.sha256")["pattern"]="^([0-9a-f]{64})?$"
    at("authserver.modulePort").update({"minimum":1024,"maximum":65535})
    at("edge.module.pins.file")["pattern"]="^([0-9a-f]{64})?$"
    at("edge.module.pins.oci")["pattern"]="^([0-9a-f]{64})?$"
    at("edge.module.pullPolicy")["enum"]=["IfNotPresent","Always"]
    at("edge.failStrategy")["enum"]=["FAIL_CLOSE","FAIL_OPEN"]
    at("edge.audiences").update({"items":{"type":"string","minLength":1},"minItems":1})
    at("edge.algorithms")["items"]={"enum":["ES256","ES384","RS256","RS384","RS512","PS256","PS384","PS512","EdDSA"]}
    at("edge.clockSkewSeconds").update({"minimum":0,"maximum":600})
    # The filter's own schema (plugin/filter/config.schema.json) for what the chart passes to
    # it verbatim: a typo in a rule or a DPoP setting fails `helm install`, not the gateway.
    at("edge.rules")["items"]=filter_schema("rules")["items"]
    at("edge.dpop").clear()
    at("edge.dpop").update(filter_schema("dpop"))
    for k in ["cleanup","cacheCleanup","backup"]:
        at(k+".schedule")["pattern"]="^(@(hourly|daily|weekly|monthly)|([^\\s]+\\s+){4}[^\\s]+)$"
    s["allOf"]=[{"if":{"properties":{"redis":{"properties":{"mode":{"const":"sentinel"}}}}},
                 "then":{"properties":{"redis":{"properties":{"sentinel":{"required":["quorum","sentinels"]}}}}}}]
    s['properties']['seed']['properties']['cacheConfig']={"type":"object","additionalProperties":False,"properties":{"default_ttl":{"type":"integer","minimum":1},"max_entries_per_service":{"type":"integer","minimum":1}}}
    s['properties']['seed']['properties']['config']={"type":"object","additionalProperties":False,"properties":{k:{"type":"integer","minimum":0} for k in ["auth_code_ttl","access_token_ttl","refresh_token_ttl","session_ttl","rate_limit_default","rate_limit_per_client","rate_limit_per_ip"]}}
    return s


def filter_schema(prop: str) -> dict:
    """A top-level property of the filter's configuration schema, its `$ref`s inlined."""
    schema = json.loads((CHART.parent / "plugin" / "filter" / "config.schema.json").read_text())

    def inline(v):
        if isinstance(v, dict):
            if set(v) == {"$ref"} and v["$ref"].startswith("#/$defs/"):
                return inline(schema["$defs"][v["$ref"].split("/")[-1]])
            return {k: inline(x) for k, x in v.items()}
        if isinstance(v, list):
            return [inline(x) for x in v]
        return v
    return inline(schema["properties"][prop])


def render() -> str:
    return json.dumps(generate(), indent=2) + "\n"


if __name__ == "__main__":
    (CHART / "values.schema.json").write_text(render())
