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
{{- define "tollgate.clusterDomain" -}}cluster.local{{- end -}}

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
{{- define "tollgate.edge.moduleUrl" -}}
{{- if eq .Values.edge.module.source "oci" -}}
{{- .Values.edge.module.oci -}}
{{- else -}}
{{- default (printf "%s/edge/module.wasm" (include "tollgate.authserver.baseUrl" .)) .Values.edge.module.url -}}
{{- end -}}
{{- end -}}
{{- define "tollgate.edge.sha256" -}}
{{- $sha := required "edge.module.sha256 is required when edge.enabled: the sha256 of the Wasm module (GET /edge/module.wasm.sha256 or the release notes)" .Values.edge.module.sha256 -}}
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

{{/* A password kept across upgrades: the value, else the one in the cluster, else random. */}}
{{- define "tollgate.secretValue" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
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
