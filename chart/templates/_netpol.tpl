{{/* NetworkPolicy building blocks. */}}
{{- define "tollgate.np.component" -}}
podSelector:
  matchLabels:
    app.kubernetes.io/name: {{ include "tollgate.name" .ctx }}
    app.kubernetes.io/instance: {{ .ctx.Release.Name }}
    app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "tollgate.np.components" -}}
podSelector:
  matchLabels:
    app.kubernetes.io/name: {{ include "tollgate.name" .ctx }}
    app.kubernetes.io/instance: {{ .ctx.Release.Name }}
  matchExpressions:
    - key: app.kubernetes.io/component
      operator: In
      values: {{ toJson .components }}
{{- end -}}
{{- define "tollgate.np.dns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dnsPeers | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
{{- define "tollgate.np.redisEgress" -}}
{{- if eq .Values.redis.mode "external" }}
- to:
    {{- range .Values.redis.external.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .Values.redis.external.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- else }}
- to:
    - {{- include "tollgate.np.component" (dict "ctx" . "component" "redis") | nindent 6 }}
  ports:
    - protocol: TCP
      port: 6379
{{- if eq .Values.redis.mode "sentinel" }}
- to:
    - {{- include "tollgate.np.component" (dict "ctx" . "component" "sentinel") | nindent 6 }}
  ports:
    - protocol: TCP
      port: 26379
{{- end }}
{{- end }}
{{- end -}}

{{- define "tollgate.np.istiod" -}}
# Sidecar to istiod: xDS and certificates.
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.istiodNamespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.istiodPodSelector | nindent 8 }}
  ports:
    - protocol: TCP
      port: 15012
{{- end -}}
