//! Storage: the one trait the HTTP handlers and jobs talk to, and its two implementations
//! (Redis for production, in-memory for local runs and tests). Both pass the same
//! conformance suite (`conformance.rs`), TTLs included.
//!
//! Redis layout (DB 0, auth data), see docs/architecture.md:
//! `auth:client:{id}` hash, `auth:access_token:{jti}` hash+TTL, `auth:blacklist:{jti}`
//! string+TTL, `auth:rate_limit:{key}` counter+TTL, `auth:rate_limit:lease:{key}`
//! counter+TTL (quota leases of the edge filters' global mode), `auth_token_cleanup` sorted
//! set of expiries, `auth_stats` hash of counters, `auth_config` hash, `auth:keys` hash of
//! signing keys, `auth:revocation_feed` sorted set + `auth:revocation_seq` counter.
//! Service cache (DB 1): `cache:resource:{service}:*`, `cache_stats`, `cache_config`,
//! `cache_cleanup_metrics`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod memory;
pub mod redis;
pub mod url;

#[cfg(test)]
mod conformance;

pub use self::url::StoreUrl;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now (connection refused, failover in progress,
    /// timeout). Callers answer 503 and may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record exists already (e.g. registering a client_id twice).
    #[error("already exists: {0}")]
    Conflict(String),
    /// Stored data could not be decoded.
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The backend answered with an error that is not a connectivity problem.
    #[error("store error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A registered OAuth client. `metadata` holds the RFC 7591 metadata as registered
/// (without the secret); the secret exists only as `secret_hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    /// Keyed hash of the client secret; `None` for public clients.
    pub secret_hash: Option<String>,
    /// Keyed hash of the RFC 7592 registration access token.
    pub registration_token_hash: Option<String>,
    pub metadata: ClientMetadata,
    pub created_at: u64,
    pub updated_at: u64,
}

/// RFC 7591 client metadata plus Tollgate's own fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    pub grant_types: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_types: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: String,
    /// Space-separated scopes the client may request.
    pub scope: String,
    /// Audiences (resource identifiers) the client may request; the first is the default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// `jwt` (default) or `opaque`.
    pub access_token_format: String,
    /// Per-client access-token lifetime override, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl: Option<u64>,
    /// RFC 9449 §5.2: every token request of the client must carry a DPoP proof.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dpop_bound_access_tokens: bool,
    /// RFC 8705 §3.4: the client's access tokens are bound to its mTLS client certificate
    /// (from the mesh sidecar, `TOLLGATE_CERT_BOUND_TOKENS`); a token request without one
    /// is refused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_client_certificate_bound_access_tokens: bool,
    /// Any other registered metadata, kept and returned as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What the server remembers of an issued access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub jti: String,
    pub client_id: String,
    pub sub: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// SHA-256 (hex) of the token string as issued: introspection compares it in constant
    /// time, so a guessed `jti` with a forged token is never active.
    pub token_hash: String,
    /// `jwt` or `opaque`.
    pub format: String,
    /// RFC 8693 `act` claim (JSON) of a token minted by token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<String>,
    /// The [`UserRecord::id`] of the user the token speaks for (`None`: a client's own
    /// token). Stores index the token under it and under its client ([`Owned::AccessTokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// RFC 9449: the thumbprint of the key the token is bound to (`cnf.jkt`), for a DPoP
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf_jkt: Option<String>,
    /// RFC 8705: the SHA-256 thumbprint (base64url) of the client certificate the token is
    /// bound to (`cnf.x5t#S256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf_x5t: Option<String>,
}

/// A user who can log in at the authorization endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: u64,
    /// Random, given at creation: what sessions, codes and tokens of the user carry, so that
    /// a user re-created under the same name inherits none of them. Empty in records written
    /// before it existed (see [`UserRecord::id`]).
    #[serde(default)]
    pub user_id: String,
}

impl UserRecord {
    /// The user's id; for a record without one, an id derived from name and creation time
    /// (never equal to a random one, and different for a re-created user).
    pub fn id(&self) -> String {
        if self.user_id.is_empty() {
            format!("legacy.{}.{}", self.username, self.created_at)
        } else {
            self.user_id.clone()
        }
    }
}

/// A login session (`auth:session:{sha256 of the cookie}`), alive until `exp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub username: String,
    /// [`UserRecord::id`] of the user who logged in; a session is valid only while a user of
    /// that name and id exists. Stores index it under the user ([`Owned::Sessions`]).
    #[serde(default)]
    pub user_id: String,
    pub auth_time: u64,
    pub exp: u64,
}

/// An authorization code as stored (by the SHA-256 of the code), alive until `exp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthCodeRecord {
    pub client_id: String,
    /// The redirect URI the code was delivered to.
    pub redirect_uri: String,
    /// Whether the authorization request carried `redirect_uri` (then the token request
    /// must repeat it, RFC 6749 §4.1.3).
    pub redirect_uri_given: bool,
    pub scope: String,
    pub aud: String,
    /// The user.
    pub sub: String,
    /// [`UserRecord::id`] of the user.
    #[serde(default)]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge_method: Option<String>,
    /// The token family (grant) every token minted from this code belongs to.
    pub grant_id: String,
    pub auth_time: u64,
    pub exp: u64,
    /// RFC 9449 §10: the `dpop_jkt` of the authorization request; the code is redeemed only
    /// with a DPoP proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

/// A refresh token as stored (by its SHA-256), alive until `exp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    pub client_id: String,
    pub sub: String,
    /// [`UserRecord::id`] of the user `sub` names: refresh works only while that very user
    /// exists.
    #[serde(default)]
    pub user_id: String,
    pub scope: String,
    pub aud: String,
    pub grant_id: String,
    pub iat: u64,
    pub exp: u64,
    /// RFC 9449 §5: the thumbprint of the DPoP key a public client's refresh token is bound
    /// to; it is redeemed only with a proof by that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

/// The result of consuming a single-use artefact (code or refresh token).
#[derive(Debug, Clone, PartialEq)]
pub enum Consumed<T> {
    /// Unknown or expired.
    Missing,
    /// It exists but was issued to another client; it was left untouched.
    WrongClient,
    /// First use: it is now marked used.
    Fresh(T),
    /// It had been used before (a replay).
    Replayed(T),
}

/// The members of a token family (one authorization grant).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyTokens {
    /// Access tokens: `(jti, exp)`.
    pub access: Vec<(String, u64)>,
    /// SHA-256 of every refresh token.
    pub refresh: Vec<String>,
}

/// The Redis pub/sub channel a revocation is announced on (payload: its feed sequence
/// number). In a Cluster a classic `PUBLISH` reaches the subscribers of every node.
pub const REVOCATION_CHANNEL: &str = "auth:{revocations}:published";

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    pub jti: String,
    pub exp: u64,
}

/// A page of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub cursor: u64,
    /// The requested cursor was older than the retained feed: `entries` is the full list of
    /// unexpired revocations and replaces what the reader has.
    pub resync: bool,
    pub entries: Vec<RevokedEntry>,
}

/// What a user or a client owns, indexed so that deleting the user or client can end it
/// (`auth:owned:{kind}:{owner}`, a sorted set of members scored by expiry). The owner is
/// [`user_owner`] or [`client_owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owned {
    /// Access tokens by `jti` (indexed by `save_access_token` under the token's client and
    /// its user).
    AccessTokens,
    /// Token families by grant id (indexed with [`Store::index_owned`]).
    Grants,
    /// Login sessions by the hash of the cookie (indexed by `save_session` under the user).
    Sessions,
}

impl Owned {
    pub fn as_str(self) -> &'static str {
        match self {
            Owned::AccessTokens => "tokens",
            Owned::Grants => "grants",
            Owned::Sessions => "sessions",
        }
    }
}

/// The owner key of a user (by [`UserRecord::id`]).
pub fn user_owner(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The owner key of a client.
pub fn client_owner(client_id: &str) -> String {
    format!("client:{client_id}")
}

/// Result of a fixed-window rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_after: u64,
}

/// The answer to a quota lease (`auth:rate_limit:lease:{key}`, a fixed window that starts
/// at the first lease of the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Requests granted by this lease: `min(want, limit - used)`, possibly 0.
    pub granted: u64,
    /// Requests granted in this window so far, this lease included.
    pub used: u64,
    pub limit: u64,
    /// Milliseconds until the window ends (at least 1).
    pub reset_ms: u64,
}

/// A signing key as stored (shared by all replicas). The private key is sealed under a
/// key-encryption key (`sealed_private_key`); `private_pem` holds it in clear only in records
/// written without a KEK (before encryption at rest, or a development run without one),
/// which the server seals at start (`keys::seal_clear_keys`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    /// PKCS#8 PEM of the private key in clear; empty when sealed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_pem: String,
    /// The PKCS#8 PEM sealed under a KEK, with the kid as associated data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_private_key: Option<crate::crypto::Sealed>,
    pub created_at: u64,
    /// From this time on the key may sign (it is published in the JWKS from `created_at`).
    pub active_from: u64,
    /// When set, the key no longer signs from this time and is dropped from the JWKS once
    /// every token it signed has expired (`retire_at` + access-token TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<u64>,
}

/// Never the private key, not even in a test's assertion message.
impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("in_clear", &!self.private_pem.is_empty())
            .field(
                "sealed_under",
                &self.sealed_private_key.as_ref().map(|s| &s.kek_id),
            )
            .field("created_at", &self.created_at)
            .field("active_from", &self.active_from)
            .field("retire_at", &self.retire_at)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    pub expired_tokens: u64,
    pub feed_entries_trimmed: u64,
    pub keys_removed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub default_ttl: u64,
    pub max_entries_per_service: u64,
}

impl CacheConfig {
    pub const DEFAULT: CacheConfig = CacheConfig {
        default_ttl: 86_400,
        max_entries_per_service: 10_000,
    };
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheCleanupReport {
    pub services: u64,
    pub entries: u64,
    pub ttl_set: u64,
    pub trimmed: u64,
}

/// What `authserver status` reports about the backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendInfo {
    pub kind: String,
    pub role: String,
    pub details: BTreeMap<String, String>,
}

/// The auth server's storage. Every method is one logical operation; multi-key writes are
/// atomic in every implementation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn ping(&self) -> StoreResult<()>;
    async fn backend_info(&self) -> StoreResult<BackendInfo>;

    // Clients
    /// Create a client; `Conflict` when the id exists.
    async fn create_client(&self, client: &ClientRecord) -> StoreResult<()>;
    /// Create or replace a client (used by `init`, which is idempotent).
    async fn put_client(&self, client: &ClientRecord) -> StoreResult<()>;
    async fn get_client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>>;
    /// The same record for a request path, where a store may answer from its client cache
    /// (Redis: kept only while its invalidation subscription is up, and for at most
    /// `TOLLGATE_CLIENT_CACHE_SECONDS`; see `redis/client_cache.rs`), and whether it did.
    /// A caller that rejects a cached record (a wrong secret, say) re-reads it with
    /// [`Store::get_client`] before it refuses, so a change made through another replica
    /// takes effect at once.
    async fn get_client_cached(
        &self,
        client_id: &str,
    ) -> StoreResult<(Option<ClientRecord>, bool)> {
        Ok((self.get_client(client_id).await?, false))
    }
    async fn delete_client(&self, client_id: &str) -> StoreResult<bool>;
    async fn list_client_ids(&self) -> StoreResult<Vec<String>>;

    // Access tokens
    /// Record an issued access token (with its cleanup entry, the issuance counter and its
    /// [`Owned::AccessTokens`] entries under its client and, with `user_id`, its user) in one
    /// round trip. The record expires at `exp`.
    async fn save_access_token(&self, rec: &AccessTokenRecord) -> StoreResult<()>;
    /// The record and whether the `jti` is revoked, in one round trip.
    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)>;
    /// Put `jti` on the blacklist and append it to the revocation feed, both kept until
    /// [`revocation_kept_until`]`(exp)`. Returns false when it was already revoked
    /// (idempotent) or its revocation would already be forgotten.
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool>;
    async fn is_revoked(&self, jti: &str) -> StoreResult<bool>;
    /// Revocations after `since` (`None`: all). A cursor older than the retained feed, or
    /// in the future, yields a `resync` page.
    async fn revocation_feed(&self, since: Option<u64>, limit: usize) -> StoreResult<FeedPage>;
    /// A signal that changes after every revocation appended to the feed, by this process
    /// or (Redis) by any replica; its value is the highest feed sequence number (cursor)
    /// announced: one Redis subscription per process (channel
    /// [`REVOCATION_CHANNEL`]) fans out to every receiver. Long-poll readers of the feed
    /// take a receiver, read the feed, and wait for a change before reading it again. Best
    /// effort: a wake-up lost while the subscription reconnects is made up by a periodic
    /// check of the feed's sequence number.
    fn revocation_signal(&self) -> tokio::sync::watch::Receiver<u64>;
    async fn count_live_tokens(&self, now: u64) -> StoreResult<u64>;

    // Rate limits (fixed window)
    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
    ) -> StoreResult<RateDecision>;
    /// The current count of a window without counting (0 when none is open).
    async fn peek_rate(&self, key: &str) -> StoreResult<u64>;
    /// Take a quota lease of up to `want` requests from the window of `key` (its own
    /// namespace, `auth:rate_limit:lease:{key}`), atomically: the sum of `granted` over a
    /// window never exceeds `limit`. The window opens at the first lease (length
    /// `window_secs`) and is not extended by later leases.
    async fn rate_lease(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
        want: u64,
    ) -> StoreResult<Lease>;

    // Signing keys
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>>;
    async fn put_key(&self, key: &StoredKey) -> StoreResult<()>;
    /// Replace the record `expected.kid` with `new` only if it is still `expected`
    /// (compare-and-set, atomic): false when it changed or is gone. Re-encryption and
    /// retirement use it so that neither loses the other's concurrent write. A retry of a
    /// replacement that went through answers true.
    async fn replace_key(&self, expected: &StoredKey, new: &StoredKey) -> StoreResult<bool>;
    async fn delete_key(&self, kid: &str) -> StoreResult<()>;

    // Counters and configuration
    async fn incr_stats(&self, counters: &[(&str, i64)]) -> StoreResult<()>;
    async fn get_stats(&self) -> StoreResult<BTreeMap<String, i64>>;
    async fn get_config(&self) -> StoreResult<BTreeMap<String, String>>;
    async fn set_config(&self, values: &BTreeMap<String, String>) -> StoreResult<()>;

    // Users
    /// Create a user; `Conflict` when the name is taken.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    async fn delete_user(&self, username: &str) -> StoreResult<bool>;
    /// Every user, sorted by name.
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;

    // Login sessions, keyed by the SHA-256 of the session cookie
    /// Save a session and, with a `user_id`, index it under the user ([`Owned::Sessions`]).
    async fn save_session(&self, id_hash: &str, rec: &SessionRecord) -> StoreResult<()>;
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;

    // Authorization codes and refresh tokens: single use, consumption is atomic; a used
    // one is kept (marked) until it expires so that a replay is recognised.
    async fn save_auth_code(&self, code_hash: &str, rec: &AuthCodeRecord) -> StoreResult<()>;
    /// Mark the code used, unless it belongs to another client than `client_id`.
    async fn consume_auth_code(
        &self,
        code_hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<AuthCodeRecord>>;
    async fn save_refresh_token(&self, hash: &str, rec: &RefreshTokenRecord) -> StoreResult<()>;
    /// Mark the refresh token used (rotated), unless it belongs to another client.
    async fn consume_refresh_token(
        &self,
        hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<RefreshTokenRecord>>;
    /// Give back a refresh token this caller consumed (`Consumed::Fresh`) when it then
    /// failed to issue anything (the store went away mid-request): it is unused again, unless
    /// it was presented again meanwhile (a replay stays a replay). Best effort.
    async fn release_refresh_token(&self, hash: &str) -> StoreResult<()>;
    /// As [`Store::release_refresh_token`], for an authorization code.
    async fn release_auth_code(&self, code_hash: &str) -> StoreResult<()>;
    /// The record and whether it was used (rotated) already.
    async fn get_refresh_token(
        &self,
        hash: &str,
    ) -> StoreResult<Option<(RefreshTokenRecord, bool)>>;
    async fn delete_refresh_tokens(&self, hashes: &[String]) -> StoreResult<()>;

    // Token families (`auth:family:{grant_id}:*`, one hash tag)
    /// Add tokens to a family, atomically refused (false) when the family is revoked. The
    /// family's lists live until `exp`.
    async fn family_add(
        &self,
        grant_id: &str,
        access: &[(String, u64)],
        refresh: &[String],
        exp: u64,
    ) -> StoreResult<bool>;
    /// Mark the family revoked until `exp` (so nothing joins it any more) and return its
    /// members. Idempotent.
    async fn revoke_family(&self, grant_id: &str, exp: u64) -> StoreResult<FamilyTokens>;
    async fn family_revoked(&self, grant_id: &str) -> StoreResult<bool>;

    /// Claim a one-time identifier (a client assertion's `jti`) until `exp`; false when it
    /// was claimed before.
    async fn claim_assertion_jti(&self, key: &str, exp: u64) -> StoreResult<bool>;

    // Proof of possession (DPoP, RFC 9449)
    /// Record that the key with thumbprint `jkt` used the proof `jti`, until `exp` (as long
    /// as the proof could be accepted): true the first time, false for a replay. Insert if
    /// absent, one key (`auth:dpop_jti:{sha256}`).
    async fn claim_dpop_jti(&self, jkt: &str, jti: &str, exp: u64) -> StoreResult<bool>;

    // Ownership (what a deleted user or client ends; see [`Owned`])
    /// Index `member` under each of `owners` until `exp` (an index lives as long as its
    /// longest-lived member; expired members are dropped as new ones come).
    async fn index_owned(
        &self,
        owners: &[String],
        kind: Owned,
        member: &str,
        exp: u64,
    ) -> StoreResult<()>;
    /// The members of `owner`'s index of `kind` that expire after `now`, with their expiry.
    async fn list_owned(
        &self,
        owner: &str,
        kind: Owned,
        now: u64,
    ) -> StoreResult<Vec<(String, u64)>>;
    /// Drop `owner`'s index of `kind` (after its members were ended).
    async fn clear_owned(&self, owner: &str, kind: Owned) -> StoreResult<()>;

    /// One pass of the token cleanup: drop expired entries from `auth_token_cleanup` (and
    /// any token record left behind), trim expired revocations from the feed.
    async fn cleanup(&self, now: u64, feed_retention_secs: u64) -> StoreResult<CleanupReport>;
}

/// The service cache (DB 1), maintained by `authserver cache-cleanup`.
#[async_trait]
pub trait ServiceCache: Send + Sync + 'static {
    /// Store an entry `cache:resource:{service}:{key}` (what services do).
    async fn cache_put(
        &self,
        service: &str,
        key: &str,
        value: &str,
        ttl: Option<u64>,
    ) -> StoreResult<()>;
    /// Read an entry, refreshing its recency.
    async fn cache_get(&self, service: &str, key: &str) -> StoreResult<Option<String>>;
    async fn cache_config(&self) -> StoreResult<CacheConfig>;
    async fn set_cache_config(&self, cfg: &CacheConfig) -> StoreResult<()>;
    /// Give entries without a TTL the default TTL, trim each service to its maximum, least
    /// recently used first, and record `cache_stats` and `cache_cleanup_metrics`.
    async fn cache_cleanup(&self, now: u64) -> StoreResult<CacheCleanupReport>;
    async fn cache_stats(&self) -> StoreResult<BTreeMap<String, String>>;
}

/// How long after a revoked access token's `exp` its revocation is kept (blacklist, feed,
/// full listing): the edge filter accepts a token until `exp + clock_skew_s`, and 600 s is
/// the largest skew its configuration allows. Forgetting at `exp` would let a revoked token
/// pass again for up to the skew.
pub const REVOCATION_RETENTION_SECS: u64 = 600;

/// Until when (Unix s) the revocation of a token expiring at `exp` is kept.
pub fn revocation_kept_until(exp: u64) -> u64 {
    exp.saturating_add(REVOCATION_RETENTION_SECS)
}

/// The name of a used DPoP proof in the store: SHA-256 of the key's thumbprint and the
/// `jti` (bounded length, whatever the client sent).
pub fn dpop_jti_hash(jkt: &str, jti: &str) -> String {
    crate::crypto::token_hash(&format!("{jkt} {jti}"))
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
