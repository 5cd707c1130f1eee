//! Signing-key rotation. A rotated key is published at once and signs after
//! `key_activation_delay`; the previous key stops signing then and stays in the JWKS until
//! every token it signed has expired, after which `cleanup` deletes it.
//!
//! `rewrap` re-encrypts every stored private key under the current key-encryption key
//! (KEK rotation; the first start with a KEK does it for keys still in clear).

use serde::Serialize;

use crate::crypto::KeyEncryption;
use crate::keys::{active_kid, new_sealed_key, seal, sealed_under_current, SigningAlg};
use crate::state::{AppState, StartupError};
use crate::store::{now_secs, Store, StoreError, StoredKey};

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub created_at: u64,
    pub active_from: u64,
    pub retire_at: Option<u64>,
    pub state: &'static str,
    /// The KEK that seals the private key; `null` when it is stored in clear.
    pub kek_id: Option<String>,
}

/// What `keys rewrap` did.
#[derive(Debug, Default, Serialize)]
pub struct RewrapReport {
    /// The KEK everything is sealed under now.
    pub kek_id: String,
    /// Keys that were in clear, sealed now.
    pub migrated: u64,
    /// Keys sealed under a previous KEK, re-encrypted now.
    pub rewrapped: u64,
    /// Keys already under the current KEK.
    pub unchanged: u64,
}

/// How many times a compare-and-set of one key record is tried against concurrent writers.
const CAS_ATTEMPTS: usize = 10;

/// Apply `change` to the record `kid` with a compare-and-set, re-reading it after a
/// concurrent change. `change` answers the new record, or `None` for nothing to do.
/// Returns the record replaced (`None`: nothing to do, or the record is gone).
async fn update_key<E>(
    store: &dyn Store,
    kid: &str,
    change: impl Fn(&StoredKey) -> Result<Option<StoredKey>, E>,
) -> Result<Option<StoredKey>, E>
where
    E: From<StoreError>,
{
    for _ in 0..CAS_ATTEMPTS {
        let Some(cur) = store.list_keys().await?.into_iter().find(|k| k.kid == kid) else {
            return Ok(None);
        };
        let Some(new) = change(&cur)? else {
            return Ok(None);
        };
        if store.replace_key(&cur, &new).await? {
            return Ok(Some(cur));
        }
    }
    Err(StoreError::Backend(format!(
        "signing key {kid} kept changing while being updated; run the command again"
    ))
    .into())
}

/// Seal every stored key under the current KEK: keys in clear (`clear_only`: only those,
/// as every start does) and, unless `clear_only`, keys under a previous KEK. Idempotent,
/// and safe while servers serve: each record is replaced by compare-and-set, so a
/// concurrent rotation's retirement is never lost, and a replica keeps the keys it has
/// opened already (`KeyRing::reload`).
pub async fn rewrap(
    store: &dyn Store,
    kek: &KeyEncryption,
    clear_only: bool,
) -> Result<RewrapReport, StartupError> {
    let kek_id = kek
        .current_id()
        .ok_or(crate::config::ConfigError::Invalid {
            name: "TOLLGATE_KEY_ENCRYPTION_KEY",
            detail: "re-encrypting the signing keys needs a key-encryption key \
                     (or TOLLGATE_KEY_ENCRYPTION_KEY_FILE)"
                .into(),
        })?
        .to_string();
    let mut report = RewrapReport {
        kek_id,
        ..Default::default()
    };
    for k in store.list_keys().await? {
        let replaced = update_key(store, &k.kid, |cur| {
            if sealed_under_current(cur, kek) || (clear_only && cur.private_pem.is_empty()) {
                return Ok::<_, StartupError>(None);
            }
            Ok(Some(seal(cur, kek)?))
        })
        .await?;
        match replaced {
            Some(old) if old.sealed_private_key.is_none() => report.migrated += 1,
            Some(_) => report.rewrapped += 1,
            None => report.unchanged += 1,
        }
    }
    Ok(report)
}

/// Rotate: add a new key active from `now + delay` and schedule the retirement of every
/// current key at that moment. Returns the new key.
pub async fn rotate(
    store: &dyn Store,
    alg: SigningAlg,
    delay: u64,
    kek: &KeyEncryption,
) -> Result<StoredKey, StartupError> {
    let now = now_secs();
    let active_from = now + delay;
    let new = new_sealed_key(alg, now, active_from, kek)?;
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
    for k in store.list_keys().await? {
        if k.kid == new.kid {
            continue;
        }
        // Compare-and-set: a concurrent `keys rewrap` of this record is not undone.
        update_key(store, &k.kid, |cur| {
            Ok::<_, StartupError>(
                (cur.active_from < new.active_from
                    && cur.retire_at.is_none_or(|r| r > new.active_from))
                .then(|| StoredKey {
                    retire_at: Some(new.active_from),
                    ..cur.clone()
                }),
            )
        })
        .await?;
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
        let k = rotate(
            state.store.as_ref(),
            alg,
            state.cfg.key_activation_delay,
            &state.cfg.key_encryption,
        )
        .await?;
        tracing::info!(kid = %k.kid, active_from = k.active_from, "rotated the signing key");
        state.reload_keys().await?;
    }
    Ok(())
}

/// Describe the stored keys.
pub async fn list(store: &dyn Store, max_token_ttl: u64) -> Result<Vec<KeyView>, StartupError> {
    let now = now_secs();
    let stored = store.list_keys().await?;
    let active = active_kid(&stored, now);
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
                kek_id: k.sealed_private_key.map(|s| s.kek_id),
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
    use crate::keys::{new_stored_key, KeyRing};
    use crate::store::memory::MemoryStore;

    fn kek(b: u8, previous: &[u8]) -> KeyEncryption {
        let prev: Vec<_> = previous
            .iter()
            .map(|p| zeroize::Zeroizing::new([*p; 32]))
            .collect();
        KeyEncryption::new(&[b; 32], &prev).unwrap()
    }

    #[tokio::test]
    async fn rewrap_is_idempotent_and_moves_every_key_to_the_current_kek() {
        let store = MemoryStore::default();
        let old = kek(1, &[]);
        let a = new_sealed_key(SigningAlg::ES256, 0, 0, &old).unwrap();
        let b = new_sealed_key(SigningAlg::EdDSA, 0, 10, &old).unwrap();
        store.put_key(&a).await.unwrap();
        store.put_key(&b).await.unwrap();
        let new = kek(2, &[1]);
        let r = rewrap(&store, &new, false).await.unwrap();
        assert_eq!((r.migrated, r.rewrapped, r.unchanged), (0, 2, 0));
        assert_eq!(r.kek_id, new.current_id().unwrap());
        let after = store.list_keys().await.unwrap();
        assert!(after.iter().all(|k| sealed_under_current(k, &new)));
        // The schedule is untouched, and the keys open with the new KEK alone.
        let (ring, errors) = KeyRing::load(&after, &kek(2, &[]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(active_kid(&after, 20), Some(b.kid.clone()));
        // Again: nothing to do, nothing written.
        let r = rewrap(&store, &new, false).await.unwrap();
        assert_eq!((r.migrated, r.rewrapped, r.unchanged), (0, 0, 2));
        assert_eq!(store.list_keys().await.unwrap(), after);
        // Without the KEK that sealed them: a clear error, nothing changed.
        let e = rewrap(&store, &kek(3, &[]), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(new.current_id().unwrap()), "{e}");
        assert_eq!(store.list_keys().await.unwrap(), after);
    }

    #[tokio::test]
    async fn clear_text_key_records_are_migrated() {
        let store = MemoryStore::default();
        let clear = new_stored_key(SigningAlg::ES256, 0, 0).unwrap();
        let pem = clear.private_pem.clone();
        store.put_key(&clear).await.unwrap();
        let k = kek(1, &[]);
        let r = rewrap(&store, &k, true).await.unwrap();
        assert_eq!((r.migrated, r.rewrapped, r.unchanged), (1, 0, 0));
        let after = store.list_keys().await.unwrap();
        assert!(after[0].private_pem.is_empty() && sealed_under_current(&after[0], &k));
        assert!(!serde_json::to_string(&after).unwrap().contains(pem.trim()));
        let (ring, errors) = KeyRing::load(&after, &k);
        assert!(errors.is_empty());
        assert_eq!(ring.keys()[0].stored.kid, clear.kid);
        // `clear_only` (every start) leaves keys under a previous KEK to `keys rewrap`.
        let r = rewrap(&store, &kek(2, &[1]), true).await.unwrap();
        assert_eq!((r.migrated, r.rewrapped, r.unchanged), (0, 0, 1));
        // Without a KEK there is nothing to seal with.
        let e = rewrap(&store, &KeyEncryption::none(), false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_KEY_ENCRYPTION_KEY"), "{e}");
    }

    /// A rotation's retirement and a re-encryption of the same record, interleaved: neither
    /// write is lost (compare-and-set), so the old key still retires and ends up sealed
    /// under the new KEK.
    #[tokio::test]
    async fn rewrap_and_retirement_do_not_lose_each_others_write() {
        let store = MemoryStore::default();
        let old = kek(1, &[]);
        let k1 = new_sealed_key(SigningAlg::ES256, 0, 0, &old).unwrap();
        store.put_key(&k1).await.unwrap();
        let new = kek(2, &[1]);
        // The rewrap read k1, then a rotation retired it before the rewrap wrote.
        let rewrapped = seal(&k1, &new).unwrap();
        let k2 = new_sealed_key(SigningAlg::ES256, 5, 50, &new).unwrap();
        store.put_key(&k2).await.unwrap();
        retire_older(&store, &k2).await.unwrap();
        assert!(!store.replace_key(&k1, &rewrapped).await.unwrap(), "stale");
        // rewrap re-reads and tries again.
        rewrap(&store, &new, false).await.unwrap();
        let after = store.list_keys().await.unwrap();
        let got = after.iter().find(|k| k.kid == k1.kid).unwrap();
        assert_eq!(got.retire_at, Some(50));
        assert!(sealed_under_current(got, &new));
    }

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
        let (ring, _) = KeyRing::load(&store.list_keys().await.unwrap(), &KeyEncryption::none());
        assert_eq!(ring.active(t - 1).unwrap().stored.kid, k1.kid);
        let at_t = ring.active(t).expect("a key signs after the switch");
        assert!(at_t.stored.kid == k2.kid || at_t.stored.kid == k3.kid);
        assert!(ring.active(t + 10_000).is_some());

        // A later rotation retires both.
        let k4 = new_stored_key(SigningAlg::ES256, now, t + 100).unwrap();
        store.put_key(&k4).await.unwrap();
        retire_older(&store, &k4).await.unwrap();
        let (ring, _) = KeyRing::load(&store.list_keys().await.unwrap(), &KeyEncryption::none());
        assert_eq!(ring.active(t + 100).unwrap().stored.kid, k4.kid);
        assert_eq!(ring.active(t + 99).unwrap().stored.kid, at_t.stored.kid);
    }
}
