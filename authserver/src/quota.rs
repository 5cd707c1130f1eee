//! Per-client request quotas spent in the process from leases, so that a request does not
//! cost a Redis round trip to count it.
//!
//! A client's quota (`TOLLGATE_RATE_LIMIT_PER_CLIENT`, or its own `rate_limit_per_minute`)
//! is a fixed one-minute window in the store. A process takes a lease of up to
//! [`chunk`] requests of it at a time ([`Store::rate_lease`], one atomic script: the
//! leases of a window never add up to more than the limit, whichever replicas take them)
//! and spends them locally; only when its lease is used up does it ask for the next. So:
//!
//! - no replica, and no set of replicas, allows more than the limit in a window;
//! - one replica alone allows exactly the limit, as before;
//! - across replicas, a client may be refused while others still hold unspent units of the
//!   window: at most `chunk` per replica, 2 % of the limit (at least 1, at most 100);
//! - a request costs a round trip only once per `chunk` requests.
//!
//! The lease keys carry a space (`quota client:<id>`), which the gateways' lease endpoint
//! refuses in its keys, so no gateway can spend or read a client's quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Store, StoreResult};

/// The quota window, seconds.
pub const WINDOW_SECS: u64 = 60;

/// Local entries kept at most; ended windows are dropped first.
const MAX_ENTRIES: usize = 100_000;

/// Requests a lease asks for: 2 % of the limit, at least 1, at most 100.
pub fn chunk(limit: u64) -> u64 {
    (limit / 50).clamp(1, 100)
}

/// Whether a request may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    Allowed,
    /// The window is used up: seconds until it ends.
    Refused {
        retry_after: u64,
    },
}

struct Local {
    remaining: u64,
    until: Instant,
}

/// The unspent leases of this process, by quota key.
#[derive(Default)]
pub struct Quotas {
    local: Mutex<HashMap<String, Local>>,
}

impl Quotas {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        // Every update is one insert, decrement or retain: nothing half-done to recover.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spend one request of the quota `key` (`limit` a minute, > 0).
    pub async fn spend(&self, store: &dyn Store, key: &str, limit: u64) -> StoreResult<Spent> {
        if self.take_local(key) {
            return Ok(Spent::Allowed);
        }
        let lease_key = format!("quota {key}");
        let lease = store
            .rate_lease(&lease_key, limit, WINDOW_SECS, chunk(limit))
            .await?;
        if lease.granted == 0 {
            return Ok(Spent::Refused {
                retry_after: lease.reset_ms.div_ceil(1000).max(1),
            });
        }
        let now = Instant::now();
        let until = now + Duration::from_millis(lease.reset_ms);
        let mut m = self.lock();
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, l| l.until > now && l.remaining > 0);
        }
        match m.get_mut(key) {
            // Another request's lease of the same window came back first: keep both.
            Some(l) if l.until > now => l.remaining += lease.granted - 1,
            _ => {
                m.insert(
                    key.to_string(),
                    Local {
                        remaining: lease.granted - 1,
                        until,
                    },
                );
            }
        }
        Ok(Spent::Allowed)
    }

    /// One unit of a live local lease, if there is one.
    fn take_local(&self, key: &str) -> bool {
        let mut m = self.lock();
        match m.get_mut(key) {
            Some(l) if l.remaining > 0 && l.until > Instant::now() => {
                l.remaining -= 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryStore;

    async fn allowed(q: &Quotas, store: &dyn Store, key: &str, limit: u64, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if q.spend(store, key, limit).await.unwrap() == Spent::Allowed {
                ok += 1;
            }
        }
        ok
    }

    #[test]
    fn chunks_are_two_percent_within_bounds() {
        assert_eq!(
            [1, 49, 50, 1000, 5000, 1_000_000].map(chunk),
            [1, 1, 1, 20, 100, 100]
        );
    }

    #[tokio::test]
    async fn one_replica_allows_exactly_the_limit() {
        let store = MemoryStore::default();
        for limit in [1, 5, 49, 120, 1000] {
            let q = Quotas::default();
            let key = format!("client:{limit}");
            let n = allowed(&q, &store, &key, limit, limit as usize + 30).await;
            assert_eq!(n, limit as usize, "limit {limit}");
            assert!(matches!(
                q.spend(&store, &key, limit).await.unwrap(),
                Spent::Refused { retry_after } if (1..=60).contains(&retry_after)
            ));
        }
    }

    #[tokio::test]
    async fn replicas_together_never_exceed_the_limit() {
        let store = Arc::new(MemoryStore::default());
        let replicas: Vec<Quotas> = (0..3).map(|_| Quotas::default()).collect();
        let mut total = 0;
        // Interleaved, as a load balancer would spread them.
        for _ in 0..400 {
            for q in &replicas {
                if q.spend(store.as_ref(), "client:c", 1000).await.unwrap() == Spent::Allowed {
                    total += 1;
                }
            }
        }
        assert_eq!(total, 1000);
        // Concurrent requests on one replica: still never above the limit.
        let q = Arc::new(Quotas::default());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (q, store) = (q.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                allowed(&q, store.as_ref(), "client:d", 300, 100).await
            }));
        }
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        assert_eq!(sum, 300);
    }

    #[tokio::test]
    async fn a_lease_costs_one_store_call_per_chunk() {
        let store = MemoryStore::default();
        let q = Quotas::default();
        allowed(&q, &store, "client:e", 5000, 250).await;
        // Three leases of 100 were taken from the store's window, no more.
        let used = store
            .rate_lease("quota client:e", 5000, WINDOW_SECS, 0)
            .await
            .unwrap()
            .used;
        assert_eq!(used, 300, "leases of 100: 250 requests took three");
    }
}
