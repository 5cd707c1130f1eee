{{/*
Pod template of the auth server's one-shot commands; call with
(dict "ctx" $ "args" (list "cleanup") "component" "cleanup" "seed" false).
*/}}
{{- define "tollgate.jobPod" -}}
{{- $ := .ctx -}}
metadata:
  labels:
    {{- include "tollgate.labels" (dict "ctx" $ "component" .component) | nindent 4 }}
  annotations:
    {{- include "tollgate.outsideMesh" $ | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "tollgate.serviceAccountName" $ }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "tollgate.podSecurityContext" $ | nindent 4 }}
  {{- with $.Values.authserver.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.authserver.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "tollgate.image" (dict "image" $.Values.authserver.image "ctx" $) }}
      imagePullPolicy: {{ $.Values.authserver.image.pullPolicy }}
      args: {{ toJson .args }}
      env:
        {{- include "tollgate.authserver.env" $ | nindent 8 }}
        {{- if .seed }}
        {{- range $i, $c := (include "tollgate.seed.clients" $ | fromJsonArray) }}
        {{- if $c.secretRef }}
        # Seed secret of client {{ $c.client_id }} (seed.yaml: client_secret_env).
        - name: TOLLGATE_SEED_CLIENT_SECRET_{{ $i }}
          valueFrom:
            secretKeyRef:
              name: {{ $c.secretRef.name }}
              key: {{ $c.secretRef.key }}
        {{- end }}
        {{- end }}
        {{- end }}
      resources:
        {{- toYaml $.Values.jobResources | nindent 8 }}
      securityContext:
        {{- include "tollgate.containerSecurityContext" $ | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .seed }}
        - name: seed
          mountPath: /etc/tollgate/seed.yaml
          subPath: seed.yaml
          readOnly: true
        {{- end }}
        {{- if $.Values.redis.tls.enabled }}
        - name: redis-tls
          mountPath: /etc/tollgate/redis-tls
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
    {{- if .seed }}
    - name: seed
      configMap:
        name: {{ include "tollgate.authserver.fullname" $ }}
    {{- end }}
    {{- if $.Values.redis.tls.enabled }}
    - name: redis-tls
      secret:
        secretName: {{ include "tollgate.redis.tlsSecretName" $ }}
        items:
          - key: ca.crt
            path: ca.crt
    {{- end }}
{{- end -}}

{{- define "tollgate.checkov.jobSkips" -}}
{{ include "tollgate.checkov.envSecrets" . }}
checkov.io/skip-liveness: CKV_K8S_8=One-shot batch command without a server port; a liveness probe has nothing to probe, activeDeadlineSeconds bounds it instead
checkov.io/skip-readiness: CKV_K8S_9=One-shot batch command without a server port; readiness has no meaning for a Job
{{- end -}}
