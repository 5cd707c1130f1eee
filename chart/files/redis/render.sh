#!/bin/sh
# Renders the run-time configuration of a Redis node or a Sentinel into $OUT_DIR (an
# in-memory emptyDir): the static part comes from the ConfigMap ($BASE_DIR), the ACL users
# and their passwords from the Secret (environment), the role from the Sentinels.
#
# Usage: render.sh redis|sentinel
# Environment:
#   MODE            standalone | sentinel
#   MY_HOST         this pod's stable DNS name (announced to peers)
#   REDIS_PORT      Redis port (6379)          SENTINEL_PORT  Sentinel port (26379)
#   NODE0           host of the first Redis node: the master when no Sentinel knows one
#   NODE0_PORT      its port (default REDIS_PORT)
#   SENTINELS       space-separated host:port of every Sentinel
#   MASTER_SET      Sentinel master set name   QUORUM          Sentinel quorum
#   DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS, PARALLEL_SYNCS
#   DATA_DIR        persistent data directory (/data, the PVC)
#   TLS             "yes" to use TLS ports and replication (certs in $TLS_DIR)
#   *_USER / *_PASSWORD  ACL users: AUTH, CACHE, REPL, SENTINEL, EXPORTER
# Passwords must not contain spaces (they are ACL file tokens); use URL-safe characters.
set -eu

ROLE="${1:?usage: render.sh redis|sentinel}"
BASE_DIR="${BASE_DIR:-/etc/redis-base}"
OUT_DIR="${OUT_DIR:-/etc/redis-run}"
TLS_DIR="${TLS_DIR:-/etc/redis-tls}"
REDIS_PORT="${REDIS_PORT:-6379}"
SENTINEL_PORT="${SENTINEL_PORT:-26379}"
TLS="${TLS:-no}"
umask 077
mkdir -p "$OUT_DIR"

check_password() {
  case "$2" in
    "" ) echo "render.sh: $1 is empty" >&2; exit 1 ;;
    *[[:space:]]* ) echo "render.sh: $1 contains white space" >&2; exit 1 ;;
  esac
}
check_password AUTH_PASSWORD "${AUTH_PASSWORD:-}"
check_password CACHE_PASSWORD "${CACHE_PASSWORD:-}"
check_password REPL_PASSWORD "${REPL_PASSWORD:-}"
check_password SENTINEL_PASSWORD "${SENTINEL_PASSWORD:-}"
check_password EXPORTER_PASSWORD "${EXPORTER_PASSWORD:-}"

cli_tls() {
  if [ "$TLS" = yes ]; then
    printf -- '--tls --cacert %s/ca.crt --cert %s/tls.crt --key %s/tls.key' "$TLS_DIR" "$TLS_DIR" "$TLS_DIR"
  fi
}

# Current master "host port" as the Sentinels see it, or nothing.
ask_sentinels() {
  for s in ${SENTINELS:-}; do
    h="${s%:*}"; p="${s##*:}"
    # shellcheck disable=SC2046
    out=$(REDISCLI_AUTH="$SENTINEL_PASSWORD" timeout 3 redis-cli $(cli_tls) -h "$h" -p "$p" \
      --user "$SENTINEL_USER" sentinel get-master-addr-by-name "$MASTER_SET" 2>/dev/null || true)
    host=$(echo "$out" | sed -n 1p); port=$(echo "$out" | sed -n 2p)
    if [ -n "$host" ] && [ -n "$port" ] && [ "$host" != "ERR" ]; then
      echo "$host $port"; return 0
    fi
  done
  return 0
}

# Redis ACL rules. `default` is off and has no password (protected mode stays meaningful).
# Data users: their key prefixes only, no admin or dangerous commands, one database each.
# The auth user also publishes and subscribes on its own channels (`&auth:*`): revocations
# and client changes are announced on `auth:{revocations}:published` and
# `auth:clients:changed`, from the scripts that write them (a script runs with its
# caller's ACL), and every auth server holds one subscription to both.
DATA_RULES="-@all +@connection +@read +@write +@keyspace +@transaction +@scripting -@dangerous -@admin -@blocking -@pubsub -script|flush -script|kill -function -fcall -fcall_ro"
acl_redis() {
  echo "user default off resetpass resetkeys resetchannels -@all"
  echo "user $AUTH_USER on >$AUTH_PASSWORD resetkeys resetchannels ~auth:* ~auth_* &auth:* $DATA_RULES +publish +subscribe +unsubscribe +info -select +select|0"
  echo "user $CACHE_USER on >$CACHE_PASSWORD resetkeys resetchannels ~cache:* ~cache_* $DATA_RULES +info -select +select|1"
  echo "user $REPL_USER on >$REPL_PASSWORD resetkeys resetchannels -@all +psync +sync +replconf +ping"
  echo "user $SENTINEL_USER on >$SENTINEL_PASSWORD resetkeys resetchannels &__sentinel__:hello -@all +multi +exec +slaveof +replicaof +ping +subscribe +publish +config|rewrite +role +info +client|setname +client|kill +script|kill"
  echo "user $EXPORTER_USER on >$EXPORTER_PASSWORD resetkeys resetchannels -@all +@connection -@admin -@dangerous -select +info +ping +slowlog|get +slowlog|len +latency|latest"
}

tls_conf() {
  port_name="$1"; port="$2"
  if [ "$TLS" = yes ]; then
    echo "port 0"
    echo "tls-port $port"
    echo "tls-cert-file $TLS_DIR/tls.crt"
    echo "tls-key-file $TLS_DIR/tls.key"
    echo "tls-ca-cert-file $TLS_DIR/ca.crt"
    echo "tls-auth-clients optional"
    echo "tls-replication yes"
  else
    echo "$port_name $port"
  fi
}

case "$ROLE" in
redis)
  {
    cat "$BASE_DIR/redis.conf"
    tls_conf port "$REDIS_PORT"
    echo "dir ${DATA_DIR:-/data}"
    echo "aclfile $OUT_DIR/users.acl"
    echo "masteruser $REPL_USER"
    echo "masterauth $REPL_PASSWORD"
    echo "replica-announce-ip $MY_HOST"
    echo "replica-announce-port $REDIS_PORT"
    if [ "${MODE:-standalone}" = sentinel ]; then
      master=$(ask_sentinels)
      if [ -z "$master" ]; then master="$NODE0 ${NODE0_PORT:-$REDIS_PORT}"; fi
      if [ "$master" != "$MY_HOST $REDIS_PORT" ]; then
        echo "replicaof $master"
        echo "render.sh: replica of $master" >&2
      else
        echo "render.sh: master" >&2
      fi
    fi
  } > "$OUT_DIR/redis.conf"
  acl_redis > "$OUT_DIR/users.acl"
  ;;
sentinel)
  master=$(ask_sentinels)
  if [ -z "$master" ]; then master="$NODE0 ${NODE0_PORT:-$REDIS_PORT}"; fi
  {
    tls_conf port "$SENTINEL_PORT"
    echo "dir $OUT_DIR"
    # Hostnames must be on before `sentinel monitor` names the master by hostname.
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $MY_HOST"
    echo "sentinel announce-port $SENTINEL_PORT"
    echo "user default off resetpass resetkeys resetchannels -@all"
    echo "user $SENTINEL_USER on >$SENTINEL_PASSWORD allchannels +@all"
    # Clients (auth server, cache cleanup, exporter) only discover the master.
    for u in "$AUTH_USER:$AUTH_PASSWORD" "$CACHE_USER:$CACHE_PASSWORD" "$EXPORTER_USER:$EXPORTER_PASSWORD"; do
      echo "user ${u%%:*} on >${u#*:} resetchannels -@all +@connection -@admin -@dangerous +sentinel|get-master-addr-by-name +sentinel|sentinels +sentinel|replicas +sentinel|master +sentinel|masters"
    done
    echo "sentinel sentinel-user $SENTINEL_USER"
    echo "sentinel sentinel-pass $SENTINEL_PASSWORD"
    echo "sentinel monitor $MASTER_SET $master $QUORUM"
    echo "sentinel auth-user $MASTER_SET $SENTINEL_USER"
    echo "sentinel auth-pass $MASTER_SET $SENTINEL_PASSWORD"
    echo "sentinel down-after-milliseconds $MASTER_SET ${DOWN_AFTER_MS:-5000}"
    echo "sentinel failover-timeout $MASTER_SET ${FAILOVER_TIMEOUT_MS:-60000}"
    echo "sentinel parallel-syncs $MASTER_SET ${PARALLEL_SYNCS:-1}"
  } > "$OUT_DIR/sentinel.conf"
  echo "render.sh: sentinel monitoring $master" >&2
  ;;
*)
  echo "render.sh: unknown role $ROLE" >&2; exit 2 ;;
esac
