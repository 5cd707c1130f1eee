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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;
    use crate::pipeline::authenticate;
    use crate::testing::MemoryHost;

    fn with_feed(stale_mode: &str, revoked: &[&str]) -> (MemoryHost, Worker) {
        let (host, mut w) = worker(json!({
            "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
            "revocation": {"stale_after_s": 2, "stale_mode": stale_mode}}));
        // The first tick (in `worker`) started the poll: its answer.
        let entries: Vec<_> = revoked
            .iter()
            .map(|j| json!({"jti": j, "exp": NOW + 600}))
            .collect();
        let feed = json!({"cursor": "1", "resync": true, "more": false,
                          "revocations": entries});
        w.on_revocations(&host, Ok((200, feed.to_string().into_bytes())));
        (host, w)
    }

    fn check(w: &mut Worker, host: &MemoryHost, jti: &str) -> Step {
        let req = request("/r", Some(&token(&[("jti", jti)])));
        let mut cx = Ctx::new(&w.cfg, &req);
        cx.token = Some(token(&[("jti", jti)]));
        assert_eq!(
            authenticate::run(&mut cx, w, host),
            ControlFlow::Continue(())
        );
        run(&mut cx, w, host)
    }

    #[test]
    fn a_revoked_jti_is_401_and_only_that_one() {
        let (host, mut w) = with_feed("open", &["jti-bad"]);
        let ControlFlow::Break(Outcome::Reject(r)) = check(&mut w, &host, "jti-bad") else {
            panic!("not refused")
        };
        assert_eq!((r.status, r.reason), (401, "revoked"));
        assert_eq!(check(&mut w, &host, "jti-good"), ControlFlow::Continue(()));
    }

    #[test]
    fn a_stale_feed_follows_stale_mode() {
        for (mode, refused) in [("open", false), ("closed", true)] {
            let (host, mut w) = with_feed(mode, &[]);
            w.stale = true;
            let step = check(&mut w, &host, "jti-good");
            assert_eq!(
                matches!(step, ControlFlow::Break(Outcome::Reject(ref r)) if r.status == 503),
                refused,
                "{mode}: {step:?}"
            );
            assert_eq!(host.metric_value(Metric::RevocationStale), 1);
        }
    }

    #[test]
    fn an_anonymous_request_has_nothing_to_check() {
        let (host, mut w) = with_feed("closed", &[]);
        w.stale = true;
        let req = request("/r", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
    }
}
