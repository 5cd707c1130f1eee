//! Stage `authenticate`: who the token is. The worker's local cache (keyed by the whole
//! token), then for a JWT the shared verified-token cache (keyed by its SHA-256), else full
//! verification (JWKS, signature, claims) stored in the shared cache; for an opaque token
//! (introspection configured, not three dot-separated parts) its shape, then the shared
//! introspection cache, else an introspection call (claimed in shared data: one per token
//! and gateway) that the request waits for. The verified identity and its headers go into
//! the local cache and [`Ctx::verified`].

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::rc::Rc;

use crate::cache::{self, TokenHash};
use crate::config::Config;
use crate::engine::{request_refresh, Outcome, Request, SecretToken, Worker};
use crate::host::{Host, Level};
use crate::identity::Identity;
use crate::introspection::{self, State};
use crate::jwks::{KeySet, WorkerKeys};
use crate::jwt::{self, KeySource, VerifyError};
use crate::metrics::Metric;
use crate::reject::{self, Rejection};

use super::{Ctx, Step, Verified};

/// Sets [`Ctx::verified`] (and [`Ctx::now_ms`]); an anonymous request (no token) passes.
pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let Some(token) = cx.token.as_deref() else {
        return ControlFlow::Continue(());
    };
    let now_ms = host.now_ms();
    cx.now_ms = now_ms;
    let now = now_ms / 1000;
    if let Some(v) = w.local.get(token, now) {
        host.metric(Metric::CacheHit, 1);
        cx.verified = Some(Rc::clone(v));
        return ControlFlow::Continue(());
    }
    let opaque = w.cfg.introspection.is_some() && token.bytes().filter(|b| *b == b'.').count() != 2;
    if opaque {
        if let Some(r) = refuse_opaque_shape(w, host, token) {
            return ControlFlow::Break(Outcome::Reject(r));
        }
    }
    let found = if opaque {
        let hash = cache::hash_token(token);
        introspected(w, host, cx.req, token, &hash, now_ms)
    } else {
        let (hash, input_sha256) = cache::hash_token_and_input(token);
        shared_or_verify(w, host, token, (&hash, input_sha256.as_ref()), now, now_ms)
    };
    let (identity, expires_at) = match found {
        Ok(v) => v,
        Err(o) => return ControlFlow::Break(o),
    };
    let headers: Rc<[(String, String)]> = Rc::from(identity.headers(&w.cfg));
    let v = Rc::new(Verified { identity, headers });
    let max = w.cfg.cache_local_entries as usize;
    w.local.insert(max, token, expires_at, Rc::clone(&v), now);
    cx.verified = Some(v);
    ControlFlow::Continue(())
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
    verified: Rc<Verified>,
}

/// A worker's local copy of recently used verified tokens (`cache.local_entries`, in front
/// of the shared cache: a hit there costs no hostcall). Local entries expire with their
/// shared entry; when full, expired entries are dropped, and if none was expired the local
/// cache is cleared.
#[derive(Debug, Default)]
pub(crate) struct LocalCache {
    map: HashMap<LocalKey, LocalEntry>,
}

impl LocalCache {
    /// The entry of `token` unless it expired (`now`: Unix s). The key is the token itself
    /// (compared in full on a hit), so a hit costs no SHA-256.
    fn get(&self, token: &str, now: u64) -> Option<&Rc<Verified>> {
        self.map
            .get(token)
            .filter(|e| now < e.expires_at)
            .map(|e| &e.verified)
    }

    /// Remember a verified token until `expires_at` (at most `max` entries; 0: none).
    fn insert(&mut self, max: usize, token: &str, expires_at: u64, v: Rc<Verified>, now: u64) {
        if max == 0 {
            return;
        }
        if self.map.len() >= max {
            self.map.retain(|_, e| e.expires_at > now);
            if self.map.len() >= max {
                self.map.clear();
            }
        }
        self.map.insert(
            LocalKey(Box::from(token)),
            LocalEntry {
                expires_at,
                verified: v,
            },
        );
    }
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

/// An opaque token of a shape no token of the issuer has: refused without a call.
fn refuse_opaque_shape(w: &Worker, host: &dyn Host, token: &str) -> Option<Rejection> {
    let x = w.cfg.introspection.as_ref()?;
    (!x.shape.fits(token)).then(|| crate::opaque::refuse_shape(host, &w.cfg.realm))
}

/// A new opaque token about to be introspected: counted against the client address's
/// miss limit; `Some(429)` over it.
fn over_miss_limit(w: &Worker, host: &dyn Host, req: &Request) -> Option<Rejection> {
    let limit = w.cfg.introspection.as_ref()?.miss_limit.as_ref()?;
    crate::opaque::count_miss(host, limit, &req.client_ip(&w.cfg.client_ip))
}

/// An opaque token: the introspection cache, else claim the call (or wait for the
/// worker that has it). Returns the identity and its local expiry (Unix s).
fn introspected(
    w: &Worker,
    host: &dyn Host,
    req: &Request,
    token: &str,
    hash: &TokenHash,
    now_ms: u64,
) -> Result<(Identity, u64), Outcome> {
    let Some(x) = &w.cfg.introspection else {
        return Err(Outcome::Reject(reject::invalid_token(
            &w.cfg.realm,
            "malformed token",
            "malformed",
        )));
    };
    match introspection::lookup(host, &x.settings, hash, now_ms) {
        State::Active(id, until_ms) => {
            host.metric(Metric::CacheHit, 1);
            Ok((*id, until_ms / 1000))
        }
        State::Inactive => {
            host.metric(Metric::Denied("inactive"), 1);
            Err(Outcome::Reject(reject::invalid_token(
                &w.cfg.realm,
                "token inactive",
                "inactive",
            )))
        }
        State::Pending { .. } => Err(Outcome::WaitForIntrospection { hash: *hash }),
        State::Miss { cas, held } => {
            host.metric(Metric::CacheMiss, 1);
            if let Some(r) = over_miss_limit(w, host, req) {
                return Err(Outcome::Reject(r));
            }
            if held {
                // The slot keeps another token's live answer: no claim, and one call per
                // worker at a time (its answer decides the requests waiting here).
                if w.inflight.iter().any(|(h, _)| h == hash) {
                    return Err(Outcome::WaitForIntrospection { hash: *hash });
                }
                host.metric(Metric::IntrospectionCall, 1);
                return Err(Outcome::Introspect {
                    hash: *hash,
                    token: SecretToken(token.to_string()),
                });
            }
            if introspection::claim(host, &x.settings, hash, w.id, cas, now_ms) {
                host.metric(Metric::IntrospectionCall, 1);
                Err(Outcome::Introspect {
                    hash: *hash,
                    token: SecretToken(token.to_string()),
                })
            } else {
                Err(Outcome::WaitForIntrospection { hash: *hash })
            }
        }
    }
}

/// Shared cache, else full verification (then stored in the shared cache). Returns the
/// identity and when its cache entry expires, or the outcome to return instead.
/// `hashes`: the token's cache hash and SHA-256 of its signing input
/// ([`cache::hash_token_and_input`]).
fn shared_or_verify(
    w: &mut Worker,
    host: &dyn Host,
    token: &str,
    (hash, input_sha256): (&cache::TokenHash, Option<&[u8; 32]>),
    now: u64,
    now_ms: u64,
) -> Result<(Identity, u64), Outcome> {
    let cfg = &w.cfg;
    let look = cache::lookup(host, cfg, hash, now);
    if let Some((id, expires_at)) = look.hit.clone() {
        host.metric(Metric::CacheHit, 1);
        return Ok((id, expires_at));
    }
    host.metric(Metric::CacheMiss, 1);
    let mut ks = LazyKeys {
        keys: &mut w.keys,
        host,
        cfg,
    };
    match jwt::verify_with_digest(token, cfg, &mut ks, now, input_sha256) {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;
    use crate::testing::MemoryHost;

    fn authenticate(w: &mut Worker, host: &MemoryHost, token: &str) -> (Step, Ctx<'static>) {
        let req: &'static crate::engine::Request = Box::leak(Box::new(request("/r", None)));
        let mut cx = Ctx::new(&w.cfg, req);
        cx.token = Some(token.to_string());
        let step = run(&mut cx, w, host);
        (step, cx)
    }

    #[test]
    fn a_verified_token_is_kept_in_the_local_cache() {
        let (host, mut w) = worker(json!({}));
        let t = token(&[("scope", "read")]);
        let (step, cx) = authenticate(&mut w, &host, &t);
        assert_eq!(step, ControlFlow::Continue(()));
        let first = cx.verified.expect("verified");
        assert_eq!(first.identity.sub, "alice");
        assert!(first
            .headers
            .iter()
            .any(|(k, v)| k == "x-tollgate-sub" && v == "alice"));
        assert_eq!(cx.now_ms, NOW * 1000);
        assert_eq!(host.metric_value(Metric::CacheMiss), 1);
        // The second time: the local cache, the same identity, no shared lookup.
        let (step, cx) = authenticate(&mut w, &host, &t);
        assert_eq!(step, ControlFlow::Continue(()));
        assert!(Rc::ptr_eq(&first, cx.verified.as_ref().expect("verified")));
        assert_eq!(host.metric_value(Metric::CacheHit), 1);
        assert_eq!(host.metric_value(Metric::CacheMiss), 1);
    }

    #[test]
    fn without_a_local_cache_the_shared_cache_answers() {
        let (host, mut w) = worker(json!({"cache": {"local_entries": 0}}));
        let t = token(&[]);
        for _ in 0..2 {
            let (step, _) = authenticate(&mut w, &host, &t);
            assert_eq!(step, ControlFlow::Continue(()));
        }
        assert_eq!(host.metric_value(Metric::CacheMiss), 1);
        assert_eq!(host.metric_value(Metric::CacheHit), 1);
    }

    #[test]
    fn a_forged_signature_is_refused_and_not_cached() {
        let (host, mut w) = worker(json!({}));
        let t = token(&[]);
        let forged = format!("{}AAAA", &t[..t.len() - 4]);
        for _ in 0..2 {
            let (step, cx) = authenticate(&mut w, &host, &forged);
            let ControlFlow::Break(Outcome::Reject(r)) = step else {
                panic!("{step:?}")
            };
            assert_eq!(r.status, 401);
            assert!(cx.verified.is_none());
        }
        assert_eq!(
            host.metric_value(Metric::CacheMiss),
            2,
            "verified each time"
        );
    }

    #[test]
    fn before_any_jwks_the_request_waits() {
        let host = MemoryHost::new(NOW * 1000);
        let mut w = Worker::new(config(json!({})));
        let (step, _) = authenticate(&mut w, &host, &token(&[]));
        assert_eq!(step, ControlFlow::Break(Outcome::WaitForJwks { issuer: 0 }));
    }

    #[test]
    fn an_anonymous_request_passes_untouched() {
        let (host, mut w) = worker(json!({}));
        let req = request("/r", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        let before = host.metrics.borrow().clone();
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
        assert!(cx.verified.is_none());
        assert_eq!(cx.now_ms, 0);
        assert_eq!(*host.metrics.borrow(), before, "nothing counted");
    }

    /// Well-shaped made-up tokens cannot evict a token the auth server vouched for: with one
    /// slot, a second token is introspected without claiming it, its inactive answer is
    /// not stored over the first, and another worker still finds the first in the cache
    /// (while the auth server is down, that is the difference between 200 and 503).
    #[test]
    fn a_made_up_opaque_token_does_not_evict_a_cached_one() {
        let (host, mut w) = worker(json!({
            "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
            "introspection": {"issuer": ISS, "slots": 1}}));
        let good = "tg_at_goodAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let (step, _) = authenticate(&mut w, &host, good);
        let ControlFlow::Break(Outcome::Introspect { hash, .. }) = step else {
            panic!("{step:?}")
        };
        w.note_introspection_call(hash, 1);
        let active = format!(
            r#"{{"active":true,"iss":"{ISS}","sub":"alice","aud":"a","exp":{}}}"#,
            NOW + 60
        );
        let _ = w.on_introspection(&host, hash, Ok((200, active.into_bytes())));

        let madeup = "tg_at_madeAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let (step, _) = authenticate(&mut w, &host, madeup);
        let ControlFlow::Break(Outcome::Introspect { hash: h2, .. }) = step else {
            panic!("{step:?}")
        };
        w.note_introspection_call(h2, 2);
        // A second request with it on this worker waits for that call.
        let (step, _) = authenticate(&mut w, &host, madeup);
        assert_eq!(
            step,
            ControlFlow::Break(Outcome::WaitForIntrospection { hash: h2 })
        );
        let _ = w.on_introspection(&host, h2, Ok((200, br#"{"active":false}"#.to_vec())));

        // Another worker (no local cache entry) still finds the vouched token.
        let mut other = Worker::new(w.cfg.clone());
        other.init_shared(&host);
        let (step, cx) = authenticate(&mut other, &host, good);
        assert_eq!(step, ControlFlow::Continue(()));
        assert_eq!(cx.identity().map(|i| i.sub.as_str()), Some("alice"));
    }

    #[test]
    fn an_opaque_token_is_introspected_once_per_gateway() {
        let (host, mut w) = worker(json!({
            "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
            "introspection": {"issuer": ISS, "slots": 16}}));
        // A shape no token of the issuer has: refused without a call.
        let (step, _) = authenticate(&mut w, &host, "short");
        let ControlFlow::Break(Outcome::Reject(r)) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.status, 401);
        let t = "tg_at_opaqueAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let hash = cache::hash_token(t);
        let (step, _) = authenticate(&mut w, &host, t);
        assert_eq!(
            step,
            ControlFlow::Break(Outcome::Introspect {
                hash,
                token: SecretToken(t.to_string())
            })
        );
        // The second request with the token waits for that call instead of making one.
        let (step, _) = authenticate(&mut w, &host, t);
        assert_eq!(
            step,
            ControlFlow::Break(Outcome::WaitForIntrospection { hash })
        );
        assert_eq!(host.metric_value(Metric::IntrospectionCall), 1);
    }
}
