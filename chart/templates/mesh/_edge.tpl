{{/*
The filter's JSON configuration (docs/filter.md, plugin/core/src/config.rs): the Istio
`pluginConfig` / EnvoyFilter `configuration`. Built as a dict so `toJson` escapes it.
*/}}
{{- define "tollgate.edge.configDict" -}}
{{- $e := .Values.edge -}}
{{- $jwks := dict "cluster" (include "tollgate.edge.cluster" .) "path" $e.jwks.path "authority" (printf "%s:%d" (include "tollgate.authserver.host" .) (int .Values.authserver.service.port)) "refresh_interval_s" (int $e.jwks.refreshIntervalSeconds) "timeout_ms" (int $e.jwks.timeoutMs) -}}
{{- $issuer := dict "issuer" (default (include "tollgate.issuer" .) $e.issuer) "audiences" $e.audiences "jwks" $jwks -}}
{{- with $e.algorithms }}{{- $_ := set $issuer "algorithms" . -}}{{- end -}}
{{- with $e.typ }}{{- $_ := set $issuer "typ" . -}}{{- end -}}
{{- $rules := $e.rules -}}
{{- if .Values.expose.enabled -}}
{{- /* The issuer host's requests carry no bearer token: the auth server authenticates them. */ -}}
{{- $rules = prepend $rules (dict "name" "tollgate-issuer" "hosts" (list (include "tollgate.expose.host" .)) "allow_anonymous" true) -}}
{{- end -}}
{{- $cfg := dict "issuers" (list $issuer) "clock_skew_s" (int $e.clockSkewSeconds) "rules" $rules -}}
{{- /* The auth server's edge endpoints: by mesh identity (no credentials) or with a client
whose secret the VM reads from the gateway's environment. Never a secret in the CR. */ -}}
{{- $as := dict "cluster" (include "tollgate.edge.cluster" .) "authority" (printf "%s:%d" (include "tollgate.authserver.host" .) (int .Values.authserver.service.port)) "timeout_ms" (int $e.authServer.timeoutMs) -}}
{{- if eq (include "tollgate.edge.credentials" .) "secret" -}}
{{- $_ := set $as "client_id" $e.authServer.clientId -}}
{{- $_ := set $as "client_secret_env" $e.authServer.secretEnv -}}
{{- end -}}
{{- $_ := set $cfg "auth_server" $as -}}
{{- if $e.revocation.enabled -}}
{{- $_ := set $cfg "revocation" (dict "poll_interval_ms" (int $e.revocation.pollIntervalMs)) -}}
{{- end -}}
{{- with $e.defaultRule }}{{- $_ := set $cfg "default_rule" . -}}{{- end -}}
{{- with $e.headers }}{{- $_ := set $cfg "headers" . -}}{{- end -}}
{{- with $e.dpop }}{{- $_ := set $cfg "dpop" . -}}{{- end -}}
{{- $cfg = merge (deepCopy $e.extraConfig) $cfg -}}
{{- toJson $cfg -}}
{{- end -}}
