//! Global rate limits: quota leases from the auth server (`POST /edge/ratelimit/lease`, see
//! `docs/contracts.md`), so that several gateway replicas keep one limit together.
//!
//! - Per key, one lease record in shared data, shared by every worker of the gateway:
//!   requests left, the end of the lease (send time + `reset_ms`: never later than the
//!   server's window), the remaining global quota as of the last answer, "exhausted until"
//!   (an answer of `granted: 0`), "refill in flight until" and "failing until" (no answer).
//! - A request spends one leased request with compare-and-swap ([`spend`]); the hot path
//!   never waits on the network while a lease is held.
//! - When a quarter of the lease (or less) is left, or no lease is held, the worker asks for
//!   the next one: its root tick claims the refill in shared data ([`claim`], at most one
//!   call in flight per key per gateway) and dispatches it; [`on_answer`] stores the answer.
//!   It asks for `lease - left`, so a gateway never holds more than `lease` requests of a key:
//!   the combined limit errs low by at most one lease per gateway.
//! - Memory is bounded: records live in a table of `slots` entries (one slot per key, by
//!   hash); a key that takes the slot of another drops that key's lease (errs low).

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::host::{Host, SharedError};
use crate::ratelimit::LimitError;

const MAGIC: u8 = 0xB8;
const ENTRY_LEN: usize = 1 + 32 + 6 * 8;
const CAS_ATTEMPTS: usize = 16;
/// After a call without an answer, the key follows the fail mode this long before asking again.
pub const FAIL_BACKOFF_MS: u64 = 1000;

/// SHA-256 of a client key: the raw key (IP, `sub`, header value) never leaves the gateway.
pub type KeyHash = [u8; 32];

/// What the filter does for a key when the auth server cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LeaseFailMode {
    /// Fall back to this gateway's own bucket (the rule's local GCRA limit).
    #[default]
    Local,
    /// Let requests through uncounted.
    Open,
    /// Refuse with 503.
    Closed,
}

/// A rule's global mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shared-data namespace (`<config fingerprint>/r<rule index>`).
    pub namespace: String,
    /// The policy name: the first part of the lease key.
    pub name: String,
    pub slots: u32,
    /// Requests per window (`limit`).
    pub requests: u64,
    /// `window_s`.
    pub window_s: u64,
    /// Requests asked for per lease (`want`).
    pub lease: u64,
    pub fail_mode: LeaseFailMode,
}

impl Policy {
    /// Refill when this many or fewer leased requests are left.
    pub fn low_water(&self) -> u64 {
        self.lease / 4
    }
}

pub fn key_hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// The lease key sent to the auth server: `<policy name>:<hex SHA-256 of the client key>`.
pub fn wire_key(p: &Policy, h: &KeyHash) -> String {
    let mut s = String::with_capacity(p.name.len() + 65);
    s.push_str(&p.name);
    s.push(':');
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One key's lease record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    pub hash: KeyHash,
    pub left: u64,
    pub window_end_ms: u64,
    /// `limit - used` of the last answer (requests not leased to anyone then).
    pub rest: u64,
    pub exhausted_until_ms: u64,
    pub inflight_until_ms: u64,
    pub failed_until_ms: u64,
}

impl Record {
    fn empty(hash: KeyHash) -> Record {
        Record {
            hash,
            ..Record::default()
        }
    }

    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = MAGIC;
        out[1..33].copy_from_slice(&self.hash);
        let nums = [
            self.left,
            self.window_end_ms,
            self.rest,
            self.exhausted_until_ms,
            self.inflight_until_ms,
            self.failed_until_ms,
        ];
        for (i, n) in nums.iter().enumerate() {
            out[33 + i * 8..41 + i * 8].copy_from_slice(&n.to_be_bytes());
        }
        out
    }

    fn decode(v: &[u8]) -> Option<Record> {
        if v.len() != ENTRY_LEN || v[0] != MAGIC {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[1..33]);
        let n = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[33 + i * 8..41 + i * 8]);
            u64::from_be_bytes(b)
        };
        Some(Record {
            hash,
            left: n(0),
            window_end_ms: n(1),
            rest: n(2),
            exhausted_until_ms: n(3),
            inflight_until_ms: n(4),
            failed_until_ms: n(5),
        })
    }

    /// Leased requests still spendable at `now`.
    fn live_left(&self, now: u64) -> u64 {
        if now < self.window_end_ms {
            self.left
        } else {
            0
        }
    }
}

fn slot_key(p: &Policy, h: &KeyHash) -> String {
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % p.slots.max(1);
    format!("tollgate/rll/{}/{n}", p.namespace)
}

/// Create every slot (empty) at start, so that later writes are true compare-and-swaps.
pub fn init_slots(host: &dyn Host, p: &Policy) {
    for n in 0..p.slots.max(1) {
        let key = format!("tollgate/rll/{}/{n}", p.namespace);
        if host.shared_get(&key).1.is_none() {
            let _ = host.shared_set(&key, &[], None);
        }
    }
}

/// This key's record (an empty one when the slot holds another key or nothing), the slot
/// and its compare-and-swap counter.
fn read(host: &dyn Host, p: &Policy, h: &KeyHash) -> (Record, String, Option<u32>) {
    let key = slot_key(p, h);
    let (val, cas) = host.shared_get(&key);
    let rec = val
        .as_deref()
        .and_then(Record::decode)
        .filter(|r| r.hash == *h)
        .unwrap_or_else(|| Record::empty(*h));
    (rec, key, cas.or(Some(0)))
}

/// The outcome of spending one request of a key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Allowed. `remaining`: this gateway's leased requests plus what the server had not
    /// leased at the last answer (an estimate of the global remainder); `refill`: the lease
    /// runs low, ask for the next one.
    Allowed {
        remaining: u64,
        reset_s: u64,
        refill: bool,
    },
    /// The key's window is exhausted (`granted: 0`): 429 for this long.
    Exhausted { retry_after_s: u64 },
    /// The last call got no answer: follow the fail mode.
    Failing,
    /// No lease is held: wait for one (ask for it).
    Wait,
}

/// Spend one leased request of key `h`.
pub fn spend(host: &dyn Host, p: &Policy, h: &KeyHash) -> Result<Spend, LimitError> {
    for _ in 0..CAS_ATTEMPTS {
        let now = host.now_ms();
        let (rec, key, cas) = read(host, p, h);
        if rec.live_left(now) > 0 {
            let next = Record {
                left: rec.left - 1,
                ..rec
            };
            let refill = next.left <= p.low_water()
                && now >= rec.inflight_until_ms
                && now >= rec.exhausted_until_ms
                && now >= rec.failed_until_ms;
            match host.shared_set(&key, &next.encode(), cas) {
                Ok(()) => {
                    return Ok(Spend::Allowed {
                        remaining: next.left.saturating_add(rec.rest),
                        reset_s: (rec.window_end_ms - now).div_ceil(1000),
                        refill,
                    })
                }
                Err(SharedError::CasMismatch) => continue,
                Err(SharedError::Failed) => return Err(LimitError::Failed),
            }
        }
        if now < rec.exhausted_until_ms {
            return Ok(Spend::Exhausted {
                retry_after_s: (rec.exhausted_until_ms - now).div_ceil(1000).max(1),
            });
        }
        if now < rec.failed_until_ms {
            return Ok(Spend::Failing);
        }
        return Ok(Spend::Wait);
    }
    Err(LimitError::Contended)
}

/// Claim the next lease call for key `h` (root tick): `Some(want)` when one is due (the lease
/// runs low or none is held, no call in flight, not exhausted, not failing) and this worker
/// won the claim; the call must then be dispatched and answered to [`on_answer`] (or
/// [`on_failure`]).
pub fn claim(host: &dyn Host, p: &Policy, h: &KeyHash, timeout_ms: u64) -> Option<u64> {
    let now = host.now_ms();
    let (rec, key, cas) = read(host, p, h);
    let left = rec.live_left(now);
    let due = left <= p.low_water()
        && now >= rec.inflight_until_ms
        && now >= rec.exhausted_until_ms
        && now >= rec.failed_until_ms;
    if !due {
        return None;
    }
    let next = Record {
        left,
        inflight_until_ms: now.saturating_add(timeout_ms).saturating_add(1000),
        ..rec
    };
    host.shared_set(&key, &next.encode(), cas).ok()?;
    Some(p.lease.saturating_sub(left).max(1))
}

/// A lease answer (`200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Answer {
    pub granted: u64,
    pub used: u64,
    pub limit: u64,
    pub reset_ms: u64,
}

/// Parse a `200` answer's body.
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    serde_json::from_slice::<Answer>(body).map_err(|e| format!("lease answer not understood: {e}"))
}

/// Store the answer to a call sent at `sent_ms` asking for `want`: the leased requests are
/// added to what is left of the current lease (same window) and end `reset_ms` after the
/// call was sent; `granted: 0` marks the key exhausted until then.
pub fn on_answer(host: &dyn Host, p: &Policy, h: &KeyHash, sent_ms: u64, want: u64, a: &Answer) {
    let granted = a.granted.min(want);
    let end = sent_ms.saturating_add(a.reset_ms.min(p.window_s.saturating_mul(1000)));
    for _ in 0..CAS_ATTEMPTS {
        let now = host.now_ms();
        let (rec, key, cas) = read(host, p, h);
        let held = rec.live_left(now);
        let next = Record {
            hash: *h,
            left: held.saturating_add(granted),
            window_end_ms: if held > 0 {
                rec.window_end_ms.max(end)
            } else {
                end
            },
            rest: p.requests.saturating_sub(a.used),
            exhausted_until_ms: if granted == 0 { end } else { 0 },
            inflight_until_ms: 0,
            failed_until_ms: 0,
        };
        match host.shared_set(&key, &next.encode(), cas) {
            Err(SharedError::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// A call got no usable answer: the key follows the fail mode for [`FAIL_BACKOFF_MS`]; what
/// is left of the lease is still spent. Not retried before then (a lost answer may have
/// taken quota: retrying at once would only lose more).
pub fn on_failure(host: &dyn Host, p: &Policy, h: &KeyHash) {
    for _ in 0..CAS_ATTEMPTS {
        let now = host.now_ms();
        let (rec, key, cas) = read(host, p, h);
        let next = Record {
            inflight_until_ms: 0,
            failed_until_ms: now.saturating_add(FAIL_BACKOFF_MS),
            ..rec
        };
        match host.shared_set(&key, &next.encode(), cas) {
            Err(SharedError::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// The record of key `h` (tests, diagnostics).
pub fn record(host: &dyn Host, p: &Policy, h: &KeyHash) -> Record {
    read(host, p, h).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    fn policy(requests: u64, lease: u64) -> Policy {
        Policy {
            namespace: "t".into(),
            name: "api".into(),
            slots: 64,
            requests,
            window_s: 60,
            lease,
            fail_mode: LeaseFailMode::Local,
        }
    }

    fn answer(granted: u64, used: u64, reset_ms: u64) -> Answer {
        Answer {
            granted,
            used,
            limit: 100,
            reset_ms,
        }
    }

    #[test]
    fn wire_key_hashes_the_client_key() {
        let p = policy(100, 10);
        let k = wire_key(&p, &key_hash("10.0.0.1"));
        assert!(k.starts_with("api:"));
        assert_eq!(k.len(), 4 + 64);
        assert!(!k.contains("10.0.0.1"));
    }

    #[test]
    fn no_lease_waits_then_spends_without_the_network_and_refills_at_a_quarter() {
        let host = MemoryHost::new(1_000_000);
        let p = policy(100, 8);
        let h = key_hash("c");
        assert_eq!(spend(&host, &p, &h).unwrap(), Spend::Wait);
        assert_eq!(claim(&host, &p, &h, 1000), Some(8));
        // One call in flight per key and gateway.
        assert_eq!(claim(&host, &p, &h, 1000), None);
        on_answer(&host, &p, &h, 1_000_000, 8, &answer(8, 8, 60_000));
        for i in 0..6 {
            match spend(&host, &p, &h).unwrap() {
                Spend::Allowed {
                    remaining, refill, ..
                } => {
                    assert_eq!(remaining, 7 - i + 92);
                    assert_eq!(refill, 7 - i <= 2, "request {i}");
                }
                o => panic!("{o:?}"),
            }
        }
        // 2 left: the next lease asks for 6, so the gateway never holds more than 8.
        assert_eq!(claim(&host, &p, &h, 1000), Some(6));
        on_answer(&host, &p, &h, 1_000_000, 6, &answer(6, 14, 59_000));
        let r = record(&host, &p, &h);
        assert_eq!(r.left, 8);
        assert_eq!(
            r.window_end_ms, 1_060_000,
            "same window: the later bound is kept"
        );
    }

    #[test]
    fn exhausted_key_is_refused_until_the_window_ends_and_not_asked_again() {
        let host = MemoryHost::new(0);
        let p = policy(2, 2);
        let h = key_hash("c");
        assert_eq!(claim(&host, &p, &h, 1000), Some(2));
        on_answer(&host, &p, &h, 0, 2, &answer(2, 2, 10_000));
        assert!(matches!(spend(&host, &p, &h), Ok(Spend::Allowed { .. })));
        assert!(matches!(spend(&host, &p, &h), Ok(Spend::Allowed { .. })));
        assert_eq!(spend(&host, &p, &h).unwrap(), Spend::Wait);
        assert_eq!(claim(&host, &p, &h, 1000), Some(2));
        host.advance_ms(100);
        on_answer(&host, &p, &h, 100, 2, &answer(0, 2, 9_900));
        assert_eq!(
            spend(&host, &p, &h).unwrap(),
            Spend::Exhausted { retry_after_s: 10 }
        );
        assert_eq!(claim(&host, &p, &h, 1000), None, "no call while exhausted");
        host.advance_ms(9_900);
        assert_eq!(spend(&host, &p, &h).unwrap(), Spend::Wait);
        assert_eq!(claim(&host, &p, &h, 1000), Some(2));
    }

    #[test]
    fn a_lease_ends_reset_ms_after_it_was_sent() {
        let host = MemoryHost::new(0);
        let p = policy(100, 10);
        let h = key_hash("c");
        claim(&host, &p, &h, 1000);
        host.advance_ms(500); // the answer took 500 ms
        on_answer(&host, &p, &h, 0, 10, &answer(10, 10, 2_000));
        host.advance_ms(1_499);
        assert!(matches!(spend(&host, &p, &h), Ok(Spend::Allowed { .. })));
        host.advance_ms(1);
        assert_eq!(
            spend(&host, &p, &h).unwrap(),
            Spend::Wait,
            "never carried over"
        );
    }

    #[test]
    fn no_answer_means_fail_mode_for_a_while_then_one_new_call() {
        let host = MemoryHost::new(0);
        let p = policy(100, 10);
        let h = key_hash("c");
        claim(&host, &p, &h, 1000);
        on_failure(&host, &p, &h);
        assert_eq!(spend(&host, &p, &h).unwrap(), Spend::Failing);
        assert_eq!(claim(&host, &p, &h, 1000), None, "not retried at once");
        host.advance_ms(FAIL_BACKOFF_MS);
        assert_eq!(spend(&host, &p, &h).unwrap(), Spend::Wait);
        assert_eq!(claim(&host, &p, &h, 1000), Some(10));
    }

    #[test]
    fn an_answer_never_grants_more_than_asked() {
        let host = MemoryHost::new(0);
        let p = policy(100, 4);
        let h = key_hash("c");
        claim(&host, &p, &h, 1000);
        on_answer(&host, &p, &h, 0, 4, &answer(1000, 100, 60_000));
        assert_eq!(record(&host, &p, &h).left, 4);
        assert!(parse_answer(b"{\"granted\":1}").is_err());
        assert_eq!(
            parse_answer(br#"{"granted":2,"used":3,"limit":5,"reset_s":1,"reset_ms":900}"#),
            Ok(Answer {
                granted: 2,
                used: 3,
                limit: 5,
                reset_ms: 900
            })
        );
    }
}
