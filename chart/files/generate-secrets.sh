#!/bin/sh
# Tollgate secret generator (chart/templates/jobs/secret-generator.yaml).
#
# Input: KEYS, one "<secret> <key> [format]" line per key. For each it creates the key
# when absent, with a random 48-character alphanumeric value, or with format `bytes32`
# the base64 of 32 random bytes (a key-encryption key), and never changes a key that exists. Creation is a server-side apply of that single key with
# force=false under a field manager unique to this run and key: the API server answers
# 409 Conflict when the key is already set (owned by Helm, Argo CD, kubectl or an earlier
# run of this script), so an existing value is never overwritten, with no read-then-write
# race. A missing Secret is created by the same apply.
#
# Environment: KEYS and NAMESPACE (required), LABELS (JSON object of labels for created Secrets),
# KUBERNETES_API (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT),
# SA_DIR (default: the pod's service account mount: token and ca.crt).
# TOLLGATE_GENERATOR_LIB=1 only defines the functions (tests).
set -eu

random_value() {
  # $1 characters from [A-Za-z0-9]: URL-safe, so usable inside redis:// URLs too.
  LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1"
}

new_value() {
  # The value of a key of format $1: `bytes32` -> base64 of 32 random bytes; empty -> 48
  # letters and digits. Anything else is refused.
  case "$1" in
    "") random_value 48 ;;
    bytes32) head -c 32 /dev/urandom | base64 | tr -d '\n' ;;
    *) return 1 ;;
  esac
}

apply_body() {
  # Server-side apply configuration of one key: $1 secret, $2 key, $3 base64 value.
  printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"%s"},"data":{"%s":"%s"}}' "$1" "$2" "$3"
}

label_body() {
  # Labels of the generated Secrets, applied under their own field manager.
  printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"%s","labels":%s}}' "$1" "${LABELS:-"{}"}"
}

valid_pair() {
  # A Secret name (DNS subdomain) and a Secret key ([-._a-zA-Z0-9]+).
  printf '%s' "$1" | grep -Eq '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$' &&
    printf '%s' "$2" | grep -Eq '^[-._a-zA-Z0-9]{1,253}$'
}

outcome() {
  # HTTP status of the per-key apply -> created | kept | error.
  case "$1" in
    200 | 201) echo created ;;
    409) echo kept ;;
    *) echo error ;;
  esac
}

api() {
  # $1 path+query, $2 body: PATCH (apply) -> prints the HTTP status, body in $WORK/resp.
  curl -sS -o "$WORK/resp" -w '%{http_code}' --max-time 20 \
    --cacert "$SA_DIR/ca.crt" -H "Authorization: Bearer $(cat "$SA_DIR/token")" \
    -X PATCH -H 'Content-Type: application/apply-patch+yaml' \
    --data-binary "$2" "$KUBERNETES_API$1"
}

main() {
  : "${NAMESPACE:?NAMESPACE is required}"
  SA_DIR=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
  KUBERNETES_API=${KUBERNETES_API:-https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}}
  WORK=$(mktemp -d)
  run=$(LC_ALL=C tr -dc 'a-z0-9' </dev/urandom | head -c 10)
  secrets=""
  while read -r secret key format; do
    [ -n "$secret" ] || continue
    valid_pair "$secret" "$key" || { echo "invalid secret/key: $secret $key" >&2; exit 2; }
    plain=$(new_value "$format") || { echo "unknown format of $secret/$key: $format" >&2; exit 2; }
    value=$(printf '%s' "$plain" | base64 | tr -d '\n')
    path="/api/v1/namespaces/$NAMESPACE/secrets/$secret?fieldManager=tollgate-generator-$run-$key&force=false"
    code=$(api "$path" "$(apply_body "$secret" "$key" "$value")")
    result=$(outcome "$code")
    echo "$secret/$key: $result"
    if [ "$result" = error ]; then
      echo "HTTP $code: $(head -c 600 "$WORK/resp")" >&2
      exit 1
    fi
    case " $secrets " in *" $secret "*) ;; *) secrets="$secrets $secret" ;; esac
  done <<KEYS
${KEYS:-}
KEYS
  [ -n "$secrets" ] || { echo "no keys to generate" >&2; exit 2; }
  for secret in $secrets; do
    path="/api/v1/namespaces/$NAMESPACE/secrets/$secret?fieldManager=tollgate-generator-labels&force=true"
    code=$(api "$path" "$(label_body "$secret")")
    [ "$(outcome "$code")" != error ] || { echo "labels of $secret: HTTP $code" >&2; exit 1; }
  done
}

if [ "${TOLLGATE_GENERATOR_LIB:-0}" != 1 ]; then
  main
fi
