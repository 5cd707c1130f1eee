//! Shared server state: configuration, the store, the signing key ring and buffered
//! counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::keys::{new_sealed_key, KeyError, KeyRing, SigningAlg};
use crate::store::{now_secs, Store};

/// The error of building the state and of key management (defined with the other errors).
pub use crate::error::StartupError;

/// The built filter module served at `/edge/module.wasm`.
pub struct EdgeModule {
    pub bytes: bytes::Bytes,
    pub sha256: String,
}

pub struct AppState {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    keys: RwLock<Arc<KeyRing>>,
    pub pepper: Vec<u8>,
    stats: Mutex<HashMap<&'static str, i64>>,
    pub edge_module: Option<EdgeModule>,
    /// The bound on password checks running at once (their memory).
    pub password_checks: crate::users::PasswordChecks,
    /// DPoP server nonces (used when `cfg.dpop_nonce`), keyed by the pepper so that every
    /// replica makes and accepts the same.
    pub dpop_nonces: crate::dpop::Nonces,
    /// Long polls of the revocation feed held by this process.
    pub feed_waiters: crate::feed_waiters::FeedWaiters,
    /// The unspent quota leases of this process (per-client request quotas).
    pub quotas: crate::quota::Quotas,
}

const PEPPER_CONFIG_KEY: &str = "secret_pepper";

impl AppState {
    /// Build the state: resolve the secret pepper, make sure a signing key exists, load the
    /// key ring and apply `auth_config` overrides from the store.
    pub async fn new(
        mut cfg: Config,
        store: Arc<dyn Store>,
    ) -> Result<Arc<AppState>, StartupError> {
        // Production mode: the pepper and the KEK come from outside the store, or no start.
        cfg.check_production()?;
        let overrides = store.get_config().await?;
        cfg.apply_store_overrides(&overrides);
        let pepper = match &cfg.secret_pepper {
            Some(p) => p.as_bytes().to_vec(),
            // Development only (check_production): a pepper kept in the store.
            None => match overrides.get(PEPPER_CONFIG_KEY) {
                Some(p) => p.as_bytes().to_vec(),
                None => {
                    tracing::warn!(
                        "TOLLGATE_SECRET_PEPPER is not set: using a random pepper kept in the store"
                    );
                    let p = crate::crypto::random_b64(32);
                    let mut m = std::collections::BTreeMap::new();
                    m.insert(PEPPER_CONFIG_KEY.to_string(), p);
                    store.set_config(&m).await?;
                    // Another replica may have raced us; read back what won.
                    let back = store.get_config().await?;
                    back.get(PEPPER_CONFIG_KEY)
                        .cloned()
                        .unwrap_or_default()
                        .into_bytes()
                }
            },
        };
        let edge_module = match &cfg.edge_module {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| StartupError::EdgeModule {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                let sha256 = hex::encode(Sha256::digest(&bytes));
                Some(EdgeModule {
                    bytes: bytes.into(),
                    sha256,
                })
            }
            None => None,
        };
        let password_mib = crate::users::password_memory_mib(cfg.password_memory_mib);
        let password_checks =
            crate::users::PasswordChecks::new(crate::users::password_slots(password_mib));
        tracing::info!(
            memory_mib = password_mib,
            slots = password_checks.size(),
            "password checks bounded"
        );
        let dpop_nonces = crate::dpop::Nonces::new(&pepper);
        let feed_waiters = crate::feed_waiters::FeedWaiters::new(
            cfg.edge_long_poll_max_waiters,
            std::time::Duration::from_secs(cfg.edge_long_poll_max_wait_s),
        );
        let state = Arc::new(AppState {
            feed_waiters,
            quotas: crate::quota::Quotas::default(),
            cfg,
            store,
            keys: RwLock::new(Arc::new(KeyRing::default())),
            dpop_nonces,
            pepper,
            stats: Mutex::new(HashMap::new()),
            edge_module,
            password_checks,
        });
        let kek = state.cfg.key_encryption.clone();
        if kek.is_configured() {
            // Upgrade path: keys stored in clear by an earlier version are sealed now.
            let r = crate::key_rotation::rewrap(state.store.as_ref(), &kek, true).await?;
            if r.migrated > 0 {
                tracing::info!(
                    keys = r.migrated,
                    kek_id = %r.kek_id,
                    "sealed the signing keys stored in clear under the key-encryption key"
                );
            }
        } else {
            tracing::warn!(
                "TOLLGATE_KEY_ENCRYPTION_KEY is not set: signing keys are stored in clear \
                 (refused in production mode)"
            );
        }
        state.ensure_key().await?;
        // A key that cannot be decrypted (wrong or missing KEK) stops the start, with the
        // kid and the KEK id it needs; later reloads only skip such a key.
        let stored = state.store.list_keys().await?;
        let (ring, errors) = KeyRing::load(&stored, &kek);
        if let Some(e) = errors
            .into_iter()
            .find(|e| matches!(e, KeyError::Sealed { .. }))
        {
            return Err(e.into());
        }
        *state.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        state.reload_keys().await?;
        Ok(state)
    }

    /// Create the first signing key when the store has none.
    pub async fn ensure_key(&self) -> Result<(), StartupError> {
        if self.store.list_keys().await?.is_empty() {
            let alg = SigningAlg::parse(&self.cfg.signing_alg)?;
            let now = now_secs();
            let key = new_sealed_key(alg, now, now, &self.cfg.key_encryption)?;
            tracing::info!(kid = %key.kid, alg = alg.as_str(), "created the first signing key");
            self.store.put_key(&key).await?;
        }
        Ok(())
    }

    /// Reload the key ring from the store (all replicas converge on the same keys).
    pub async fn reload_keys(&self) -> Result<(), StartupError> {
        let stored = self.store.list_keys().await?;
        // Keys opened already are kept; only new ones are decrypted.
        let (ring, errors) = self.keys().reload(&stored, &self.cfg.key_encryption);
        for e in errors {
            tracing::error!(error = %e, "skipping unusable signing key");
        }
        let mut g = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(ring);
        Ok(())
    }

    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Longest lifetime of an access token signed now (for key retirement).
    pub fn max_token_ttl(&self) -> u64 {
        self.cfg.access_token_ttl.max(3600)
    }

    /// Count an event into `auth_stats` (flushed in the background, one round trip a second).
    pub fn stat(&self, name: &'static str) {
        let mut g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *g.entry(name).or_insert(0) += 1;
    }

    pub async fn flush_stats(&self) {
        let batch: Vec<(&'static str, i64)> = {
            let mut g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            g.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.incr_stats(&batch).await {
            tracing::warn!(error = %e, "could not flush auth_stats; keeping the counts");
            let mut g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in batch {
                *g.entry(k).or_insert(0) += v;
            }
        }
    }

    /// Automatic rotation: rotate when the newest key is older than the configured interval
    /// ([`crate::key_rotation::rotation_due`]), then reload the key ring.
    pub async fn rotate_keys_if_due(&self) -> Result<(), StartupError> {
        let interval = self.cfg.key_rotation_interval;
        if interval == 0 {
            return Ok(());
        }
        let keys = self.store.list_keys().await?;
        if crate::key_rotation::rotation_due(&keys, now_secs(), interval) {
            let alg = SigningAlg::parse(&self.cfg.signing_alg)?;
            let k = crate::key_rotation::rotate(
                self.store.as_ref(),
                alg,
                self.cfg.key_activation_delay,
                &self.cfg.key_encryption,
            )
            .await?;
            tracing::info!(kid = %k.kid, active_from = k.active_from, "rotated the signing key");
            self.reload_keys().await?;
        }
        Ok(())
    }

    /// Background work of a serving replica: flush counters, reload keys (so that a key
    /// rotated by another replica or by `authserver keys rotate` is picked up, and the
    /// switch to a pending key happens on time), rotate keys automatically when configured,
    /// fold the metrics' histogram samples into their buckets.
    pub fn spawn_background(self: &Arc<Self>) {
        crate::telemetry::spawn_metrics_upkeep(crate::telemetry::METRICS_UPKEEP_INTERVAL);
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut since_reload = 0u64;
            loop {
                tick.tick().await;
                me.flush_stats().await;
                since_reload += 1;
                let now = now_secs();
                let due_change = me
                    .keys()
                    .next_change(now.saturating_sub(1))
                    .is_some_and(|t| t <= now);
                if since_reload >= 10 || due_change {
                    since_reload = 0;
                    if let Err(e) = me.reload_keys().await {
                        tracing::warn!(error = %e, "key reload failed; keeping the current keys");
                    }
                    if me.cfg.key_rotation_interval > 0 {
                        if let Err(e) = me.rotate_keys_if_due().await {
                            tracing::warn!(error = %e, "automatic key rotation failed");
                        }
                    }
                }
            }
        });
    }
}
