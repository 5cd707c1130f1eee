//! Configuration: command-line flags, each backed by a `TOLLGATE_*` environment variable
//! (12-factor), over an optional YAML file (`--config` / `TOLLGATE_CONFIG_FILE`) whose keys
//! are the variable names without the prefix, in lower case (`listen`, `access_token_ttl`).
//! Precedence: flag > environment > file > default. docs/configuration.md lists them all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use crate::crypto::{parse_kek, KekError, KeyEncryption};
use crate::keys::SigningAlg;
use crate::store::StoreUrl;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {detail}")]
    File { path: String, detail: String },
    #[error("invalid value for {name}: {detail}")]
    Invalid { name: &'static str, detail: String },
}

/// Settings shared by every subcommand. Every flag can also be given by its environment
/// variable or in the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct Settings {
    /// YAML file with settings (keys: variable names without `TOLLGATE_`, lower case).
    #[arg(long = "config", env = "TOLLGATE_CONFIG_FILE", global = true)]
    pub config_file: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:9080].
    #[arg(long, env = "TOLLGATE_LISTEN", global = true)]
    pub listen: Option<String>,

    /// Address of the admin listener: the admin API (`/admin/*`), client registration
    /// with the admin token and `/metrics`; never expose it through a gateway
    /// [default: 127.0.0.1:9081].
    #[arg(long, env = "TOLLGATE_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,

    /// Most connections served at once on each listener; a connection beyond them is
    /// answered 503 `temporarily_unavailable` and closed [default: 1024].
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Issuer identifier (`iss`), the server's public base URL [default: http://<listen>].
    #[arg(long, env = "TOLLGATE_ISSUER", global = true)]
    pub issuer: Option<String>,

    /// Auth data store: `memory`, `redis://…/0`, `rediss://…`,
    /// `redis+sentinel://[user:pass@]h1:p1,h2:p2/<master>[/db]`, `redis+cluster://h1:p1,…`
    /// [default: memory].
    #[arg(long, env = "TOLLGATE_STORE", global = true)]
    pub store: Option<String>,

    /// Service cache store (DB 1) for `cache-cleanup` [default: TOLLGATE_STORE with db 1].
    #[arg(long, env = "TOLLGATE_CACHE_STORE", global = true)]
    pub cache_store: Option<String>,

    /// Bearer token that protects client registration and the admin API. Without it those
    /// endpoints answer 401.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Key for the keyed hashes of client secrets. Set the same value on every replica;
    /// without it a random one is created once and kept in the store.
    #[arg(
        long,
        env = "TOLLGATE_SECRET_PEPPER",
        global = true,
        hide_env_values = true
    )]
    pub secret_pepper: Option<String>,

    /// Production mode: refuse to start without TOLLGATE_SECRET_PEPPER and a key-encryption
    /// key (no secret generated into the store) [default: false].
    #[arg(
        long,
        env = "TOLLGATE_PRODUCTION",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub production: Option<bool>,

    /// Key-encryption key (base64 of 32 random bytes) that seals the private signing keys
    /// in the store (AES-256-GCM).
    #[arg(
        long,
        env = "TOLLGATE_KEY_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true
    )]
    pub key_encryption_key: Option<String>,

    /// File with the key-encryption key on its first line; further lines are previous keys
    /// (as TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS).
    #[arg(long, env = "TOLLGATE_KEY_ENCRYPTION_KEY_FILE", global = true)]
    pub key_encryption_key_file: Option<PathBuf>,

    /// Previous key-encryption keys, comma-separated: they only decrypt, during a rotation
    /// (`authserver keys rewrap` re-encrypts under the current one).
    #[arg(
        long,
        env = "TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS",
        global = true,
        hide_env_values = true
    )]
    pub key_encryption_keys_previous: Option<String>,

    /// Default `aud` of access tokens for clients that register no audience [default: tollgate].
    #[arg(long, env = "TOLLGATE_DEFAULT_AUDIENCE", global = true)]
    pub default_audience: Option<String>,

    /// Algorithm of new signing keys: ES256, RS256 or EdDSA [default: ES256].
    #[arg(long, env = "TOLLGATE_SIGNING_ALG", global = true)]
    pub signing_alg: Option<String>,

    /// Seconds between publishing a rotated key and signing with it [default: 300].
    #[arg(long, env = "TOLLGATE_KEY_ACTIVATION_DELAY", global = true)]
    pub key_activation_delay: Option<u64>,

    /// Rotate signing keys automatically every N seconds; 0 = only by `keys rotate` [default: 0].
    #[arg(long, env = "TOLLGATE_KEY_ROTATION_INTERVAL", global = true)]
    pub key_rotation_interval: Option<u64>,

    /// Authorization code lifetime, seconds [default: 600].
    #[arg(long, env = "TOLLGATE_AUTH_CODE_TTL", global = true)]
    pub auth_code_ttl: Option<u64>,

    /// Access token lifetime, seconds [default: 900].
    #[arg(long, env = "TOLLGATE_ACCESS_TOKEN_TTL", global = true)]
    pub access_token_ttl: Option<u64>,

    /// Refresh token lifetime, seconds [default: 604800].
    #[arg(long, env = "TOLLGATE_REFRESH_TOKEN_TTL", global = true)]
    pub refresh_token_ttl: Option<u64>,

    /// Login session lifetime, seconds [default: 3600].
    #[arg(long, env = "TOLLGATE_SESSION_TTL", global = true)]
    pub session_ttl: Option<u64>,

    /// Requests per minute per client IP on endpoints that identify no client; 0 = off
    /// [default: 100].
    #[arg(long, env = "TOLLGATE_RATE_LIMIT_DEFAULT", global = true)]
    pub rate_limit_default: Option<u64>,

    /// Requests per minute per authenticated client; 0 = off [default: 1000].
    #[arg(long, env = "TOLLGATE_RATE_LIMIT_PER_CLIENT", global = true)]
    pub rate_limit_per_client: Option<u64>,

    /// Failed authentications per minute per client IP before it is refused; 0 = off
    /// [default: 50].
    #[arg(long, env = "TOLLGATE_RATE_LIMIT_PER_IP", global = true)]
    pub rate_limit_per_ip: Option<u64>,

    /// Trust `X-Forwarded-For` from this many proxy hops for the client IP [default: 0].
    #[arg(long, env = "TOLLGATE_TRUSTED_PROXY_HOPS", global = true)]
    pub trusted_proxy_hops: Option<usize>,

    /// Largest accepted request body, bytes [default: 65536].
    #[arg(long, env = "TOLLGATE_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,

    /// Time limit for one request, milliseconds [default: 10000].
    #[arg(long, env = "TOLLGATE_REQUEST_TIMEOUT_MS", global = true)]
    pub request_timeout_ms: Option<u64>,

    /// Time a client has to send a complete request head (request line and headers),
    /// counted from when the server starts waiting for it, so also how long an idle
    /// keep-alive connection stays open, milliseconds [default: 10000].
    #[arg(long, env = "TOLLGATE_HEADER_TIMEOUT_MS", global = true)]
    pub header_timeout_ms: Option<u64>,

    /// Time a client may leave response bytes unread (a client that stops reading) before
    /// the connection is closed, milliseconds [default: 10000].
    #[arg(long, env = "TOLLGATE_SEND_TIMEOUT_MS", global = true)]
    pub send_timeout_ms: Option<u64>,

    /// Largest accepted request head (request line and headers), bytes; larger is 431
    /// [default: 32768].
    #[arg(long, env = "TOLLGATE_MAX_HEADER_BYTES", global = true)]
    pub max_header_bytes: Option<usize>,

    /// Most header fields accepted in one request; more is 431 [default: 100].
    #[arg(long, env = "TOLLGATE_MAX_HEADERS", global = true)]
    pub max_headers: Option<usize>,

    /// Time limit for one store command, milliseconds [default: 2000].
    #[arg(long, env = "TOLLGATE_STORE_TIMEOUT_MS", global = true)]
    pub store_timeout_ms: Option<u64>,

    /// Revocation feed length kept for edge filters; readers further behind resync
    /// [default: 100000].
    #[arg(long, env = "TOLLGATE_REVOCATION_FEED_MAX", global = true)]
    pub revocation_feed_max: Option<usize>,

    /// How long an idempotent store operation is retried (with backoff) across a lost
    /// connection or a Redis failover before the request fails with 503, milliseconds;
    /// 0 = no retry [default: 3000].
    #[arg(long, env = "TOLLGATE_STORE_RETRY_MS", global = true)]
    pub store_retry_ms: Option<u64>,

    /// How long a Redis client record is served from the process's client cache at most,
    /// seconds (0-300); every change of a client evicts it from every replica at once
    /// through Redis pub/sub, and the cache is used only while that subscription is up.
    /// This is the bound for a change written into Redis by hand; 0 = no cache (every
    /// client authentication reads Redis) [default: 10].
    #[arg(long, env = "TOLLGATE_CLIENT_CACHE_SECONDS", global = true)]
    pub client_cache_seconds: Option<usize>,

    /// Replicas that must have a durable write (refresh tokens, revocations, code and
    /// refresh-token consumption, clients, users, keys) before it is acknowledged (Redis
    /// `WAIT`); 0 = off [default: 0].
    #[arg(long, env = "TOLLGATE_REDIS_WAIT_REPLICAS", global = true)]
    pub redis_wait_replicas: Option<u32>,

    /// How long `WAIT` waits for those replicas, milliseconds; below
    /// TOLLGATE_STORE_TIMEOUT_MS [default: 500].
    #[arg(long, env = "TOLLGATE_REDIS_WAIT_TIMEOUT_MS", global = true)]
    pub redis_wait_timeout_ms: Option<u64>,

    /// Memory for password checks running at once, MiB: each Argon2id check takes 19 MiB,
    /// so this allows one check per 20 MiB (at least one); more sign-ins wait briefly, then
    /// get 503 [default: a quarter of the container's memory limit, 64 without one].
    #[arg(long, env = "TOLLGATE_PASSWORD_MEMORY_MIB", global = true)]
    pub password_memory_mib: Option<u64>,

    /// Path of the built Wasm filter to serve at /edge/module.wasm (optional).
    #[arg(long, env = "TOLLGATE_EDGE_MODULE", global = true)]
    pub edge_module: Option<PathBuf>,

    /// A second address serving only the module (`/edge/module.wasm` and its sha256), for
    /// istio-agent's plain-HTTP download from outside the mesh (docs/filter.md); needs
    /// TOLLGATE_EDGE_MODULE [default: off].
    #[arg(long, env = "TOLLGATE_MODULE_LISTEN", global = true)]
    pub module_listen: Option<String>,

    /// A TLS listener serving the public endpoints (host:port), with TOLLGATE_TLS_CERT and
    /// TOLLGATE_TLS_KEY (PEM). It asks for a client certificate without requiring one; a
    /// presented one (with proof of its key) binds the access tokens of clients registered
    /// with `tls_client_certificate_bound_access_tokens` (RFC 8705 §3) [default: off].
    #[arg(long, env = "TOLLGATE_TLS_LISTEN", global = true)]
    pub tls_listen: Option<String>,

    /// PEM certificate chain of the TLS listener.
    #[arg(long, env = "TOLLGATE_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the TLS listener.
    #[arg(long, env = "TOLLGATE_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// PEM file of the CA certificates whose client certificates authenticate
    /// `tls_client_auth` clients on the TLS listener (RFC 8705 §2.1); needs
    /// TOLLGATE_TLS_LISTEN [default: off, the method is not offered].
    #[arg(long, env = "TOLLGATE_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,

    /// Mesh identities (SPIFFE IDs, comma-separated) admitted to `/edge/revocations` and
    /// `/edge/ratelimit/lease` by the last element of `X-Forwarded-Client-Cert`, trusted only
    /// from Istio's inbound sidecar (TCP peer 127.0.0.6 or ::6) [default: none, XFCC ignored].
    #[arg(long, env = "TOLLGATE_EDGE_TRUSTED_PRINCIPALS", global = true)]
    pub edge_trusted_principals: Option<String>,

    /// Longest a long poll of `/edge/revocations` (`wait=`) is held before it is answered
    /// empty, seconds; a larger `wait` is cut to this; 0 turns long polls off (`wait`
    /// is answered 404 and filters fall back to polling) [default: 30].
    #[arg(long, env = "TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S", global = true)]
    pub edge_long_poll_max_wait_s: Option<u64>,

    /// Long polls of `/edge/revocations` held at once by this process; past this a long
    /// poll is answered 503 `temporarily_unavailable` [default: 10000].
    #[arg(long, env = "TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS", global = true)]
    pub edge_long_poll_max_waiters: Option<usize>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Require a server nonce in DPoP proofs at the token endpoint (RFC 9449 §8): a proof
    /// without a current one is answered `use_dpop_nonce` with the nonce in `DPoP-Nonce`
    /// [default: false].
    #[arg(
        long,
        env = "TOLLGATE_DPOP_NONCE",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dpop_nonce: Option<bool>,

    /// Certificate-bound access tokens (RFC 8705 §3) for clients registered with
    /// `tls_client_certificate_bound_access_tokens`: the certificate is the caller's mesh
    /// certificate, from the `Hash` of the last `X-Forwarded-Client-Cert` element written by
    /// Istio's inbound sidecar (TCP peer 127.0.0.6 or ::6, no X-Forwarded-For) [default: false].
    #[arg(
        long,
        env = "TOLLGATE_CERT_BOUND_TOKENS",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub cert_bound_tokens: Option<bool>,

    /// Oldest accepted DPoP proof: seconds its `iat` may lie in the past [default: 300].
    #[arg(long, env = "TOLLGATE_DPOP_PROOF_MAX_AGE", global = true)]
    pub dpop_proof_max_age: Option<u64>,

    /// Seconds a DPoP proof's `iat` may lie in the future (client clock ahead) [default: 60].
    #[arg(long, env = "TOLLGATE_DPOP_CLOCK_SKEW", global = true)]
    pub dpop_clock_skew: Option<u64>,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_connections: usize,
    pub issuer: String,
    #[serde(serialize_with = "ser_store")]
    pub store: StoreUrl,
    #[serde(serialize_with = "ser_store")]
    pub cache_store: StoreUrl,
    #[serde(skip)]
    pub admin_token: Option<String>,
    #[serde(skip)]
    pub secret_pepper: Option<String>,
    pub production: bool,
    /// The KEKs (shown by their ids only).
    #[serde(serialize_with = "ser_kek")]
    pub key_encryption: Arc<KeyEncryption>,
    pub default_audience: String,
    pub signing_alg: String,
    pub key_activation_delay: u64,
    pub key_rotation_interval: u64,
    pub auth_code_ttl: u64,
    pub access_token_ttl: u64,
    pub refresh_token_ttl: u64,
    pub session_ttl: u64,
    pub rate_limit_default: u64,
    pub rate_limit_per_client: u64,
    pub rate_limit_per_ip: u64,
    pub trusted_proxy_hops: usize,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub send_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub store_timeout_ms: u64,
    pub store_retry_ms: u64,
    pub client_cache_seconds: usize,
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout_ms: u64,
    pub revocation_feed_max: usize,
    /// `None`: derived from the container's memory limit (see `users::password_slots`).
    pub password_memory_mib: Option<u64>,
    pub edge_module: Option<PathBuf>,
    pub module_listen: Option<SocketAddr>,
    /// The TLS listener of the public endpoints, with its certificate chain and key files.
    pub tls: Option<TlsListen>,
    /// Empty: `X-Forwarded-Client-Cert` is never read.
    pub edge_trusted_principals: Vec<String>,
    /// Long polls of the revocation feed: the longest hold (0: off), how many at once.
    pub edge_long_poll_max_wait_s: u64,
    pub edge_long_poll_max_waiters: usize,
    pub log_format: String,
    /// DPoP (RFC 9449): server nonces required; the `iat` window of proofs.
    pub dpop_nonce: bool,
    pub dpop_proof_max_age: u64,
    /// RFC 8705: bind tokens to the caller's certificate from the sidecar's XFCC.
    pub cert_bound_tokens: bool,
    pub dpop_clock_skew: u64,
}

/// `TOLLGATE_TLS_LISTEN` with its certificate chain and key (PEM files), and the CAs of
/// `tls_client_auth` clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsListen {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl Config {
    /// Is `tls_client_auth` offered: a TLS listener with `TOLLGATE_TLS_CLIENT_CA`?
    pub fn offers_tls_client_auth(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

/// `TOLLGATE_EDGE_TRUSTED_PRINCIPALS`: SPIFFE IDs, comma-separated, each
/// `spiffe://<trust domain>/<path>` without whitespace or XFCC separators.
fn parse_principals(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = p
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(td, path)| !td.is_empty() && !path.is_empty())
            && p.bytes()
                .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b',' | b';' | b'=' | b'\\'));
        if !ok {
            return Err(format!(
                "{p:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>)"
            ));
        }
        if !out.iter().any(|o| o == p) {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

fn ser_store<S: serde::Serializer>(u: &StoreUrl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&u.redacted())
}

fn ser_kek<S: serde::Serializer>(k: &Arc<KeyEncryption>, s: S) -> Result<S::Ok, S::Error> {
    k.as_ref().serialize(s)
}

fn kek_err(e: KekError) -> ConfigError {
    match e {
        KekError::Invalid { name, detail } => ConfigError::Invalid { name, detail },
        other => ConfigError::Invalid {
            name: "TOLLGATE_KEY_ENCRYPTION_KEY",
            detail: other.to_string(),
        },
    }
}

/// The KEKs from TOLLGATE_KEY_ENCRYPTION_KEY or the first line of
/// TOLLGATE_KEY_ENCRYPTION_KEY_FILE (current), the file's further lines and
/// TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS (previous). Errors never contain key material.
fn key_encryption(
    key: Option<String>,
    file: Option<PathBuf>,
    previous: Option<String>,
) -> Result<KeyEncryption, ConfigError> {
    const KEY: &str = "TOLLGATE_KEY_ENCRYPTION_KEY";
    const FILE: &str = "TOLLGATE_KEY_ENCRYPTION_KEY_FILE";
    const PREV: &str = "TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS";
    let mut lines: Vec<zeroize::Zeroizing<String>> = Vec::new();
    if let Some(path) = &file {
        if key.is_some() {
            return Err(ConfigError::Invalid {
                name: FILE,
                detail: format!("set {KEY} or {FILE}, not both"),
            });
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            ConfigError::File {
                path: path.display().to_string(),
                detail: e.to_string(),
            }
        })?);
        lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| zeroize::Zeroizing::new(l.to_string()))
            .collect();
        if lines.is_empty() {
            return Err(ConfigError::Invalid {
                name: FILE,
                detail: format!("{} holds no key", path.display()),
            });
        }
    }
    let key = zeroize::Zeroizing::new(key);
    let current = match (key.as_deref(), lines.first()) {
        (Some(k), _) => Some(parse_kek(KEY, k).map_err(kek_err)?),
        (None, Some(l)) => Some(parse_kek(FILE, l).map_err(kek_err)?),
        (None, None) => None,
    };
    let mut prev = Vec::new();
    for l in lines.iter().skip(1) {
        prev.push(parse_kek(FILE, l).map_err(kek_err)?);
    }
    let previous = zeroize::Zeroizing::new(previous);
    for p in previous
        .as_deref()
        .unwrap_or_default()
        .split([',', ' ', '\n'])
        .filter(|p| !p.trim().is_empty())
    {
        prev.push(parse_kek(PREV, p).map_err(kek_err)?);
    }
    match current {
        Some(c) => KeyEncryption::new(&c, &prev).map_err(kek_err),
        None if prev.is_empty() => Ok(KeyEncryption::none()),
        None => Err(ConfigError::Invalid {
            name: PREV,
            detail: format!("previous keys need a current one ({KEY})"),
        }),
    }
}

/// `true`/`false` (also 1/0, yes/no, on/off) from the config file.
fn boolish(name: &'static str, v: Option<String>) -> Result<Option<bool>, ConfigError> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes" | "on") => Ok(Some(true)),
        Some("false" | "0" | "no" | "off" | "") => Ok(Some(false)),
        Some(other) => Err(ConfigError::Invalid {
            name,
            detail: format!("{other:?} is not true or false"),
        }),
    }
}

fn load_file(path: &PathBuf) -> Result<BTreeMap<String, serde_yaml::Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let v: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(v)
}

const KNOWN_FILE_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "max_connections",
    "issuer",
    "store",
    "cache_store",
    "admin_token",
    "secret_pepper",
    "production",
    "key_encryption_key",
    "key_encryption_key_file",
    "key_encryption_keys_previous",
    "default_audience",
    "signing_alg",
    "key_activation_delay",
    "key_rotation_interval",
    "auth_code_ttl",
    "access_token_ttl",
    "refresh_token_ttl",
    "session_ttl",
    "rate_limit_default",
    "rate_limit_per_client",
    "rate_limit_per_ip",
    "trusted_proxy_hops",
    "max_body_bytes",
    "request_timeout_ms",
    "header_timeout_ms",
    "send_timeout_ms",
    "max_header_bytes",
    "max_headers",
    "store_timeout_ms",
    "store_retry_ms",
    "client_cache_seconds",
    "redis_wait_replicas",
    "redis_wait_timeout_ms",
    "revocation_feed_max",
    "password_memory_mib",
    "edge_module",
    "module_listen",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "edge_trusted_principals",
    "edge_long_poll_max_wait_s",
    "edge_long_poll_max_waiters",
    "log_format",
    "dpop_nonce",
    "cert_bound_tokens",
    "dpop_proof_max_age",
    "dpop_clock_skew",
];

struct FileValues(BTreeMap<String, serde_yaml::Value>);

impl FileValues {
    fn str(&self, k: &str) -> Option<String> {
        self.0.get(k).and_then(|v| match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }
}

fn num<T: std::str::FromStr>(
    name: &'static str,
    flag: Option<T>,
    file: &FileValues,
    key: &str,
    default: T,
) -> Result<T, ConfigError> {
    if let Some(v) = flag {
        return Ok(v);
    }
    match file.str(key) {
        Some(s) => s.parse().map_err(|_| ConfigError::Invalid {
            name,
            detail: format!("{s:?} is not a number"),
        }),
        None => Ok(default),
    }
}

/// A size or count within `min..=max`.
fn in_range(name: &'static str, v: usize, min: usize, max: usize) -> Result<usize, ConfigError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            name,
            detail: format!("{v} is not in {min}..={max}"),
        })
    }
}

/// `TOLLGATE_STORE` with db 1 for the service cache.
fn derive_cache_store(store: &StoreUrl) -> StoreUrl {
    match store {
        StoreUrl::Memory => StoreUrl::Memory,
        StoreUrl::Redis { url } => match url::Url::parse(url) {
            Ok(mut u) => {
                u.set_path("/1");
                StoreUrl::Redis { url: u.to_string() }
            }
            Err(_) => store.clone(),
        },
        StoreUrl::Sentinel {
            sentinels,
            master,
            username,
            password,
            tls,
            ..
        } => StoreUrl::Sentinel {
            sentinels: sentinels.clone(),
            master: master.clone(),
            db: 1,
            username: username.clone(),
            password: password.clone(),
            tls: *tls,
        },
        // Redis Cluster has only db 0: the cache lives beside the auth keys (`cache:` prefix).
        StoreUrl::Cluster { .. } => store.clone(),
    }
}

fn positive_ms(name: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            name,
            detail: "must be greater than 0".into(),
        });
    }
    Ok(v)
}

/// `WAIT` needs a Redis store, a timeout (`WAIT n 0` would block forever) and a timeout
/// below the command timeout (else the client gives up before `WAIT` answers).
fn check_wait(
    store: &StoreUrl,
    replicas: u32,
    timeout_ms: u64,
    store_timeout_ms: u64,
) -> Result<(), ConfigError> {
    if replicas == 0 {
        return Ok(());
    }
    if *store == StoreUrl::Memory {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_REDIS_WAIT_REPLICAS",
            detail: "needs a Redis store (TOLLGATE_STORE is memory)".into(),
        });
    }
    if timeout_ms == 0 || timeout_ms >= store_timeout_ms {
        return Err(ConfigError::Invalid {
            name: "TOLLGATE_REDIS_WAIT_TIMEOUT_MS",
            detail: format!(
                "{timeout_ms}: must be greater than 0 (WAIT 0 blocks forever) and below \
                 TOLLGATE_STORE_TIMEOUT_MS ({store_timeout_ms})"
            ),
        });
    }
    Ok(())
}

impl Settings {
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config_file {
            Some(p) => FileValues(load_file(p)?),
            None => FileValues(BTreeMap::new()),
        };
        if let Some(unknown) = file
            .0
            .keys()
            .find(|k| !KNOWN_FILE_KEYS.contains(&k.as_str()))
        {
            return Err(ConfigError::Invalid {
                name: "config file",
                detail: format!("unknown key {unknown:?}"),
            });
        }
        let pick = |flag: &Option<String>, key: &str| flag.clone().or_else(|| file.str(key));

        let listen_s = pick(&self.listen, "listen").unwrap_or_else(|| "127.0.0.1:9080".into());
        let listen: SocketAddr = listen_s.parse().map_err(|_| ConfigError::Invalid {
            name: "TOLLGATE_LISTEN",
            detail: format!("{listen_s:?} is not host:port"),
        })?;
        let admin_listen_s =
            pick(&self.admin_listen, "admin_listen").unwrap_or_else(|| "127.0.0.1:9081".into());
        let admin_listen: SocketAddr =
            admin_listen_s.parse().map_err(|_| ConfigError::Invalid {
                name: "TOLLGATE_ADMIN_LISTEN",
                detail: format!("{admin_listen_s:?} is not host:port"),
            })?;
        if admin_listen == listen && listen.port() != 0 {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_ADMIN_LISTEN",
                detail: format!(
                    "{admin_listen} is TOLLGATE_LISTEN too: the admin API needs its own listener"
                ),
            });
        }
        let issuer = pick(&self.issuer, "issuer")
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        let issuer_url = url::Url::parse(&issuer).map_err(|e| ConfigError::Invalid {
            name: "TOLLGATE_ISSUER",
            detail: e.to_string(),
        })?;
        if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_ISSUER",
                detail: "must not have a query or fragment (RFC 8414)".into(),
            });
        }
        let store_s = pick(&self.store, "store").unwrap_or_else(|| "memory".into());
        let store = StoreUrl::parse(&store_s).map_err(|e| ConfigError::Invalid {
            name: "TOLLGATE_STORE",
            detail: e.to_string(),
        })?;
        let cache_store = match pick(&self.cache_store, "cache_store") {
            Some(s) => StoreUrl::parse(&s).map_err(|e| ConfigError::Invalid {
                name: "TOLLGATE_CACHE_STORE",
                detail: e.to_string(),
            })?,
            None => derive_cache_store(&store),
        };
        let signing_alg = pick(&self.signing_alg, "signing_alg").unwrap_or_else(|| "ES256".into());
        SigningAlg::parse(&signing_alg).map_err(|e| ConfigError::Invalid {
            name: "TOLLGATE_SIGNING_ALG",
            detail: e.to_string(),
        })?;
        let log_format = pick(&self.log_format, "log_format").unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_LOG_FORMAT",
                detail: format!("{log_format:?}: text or json"),
            });
        }
        let admin_token = pick(&self.admin_token, "admin_token").filter(|t| !t.is_empty());
        if let Some(t) = &admin_token {
            if t.len() < 16 {
                return Err(ConfigError::Invalid {
                    name: "TOLLGATE_ADMIN_TOKEN",
                    detail: "must be at least 16 characters".into(),
                });
            }
        }
        let store_timeout_ms = positive_ms(
            "TOLLGATE_STORE_TIMEOUT_MS",
            num(
                "TOLLGATE_STORE_TIMEOUT_MS",
                self.store_timeout_ms,
                &file,
                "store_timeout_ms",
                2000,
            )?,
        )?;
        let redis_wait_replicas = num(
            "TOLLGATE_REDIS_WAIT_REPLICAS",
            self.redis_wait_replicas,
            &file,
            "redis_wait_replicas",
            0,
        )?;
        let redis_wait_timeout_ms = num(
            "TOLLGATE_REDIS_WAIT_TIMEOUT_MS",
            self.redis_wait_timeout_ms,
            &file,
            "redis_wait_timeout_ms",
            500,
        )?;
        check_wait(
            &store,
            redis_wait_replicas,
            redis_wait_timeout_ms,
            store_timeout_ms,
        )?;
        let positive = |name: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    name,
                    detail: "must be greater than 0".into(),
                })
            } else {
                Ok(v)
            }
        };
        let dpop_nonce = match self.dpop_nonce {
            Some(p) => p,
            None => boolish("TOLLGATE_DPOP_NONCE", file.str("dpop_nonce"))?.unwrap_or(false),
        };
        let cert_bound_tokens = match self.cert_bound_tokens {
            Some(p) => p,
            None => boolish("TOLLGATE_CERT_BOUND_TOKENS", file.str("cert_bound_tokens"))?
                .unwrap_or(false),
        };
        let production = match self.production {
            Some(p) => p,
            None => boolish("TOLLGATE_PRODUCTION", file.str("production"))?.unwrap_or(false),
        };
        let key_encryption = key_encryption(
            pick(&self.key_encryption_key, "key_encryption_key").filter(|k| !k.is_empty()),
            self.key_encryption_key_file
                .clone()
                .or_else(|| file.str("key_encryption_key_file").map(PathBuf::from)),
            pick(
                &self.key_encryption_keys_previous,
                "key_encryption_keys_previous",
            ),
        )?;
        let edge_module = self
            .edge_module
            .clone()
            .or_else(|| file.str("edge_module").map(PathBuf::from));
        let module_listen = match pick(&self.module_listen, "module_listen") {
            None => None,
            Some(s) => {
                let invalid = |detail: String| ConfigError::Invalid {
                    name: "TOLLGATE_MODULE_LISTEN",
                    detail,
                };
                let a: SocketAddr = s
                    .parse()
                    .map_err(|_| invalid(format!("{s:?} is not host:port")))?;
                if a.port() == listen.port() || edge_module.is_none() {
                    return Err(invalid(
                        "needs TOLLGATE_EDGE_MODULE and a port other than TOLLGATE_LISTEN's".into(),
                    ));
                }
                Some(a)
            }
        };
        let tls_client_ca = self
            .tls_client_ca
            .clone()
            .or_else(|| file.str("tls_client_ca").map(PathBuf::from));
        let tls = match pick(&self.tls_listen, "tls_listen") {
            None if tls_client_ca.is_some() => {
                return Err(ConfigError::Invalid {
                    name: "TOLLGATE_TLS_CLIENT_CA",
                    detail: "needs TOLLGATE_TLS_LISTEN".into(),
                })
            }
            None => None,
            Some(s) => {
                let invalid = |detail: String| ConfigError::Invalid {
                    name: "TOLLGATE_TLS_LISTEN",
                    detail,
                };
                let addr: SocketAddr = s
                    .parse()
                    .map_err(|_| invalid(format!("{s:?} is not host:port")))?;
                let path = |v: &Option<PathBuf>, key: &str| {
                    v.clone().or_else(|| file.str(key).map(PathBuf::from))
                };
                let (Some(cert), Some(key)) = (
                    path(&self.tls_cert, "tls_cert"),
                    path(&self.tls_key, "tls_key"),
                ) else {
                    return Err(invalid(
                        "needs TOLLGATE_TLS_CERT and TOLLGATE_TLS_KEY".into(),
                    ));
                };
                if addr.port() == listen.port() {
                    return Err(invalid("needs a port other than TOLLGATE_LISTEN's".into()));
                }
                Some(TlsListen {
                    addr,
                    cert,
                    key,
                    client_ca: tls_client_ca,
                })
            }
        };
        let edge_trusted_principals =
            match pick(&self.edge_trusted_principals, "edge_trusted_principals") {
                None => Vec::new(),
                Some(s) => parse_principals(&s).map_err(|detail| ConfigError::Invalid {
                    name: "TOLLGATE_EDGE_TRUSTED_PRINCIPALS",
                    detail,
                })?,
            };
        Ok(Config {
            listen,
            admin_listen,
            max_connections: in_range(
                "TOLLGATE_MAX_CONNECTIONS",
                num(
                    "TOLLGATE_MAX_CONNECTIONS",
                    self.max_connections,
                    &file,
                    "max_connections",
                    1024,
                )?,
                1,
                1 << 20,
            )?,
            issuer,
            store,
            cache_store,
            admin_token,
            secret_pepper: pick(&self.secret_pepper, "secret_pepper").filter(|p| !p.is_empty()),
            production,
            key_encryption: Arc::new(key_encryption),
            default_audience: pick(&self.default_audience, "default_audience")
                .unwrap_or_else(|| "tollgate".into()),
            signing_alg,
            key_activation_delay: num(
                "TOLLGATE_KEY_ACTIVATION_DELAY",
                self.key_activation_delay,
                &file,
                "key_activation_delay",
                300,
            )?,
            key_rotation_interval: num(
                "TOLLGATE_KEY_ROTATION_INTERVAL",
                self.key_rotation_interval,
                &file,
                "key_rotation_interval",
                0,
            )?,
            auth_code_ttl: positive(
                "TOLLGATE_AUTH_CODE_TTL",
                num(
                    "TOLLGATE_AUTH_CODE_TTL",
                    self.auth_code_ttl,
                    &file,
                    "auth_code_ttl",
                    600,
                )?,
            )?,
            access_token_ttl: positive(
                "TOLLGATE_ACCESS_TOKEN_TTL",
                num(
                    "TOLLGATE_ACCESS_TOKEN_TTL",
                    self.access_token_ttl,
                    &file,
                    "access_token_ttl",
                    900,
                )?,
            )?,
            refresh_token_ttl: positive(
                "TOLLGATE_REFRESH_TOKEN_TTL",
                num(
                    "TOLLGATE_REFRESH_TOKEN_TTL",
                    self.refresh_token_ttl,
                    &file,
                    "refresh_token_ttl",
                    604_800,
                )?,
            )?,
            session_ttl: positive(
                "TOLLGATE_SESSION_TTL",
                num(
                    "TOLLGATE_SESSION_TTL",
                    self.session_ttl,
                    &file,
                    "session_ttl",
                    3600,
                )?,
            )?,
            rate_limit_default: num(
                "TOLLGATE_RATE_LIMIT_DEFAULT",
                self.rate_limit_default,
                &file,
                "rate_limit_default",
                100,
            )?,
            rate_limit_per_client: num(
                "TOLLGATE_RATE_LIMIT_PER_CLIENT",
                self.rate_limit_per_client,
                &file,
                "rate_limit_per_client",
                1000,
            )?,
            rate_limit_per_ip: num(
                "TOLLGATE_RATE_LIMIT_PER_IP",
                self.rate_limit_per_ip,
                &file,
                "rate_limit_per_ip",
                50,
            )?,
            trusted_proxy_hops: num(
                "TOLLGATE_TRUSTED_PROXY_HOPS",
                self.trusted_proxy_hops,
                &file,
                "trusted_proxy_hops",
                0,
            )?,
            max_body_bytes: num(
                "TOLLGATE_MAX_BODY_BYTES",
                self.max_body_bytes,
                &file,
                "max_body_bytes",
                65_536,
            )?,
            request_timeout_ms: num(
                "TOLLGATE_REQUEST_TIMEOUT_MS",
                self.request_timeout_ms,
                &file,
                "request_timeout_ms",
                10_000,
            )?,
            header_timeout_ms: positive(
                "TOLLGATE_HEADER_TIMEOUT_MS",
                num(
                    "TOLLGATE_HEADER_TIMEOUT_MS",
                    self.header_timeout_ms,
                    &file,
                    "header_timeout_ms",
                    10_000,
                )?,
            )?,
            send_timeout_ms: positive(
                "TOLLGATE_SEND_TIMEOUT_MS",
                num(
                    "TOLLGATE_SEND_TIMEOUT_MS",
                    self.send_timeout_ms,
                    &file,
                    "send_timeout_ms",
                    10_000,
                )?,
            )?,
            max_header_bytes: in_range(
                "TOLLGATE_MAX_HEADER_BYTES",
                num(
                    "TOLLGATE_MAX_HEADER_BYTES",
                    self.max_header_bytes,
                    &file,
                    "max_header_bytes",
                    32_768,
                )?,
                1024,
                1 << 20,
            )?,
            max_headers: in_range(
                "TOLLGATE_MAX_HEADERS",
                num(
                    "TOLLGATE_MAX_HEADERS",
                    self.max_headers,
                    &file,
                    "max_headers",
                    100,
                )?,
                1,
                10_000,
            )?,
            store_timeout_ms,
            store_retry_ms: num(
                "TOLLGATE_STORE_RETRY_MS",
                self.store_retry_ms,
                &file,
                "store_retry_ms",
                3000,
            )?,
            client_cache_seconds: in_range(
                "TOLLGATE_CLIENT_CACHE_SECONDS",
                num(
                    "TOLLGATE_CLIENT_CACHE_SECONDS",
                    self.client_cache_seconds,
                    &file,
                    "client_cache_seconds",
                    10,
                )?,
                0,
                300,
            )?,
            redis_wait_replicas,
            redis_wait_timeout_ms,
            revocation_feed_max: num(
                "TOLLGATE_REVOCATION_FEED_MAX",
                self.revocation_feed_max,
                &file,
                "revocation_feed_max",
                100_000,
            )?,
            password_memory_mib: match self.password_memory_mib {
                Some(v) => Some(v),
                None => match file.str("password_memory_mib") {
                    Some(_) => Some(num(
                        "TOLLGATE_PASSWORD_MEMORY_MIB",
                        None,
                        &file,
                        "password_memory_mib",
                        0,
                    )?),
                    None => None,
                },
            }
            .map(|v| positive("TOLLGATE_PASSWORD_MEMORY_MIB", v))
            .transpose()?,
            edge_module,
            module_listen,
            tls,
            edge_trusted_principals,
            edge_long_poll_max_wait_s: num(
                "TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S",
                self.edge_long_poll_max_wait_s,
                &file,
                "edge_long_poll_max_wait_s",
                30,
            )
            .and_then(|v| {
                in_range("TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S", v as usize, 0, 300).map(|v| v as u64)
            })?,
            edge_long_poll_max_waiters: in_range(
                "TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS",
                num(
                    "TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS",
                    self.edge_long_poll_max_waiters,
                    &file,
                    "edge_long_poll_max_waiters",
                    10_000,
                )?,
                1,
                1_000_000,
            )?,
            log_format,
            dpop_nonce,
            cert_bound_tokens,
            dpop_proof_max_age: positive(
                "TOLLGATE_DPOP_PROOF_MAX_AGE",
                num(
                    "TOLLGATE_DPOP_PROOF_MAX_AGE",
                    self.dpop_proof_max_age,
                    &file,
                    "dpop_proof_max_age",
                    300,
                )?,
            )?,
            dpop_clock_skew: num(
                "TOLLGATE_DPOP_CLOCK_SKEW",
                self.dpop_clock_skew,
                &file,
                "dpop_clock_skew",
                60,
            )?,
        })
    }
}

impl Config {
    /// Production mode: the secrets that must come from outside the store are there
    /// (the pepper never falls back to `auth_config`, signing keys are never stored in
    /// clear). Checked by every command that uses them (`serve`, `init`, `keys`).
    pub fn check_production(&self) -> Result<(), ConfigError> {
        if !self.production {
            return Ok(());
        }
        if self.secret_pepper.is_none() {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_SECRET_PEPPER",
                detail: "required in production mode (TOLLGATE_PRODUCTION): the pepper is \
                         never generated into the store there"
                    .into(),
            });
        }
        if !self.key_encryption.is_configured() {
            return Err(ConfigError::Invalid {
                name: "TOLLGATE_KEY_ENCRYPTION_KEY",
                detail: "required in production mode (TOLLGATE_PRODUCTION): signing keys are \
                         never stored in clear there (or TOLLGATE_KEY_ENCRYPTION_KEY_FILE)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Values that `auth_config` in the store may override at run time (set by `init`).
    pub fn apply_store_overrides(&mut self, m: &BTreeMap<String, String>) {
        let set = |target: &mut u64, key: &str| {
            if let Some(v) = m.get(key).and_then(|v| v.parse::<u64>().ok()) {
                *target = v;
            }
        };
        set(&mut self.auth_code_ttl, "auth_code_ttl");
        set(&mut self.access_token_ttl, "access_token_ttl");
        set(&mut self.refresh_token_ttl, "refresh_token_ttl");
        set(&mut self.session_ttl, "session_ttl");
        set(&mut self.rate_limit_default, "rate_limit_default");
        set(&mut self.rate_limit_per_client, "rate_limit_per_client");
        set(&mut self.rate_limit_per_ip, "rate_limit_per_ip");
    }

    /// For tests: a configuration with defaults.
    pub fn for_tests() -> Config {
        let mut c = Settings::default()
            .resolve()
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        c.admin_token = Some("test-admin-token-0123456789".into());
        // Signing keys sealed in every test, as in production.
        c.key_encryption = Arc::new(
            KeyEncryption::new(&[7u8; 32], &[])
                .unwrap_or_else(|e| unreachable!("a 32-byte key is valid: {e}")),
        );
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9080");
        assert_eq!(c.issuer, "http://127.0.0.1:9080");
        assert_eq!(c.store, StoreUrl::Memory);
        assert_eq!(
            (
                c.auth_code_ttl,
                c.access_token_ttl,
                c.refresh_token_ttl,
                c.session_ttl
            ),
            (600, 900, 604_800, 3600)
        );
        assert_eq!(
            (
                c.rate_limit_default,
                c.rate_limit_per_client,
                c.rate_limit_per_ip
            ),
            (100, 1000, 50)
        );
        assert_eq!(c.signing_alg, "ES256");
    }

    #[test]
    fn file_values_are_used_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "access_token_ttl: 60\nlisten: 127.0.0.1:1234\n").unwrap();
        let s = Settings {
            config_file: Some(p.clone()),
            listen: Some("127.0.0.1:5555".into()),
            ..Default::default()
        };
        let c = s.resolve().unwrap();
        assert_eq!(c.access_token_ttl, 60);
        assert_eq!(c.listen.port(), 5555);
        std::fs::write(&p, "acces_token_ttl: 60\n").unwrap();
        let err = Settings {
            config_file: Some(p),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("acces_token_ttl"));
    }

    #[test]
    fn edge_trusted_principals_are_spiffe_ids() {
        let with = |v: &str| {
            Settings {
                edge_trusted_principals: Some(v.into()),
                ..Settings::default()
            }
            .resolve()
        };
        let gw = "spiffe://cluster.local/ns/istio-system/sa/gw";
        let c = with(&format!(" {gw} ,spiffe://td/ns/a/sa/b,,{gw}")).unwrap();
        assert_eq!(c.edge_trusted_principals, vec![gw, "spiffe://td/ns/a/sa/b"]);
        assert!(with("").unwrap().edge_trusted_principals.is_empty());
        assert!(Settings::default()
            .resolve()
            .unwrap()
            .edge_trusted_principals
            .is_empty());
        for bad in [
            "gw",
            "spiffe://",
            "spiffe://td",
            "spiffe:///x",
            "https://td/x",
            "spiffe://td/a b",
            "spiffe://td/a;URI=x",
            "spiffe://td/\"x",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("TOLLGATE_EDGE_TRUSTED_PRINCIPALS"), "{bad}: {e}");
        }
    }

    #[test]
    fn module_listen_needs_the_module_and_its_own_port() {
        let with = |listen: &str, module: bool| Settings {
            module_listen: Some(listen.into()),
            edge_module: module.then(|| PathBuf::from("/m.wasm")),
            ..Default::default()
        };
        let c = with("0.0.0.0:9082", true).resolve().unwrap();
        assert_eq!(c.module_listen.map(|a| a.port()), Some(9082));
        assert_eq!(Settings::default().resolve().unwrap().module_listen, None);
        for bad in [
            with("0.0.0.0:9082", false),
            with("127.0.0.1:9080", true),
            with("nope", true),
        ] {
            let e = bad.resolve().unwrap_err().to_string();
            assert!(e.contains("TOLLGATE_MODULE_LISTEN"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            Settings {
                listen: Some("nope".into()),
                ..Default::default()
            },
            Settings {
                store: Some("mongodb://x".into()),
                ..Default::default()
            },
            Settings {
                signing_alg: Some("HS256".into()),
                ..Default::default()
            },
            Settings {
                admin_token: Some("short".into()),
                ..Default::default()
            },
            Settings {
                access_token_ttl: Some(0),
                ..Default::default()
            },
            Settings {
                issuer: Some("https://x/?q=1".into()),
                ..Default::default()
            },
        ];
        for s in bad {
            assert!(s.resolve().is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn wait_settings_are_checked() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(
            (
                c.redis_wait_replicas,
                c.redis_wait_timeout_ms,
                c.store_retry_ms
            ),
            (0, 500, 3000)
        );
        let redis = || Settings {
            store: Some("redis://127.0.0.1:6379/0".into()),
            redis_wait_replicas: Some(1),
            ..Default::default()
        };
        let c = redis().resolve().unwrap();
        assert_eq!((c.redis_wait_replicas, c.redis_wait_timeout_ms), (1, 500));
        // Shown by `authserver status`.
        let shown = serde_json::to_value(&c).unwrap();
        assert_eq!(shown["redis_wait_replicas"], 1);
        assert_eq!(shown["redis_wait_timeout_ms"], 500);
        let refused = [
            // WAIT on the in-memory store means nothing.
            Settings {
                redis_wait_replicas: Some(1),
                ..Default::default()
            },
            // WAIT n 0 blocks forever.
            Settings {
                redis_wait_timeout_ms: Some(0),
                ..redis()
            },
            // The command timeout would cut WAIT short.
            Settings {
                redis_wait_timeout_ms: Some(2000),
                ..redis()
            },
            Settings {
                store_timeout_ms: Some(0),
                ..Default::default()
            },
        ];
        for s in refused {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains("TOLLGATE_"), "{e}");
        }
        // Off (0), the timeout is not checked.
        assert!(Settings {
            redis_wait_timeout_ms: Some(0),
            ..Default::default()
        }
        .resolve()
        .is_ok());
    }

    #[test]
    fn the_admin_listener_has_its_own_address_and_the_connection_limit_its_bounds() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9081");
        assert_eq!(c.max_connections, 1024);
        let c = Settings {
            admin_listen: Some("0.0.0.0:9999".into()),
            max_connections: Some(2),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.admin_listen.port(), c.max_connections), (9999, 2));
        for s in [
            Settings {
                admin_listen: Some("127.0.0.1:9080".into()),
                ..Default::default()
            },
            Settings {
                admin_listen: Some("nope".into()),
                ..Default::default()
            },
            Settings {
                max_connections: Some(0),
                ..Default::default()
            },
        ] {
            let e = s
                .resolve()
                .err()
                .unwrap_or_else(|| panic!("{s:?} accepted"));
            let e = e.to_string();
            assert!(
                e.contains("TOLLGATE_ADMIN_LISTEN") || e.contains("TOLLGATE_MAX_CONNECTIONS"),
                "{e}"
            );
        }
    }

    #[test]
    fn connection_limits_have_documented_defaults_and_bounds() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(
            (
                c.header_timeout_ms,
                c.send_timeout_ms,
                c.max_header_bytes,
                c.max_headers
            ),
            (10_000, 10_000, 32_768, 100)
        );
        for s in [
            Settings {
                header_timeout_ms: Some(0),
                ..Default::default()
            },
            Settings {
                send_timeout_ms: Some(0),
                ..Default::default()
            },
            Settings {
                max_header_bytes: Some(100),
                ..Default::default()
            },
            Settings {
                max_header_bytes: Some(2 << 20),
                ..Default::default()
            },
            Settings {
                max_headers: Some(0),
                ..Default::default()
            },
        ] {
            assert!(s.resolve().is_err(), "{s:?} accepted");
        }
    }

    const KEK_A: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    const KEK_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn production_mode_without_a_kek_or_pepper_refuses() {
        let dev = Settings::default().resolve().unwrap();
        assert!(!dev.production && !dev.key_encryption.is_configured());
        assert!(
            dev.check_production().is_ok(),
            "development: no requirement"
        );
        let prod = |pepper: Option<&str>, kek: Option<&str>| Settings {
            production: Some(true),
            secret_pepper: pepper.map(str::to_string),
            key_encryption_key: kek.map(str::to_string),
            ..Default::default()
        };
        for (s, missing) in [
            (prod(None, Some(KEK_A)), "TOLLGATE_SECRET_PEPPER"),
            (prod(Some("pepper"), None), "TOLLGATE_KEY_ENCRYPTION_KEY"),
            (prod(Some(""), Some(KEK_A)), "TOLLGATE_SECRET_PEPPER"),
        ] {
            let e = s
                .resolve()
                .unwrap()
                .check_production()
                .unwrap_err()
                .to_string();
            assert!(e.contains(missing) && e.contains("production"), "{e}");
        }
        let c = prod(Some("pepper"), Some(KEK_A)).resolve().unwrap();
        assert!(c.check_production().is_ok());
        // From the config file too, and shown (ids only) by `status`.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            format!("production: true\nkey_encryption_key: {KEK_A}\n"),
        )
        .unwrap();
        let c = Settings {
            config_file: Some(p),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(c.production && c.key_encryption.is_configured());
        let shown = serde_json::to_string(&c).unwrap();
        assert!(shown.contains(c.key_encryption.current_id().unwrap()));
        assert!(
            !shown.contains(KEK_A) && !shown.contains(&KEK_A[..20]),
            "{shown}"
        );
    }

    #[test]
    fn key_encryption_keys_from_variables_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        std::fs::write(&file, format!("{KEK_B}\n# the previous one\n{KEK_A}\n")).unwrap();
        let from_file = Settings {
            key_encryption_key_file: Some(file.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let from_env = Settings {
            key_encryption_key: Some(KEK_B.into()),
            key_encryption_keys_previous: Some(format!("{KEK_A}, {KEK_B}")),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        for c in [&from_file, &from_env] {
            assert_eq!(c.key_encryption.previous_ids().len(), 1);
        }
        assert_eq!(
            from_file.key_encryption.current_id(),
            from_env.key_encryption.current_id()
        );
        assert_eq!(
            from_file.key_encryption.previous_ids(),
            from_env.key_encryption.previous_ids()
        );
        let bad = [
            (
                Settings {
                    key_encryption_key: Some("dG9vIHNob3J0".into()),
                    ..Default::default()
                },
                "TOLLGATE_KEY_ENCRYPTION_KEY",
            ),
            (
                Settings {
                    key_encryption_key: Some(KEK_A.into()),
                    key_encryption_key_file: Some(file.clone()),
                    ..Default::default()
                },
                "not both",
            ),
            (
                Settings {
                    key_encryption_keys_previous: Some(KEK_A.into()),
                    ..Default::default()
                },
                "need a current one",
            ),
            (
                Settings {
                    key_encryption_key: Some(KEK_A.into()),
                    key_encryption_keys_previous: Some(format!("{KEK_B},oops")),
                    ..Default::default()
                },
                "TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS",
            ),
            (
                Settings {
                    key_encryption_key_file: Some(dir.path().join("missing")),
                    ..Default::default()
                },
                "missing",
            ),
        ];
        for (s, needle) in bad {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(
                !e.contains(&KEK_A[..20]) && !e.contains(&KEK_B[..20]),
                "{e}"
            );
        }
    }

    #[test]
    fn cache_store_defaults_to_db_1() {
        let c = Settings {
            store: Some("redis://127.0.0.1:6379/0".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.cache_store,
            StoreUrl::Redis {
                url: "redis://127.0.0.1:6379/1".into()
            }
        );
    }
}
