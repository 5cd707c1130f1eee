//! Signing-key rotation. A rotated key is published at once and signs after
//! `key_activation_delay`; the previous key stops signing then and stays in the JWKS until
//! every token it signed has expired, after which `cleanup` deletes it.
//!
//! `rewrap` re-encrypts every stored private key under the current key-encryption key
//! (KEK rotation; the first start with a KEK does it for keys still in clear).

use serde::Serialize;

use crate::keys::active_kid;
use crate::state::StartupError;
use crate::store::{now_secs, Store};

/// The rotation and re-encryption themselves live in [`crate::key_rotation`] (the serving
/// replicas rotate too); `authserver keys rotate|rewrap` call them from here.
pub use crate::key_rotation::{rewrap, rotate, RewrapReport};

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
    use crate::crypto::KeyEncryption;
    use crate::key_rotation::retire_older;
    use crate::keys::{new_sealed_key, seal, sealed_under_current, SigningAlg};
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
