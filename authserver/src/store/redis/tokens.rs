//! Access tokens: records, live-token counting.

use super::*;

pub(super) fn token_from_fields(
    jti: &str,
    m: HashMap<String, String>,
) -> StoreResult<Option<AccessTokenRecord>> {
    if m.is_empty() {
        return Ok(None);
    }
    let key = k_access(jti);
    let s = |f: &str| {
        m.get(f)
            .cloned()
            .ok_or_else(|| corrupt(&key, format!("no {f}")))
    };
    let n = |f: &str| -> StoreResult<u64> {
        s(f)?.parse().map_err(|_| corrupt(&key, format!("bad {f}")))
    };
    Ok(Some(AccessTokenRecord {
        jti: jti.to_string(),
        client_id: s("client_id")?,
        sub: s("sub")?,
        scope: s("scope")?,
        aud: s("aud")?,
        iat: n("iat")?,
        exp: n("exp")?,
        token_hash: s("token_hash")?,
        format: s("format")?,
        act: m.get("act").cloned(),
        user_id: m.get("user_id").cloned(),
        cnf_jkt: m.get("cnf_jkt").cloned(),
        cnf_x5t: m.get("cnf_x5t").cloned(),
    }))
}

pub(super) async fn save_access_token(db: &RedisStore, rec: &AccessTokenRecord) -> StoreResult<()> {
    let key = k_access(&rec.jti);
    let fields: Vec<(&str, String)> = vec![
        ("client_id", rec.client_id.clone()),
        ("sub", rec.sub.clone()),
        ("scope", rec.scope.clone()),
        ("aud", rec.aud.clone()),
        ("iat", rec.iat.to_string()),
        ("exp", rec.exp.to_string()),
        ("token_hash", rec.token_hash.clone()),
        ("format", rec.format.clone()),
    ];
    let mut fields = fields;
    if let Some(act) = &rec.act {
        fields.push(("act", act.clone()));
    }
    if let Some(uid) = &rec.user_id {
        fields.push(("user_id", uid.clone()));
    }
    if let Some(jkt) = &rec.cnf_jkt {
        fields.push(("cnf_jkt", jkt.clone()));
    }
    if let Some(x5t) = &rec.cnf_x5t {
        fields.push(("cnf_x5t", x5t.clone()));
    }
    // One MULTI; on Cluster one per slot: the record with its expiry, the cleanup index
    // and the counter each stay whole.
    let mut b = Batch::atomic();
    let mut hset = ::redis::cmd("HSET");
    hset.arg(&key).arg(&fields);
    let mut expire = ::redis::cmd("EXPIREAT");
    expire.arg(&key).arg(rec.exp);
    let mut zadd = ::redis::cmd("ZADD");
    zadd.arg(K_TOKEN_CLEANUP).arg(rec.exp).arg(&rec.jti);
    let mut hincr = ::redis::cmd("HINCRBY");
    hincr.arg(K_STATS).arg("tokens_issued").arg(1);
    b.add(&key, hset)
        .add(&key, expire)
        .add(K_TOKEN_CLEANUP, zadd)
        .add(K_STATS, hincr);
    let mut owners = vec![client_owner(&rec.client_id)];
    owners.extend(rec.user_id.as_deref().map(user_owner));
    for o in &owners {
        let (k, cmd) = owned_add(Owned::AccessTokens, o, &rec.jti, rec.exp);
        b.add(&k, cmd);
    }
    let cluster = db.cluster;
    // Not durable (docs/reliability.md): a lost access-token record makes an opaque token
    // inactive and a JWT unknown to introspection, never the reverse. Sent again only when
    // it certainly did not run (the counter would count twice).
    db.once(|c| {
        let b = b.clone();
        async move { b.run(cluster, c).await.map(|_| ()) }
    })
    .await
}

pub(super) async fn get_access_token(
    db: &RedisStore,
    jti: &str,
) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
    let (key, bl) = (k_access(jti), k_blacklist(jti));
    let mut b = Batch::default();
    b.add(&key, ::redis::cmd("HGETALL").arg(&key).clone())
        .add(&bl, ::redis::cmd("EXISTS").arg(&bl).clone());
    let cluster = db.cluster;
    let (m, revoked): (HashMap<String, String>, bool) = db
        .idem(|c| {
            let b = b.clone();
            async move {
                Ok(::redis::from_redis_value(Value::Array(
                    b.run(cluster, c).await?,
                ))?)
            }
        })
        .await?;
    Ok((token_from_fields(jti, m)?, revoked))
}

pub(super) async fn count_live_tokens(db: &RedisStore, now: u64) -> StoreResult<u64> {
    db.idem(|mut c| async move {
        ::redis::cmd("ZCOUNT")
            .arg(K_TOKEN_CLEANUP)
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut c)
            .await
    })
    .await
}
