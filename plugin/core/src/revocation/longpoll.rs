//! The feed as a long poll (`revocation.mode: long_poll`, the default): the poller asks
//! `…&wait=<long_poll_wait_s>`; the auth server answers at once when anything is newer
//! than the cursor, otherwise holds the call until a revocation is published or the wait
//! ends. One call per VM: the poller's lease in the shared state covers the whole held
//! call ([`hold_ms`]), so no other worker polls meanwhile; every worker reads the set the
//! answer wrote to shared data.
//!
//! - The first poll, and the first after a failure, do not wait: a gateway that lost the
//!   feed hears back at once ([`planned_wait_s`]).
//! - After a good answer the next poll is due at once (no poll interval); after one that
//!   carried revocations the glue starts it from the answer's callback, after an empty
//!   one (the wait's end, or a server answering at once while it stops) at the next tick.
//! - Fallback to polling (`poll_interval_ms`) for [`FALLBACK_MS`], kept in shared data
//!   (`tollgate/rv/<ns>/lp`): when the server answers 404 to a long poll (long polls off),
//!   or answers 200 without `wait_s` (a server that does not hold polls).
//! - Staleness: while a long poll started right after a good answer is held, the set is
//!   as fresh as the server's last wake-up ([`fresh_as_of_ms`]); a call that dies is
//!   bounded by its timeout, then staleness counts from the last good answer.

use super::{PollState, Settings};
use crate::host::Host;

/// How long a gateway polls (instead of long-polling) after the server refused a long
/// poll; then it tries again.
pub const FALLBACK_MS: u64 = 600_000;

/// Slack over the call's timeout before another worker may take the lease of a held call.
const HOLD_SLACK_MS: u64 = 1000;

fn fallback_key(s: &Settings) -> String {
    format!("tollgate/rv/{}/lp", s.namespace)
}

/// Until when (Unix ms) this gateway polls instead of long-polling (0: never fell back).
pub fn fallback_until_ms(host: &dyn Host, s: &Settings) -> u64 {
    match host.shared_get(&fallback_key(s)).0.as_deref() {
        Some(v) if v.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            u64::from_be_bytes(b)
        }
        _ => 0,
    }
}

/// The `wait` to ask for now: 0 when polling (mode `poll`, or fallen back).
pub fn wait_s(host: &dyn Host, s: &Settings, now_ms: u64) -> u64 {
    if s.long_poll_wait_s == 0 || fallback_until_ms(host, s) > now_ms {
        0
    } else {
        s.long_poll_wait_s
    }
}

/// The `wait` of the poll planned now: [`wait_s`] once the last poll succeeded; 0 for
/// the first poll and after a failure, so that a gateway that lost the feed (stale) hears
/// back at once, not at the end of a held call.
pub fn planned_wait_s(host: &dyn Host, s: &Settings, st: &PollState, now_ms: u64) -> u64 {
    if st.last_ok_ms > 0 && st.last_ok_ms >= st.last_done_ms {
        wait_s(host, s, now_ms)
    } else {
        0
    }
}

/// Fall back to polling for [`FALLBACK_MS`] (any worker may record it; the last wins).
pub fn fall_back(host: &dyn Host, s: &Settings, now_ms: u64) {
    let until = now_ms.saturating_add(FALLBACK_MS);
    let _ = host.shared_set(&fallback_key(s), &until.to_be_bytes(), None);
}

/// How long one poll may be in flight before the lease passes on: the lease, or a held
/// call's timeout and some slack when that is longer.
pub fn hold_ms(s: &Settings) -> u64 {
    if s.long_poll_wait_s == 0 {
        s.lease_ms
    } else {
        s.lease_ms
            .max(s.call_timeout_ms.saturating_add(HOLD_SLACK_MS))
    }
}

/// The interval before the next poll: none after a good answer while long-polling.
pub fn interval_ms(host: &dyn Host, s: &Settings, st: &PollState, now_ms: u64) -> u64 {
    let last_ok = st.last_ok_ms > 0 && st.last_ok_ms >= st.last_done_ms;
    if last_ok && wait_s(host, s, now_ms) > 0 {
        0
    } else {
        s.poll_interval_ms
    }
}

/// As of when (Unix ms) the revoked set is known complete: the last good answer, or now
/// while a long poll started right after it (within one `slack_ms`, the tick) is held and
/// its call has not timed out.
pub fn fresh_as_of_ms(
    host: &dyn Host,
    s: &Settings,
    st: &PollState,
    slack_ms: u64,
    now_ms: u64,
) -> u64 {
    // In flight: attempted at or after the last answer (the same millisecond counts).
    let held = st.last_attempt_ms >= st.last_done_ms
        && st.last_ok_ms > 0
        && st.last_ok_ms == st.last_done_ms
        && st.last_attempt_ms.saturating_sub(st.last_ok_ms) <= slack_ms
        && now_ms < st.last_attempt_ms.saturating_add(s.call_timeout_ms);
    if held && wait_s(host, s, now_ms) > 0 {
        now_ms
    } else {
        st.last_ok_ms
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::engine::{FetchKind, FetchPlan, Worker};
    use crate::testing::MemoryHost;

    const T0: u64 = 1_700_000_000_000;

    fn config(mode: &str) -> Config {
        Config::from_json(
            json!({"issuers": [{"issuer": "https://i", "audiences": ["a"],
                                "jwks": {"cluster": "auth"}}],
                   "auth_server": {"cluster": "auth", "client_id": "gw",
                                   "client_secret": "s3cret", "timeout_ms": 1000},
                   "revocation": {"mode": mode, "long_poll_wait_s": 25,
                                  "poll_interval_ms": 60000, "lease_ms": 61000,
                                  "stale_after_s": 5}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn feed_plan(w: &mut Worker, host: &MemoryHost) -> Option<FetchPlan> {
        w.tick(host)
            .into_iter()
            .find(|p| matches!(p.kind, FetchKind::Revocations))
    }

    fn page(cursor: &str, jtis: &[&str], wait_s: Option<u64>) -> Vec<u8> {
        let mut p = json!({"cursor": cursor, "resync": false, "more": false,
            "revocations": jtis.iter().map(|j| json!({"jti": j, "exp": T0 / 1000 + 600}))
                .collect::<Vec<_>>()});
        if let Some(w) = wait_s {
            p["wait_s"] = json!(w);
        }
        p.to_string().into_bytes()
    }

    /// The first poll (no cursor yet: it does not wait) and its answer.
    fn prime(a: &mut Worker, host: &MemoryHost) {
        let p = feed_plan(a, host).expect("the first poll");
        assert_eq!(p.path, "/edge/revocations", "the first poll does not wait");
        assert_eq!(p.timeout_ms, 1000);
        a.on_revocations(host, Ok((200, page("1", &[], None))));
        assert!(!a.take_poll_follow_up());
    }

    /// Two workers of one VM (one shared data).
    fn vm(mode: &str) -> (MemoryHost, Worker, Worker) {
        let host = MemoryHost::new(T0);
        let cfg = config(mode);
        let (a, b) = (Worker::new(cfg.clone()), Worker::new(cfg));
        a.init_shared(&host);
        (host, a, b)
    }

    #[test]
    fn one_long_poll_per_vm_and_the_next_at_once() {
        let (host, mut a, mut b) = vm("long_poll");
        prime(&mut a, &host);
        let p = feed_plan(&mut a, &host).expect("the first worker long-polls at once");
        assert_eq!(p.path, "/edge/revocations?since=1&wait=25");
        assert_eq!(p.timeout_ms, 26_000, "the call outlives the server's hold");
        // Held for its whole wait: the other worker never polls meanwhile, even past the
        // poller's lease_ms-free interval.
        for _ in 0..25 {
            host.advance_ms(1000);
            assert!(feed_plan(&mut b, &host).is_none());
            assert!(feed_plan(&mut a, &host).is_none(), "one call in flight");
        }
        a.on_revocations(&host, Ok((200, page("7", &["j1"], Some(25)))));
        assert!(a.take_poll_follow_up(), "revocations came: poll again now");
        assert!(!a.take_poll_follow_up());
        // Visible to every worker of the VM.
        let s = &a.cfg.revocation.as_ref().unwrap().settings;
        assert!(crate::revocation::is_revoked(&host, s, "j1", T0 / 1000));
        // Due at once (no poll interval), from the cursor.
        let p = feed_plan(&mut a, &host).expect("the next long poll, at once");
        assert_eq!(p.path, "/edge/revocations?since=7&wait=25");
        // The wait ended empty: no follow-up from the callback, due at the next tick.
        host.advance_ms(25_000);
        a.on_revocations(&host, Ok((200, page("7", &[], Some(25)))));
        assert!(!a.take_poll_follow_up());
        assert!(
            feed_plan(&mut b, &host).is_none(),
            "the lease stays with the poller"
        );
        assert!(feed_plan(&mut a, &host).is_some());
    }

    #[test]
    fn the_lease_of_a_dead_poller_passes_on_after_its_call_timeout() {
        let (host, mut a, mut b) = vm("long_poll");
        prime(&mut a, &host);
        assert!(feed_plan(&mut a, &host).is_some());
        // The poller's VM thread died with the call: nobody answers it.
        host.advance_ms(26_000);
        assert!(
            feed_plan(&mut b, &host).is_none(),
            "still within the call's timeout"
        );
        host.advance_ms(61_000);
        assert!(feed_plan(&mut b, &host).is_some());
    }

    #[test]
    fn a_404_to_a_long_poll_falls_back_to_polling() {
        let (host, mut a, _) = vm("long_poll");
        prime(&mut a, &host);
        assert!(feed_plan(&mut a, &host).unwrap().path.ends_with("wait=25"));
        a.on_revocations(&host, Ok((404, b"{}".to_vec())));
        assert_eq!(
            host.metric_value(crate::metrics::Metric::RevocationPollFailed),
            1
        );
        // Polling now: after the poll interval, without `wait`, with the usual timeout.
        host.advance_ms(59_000);
        assert!(feed_plan(&mut a, &host).is_none());
        host.advance_ms(1_010);
        let p = feed_plan(&mut a, &host).unwrap();
        assert_eq!(
            (p.path.as_str(), p.timeout_ms),
            ("/edge/revocations?since=1", 1000)
        );
        a.on_revocations(&host, Ok((200, page("3", &["j"], None))));
        assert!(!a.take_poll_follow_up(), "polling: no follow-up");
        // After FALLBACK_MS, a long poll again.
        host.advance_ms(FALLBACK_MS);
        let p = feed_plan(&mut a, &host).unwrap();
        assert_eq!(p.path, "/edge/revocations?since=3&wait=25");
    }

    #[test]
    fn a_server_that_does_not_hold_polls_is_polled() {
        let (host, mut a, _) = vm("long_poll");
        prime(&mut a, &host);
        assert!(feed_plan(&mut a, &host).unwrap().path.ends_with("wait=25"));
        // An older server ignores `wait` and answers at once, without `wait_s`.
        a.on_revocations(&host, Ok((200, page("5", &["j"], None))));
        assert!(!a.take_poll_follow_up());
        let s = &a.cfg.revocation.as_ref().unwrap().settings;
        assert!(
            crate::revocation::is_revoked(&host, s, "j", T0 / 1000),
            "page applied"
        );
        assert!(
            feed_plan(&mut a, &host).is_none(),
            "no busy loop: the interval"
        );
        host.advance_ms(60_010);
        assert_eq!(
            feed_plan(&mut a, &host).unwrap().path,
            "/edge/revocations?since=5"
        );
    }

    #[test]
    fn mode_poll_never_asks_to_wait() {
        let (host, mut a, _) = vm("poll");
        let p = feed_plan(&mut a, &host).unwrap();
        assert_eq!((p.path.as_str(), p.timeout_ms), ("/edge/revocations", 1000));
        a.on_revocations(&host, Ok((200, page("1", &["j"], None))));
        assert!(!a.take_poll_follow_up());
        assert!(feed_plan(&mut a, &host).is_none());
        host.advance_ms(60_000);
        assert_eq!(
            feed_plan(&mut a, &host).unwrap().path,
            "/edge/revocations?since=1"
        );
    }

    #[test]
    fn a_held_long_poll_is_fresh_and_a_dead_one_goes_stale() {
        let (host, mut a, mut b) = vm("long_poll");
        prime(&mut a, &host);
        assert!(feed_plan(&mut b, &host).is_none(), "b starts counting now");
        host.advance_ms(3_000);
        assert!(feed_plan(&mut a, &host).unwrap().path.ends_with("wait=25"));
        // The held call fails (the auth server went away): the next poll, after the
        // interval, does not wait, so that the gateway hears back at once.
        a.on_revocations(&host, Err("no answer".into()));
        host.advance_ms(60_000);
        assert_eq!(
            feed_plan(&mut a, &host).unwrap().path,
            "/edge/revocations?since=1"
        );
        a.on_revocations(&host, Ok((200, page("1", &[], None))));
        assert!(
            feed_plan(&mut a, &host).unwrap().path.ends_with("wait=25"),
            "held from now"
        );
        // stale_after_s is 5: a held poll (the server answers at once on news) is fresh.
        host.advance_ms(20_000);
        b.tick(&host);
        assert!(!b.revocations_stale());
        // Its call timed out unanswered (26 s): staleness counts from the last answer.
        host.advance_ms(7_000);
        b.tick(&host);
        assert!(b.revocations_stale());
        // Polling mode: nothing held counts, staleness from the last answer.
        let (host, mut a, mut b) = vm("poll");
        assert!(feed_plan(&mut a, &host).is_some());
        assert!(feed_plan(&mut b, &host).is_none());
        a.on_revocations(&host, Ok((200, page("1", &[], None))));
        host.advance_ms(6_000);
        b.tick(&host);
        assert!(b.revocations_stale());
    }
}
