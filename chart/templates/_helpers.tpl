{{/* vim: set filetype=mustache: */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "authserver"). */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" .ctx }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tollgate
tollgate.dev/environment: {{ .ctx.Values.environment | quote }}
tollgate.dev/release: {{ .ctx.Release.Name | quote }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Names */}}
{{- define "tollgate.authserver.fullname" -}}
{{- printf "%s-authserver" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tollgate.redis.fullname" -}}
{{- printf "%s-redis" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tollgate.sentinel.fullname" -}}
{{- printf "%s-redis-sentinel" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tollgate.redis.headless" -}}
{{- printf "%s-redis-headless" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tollgate.sentinel.headless" -}}
{{- printf "%s-redis-sentinel-headless" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "tollgate.clusterDomain" -}}{{ required "clusterDomain is required (the kubelet's --cluster-domain, usually cluster.local)" .Values.clusterDomain }}{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.authserver.serviceAccount.create -}}
{{- default (include "tollgate.authserver.fullname" .) .Values.authserver.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.authserver.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.authserver.secretName" -}}
{{- default (include "tollgate.authserver.fullname" .) .Values.authserver.existingSecret -}}
{{- end -}}
{{- define "tollgate.redis.secretName" -}}
{{- default (include "tollgate.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- define "tollgate.redis.tlsSecretName" -}}
{{- if .Values.redis.tls.existingSecret -}}
{{- .Values.redis.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "tollgate.redis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Image reference; call with (dict "image" .Values.x.image "ctx" $). */}}
{{- define "tollgate.image" -}}
{{- $repo := printf "%s/%s" .image.registry .image.repository -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Auth server URLs */}}
{{- define "tollgate.authserver.host" -}}
{{- printf "%s.%s.svc.%s" (include "tollgate.authserver.fullname" .) .Release.Namespace (include "tollgate.clusterDomain" .) -}}
{{- end -}}
{{- define "tollgate.authserver.baseUrl" -}}
{{- printf "http://%s:%d" (include "tollgate.authserver.host" .) (int .Values.authserver.service.port) -}}
{{- end -}}
{{- define "tollgate.issuer" -}}
{{- default (include "tollgate.authserver.baseUrl" .) .Values.authserver.issuer -}}
{{- end -}}
{{- define "tollgate.edge.cluster" -}}
{{- default (printf "outbound|%d||%s" (int .Values.authserver.service.port) (include "tollgate.authserver.host" .)) .Values.edge.authserverCluster -}}
{{- end -}}
{{- define "tollgate.edge.namespace" -}}
{{- default .Release.Namespace .Values.edge.namespace -}}
{{- end -}}
{{/*
Name of the filter attachment. In the gateway's namespace (istio-system) it sits beside
every other environment's: the name carries the release namespace, unique per cluster
with the release name, so dev, staging and production never write the same object.
*/}}
{{- define "tollgate.edge.name" -}}
{{- if eq (include "tollgate.edge.namespace" .) .Release.Namespace -}}
{{- printf "%s-edge" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-edge-%s" (include "tollgate.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- define "tollgate.edge.moduleUrl" -}}
{{- if eq .Values.edge.module.source "oci" -}}
{{- default (printf "oci://ghcr.io/tollgate-auth/tollgate-filter:%s" .Chart.AppVersion) .Values.edge.module.oci -}}
{{- else -}}
{{- if not (or .Values.edge.module.url .Values.authserver.serveEdgeModule) -}}
{{- fail "edge.module.source=http needs authserver.serveEdgeModule or an explicit edge.module.url" -}}
{{- end -}}
{{- default (printf "http://%s:%d/edge/module.wasm" (include "tollgate.authserver.host" .) (int .Values.authserver.modulePort)) .Values.edge.module.url -}}
{{- end -}}
{{- end -}}
{{/*
The module's pin. Istio compares it with different bytes per source: for oci:// the digest
of the image manifest, for http(s):// the sha256 of the .wasm file. edge.module.sha256
overrides; else the pin of the module this chart ships (edge.module.pins, make module-pins).
*/}}
{{- define "tollgate.edge.sha256" -}}
{{- $m := .Values.edge.module -}}
{{- $pin := ternary $m.pins.oci $m.pins.file (eq $m.source "oci") -}}
{{- $sha := required (printf "edge.module.sha256 is required when edge.enabled and the chart pins no module for source %s (edge.module.pins)" $m.source) (default $pin $m.sha256) -}}
{{- if not (regexMatch "^[0-9a-f]{64}$" $sha) -}}
{{- fail "edge.module.sha256 must be 64 lower-case hex characters" -}}
{{- end -}}
{{- $sha -}}
{{- end -}}

{{/* Redis endpoints. */}}
{{- define "tollgate.redis.scheme" -}}
{{- if .Values.redis.tls.enabled -}}rediss{{- else -}}redis{{- end -}}
{{- end -}}
{{- define "tollgate.redis.hostPorts" -}}
{{- $ns := .Release.Namespace -}}
{{- $dom := include "tollgate.clusterDomain" . -}}
{{- if eq .Values.redis.mode "sentinel" -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.redis.sentinel.sentinels) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s:26379" (include "tollgate.sentinel.fullname" $) $i (include "tollgate.sentinel.headless" $) $ns $dom) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- else -}}
{{- printf "%s.%s.svc.%s:6379" (include "tollgate.redis.fullname" .) $ns $dom -}}
{{- end -}}
{{- end -}}

{{/*
Store URL with the password as a Kubernetes $(VAR) reference; call with
(dict "ctx" $ "user" "<acl user>" "var" "<env var holding the password>" "db" 0).
*/}}
{{- define "tollgate.redis.url" -}}
{{- $v := .ctx.Values.redis -}}
{{- if eq $v.mode "external" -}}
{{- $raw := ternary $v.external.url $v.external.cacheUrl (eq (int .db) 0) -}}
{{- $u := urlParse (required "redis.external.url and redis.external.cacheUrl are required in external mode" $raw) -}}
{{- printf "%s://%s:$(%s)@%s%s" $u.scheme .user .var $u.host $u.path -}}
{{- else if eq $v.mode "sentinel" -}}
{{- printf "%s+sentinel://%s:$(%s)@%s/%s/%d" (include "tollgate.redis.scheme" .ctx) .user .var (include "tollgate.redis.hostPorts" .ctx) $v.sentinel.masterSet (int .db) -}}
{{- else -}}
{{- printf "%s://%s:$(%s)@%s/%d" (include "tollgate.redis.scheme" .ctx) .user .var (include "tollgate.redis.hostPorts" .ctx) (int .db) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security context (PSS restricted). */}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context (PSS restricted). */}}
{{- define "tollgate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by the auth server and its Jobs. */}}
{{- define "tollgate.authserver.env" -}}
- name: TOLLGATE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.redis.secretName" . }}
      key: authserver-password
- name: TOLLGATE_CACHE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.redis.secretName" . }}
      key: cache-password
- name: TOLLGATE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.authserver.secretName" . }}
      key: admin-token
- name: TOLLGATE_SECRET_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.authserver.secretName" . }}
      key: secret-pepper
# Production mode: no start without the pepper and the key-encryption key that seals the
# signing keys in Redis (docs/operations.md, "Key-encryption key").
- name: TOLLGATE_PRODUCTION
  value: "true"
- name: TOLLGATE_KEY_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.authserver.secretName" . }}
      key: key-encryption-key
- name: TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.authserver.secretName" . }}
      key: key-encryption-keys-previous
      optional: true
- name: TOLLGATE_STORE
  value: {{ include "tollgate.redis.url" (dict "ctx" . "user" .Values.redis.auth.users.authserver "var" "TOLLGATE_REDIS_PASSWORD" "db" 0) | quote }}
- name: TOLLGATE_CACHE_STORE
  value: {{ include "tollgate.redis.url" (dict "ctx" . "user" .Values.redis.auth.users.cache "var" "TOLLGATE_CACHE_REDIS_PASSWORD" "db" 1) | quote }}
- name: TOLLGATE_ISSUER
  value: {{ include "tollgate.issuer" . | quote }}
- name: TOLLGATE_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.authserver.port) | quote }}
- name: TOLLGATE_ADMIN_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.authserver.adminPort) | quote }}
- name: TOLLGATE_SIGNING_ALG
  value: {{ .Values.authserver.signingAlg | quote }}
- name: TOLLGATE_DEFAULT_AUDIENCE
  value: {{ .Values.authserver.defaultAudience | quote }}
- name: TOLLGATE_LOG_FORMAT
  value: {{ .Values.authserver.logFormat | quote }}
- name: TOLLGATE_DPOP_NONCE
  value: {{ .Values.authserver.dpopNonce | quote }}
{{- if and .Values.authserver.certBoundTokens (not .Values.mesh.sidecarInjection) }}
{{- fail "authserver.certBoundTokens needs mesh.sidecarInjection: the client certificate is the one the auth server's sidecar reports (docs/flows.md \"Certificate-bound tokens\")" }}
{{- end }}
- name: TOLLGATE_CERT_BOUND_TOKENS
  value: {{ .Values.authserver.certBoundTokens | quote }}
# Client IP for the per-IP limits: the address the ingress gateway appended to
# X-Forwarded-For, not the sidecar's loopback peer (docs/configuration.md).
- name: TOLLGATE_TRUSTED_PROXY_HOPS
  value: {{ .Values.authserver.trustedProxyHops | quote }}
{{- $wait := .Values.redis.sentinel.waitReplicas }}
{{- if eq (toString $wait) "all" }}{{ $wait = .Values.redis.sentinel.replicas }}{{ end }}
{{- if and (eq .Values.redis.mode "sentinel") (gt (int $wait) 0) }}
{{- if gt (int $wait) (int .Values.redis.sentinel.replicas) }}
{{- fail "redis.sentinel.waitReplicas cannot exceed redis.sentinel.replicas: every durable write would fail" }}
{{- end }}
# Durable writes are acknowledged once this many replicas have them (docs/reliability.md).
- name: TOLLGATE_REDIS_WAIT_REPLICAS
  value: {{ $wait | toString | quote }}
- name: TOLLGATE_REDIS_WAIT_TIMEOUT_MS
  value: {{ .Values.redis.sentinel.waitTimeoutMs | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .Values.authserver.logLevel | quote }}
{{- if .Values.redis.tls.enabled }}
# CA of the Redis certificates, for TLS stacks that read SSL_CERT_FILE.
- name: SSL_CERT_FILE
  value: /etc/tollgate/redis-tls/ca.crt
{{- end }}
{{- with .Values.authserver.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* checkov suppressions shared by pods that take secrets as env vars (the auth server contract). */}}
{{- define "tollgate.checkov.envSecrets" -}}
checkov.io/skip-env-secrets: CKV_K8S_35=The auth server contract (docs/contracts.md) takes the store URL and admin token from environment variables; they come from a Secret by secretKeyRef and are never logged
{{- end -}}

{{/*
Generated secrets. Argo CD renders with `helm template`: `lookup` is empty and a random
value in a template would change on every sync (the admin token, the pepper of every
stored client-secret hash, the Redis passwords). So the chart renders a Secret only from
values given in full, and otherwise the secret generator Job
(templates/jobs/secret-generator.yaml) creates each key once, in the cluster.
*/}}
{{- define "tollgate.authserver.generated" -}}
{{- $a := .Values.authserver -}}
{{- if and (not $a.existingSecret) (or $a.adminToken $a.secretPepper $a.keyEncryptionKey) (not (and $a.adminToken $a.secretPepper $a.keyEncryptionKey)) -}}
{{- fail "authserver.adminToken, authserver.secretPepper and authserver.keyEncryptionKey: set all three (the chart renders the Secret) or none (the secret generator creates them once in the cluster)" -}}
{{- end -}}
{{- if and (not $a.existingSecret) (not $a.adminToken) -}}true{{- end -}}
{{- end -}}
{{- define "tollgate.redis.passwordsGiven" -}}
{{- $a := .Values.redis.auth -}}
{{- $given := list -}}
{{- range $k := list "authserverPassword" "cachePassword" "replicationPassword" "sentinelPassword" "exporterPassword" -}}
{{- if index $a $k }}{{ $given = append $given $k }}{{ end -}}
{{- end -}}
{{- if and (not $a.existingSecret) $given (lt (len $given) 5) -}}
{{- fail "redis.auth: set all five passwords (the chart renders the Secret) or none (the secret generator creates them once in the cluster)" -}}
{{- end -}}
{{- if eq (len $given) 5 }}true{{ end -}}
{{- end -}}
{{- define "tollgate.redis.generated" -}}
{{- if and (not .Values.redis.auth.existingSecret) (not (include "tollgate.redis.passwordsGiven" .)) -}}true{{- end -}}
{{- end -}}

{{/*
The keys the secret generator creates when absent: one "<secret> <key> [format]" line per
key (format: 48 letters and digits by default; `bytes32`: base64 of 32 random bytes). One
more generated key is one more line.
*/}}
{{- define "tollgate.generatedKeys" -}}
{{- $auth := include "tollgate.authserver.fullname" . -}}
{{- $redis := include "tollgate.redis.fullname" . -}}
{{- if include "tollgate.authserver.generated" . }}
{{ $auth }} admin-token
{{ $auth }} secret-pepper
{{ $auth }} key-encryption-key bytes32
{{- end }}
{{- if include "tollgate.redis.generated" . }}
{{ $redis }} authserver-password
{{ $redis }} cache-password
{{ $redis }} replication-password
{{ $redis }} sentinel-password
{{ $redis }} exporter-password
{{- end }}
{{- end -}}

{{/*
Pod annotation that rolls the pods when the secret material the values decide changes:
values-given secrets and Secret names only, never a generated value (which no render
knows), so it is the same on every render of the same values.
*/}}
{{- define "tollgate.secretChecksum" -}}
{{- $a := .Values.authserver -}}
{{- $in := dict "auth" (list $a.existingSecret $a.adminToken $a.secretPepper) "redis" (omit .Values.redis.auth "users") "generated" (include "tollgate.generatedKeys" .) -}}
checksum/secret: {{ toJson $in | sha256sum }}
{{- end -}}

{{/*
checkov CKV_K8S_43 (image digests) is suppressed only while an image of the pod is pinned
by tag alone; call with (dict "images" (list .Values.x.image ...)).
*/}}
{{- define "tollgate.checkov.digest" -}}
{{- $undigested := list -}}
{{- range .images -}}
{{- if not .digest -}}{{- $undigested = append $undigested .repository -}}{{- end -}}
{{- end -}}
{{- if $undigested -}}
checkov.io/skip-digest: CKV_K8S_43=Pinned by immutable version tag ({{ join ", " $undigested }}); set image.digest per environment to pin by digest, which removes this suppression
{{- end -}}
{{- end -}}

{{/*
Pods kept out of the Istio mesh: Redis and Sentinel (replication and Sentinel address each
other by pod hostname; protected by ACL users, optional TLS and NetworkPolicies), and the
Jobs (a sidecar would keep them from completing). The auth server stays in the mesh, so the
gateway -> auth server path is mutual TLS under a STRICT PeerAuthentication.
*/}}
{{- define "tollgate.outsideMesh" -}}
sidecar.istio.io/inject: "false"
{{- end -}}

{{/*
apiVersion of networking.istio.io objects: networking.istio.io/v1 needs Istio >= 1.22.
mesh.networkingApiVersion wins; else v1beta1 when the API list the render was given (helm
install/upgrade, Argo CD) has networking.istio.io without its v1, else v1.
*/}}
{{- define "tollgate.istioNetworkingApi" -}}
{{- if .Values.mesh.networkingApiVersion -}}
{{- .Values.mesh.networkingApiVersion -}}
{{- else if and (.Capabilities.APIVersions.Has "networking.istio.io/v1beta1") (not (.Capabilities.APIVersions.Has "networking.istio.io/v1")) -}}
networking.istio.io/v1beta1
{{- else -}}
networking.istio.io/v1
{{- end -}}
{{- end -}}

{{/*
Pod Security `restricted` (and `baseline`) refuse Istio's istio-init container (root,
NET_ADMIN, NET_RAW; Istio's injection template adds it unless pilot.cni.enabled): with
sidecar injection on, Istio CNI is a prerequisite (docs/install.md).
*/}}
{{- define "tollgate.checkMesh" -}}
{{- $level := .Values.namespace.podSecurityLevel -}}
{{- if and .Values.mesh.sidecarInjection (not .Values.mesh.cni.enabled) (ne $level "privileged") -}}
{{- fail (printf "mesh.sidecarInjection is on but mesh.cni.enabled is false: without Istio CNI, Istio injects istio-init (runAsUser 0, NET_ADMIN, NET_RAW), which Pod Security %q refuses, so no auth server pod would start. Install Istio CNI (istioctl install --set components.cni.enabled=true) and set mesh.cni.enabled=true, or run the auth server without a sidecar (mesh.sidecarInjection=false and no injection label); docs/install.md" $level) -}}
{{- end -}}
{{- end -}}

{{/* Host of the public issuer (expose.host, else the host of authserver.issuer). */}}
{{- define "tollgate.expose.host" -}}
{{- $h := .Values.expose.host -}}
{{- if not $h -}}
{{- $h = (urlParse (include "tollgate.issuer" .)).host | splitList ":" | first -}}
{{- end -}}
{{- $h -}}
{{- end -}}

{{/*
How the filter authenticates to the auth server's edge endpoints: meshIdentity or secret
(edge.authServer.credentials). meshIdentity needs the auth server's sidecar: it is what
verifies the gateway's certificate and writes X-Forwarded-Client-Cert.
*/}}
{{- define "tollgate.edge.credentials" -}}
{{- $c := .Values.edge.authServer.credentials -}}
{{- if not (has $c (list "meshIdentity" "secret")) -}}
{{- fail (printf "edge.authServer.credentials must be meshIdentity or secret, not %q" $c) -}}
{{- end -}}
{{- if and (eq $c "meshIdentity") (not .Values.mesh.sidecarInjection) -}}
{{- fail "edge.authServer.credentials=meshIdentity needs mesh.sidecarInjection: without the auth server's sidecar nothing verifies the gateway's mTLS identity. Set edge.authServer.credentials=secret (docs/install.md \"How the gateways authenticate to the auth server\")" -}}
{{- end -}}
{{- if and (eq $c "secret") (not .Values.edge.authServer.secretRef.name) -}}
{{- fail "edge.authServer.credentials=secret needs edge.authServer.secretRef.name: the Secret holding the gateways' client secret (the init Job seeds the client from it)" -}}
{{- end -}}
{{- if and (eq $c "secret") (not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" .Values.edge.authServer.secretEnv)) -}}
{{- fail "edge.authServer.secretEnv must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)" -}}
{{- end -}}
{{- $c -}}
{{- end -}}
{{/* The gateways' SPIFFE IDs (edge.gatewayPrincipals, or derived), as a JSON list. */}}
{{- define "tollgate.edge.gatewayPrincipals" -}}
{{- $p := .Values.edge.gatewayPrincipals -}}
{{- if not $p -}}
{{- $p = list (printf "spiffe://%s/ns/%s/sa/%s" (required "mesh.trustDomain is required" .Values.mesh.trustDomain) (include "tollgate.edge.namespace" .) (required "edge.gatewayServiceAccount is required" .Values.edge.gatewayServiceAccount)) -}}
{{- end -}}
{{- range $p -}}
{{- if not (regexMatch "^spiffe://[^/\\s,;=\"]+/[^\\s,;=\"\\\\]+$" .) -}}
{{- fail (printf "edge.gatewayPrincipals: %q is not a SPIFFE ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)" .) -}}
{{- end -}}
{{- end -}}
{{- toJson $p -}}
{{- end -}}
{{/* The clients the init Job seeds: seed.clients, plus the gateways' client in secret mode. */}}
{{- define "tollgate.seed.clients" -}}
{{- $clients := .Values.seed.clients -}}
{{- if and .Values.edge.enabled (eq (include "tollgate.edge.credentials" .) "secret") -}}
{{- $gw := dict "client_id" .Values.edge.authServer.clientId "client_name" "Tollgate edge filter (gateways)" "grant_types" (list "client_credentials") "token_endpoint_auth_method" "client_secret_basic" "scope" "tollgate:edge" "secretRef" .Values.edge.authServer.secretRef -}}
{{- $clients = append $clients $gw -}}
{{- end -}}
{{- toJson $clients -}}
{{- end -}}
