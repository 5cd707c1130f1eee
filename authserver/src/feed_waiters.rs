//! Long polls of the revocation feed (`GET /edge/revocations?since=<cursor>&wait=<s>`): an
//! answer at once when the feed has anything after the cursor, otherwise the request is
//! held until a revocation is published (the store's [`revocation_signal`], fed by one
//! Redis subscription per process) or the wait ends, then answered with what the feed has
//! (an empty page with the same cursor when nothing came).
//!
//! Bounded: the wait is cut to `TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S`, at most
//! `TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS` are held at once (more get 503), and on shutdown
//! every held poll is answered at once (so that the drain does not wait for them).
//!
//! [`revocation_signal`]: crate::store::Store::revocation_signal

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::error::OAuthError;
use crate::store::{FeedPage, Store};

/// The held long polls of one process.
pub struct FeedWaiters {
    slots: Arc<Semaphore>,
    capacity: usize,
    stop: watch::Sender<bool>,
    /// `TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S` (zero: long polls are off).
    pub max_wait: Duration,
}

impl FeedWaiters {
    pub fn new(max_waiters: usize, max_wait: Duration) -> FeedWaiters {
        let capacity = max_waiters.max(1);
        FeedWaiters {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            stop: watch::Sender::new(false),
            max_wait,
        }
    }

    /// The server is stopping: answer every held poll now, and hold no new one.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Long polls held right now.
    pub fn held(&self) -> usize {
        self.capacity.saturating_sub(self.slots.available_permits())
    }

    /// Read the feed after `since`; when it has nothing new, hold on until a revocation is
    /// published, `wait` ends or the server stops, and read it again.
    pub async fn read(
        &self,
        store: &dyn Store,
        since: Option<u64>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedPage, OAuthError> {
        // Subscribed before the first read: a revocation published after it is seen.
        let mut signal = store.revocation_signal();
        let page = store.revocation_feed(since, limit).await?;
        let fresh = |p: &FeedPage| !p.entries.is_empty() || p.resync || Some(p.cursor) != since;
        if wait.is_zero() || fresh(&page) {
            return Ok(page);
        }
        let mut stop = self.stop.subscribe();
        if *stop.borrow_and_update() {
            return Ok(page);
        }
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Err(OAuthError::TemporarilyUnavailable(
                "too many long polls of the revocation feed held; poll again later".into(),
            ));
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        // The store is going away: answer what there is.
                        return Ok(page);
                    }
                    let p = store.revocation_feed(since, limit).await?;
                    if fresh(&p) {
                        return Ok(p);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    // Read again: a wake-up lost while the subscription was down is made up.
                    return Ok(store.revocation_feed(since, limit).await?);
                }
                _ = stop.changed() => return Ok(page),
            }
        }
    }
}
