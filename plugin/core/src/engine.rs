//! The filter's decisions, independent of proxy-wasm: what to do with a request (token,
//! revocation, route policy, rate limit), when to fetch a JWKS or poll the revocation feed,
//! when to introspect an opaque token, what to do with the answers, and what becomes of
//! requests that wait (for a first JWKS, or for an introspection answer). The glue turns
//! [`Outcome`]s and [`FetchPlan`]s into hostcalls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::cache::{self, TokenHash};
use crate::config::{Config, FailMode, LimitKey, Policy, RuleLimit};
use crate::host::{Host, Level};
use crate::identity::Identity;
use crate::introspection::{self, State};
use crate::jwks::{self, JwksMeta, KeySet, WorkerKeys};
use crate::jwt::{self, Alg, KeySource, VerifyError};
use crate::lease::{self, KeyHash, LeaseFailMode, Spend};
use crate::metrics::Metric;
use crate::ratelimit;
use crate::reject::{self, Rejection};
use crate::revocation;
use crate::rules::{self, RouteInfo};
use crate::token::{self, Found};

/// The parts of a request the filter reads.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Every request header as received, lower-case names (pseudo-headers may be included).
    pub headers: Vec<(String, String)>,
    /// The downstream peer address (`source.address`, `ip:port`), empty when unknown.
    pub source: String,
}

impl Request {
    /// Build from a header list (as `get_http_request_headers` returns it).
    pub fn from_headers(headers: Vec<(String, String)>) -> Request {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Request {
            method: get(":method"),
            path: get(":path"),
            authority: get(":authority"),
            headers,
            source: String::new(),
        }
    }

    /// The first value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The client address: the configured trusted header, else the `xff_hops`-th address
    /// from the right of `X-Forwarded-For` (1 = the rightmost, added by the proxy in front),
    /// else the downstream peer address without its port.
    pub fn client_ip(&self, cfg: &crate::config::ClientIp) -> String {
        if let Some(v) = cfg.header.as_deref().and_then(|h| self.header(h)) {
            let v = v.trim();
            if !v.is_empty() {
                return v.to_string();
            }
        }
        if cfg.xff_hops > 0 {
            let all: Vec<&str> = self
                .headers
                .iter()
                .filter(|(k, _)| k == "x-forwarded-for")
                .flat_map(|(_, v)| v.split(','))
                .map(str::trim)
                .collect();
            let hops = cfg.xff_hops as usize;
            if all.len() >= hops {
                let ip = all[all.len() - hops];
                if !ip.is_empty() {
                    return ip.to_string();
                }
            }
        }
        strip_port(&self.source).to_string()
    }
}

fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // One colon: ip:port. More: a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}

/// A bearer token carried inside an [`Outcome`]: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(pub String);

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(..)")
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it, after setting these headers and removing these; add `response_headers`
    /// to the upstream's answer (rate-limit headers).
    Allow {
        set: Rc<[(String, String)]>,
        remove: Vec<String>,
        response_headers: Vec<(String, String)>,
    },
    /// Answer locally.
    Reject(Rejection),
    /// The issuer's JWKS was never loaded: hold the request until it is (or time out).
    WaitForJwks { issuer: usize },
    /// An opaque token this worker claimed: hold the request and dispatch
    /// [`Worker::introspection_plan`]; the answer goes to [`Worker::on_introspection`].
    Introspect { hash: TokenHash, token: SecretToken },
    /// Another request (of this or another worker) is introspecting this token: hold the
    /// request until the answer is in shared data.
    WaitForIntrospection { hash: TokenHash },
    /// A globally rate-limited key without a lease: hold the request (see
    /// [`Worker::hold_lease`]) until the root tick's lease call is answered (or times out).
    WaitForLease { rule: usize, hash: KeyHash },
}

/// What a [`FetchPlan`] is for (and where its answer goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A JWKS: [`Worker::on_fetch`].
    Jwks { issuer: usize },
    /// The revocation feed: [`Worker::on_revocations`].
    Revocations,
    /// An introspection: [`Worker::on_introspection`].
    Introspection { hash: TokenHash },
    /// A rate-limit lease for `rule`'s key `hash`, sent at `sent_ms` asking for `want`:
    /// [`Worker::on_lease`].
    Lease {
        rule: usize,
        hash: KeyHash,
        sent_ms: u64,
        want: u64,
    },
}

/// An HTTP call the glue must dispatch (`dispatch_http_call`).
#[derive(Clone, PartialEq, Eq)]
pub struct FetchPlan {
    pub kind: FetchKind,
    pub cluster: String,
    pub method: &'static str,
    pub path: String,
    pub authority: String,
    /// Extra request headers (may hold credentials: never logged).
    pub headers: Vec<(String, String)>,
    /// Request body (may hold a token: never logged).
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl FetchPlan {
    /// The JWKS issuer index, for JWKS fetches.
    pub fn issuer(&self) -> Option<usize> {
        match self.kind {
            FetchKind::Jwks { issuer } => Some(issuer),
            _ => None,
        }
    }
}

impl std::fmt::Debug for FetchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchPlan")
            .field("kind", &self.kind)
            .field("cluster", &self.cluster)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// A request held until an introspection answer is in shared data.
#[derive(Debug, Clone)]
pub struct IntroWaiter {
    pub context_id: u32,
    pub hash: TokenHash,
    pub deadline_ms: u64,
    pub request: Request,
}

/// A request held until a rate-limit lease is answered.
#[derive(Debug, Clone)]
pub struct LeaseWaiter {
    pub context_id: u32,
    pub rule: usize,
    pub hash: KeyHash,
    pub deadline_ms: u64,
    pub request: Request,
}

/// Most keys a worker remembers to ask a lease for at its next tick.
const MAX_WANTED: usize = 4096;

/// A worker writes at most one warning per this interval about one failing dependency
/// (introspection, rate-limit leases), whose failures can come with every request.
pub const WARN_EVERY_MS: u64 = 10_000;

/// Rate limit of one kind of warning: during an outage of the auth server every request
/// with a new opaque token (or every lease call) fails, and a warning each would flood the
/// log of a busy gateway (and let anyone sending made-up tokens write it). The metrics still
/// count every failure; a warning says how many were not logged since the previous one.
#[derive(Debug, Default)]
struct WarnThrottle {
    /// When the last warning was written (Unix ms); `None`: never.
    last_ms: std::cell::Cell<Option<u64>>,
    /// Warnings left out since then.
    suppressed: std::cell::Cell<u64>,
}

impl WarnThrottle {
    /// Write `msg` at warning level unless a warning of this kind was written in the last
    /// [`WARN_EVERY_MS`]; then it is only counted.
    fn warn(&self, host: &dyn Host, msg: &str) {
        let now = host.now_ms();
        if matches!(self.last_ms.get(), Some(t) if now.saturating_sub(t) < WARN_EVERY_MS) {
            self.suppressed.set(self.suppressed.get().saturating_add(1));
            return;
        }
        self.last_ms.set(Some(now));
        match self.suppressed.replace(0) {
            0 => host.log(Level::Warn, msg),
            n => host.log(
                Level::Warn,
                &format!(
                    "{msg} ({n} more like it in the last {} s)",
                    WARN_EVERY_MS / 1000
                ),
            ),
        }
    }
}

/// A request held until a first JWKS arrives.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub deadline_ms: u64,
    pub issuer: usize,
    pub request: Request,
}

/// Key of a worker's local cache: the whole token (never shown by `Debug`). Lookups hash
/// it with std's per-process random SipHash key and compare it in full, so two tokens
/// never share an entry.
#[derive(PartialEq, Eq, Hash)]
struct LocalKey(Box<str>);

impl std::borrow::Borrow<str> for LocalKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKey(..)")
    }
}

/// A verified token in a worker's local cache: identity and ready-made headers.
#[derive(Debug)]
struct LocalEntry {
    expires_at: u64,
    identity: Identity,
    headers: Rc<[(String, String)]>,
}

/// Per-worker state: the configuration, parsed key sets, held requests, and a small local
/// copy of recently used verified tokens (`cache.local_entries`, in front of the shared
/// cache: a hit there costs no hostcall). Local entries expire with their shared entry; when
/// full, expired entries are dropped, and if none was expired the local cache is cleared.
#[derive(Debug)]
pub struct Worker {
    pub cfg: Config,
    pub keys: WorkerKeys,
    pub waiters: Vec<Waiter>,
    /// Requests waiting for an introspection answer.
    pub intro_waiters: Vec<IntroWaiter>,
    /// Requests waiting for a rate-limit lease.
    pub lease_waiters: Vec<LeaseWaiter>,
    /// Keys (rule, hash) whose lease runs low or is missing: the next tick asks for one.
    wanted: RefCell<Vec<(usize, KeyHash)>>,
    /// This worker's id in shared-data leases and claims (random per VM).
    pub id: u32,
    /// Keyed by the whole token (see [`LocalKey`]).
    local: HashMap<LocalKey, LocalEntry>,
    /// Introspection calls this worker has in flight: token hash, dispatching context.
    inflight: Vec<(TokenHash, u32)>,
    /// The revocation feed is stale beyond `stale_after_s` (computed on every tick).
    stale: bool,
    started_ms: u64,
    last_prune_ms: u64,
    poll_failing: bool,
    /// Warnings about failed introspections / lease calls (see [`WarnThrottle`]).
    introspection_warn: WarnThrottle,
    lease_warn: WarnThrottle,
}

/// A random non-zero u32 (std's `RandomState` is seeded from the OS / WASI `random_get`),
/// mixed with a per-process counter so that workers made in one process (tests) differ even
/// where the platform has no randomness.
fn random_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x746f_6c6c_6761_7465);
    let r = (h.finish() as u32) ^ n.wrapping_mul(0x9E37_79B9);
    r.max(1)
}

/// Lower-case hex of a token hash (the `jti` the auth server publishes for opaque tokens).
pub fn hex(h: &TokenHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

struct LazyKeys<'a> {
    keys: &'a mut WorkerKeys,
    host: &'a dyn Host,
    cfg: &'a Config,
}

impl KeySource for LazyKeys<'_> {
    fn key_set(&mut self, issuer: usize) -> Option<&KeySet> {
        self.keys.refresh(self.host, self.cfg, issuer);
        self.keys.get(issuer)
    }
}

/// Names of incoming headers that must go before anything else: the configured identity
/// and claim headers, `headers.remove`, and every header starting with `strip_prefix`, each
/// also in any spelling that folds to it (`_` for `-`, any case: see
/// [`crate::config::fold_header_name`]), as CGI/WSGI upstreams read `x_tollgate_sub` as
/// `HTTP_X_TOLLGATE_SUB`.
pub fn headers_to_remove(cfg: &Config, headers: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in headers {
        if k.starts_with(':') {
            continue;
        }
        // Envoy hands header names over in lower case: no copy unless one is not.
        let lower: std::borrow::Cow<'_, str> = if k.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(k.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(k.as_str())
        };
        if is_identity_header(cfg, &lower) && !out.iter().any(|o| *o == *lower) {
            out.push(lower.into_owned());
        }
    }
    out
}

/// Whether an incoming header (lower-case name) is, or folds to, a header the filter owns.
fn is_identity_header(cfg: &Config, lower: &str) -> bool {
    let folded = crate::config::fold_header_name(lower);
    let h = &cfg.headers;
    h.remove_folded
        .binary_search_by(|r| r.as_str().cmp(&folded))
        .is_ok()
        || h.strip_prefix_folded
            .as_deref()
            .is_some_and(|p| folded.starts_with(p))
}

impl Worker {
    pub fn new(cfg: Config) -> Worker {
        Worker {
            keys: WorkerKeys::new(&cfg),
            cfg,
            waiters: Vec::new(),
            intro_waiters: Vec::new(),
            lease_waiters: Vec::new(),
            wanted: RefCell::new(Vec::new()),
            id: random_id(),
            local: HashMap::new(),
            inflight: Vec::new(),
            stale: false,
            started_ms: 0,
            last_prune_ms: 0,
            poll_failing: false,
            introspection_warn: WarnThrottle::default(),
            lease_warn: WarnThrottle::default(),
        }
    }

    /// Create the shared-data slot tables (rate limits, introspection cache) so that every
    /// later write is a true compare-and-swap. The glue runs it once in `on_configure`.
    pub fn init_shared(&self, host: &dyn Host) {
        for r in &self.cfg.rules {
            if let Some(l) = &r.rate_limit {
                ratelimit::init_slots(host, &l.limit);
                if let Some(g) = &l.global {
                    lease::init_slots(host, g);
                }
            }
        }
        if let Some(x) = &self.cfg.introspection {
            introspection::init_slots(host, &x.settings);
            if let Some(l) = &x.miss_limit {
                ratelimit::init_slots(host, l);
            }
        }
    }

    /// Whether the revocation feed is stale beyond `stale_after_s` (as of the last tick).
    pub fn revocations_stale(&self) -> bool {
        self.stale
    }

    /// Decide about a request. Spoofed identity headers are the caller's to remove first
    /// (see [`headers_to_remove`]); the outcome never depends on them.
    pub fn on_request(&mut self, host: &dyn Host, req: &Request) -> Outcome {
        let route = RouteInfo {
            method: &req.method,
            path: &req.path,
            authority: &req.authority,
        };
        let rule = rules::select_index(&self.cfg, &route);
        let strip: Vec<String> = if self.cfg.headers.strip_authorization {
            vec!["authorization".to_string()]
        } else {
            Vec::new()
        };
        let token = match token::extract(&self.cfg, req.headers.as_slice(), &req.path) {
            Found::None => {
                if rules::policy(&self.cfg, rule).allow_anonymous {
                    return match self.rate_limit(host, rule, None, req, true) {
                        Err(o) => o,
                        Ok(response_headers) => {
                            host.metric(Metric::AllowedAnonymous, 1);
                            Outcome::Allow {
                                set: Rc::from(Vec::new()),
                                remove: strip,
                                response_headers,
                            }
                        }
                    };
                }
                host.metric(Metric::DeniedMissing, 1);
                return Outcome::Reject(reject::missing_token(&self.cfg.realm));
            }
            Found::Unusable => {
                host.metric(Metric::Denied("malformed"), 1);
                return Outcome::Reject(reject::invalid_token(
                    &self.cfg.realm,
                    "malformed token",
                    "malformed",
                ));
            }
            Found::Repeated => {
                host.metric(Metric::Denied("repeated"), 1);
                return Outcome::Reject(reject::invalid_request(
                    &self.cfg.realm,
                    "more than one token header",
                    "repeated",
                ));
            }
            Found::Token(t) => t,
        };
        if token.len() > self.cfg.max_token_bytes {
            host.metric(Metric::Denied("too_large"), 1);
            return Outcome::Reject(reject::invalid_token(
                &self.cfg.realm,
                "token too large",
                "too_large",
            ));
        }
        let now_ms = host.now_ms();
        let now = now_ms / 1000;
        // The local cache is keyed by the token itself (compared in full on a hit), so a
        // hit costs no SHA-256: the hash is computed only for the shared cache on a miss.
        if let Some(e) = self.local.get(token.as_str()) {
            if now < e.expires_at {
                host.metric(Metric::CacheHit, 1);
                return self.authorize(host, rule, req, &e.identity, &e.headers, strip, now);
            }
        }
        let opaque =
            self.cfg.introspection.is_some() && token.bytes().filter(|b| *b == b'.').count() != 2;
        if opaque {
            if let Some(r) = self.refuse_opaque_shape(host, &token) {
                return Outcome::Reject(r);
            }
        }
        let hash = cache::hash_token(&token);
        let found = if opaque {
            self.introspected(host, req, token.clone(), &hash, now_ms)
        } else {
            self.shared_or_verify(host, &token, &hash, now, now_ms)
        };
        let (id, expires_at) = match found {
            Ok(v) => v,
            Err(o) => return o,
        };
        let headers: Rc<[(String, String)]> = Rc::from(id.headers(&self.cfg));
        let outcome = self.authorize(host, rule, req, &id, &headers, strip, now);
        let max = self.cfg.cache_local_entries as usize;
        if max > 0 {
            if self.local.len() >= max {
                self.local.retain(|_, e| e.expires_at > now);
                if self.local.len() >= max {
                    self.local.clear();
                }
            }
            self.local.insert(
                LocalKey(Box::from(token.as_str())),
                LocalEntry {
                    expires_at,
                    identity: id,
                    headers,
                },
            );
        }
        outcome
    }

    /// A known identity: revocation, feed staleness, the route's policy, its rate limit.
    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &self,
        host: &dyn Host,
        rule: Option<usize>,
        req: &Request,
        identity: &Identity,
        headers: &Rc<[(String, String)]>,
        strip: Vec<String>,
        now: u64,
    ) -> Outcome {
        let cfg = &self.cfg;
        if let Some(rv) = &cfg.revocation {
            if let Some(jti) = &identity.jti {
                if revocation::is_revoked(host, &rv.settings, jti, now) {
                    host.metric(Metric::Denied("revoked"), 1);
                    return Outcome::Reject(reject::invalid_token(
                        &cfg.realm,
                        "token revoked",
                        "revoked",
                    ));
                }
            }
            if self.stale {
                host.metric(Metric::RevocationStale, 1);
                if rv.stale_mode == FailMode::Closed {
                    host.metric(Metric::Denied("unavailable"), 1);
                    return Outcome::Reject(reject::unavailable(
                        &cfg.realm,
                        "revocation status unknown, retry later",
                        "unavailable",
                    ));
                }
            }
        }
        let policy = rules::policy(cfg, rule);
        if let Err(r) = Self::check_policy(host, cfg, policy, identity) {
            return Outcome::Reject(r);
        }
        match self.rate_limit(host, rule, Some(identity), req, true) {
            Err(o) => o,
            Ok(response_headers) => {
                host.metric(Metric::Allowed, 1);
                Outcome::Allow {
                    set: Rc::clone(headers),
                    remove: strip,
                    response_headers,
                }
            }
        }
    }

    fn check_policy(
        host: &dyn Host,
        cfg: &Config,
        policy: &Policy,
        identity: &Identity,
    ) -> Result<(), Rejection> {
        // The route's policy.
        if !policy.audiences.is_empty()
            && !identity.aud.iter().any(|a| policy.audiences.contains(a))
        {
            host.metric(Metric::DeniedRuleAudience, 1);
            return Err(reject::invalid_token(
                &cfg.realm,
                "audience not accepted for this resource",
                "rule_audience",
            ));
        }
        if !policy.scopes.is_empty() {
            let ok = match policy.scope_mode {
                crate::config::ScopeMode::All => {
                    policy.scopes.iter().all(|s| identity.has_scope(s))
                }
                crate::config::ScopeMode::Any => {
                    policy.scopes.iter().any(|s| identity.has_scope(s))
                }
            };
            if !ok {
                host.metric(Metric::DeniedScope, 1);
                return Err(reject::insufficient_scope(
                    &cfg.realm,
                    &policy.scopes.join(" "),
                ));
            }
        }
        Ok(())
    }

    /// Count the request against its rule's rate limit. `Ok(headers)`: allowed, with the
    /// response headers to add (empty without a limit or with `response_headers: false`);
    /// `Err(outcome)`: a 429 (or 503), or, in global mode without a lease and `may_wait`,
    /// [`Outcome::WaitForLease`]. A shared-data failure lets the request through (counted,
    /// logged).
    fn rate_limit(
        &self,
        host: &dyn Host,
        rule: Option<usize>,
        identity: Option<&Identity>,
        req: &Request,
        may_wait: bool,
    ) -> Result<Vec<(String, String)>, Outcome> {
        let Some((idx, rl)) = rule.and_then(|i| {
            self.cfg
                .rules
                .get(i)
                .and_then(|r| r.rate_limit.as_ref())
                .map(|l| (i, l))
        }) else {
            return Ok(Vec::new());
        };
        let key = limit_key(&self.cfg, rl, identity, req);
        let Some(g) = &rl.global else {
            return self.local_limit(host, rl, &key);
        };
        let hash = lease::key_hash(&key);
        match lease::spend(host, g, &hash) {
            Ok(Spend::Allowed {
                remaining,
                reset_s,
                refill,
            }) => {
                if refill {
                    self.want_lease(idx, hash);
                }
                Ok(if self.cfg.rate_limit_response_headers {
                    vec![
                        ("ratelimit-policy".to_string(), rl.policy_header.clone()),
                        (
                            "ratelimit".to_string(),
                            format!("\"{}\";r={remaining};t={reset_s}", rl.name),
                        ),
                    ]
                } else {
                    Vec::new()
                })
            }
            Ok(Spend::Exhausted { retry_after_s }) => {
                host.metric(Metric::RateLimited, 1);
                Err(Outcome::Reject(reject::rate_limited(
                    retry_after_s,
                    &rl.policy_header,
                    &format!("\"{}\";r=0;t={retry_after_s}", rl.name),
                )))
            }
            Ok(Spend::Wait) if may_wait => {
                self.want_lease(idx, hash);
                Err(Outcome::WaitForLease { rule: idx, hash })
            }
            Ok(Spend::Wait) | Ok(Spend::Failing) => self.lease_fail_mode(host, rl, g, &key),
            Err(e) => Ok(limit_not_counted(host, rl, &e)),
        }
    }

    /// The rule's own GCRA bucket, shared by the workers of this gateway.
    fn local_limit(
        &self,
        host: &dyn Host,
        rl: &RuleLimit,
        key: &str,
    ) -> Result<Vec<(String, String)>, Outcome> {
        match ratelimit::check(host, &rl.limit, key) {
            Ok(d) if d.allowed => Ok(if self.cfg.rate_limit_response_headers {
                vec![
                    ("ratelimit-policy".to_string(), rl.policy_header.clone()),
                    ("ratelimit".to_string(), d.header(&rl.name)),
                ]
            } else {
                Vec::new()
            }),
            Ok(d) => {
                host.metric(Metric::RateLimited, 1);
                Err(Outcome::Reject(reject::rate_limited(
                    d.retry_after_s,
                    &rl.policy_header,
                    &d.header(&rl.name),
                )))
            }
            Err(e) => Ok(limit_not_counted(host, rl, &e)),
        }
    }

    /// Global mode without an answer from the auth server: the rule's `fail_mode`.
    fn lease_fail_mode(
        &self,
        host: &dyn Host,
        rl: &RuleLimit,
        g: &lease::Policy,
        key: &str,
    ) -> Result<Vec<(String, String)>, Outcome> {
        host.metric(Metric::RateLimitFallback, 1);
        match g.fail_mode {
            LeaseFailMode::Local => self.local_limit(host, rl, key),
            LeaseFailMode::Open => Ok(Vec::new()),
            LeaseFailMode::Closed => {
                host.metric(Metric::Denied("unavailable"), 1);
                Err(Outcome::Reject(reject::unavailable(
                    &self.cfg.realm,
                    "rate limit cannot be checked now, retry later",
                    "unavailable",
                )))
            }
        }
    }

    /// Remember to ask for a lease of `rule`'s key `hash` at the next tick.
    fn want_lease(&self, rule: usize, hash: KeyHash) {
        let mut w = self.wanted.borrow_mut();
        if w.len() < MAX_WANTED && !w.iter().any(|(r, h)| *r == rule && *h == hash) {
            w.push((rule, hash));
        }
    }

    /// An opaque token of a shape no token of the issuer has: refused without a call.
    fn refuse_opaque_shape(&self, host: &dyn Host, token: &str) -> Option<Rejection> {
        let x = self.cfg.introspection.as_ref()?;
        (!x.shape.fits(token)).then(|| crate::opaque::refuse_shape(host, &self.cfg.realm))
    }

    /// A new opaque token about to be introspected: counted against the client address's
    /// miss limit; `Some(429)` over it.
    fn over_miss_limit(&self, host: &dyn Host, req: &Request) -> Option<Rejection> {
        let limit = self.cfg.introspection.as_ref()?.miss_limit.as_ref()?;
        crate::opaque::count_miss(host, limit, &req.client_ip(&self.cfg.client_ip))
    }

    /// An opaque token: the introspection cache, else claim the call (or wait for the
    /// worker that has it). Returns the identity and its local expiry (Unix s).
    fn introspected(
        &mut self,
        host: &dyn Host,
        req: &Request,
        token: String,
        hash: &TokenHash,
        now_ms: u64,
    ) -> Result<(Identity, u64), Outcome> {
        let Some(x) = &self.cfg.introspection else {
            return Err(Outcome::Reject(reject::invalid_token(
                &self.cfg.realm,
                "malformed token",
                "malformed",
            )));
        };
        match introspection::lookup(host, &x.settings, hash, now_ms) {
            State::Active(id, until_ms) => {
                host.metric(Metric::CacheHit, 1);
                Ok((id, until_ms / 1000))
            }
            State::Inactive => {
                host.metric(Metric::Denied("inactive"), 1);
                Err(Outcome::Reject(reject::invalid_token(
                    &self.cfg.realm,
                    "token inactive",
                    "inactive",
                )))
            }
            State::Pending { .. } => Err(Outcome::WaitForIntrospection { hash: *hash }),
            State::Miss { cas } => {
                host.metric(Metric::CacheMiss, 1);
                if let Some(r) = self.over_miss_limit(host, req) {
                    return Err(Outcome::Reject(r));
                }
                if introspection::claim(host, &x.settings, hash, self.id, cas, now_ms) {
                    host.metric(Metric::IntrospectionCall, 1);
                    Err(Outcome::Introspect {
                        hash: *hash,
                        token: SecretToken(token),
                    })
                } else {
                    Err(Outcome::WaitForIntrospection { hash: *hash })
                }
            }
        }
    }

    /// Shared cache, else full verification (then stored in the shared cache). Returns the
    /// identity and when its cache entry expires, or the outcome to return instead.
    fn shared_or_verify(
        &mut self,
        host: &dyn Host,
        token: &str,
        hash: &cache::TokenHash,
        now: u64,
        now_ms: u64,
    ) -> Result<(Identity, u64), Outcome> {
        let cfg = &self.cfg;
        let look = cache::lookup(host, cfg, hash, now);
        if let Some((id, expires_at)) = look.hit.clone() {
            host.metric(Metric::CacheHit, 1);
            return Ok((id, expires_at));
        }
        host.metric(Metric::CacheMiss, 1);
        let mut ks = LazyKeys {
            keys: &mut self.keys,
            host,
            cfg,
        };
        match jwt::verify(token, cfg, &mut ks, now) {
            Ok(id) => {
                let expires_at = cache::insert(host, cfg, &look, hash, &id, now);
                Ok((id, expires_at))
            }
            Err(VerifyError::NoJwks { issuer }) => Err(Outcome::WaitForJwks { issuer }),
            Err(VerifyError::UnknownKid { issuer }) => {
                request_refresh(host, cfg, issuer, now_ms);
                host.metric(Metric::Denied("unknown_kid"), 1);
                Err(Outcome::Reject(reject::invalid_token(
                    &cfg.realm,
                    "signing key not found",
                    "unknown_kid",
                )))
            }
            Err(VerifyError::Token(e)) => {
                host.metric(Metric::for_token_error(&e), 1);
                host.log(
                    Level::Debug,
                    &format!("tollgate: token refused: {}", e.reason()),
                );
                Err(Outcome::Reject(reject::invalid_token(
                    &cfg.realm,
                    &e.to_string(),
                    e.reason(),
                )))
            }
        }
    }

    /// Hold a request until the issuer's first JWKS arrives (see [`Worker::resolve_waiters`]).
    pub fn hold(&mut self, host: &dyn Host, context_id: u32, issuer: usize, request: Request) {
        let deadline_ms = host.now_ms().saturating_add(self.cfg.jwks_max_wait_ms);
        self.waiters.push(Waiter {
            context_id,
            deadline_ms,
            issuer,
            request,
        });
    }

    /// Hold a request until the introspection of its token is answered (see
    /// [`Worker::on_introspection`] and [`Worker::resolve_waiters`]).
    pub fn hold_introspection(
        &mut self,
        host: &dyn Host,
        context_id: u32,
        hash: TokenHash,
        request: Request,
    ) {
        let wait = self
            .cfg
            .introspection
            .as_ref()
            .map_or(0, |x| x.settings.pending_ms.saturating_mul(2));
        self.intro_waiters.retain(|w| w.context_id != context_id);
        self.intro_waiters.push(IntroWaiter {
            context_id,
            hash,
            deadline_ms: host.now_ms().saturating_add(wait),
            request,
        });
    }

    /// The glue dispatched the introspection of `hash` from stream `context_id` (0: the
    /// root context): if that stream ends first, its claim is released.
    pub fn note_introspection_call(&mut self, hash: TokenHash, context_id: u32) {
        self.inflight.push((hash, context_id));
    }

    /// Whether a request of this stream is held.
    pub fn is_held(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
            || self
                .intro_waiters
                .iter()
                .any(|w| w.context_id == context_id)
            || self
                .lease_waiters
                .iter()
                .any(|w| w.context_id == context_id)
    }

    /// Forget a held request (its stream ended). An introspection call it dispatched is
    /// abandoned (Envoy cancels it with the stream): its claim is released, so that the
    /// next tick lets another waiting request ask.
    pub fn forget(&mut self, host: &dyn Host, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
        self.intro_waiters.retain(|w| w.context_id != context_id);
        self.lease_waiters.retain(|w| w.context_id != context_id);
        if let Some(x) = &self.cfg.introspection {
            let now = host.now_ms();
            for (h, _) in self.inflight.iter().filter(|(_, c)| *c == context_id) {
                introspection::release(host, &x.settings, h, self.id, now);
            }
        }
        self.inflight.retain(|(_, c)| *c != context_id);
    }

    /// The request for an introspection call (POST, form body, Basic auth of the filter's
    /// client). `None` without `introspection` configured.
    pub fn introspection_plan(&self, hash: &TokenHash, token: &SecretToken) -> Option<FetchPlan> {
        let x = self.cfg.introspection.as_ref()?;
        let a = self.cfg.auth_server.as_ref()?;
        Some(FetchPlan {
            kind: FetchKind::Introspection { hash: *hash },
            cluster: a.cluster.clone(),
            method: "POST",
            path: x.path.clone(),
            authority: a.authority.clone(),
            headers: a.with_credentials(vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("accept".into(), "application/json".into()),
            ]),
            body: Some(format!("token={}", crate::config::form_encode(&token.0)).into_bytes()),
            timeout_ms: a.timeout_ms,
        })
    }

    /// The outcome for a request whose introspection could not be answered, by `fail_mode`:
    /// `closed` → 503; `open` → forwarded without identity, only on routes that require no
    /// scope or audience (others still get the 503).
    fn introspection_unavailable(&self, host: &dyn Host, req: &Request) -> Outcome {
        let route = RouteInfo {
            method: &req.method,
            path: &req.path,
            authority: &req.authority,
        };
        let rule = rules::select_index(&self.cfg, &route);
        let policy = rules::policy(&self.cfg, rule);
        let open = self
            .cfg
            .introspection
            .as_ref()
            .is_some_and(|x| x.fail_mode == FailMode::Open);
        if open && policy.scopes.is_empty() && policy.audiences.is_empty() {
            return match self.rate_limit(host, rule, None, req, false) {
                Err(o) => o,
                Ok(response_headers) => {
                    host.metric(Metric::AllowedUnverified, 1);
                    Outcome::Allow {
                        set: Rc::from(Vec::new()),
                        remove: if self.cfg.headers.strip_authorization {
                            vec!["authorization".to_string()]
                        } else {
                            Vec::new()
                        },
                        response_headers,
                    }
                }
            };
        }
        host.metric(Metric::Denied("unavailable"), 1);
        Outcome::Reject(reject::unavailable(
            &self.cfg.realm,
            "token cannot be checked now, retry later",
            "unavailable",
        ))
    }

    /// The answer to an introspection call: `Ok((status, body))`, or `Err(reason)` without
    /// an HTTP answer. Stores the answer in shared data and decides this worker's requests
    /// that waited for it. A failure releases the claim and answers them by `fail_mode`.
    /// Returned outcomes may be [`Outcome::Introspect`] (dispatch it, keep the request held)
    /// or a final one.
    pub fn on_introspection(
        &mut self,
        host: &dyn Host,
        hash: TokenHash,
        result: Result<(u16, Vec<u8>), String>,
    ) -> Vec<(u32, Outcome)> {
        self.inflight.retain(|(h, _)| *h != hash);
        let Some(x) = self.cfg.introspection.clone() else {
            return Vec::new();
        };
        let now_ms = host.now_ms();
        let answer = match result {
            Ok((200, body)) => {
                let iss = self.cfg.issuers.get(x.issuer);
                let claim_names: Vec<String> = self
                    .cfg
                    .headers
                    .claims
                    .iter()
                    .map(|(c, _)| c.clone())
                    .collect();
                let expect = introspection::Expect {
                    iss: iss.map(|i| i.issuer.as_str()),
                    audiences: iss.map_or(&[][..], |i| i.audiences.as_slice()),
                };
                introspection::parse_answer_for(
                    &body,
                    x.issuer as u16,
                    &claim_names,
                    now_ms / 1000,
                    expect,
                )
                .map_err(|e| e.to_string())
            }
            Ok((status, _)) => Err(format!("HTTP status {status}")),
            Err(e) => Err(e),
        };
        let stored = match answer {
            Ok(mut id) => {
                if let Some(id) = id.as_mut() {
                    if id.jti.is_none() {
                        id.jti = Some(hex(&hash));
                    }
                }
                introspection::store(host, &x.settings, &hash, id.as_ref(), now_ms)
                    .map(|()| id.is_some())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let waiting: Vec<IntroWaiter>;
        (waiting, self.intro_waiters) = std::mem::take(&mut self.intro_waiters)
            .into_iter()
            .partition(|w| w.hash == hash);
        let mut done = Vec::new();
        match stored {
            Ok(true) => {
                for w in waiting {
                    self.decide_intro_waiter(host, w, now_ms, &mut done);
                }
            }
            Ok(false) => {
                // Inactive: answered directly (with `negative_ttl_s: 0` the cache keeps
                // nothing, and a re-lookup would only ask again).
                for w in waiting {
                    host.metric(Metric::Denied("inactive"), 1);
                    done.push((
                        w.context_id,
                        Outcome::Reject(reject::invalid_token(
                            &self.cfg.realm,
                            "token inactive",
                            "inactive",
                        )),
                    ));
                }
            }
            Err(e) => {
                introspection::release(host, &x.settings, &hash, self.id, now_ms);
                host.metric(Metric::IntrospectionFailed, 1);
                self.introspection_warn.warn(
                    host,
                    &format!(
                        "tollgate: introspection at cluster {} failed: {e}",
                        self.cfg
                            .auth_server
                            .as_ref()
                            .map_or("", |a| a.cluster.as_str())
                    ),
                );
                for w in waiting {
                    done.push((
                        w.context_id,
                        self.introspection_unavailable(host, &w.request),
                    ));
                }
            }
        }
        done
    }

    /// The introspection call for stream `context_id` could not even be dispatched: release
    /// the claim (other waiters retry on the next tick) and answer this stream by
    /// `fail_mode`.
    pub fn introspection_dispatch_failed(
        &mut self,
        host: &dyn Host,
        hash: TokenHash,
        context_id: u32,
        reason: &str,
    ) -> Outcome {
        let now = host.now_ms();
        if let Some(x) = &self.cfg.introspection {
            introspection::release(host, &x.settings, &hash, self.id, now);
        }
        host.metric(Metric::IntrospectionFailed, 1);
        self.introspection_warn
            .warn(host, &format!("tollgate: introspection failed: {reason}"));
        let pos = self
            .intro_waiters
            .iter()
            .position(|w| w.context_id == context_id);
        match pos {
            Some(i) => {
                let w = self.intro_waiters.remove(i);
                self.introspection_unavailable(host, &w.request)
            }
            None => self.introspection_unavailable(host, &Request::default()),
        }
    }

    /// Re-decide a request that waited for an introspection.
    fn decide_intro_waiter(
        &mut self,
        host: &dyn Host,
        w: IntroWaiter,
        now_ms: u64,
        done: &mut Vec<(u32, Outcome)>,
    ) {
        match self.on_request(host, &w.request) {
            Outcome::WaitForIntrospection { .. } if now_ms < w.deadline_ms => {
                self.intro_waiters.push(w)
            }
            Outcome::WaitForIntrospection { .. } => {
                let o = self.introspection_unavailable(host, &w.request);
                done.push((w.context_id, o));
            }
            Outcome::Introspect { hash, token } => {
                let ctx = w.context_id;
                self.intro_waiters.push(IntroWaiter { hash, ..w });
                done.push((ctx, Outcome::Introspect { hash, token }));
            }
            Outcome::WaitForLease { rule, hash } => {
                self.hold_lease(host, w.context_id, rule, hash, w.request)
            }
            o => done.push((w.context_id, o)),
        }
    }

    /// Re-decide a request that waited for a rate-limit lease. Past its deadline without an
    /// answer, the key counts as failing (the rule's `fail_mode` decides).
    fn decide_lease_waiter(
        &mut self,
        host: &dyn Host,
        w: LeaseWaiter,
        now_ms: u64,
        done: &mut Vec<(u32, Outcome)>,
    ) {
        let outcome = match self.on_request(host, &w.request) {
            Outcome::WaitForLease { rule, hash } if now_ms < w.deadline_ms => {
                self.lease_waiters.push(LeaseWaiter { rule, hash, ..w });
                return;
            }
            Outcome::WaitForLease { rule, hash } => {
                if let Some(g) = self.global_policy(rule) {
                    lease::on_failure(host, g, &hash);
                }
                self.lease_warn.warn(
                    host,
                    "tollgate: no rate-limit lease answer in time; following the rule's fail_mode",
                );
                match self.on_request(host, &w.request) {
                    Outcome::WaitForLease { .. } => {
                        host.metric(Metric::Denied("unavailable"), 1);
                        Outcome::Reject(reject::unavailable(
                            &self.cfg.realm,
                            "rate limit cannot be checked now, retry later",
                            "unavailable",
                        ))
                    }
                    o => o,
                }
            }
            o => o,
        };
        let ctx = w.context_id;
        match outcome {
            Outcome::WaitForJwks { issuer } => self.hold(host, ctx, issuer, w.request),
            Outcome::WaitForIntrospection { hash } => {
                self.hold_introspection(host, ctx, hash, w.request)
            }
            Outcome::Introspect { hash, token } => {
                self.hold_introspection(host, ctx, hash, w.request);
                done.push((ctx, Outcome::Introspect { hash, token }));
            }
            Outcome::WaitForLease { rule, hash } => {
                self.hold_lease(host, ctx, rule, hash, w.request)
            }
            o => done.push((ctx, o)),
        }
    }

    fn global_policy(&self, rule: usize) -> Option<&lease::Policy> {
        self.cfg
            .rules
            .get(rule)
            .and_then(|r| r.rate_limit.as_ref())
            .and_then(|l| l.global.as_ref())
    }

    /// Hold a request until a lease of its key is answered (see [`Worker::on_lease`]) or
    /// the call's timeout (plus two ticks) has passed.
    pub fn hold_lease(
        &mut self,
        host: &dyn Host,
        context_id: u32,
        rule: usize,
        hash: KeyHash,
        request: Request,
    ) {
        let wait =
            self.cfg.auth_server.as_ref().map_or(0, |a| a.timeout_ms) + 2 * self.cfg.tick_ms + 500;
        self.lease_waiters.retain(|w| w.context_id != context_id);
        self.lease_waiters.push(LeaseWaiter {
            context_id,
            rule,
            hash,
            deadline_ms: host.now_ms().saturating_add(wait),
            request,
        });
    }

    /// Decide this worker's requests that wait for a lease (the answer is in shared data,
    /// or their wait is over).
    fn resolve_lease_waiters(&mut self, host: &dyn Host, done: &mut Vec<(u32, Outcome)>) {
        if self.lease_waiters.is_empty() {
            return;
        }
        let now = host.now_ms();
        for w in std::mem::take(&mut self.lease_waiters) {
            self.decide_lease_waiter(host, w, now, done);
        }
    }

    /// The answer to a lease call (`Ok((status, body))`, or `Err(reason)` without an HTTP
    /// answer, or when it could not be dispatched): stored in the key's lease record (a
    /// failure makes the key follow `fail_mode` for a second; the call is not retried
    /// before), then this worker's waiting requests are decided.
    pub fn on_lease(
        &mut self,
        host: &dyn Host,
        kind: FetchKind,
        result: Result<(u16, Vec<u8>), String>,
    ) -> Vec<(u32, Outcome)> {
        let FetchKind::Lease {
            rule,
            hash,
            sent_ms,
            want,
        } = kind
        else {
            return Vec::new();
        };
        if let Some(g) = self.global_policy(rule) {
            let answer = match result {
                Ok((200, body)) => lease::parse_answer(&body),
                Ok((status, _)) => Err(format!("HTTP status {status}")),
                Err(e) => Err(e),
            };
            match answer {
                Ok(a) => lease::on_answer(host, g, &hash, sent_ms, want, &a),
                Err(e) => {
                    host.metric(Metric::RateLimitLeaseFailed, 1);
                    self.lease_warn.warn(
                        host,
                        &format!(
                            "tollgate: rate-limit lease for {} failed: {e}; fail_mode {:?}",
                            g.name, g.fail_mode
                        ),
                    );
                    lease::on_failure(host, g, &hash);
                }
            }
        }
        let mut done = Vec::new();
        self.resolve_lease_waiters(host, &mut done);
        done
    }

    /// Decide held requests whose JWKS is now loaded, whose introspection answer is in
    /// shared data (or whose claim lapsed: then an [`Outcome::Introspect`] to dispatch), or
    /// whose wait is over.
    pub fn resolve_waiters(&mut self, host: &dyn Host) -> Vec<(u32, Outcome)> {
        let mut done = Vec::new();
        self.resolve_lease_waiters(host, &mut done);
        let now = host.now_ms();
        if !self.intro_waiters.is_empty() {
            // Waiters whose call is in flight on this worker are decided by its answer.
            let (mine, others): (Vec<IntroWaiter>, Vec<IntroWaiter>) =
                std::mem::take(&mut self.intro_waiters)
                    .into_iter()
                    .partition(|w| self.inflight.iter().any(|(h, _)| *h == w.hash));
            self.intro_waiters = mine;
            for w in others {
                self.decide_intro_waiter(host, w, now, &mut done);
            }
        }
        if self.waiters.is_empty() {
            return done;
        }
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            self.keys.refresh(host, &self.cfg, w.issuer);
            if self.keys.get(w.issuer).is_some() {
                match self.on_request(host, &w.request) {
                    Outcome::WaitForJwks { .. } if now < w.deadline_ms => self.waiters.push(w),
                    Outcome::WaitForJwks { .. } => done.push((w.context_id, self.timeout())),
                    Outcome::WaitForIntrospection { hash } => {
                        self.hold_introspection(host, w.context_id, hash, w.request)
                    }
                    Outcome::Introspect { hash, token } => {
                        let ctx = w.context_id;
                        self.hold_introspection(host, ctx, hash, w.request);
                        done.push((ctx, Outcome::Introspect { hash, token }));
                    }
                    Outcome::WaitForLease { rule, hash } => {
                        self.hold_lease(host, w.context_id, rule, hash, w.request)
                    }
                    o => done.push((w.context_id, o)),
                }
            } else if now >= w.deadline_ms {
                done.push((w.context_id, self.timeout()));
            } else {
                self.waiters.push(w);
            }
        }
        done
    }

    fn timeout(&self) -> Outcome {
        Outcome::Reject(reject::jwks_unavailable(
            &self.cfg.realm,
            self.cfg.jwks_wait_status,
        ))
    }

    /// Metric for a held JWKS request that timed out (the glue calls it when it sends the
    /// reply).
    pub fn count_rejection(host: &dyn Host, r: &Rejection) {
        if r.reason == "no_jwks" {
            host.metric(Metric::DeniedNoJwks, 1);
        }
    }

    /// The timer: which JWKS fetches to start now. A fetch is claimed in shared data with
    /// compare-and-swap, so that of all workers one fetches.
    pub fn tick(&mut self, host: &dyn Host) -> Vec<FetchPlan> {
        let now = host.now_ms();
        let mut plans = Vec::new();
        if self.started_ms == 0 {
            self.started_ms = now;
            // The ES256 generator table (once per VM, ≈ 10–30 ms in V8): at the first tick
            // rather than in the first request that verifies an ES256 token.
            if self
                .cfg
                .issuers
                .iter()
                .any(|i| i.algorithms.contains(&Alg::ES256))
            {
                crate::es256::prepare();
            }
        }
        if let (Some(rv), Some(a)) = (&self.cfg.revocation, &self.cfg.auth_server) {
            // Staleness, once per tick: since the last good poll (or since this worker
            // started, before any).
            let st = revocation::state(host, &rv.settings);
            let since = st.last_ok_ms.max(self.started_ms);
            let stale = now.saturating_sub(since) > rv.stale_after_ms;
            if stale && !self.stale {
                host.log(
                    Level::Warn,
                    &format!(
                        "tollgate: revocation feed stale for {} ms (stale_mode {:?})",
                        now.saturating_sub(since),
                        rv.stale_mode
                    ),
                );
            }
            self.stale = stale;
            if let Some(path) = revocation::plan_poll(host, &rv.settings, self.id, now) {
                plans.push(FetchPlan {
                    kind: FetchKind::Revocations,
                    cluster: a.cluster.clone(),
                    method: "GET",
                    path,
                    authority: a.authority.clone(),
                    headers: a.with_credentials(vec![("accept".into(), "application/json".into())]),
                    body: None,
                    timeout_ms: a.timeout_ms,
                });
            }
        }
        self.lease_plans(host, now, &mut plans);
        for (idx, iss) in self.cfg.issuers.iter().enumerate() {
            let key = jwks::meta_key(iss);
            let (val, cas) = host.shared_get(&key);
            let meta = val.as_deref().map(JwksMeta::decode).unwrap_or_default();
            if !meta.fetch_due(&iss.jwks, now) {
                continue;
            }
            let mut next = meta;
            next.last_attempt_ms = now;
            next.in_flight_until_ms = now + iss.jwks.timeout_ms + 1000;
            if host.shared_set(&key, &next.encode(), cas).is_ok() {
                host.metric(Metric::JwksFetch, 1);
                plans.push(FetchPlan {
                    kind: FetchKind::Jwks { issuer: idx },
                    cluster: iss.jwks.cluster.clone(),
                    method: "GET",
                    path: iss.jwks.path.clone(),
                    authority: iss.jwks.authority.clone(),
                    headers: vec![("accept".into(), "application/json".into())],
                    body: None,
                    timeout_ms: iss.jwks.timeout_ms,
                });
            }
        }
        plans
    }

    /// Lease calls due for the keys requests asked for (claimed in shared data: at most one
    /// in flight per key and gateway).
    fn lease_plans(&self, host: &dyn Host, now: u64, plans: &mut Vec<FetchPlan>) {
        let wanted = std::mem::take(&mut *self.wanted.borrow_mut());
        let Some(a) = &self.cfg.auth_server else {
            return;
        };
        for (rule, hash) in wanted {
            let Some(g) = self.global_policy(rule) else {
                continue;
            };
            let Some(want) = lease::claim(host, g, &hash, a.timeout_ms) else {
                continue;
            };
            host.metric(Metric::RateLimitLease, 1);
            let body = format!(
                "key={}&limit={}&window_s={}&want={want}",
                crate::config::form_encode(&lease::wire_key(g, &hash)),
                g.requests,
                g.window_s
            );
            plans.push(FetchPlan {
                kind: FetchKind::Lease {
                    rule,
                    hash,
                    sent_ms: now,
                    want,
                },
                cluster: a.cluster.clone(),
                method: "POST",
                path: self.cfg.lease_path.clone(),
                authority: a.authority.clone(),
                headers: a.with_credentials(vec![
                    (
                        "content-type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ),
                    ("accept".into(), "application/json".into()),
                ]),
                body: Some(body.into_bytes()),
                timeout_ms: a.timeout_ms,
            });
        }
    }

    /// The answer to a revocation-feed poll: `Ok((status, body))`, or `Err(reason)` when
    /// there was no HTTP answer. A good page is merged into (or, on `resync`, replaces) the
    /// shared revoked set and advances the cursor; a failure keeps both and is retried
    /// after one poll interval.
    pub fn on_revocations(&mut self, host: &dyn Host, result: Result<(u16, Vec<u8>), String>) {
        let Some(rv) = &self.cfg.revocation else {
            return;
        };
        let now = host.now_ms();
        let r = match result {
            Ok((200, body)) => {
                revocation::on_poll_answer(host, &rv.settings, self.id, Some(&body), now)
                    .map_err(|e| e.to_string())
            }
            Ok((status, _)) => Err(format!("HTTP status {status}")),
            Err(e) => Err(e),
        };
        match r {
            Ok(applied) => {
                host.metric(Metric::RevocationPollOk, 1);
                self.stale = false;
                if self.poll_failing {
                    host.log(Level::Info, "tollgate: revocation feed reachable again");
                }
                self.poll_failing = false;
                if applied.added > 0 {
                    host.log(
                        Level::Debug,
                        &format!(
                            "tollgate: {} revocation(s) added, {} live",
                            applied.added, applied.live
                        ),
                    );
                }
                if now.saturating_sub(self.last_prune_ms) >= 60_000 {
                    self.last_prune_ms = now;
                    let _ = revocation::prune(host, &rv.settings, now / 1000);
                }
            }
            Err(e) => {
                host.metric(Metric::RevocationPollFailed, 1);
                revocation::on_poll_failed(host, &rv.settings, self.id, now);
                if !self.poll_failing {
                    host.log(
                        Level::Warn,
                        &format!(
                            "tollgate: revocation feed poll failed: {e}; keeping the \
                             revoked set, retrying every {} ms",
                            rv.settings.poll_interval_ms
                        ),
                    );
                }
                self.poll_failing = true;
            }
        }
    }

    /// The answer to a JWKS fetch: `Ok((status, body))`, or `Err(reason)` when there was no
    /// HTTP answer. A good answer replaces the shared document; a bad one leaves it alone.
    pub fn on_fetch(
        &mut self,
        host: &dyn Host,
        issuer: usize,
        result: Result<(u16, Vec<u8>), String>,
    ) {
        let Some(iss) = self.cfg.issuers.get(issuer) else {
            return;
        };
        let now = host.now_ms();
        let outcome = match result {
            Ok((200, body)) => match KeySet::parse(&body) {
                Ok(set) => {
                    let _ =
                        host.shared_set(&jwks::doc_key(iss), &jwks::encode_doc(now, &body), None);
                    host.log(
                        Level::Info,
                        &format!(
                            "tollgate: JWKS of {} loaded: {} key(s), {} skipped",
                            iss.issuer,
                            set.keys.len(),
                            set.skipped
                        ),
                    );
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Ok((status, _)) => Err(format!("HTTP status {status}")),
            Err(e) => Err(e),
        };
        let key = jwks::meta_key(iss);
        for _ in 0..4 {
            let (val, cas) = host.shared_get(&key);
            let mut meta = val.as_deref().map(JwksMeta::decode).unwrap_or_default();
            meta.in_flight_until_ms = 0;
            match &outcome {
                Ok(()) => {
                    meta.last_ok_ms = now;
                    meta.failures = 0;
                }
                Err(_) => meta.failures = meta.failures.saturating_add(1),
            }
            if host.shared_set(&key, &meta.encode(), cas).is_ok() {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                host.metric(Metric::JwksRefreshOk, 1);
                self.keys.refresh(host, &self.cfg, issuer);
            }
            Err(e) => {
                host.metric(Metric::JwksRefreshFailed, 1);
                let stale = self.keys.get(issuer).is_some()
                    || host.shared_get(&jwks::doc_key(iss)).0.is_some();
                host.log(
                    Level::Warn,
                    &format!(
                        "tollgate: JWKS fetch for {} from cluster {} failed: {e}; {}",
                        iss.issuer,
                        iss.jwks.cluster,
                        if stale {
                            "keeping the previous key set"
                        } else {
                            "no key set loaded yet"
                        }
                    ),
                );
            }
        }
    }
}

/// A bucket or lease that could not be updated (shared-data failure, contention): the
/// request passes uncounted, and the metric and the log say so.
fn limit_not_counted(
    host: &dyn Host,
    rl: &RuleLimit,
    e: &ratelimit::LimitError,
) -> Vec<(String, String)> {
    host.metric(Metric::RateLimitError, 1);
    host.log(
        Level::Warn,
        &format!("tollgate: rate limit {} not counted: {e}", rl.name),
    );
    Vec::new()
}

/// The rate-limit key of a request: the identity's `client_id` / `sub`, the client
/// address, or a request header; `""` when missing (one shared bucket for all such requests).
fn limit_key(cfg: &Config, rl: &RuleLimit, identity: Option<&Identity>, req: &Request) -> String {
    match &rl.key {
        LimitKey::ClientId => identity
            .and_then(|i| i.client_id.clone())
            .unwrap_or_default(),
        LimitKey::Sub => identity.map(|i| i.sub.clone()).unwrap_or_default(),
        LimitKey::ClientIp => req.client_ip(&cfg.client_ip),
        LimitKey::Header(h) => req.header(h).unwrap_or_default().to_string(),
    }
}

/// A request saw an unknown `kid`: ask (at most once per `min_refresh_interval_s`) for a
/// JWKS refresh at the next tick.
pub fn request_refresh(host: &dyn Host, cfg: &Config, issuer: usize, now_ms: u64) {
    let Some(iss) = cfg.issuers.get(issuer) else {
        return;
    };
    let key = jwks::meta_key(iss);
    let (val, cas) = host.shared_get(&key);
    let mut meta = val.as_deref().map(JwksMeta::decode).unwrap_or_default();
    if meta.may_request_refresh(&iss.jwks, now_ms) {
        meta.refresh_wanted_ms = now_ms.max(meta.last_attempt_ms + 1);
        if host.shared_set(&key, &meta.encode(), cas).is_ok() {
            host.metric(Metric::JwksUnknownKidRefresh, 1);
        }
    }
}
