//! Signing-key rotation. A rotated key is published at once and signs after
//! `key_activation_delay`; the previous key stops signing then and stays in the JWKS until
//! every token it signed has expired, after which `cleanup` deletes it.

use serde::Serialize;

use crate::keys::{new_stored_key, KeyRing, SigningAlg};
use crate::state::{AppState, StartupError};
use crate::store::{now_secs, Store, StoredKey};

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub created_at: u64,
    pub active_from: u64,
    pub retire_at: Option<u64>,
    pub state: &'static str,
}

/// Rotate: add a new key active from `now + delay` and schedule the retirement of every
/// current key at that moment. Returns the new key.
pub async fn rotate(
    store: &dyn Store,
    alg: SigningAlg,
    delay: u64,
) -> Result<StoredKey, StartupError> {
    let now = now_secs();
    let active_from = now + delay;
    let new = new_stored_key(alg, now, active_from)?;
    // Publish first: the new key is in the JWKS before anything is signed with it.
    store.put_key(&new).await?;
    retire_older(store, &new).await?;
    Ok(new)
}

/// Schedule the retirement, at `new.active_from`, of every key that became (or becomes)
/// active before it. A key activating at the same time or later is left alone: when two
/// replicas rotate at the same moment, neither retires the other's new key, so some key is
/// always active (the ring picks one of them deterministically).
async fn retire_older(store: &dyn Store, new: &StoredKey) -> Result<(), StartupError> {
    for mut k in store.list_keys().await? {
        if k.kid != new.kid
            && k.active_from < new.active_from
            && k.retire_at.is_none_or(|r| r > new.active_from)
        {
            k.retire_at = Some(new.active_from);
            store.put_key(&k).await?;
        }
    }
    Ok(())
}

/// Automatic rotation: rotate when the newest key is older than the configured interval.
pub async fn rotate_if_due(state: &AppState) -> Result<(), StartupError> {
    let interval = state.cfg.key_rotation_interval;
    if interval == 0 {
        return Ok(());
    }
    let keys = state.store.list_keys().await?;
    let newest = keys.iter().map(|k| k.created_at).max().unwrap_or(0);
    if now_secs() >= newest + interval {
        let alg = SigningAlg::parse(&state.cfg.signing_alg)?;
        let k = rotate(state.store.as_ref(), alg, state.cfg.key_activation_delay).await?;
        tracing::info!(kid = %k.kid, active_from = k.active_from, "rotated the signing key");
        state.reload_keys().await?;
    }
    Ok(())
}

/// Describe the stored keys.
pub async fn list(store: &dyn Store, max_token_ttl: u64) -> Result<Vec<KeyView>, StartupError> {
    let now = now_secs();
    let stored = store.list_keys().await?;
    let (ring, _) = KeyRing::load(&stored);
    let active = ring.active(now).map(|k| k.stored.kid.clone());
    let mut out: Vec<KeyView> = stored
        .into_iter()
        .map(|k| {
            let state = if Some(&k.kid) == active.as_ref() {
                "signing"
            } else if k.active_from > now {
                "published, pending"
            } else if k.retire_at.is_some_and(|r| r + max_token_ttl <= now) {
                "expired"
            } else if k.retire_at.is_some_and(|r| r <= now) {
                "retired, published"
            } else {
                "published"
            };
            KeyView {
                kid: k.kid,
                alg: k.alg,
                created_at: k.created_at,
                active_from: k.active_from,
                retire_at: k.retire_at,
                state,
            }
        })
        .collect();
    out.sort_by_key(|k| (k.active_from, k.created_at));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Two replicas rotating in the same instant (both keys published before either
    /// retirement pass runs) must still leave a signing key at every moment.
    #[tokio::test]
    async fn concurrent_rotations_never_leave_no_active_key() {
        let store = MemoryStore::default();
        let now = now_secs();
        let k1 = new_stored_key(SigningAlg::ES256, now - 100, now - 100).unwrap();
        store.put_key(&k1).await.unwrap();
        let t = now + 50;
        let k2 = new_stored_key(SigningAlg::ES256, now, t).unwrap();
        let k3 = new_stored_key(SigningAlg::ES256, now, t).unwrap();
        store.put_key(&k2).await.unwrap();
        store.put_key(&k3).await.unwrap();
        retire_older(&store, &k2).await.unwrap();
        retire_older(&store, &k3).await.unwrap();
        let (ring, _) = KeyRing::load(&store.list_keys().await.unwrap());
        assert_eq!(ring.active(t - 1).unwrap().stored.kid, k1.kid);
        let at_t = ring.active(t).expect("a key signs after the switch");
        assert!(at_t.stored.kid == k2.kid || at_t.stored.kid == k3.kid);
        assert!(ring.active(t + 10_000).is_some());

        // A later rotation retires both.
        let k4 = new_stored_key(SigningAlg::ES256, now, t + 100).unwrap();
        store.put_key(&k4).await.unwrap();
        retire_older(&store, &k4).await.unwrap();
        let (ring, _) = KeyRing::load(&store.list_keys().await.unwrap());
        assert_eq!(ring.active(t + 100).unwrap().stored.kid, k4.kid);
        assert_eq!(ring.active(t + 99).unwrap().stored.kid, at_t.stored.kid);
    }
}
