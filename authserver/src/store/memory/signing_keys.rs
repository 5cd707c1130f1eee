//! Signing keys, with compare-and-set for rotation.

use super::*;

pub(super) async fn list_keys(db: &MemoryStore) -> StoreResult<Vec<StoredKey>> {
    Ok(db.lock()?.keys.values().cloned().collect())
}

pub(super) async fn put_key(db: &MemoryStore, key: &StoredKey) -> StoreResult<()> {
    db.lock()?.keys.insert(key.kid.clone(), key.clone());
    Ok(())
}

pub(super) async fn replace_key(
    db: &MemoryStore,
    expected: &StoredKey,
    new: &StoredKey,
) -> StoreResult<bool> {
    let mut g = db.lock()?;
    match g.keys.get_mut(&expected.kid) {
        Some(cur) if cur == new => Ok(true),
        Some(cur) if cur == expected && new.kid == expected.kid => {
            *cur = new.clone();
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) async fn delete_key(db: &MemoryStore, kid: &str) -> StoreResult<()> {
    db.lock()?.keys.remove(kid);
    Ok(())
}
