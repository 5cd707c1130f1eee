//! Stage `limit`: the route rule's rate limit, keyed by the identity's `client_id` /
//! `sub`, the client address or a request header. Local mode: a GCRA bucket in shared data
//! (shared by the workers of this gateway). Global mode: the key's quota lease from the
//! auth server; without one the request waits for the root tick's lease call (hold), and
//! without an answer the rule's `fail_mode` decides. The rate-limit response headers go to
//! [`Ctx::response_headers`].

use std::ops::ControlFlow;

use crate::config::{Config, LimitKey, RuleLimit};
use crate::engine::{Outcome, Request, Worker};
use crate::host::{Host, Level};
use crate::identity::Identity;
use crate::lease::{self, LeaseFailMode, Spend};
use crate::metrics::Metric;
use crate::ratelimit;
use crate::reject;

use super::{Ctx, Step};

pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    match count(w, host, cx.rule, cx.identity(), cx.req, true) {
        Ok(headers) => {
            cx.response_headers = headers;
            ControlFlow::Continue(())
        }
        Err(outcome) => ControlFlow::Break(outcome),
    }
}

/// Count the request against its rule's rate limit. `Ok(headers)`: allowed, with the
/// response headers to add (empty without a limit or with `response_headers: false`);
/// `Err(outcome)`: a 429 (or 503), or, in global mode without a lease and `may_wait`,
/// [`Outcome::WaitForLease`]. A shared-data failure lets the request through (counted,
/// logged).
pub(crate) fn count(
    w: &Worker,
    host: &dyn Host,
    rule: Option<usize>,
    identity: Option<&Identity>,
    req: &Request,
    may_wait: bool,
) -> Result<Vec<(String, String)>, Outcome> {
    let Some((idx, rl)) = rule.and_then(|i| {
        w.cfg
            .rules
            .get(i)
            .and_then(|r| r.rate_limit.as_ref())
            .map(|l| (i, l))
    }) else {
        return Ok(Vec::new());
    };
    let key = limit_key(&w.cfg, rl, identity, req);
    let Some(g) = &rl.global else {
        return local_limit(w, host, rl, &key);
    };
    let hash = lease::key_hash(&key);
    match lease::spend(host, g, &hash) {
        Ok(Spend::Allowed {
            remaining,
            reset_s,
            refill,
        }) => {
            if refill {
                w.want_lease(idx, hash);
            }
            Ok(if w.cfg.rate_limit_response_headers {
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
            w.want_lease(idx, hash);
            Err(Outcome::WaitForLease { rule: idx, hash })
        }
        Ok(Spend::Wait) | Ok(Spend::Failing) => lease_fail_mode(w, host, rl, g, &key),
        Err(e) => Ok(limit_not_counted(host, rl, &e)),
    }
}

/// The rule's own GCRA bucket, shared by the workers of this gateway.
fn local_limit(
    w: &Worker,
    host: &dyn Host,
    rl: &RuleLimit,
    key: &str,
) -> Result<Vec<(String, String)>, Outcome> {
    match ratelimit::check(host, &rl.limit, key) {
        Ok(d) if d.allowed => Ok(if w.cfg.rate_limit_response_headers {
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
    w: &Worker,
    host: &dyn Host,
    rl: &RuleLimit,
    g: &lease::Policy,
    key: &str,
) -> Result<Vec<(String, String)>, Outcome> {
    host.metric(Metric::RateLimitFallback, 1);
    match g.fail_mode {
        LeaseFailMode::Local => local_limit(w, host, rl, key),
        LeaseFailMode::Open => Ok(Vec::new()),
        LeaseFailMode::Closed => {
            host.metric(Metric::Denied("unavailable"), 1);
            Err(Outcome::Reject(reject::unavailable(
                &w.cfg.realm,
                "rate limit cannot be checked now, retry later",
                "unavailable",
            )))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;
    use crate::pipeline::authenticate;
    use crate::testing::MemoryHost;

    fn limit(w: &mut Worker, host: &MemoryHost, sub: &str) -> (Step, Vec<(String, String)>) {
        let t = token(&[("sub", sub)]);
        let req = request("/rl", Some(&t));
        let mut cx = Ctx::new(&w.cfg, &req);
        cx.token = Some(t.clone());
        assert_eq!(
            authenticate::run(&mut cx, w, host),
            ControlFlow::Continue(())
        );
        let step = run(&mut cx, w, host);
        (step, cx.response_headers)
    }

    #[test]
    fn a_local_limit_counts_per_key() {
        let (host, mut w) = worker(json!({"rules": [{"name": "one", "path_prefix": "/rl",
            "rate_limit": {"requests": 1, "period_s": 60, "key": "sub"}}]}));
        let (step, headers) = limit(&mut w, &host, "alice");
        assert_eq!(step, ControlFlow::Continue(()));
        assert!(
            headers.iter().any(|(k, _)| k == "ratelimit-policy"),
            "{headers:?}"
        );
        let (step, _) = limit(&mut w, &host, "alice");
        let ControlFlow::Break(Outcome::Reject(r)) = step else {
            panic!("{step:?}")
        };
        assert_eq!(r.status, 429);
        assert_eq!(host.metric_value(Metric::RateLimited), 1);
        // Another key has its own bucket.
        assert_eq!(limit(&mut w, &host, "bob").0, ControlFlow::Continue(()));
    }

    #[test]
    fn a_global_limit_without_a_lease_holds_and_asks_for_one() {
        let (host, mut w) = worker(json!({
            "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
            "rules": [{"name": "g", "path_prefix": "/rl",
                       "rate_limit": {"requests": 10, "period_s": 60, "key": "sub",
                                      "mode": "global"}}]}));
        let (step, _) = limit(&mut w, &host, "alice");
        let ControlFlow::Break(Outcome::WaitForLease { rule, hash }) = step else {
            panic!("{step:?}")
        };
        assert_eq!(rule, 0);
        assert_eq!(w.wanted.borrow().as_slice(), &[(0, hash)]);
    }

    #[test]
    fn no_limit_no_headers() {
        let (host, mut w) = worker(json!({}));
        assert_eq!(
            limit(&mut w, &host, "alice"),
            (ControlFlow::Continue(()), Vec::new())
        );
    }
}
