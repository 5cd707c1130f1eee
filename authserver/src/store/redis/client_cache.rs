//! The client cache ([`Store::get_client_cached`]): client records kept in the process so
//! that client authentication at the token endpoint costs no Redis round trip, and an
//! issuance one (its `MULTI`/`EXEC`).
//!
//! Every write of a client record (`put_client`, `delete_client`) publishes the client's id
//! on [`CLIENT_CHANNEL`] in the same transaction; the store's pub/sub subscription (`signal`,
//! shared with the revocation signal) evicts that id in every process. The cache serves
//! records only while that subscription is up, so no change can pass unseen:
//!
//! - it is emptied, and bypassed, whenever the subscription is lost or not yet open, and
//!   emptied again when it is (re)opened; every read then goes to Redis;
//! - a read that started before an eviction or a (re)subscription does not fill the cache
//!   (the epoch it started in is over), so a record read just before a change never
//!   outlives the change's message;
//! - an entry is served for at most the configured time (`TOLLGATE_CLIENT_CACHE_SECONDS`),
//!   the bound if a message were ever lost while the subscription looked alive (a change
//!   written into Redis by hand publishes nothing, too);
//! - unknown ids are never cached, and the cache holds at most [`MAX_ENTRIES`] records.
//!
//! A caller that rejects a cached record re-reads it with [`Store::get_client`] before it
//! answers (client authentication does), so new credentials or a new authentication method
//! set through another replica work at once; that plain read also replaces what the cache
//! held. The old ones keep working only until the message arrives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::ClientRecord;

/// The pub/sub channel of client changes: the message is the client's id.
pub(super) const CLIENT_CHANNEL: &str = "auth:clients:changed";

/// At most this many records are kept; more are read from Redis every time.
pub(super) const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
struct Inner {
    /// Whether the subscription is up (entries are served and kept only then).
    live: bool,
    /// Advanced by every eviction and every change of `live`.
    epoch: u64,
    entries: HashMap<String, (ClientRecord, Instant)>,
}

/// The records of one store, with the state of its subscription.
pub(super) struct ClientCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

/// Where a read stands: the epoch a fill must still be in.
#[derive(Clone, Copy)]
pub(super) struct Ticket(u64);

impl ClientCache {
    /// `ttl` zero: off (nothing is ever kept).
    pub(super) fn new(ttl: Duration) -> ClientCache {
        ClientCache {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters (every update is a single insert, remove or clear).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `id` when it is cached and fresh; otherwise a ticket for filling the
    /// cache with what Redis answers (`None` when the cache may not be filled now).
    pub(super) fn lookup(&self, id: &str) -> Result<ClientRecord, Option<Ticket>> {
        if !self.enabled() {
            return Err(None);
        }
        let mut g = self.lock();
        if !g.live {
            return Err(None);
        }
        match g.entries.get(id) {
            Some((rec, at)) if at.elapsed() < self.ttl => Ok(rec.clone()),
            Some(_) => {
                g.entries.remove(id);
                Err(Some(Ticket(g.epoch)))
            }
            None => Err(Some(Ticket(g.epoch))),
        }
    }

    /// Keep `rec`, read from Redis under `ticket`, unless something was evicted or the
    /// subscription changed since.
    pub(super) fn fill(&self, ticket: Ticket, rec: &ClientRecord) {
        let mut g = self.lock();
        if !g.live || g.epoch != ticket.0 {
            return;
        }
        if g.entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            g.entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if g.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        g.entries
            .insert(rec.client_id.clone(), (rec.clone(), Instant::now()));
    }

    /// A plain read of `id` answered `rec`: an entry that differs from it is older than
    /// Redis (a change whose message has not arrived yet) and is forgotten.
    pub(super) fn saw(&self, id: &str, rec: Option<&ClientRecord>) {
        let mut g = self.lock();
        if g.entries.get(id).is_some_and(|(held, _)| Some(held) != rec) {
            g.epoch += 1;
            g.entries.remove(id);
        }
    }

    /// A client changed: forget it, and refuse fills of reads that started before.
    pub(super) fn evict(&self, id: &str) {
        let mut g = self.lock();
        g.epoch += 1;
        g.entries.remove(id);
    }

    /// The subscription is up (`true`) or lost (`false`): forget everything either way.
    pub(super) fn set_live(&self, live: bool) {
        let mut g = self.lock();
        g.epoch += 1;
        g.live = live;
        g.entries.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, secret: &str) -> ClientRecord {
        ClientRecord {
            client_id: id.into(),
            secret_hash: Some(secret.into()),
            registration_token_hash: None,
            metadata: Default::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn hit(c: &ClientCache, id: &str) -> Option<String> {
        c.lookup(id).ok().and_then(|r| r.secret_hash)
    }

    #[test]
    fn nothing_is_kept_or_served_while_the_subscription_is_down() {
        let c = ClientCache::new(Duration::from_secs(60));
        assert!(matches!(c.lookup("a"), Err(None)));
        c.set_live(true);
        let Err(Some(t)) = c.lookup("a") else {
            panic!("a live cache hands out a ticket")
        };
        c.fill(t, &rec("a", "s1"));
        assert_eq!(hit(&c, "a").as_deref(), Some("s1"));
        c.set_live(false);
        assert!(matches!(c.lookup("a"), Err(None)));
        c.set_live(true);
        assert_eq!(hit(&c, "a"), None, "a resubscription starts empty");
    }

    #[test]
    fn a_read_that_started_before_a_change_does_not_fill() {
        let c = ClientCache::new(Duration::from_secs(60));
        c.set_live(true);
        let Err(Some(t)) = c.lookup("a") else {
            panic!("ticket")
        };
        // The change's message arrives while the (old) record is on its way from Redis.
        c.evict("a");
        c.fill(t, &rec("a", "old"));
        assert_eq!(hit(&c, "a"), None);
        // Across a resubscription too.
        let Err(Some(t)) = c.lookup("a") else {
            panic!("ticket")
        };
        c.set_live(false);
        c.set_live(true);
        c.fill(t, &rec("a", "old"));
        assert_eq!(hit(&c, "a"), None);
    }

    #[test]
    fn an_eviction_forgets_only_its_client_and_entries_expire() {
        let c = ClientCache::new(Duration::from_millis(50));
        c.set_live(true);
        for id in ["a", "b"] {
            let Err(Some(t)) = c.lookup(id) else {
                panic!("ticket")
            };
            c.fill(t, &rec(id, id));
        }
        c.evict("a");
        assert_eq!(hit(&c, "a"), None);
        assert_eq!(hit(&c, "b").as_deref(), Some("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(hit(&c, "b"), None, "served past its time");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_plain_read_that_differs_replaces_what_is_held() {
        let c = ClientCache::new(Duration::from_secs(60));
        c.set_live(true);
        let Err(Some(t)) = c.lookup("a") else {
            panic!("ticket")
        };
        c.fill(t, &rec("a", "s1"));
        c.saw("a", Some(&rec("a", "s1")));
        assert_eq!(hit(&c, "a").as_deref(), Some("s1"), "the same record stays");
        c.saw("a", Some(&rec("a", "s2")));
        assert_eq!(hit(&c, "a"), None);
        let Err(Some(t)) = c.lookup("a") else {
            panic!("ticket")
        };
        c.fill(t, &rec("a", "s2"));
        c.saw("a", None);
        assert_eq!(hit(&c, "a"), None, "deleted in Redis");
    }

    #[test]
    fn off_keeps_nothing_and_the_size_is_bounded() {
        let off = ClientCache::new(Duration::ZERO);
        off.set_live(true);
        assert!(matches!(off.lookup("a"), Err(None)));

        let c = ClientCache::new(Duration::from_secs(60));
        c.set_live(true);
        for i in 0..MAX_ENTRIES + 5 {
            let id = format!("c{i}");
            if let Err(Some(t)) = c.lookup(&id) {
                c.fill(t, &rec(&id, "s"));
            }
        }
        assert_eq!(c.len(), MAX_ENTRIES);
    }
}
