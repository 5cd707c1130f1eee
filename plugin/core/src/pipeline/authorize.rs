//! Stage `authorize`: the route rule's policy against the verified identity: its
//! audiences (any one of them in `aud`) and its scopes (all or any, by `scope_mode`).
//! An anonymous request reached here only on a rule that allows it: nothing to check.

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
