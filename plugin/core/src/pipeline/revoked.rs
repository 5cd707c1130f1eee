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
    let (Some(identity), Some(rv)) = (cx.identity(), &w.cfg.revocation) else {
        return ControlFlow::Continue(());
    };
    if let Some(jti) = &identity.jti {
        if revocation::is_revoked(host, &rv.settings, jti, cx.now_ms / 1000) {
            host.metric(Metric::Denied("revoked"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::invalid_token(
                &w.cfg.realm,
                "token revoked",
                "revoked",
            )));
        }
    }
    let closed = rv.stale_mode == FailMode::Closed;
    if w.recheck_stale(host, cx.now_ms) {
        host.metric(Metric::RevocationStale, 1);
        if closed {
            host.metric(Metric::Denied("unavailable"), 1);
            return ControlFlow::Break(Outcome::Reject(reject::unavailable(
                &w.cfg.realm,
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
            "revocation": {"mode": "poll", "stale_after_s": 2, "stale_mode": stale_mode}}));
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
            // Past `stale_after_s` with no good answer since: the tick finds it stale.
            host.advance_ms(3_000);
            w.tick(&host);
            assert!(w.revocations_stale());
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
    fn a_good_poll_by_another_worker_ends_the_staleness_before_this_workers_next_tick() {
        let (host, mut w) = with_feed("closed", &[]);
        host.advance_ms(3_000);
        w.tick(&host); // stale; this tick also claimed the next poll
        assert!(w.revocations_stale());
        // The poll's good answer lands in shared data (as any worker's would), not through
        // this worker's `on_revocations`: its own flag still says stale.
        let Some(rv) = &w.cfg.revocation else {
            panic!("no revocation feed")
        };
        let feed = json!({"cursor": "2", "more": false, "revocations": []});
        revocation::on_poll_answer(
            &host,
            &rv.settings,
            w.id + 1,
            Some(feed.to_string().as_bytes()),
            host.now_ms(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(w.revocations_stale());
        // The request re-reads shared data instead of answering 503.
        assert_eq!(check(&mut w, &host, "jti-good"), ControlFlow::Continue(()));
        assert!(!w.revocations_stale());
        assert_eq!(host.metric_value(Metric::RevocationStale), 0);
        // Stale again at a later tick: closed it is.
        host.advance_ms(3_000);
        w.tick(&host);
        let step = check(&mut w, &host, "jti-good");
        assert!(
            matches!(step, ControlFlow::Break(Outcome::Reject(ref r)) if r.status == 503),
            "{step:?}"
        );
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
