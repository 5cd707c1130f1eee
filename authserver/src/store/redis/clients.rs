//! Clients: one hash per client (`auth:client:<id>`). A write that changes or removes a
//! client publishes its id on [`CLIENT_CHANNEL`] in the same transaction, which evicts it
//! from the client cache of every process (`client_cache`).

use super::client_cache::CLIENT_CHANNEL;
use super::*;

/// Replace a client's hash and announce it (KEYS: the hash; ARGV: channel, id, then field
/// and value pairs). A script rather than a `MULTI` with `PUBLISH`: on Cluster the client
/// library routes a pipeline by every command's first argument, and a channel is no key.
const PUT_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// Delete a client's hash and announce it (KEYS: the hash; ARGV: channel, id).
const DELETE_LUA: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"#;

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
    let mut cmd = eval(PUT_LUA, &[&key]);
    cmd.arg(CLIENT_CHANNEL).arg(&client.client_id);
    for (f, v) in &fields {
        cmd.arg(*f).arg(v);
    }
    let written = db.write_one::<i64>(&cmd).await.map(drop);
    // This process's own cache at once (the message reaches it a moment later); after a
    // failed write too, which may have run.
    db.signal.clients.evict(&client.client_id);
    written
}

pub(super) async fn get_client(
    db: &RedisStore,
    client_id: &str,
) -> StoreResult<Option<ClientRecord>> {
    let key = k_client(client_id);
    let m = db.hgetall(&key).await?;
    let rec = client_from_fields(&key, m)?;
    db.signal.clients.saw(client_id, rec.as_ref());
    Ok(rec)
}

/// Through the client cache: a fresh record is served from it (`true`), anything else read
/// from Redis (and kept when the cache may be filled).
pub(super) async fn get_client_cached(
    db: &RedisStore,
    client_id: &str,
) -> StoreResult<(Option<ClientRecord>, bool)> {
    let cache = &db.signal.clients;
    if !cache.enabled() {
        return Ok((get_client(db, client_id).await?, false));
    }
    db.signal.start();
    let ticket = match cache.lookup(client_id) {
        Ok(rec) => return Ok((Some(rec), true)),
        Err(ticket) => ticket,
    };
    let rec = get_client(db, client_id).await?;
    if let (Some(t), Some(r)) = (ticket, &rec) {
        // A hash under another id's key is not what the caller asked for.
        if r.client_id == client_id {
            cache.fill(t, r);
        }
    }
    Ok((rec, false))
}

pub(super) async fn delete_client(db: &RedisStore, client_id: &str) -> StoreResult<bool> {
    let mut cmd = eval(DELETE_LUA, &[&k_client(client_id)]);
    cmd.arg(CLIENT_CHANNEL).arg(client_id);
    let deleted = db.write_one::<i64>(&cmd).await;
    db.signal.clients.evict(client_id);
    Ok(deleted? > 0)
}

pub(super) async fn list_client_ids(db: &RedisStore) -> StoreResult<Vec<String>> {
    db.ids_under("auth:client:").await
}
