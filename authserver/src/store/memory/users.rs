//! Users and login sessions.

use super::*;

pub(super) async fn create_user(db: &MemoryStore, user: &UserRecord) -> StoreResult<()> {
    let mut g = db.lock()?;
    if g.users.contains_key(&user.username) {
        return Err(StoreError::Conflict(user.username.clone()));
    }
    g.users.insert(user.username.clone(), user.clone());
    Ok(())
}

pub(super) async fn get_user(db: &MemoryStore, username: &str) -> StoreResult<Option<UserRecord>> {
    Ok(db.lock()?.users.get(username).cloned())
}

pub(super) async fn delete_user(db: &MemoryStore, username: &str) -> StoreResult<bool> {
    Ok(db.lock()?.users.remove(username).is_some())
}

pub(super) async fn list_users(db: &MemoryStore) -> StoreResult<Vec<UserRecord>> {
    Ok(db.lock()?.users.values().cloned().collect())
}

pub(super) async fn save_session(
    db: &MemoryStore,
    id_hash: &str,
    rec: &SessionRecord,
) -> StoreResult<()> {
    let mut g = db.lock()?;
    g.sessions.insert(id_hash.to_string(), rec.clone());
    if !rec.user_id.is_empty() {
        let owners = [user_owner(&rec.user_id)];
        add_owned(&mut g, &owners, Owned::Sessions, id_hash, rec.exp);
    }
    Ok(())
}

pub(super) async fn get_session(
    db: &MemoryStore,
    id_hash: &str,
) -> StoreResult<Option<SessionRecord>> {
    Ok(db
        .lock()?
        .sessions
        .get(id_hash)
        .filter(|s| alive(s.exp))
        .cloned())
}

pub(super) async fn delete_session(db: &MemoryStore, id_hash: &str) -> StoreResult<()> {
    db.lock()?.sessions.remove(id_hash);
    Ok(())
}
