//! The revocation signal ([`Store::revocation_signal`]): one pub/sub subscription per
//! process to [`REVOCATION_CHANNEL`], fanned out to every waiter through a
//! `tokio::sync::watch` (not one Redis connection per waiter).
//!
//! `FEED_APPEND_LUA` publishes the new sequence number when it appends a revocation. The
//! subscription is a dedicated connection (a subscribed RESP2 connection takes no other
//! command), opened on first use:
//! - standalone: to the server of the store URL;
//! - Sentinel: to the master the Sentinels name at (re)connect time (a message published
//!   on the master also reaches the subscribers of its replicas, so a demoted master that
//!   now replicates still delivers);
//! - Cluster: to any reachable node, in turn (a classic `PUBLISH` reaches every node).
//!
//! The signal's value is the highest sequence number announced. A message lost while the
//! subscription was down is made up when it is back: the receivers are woken once after
//! every (re)subscription (value unchanged), and waiters read the feed again. An idle
//! subscription is checked with `PING` every [`IDLE_CHECK`]; one that does not answer is
//! reopened. The task ends once the store is dropped.

use std::sync::Weak;

use futures::StreamExt;
use tokio::sync::watch;

use super::*;

/// How often an idle subscription is checked (and the task looks whether its store is
/// still there).
const IDLE_CHECK: Duration = Duration::from_secs(10);
/// Pause before reopening a failed subscription.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Where the subscription connects.
pub(super) enum PubSubSource {
    Single(Box<::redis::Client>),
    Sentinel(Arc<Mutex<SentinelClient>>),
    Cluster(Vec<::redis::Client>),
}

/// The signal of one store: the sender its receivers follow, the subscription task started
/// on first use.
pub(super) struct Signal {
    pub(super) tx: Arc<watch::Sender<u64>>,
    started: std::sync::OnceLock<()>,
    source: Arc<PubSubSource>,
    timeout: Duration,
}

impl Signal {
    pub(super) fn new(source: PubSubSource, timeout: Duration) -> Signal {
        Signal {
            tx: Arc::new(watch::Sender::new(0)),
            started: std::sync::OnceLock::new(),
            source: Arc::new(source),
            timeout,
        }
    }

    /// A receiver; the first call starts the subscription task.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.started.get_or_init(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(run(
                    self.source.clone(),
                    Arc::downgrade(&self.tx),
                    self.timeout,
                ));
            }
        });
        self.tx.subscribe()
    }
}

/// Wake the receivers: with the sequence number a message carried (the value never goes
/// back), or without one (after a resubscription).
fn wake(tx: &Weak<watch::Sender<u64>>, seq: Option<u64>) -> bool {
    match tx.upgrade() {
        Some(tx) => {
            tx.send_modify(|v| *v = (*v).max(seq.unwrap_or(0)));
            true
        }
        None => false,
    }
}

async fn open(source: &PubSubSource, timeout: Duration) -> Result<::redis::aio::PubSub, String> {
    let connect = |c: ::redis::Client| async move {
        let mut p = tokio::time::timeout(timeout, c.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, p.subscribe(REVOCATION_CHANNEL))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(p)
    };
    match source {
        PubSubSource::Single(c) => connect((**c).clone()).await,
        PubSubSource::Sentinel(s) => {
            let master = tokio::time::timeout(timeout * 2, async {
                s.lock().await.async_get_client().await
            })
            .await
            .map_err(|_| "sentinel lookup timed out".to_string())?
            .map_err(|e| e.to_string())?;
            connect(master).await
        }
        PubSubSource::Cluster(nodes) => {
            let mut last = "no cluster node".to_string();
            for c in nodes {
                match connect(c.clone()).await {
                    Ok(p) => return Ok(p),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

async fn run(source: Arc<PubSubSource>, tx: Weak<watch::Sender<u64>>, timeout: Duration) {
    let mut failing = false;
    loop {
        if tx.strong_count() == 0 {
            return;
        }
        match open(&source, timeout).await {
            Ok(p) => {
                if failing {
                    tracing::info!("revocation signal subscription is back");
                }
                failing = false;
                // Anything published while not subscribed: waiters read the feed again.
                if !wake(&tx, None) {
                    return;
                }
                let (mut sink, mut stream) = p.split();
                loop {
                    match tokio::time::timeout(IDLE_CHECK, stream.next()).await {
                        Ok(Some(msg)) => {
                            let seq = msg.get_payload::<u64>().ok();
                            if !wake(&tx, seq) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            if tx.strong_count() == 0 {
                                return;
                            }
                            let ping = tokio::time::timeout(timeout, sink.ping::<Value>()).await;
                            if !matches!(ping, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::debug!("revocation signal subscription lost: reopening");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot subscribe to the revocation signal: long polls of the feed answer at their wait's end until it is back");
                }
                failing = true;
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}
