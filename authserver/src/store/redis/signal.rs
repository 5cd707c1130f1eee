//! The revocation signal ([`Store::revocation_signal`]): one pub/sub subscription per
//! process to [`REVOCATION_CHANNEL`], fanned out to every waiter through a
//! `tokio::sync::watch` (not one Redis connection per waiter). The same subscription
//! carries [`CLIENT_CHANNEL`], the evictions of the client cache (`client_cache`), which
//! it tells whether it is up.
//!
//! `FEED_APPEND_LUA` publishes the new sequence number when it appends a revocation. The
//! subscription is a dedicated connection (a subscribed RESP2 connection takes no other
//! command), opened on first use:
//! - standalone: to the server of the store URL;
//! - Sentinel: to the master the Sentinels name at (re)connect time, and again whenever
//!   it is no longer that master: when the store's data connection reaches another master,
//!   or when the Sentinels name another one at an idle check. (A message published on the
//!   master reaches the subscribers of its replicas too, but after a switchover the old
//!   master stays a master, deaf to the new one, until the Sentinels reconfigure it.)
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

use super::client_cache::{ClientCache, CLIENT_CHANNEL};
use super::*;

/// How often an idle subscription is checked (and the task looks whether its store is
/// still there).
const IDLE_CHECK: Duration = Duration::from_secs(10);
/// Pause before reopening a failed subscription.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Where the subscription connects.
pub(super) enum PubSubSource {
    Single(Box<::redis::Client>),
    /// The Sentinels, and the address of the master the data connection reached last.
    Sentinel {
        client: Arc<Mutex<SentinelClient>>,
        master: watch::Receiver<String>,
    },
    Cluster(Vec<::redis::Client>),
}

/// The signal of one store: the sender its receivers follow, the subscription task started
/// on first use.
pub(super) struct Signal {
    pub(super) tx: Arc<watch::Sender<u64>>,
    pub(super) clients: Arc<ClientCache>,
    started: std::sync::OnceLock<()>,
    source: Arc<PubSubSource>,
    timeout: Duration,
}

impl Signal {
    pub(super) fn new(source: PubSubSource, timeout: Duration, client_ttl: Duration) -> Signal {
        Signal {
            tx: Arc::new(watch::Sender::new(0)),
            clients: Arc::new(ClientCache::new(client_ttl)),
            started: std::sync::OnceLock::new(),
            source: Arc::new(source),
            timeout,
        }
    }

    /// A receiver; the first call starts the subscription task.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.start();
        self.tx.subscribe()
    }

    /// Start the subscription task (once, and only within a tokio runtime).
    pub(super) fn start(&self) {
        self.started.get_or_init(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(run(
                    self.source.clone(),
                    Arc::downgrade(&self.tx),
                    self.clients.clone(),
                    self.timeout,
                ));
            }
        });
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

/// The address of the master the Sentinels name now.
async fn named_master(
    client: &Mutex<SentinelClient>,
    timeout: Duration,
) -> Result<(::redis::Client, String), String> {
    let master = tokio::time::timeout(timeout, async {
        client.lock().await.async_get_client().await
    })
    .await
    .map_err(|_| "sentinel lookup timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let addr = master.get_connection_info().addr().to_string();
    Ok((master, addr))
}

/// Subscribe; on Sentinel, also the address of the master subscribed to.
async fn open(
    source: &PubSubSource,
    timeout: Duration,
) -> Result<(::redis::aio::PubSub, Option<String>), String> {
    let connect = |c: ::redis::Client| async move {
        let mut p = tokio::time::timeout(timeout, c.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, p.subscribe(&[REVOCATION_CHANNEL, CLIENT_CHANNEL]))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(p)
    };
    match source {
        PubSubSource::Single(c) => Ok((connect((**c).clone()).await?, None)),
        PubSubSource::Sentinel { client, .. } => {
            let (master, addr) = named_master(client, timeout * 2).await?;
            Ok((connect(master).await?, Some(addr)))
        }
        PubSubSource::Cluster(nodes) => {
            let mut last = "no cluster node".to_string();
            for c in nodes {
                match connect(c.clone()).await {
                    Ok(p) => return Ok((p, None)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Resolves when the store's data connection has reached a master other than `at` (never
/// without a Sentinel source).
async fn data_master_moved(rx: &mut Option<watch::Receiver<String>>, at: Option<&str>) -> String {
    if let (Some(rx), Some(at)) = (rx.as_mut(), at) {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            if !now.is_empty() && now != at {
                return now;
            }
        }
    }
    std::future::pending().await
}

async fn run(
    source: Arc<PubSubSource>,
    tx: Weak<watch::Sender<u64>>,
    clients: Arc<ClientCache>,
    timeout: Duration,
) {
    let mut failing = false;
    let mut data_master = match &*source {
        PubSubSource::Sentinel { master, .. } => Some(master.clone()),
        _ => None,
    };
    loop {
        if tx.strong_count() == 0 {
            return;
        }
        match open(&source, timeout).await {
            Ok((p, at)) => {
                if failing {
                    tracing::info!("revocation signal subscription is back");
                }
                failing = false;
                if let Some(rx) = data_master.as_mut() {
                    rx.borrow_and_update();
                }
                // Changes of clients published while not subscribed: the cache starts empty.
                clients.set_live(true);
                // Anything published while not subscribed: waiters read the feed again.
                if !wake(&tx, None) {
                    return;
                }
                let (mut sink, mut stream) = p.split();
                loop {
                    let next = tokio::select! {
                        next = tokio::time::timeout(IDLE_CHECK, stream.next()) => next,
                        moved = data_master_moved(&mut data_master, at.as_deref()) => {
                            tracing::info!(master = %moved, "the Redis master changed: moving the revocation signal subscription");
                            break;
                        }
                    };
                    match next {
                        Ok(Some(msg)) if msg.get_channel_name() == CLIENT_CHANNEL => {
                            match msg.get_payload::<String>() {
                                Ok(id) => clients.evict(&id),
                                // Not an id: forget every client to be safe.
                                Err(_) => clients.set_live(true),
                            }
                        }
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
                            // On Sentinel: still subscribed to the master they name?
                            if let (PubSubSource::Sentinel { client, .. }, Some(at)) =
                                (&*source, at.as_deref())
                            {
                                if let Ok((_, named)) = named_master(client, timeout * 2).await {
                                    if named != at {
                                        tracing::info!(master = %named, "the Sentinels name another Redis master: moving the revocation signal subscription");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                clients.set_live(false);
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
