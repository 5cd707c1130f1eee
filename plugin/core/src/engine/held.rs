//! Held requests: those that wait for a first JWKS, for an introspection answer or for a
//! rate-limit lease, and how they are decided again (through the same pipeline) when the
//! answer is in, or answered when their wait is over.

use std::rc::Rc;

use crate::cache::TokenHash;
use crate::config::FailMode;
use crate::host::Host;
use crate::introspection;
use crate::lease::{self, KeyHash};
use crate::metrics::Metric;
use crate::pipeline::{identity, limit};
use crate::reject::{self, Rejection};
use crate::rules::{self, RouteInfo};

use super::{Outcome, Request, Worker};

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

/// A request held until a first JWKS arrives.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub context_id: u32,
    pub deadline_ms: u64,
    pub issuer: usize,
    pub request: Request,
}

impl Worker {
    /// Hold a request until the issuer's first JWKS arrives (see [`Worker::resolve_waiters`]).
    pub fn hold(&mut self, host: &dyn Host, context_id: u32, issuer: usize, request: Request) {
        // Decided later from another context, where the connection is not at hand.
        request.peer_certificate(host);
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
        // Decided later from another context, where the connection is not at hand.
        request.peer_certificate(host);
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

    /// The outcome for a request whose introspection could not be answered, by `fail_mode`:
    /// `closed` → 503; `open` → forwarded without identity, only on routes that require no
    /// scope or audience (others still get the 503).
    pub(crate) fn introspection_unavailable(&self, host: &dyn Host, req: &Request) -> Outcome {
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
            return match limit::count(self, host, rule, None, req, false) {
                Err(o) => o,
                Ok(response_headers) => {
                    host.metric(Metric::AllowedUnverified, 1);
                    Outcome::Allow {
                        set: Rc::from(Vec::new()),
                        remove: identity::removed(&self.cfg),
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
    pub(crate) fn decide_intro_waiter(
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
    pub(crate) fn resolve_lease_waiters(
        &mut self,
        host: &dyn Host,
        done: &mut Vec<(u32, Outcome)>,
    ) {
        if self.lease_waiters.is_empty() {
            return;
        }
        let now = host.now_ms();
        for w in std::mem::take(&mut self.lease_waiters) {
            self.decide_lease_waiter(host, w, now, done);
        }
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
}
