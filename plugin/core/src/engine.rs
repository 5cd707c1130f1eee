//! The filter's decisions, independent of proxy-wasm: what to do with a request, when to
//! fetch a JWKS, what to do with the answer, and what becomes of requests that wait for a
//! first JWKS. The glue turns [`Outcome`]s and [`FetchPlan`]s into hostcalls.

use std::collections::HashMap;
use std::rc::Rc;

use crate::cache;
use crate::config::Config;
use crate::host::{Host, Level};
use crate::identity::Identity;
use crate::jwks::{self, JwksMeta, KeySet, WorkerKeys};
use crate::jwt::{self, KeySource, VerifyError};
use crate::metrics::Metric;
use crate::reject::{self, Rejection};
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
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it, after setting these headers and removing these.
    Allow {
        set: Rc<[(String, String)]>,
        remove: Vec<String>,
    },
    /// Answer locally.
    Reject(Rejection),
    /// The issuer's JWKS was never loaded: hold the request until it is (or time out).
    WaitForJwks { issuer: usize },
}

/// A JWKS fetch the glue must dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPlan {
    pub issuer: usize,
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub timeout_ms: u64,
}

/// A request held until a first JWKS arrives.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub deadline_ms: u64,
    pub issuer: usize,
    pub request: Request,
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
    local: HashMap<cache::TokenHash, LocalEntry>,
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
/// and claim headers, `headers.remove`, and every header starting with `strip_prefix`.
pub fn headers_to_remove(cfg: &Config, headers: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in headers {
        if k.starts_with(':') {
            continue;
        }
        let lower = k.to_ascii_lowercase();
        let hit = cfg.headers.remove.binary_search(&lower).is_ok()
            || cfg
                .headers
                .strip_prefix
                .as_deref()
                .is_some_and(|p| lower.starts_with(p));
        if hit && !out.contains(&lower) {
            out.push(lower);
        }
    }
    out
}

impl Worker {
    pub fn new(cfg: Config) -> Worker {
        Worker {
            keys: WorkerKeys::new(&cfg),
            cfg,
            waiters: Vec::new(),
            local: HashMap::new(),
        }
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
                    host.metric(Metric::AllowedAnonymous, 1);
                    return Outcome::Allow {
                        set: Rc::from(Vec::new()),
                        remove: strip,
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
        let hash = cache::hash_token(&token);
        let local_hit = matches!(self.local.get(&hash), Some(e) if now < e.expires_at);
        if local_hit {
            host.metric(Metric::CacheHit, 1);
        } else {
            let (id, expires_at) = match self.shared_or_verify(host, &token, &hash, now, now_ms) {
                Ok(v) => v,
                Err(o) => return o,
            };
            let headers: Rc<[(String, String)]> = Rc::from(id.headers(&self.cfg));
            let max = (self.cfg.cache_local_entries as usize).max(1);
            if self.local.len() >= max {
                self.local.retain(|_, e| e.expires_at > now);
                if self.local.len() >= max {
                    self.local.clear();
                }
            }
            self.local.insert(
                hash,
                LocalEntry {
                    expires_at,
                    identity: id,
                    headers,
                },
            );
        }
        let cfg = &self.cfg;
        let Some(entry) = self.local.get(&hash) else {
            return Outcome::Reject(reject::invalid_token(
                &cfg.realm,
                "internal error",
                "internal",
            ));
        };
        let identity = &entry.identity;
        let policy = rules::policy(cfg, rule);
        let outcome = Self::apply_policy(host, cfg, policy, identity, &entry.headers, strip);
        if cfg.cache_local_entries == 0 {
            self.local.clear();
        }
        outcome
    }

    fn apply_policy(
        host: &dyn Host,
        cfg: &Config,
        policy: &crate::config::Policy,
        identity: &Identity,
        headers: &Rc<[(String, String)]>,
        strip: Vec<String>,
    ) -> Outcome {
        // The route's policy.
        if !policy.audiences.is_empty()
            && !identity.aud.iter().any(|a| policy.audiences.contains(a))
        {
            host.metric(Metric::DeniedRuleAudience, 1);
            return Outcome::Reject(reject::invalid_token(
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
                return Outcome::Reject(reject::insufficient_scope(
                    &cfg.realm,
                    &policy.scopes.join(" "),
                ));
            }
        }
        host.metric(Metric::Allowed, 1);
        Outcome::Allow {
            set: Rc::clone(headers),
            remove: strip,
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

    /// Whether a request of this stream is held.
    pub fn is_held(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
    }

    /// Forget a held request (its stream ended).
    pub fn forget(&mut self, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
    }

    /// Decide held requests whose JWKS is now loaded or whose wait is over.
    pub fn resolve_waiters(&mut self, host: &dyn Host) -> Vec<(u32, Outcome)> {
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let now = host.now_ms();
        let waiters = std::mem::take(&mut self.waiters);
        let mut done = Vec::new();
        for w in waiters {
            self.keys.refresh(host, &self.cfg, w.issuer);
            if self.keys.get(w.issuer).is_some() {
                match self.on_request(host, &w.request) {
                    Outcome::WaitForJwks { .. } if now < w.deadline_ms => self.waiters.push(w),
                    Outcome::WaitForJwks { .. } => done.push((w.context_id, self.timeout())),
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

    /// Metric for a held request that timed out (the glue calls it when it sends the reply).
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
                    issuer: idx,
                    cluster: iss.jwks.cluster.clone(),
                    path: iss.jwks.path.clone(),
                    authority: iss.jwks.authority.clone(),
                    timeout_ms: iss.jwks.timeout_ms,
                });
            }
        }
        plans
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
