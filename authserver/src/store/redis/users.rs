//! Users and login sessions.

use super::*;

pub(super) async fn create_user(db: &RedisStore, user: &UserRecord) -> StoreResult<()> {
    let key = k_user(&user.username);
    // A retry of this call recognises its own record (CREATE_LUA).
    let mut cmd = eval(CREATE_LUA, &[&key]);
    cmd.arg(crate::crypto::random_b64(16))
        .arg("username")
        .arg(&user.username)
        .arg("password_hash")
        .arg(&user.password_hash)
        .arg("created_at")
        .arg(user.created_at)
        .arg("user_id")
        .arg(&user.user_id);
    let created: i64 = db.write_one(&cmd).await?;
    if created == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(user.username.clone()))
    }
}

pub(super) async fn get_user(db: &RedisStore, username: &str) -> StoreResult<Option<UserRecord>> {
    let key = k_user(username);
    let m = db.hgetall(&key).await?;
    if m.is_empty() {
        return Ok(None);
    }
    Ok(Some(UserRecord {
        username: m
            .get("username")
            .cloned()
            .ok_or_else(|| corrupt(&key, "no username"))?,
        password_hash: m
            .get("password_hash")
            .cloned()
            .ok_or_else(|| corrupt(&key, "no password_hash"))?,
        created_at: m
            .get("created_at")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        user_id: m.get("user_id").cloned().unwrap_or_default(),
    }))
}

pub(super) async fn delete_user(db: &RedisStore, username: &str) -> StoreResult<bool> {
    db.del(&k_user(username)).await
}

pub(super) async fn list_users(db: &RedisStore) -> StoreResult<Vec<UserRecord>> {
    let names = db.ids_under("auth:user:").await?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(u) = db.get_user(&n).await? {
            out.push(u);
        }
    }
    Ok(out)
}

pub(super) async fn save_session(
    db: &RedisStore,
    id_hash: &str,
    rec: &SessionRecord,
) -> StoreResult<()> {
    let key = k_session(id_hash);
    let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
    let mut b = Batch::atomic();
    let mut set = ::redis::cmd("SET");
    set.arg(&key).arg(&json).arg("EXAT").arg(rec.exp);
    b.add(&key, set);
    if !rec.user_id.is_empty() {
        let (k, cmd) = owned_add(Owned::Sessions, &user_owner(&rec.user_id), id_hash, rec.exp);
        b.add(&k, cmd);
    }
    let cluster = db.cluster;
    db.idem(|c| {
        let b = b.clone();
        async move { b.run(cluster, c).await.map(drop) }
    })
    .await
}

pub(super) async fn get_session(
    db: &RedisStore,
    id_hash: &str,
) -> StoreResult<Option<SessionRecord>> {
    let key = k_session(id_hash);
    let v: Option<String> = db
        .idem(|mut c| {
            let key = key.clone();
            async move { ::redis::cmd("GET").arg(&key).query_async(&mut c).await }
        })
        .await?;
    v.map(|j| serde_json::from_str(&j).map_err(|e| corrupt(&key, e)))
        .transpose()
}

pub(super) async fn delete_session(db: &RedisStore, id_hash: &str) -> StoreResult<()> {
    let key = k_session(id_hash);
    db.idem(|mut c| {
        let key = key.clone();
        async move {
            ::redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut c)
                .await
        }
    })
    .await
}
