//! Filter configuration: the JSON document Envoy hands over as `configuration` (Istio:
//! `pluginConfig`). It is parsed and validated once; [`Config::from_json`] either returns a
//! fully checked [`Config`] or a [`ConfigError`] whose message says which field is wrong.
//!
//! The reference for every field is `docs/filter.md`.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::jwt::Alg;
use crate::lease::{self, LeaseFailMode};
use crate::{introspection, ratelimit, revocation};

// ------------------------------------------------------------------ raw (serde) shapes

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    token_sources: Option<Vec<TokenSource>>,
    #[serde(default = "d_clock_skew")]
    clock_skew_s: u64,
    #[serde(default = "d_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default_rule: Option<RawPolicy>,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default = "d_realm")]
    realm: String,
    #[serde(default)]
    jwks_wait: RawJwksWait,
    #[serde(default = "d_tick_ms")]
    tick_ms: u64,
    #[serde(default)]
    auth_server: Option<RawAuthServer>,
    #[serde(default)]
    revocation: Option<RawRevocation>,
    #[serde(default)]
    introspection: Option<RawIntrospection>,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    rate_limit: RawRateLimitGlobal,
    #[serde(default)]
    dpop: RawDpop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpop {
    #[serde(default = "d_dpop_iat_window")]
    iat_window_s: u64,
    #[serde(default = "d_dpop_max_proof")]
    max_proof_bytes: usize,
    #[serde(default = "d_dpop_shards")]
    replay_shards: u32,
    #[serde(default = "d_dpop_entries")]
    replay_entries_per_shard: u32,
    #[serde(default)]
    scheme_header: Option<String>,
    #[serde(default)]
    nonce: Option<RawDpopNonce>,
}

/// `dpop.nonce`: filter-issued nonces (RFC 9449 §9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpopNonce {
    /// Environment variable of the VM holding the secret (shared by the replicas).
    secret_env: String,
    #[serde(default = "d_dpop_nonce_lifetime")]
    lifetime_s: u64,
}

fn d_dpop_nonce_lifetime() -> u64 {
    60
}

impl Default for RawDpop {
    fn default() -> Self {
        RawDpop {
            iat_window_s: d_dpop_iat_window(),
            max_proof_bytes: d_dpop_max_proof(),
            replay_shards: d_dpop_shards(),
            replay_entries_per_shard: d_dpop_entries(),
            scheme_header: None,
            nonce: None,
        }
    }
}

fn d_dpop_iat_window() -> u64 {
    60
}
fn d_dpop_max_proof() -> usize {
    4096
}
fn d_dpop_shards() -> u32 {
    1024
}
fn d_dpop_entries() -> u32 {
    64
}

/// What a rule may require of the token beyond scopes and audiences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// A sender-constrained (DPoP-bound, `cnf.jkt`) token with a valid proof.
    SenderConstrained,
}

/// DPoP proof checking (RFC 9449), `dpop` in the configuration.
#[derive(Debug, Clone)]
pub struct Dpop {
    /// A proof's `iat` may be at most this far in the past or the future (seconds).
    pub iat_window_s: u64,
    /// Longest accepted `DPoP` header value.
    pub max_proof_bytes: usize,
    /// Shared-data keys of the `jti` replay set, and live entries per key.
    pub replay_shards: u32,
    pub replay_entries_per_shard: u32,
    /// Header holding the scheme the client addressed (e.g. `x-forwarded-proto` behind a
    /// TLS-terminating load balancer); `None`: Envoy's `:scheme`.
    pub scheme_header: Option<String>,
    /// Filter-issued nonces (RFC 9449 §9); `None`: proofs need none.
    pub nonce: Option<DpopNonce>,
}

/// The secret and slot length of filter-issued DPoP nonces. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DpopNonce {
    pub key: Vec<u8>,
    pub lifetime_s: u64,
}

impl std::fmt::Debug for DpopNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopNonce")
            .field("key", &"<redacted>")
            .field("lifetime_s", &self.lifetime_s)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthServer {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    /// Name of an environment variable of the Wasm VM holding the client secret
    /// (`vm_config.environment_variables`, WasmPlugin `vmConfig.env`).
    #[serde(default)]
    client_secret_env: Option<String>,
    #[serde(default = "d_auth_timeout_ms")]
    timeout_ms: u64,
}

impl std::fmt::Debug for RawAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAuthServer")
            .field("cluster", &self.cluster)
            .field("client_id", &self.client_id)
            .field("client_secret_env", &self.client_secret_env)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    #[serde(default = "d_rev_path")]
    path: String,
    #[serde(default = "d_poll_ms")]
    poll_interval_ms: u64,
    #[serde(default = "d_stale_after")]
    stale_after_s: u64,
    #[serde(default)]
    stale_mode: FailMode,
    #[serde(default = "d_rev_buckets")]
    buckets: u32,
    #[serde(default = "d_lease_ms")]
    lease_ms: u64,
    #[serde(default)]
    mode: RevocationMode,
    #[serde(default = "d_long_poll_wait_s")]
    long_poll_wait_s: u64,
}

/// How the revocation feed is followed (`revocation.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RevocationMode {
    /// Long poll (the server holds the call until a revocation is published), falling back
    /// to polling when the server does not take long polls.
    #[default]
    LongPoll,
    /// Poll every `poll_interval_ms`.
    Poll,
}

fn d_long_poll_wait_s() -> u64 {
    25
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    issuer: String,
    #[serde(default = "d_intro_path")]
    path: String,
    #[serde(default = "d_max_ttl")]
    max_ttl_s: u64,
    #[serde(default = "d_negative_ttl")]
    negative_ttl_s: u64,
    #[serde(default = "d_rl_slots")]
    slots: u32,
    #[serde(default = "d_closed")]
    fail_mode: FailMode,
    #[serde(default)]
    token_shape: RawTokenShape,
    #[serde(default)]
    miss_limit: RawMissLimit,
}

/// `introspection.token_shape`: what an opaque token of the issuer looks like (the default
/// is the Tollgate auth server's format).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenShape {
    #[serde(default = "d_shape_prefix")]
    prefix: String,
    #[serde(default = "d_shape_length")]
    min_length: usize,
    #[serde(default = "d_shape_length")]
    max_length: usize,
    #[serde(default)]
    charset: crate::opaque::Charset,
}

fn d_shape_prefix() -> String {
    crate::opaque::TOLLGATE_PREFIX.into()
}
fn d_shape_length() -> usize {
    crate::opaque::TOLLGATE_LENGTH
}

impl Default for RawTokenShape {
    fn default() -> Self {
        RawTokenShape {
            prefix: d_shape_prefix(),
            min_length: d_shape_length(),
            max_length: d_shape_length(),
            charset: Default::default(),
        }
    }
}

/// `introspection.miss_limit`: new opaque tokens (introspection calls) per client address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMissLimit {
    #[serde(default = "d_miss_requests")]
    requests: u64,
    #[serde(default = "d_miss_period")]
    period_s: u64,
    #[serde(default)]
    burst: Option<u64>,
}

fn d_miss_requests() -> u64 {
    120
}
fn d_miss_period() -> u64 {
    60
}

impl Default for RawMissLimit {
    fn default() -> Self {
        RawMissLimit {
            requests: d_miss_requests(),
            period_s: d_miss_period(),
            burst: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    xff_hops: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimitGlobal {
    #[serde(default = "d_rl_slots")]
    slots: u32,
    #[serde(default = "d_true")]
    response_headers: bool,
    #[serde(default = "d_lease_path")]
    lease_path: String,
}

fn d_lease_path() -> String {
    "/edge/ratelimit/lease".into()
}

impl Default for RawRateLimitGlobal {
    fn default() -> Self {
        RawRateLimitGlobal {
            slots: d_rl_slots(),
            response_headers: true,
            lease_path: d_lease_path(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleLimit {
    requests: u64,
    period_s: u64,
    #[serde(default)]
    burst: Option<u64>,
    key: RawLimitKey,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: RawLimitMode,
    #[serde(default)]
    lease: Option<u64>,
    #[serde(default)]
    fail_mode: Option<LeaseFailMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum RawLimitMode {
    #[default]
    Local,
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLimitKey {
    Named(String),
    Header { header: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    typ: Option<String>,
    jwks: RawJwks,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    cluster: String,
    #[serde(default = "d_jwks_path")]
    path: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "d_refresh")]
    refresh_interval_s: u64,
    #[serde(default = "d_min_refresh")]
    min_refresh_interval_s: u64,
    #[serde(default = "d_retry")]
    retry_interval_s: u64,
    #[serde(default = "d_timeout_ms")]
    timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "d_slots")]
    slots: u32,
    #[serde(default = "d_max_ttl")]
    max_ttl_s: u64,
    #[serde(default = "d_local_entries")]
    local_entries: u32,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            slots: d_slots(),
            max_ttl_s: d_max_ttl(),
            local_entries: d_local_entries(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    scope_mode: ScopeMode,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    require: Option<Require>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    path_exact: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    allow_anonymous: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    scope_mode: ScopeMode,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    rate_limit: Option<RawRuleLimit>,
    #[serde(default)]
    require: Option<Require>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default = "d_h_sub")]
    sub: String,
    #[serde(default = "d_h_client_id")]
    client_id: String,
    #[serde(default = "d_h_scope")]
    scope: String,
    #[serde(default = "d_h_iss")]
    iss: String,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    #[serde(default)]
    strip_authorization: bool,
    #[serde(default = "d_strip_prefix")]
    strip_prefix: Option<String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Default for RawHeaders {
    fn default() -> Self {
        RawHeaders {
            sub: d_h_sub(),
            client_id: d_h_client_id(),
            scope: d_h_scope(),
            iss: d_h_iss(),
            claims: BTreeMap::new(),
            strip_authorization: false,
            strip_prefix: d_strip_prefix(),
            remove: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwksWait {
    #[serde(default = "d_wait_ms")]
    max_wait_ms: u64,
    #[serde(default = "d_wait_status")]
    status: u16,
}

impl Default for RawJwksWait {
    fn default() -> Self {
        RawJwksWait {
            max_wait_ms: d_wait_ms(),
            status: d_wait_status(),
        }
    }
}

fn d_clock_skew() -> u64 {
    30
}

/// The largest `clock_skew_s` a configuration may set. A revoked token is remembered (at the
/// edge and by the auth server) until `exp` plus this, so that no allowed skew lets it pass
/// again once its revocation was forgotten.
pub const MAX_CLOCK_SKEW_S: u64 = 600;
fn d_max_token_bytes() -> usize {
    8192
}
fn d_realm() -> String {
    "tollgate".into()
}
fn d_tick_ms() -> u64 {
    200
}
fn d_jwks_path() -> String {
    "/oauth2/jwks".into()
}
fn d_refresh() -> u64 {
    300
}
fn d_min_refresh() -> u64 {
    10
}
fn d_retry() -> u64 {
    5
}
fn d_timeout_ms() -> u64 {
    2000
}
fn d_slots() -> u32 {
    8192
}
fn d_max_ttl() -> u64 {
    300
}
fn d_local_entries() -> u32 {
    1024
}
fn d_h_sub() -> String {
    "x-tollgate-sub".into()
}
fn d_h_client_id() -> String {
    "x-tollgate-client-id".into()
}
fn d_h_scope() -> String {
    "x-tollgate-scope".into()
}
fn d_h_iss() -> String {
    "x-tollgate-iss".into()
}
fn d_strip_prefix() -> Option<String> {
    Some("x-tollgate-".into())
}
fn d_wait_ms() -> u64 {
    3000
}
fn d_wait_status() -> u16 {
    503
}
fn d_auth_timeout_ms() -> u64 {
    1000
}
fn d_rev_path() -> String {
    "/edge/revocations".into()
}
fn d_intro_path() -> String {
    "/oauth2/introspect".into()
}
fn d_poll_ms() -> u64 {
    1000
}
fn d_stale_after() -> u64 {
    30
}
fn d_rev_buckets() -> u32 {
    64
}
fn d_lease_ms() -> u64 {
    5000
}
fn d_negative_ttl() -> u64 {
    10
}
fn d_rl_slots() -> u32 {
    4096
}
fn d_true() -> bool {
    true
}
fn d_closed() -> FailMode {
    FailMode::Closed
}

// ------------------------------------------------------------------ checked shapes

/// Where the token is looked for, in order; the first source present wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenSource {
    /// A request header, with a case-insensitive prefix such as `"Bearer "`.
    Header {
        name: String,
        #[serde(default)]
        prefix: Option<String>,
    },
    /// A cookie by name.
    Cookie { name: String },
    /// A query-string parameter by name.
    Query { name: String },
}

/// How a rule's `scopes` list is matched against the token's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScopeMode {
    /// Every listed scope is required.
    #[default]
    All,
    /// One of the listed scopes is enough.
    Any,
}

/// What the filter does when it cannot know (feed stale, auth server unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Keep serving (log and count it).
    #[default]
    Open,
    /// Refuse with 503 `temporarily_unavailable`.
    Closed,
}

/// The auth server as the filter's own OAuth client sees it (feed, leases, introspection).
#[derive(Clone)]
pub struct AuthServer {
    pub cluster: String,
    pub authority: String,
    /// `None`: no client credentials, the gateway is admitted by its mesh identity (the
    /// cluster's mTLS certificate, docs/security.md "Edge endpoints").
    pub client_id: Option<String>,
    /// `Basic base64(client_id:client_secret)`: the secret never appears elsewhere.
    basic: Option<String>,
    pub timeout_ms: u64,
}

impl AuthServer {
    /// `headers` with the filter's client credentials in front (`authorization: Basic`),
    /// unchanged without credentials (mesh identity).
    pub fn with_credentials(&self, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
        if let Some(b) = &self.basic {
            headers.insert(0, ("authorization".into(), b.clone()));
        }
        headers
    }

    /// Whether the filter authenticates with client credentials (else by mesh identity).
    pub fn has_credentials(&self) -> bool {
        self.basic.is_some()
    }
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("client_id", &self.client_id)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Revocation at the edge.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub path: String,
    pub settings: revocation::Settings,
    pub stale_after_ms: u64,
    pub stale_mode: FailMode,
}

/// Opaque tokens by RFC 7662 introspection.
#[derive(Debug, Clone)]
pub struct Introspection {
    /// Index of the issuer opaque tokens are attributed to.
    pub issuer: usize,
    pub path: String,
    pub settings: introspection::Settings,
    pub fail_mode: FailMode,
    /// Tokens of another shape are refused without a call.
    pub shape: crate::opaque::Shape,
    /// New opaque tokens introspected per client address (`None`: no limit).
    pub miss_limit: Option<ratelimit::Limit>,
}

/// How the client address is found.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    /// A trusted header set by the proxy in front (lower-case).
    pub header: Option<String>,
    /// Take the n-th address from the right of `X-Forwarded-For` (0: not used).
    pub xff_hops: u32,
}

/// What a rate-limit bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientId,
    Sub,
    ClientIp,
    Header(String),
}

/// A rule's rate limit.
#[derive(Debug, Clone)]
pub struct RuleLimit {
    pub name: String,
    pub key: LimitKey,
    pub limit: ratelimit::Limit,
    /// Ready-made `RateLimit-Policy` value.
    pub policy_header: String,
    /// Global mode: quota leases from the auth server (`None`: local mode).
    pub global: Option<lease::Policy>,
}

/// The source of one issuer's JWK Set: an Envoy cluster and a path.
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub refresh_interval_ms: u64,
    pub min_refresh_interval_ms: u64,
    pub retry_interval_ms: u64,
    pub timeout_ms: u64,
}

/// One accepted token issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub typ: Option<String>,
    pub jwks: JwksSource,
    /// Shared-data key prefix of this issuer's JWKS (derived from the issuer URL and the
    /// JWKS source: cluster, authority, path).
    pub key_id: String,
}

/// What a matched rule (or the default rule) demands.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_anonymous: bool,
    pub scopes: Vec<String>,
    pub scope_mode: ScopeMode,
    pub audiences: Vec<String>,
    /// `require: sender_constrained`: only DPoP-bound tokens, with a valid proof.
    pub sender_constrained: bool,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub path: PathMatch,
    /// Upper-case methods; empty = any.
    pub methods: Vec<String>,
    /// Lower-case hosts, exact or `*.suffix`; empty = any.
    pub hosts: Vec<String>,
    pub policy: Policy,
    pub rate_limit: Option<RuleLimit>,
}

#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    pub iss: String,
    /// (claim name, header name), sorted by claim name.
    pub claims: Vec<(String, String)>,
    pub strip_authorization: bool,
    pub strip_prefix: Option<String>,
    /// Every header name removed from incoming requests (identity headers, claim headers,
    /// `remove`), lower-case.
    pub remove: Vec<String>,
    /// `remove` folded by [`fold_header_name`] (sorted, unique): an incoming header whose
    /// folded name is here is removed too (`x_tollgate_sub` reaches a CGI/WSGI upstream as
    /// `HTTP_X_TOLLGATE_SUB`, the same variable as `x-tollgate-sub`).
    pub remove_folded: Vec<String>,
    /// `strip_prefix` folded by [`fold_header_name`].
    pub strip_prefix_folded: Option<String>,
}

/// A header name as CGI/WSGI/Rack upstreams see it, up to case: lower-case, `_` as `-`.
/// Two names that fold to the same string reach such an upstream as one variable.
pub fn fold_header_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(
            name.bytes()
                .map(|b| match b {
                    b'_' => '-',
                    b => b.to_ascii_lowercase() as char,
                })
                .collect(),
        )
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub issuers: Vec<Issuer>,
    pub token_sources: Vec<TokenSource>,
    pub clock_skew_s: u64,
    pub max_token_bytes: usize,
    pub cache_slots: u32,
    pub cache_max_ttl_s: u64,
    /// Entries of each worker's local token cache (0 = none).
    pub cache_local_entries: u32,
    pub rules: Vec<Rule>,
    pub default_policy: Policy,
    pub headers: HeaderNames,
    pub realm: String,
    pub jwks_max_wait_ms: u64,
    pub jwks_wait_status: u16,
    pub tick_ms: u64,
    /// Hex prefix of SHA-256 over the configuration text: namespaces the token cache so
    /// entries made under another configuration are never read.
    pub fingerprint: String,
    pub auth_server: Option<AuthServer>,
    pub revocation: Option<Revocation>,
    pub introspection: Option<Introspection>,
    pub client_ip: ClientIp,
    pub rate_limit_response_headers: bool,
    /// Path of the auth server's lease endpoint (global rate limits).
    pub lease_path: String,
    pub dpop: Dpop,
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: msg.into(),
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if !valid_header_name(&lower) {
        return Err(bad(
            field,
            format!("{name:?} is not a valid header name (letters, digits, '-', '_')"),
        ));
    }
    Ok(lower)
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Config {
    /// Whether any decision can depend on the downstream peer address (`source.address`):
    /// only a rate limit keyed by `client_ip` and the introspection miss limit read it. The glue asks Envoy for the address
    /// (a property lookup, the costliest hostcall of an allowed request) only then.
    pub fn uses_peer_address(&self) -> bool {
        self.rules.iter().any(|r| {
            r.rate_limit
                .as_ref()
                .is_some_and(|l| l.key == LimitKey::ClientIp)
        }) || self
            .introspection
            .as_ref()
            .is_some_and(|x| x.miss_limit.is_some())
    }

    /// Parse and validate the JSON configuration, in a VM without environment variables
    /// (`auth_server.client_secret_env` is then an error).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        Self::from_json_with_env(bytes, &|_| None)
    }

    /// Parse and validate the JSON configuration; `env` reads the VM's environment variables
    /// (the filter passes `std::env::var`: Envoy hands `vm_config.environment_variables` to
    /// the module's WASI `environ_get`).
    pub fn from_json_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let fingerprint = {
            let d = Sha256::digest(bytes);
            d[..6].iter().map(|b| format!("{b:02x}")).collect()
        };
        Self::check(raw, fingerprint, env)
    }

    fn check(
        raw: RawConfig,
        fingerprint: String,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if raw.issuers.is_empty() {
            return Err(bad("issuers", "at least one issuer is required"));
        }
        let mut issuers = Vec::with_capacity(raw.issuers.len());
        for (i, ri) in raw.issuers.into_iter().enumerate() {
            let f = |name: &str| format!("issuers[{i}].{name}");
            if ri.issuer.trim().is_empty() {
                return Err(bad(f("issuer"), "must not be empty"));
            }
            if issuers.iter().any(|x: &Issuer| x.issuer == ri.issuer) {
                return Err(bad(f("issuer"), format!("{:?} is listed twice", ri.issuer)));
            }
            if ri.audiences.is_empty() || ri.audiences.iter().any(|a| a.is_empty()) {
                return Err(bad(
                    f("audiences"),
                    "at least one non-empty audience is required (aud is always checked)",
                ));
            }
            let algorithms = match ri.algorithms {
                None => Alg::DEFAULT_ALLOWED.to_vec(),
                Some(list) => {
                    if list.is_empty() {
                        return Err(bad(f("algorithms"), "must not be empty"));
                    }
                    let mut out = Vec::new();
                    for a in list {
                        match Alg::parse(&a) {
                            Some(alg) => out.push(alg),
                            None => {
                                return Err(bad(
                                    f("algorithms"),
                                    format!(
                                        "{a:?} is not accepted; use ES256, ES384, RS256, RS384, \
                                         RS512, PS256, PS384, PS512 or EdDSA (none and HS* never)"
                                    ),
                                ))
                            }
                        }
                    }
                    out
                }
            };
            let j = ri.jwks;
            if j.cluster.is_empty() {
                return Err(bad(f("jwks.cluster"), "must name an Envoy cluster"));
            }
            if !j.path.starts_with('/') {
                return Err(bad(f("jwks.path"), "must start with '/'"));
            }
            if j.refresh_interval_s == 0 {
                return Err(bad(f("jwks.refresh_interval_s"), "must be at least 1"));
            }
            if j.retry_interval_s == 0 {
                return Err(bad(f("jwks.retry_interval_s"), "must be at least 1"));
            }
            if j.timeout_ms == 0 || j.timeout_ms > 60_000 {
                return Err(bad(f("jwks.timeout_ms"), "must be within 1..=60000"));
            }
            // Keyed by the issuer and its JWKS source: two configurations (two filters in one
            // VM) naming one issuer with different sources never read each other's keys.
            let authority = j.authority.clone().unwrap_or_else(|| j.cluster.clone());
            let key_id = short_hash(&format!(
                "{}\n{}\n{}\n{}",
                ri.issuer, j.cluster, authority, j.path
            ));
            issuers.push(Issuer {
                audiences: ri.audiences,
                algorithms,
                typ: ri.typ.map(|t| normalize_typ(&t)),
                jwks: JwksSource {
                    authority,
                    cluster: j.cluster,
                    path: j.path,
                    refresh_interval_ms: j.refresh_interval_s.saturating_mul(1000),
                    min_refresh_interval_ms: j.min_refresh_interval_s.saturating_mul(1000),
                    retry_interval_ms: j.retry_interval_s.saturating_mul(1000),
                    timeout_ms: j.timeout_ms,
                },
                issuer: ri.issuer,
                key_id,
            });
        }

        let token_sources = match raw.token_sources {
            None => vec![TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            }],
            Some(list) => {
                if list.is_empty() {
                    return Err(bad("token_sources", "must not be empty"));
                }
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    let field = format!("token_sources[{i}]");
                    out.push(match s {
                        TokenSource::Header { name, prefix } => TokenSource::Header {
                            name: check_header_name(&field, &name)?,
                            prefix,
                        },
                        TokenSource::Cookie { name } | TokenSource::Query { name }
                            if name.is_empty() =>
                        {
                            return Err(bad(field, "name must not be empty"))
                        }
                        other => other,
                    });
                }
                out
            }
        };

        if raw.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(bad("clock_skew_s", "must be at most 600"));
        }
        if !(256..=65536).contains(&raw.max_token_bytes) {
            return Err(bad("max_token_bytes", "must be within 256..=65536"));
        }
        if raw.cache.slots == 0 || raw.cache.slots > 1_048_576 {
            return Err(bad("cache.slots", "must be within 1..=1048576"));
        }
        if raw.cache.local_entries > 65_536 {
            return Err(bad("cache.local_entries", "must be at most 65536"));
        }
        if raw.cache.max_ttl_s == 0 || raw.cache.max_ttl_s > 86_400 {
            return Err(bad("cache.max_ttl_s", "must be within 1..=86400"));
        }
        if raw.tick_ms < 10 || raw.tick_ms > 60_000 {
            return Err(bad("tick_ms", "must be within 10..=60000"));
        }
        if raw.jwks_wait.max_wait_ms > 60_000 {
            return Err(bad("jwks_wait.max_wait_ms", "must be at most 60000"));
        }
        if !matches!(raw.jwks_wait.status, 401 | 503) {
            return Err(bad("jwks_wait.status", "must be 401 or 503"));
        }
        if raw.realm.contains('"') || raw.realm.contains('\\') || raw.realm.is_empty() {
            return Err(bad("realm", "must be non-empty without '\"' or '\\'"));
        }

        if raw.rate_limit.slots == 0 || raw.rate_limit.slots > 1_048_576 {
            return Err(bad("rate_limit.slots", "must be within 1..=1048576"));
        }
        let rl_slots = raw.rate_limit.slots;
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let field = |n: &str| format!("rules[{i}].{n}");
            let set = [&r.path_exact, &r.path_prefix, &r.path_regex]
                .iter()
                .filter(|x| x.is_some())
                .count();
            if set > 1 {
                return Err(bad(
                    format!("rules[{i}]"),
                    "at most one of path_exact, path_prefix, path_regex",
                ));
            }
            let path = if let Some(p) = r.path_exact {
                PathMatch::Exact(p)
            } else if let Some(p) = r.path_prefix {
                PathMatch::Prefix(p)
            } else if let Some(p) = r.path_regex {
                let anchored = format!("^(?:{p})$");
                PathMatch::Regex(
                    Regex::new(&anchored).map_err(|e| bad(field("path_regex"), e.to_string()))?,
                )
            } else {
                PathMatch::Any
            };
            let methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            if methods.iter().any(|m| m.is_empty()) {
                return Err(bad(field("methods"), "empty method"));
            }
            let hosts: Vec<String> = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            if hosts.iter().any(|h| h.is_empty()) {
                return Err(bad(field("hosts"), "empty host"));
            }
            let policy = Policy {
                allow_anonymous: r.allow_anonymous,
                scopes: r.scopes,
                scope_mode: r.scope_mode,
                audiences: r.audiences,
                sender_constrained: r.require == Some(Require::SenderConstrained),
            };
            check_policy(&field(""), &policy)?;
            let name = r.name.unwrap_or_else(|| format!("rule-{i}"));
            let rate_limit = match r.rate_limit {
                None => None,
                Some(l) => Some(check_limit(
                    &field("rate_limit."),
                    l,
                    &name,
                    format!("{fingerprint}/r{i}"),
                    rl_slots,
                )?),
            };
            rules.push(Rule {
                name,
                path,
                methods,
                hosts,
                policy,
                rate_limit,
            });
        }
        let default_policy = match raw.default_rule {
            None => Policy::default(),
            Some(p) => Policy {
                allow_anonymous: p.allow_anonymous,
                scopes: p.scopes,
                scope_mode: p.scope_mode,
                audiences: p.audiences,
                sender_constrained: p.require == Some(Require::SenderConstrained),
            },
        };
        check_policy("default_rule.", &default_policy)?;

        let dpop = check_dpop(raw.dpop, env)?;
        let h = raw.headers;
        let sub = check_header_name("headers.sub", &h.sub)?;
        let client_id = check_header_name("headers.client_id", &h.client_id)?;
        let scope = check_header_name("headers.scope", &h.scope)?;
        let iss = check_header_name("headers.iss", &h.iss)?;
        let mut claims = Vec::new();
        for (claim, header) in h.claims {
            if claim.is_empty() {
                return Err(bad("headers.claims", "empty claim name"));
            }
            let hn = check_header_name(&format!("headers.claims.{claim}"), &header)?;
            claims.push((claim, hn));
        }
        let mut remove = vec![sub.clone(), client_id.clone(), scope.clone(), iss.clone()];
        remove.extend(claims.iter().map(|(_, h)| h.clone()));
        for (i, r) in h.remove.iter().enumerate() {
            remove.push(check_header_name(&format!("headers.remove[{i}]"), r)?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in remove.iter().take(4 + claims.len()) {
            // Folded: `x_a` and `x-a` are one variable to a CGI/WSGI upstream.
            if !seen.insert(fold_header_name(name)) {
                return Err(bad(
                    "headers",
                    format!("header {name:?} is used for two identity values"),
                ));
            }
        }
        if remove.iter().any(|n| n == "authorization") {
            return Err(bad(
                "headers",
                "use strip_authorization to remove the Authorization header",
            ));
        }
        remove.sort();
        remove.dedup();
        let strip_prefix = match h.strip_prefix {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(check_header_name("headers.strip_prefix", &p)?),
            None => None,
        };
        let mut remove_folded: Vec<String> = remove
            .iter()
            .map(|n| fold_header_name(n).into_owned())
            .collect();
        remove_folded.sort();
        remove_folded.dedup();
        let strip_prefix_folded = strip_prefix
            .as_deref()
            .map(|p| fold_header_name(p).into_owned());

        let auth_server = match raw.auth_server {
            None => None,
            Some(a) => {
                if a.cluster.is_empty() {
                    return Err(bad("auth_server.cluster", "must name an Envoy cluster"));
                }
                if a.timeout_ms == 0 || a.timeout_ms > 60_000 {
                    return Err(bad("auth_server.timeout_ms", "must be within 1..=60000"));
                }
                let secret = match (&a.client_secret, &a.client_secret_env) {
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            "auth_server",
                            "client_secret and client_secret_env are alternatives: give one",
                        ))
                    }
                    (Some(s), None) => Some(s.clone()),
                    (None, Some(name)) => {
                        let valid = name.bytes().next().is_some_and(|c| !c.is_ascii_digit())
                            && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
                        if !valid {
                            return Err(bad(
                                "auth_server.client_secret_env",
                                "must name an environment variable ([A-Za-z_][A-Za-z0-9_]*)",
                            ));
                        }
                        match env(name) {
                            None => return Err(bad(
                                "auth_server.client_secret_env",
                                format!("the environment variable {name} is not set in the Wasm VM (EnvoyFilter vm_config.environment_variables, WasmPlugin vmConfig.env)"),
                            )),
                            Some(v) if v.is_empty() => return Err(bad(
                                "auth_server.client_secret_env",
                                format!("the environment variable {name} is empty"),
                            )),
                            Some(v) => Some(v),
                        }
                    }
                    (None, None) => None,
                };
                let basic = match (&a.client_id, secret) {
                    (None, None) => None,
                    (Some(id), Some(secret)) => {
                        if id.is_empty() || secret.is_empty() {
                            return Err(bad(
                                "auth_server",
                                "client_id and client_secret must not be empty",
                            ));
                        }
                        use base64::Engine as _;
                        let creds = format!("{}:{}", form_encode(id), form_encode(&secret));
                        Some(format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(creds)
                        ))
                    }
                    (Some(_), None) => {
                        return Err(bad(
                            "auth_server",
                            "client_id needs client_secret or client_secret_env (or give none of them: mesh identity)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            "auth_server",
                            "a client secret needs client_id",
                        ))
                    }
                };
                Some(AuthServer {
                    authority: a.authority.unwrap_or_else(|| a.cluster.clone()),
                    cluster: a.cluster,
                    client_id: a.client_id,
                    basic,
                    timeout_ms: a.timeout_ms,
                })
            }
        };
        let revocation = match raw.revocation {
            None => None,
            Some(r) => {
                let Some(a) = &auth_server else {
                    return Err(bad(
                        "revocation",
                        "needs `auth_server` (the cluster of the feed)",
                    ));
                };
                if !r.path.starts_with('/') {
                    return Err(bad("revocation.path", "must start with '/'"));
                }
                if !(100..=300_000).contains(&r.poll_interval_ms) {
                    return Err(bad(
                        "revocation.poll_interval_ms",
                        "must be within 100..=300000",
                    ));
                }
                if r.stale_after_s == 0 || r.stale_after_s > 86_400 {
                    return Err(bad("revocation.stale_after_s", "must be within 1..=86400"));
                }
                if r.buckets == 0 || r.buckets > 65_536 {
                    return Err(bad("revocation.buckets", "must be within 1..=65536"));
                }
                if r.lease_ms < a.timeout_ms.saturating_add(r.poll_interval_ms)
                    || r.lease_ms > 600_000
                {
                    return Err(bad(
                        "revocation.lease_ms",
                        "must be at least auth_server.timeout_ms + poll_interval_ms and at most 600000",
                    ));
                }
                if !(1..=300).contains(&r.long_poll_wait_s) {
                    return Err(bad("revocation.long_poll_wait_s", "must be within 1..=300"));
                }
                let long_poll_wait_s = match r.mode {
                    RevocationMode::LongPoll => r.long_poll_wait_s,
                    RevocationMode::Poll => 0,
                };
                // The revoked set belongs to the feed, not to this configuration: a
                // configuration change keeps it (no window without revocations).
                let namespace = short_hash(&format!(
                    "{}|{}|{}|{}",
                    a.cluster, a.authority, r.path, r.buckets
                ));
                Some(Revocation {
                    settings: revocation::Settings {
                        namespace,
                        path: r.path.clone(),
                        buckets: r.buckets,
                        poll_interval_ms: r.poll_interval_ms,
                        lease_ms: r.lease_ms,
                        long_poll_wait_s,
                        // The call outlives the server's hold by the usual call timeout.
                        call_timeout_ms: long_poll_wait_s
                            .saturating_mul(1000)
                            .saturating_add(a.timeout_ms),
                    },
                    path: r.path,
                    stale_after_ms: r.stale_after_s * 1000,
                    stale_mode: r.stale_mode,
                })
            }
        };
        let introspection = match raw.introspection {
            None => None,
            Some(x) => {
                let Some(a) = &auth_server else {
                    return Err(bad(
                        "introspection",
                        "needs `auth_server` (the cluster and client credentials to introspect with)",
                    ));
                };
                if !a.has_credentials() {
                    return Err(bad(
                        "introspection",
                        "needs client credentials in `auth_server` (client_id with client_secret or client_secret_env): RFC 7662 introspection authenticates a client, not a mesh identity",
                    ));
                }
                let Some(idx) = issuers.iter().position(|i| i.issuer == x.issuer) else {
                    return Err(bad(
                        "introspection.issuer",
                        format!("{:?} is not one of issuers[].issuer", x.issuer),
                    ));
                };
                if !x.path.starts_with('/') {
                    return Err(bad("introspection.path", "must start with '/'"));
                }
                if x.max_ttl_s == 0 || x.max_ttl_s > 86_400 {
                    return Err(bad("introspection.max_ttl_s", "must be within 1..=86400"));
                }
                if x.negative_ttl_s > 3600 {
                    return Err(bad("introspection.negative_ttl_s", "must be at most 3600"));
                }
                if x.slots == 0 || x.slots > 1_048_576 {
                    return Err(bad("introspection.slots", "must be within 1..=1048576"));
                }
                let shape = check_token_shape(x.token_shape, raw.max_token_bytes)?;
                let miss_limit = check_miss_limit(x.miss_limit, &fingerprint, rl_slots)?;
                Some(Introspection {
                    issuer: idx,
                    path: x.path,
                    settings: introspection::Settings {
                        namespace: fingerprint.clone(),
                        slots: x.slots,
                        max_ttl_s: x.max_ttl_s,
                        negative_ttl_s: x.negative_ttl_s,
                        pending_ms: a.timeout_ms.saturating_add(1000),
                    },
                    fail_mode: x.fail_mode,
                    shape,
                    miss_limit,
                })
            }
        };
        let client_ip = ClientIp {
            header: match raw.client_ip.header {
                Some(h) => Some(check_header_name("client_ip.header", &h)?),
                None => None,
            },
            xff_hops: raw.client_ip.xff_hops,
        };
        if client_ip.xff_hops > 64 {
            return Err(bad("client_ip.xff_hops", "must be at most 64"));
        }
        if !raw.rate_limit.lease_path.starts_with('/') {
            return Err(bad("rate_limit.lease_path", "must start with '/'"));
        }
        if auth_server.is_none() {
            if let Some(i) = rules
                .iter()
                .position(|r| r.rate_limit.as_ref().is_some_and(|l| l.global.is_some()))
            {
                return Err(bad(
                    format!("rules[{i}].rate_limit.mode"),
                    "\"global\" needs `auth_server` (the leases come from it)",
                ));
            }
        }

        Ok(Config {
            auth_server,
            revocation,
            introspection,
            client_ip,
            rate_limit_response_headers: raw.rate_limit.response_headers,
            lease_path: raw.rate_limit.lease_path,
            issuers,
            token_sources,
            clock_skew_s: raw.clock_skew_s,
            max_token_bytes: raw.max_token_bytes,
            cache_slots: raw.cache.slots,
            cache_max_ttl_s: raw.cache.max_ttl_s,
            cache_local_entries: raw.cache.local_entries,
            rules,
            default_policy,
            headers: HeaderNames {
                sub,
                client_id,
                scope,
                iss,
                claims,
                strip_authorization: h.strip_authorization,
                strip_prefix,
                remove,
                remove_folded,
                strip_prefix_folded,
            },
            realm: raw.realm,
            jwks_max_wait_ms: raw.jwks_wait.max_wait_ms,
            jwks_wait_status: raw.jwks_wait.status,
            tick_ms: raw.tick_ms,
            fingerprint,
            dpop,
        })
    }

    /// The issuer with this exact `iss` value, with its index.
    pub fn issuer(&self, iss: &str) -> Option<(usize, &Issuer)> {
        self.issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
    }
}

fn check_token_shape(
    t: RawTokenShape,
    max_token_bytes: usize,
) -> Result<crate::opaque::Shape, ConfigError> {
    let f = |n: &str| format!("introspection.token_shape.{n}");
    if t.min_length == 0 || t.min_length < t.prefix.len() {
        return Err(bad(
            f("min_length"),
            "must be at least 1 and the prefix's length",
        ));
    }
    if t.max_length < t.min_length || t.max_length > max_token_bytes {
        return Err(bad(
            f("max_length"),
            "must be within min_length..=max_token_bytes",
        ));
    }
    let shape = crate::opaque::Shape {
        prefix: t.prefix,
        min_length: t.min_length,
        max_length: t.max_length,
        charset: t.charset,
    };
    if !shape.prefix.is_empty() && !shape.fits(&format!("{:A<1$}", shape.prefix, shape.min_length))
    {
        return Err(bad(
            f("prefix"),
            "holds characters the charset does not allow",
        ));
    }
    Ok(shape)
}

fn check_miss_limit(
    m: RawMissLimit,
    fingerprint: &str,
    slots: u32,
) -> Result<Option<ratelimit::Limit>, ConfigError> {
    let f = |n: &str| format!("introspection.miss_limit.{n}");
    if m.requests == 0 {
        return Ok(None);
    }
    if m.requests > 1_000_000_000 {
        return Err(bad(
            f("requests"),
            "must be at most 1000000000 (0: no limit)",
        ));
    }
    if m.period_s == 0 || m.period_s > 86_400 {
        return Err(bad(f("period_s"), "must be within 1..=86400"));
    }
    let burst = m.burst.unwrap_or(m.requests);
    if burst == 0 || burst > 1_000_000_000 {
        return Err(bad(f("burst"), "must be within 1..=1000000000"));
    }
    Ok(Some(ratelimit::Limit {
        namespace: format!("{fingerprint}/introspection-miss"),
        requests: m.requests,
        period_s: m.period_s,
        burst,
        slots,
    }))
}

const KEY_HELP: &str = "use \"client_id\", \"sub\", \"client_ip\" or {\"header\": name}";

fn check_limit(
    prefix: &str,
    l: RawRuleLimit,
    rule_name: &str,
    namespace: String,
    slots: u32,
) -> Result<RuleLimit, ConfigError> {
    if l.requests == 0 || l.requests > 1_000_000_000 {
        return Err(bad(
            format!("{prefix}requests"),
            "must be within 1..=1000000000",
        ));
    }
    if l.period_s == 0 || l.period_s > 86_400 * 366 {
        return Err(bad(
            format!("{prefix}period_s"),
            "must be within 1..=31622400",
        ));
    }
    let burst = l.burst.unwrap_or(l.requests);
    if burst == 0 || burst > 1_000_000_000 {
        return Err(bad(
            format!("{prefix}burst"),
            "must be within 1..=1000000000",
        ));
    }
    let key = match l.key {
        RawLimitKey::Named(k) => match k.as_str() {
            "client_id" => LimitKey::ClientId,
            "sub" => LimitKey::Sub,
            "client_ip" => LimitKey::ClientIp,
            other => {
                let msg = format!("{other:?}: {KEY_HELP}");
                return Err(bad(format!("{prefix}key"), msg));
            }
        },
        RawLimitKey::Header { header } => {
            LimitKey::Header(check_header_name(&format!("{prefix}key.header"), &header)?)
        }
    };
    let name = l.name.unwrap_or_else(|| rule_name.to_string());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(bad(
            format!("{prefix}name"),
            "1..64 visible ASCII characters without '\"' or '\\' (defaults to the rule name)",
        ));
    }
    let global = match l.mode {
        RawLimitMode::Local => {
            if l.lease.is_some() || l.fail_mode.is_some() {
                return Err(bad(
                    format!("{prefix}mode"),
                    "`lease` and `fail_mode` need \"mode\": \"global\"",
                ));
            }
            None
        }
        RawLimitMode::Global => {
            if l.period_s > 86_400 {
                return Err(bad(
                    format!("{prefix}period_s"),
                    "must be within 1..=86400 in global mode (the lease window)",
                ));
            }
            let lease = l.lease.unwrap_or((l.requests / 10).clamp(1, l.requests));
            if lease == 0 || lease > l.requests {
                return Err(bad(
                    format!("{prefix}lease"),
                    format!("must be within 1..={} (the rule's requests)", l.requests),
                ));
            }
            Some(lease::Policy {
                namespace: namespace.clone(),
                name: name.clone(),
                slots,
                requests: l.requests,
                window_s: l.period_s,
                lease,
                fail_mode: l.fail_mode.unwrap_or_default(),
            })
        }
    };
    let limit = ratelimit::Limit {
        namespace,
        requests: l.requests,
        period_s: l.period_s,
        burst,
        slots,
    };
    // Global mode: the window holds `requests`, whatever the local fallback's burst.
    let policy_header = if global.is_some() {
        format!("\"{name}\";q={};w={}", l.requests, l.period_s)
    } else {
        limit.policy_header(&name)
    };
    Ok(RuleLimit {
        policy_header,
        name,
        key,
        limit,
        global,
    })
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 for Basic).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_policy(prefix: &str, p: &Policy) -> Result<(), ConfigError> {
    if p.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return Err(bad(
            format!("{prefix}scopes"),
            "scopes are single non-empty words",
        ));
    }
    if p.scopes.iter().any(|s| s.contains('"') || s.contains('\\')) {
        return Err(bad(
            format!("{prefix}scopes"),
            "scopes must not contain '\"' or '\\'",
        ));
    }
    if p.allow_anonymous && (!p.scopes.is_empty() || !p.audiences.is_empty()) {
        return Err(bad(
            format!("{prefix}allow_anonymous"),
            "an anonymous rule cannot also require scopes or audiences",
        ));
    }
    if p.allow_anonymous && p.sender_constrained {
        return Err(bad(
            format!("{prefix}require"),
            "an anonymous rule cannot require a sender-constrained token",
        ));
    }
    Ok(())
}

fn check_dpop(d: RawDpop, env: &dyn Fn(&str) -> Option<String>) -> Result<Dpop, ConfigError> {
    if !(1..=600).contains(&d.iat_window_s) {
        return Err(bad("dpop.iat_window_s", "must be within 1..=600"));
    }
    if !(512..=16384).contains(&d.max_proof_bytes) {
        return Err(bad("dpop.max_proof_bytes", "must be within 512..=16384"));
    }
    if !(1..=65536).contains(&d.replay_shards) {
        return Err(bad("dpop.replay_shards", "must be within 1..=65536"));
    }
    if !(1..=1024).contains(&d.replay_entries_per_shard) {
        return Err(bad(
            "dpop.replay_entries_per_shard",
            "must be within 1..=1024",
        ));
    }
    let scheme_header = match d.scheme_header {
        None => None,
        Some(h) => Some(check_header_name("dpop.scheme_header", &h)?),
    };
    let nonce = match d.nonce {
        None => None,
        Some(n) => {
            if !(10..=3600).contains(&n.lifetime_s) {
                return Err(bad("dpop.nonce.lifetime_s", "must be within 10..=3600"));
            }
            let name = &n.secret_env;
            let valid = name.bytes().next().is_some_and(|c| !c.is_ascii_digit())
                && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
            if !valid {
                return Err(bad(
                    "dpop.nonce.secret_env",
                    "must name an environment variable ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            let Some(secret) = env(name) else {
                return Err(bad(
                    "dpop.nonce.secret_env",
                    format!("the environment variable {name} is not set in the Wasm VM (EnvoyFilter vm_config.environment_variables, WasmPlugin vmConfig.env)"),
                ));
            };
            if secret.len() < 32 {
                return Err(bad(
                    "dpop.nonce.secret_env",
                    format!("the secret in {name} must be at least 32 bytes"),
                ));
            }
            Some(DpopNonce {
                key: secret.into_bytes(),
                lifetime_s: n.lifetime_s,
            })
        }
    };
    Ok(Dpop {
        iat_window_s: d.iat_window_s,
        max_proof_bytes: d.max_proof_bytes,
        replay_shards: d.replay_shards,
        replay_entries_per_shard: d.replay_entries_per_shard,
        scheme_header,
        nonce,
    })
}

/// `typ` values compare case-insensitively with an optional `application/` prefix (RFC 7515 §4.1.9).
pub fn normalize_typ(t: &str) -> String {
    let l = t.to_ascii_lowercase();
    l.strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(l)
}
