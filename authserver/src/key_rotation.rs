//! The signing-key lifecycle in the store: when a rotation is due, the rotation itself (a new
//! key published before it signs, the previous keys retired when it activates), and the
//! re-encryption of the stored private keys under the current key-encryption key. Used by
//! the serving replicas ([`crate::state::AppState`]: automatic rotation, sealing keys
//! stored in clear at start) and by the `authserver keys` jobs ([`crate::jobs::keys`]).

use serde::Serialize;

use crate::crypto::KeyEncryption;
use crate::error::StartupError;
use crate::keys::{new_sealed_key, seal, sealed_under_current, SigningAlg};
use crate::store::{now_secs, Store, StoreError, StoredKey};

/// Automatic rotation is due when the newest key is older than `interval` seconds (0: never).
pub fn rotation_due(stored: &[StoredKey], now: u64, interval: u64) -> bool {
    if interval == 0 {
        return false;
    }
    let newest = stored.iter().map(|k| k.created_at).max().unwrap_or(0);
    now >= newest + interval
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
pub(crate) async fn retire_older(store: &dyn Store, new: &StoredKey) -> Result<(), StartupError> {
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
