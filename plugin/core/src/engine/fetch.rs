//! The background side: the timer (which calls to start: JWKS fetches, revocation-feed
//! polls, rate-limit leases), the request of an introspection call, and what becomes of
//! every answer. The glue dispatches the [`FetchPlan`]s and hands the answers back here.

use crate::cache::TokenHash;
use crate::config::Config;
use crate::host::{Host, Level};
use crate::introspection;
use crate::jwks::{self, JwksMeta, KeySet};
use crate::jwt::Alg;
use crate::lease;
use crate::metrics::Metric;
use crate::reject;
use crate::revocation;

use super::{hex, FetchKind, FetchPlan, IntroWaiter, Outcome, SecretToken, Worker};

impl Worker {
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

    /// How long the revocation feed has gone without a good answer, as shared data says
    /// (any worker's poll counts): since the last good poll, or since this worker started
    /// before any; a long poll held since right after a good answer counts as fresh.
    fn stale_for_ms(&self, host: &dyn Host, now: u64) -> u64 {
        let Some(rv) = &self.cfg.revocation else {
            return 0;
        };
        let st = revocation::state(host, &rv.settings);
        let fresh = revocation::longpoll::fresh_as_of_ms(
            host,
            &rv.settings,
            &st,
            self.cfg.tick_ms.saturating_mul(2),
            now,
        );
        now.saturating_sub(fresh.max(self.started_ms))
    }

    /// For a request this worker would refuse (or let pass) as stale: whether the feed is
    /// still stale now. Another worker's good poll since this worker's last tick clears it,
    /// so that no worker answers "stale" after the feed has healed. One shared-data read,
    /// only while stale. `now`: the request's clock reading.
    pub(crate) fn recheck_stale(&mut self, host: &dyn Host, now: u64) -> bool {
        if self.stale {
            let limit = self
                .cfg
                .revocation
                .as_ref()
                .map_or(0, |rv| rv.stale_after_ms);
            self.stale = self.stale_for_ms(host, now) > limit;
        }
        self.stale
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
        // The ES384 generator table (9–12 ms in V8, ≈ 200 KB) only once this worker holds a
        // P-384 key: the default algorithm list allows ES384, which few issuers use. A token
        // that comes first builds it itself (`prepare` is a no-op once built).
        let p384 = (0..self.cfg.issuers.len())
            .filter_map(|i| self.keys.get(i))
            .any(|set| set.keys.iter().any(|k| k.p384.is_some()));
        if p384 {
            crate::es384::prepare();
        }
        if let (Some(rv), Some(a)) = (&self.cfg.revocation, &self.cfg.auth_server) {
            // Staleness, once per tick (and again by a request this worker would refuse
            // as stale: `recheck_stale`).
            let stale_for = self.stale_for_ms(host, now);
            let stale = stale_for > rv.stale_after_ms;
            if stale && !self.stale {
                host.log(
                    Level::Warn,
                    &format!(
                        "tollgate: revocation feed stale for {stale_for} ms (stale_mode {:?})",
                        rv.stale_mode
                    ),
                );
            }
            self.stale = stale;
            if let Some(path) = revocation::plan_poll(host, &rv.settings, self.id, now) {
                let st = revocation::state(host, &rv.settings);
                let long_poll =
                    revocation::longpoll::planned_wait_s(host, &rv.settings, &st, now) > 0;
                plans.push(FetchPlan {
                    kind: FetchKind::Revocations,
                    cluster: a.cluster.clone(),
                    method: "GET",
                    path,
                    authority: a.authority.clone(),
                    headers: a.with_credentials(vec![("accept".into(), "application/json".into())]),
                    body: None,
                    timeout_ms: if long_poll {
                        rv.settings.call_timeout_ms
                    } else {
                        a.timeout_ms
                    },
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
        let st = revocation::state(host, &rv.settings);
        let asked_wait = revocation::longpoll::planned_wait_s(host, &rv.settings, &st, now);
        let r = match result {
            Ok((200, body)) => {
                revocation::on_poll_answer(host, &rv.settings, self.id, Some(&body), now)
                    .map_err(|e| e.to_string())
            }
            Ok((404, _)) if asked_wait > 0 => {
                self.long_poll_refused(host, rv, now, "answers 404 to a long poll");
                Err("HTTP status 404 to a long poll".to_string())
            }
            Ok((status, _)) => Err(format!("HTTP status {status}")),
            Err(e) => Err(e),
        };
        match r {
            Ok(applied) => {
                if asked_wait > 0 {
                    if applied.wait_s.is_none() {
                        self.long_poll_refused(host, rv, now, "does not hold long polls");
                    } else if applied.more || applied.entries > 0 {
                        self.poll_follow_up = true;
                    }
                }
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

    /// The server refused long polls: poll for a while (see `revocation::longpoll`).
    fn long_poll_refused(
        &self,
        host: &dyn Host,
        rv: &crate::config::Revocation,
        now: u64,
        why: &str,
    ) {
        revocation::longpoll::fall_back(host, &rv.settings, now);
        host.log(
            Level::Warn,
            &format!(
                "tollgate: the auth server {why}: polling the revocation feed every {} ms \
                 for {} s, then trying a long poll again",
                rv.settings.poll_interval_ms,
                revocation::longpoll::FALLBACK_MS / 1000
            ),
        );
    }

    /// Whether the next revocation poll should start now (a long-poll answer carried
    /// revocations): the glue then runs [`Worker::tick`] from the answer's callback.
    pub fn take_poll_follow_up(&mut self) -> bool {
        std::mem::take(&mut self.poll_follow_up)
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
