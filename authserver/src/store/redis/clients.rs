//! Clients: one hash per client (`auth:client:<id>`).

use super::*;

pub(super) fn client_to_fields(c: &ClientRecord) -> StoreResult<Vec<(&'static str, String)>> {
    let md = serde_json::to_string(&c.metadata).map_err(|e| corrupt(&c.client_id, e))?;
    let mut f = vec![
        ("client_id", c.client_id.clone()),
        ("metadata", md),
        ("created_at", c.created_at.to_string()),
        ("updated_at", c.updated_at.to_string()),
    ];
    if let Some(h) = &c.secret_hash {
        f.push(("secret_hash", h.clone()));
    }
    if let Some(h) = &c.registration_token_hash {
        f.push(("registration_token_hash", h.clone()));
    }
    Ok(f)
}

pub(super) fn client_from_fields(
    key: &str,
    m: HashMap<String, String>,
) -> StoreResult<Option<ClientRecord>> {
    if m.is_empty() {
        return Ok(None);
    }
    let get = |f: &str| m.get(f).cloned();
    let metadata: ClientMetadata = serde_json::from_str(
        m.get("metadata")
            .ok_or_else(|| corrupt(key, "no metadata"))?,
    )
    .map_err(|e| corrupt(key, e))?;
    Ok(Some(ClientRecord {
        client_id: get("client_id").ok_or_else(|| corrupt(key, "no client_id"))?,
        secret_hash: get("secret_hash"),
        registration_token_hash: get("registration_token_hash"),
        metadata,
        created_at: get("created_at").and_then(|v| v.parse().ok()).unwrap_or(0),
        updated_at: get("updated_at").and_then(|v| v.parse().ok()).unwrap_or(0),
    }))
}

pub(super) async fn create_client(db: &RedisStore, client: &ClientRecord) -> StoreResult<()> {
    let key = k_client(&client.client_id);
    let fields = client_to_fields(client)?;
    // The script claims the id and writes the record only when it is free (one key, one
    // slot); a retry of this call recognises its own record (CREATE_LUA).
    let mut cmd = eval(CREATE_LUA, &[&key]);
    cmd.arg(crate::crypto::random_b64(16));
    for (f, v) in &fields {
        cmd.arg(*f).arg(v);
    }
    let created: i64 = db.write_one(&cmd).await?;
    if created == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(client.client_id.clone()))
    }
}

pub(super) async fn put_client(db: &RedisStore, client: &ClientRecord) -> StoreResult<()> {
    let key = k_client(&client.client_id);
    let fields = client_to_fields(client)?;
    let mut del = ::redis::cmd("DEL");
    del.arg(&key);
    let mut hset = ::redis::cmd("HSET");
    hset.arg(&key);
    for (f, v) in &fields {
        hset.arg(*f).arg(v);
    }
    let cmds = [del, hset];
    let cmds = &cmds;
    db.idem(|c| async move { db.write(c, cmds, true, true).await.map(drop) })
        .await
}

pub(super) async fn get_client(
    db: &RedisStore,
    client_id: &str,
) -> StoreResult<Option<ClientRecord>> {
    let key = k_client(client_id);
    let m = db.hgetall(&key).await?;
    client_from_fields(&key, m)
}

pub(super) async fn delete_client(db: &RedisStore, client_id: &str) -> StoreResult<bool> {
    db.del(&k_client(client_id)).await
}

pub(super) async fn list_client_ids(db: &RedisStore) -> StoreResult<Vec<String>> {
    db.ids_under("auth:client:").await
}
