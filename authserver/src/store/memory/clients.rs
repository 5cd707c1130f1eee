//! Clients.

use super::*;

pub(super) async fn create_client(db: &MemoryStore, client: &ClientRecord) -> StoreResult<()> {
    let mut g = db.lock()?;
    if g.clients.contains_key(&client.client_id) {
        return Err(StoreError::Conflict(client.client_id.clone()));
    }
    g.clients.insert(client.client_id.clone(), client.clone());
    Ok(())
}

pub(super) async fn put_client(db: &MemoryStore, client: &ClientRecord) -> StoreResult<()> {
    db.lock()?
        .clients
        .insert(client.client_id.clone(), client.clone());
    Ok(())
}

pub(super) async fn get_client(
    db: &MemoryStore,
    client_id: &str,
) -> StoreResult<Option<ClientRecord>> {
    Ok(db.lock()?.clients.get(client_id).cloned())
}

pub(super) async fn delete_client(db: &MemoryStore, client_id: &str) -> StoreResult<bool> {
    Ok(db.lock()?.clients.remove(client_id).is_some())
}

pub(super) async fn list_client_ids(db: &MemoryStore) -> StoreResult<Vec<String>> {
    Ok(db.lock()?.clients.keys().cloned().collect())
}
