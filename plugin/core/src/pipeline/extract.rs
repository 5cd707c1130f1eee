//! Stage `extract`: where the token is. The configured token sources are read in order;
//! no token passes only on a rule that allows anonymous requests, an unusable or repeated
//! token header and a token over `max_token_bytes` are refused.

use std::ops::ControlFlow;

use crate::engine::{Outcome, Worker};
use crate::host::Host;
use crate::metrics::Metric;
use crate::reject;
use crate::rules;
use crate::token::{self, Found};

use super::{Ctx, Step};

/// Puts the token in [`Ctx::token`], or leaves it `None` for an allowed anonymous request.
pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let cfg = &w.cfg;
    let token = match token::extract(cfg, cx.req.headers.as_slice(), &cx.req.path) {
        Found::None => {
            let policy = rules::policy(cfg, cx.rule);
            if policy.allow_anonymous {
                return ControlFlow::Continue(());
            }
            host.metric(Metric::DeniedMissing, 1);
            return ControlFlow::Break(Outcome::Reject(if policy.sender_constrained {
                reject::missing_dpop_token(&cfg.realm)
            } else {
                reject::missing_token(&cfg.realm)
            }));
        }
        Found::Unusable => {
            host.metric(Metric::Denied("malformed"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::invalid_token(
                &cfg.realm,
                "malformed token",
                "malformed",
            )));
        }
        Found::Repeated => {
            host.metric(Metric::Denied("repeated"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::invalid_request(
                &cfg.realm,
                "more than one token header",
                "repeated",
            )));
        }
        Found::Token(t) => t,
        Found::DPoP(t) => {
            cx.dpop = true;
            t
        }
    };
    if token.len() > cfg.max_token_bytes {
        host.metric(Metric::Denied("too_large"), 1);
        return ControlFlow::Break(Outcome::Reject(reject::invalid_token(
            &cfg.realm,
            "token too large",
            "too_large",
        )));
    }
    cx.token = Some(token);
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

    fn reject_of(step: Step) -> (u16, &'static str) {
        match step {
            ControlFlow::Break(Outcome::Reject(r)) => (r.status, r.reason),
            other => panic!("not a rejection: {other:?}"),
        }
    }

    #[test]
    fn a_bearer_token_goes_into_the_context() {
        let (host, mut w) = worker(json!({}));
        let req = request("/r", Some("abc.def.ghi"));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
        assert_eq!(cx.token.as_deref(), Some("abc.def.ghi"));
    }

    #[test]
    fn the_dpop_scheme_is_accepted_and_marked() {
        let (host, mut w) = worker(json!({"rules": [{"path_prefix": "/bound",
                                                     "require": "sender_constrained"}]}));
        let mut req = request("/r", None);
        req.headers
            .push(("authorization".into(), "dpop abc.def.ghi".into()));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
        assert_eq!(cx.token.as_deref(), Some("abc.def.ghi"));
        assert!(cx.dpop);
        // Negative: a Bearer token is not marked; DPoP with two credentials is repeated.
        let req = request("/r", Some("abc.def.ghi"));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
        assert!(!cx.dpop);
        let mut req = request("/r", None);
        req.headers
            .push(("authorization".into(), "DPoP a.b.c, Bearer d.e.f".into()));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(reject_of(run(&mut cx, &mut w, &host)), (400, "repeated"));
        // No token on a route requiring sender-constrained tokens: a DPoP challenge.
        let req = request("/bound/x", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        let ControlFlow::Break(Outcome::Reject(r)) = run(&mut cx, &mut w, &host) else {
            panic!("not refused")
        };
        assert_eq!(r.status, 401);
        assert!(r.headers.iter().any(
            |(k, v)| k == "www-authenticate" && v == "DPoP realm=\"tollgate\", algs=\"ES256\""
        ));
    }

    #[test]
    fn no_token_is_401_unless_the_rule_allows_anonymous() {
        let (host, mut w) = worker(json!({"rules": [{"path_prefix": "/open",
                                                     "allow_anonymous": true}]}));
        let req = request("/closed", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(reject_of(run(&mut cx, &mut w, &host)).0, 401);
        assert_eq!(host.metric_value(Metric::DeniedMissing), 1);
        // Negative: the anonymous rule lets it through without a token, nothing else does.
        let req = request("/open/x", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
        assert!(cx.token.is_none());
    }

    #[test]
    fn unusable_repeated_and_oversized_tokens_are_refused() {
        let (host, mut w) = worker(json!({"max_token_bytes": 256}));
        let mut req = request("/r", None);
        req.headers
            .push(("authorization".into(), "Basic xyz".into()));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(reject_of(run(&mut cx, &mut w, &host)), (401, "malformed"));

        let mut req = request("/r", Some("a.b.c"));
        req.headers
            .push(("authorization".into(), "Bearer d.e.f".into()));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(reject_of(run(&mut cx, &mut w, &host)), (400, "repeated"));

        let long = "x".repeat(257);
        let req = request("/r", Some(&long));
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(reject_of(run(&mut cx, &mut w, &host)), (401, "too_large"));
        assert!(cx.token.is_none());
    }
}
