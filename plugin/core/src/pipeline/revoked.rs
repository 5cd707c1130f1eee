//! Stage `revoked`: the verified token's `jti` against the revoked set the root context
//! keeps from the revocation feed; while the feed is stale, its `stale_mode` (closed: 503).
//! Without revocation configured, or for an anonymous request, nothing to check.

use std::ops::ControlFlow;

use crate::config::FailMode;
use crate::engine::{Outcome, Worker};
use crate::host::Host;
use crate::metrics::Metric;
use crate::reject;
use crate::revocation;

use super::{Ctx, Step};

pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let cfg = &w.cfg;
    let (Some(identity), Some(rv)) = (cx.identity(), &cfg.revocation) else {
        return ControlFlow::Continue(());
    };
    if let Some(jti) = &identity.jti {
        if revocation::is_revoked(host, &rv.settings, jti, cx.now_ms / 1000) {
            host.metric(Metric::Denied("revoked"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::invalid_token(
                &cfg.realm,
                "token revoked",
                "revoked",
            )));
        }
    }
    if w.stale {
        host.metric(Metric::RevocationStale, 1);
        if rv.stale_mode == FailMode::Closed {
            host.metric(Metric::Denied("unavailable"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::unavailable(
                &cfg.realm,
                "revocation status unknown, retry later",
                "unavailable",
            )));
        }
    }
    ControlFlow::Continue(())
}
