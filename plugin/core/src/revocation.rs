//! Revocation at the edge: the set of revoked token ids (`jti`), kept in shared data from
//! the auth server's revocation feed (`GET /edge/revocations?since=<cursor>`, see
//! docs/contracts.md), and checked on every request, cache hits included.
//!
//! - **Set**: `buckets` shared-data entries `tollgate/rv/<ns>/<b>`, a `jti` going to the
//!   bucket given by its hash. A bucket is a sorted array of (16-byte SHA-256 prefix of the
//!   `jti`, expiry): a request reads one bucket and binary-searches it. An entry is kept
//!   until its token's `exp` plus [`RETAIN_AFTER_EXP_S`] (the largest `clock_skew_s`): the
//!   verifier accepts a token until `exp + clock_skew_s`, so a revocation forgotten at `exp`
//!   would let the revoked token pass again for the skew.
//! - **Poller**: every worker's root context ticks, but only the holder of a lease in
//!   `tollgate/rv/<ns>/state` polls; the lease passes on when its holder stops renewing it.
//!   The state also holds the feed cursor and the time of the last successful poll, from
//!   which every worker judges staleness.
//! - **Resync**: a `resync: true` answer replaces the whole set.
//! - **Long poll** (default): the poll is held by the server until a revocation is
//!   published, see [`longpoll`].

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::host::{Host, SharedError};

pub mod longpoll;

const BUCKET_MAGIC: u8 = 0xC3;
const STATE_MAGIC: u8 = 0xC4;
const ENTRY: usize = 16 + 8;
const CAS_ATTEMPTS: usize = 8;

/// How long after its token's `exp` a revocation is remembered: the largest clock skew a
/// configuration may allow (the auth server keeps its entries as long).
pub const RETAIN_AFTER_EXP_S: u64 = crate::config::MAX_CLOCK_SKEW_S;

/// Whether a revocation of a token expiring at `exp` is still remembered at `now_s`.
fn retained(exp: u64, now_s: u64) -> bool {
    exp.saturating_add(RETAIN_AFTER_EXP_S) > now_s
}

/// One page of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedPage {
    pub cursor: String,
    #[serde(default)]
    pub resync: bool,
    #[serde(default)]
    pub more: bool,
    pub revocations: Vec<FeedEntry>,
    /// On an answer to a long poll: the wait the server applied (absent: it does not hold
    /// polls).
    #[serde(default)]
    pub wait_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedEntry {
    pub jti: String,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("revocation feed answer is not valid JSON: {0}")]
    Json(String),
    #[error("revocation feed answer is invalid: {0}")]
    Invalid(&'static str),
}

/// Parse a feed answer. Bounded: a cursor of at most 64 characters, `jti`s of at most 256.
pub fn parse_page(body: &[u8]) -> Result<FeedPage, FeedError> {
    let page: FeedPage =
        serde_json::from_slice(body).map_err(|e| FeedError::Json(e.to_string()))?;
    if page.cursor.is_empty() || page.cursor.len() > 64 {
        return Err(FeedError::Invalid("cursor"));
    }
    if !page.cursor.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FeedError::Invalid("cursor"));
    }
    if page
        .revocations
        .iter()
        .any(|e| e.jti.is_empty() || e.jti.len() > 256)
    {
        return Err(FeedError::Invalid("jti"));
    }
    Ok(page)
}

/// Settings of the revoked set and its poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Shared-data namespace (the configuration fingerprint).
    pub namespace: String,
    /// Path of the feed on the auth server (`/edge/revocations`).
    pub path: String,
    pub buckets: u32,
    pub poll_interval_ms: u64,
    /// A poller that has not renewed its lease for this long is replaced.
    pub lease_ms: u64,
    /// `wait` of a long poll, seconds (0: mode `poll`).
    pub long_poll_wait_s: u64,
    /// Timeout of a long-poll call: the wait and `auth_server.timeout_ms`.
    pub call_timeout_ms: u64,
}

fn jti_hash(jti: &str) -> [u8; 16] {
    let d = Sha256::digest(jti.as_bytes());
    let mut h = [0u8; 16];
    h.copy_from_slice(&d[..16]);
    h
}

fn bucket_of(s: &Settings, h: &[u8; 16]) -> u32 {
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % s.buckets.max(1)
}

fn bucket_key(s: &Settings, b: u32) -> String {
    format!("tollgate/rv/{}/{b}", s.namespace)
}

fn state_key(s: &Settings) -> String {
    format!("tollgate/rv/{}/state", s.namespace)
}

fn decode_bucket(v: &[u8]) -> Vec<([u8; 16], u64)> {
    if v.first() != Some(&BUCKET_MAGIC) || !(v.len() - 1).is_multiple_of(ENTRY) {
        return Vec::new();
    }
    v[1..]
        .chunks_exact(ENTRY)
        .map(|c| {
            let mut h = [0u8; 16];
            h.copy_from_slice(&c[..16]);
            let mut e = [0u8; 8];
            e.copy_from_slice(&c[16..]);
            (h, u64::from_be_bytes(e))
        })
        .collect()
}

fn encode_bucket(entries: &[([u8; 16], u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY);
    out.push(BUCKET_MAGIC);
    for (h, e) in entries {
        out.extend_from_slice(h);
        out.extend_from_slice(&e.to_be_bytes());
    }
    out
}

/// Is `jti` revoked (and its revocation still retained, see [`RETAIN_AFTER_EXP_S`]) at
/// `now_s`?
pub fn is_revoked(host: &dyn Host, s: &Settings, jti: &str, now_s: u64) -> bool {
    let h = jti_hash(jti);
    let (v, _) = host.shared_get(&bucket_key(s, bucket_of(s, &h)));
    let Some(v) = v else { return false };
    if v.first() != Some(&BUCKET_MAGIC) || !(v.len() - 1).is_multiple_of(ENTRY) {
        return false;
    }
    let n = (v.len() - 1) / ENTRY;
    let at = |i: usize| &v[1 + i * ENTRY..1 + (i + 1) * ENTRY];
    // Binary search over the sorted hashes without decoding the bucket.
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid)[..16].cmp(&h[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                let mut e = [0u8; 8];
                e.copy_from_slice(&at(mid)[16..]);
                return retained(u64::from_be_bytes(e), now_s);
            }
        }
    }
    false
}

/// Outcome of applying a page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: u64,
    pub expired_dropped: u64,
    pub live: u64,
    /// The page's own: entries, `more`, `wait_s` (set by [`on_poll_answer`]).
    pub entries: u64,
    pub more: bool,
    pub wait_s: Option<u64>,
}

/// Merge a page into the set (or replace the set on `resync`), dropping entries past their
/// retention from every bucket written.
pub fn apply(
    host: &dyn Host,
    s: &Settings,
    page: &FeedPage,
    now_s: u64,
) -> Result<Applied, SharedError> {
    let buckets = s.buckets.max(1);
    let mut per: Vec<Vec<([u8; 16], u64)>> = vec![Vec::new(); buckets as usize];
    for e in &page.revocations {
        if retained(e.exp, now_s) {
            let h = jti_hash(&e.jti);
            per[bucket_of(s, &h) as usize].push((h, e.exp));
        }
    }
    let mut out = Applied::default();
    for b in 0..buckets {
        let new = &per[b as usize];
        if new.is_empty() && !page.resync {
            continue;
        }
        let key = bucket_key(s, b);
        let mut done = false;
        for _ in 0..CAS_ATTEMPTS {
            let (v, cas) = host.shared_get(&key);
            let mut entries = if page.resync {
                Vec::new()
            } else {
                v.as_deref().map(decode_bucket).unwrap_or_default()
            };
            let before = entries.len();
            entries.retain(|(_, e)| retained(*e, now_s));
            out.expired_dropped += (before - entries.len()) as u64;
            for (h, e) in new {
                match entries.binary_search_by(|(x, _)| x.cmp(h)) {
                    Ok(i) => entries[i].1 = entries[i].1.max(*e),
                    Err(i) => {
                        entries.insert(i, (*h, *e));
                        out.added += 1;
                    }
                }
            }
            match host.shared_set(&key, &encode_bucket(&entries), cas.or(Some(0))) {
                Ok(()) => {
                    out.live += entries.len() as u64;
                    done = true;
                    break;
                }
                Err(SharedError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        if !done {
            return Err(SharedError::CasMismatch);
        }
    }
    Ok(out)
}

/// Drop entries past their retention from every bucket (the poller does this now and then).
pub fn prune(host: &dyn Host, s: &Settings, now_s: u64) -> Result<Applied, SharedError> {
    let mut out = Applied::default();
    for b in 0..s.buckets.max(1) {
        let key = bucket_key(s, b);
        let (v, cas) = host.shared_get(&key);
        let Some(v) = v else { continue };
        let mut entries = decode_bucket(&v);
        let before = entries.len();
        entries.retain(|(_, e)| retained(*e, now_s));
        out.live += entries.len() as u64;
        if entries.len() != before {
            out.expired_dropped += (before - entries.len()) as u64;
            // A lost race means the poller wrote meanwhile; the next prune catches up.
            let _ = host.shared_set(&key, &encode_bucket(&entries), cas);
        }
    }
    Ok(out)
}

/// The poller's shared state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollState {
    pub cursor: Option<String>,
    /// Last successful poll, Unix ms (0: never).
    pub last_ok_ms: u64,
    /// Last poll started, Unix ms.
    pub last_attempt_ms: u64,
    pub leader: u32,
    pub lease_until_ms: u64,
    /// Last poll that ended (answered or failed), Unix ms.
    pub last_done_ms: u64,
}

impl PollState {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_MAGIC];
        out.extend_from_slice(&self.last_ok_ms.to_be_bytes());
        out.extend_from_slice(&self.last_attempt_ms.to_be_bytes());
        out.extend_from_slice(&self.leader.to_be_bytes());
        out.extend_from_slice(&self.lease_until_ms.to_be_bytes());
        out.extend_from_slice(&self.last_done_ms.to_be_bytes());
        if let Some(c) = &self.cursor {
            out.extend_from_slice(c.as_bytes());
        }
        out
    }

    fn decode(v: &[u8]) -> Option<PollState> {
        if v.len() < 37 || v[0] != STATE_MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut l = [0u8; 4];
        l.copy_from_slice(&v[17..21]);
        let cursor = std::str::from_utf8(&v[37..]).ok().filter(|c| !c.is_empty());
        Some(PollState {
            last_ok_ms: u64_at(1),
            last_attempt_ms: u64_at(9),
            leader: u32::from_be_bytes(l),
            lease_until_ms: u64_at(21),
            last_done_ms: u64_at(29),
            cursor: cursor.map(str::to_string),
        })
    }
}

/// Read the poller state.
pub fn state(host: &dyn Host, s: &Settings) -> PollState {
    host.shared_get(&state_key(s))
        .0
        .as_deref()
        .and_then(PollState::decode)
        .unwrap_or_default()
}

/// On a tick of worker `me`: when this worker holds (or takes over) the lease and a poll is
/// due, claim the attempt and return the request path to fetch.
pub fn plan_poll(host: &dyn Host, s: &Settings, me: u32, now_ms: u64) -> Option<String> {
    let key = state_key(s);
    let (v, cas) = host.shared_get(&key);
    let mut st = v.as_deref().and_then(PollState::decode).unwrap_or_default();
    let leader_ok = st.leader == me || st.lease_until_ms <= now_ms;
    if !leader_ok {
        return None;
    }
    // One poll in flight at a time: a new attempt only after the interval, or after the
    // lease of a stuck attempt ran out.
    // Long poll: no interval after a good answer, and the lease covers the held call.
    let interval = longpoll::interval_ms(host, s, &st, now_ms);
    let hold = longpoll::hold_ms(s);
    let due = st.last_attempt_ms == 0
        || (st.last_done_ms >= st.last_attempt_ms
            && now_ms >= st.last_attempt_ms.saturating_add(interval))
        || now_ms >= st.last_attempt_ms.saturating_add(hold);
    if !due {
        return None;
    }
    st.leader = me;
    st.lease_until_ms = now_ms.saturating_add(hold);
    // Strictly after the last answer, so that an attempt in the millisecond of that answer
    // (a long poll started from its callback) still reads as in flight.
    st.last_attempt_ms = now_ms.max(st.last_done_ms.saturating_add(1));
    host.shared_set(&key, &st.encode(), cas.or(Some(0))).ok()?;
    let sep = if s.path.contains('?') { '&' } else { '?' };
    let mut path = match &st.cursor {
        Some(c) => format!("{}{sep}since={c}", s.path),
        None => s.path.clone(),
    };
    let wait = longpoll::planned_wait_s(host, s, &st, now_ms);
    if wait > 0 {
        let sep = if path.contains('?') { '&' } else { '?' };
        path = format!("{path}{sep}wait={wait}");
    }
    Some(path)
}

/// After a poll failed (no answer, bad status, bad body): the set and the cursor stay, and
/// the same poller retries after one poll interval (not only when its lease runs out).
pub fn on_poll_failed(host: &dyn Host, s: &Settings, me: u32, now_ms: u64) {
    let key = state_key(s);
    for _ in 0..CAS_ATTEMPTS {
        let (v, cas) = host.shared_get(&key);
        let mut st = v.as_deref().and_then(PollState::decode).unwrap_or_default();
        if st.leader != me {
            return;
        }
        st.last_done_ms = now_ms.max(st.last_attempt_ms);
        match host.shared_set(&key, &st.encode(), cas.or(Some(0))) {
            Err(SharedError::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// After a poll answered: apply the page and advance the cursor; on failure record nothing
/// but let the next tick retry. Returns what was applied.
pub fn on_poll_answer(
    host: &dyn Host,
    s: &Settings,
    me: u32,
    body: Option<&[u8]>,
    now_ms: u64,
) -> Result<Applied, PollError> {
    let body = body.ok_or(PollError::Transport)?;
    let page = parse_page(body).map_err(PollError::Feed)?;
    let mut applied = apply(host, s, &page, now_ms / 1000).map_err(|_| PollError::Shared)?;
    applied.entries = page.revocations.len() as u64;
    applied.more = page.more;
    applied.wait_s = page.wait_s;
    let key = state_key(s);
    for _ in 0..CAS_ATTEMPTS {
        let (v, cas) = host.shared_get(&key);
        let mut st = v.as_deref().and_then(PollState::decode).unwrap_or_default();
        st.cursor = Some(page.cursor.clone());
        st.last_done_ms = now_ms.max(st.last_attempt_ms);
        st.last_ok_ms = st.last_done_ms;
        st.leader = me;
        st.lease_until_ms = now_ms.saturating_add(s.lease_ms);
        if page.more {
            // More pages wait: make the next tick poll again at once.
            st.last_attempt_ms = 0;
        }
        match host.shared_set(&key, &st.encode(), cas.or(Some(0))) {
            Ok(()) => return Ok(applied),
            Err(SharedError::CasMismatch) => continue,
            Err(_) => return Err(PollError::Shared),
        }
    }
    Err(PollError::Shared)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("revocation feed unreachable")]
    Transport,
    #[error(transparent)]
    Feed(FeedError),
    #[error("shared data update failed")]
    Shared,
}

/// Milliseconds since the last successful poll (`None`: never polled successfully).
pub fn staleness_ms(host: &dyn Host, s: &Settings, now_ms: u64) -> Option<u64> {
    let st = state(host, s);
    (st.last_ok_ms > 0).then(|| now_ms.saturating_sub(st.last_ok_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    fn settings() -> Settings {
        Settings {
            namespace: "t".into(),
            path: "/edge/revocations".into(),
            buckets: 8,
            poll_interval_ms: 1000,
            lease_ms: 5000,
            long_poll_wait_s: 0,
            call_timeout_ms: 1000,
        }
    }

    fn page(cursor: &str, resync: bool, entries: &[(&str, u64)]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "cursor": cursor, "resync": resync, "more": false,
            "revocations": entries.iter().map(|(j, e)| serde_json::json!({"jti": j, "exp": e})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn poll_apply_check_and_expire() {
        let host = MemoryHost::new(1_000_000);
        let s = settings();
        assert_eq!(
            plan_poll(&host, &s, 1, 1_000_000).as_deref(),
            Some("/edge/revocations")
        );
        // Worker 2 does not poll while worker 1 holds the lease.
        assert_eq!(plan_poll(&host, &s, 2, 1_000_100), None);
        let body = page("7", true, &[("a", 2000), ("b", 1005), ("old", 10)]);
        let a = on_poll_answer(&host, &s, 1, Some(&body), 1_000_200).unwrap();
        assert_eq!(a.added, 2);
        assert!(is_revoked(&host, &s, "a", 1000));
        assert!(is_revoked(&host, &s, "b", 1000));
        assert!(!is_revoked(&host, &s, "old", 1000));
        assert!(!is_revoked(&host, &s, "c", 1000));
        assert!(
            is_revoked(&host, &s, "b", 1005 + RETAIN_AFTER_EXP_S - 1),
            "kept past exp while a skewed verifier may still accept the token"
        );
        assert!(
            !is_revoked(&host, &s, "b", 1005 + RETAIN_AFTER_EXP_S),
            "forgotten once no allowed skew accepts the token"
        );
        // The next poll continues from the cursor, after the interval.
        assert_eq!(plan_poll(&host, &s, 1, 1_000_500), None);
        assert_eq!(
            plan_poll(&host, &s, 1, 1_001_300).as_deref(),
            Some("/edge/revocations?since=7")
        );
        let body = page("8", false, &[("c", 3000)]);
        on_poll_answer(&host, &s, 1, Some(&body), 1_001_400).unwrap();
        assert!(is_revoked(&host, &s, "a", 1001) && is_revoked(&host, &s, "c", 1001));
        assert_eq!(staleness_ms(&host, &s, 1_002_400), Some(1000));
        // A resync replaces the set.
        assert!(plan_poll(&host, &s, 1, 1_002_500).is_some());
        on_poll_answer(
            &host,
            &s,
            1,
            Some(&page("9", true, &[("c", 3000)])),
            1_002_600,
        )
        .unwrap();
        assert!(!is_revoked(&host, &s, "a", 1002));
        assert!(is_revoked(&host, &s, "c", 1002));
    }

    #[test]
    fn lease_passes_on_when_the_poller_stops() {
        let host = MemoryHost::new(0);
        let s = settings();
        assert!(plan_poll(&host, &s, 1, 10_000).is_some());
        // Worker 1 never answers (its VM died): after the lease another worker polls.
        assert_eq!(plan_poll(&host, &s, 2, 12_000), None);
        assert!(plan_poll(&host, &s, 2, 15_001).is_some());
        assert_eq!(state(&host, &s).leader, 2);
    }

    #[test]
    fn failures_keep_the_set_and_the_cursor() {
        let host = MemoryHost::new(0);
        let s = settings();
        plan_poll(&host, &s, 1, 1000).unwrap();
        on_poll_answer(&host, &s, 1, Some(&page("3", true, &[("a", 99)])), 1000).unwrap();
        assert!(matches!(
            on_poll_answer(&host, &s, 1, None, 2500),
            Err(PollError::Transport)
        ));
        assert!(matches!(
            on_poll_answer(&host, &s, 1, Some(b"<html>"), 2600),
            Err(PollError::Feed(_))
        ));
        assert!(is_revoked(&host, &s, "a", 3));
        assert_eq!(state(&host, &s).cursor.as_deref(), Some("3"));
        assert_eq!(staleness_ms(&host, &s, 4000), Some(3000));
    }

    #[test]
    fn a_failed_poll_is_retried_after_one_interval() {
        let host = MemoryHost::new(0);
        let s = settings();
        assert!(plan_poll(&host, &s, 1, 10_000).is_some());
        on_poll_failed(&host, &s, 1, 10_500);
        assert_eq!(plan_poll(&host, &s, 1, 10_900), None);
        assert_eq!(plan_poll(&host, &s, 2, 11_000), None, "the lease holds");
        assert!(plan_poll(&host, &s, 1, 11_000).is_some());
    }

    #[test]
    fn feed_parser_rejects_bad_pages() {
        for bad in [
            &b"{}"[..],
            br#"{"cursor":"","revocations":[]}"#,
            br#"{"cursor":"a b","revocations":[]}"#,
            br#"{"cursor":"1","revocations":[{"jti":"","exp":1}]}"#,
            br#"{"cursor":"1","revocations":[{"jti":"x"}]}"#,
            br#"{"cursor":"1","revocations":[{"jti":"x","exp":-1}]}"#,
            br#"[1,2]"#,
        ] {
            assert!(parse_page(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let p = parse_page(br#"{"cursor":"12","revocations":[{"jti":"x","exp":5}],"more":true}"#)
            .unwrap();
        assert!(p.more && !p.resync);
    }

    #[test]
    fn many_revocations_spread_over_buckets() {
        let host = MemoryHost::new(0);
        let s = settings();
        let entries: Vec<(String, u64)> = (0..2000).map(|i| (format!("jti-{i}"), 5000)).collect();
        let refs: Vec<(&str, u64)> = entries.iter().map(|(j, e)| (j.as_str(), *e)).collect();
        plan_poll(&host, &s, 1, 0).unwrap();
        let a = on_poll_answer(&host, &s, 1, Some(&page("1", true, &refs)), 0).unwrap();
        assert_eq!(a.live, 2000);
        assert!(refs.iter().all(|(j, _)| is_revoked(&host, &s, j, 1)));
        assert!(!is_revoked(&host, &s, "jti-2000", 1));
        let p = prune(&host, &s, 5000 + RETAIN_AFTER_EXP_S - 1).unwrap();
        assert_eq!((p.expired_dropped, p.live), (0, 2000));
        let p = prune(&host, &s, 5000 + RETAIN_AFTER_EXP_S).unwrap();
        assert_eq!((p.expired_dropped, p.live), (2000, 0));
    }
}
