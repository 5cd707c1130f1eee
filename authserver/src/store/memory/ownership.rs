//! Ownership indexes: what a deleted user or client ends (see [`Owned`]).

use super::*;

pub(super) async fn index_owned(
    db: &MemoryStore,
    owners: &[String],
    kind: Owned,
    member: &str,
    exp: u64,
) -> StoreResult<()> {
    let mut g = db.lock()?;
    add_owned(&mut g, owners, kind, member, exp);
    Ok(())
}

pub(super) async fn list_owned(
    db: &MemoryStore,
    owner: &str,
    kind: Owned,
    now: u64,
) -> StoreResult<Vec<(String, u64)>> {
    Ok(db
        .lock()?
        .owned
        .get(&(kind, owner.to_string()))
        .map(|set| {
            set.iter()
                .filter(|(_, e)| **e > now)
                .map(|(m, e)| (m.clone(), *e))
                .collect()
        })
        .unwrap_or_default())
}

pub(super) async fn clear_owned(db: &MemoryStore, owner: &str, kind: Owned) -> StoreResult<()> {
    db.lock()?.owned.remove(&(kind, owner.to_string()));
    Ok(())
}
