{{/* Environment of render.sh and the probes; call with the root context. */}}
{{- define "tollgate.redis.renderEnv" -}}
{{- $secret := include "tollgate.redis.secretName" . -}}
{{- $u := .Values.redis.auth.users -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: MODE
  value: {{ .Values.redis.mode | quote }}
- name: TLS
  value: {{ ternary "yes" "no" .Values.redis.tls.enabled | quote }}
- name: NODE0
  value: {{ printf "%s-0.%s.%s.svc.%s" (include "tollgate.redis.fullname" .) (include "tollgate.redis.headless" .) .Release.Namespace (include "tollgate.clusterDomain" .) | quote }}
- name: SENTINELS
  value: {{ include "tollgate.redis.hostPorts" . | replace "," " " | quote }}
- name: MASTER_SET
  value: {{ .Values.redis.sentinel.masterSet | quote }}
- name: QUORUM
  value: {{ .Values.redis.sentinel.quorum | quote }}
- name: DOWN_AFTER_MS
  value: {{ .Values.redis.sentinel.downAfterMilliseconds | quote }}
- name: FAILOVER_TIMEOUT_MS
  value: {{ .Values.redis.sentinel.failoverTimeout | quote }}
- name: PARALLEL_SYNCS
  value: {{ .Values.redis.sentinel.parallelSyncs | quote }}
- name: AUTH_USER
  value: {{ $u.authserver | quote }}
- name: CACHE_USER
  value: {{ $u.cache | quote }}
- name: REPL_USER
  value: {{ $u.replication | quote }}
- name: SENTINEL_USER
  value: {{ $u.sentinel | quote }}
- name: EXPORTER_USER
  value: {{ $u.exporter | quote }}
{{- range $var, $key := dict "AUTH_PASSWORD" "authserver-password" "CACHE_PASSWORD" "cache-password" "REPL_PASSWORD" "replication-password" "SENTINEL_PASSWORD" "sentinel-password" "EXPORTER_PASSWORD" "exporter-password" }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end -}}

{{- define "tollgate.redis.cliTls" -}}
{{- if .Values.redis.tls.enabled -}}--tls --cacert /etc/redis-tls/ca.crt --cert /etc/redis-tls/tls.crt --key /etc/redis-tls/tls.key{{- end -}}
{{- end -}}

{{- define "tollgate.redis.tlsVolume" -}}
{{- if .Values.redis.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "tollgate.redis.tlsSecretName" . }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{- define "tollgate.redis.checkovSkips" -}}
checkov.io/skip-env-secrets: CKV_K8S_35=redis_exporter and the init script read the ACL passwords from a Secret by secretKeyRef (the exporter has no file option for REDIS_PASSWORD); the values are never logged
{{- end -}}
