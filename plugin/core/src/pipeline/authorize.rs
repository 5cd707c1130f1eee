//! Stage `authorize`: the route rule's policy against the verified identity: its
//! audiences (any one of them in `aud`) and its scopes (all or any, by `scope_mode`).
//! An anonymous request reached here only on a rule that allows it (such a rule requires
//! no scope or audience: the configuration refuses it): nothing to check.

use std::ops::ControlFlow;

use crate::config::{Config, Policy};
use crate::engine::{Outcome, Worker};
use crate::host::Host;
use crate::identity::Identity;
use crate::metrics::Metric;
use crate::reject::{self, Rejection};
use crate::rules;

use super::{Ctx, Step};

pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let Some(identity) = cx.identity() else {
        return ControlFlow::Continue(());
    };
    let policy = rules::policy(&w.cfg, cx.rule);
    match check_policy(host, &w.cfg, policy, identity) {
        Ok(()) => ControlFlow::Continue(()),
        Err(r) => ControlFlow::Break(Outcome::Reject(r)),
    }
}

/// The route's policy: `Err` with the rejection (401 `invalid_token` for the audience,
/// 403 `insufficient_scope`).
pub(crate) fn check_policy(
    host: &dyn Host,
    cfg: &Config,
    policy: &Policy,
    identity: &Identity,
) -> Result<(), Rejection> {
    // The route's policy.
    if !policy.audiences.is_empty() && !identity.aud.iter().any(|a| policy.audiences.contains(a)) {
        host.metric(Metric::DeniedRuleAudience, 1);
        return Err(reject::invalid_token(
            &cfg.realm,
            "audience not accepted for this resource",
            "rule_audience",
        ));
    }
    if !policy.scopes.is_empty() {
        let ok = match policy.scope_mode {
            crate::config::ScopeMode::All => policy.scopes.iter().all(|s| identity.has_scope(s)),
            crate::config::ScopeMode::Any => policy.scopes.iter().any(|s| identity.has_scope(s)),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;
    use crate::pipeline::authenticate;
    use crate::testing::MemoryHost;

    fn decide(w: &mut Worker, host: &MemoryHost, path: &str, claims: &[(&str, &str)]) -> Step {
        let t = token(claims);
        let req = request(path, Some(&t));
        let mut cx = Ctx::new(&w.cfg, &req);
        cx.token = Some(t.clone());
        assert_eq!(
            authenticate::run(&mut cx, w, host),
            ControlFlow::Continue(())
        );
        run(&mut cx, w, host)
    }

    fn status(step: Step) -> u16 {
        match step {
            ControlFlow::Continue(()) => 200,
            ControlFlow::Break(Outcome::Reject(r)) => r.status,
            ControlFlow::Break(o) => panic!("{o:?}"),
        }
    }

    #[test]
    fn scopes_all_or_any() {
        let (host, mut w) = worker(json!({"rules": [
            {"path_prefix": "/all", "scopes": ["read", "write"]},
            {"path_prefix": "/any", "scopes": ["read", "write"], "scope_mode": "any"}]}));
        assert_eq!(
            status(decide(&mut w, &host, "/all", &[("scope", "read write")])),
            200
        );
        assert_eq!(
            status(decide(&mut w, &host, "/all", &[("scope", "read")])),
            403
        );
        assert_eq!(
            status(decide(&mut w, &host, "/any", &[("scope", "write")])),
            200
        );
        assert_eq!(
            status(decide(&mut w, &host, "/any", &[("scope", "admin")])),
            403
        );
        assert_eq!(
            status(decide(&mut w, &host, "/any", &[("scope", "-")])),
            403
        );
        assert_eq!(host.metric_value(Metric::DeniedScope), 3);
        // No rule: the default rule requires a token, no scope.
        assert_eq!(status(decide(&mut w, &host, "/other", &[])), 200);
    }

    #[test]
    fn rule_audiences_narrow_the_issuer_audiences() {
        let (host, mut w) = worker(json!({
            "issuers": [{"issuer": ISS, "audiences": ["a", "b"], "jwks": {"cluster": "auth"}}],
            "rules": [{"path_prefix": "/b", "audiences": ["b"]}]}));
        assert_eq!(status(decide(&mut w, &host, "/b", &[("aud", "b")])), 200);
        let step = decide(&mut w, &host, "/b", &[("aud", "a")]);
        let ControlFlow::Break(Outcome::Reject(r)) = step else {
            panic!("{step:?}")
        };
        assert_eq!((r.status, r.reason), (401, "rule_audience"));
        assert_eq!(status(decide(&mut w, &host, "/x", &[("aud", "a")])), 200);
    }
}
