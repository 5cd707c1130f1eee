//! Rate limits shared by every Envoy worker: GCRA (the generic cell rate algorithm, a token
//! bucket kept as one timestamp) in proxy-wasm shared data, updated with compare-and-swap.
//!
//! - A policy allows `requests` per `period_s` with a burst of `burst` requests: the bucket
//!   holds at most `burst` tokens and refills one every `period_s / requests`.
//! - State per key is its theoretical arrival time (TAT). A request at `now` is allowed when
//!   `max(TAT, now) + interval - now <= burst × interval`; the TAT then advances by one
//!   interval. A key whose TAT is in the past has a full bucket: it is idle.
//! - Memory is bounded: keys hash into a table of `slots` shared-data entries, two
//!   candidate slots per key. A new key takes an empty or idle slot; when both are busy it
//!   evicts the one closer to idle (a full bucket loses nothing; a partly used one is
//!   forgiven the difference). The table never grows.
//! - Every write is a compare-and-swap on the slot, so two workers never both spend the
//!   same token; a lost race re-reads and retries.

use sha2::{Digest, Sha256};

use crate::host::{Host, SharedError};

const MAGIC: u8 = 0xB7;
const ENTRY_LEN: usize = 1 + 16 + 8;
/// Compare-and-swap attempts before giving up on a contended slot.
const CAS_ATTEMPTS: usize = 16;

/// One rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Shared-data namespace of this policy (e.g. `<config fingerprint>/<rule name>`):
    /// policies never share buckets.
    pub namespace: String,
    pub requests: u64,
    pub period_s: u64,
    pub burst: u64,
    /// Number of slots of the bucket table.
    pub slots: u32,
}

impl Limit {
    /// Milliseconds between two tokens (at least 1 ms).
    pub fn interval_ms(&self) -> u64 {
        (self.period_s.saturating_mul(1000) / self.requests.max(1)).max(1)
    }

    fn capacity_ms(&self) -> u64 {
        self.interval_ms().saturating_mul(self.burst.max(1))
    }

    /// The IETF `RateLimit-Policy` header value (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy_header(&self, name: &str) -> String {
        format!("\"{name}\";q={};w={}", self.burst.max(1), self.period_s)
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Seconds until one more request is allowed (0 when allowed).
    pub retry_after_s: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
}

impl Decision {
    /// The IETF `RateLimit` header value.
    pub fn header(&self, name: &str) -> String {
        format!("\"{name}\";r={};t={}", self.remaining, self.reset_s)
    }
}

/// 16 bytes of SHA-256 of the key: the key itself (a client id, an IP) is not stored.
fn key_hash(key: &str) -> [u8; 16] {
    let d = Sha256::digest(key.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn slot_keys(limit: &Limit, h: &[u8; 16]) -> [String; 2] {
    let n = limit.slots.max(1);
    let a = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % n;
    let b = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) % n;
    [
        format!("tollgate/rl/{}/{a}", limit.namespace),
        format!("tollgate/rl/{}/{b}", limit.namespace),
    ]
}

fn encode(h: &[u8; 16], tat_ms: u64) -> [u8; ENTRY_LEN] {
    let mut out = [0u8; ENTRY_LEN];
    out[0] = MAGIC;
    out[1..17].copy_from_slice(h);
    out[17..].copy_from_slice(&tat_ms.to_be_bytes());
    out
}

fn decode(v: &[u8]) -> Option<([u8; 16], u64)> {
    if v.len() != ENTRY_LEN || v[0] != MAGIC {
        return None;
    }
    let mut h = [0u8; 16];
    h.copy_from_slice(&v[1..17]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&v[17..]);
    Some((h, u64::from_be_bytes(t)))
}

/// Pure GCRA step: the decision and the new TAT (`None` when denied: state unchanged).
pub fn gcra(limit: &Limit, tat_ms: u64, now_ms: u64) -> (Decision, Option<u64>) {
    let interval = limit.interval_ms();
    let capacity = limit.capacity_ms();
    let tat = tat_ms.max(now_ms);
    let new_tat = tat.saturating_add(interval);
    let ahead = new_tat - now_ms;
    if ahead <= capacity {
        let remaining = (capacity - ahead) / interval;
        (
            Decision {
                allowed: true,
                remaining,
                retry_after_s: 0,
                reset_s: ahead.div_ceil(1000),
            },
            Some(new_tat),
        )
    } else {
        let wait = ahead - capacity;
        (
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_s: wait.div_ceil(1000).max(1),
                reset_s: (tat - now_ms).div_ceil(1000),
            },
            None,
        )
    }
}

/// Why a check could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate-limit slot stayed contended")]
    Contended,
    #[error("shared data write failed")]
    Failed,
}

/// Create every slot of a policy's table (empty) if it does not exist yet; run when the
/// filter starts, so that every later write is a true compare-and-swap (Envoy cannot
/// "create if absent": a write to a missing key is unconditional).
pub fn init_slots(host: &dyn Host, limit: &Limit) {
    for n in 0..limit.slots.max(1) {
        let key = format!("tollgate/rl/{}/{n}", limit.namespace);
        if host.shared_get(&key).1.is_none() {
            let _ = host.shared_set(&key, &[], None);
        }
    }
}

/// Count one request for `key` under `limit`.
pub fn check(host: &dyn Host, limit: &Limit, key: &str) -> Result<Decision, LimitError> {
    let h = key_hash(key);
    let slots = slot_keys(limit, &h);
    for _ in 0..CAS_ATTEMPTS {
        let now = host.now_ms();
        let reads = [host.shared_get(&slots[0]), host.shared_get(&slots[1])];
        let entries = [
            reads[0].0.as_deref().and_then(decode),
            reads[1].0.as_deref().and_then(decode),
        ];
        // Our own entry, else an empty or idle slot, else the one closest to idle.
        let pick = entries
            .iter()
            .position(|e| e.is_some_and(|(eh, _)| eh == h))
            .map(|i| (i, entries[i].map(|(_, t)| t).unwrap_or(0)))
            .unwrap_or_else(|| {
                let idle = |e: &Option<([u8; 16], u64)>| e.is_none_or(|(_, t)| t <= now);
                let i = if idle(&entries[0]) {
                    0
                } else if idle(&entries[1]) {
                    1
                } else if entries[0].map(|(_, t)| t) <= entries[1].map(|(_, t)| t) {
                    0
                } else {
                    1
                };
                (i, 0)
            });
        let (i, tat) = pick;
        let (decision, new_tat) = gcra(limit, tat, now);
        let Some(new_tat) = new_tat else {
            return Ok(decision);
        };
        // Slots exist from `init_slots`; should one be missing, the write is unconditional.
        let cas = reads[i].1.or(Some(0));
        match host.shared_set(&slots[i], &encode(&h, new_tat), cas) {
            Ok(()) => return Ok(decision),
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return Err(LimitError::Failed),
        }
    }
    Err(LimitError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;

    fn limit(requests: u64, period_s: u64, burst: u64) -> Limit {
        Limit {
            namespace: "t".into(),
            requests,
            period_s,
            burst,
            slots: 64,
        }
    }

    #[test]
    fn exactly_burst_then_refill() {
        let host = MemoryHost::new(1_000_000);
        let l = limit(5, 60, 5);
        for i in 0..5 {
            let d = check(&host, &l, "client-a").unwrap();
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
        }
        let d = check(&host, &l, "client-a").unwrap();
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_s, 12, "one token every 12 s");
        // Denials do not consume: after one interval exactly one more is allowed.
        host.advance_ms(12_000);
        assert!(check(&host, &l, "client-a").unwrap().allowed);
        assert!(!check(&host, &l, "client-a").unwrap().allowed);
        // Other keys are independent.
        assert!(check(&host, &l, "client-b").unwrap().allowed);
    }

    #[test]
    fn idle_key_gets_a_full_bucket_back() {
        let host = MemoryHost::new(0);
        let l = limit(10, 1, 10);
        for _ in 0..10 {
            assert!(check(&host, &l, "k").unwrap().allowed);
        }
        assert!(!check(&host, &l, "k").unwrap().allowed);
        host.advance_ms(1000);
        for _ in 0..10 {
            assert!(check(&host, &l, "k").unwrap().allowed);
        }
    }

    #[test]
    fn memory_is_bounded_by_the_slot_table() {
        let host = MemoryHost::new(0);
        let l = limit(1, 60, 1);
        for i in 0..10_000 {
            let _ = check(&host, &l, &format!("key-{i}")).unwrap();
        }
        assert!(host.shared_keys().len() <= 64);
    }

    #[test]
    fn lost_cas_race_is_retried_not_double_spent() {
        // A host whose first write to each key fails with a CAS mismatch, as when another
        // worker wrote in between.
        struct Racy {
            inner: MemoryHost,
            raced: std::cell::Cell<bool>,
        }
        impl Host for Racy {
            fn now_ms(&self) -> u64 {
                self.inner.now_ms()
            }
            fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                self.inner.shared_get(key)
            }
            fn shared_set(
                &self,
                key: &str,
                value: &[u8],
                cas: Option<u32>,
            ) -> Result<(), SharedError> {
                if !self.raced.replace(true) {
                    // The other worker spends a token first.
                    let other = encode(&key_hash("k"), self.inner.now_ms() + 1000);
                    self.inner.shared_set(key, &other, None)?;
                    return Err(SharedError::CasMismatch);
                }
                self.inner.shared_set(key, value, cas)
            }
            fn metric(&self, m: crate::metrics::Metric, d: u64) {
                self.inner.metric(m, d)
            }
            fn log(&self, l: crate::host::Level, m: &str) {
                self.inner.log(l, m)
            }
        }
        let host = Racy {
            inner: MemoryHost::new(0),
            raced: std::cell::Cell::new(false),
        };
        let l = limit(2, 2, 2); // interval 1000 ms, capacity 2000 ms
        let d = check(&host, &l, "k").unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0, "the racing worker's token is accounted for");
        assert!(!check(&host, &l, "k").unwrap().allowed);
    }

    #[test]
    fn headers() {
        let l = limit(5, 60, 5);
        assert_eq!(l.policy_header("limited"), "\"limited\";q=5;w=60");
        let (d, _) = gcra(&l, 0, 1000);
        assert_eq!(d.header("limited"), "\"limited\";r=4;t=12");
    }

    #[test]
    fn corrupt_slots_are_treated_as_empty() {
        let host = MemoryHost::new(0);
        let l = limit(1, 1, 1);
        for k in slot_keys(&l, &key_hash("k")) {
            host.shared_set(&k, b"garbage", None).unwrap();
        }
        assert!(check(&host, &l, "k").unwrap().allowed);
    }
}
