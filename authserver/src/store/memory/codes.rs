//! Single-use records: authorization codes and refresh tokens (a used one is kept,
//! marked, until it expires so that a replay is recognised).

use super::*;

pub(super) async fn save_auth_code(
    db: &MemoryStore,
    code_hash: &str,
    rec: &AuthCodeRecord,
) -> StoreResult<()> {
    db.lock()?
        .codes
        .insert(code_hash.to_string(), (rec.clone(), 0));
    Ok(())
}

pub(super) async fn consume_auth_code(
    db: &MemoryStore,
    code_hash: &str,
    client_id: &str,
) -> StoreResult<Consumed<AuthCodeRecord>> {
    let mut g = db.lock()?;
    Ok(consume(
        &mut g.codes,
        code_hash,
        |r| r.client_id.as_str(),
        |r| r.exp,
        client_id,
    ))
}

pub(super) async fn save_refresh_token(
    db: &MemoryStore,
    hash: &str,
    rec: &RefreshTokenRecord,
) -> StoreResult<()> {
    db.lock()?
        .refresh
        .insert(hash.to_string(), (rec.clone(), 0));
    Ok(())
}

pub(super) async fn consume_refresh_token(
    db: &MemoryStore,
    hash: &str,
    client_id: &str,
) -> StoreResult<Consumed<RefreshTokenRecord>> {
    let mut g = db.lock()?;
    Ok(consume(
        &mut g.refresh,
        hash,
        |r| r.client_id.as_str(),
        |r| r.exp,
        client_id,
    ))
}

pub(super) async fn release_refresh_token(db: &MemoryStore, hash: &str) -> StoreResult<()> {
    release(&mut db.lock()?.refresh, hash);
    Ok(())
}

pub(super) async fn release_auth_code(db: &MemoryStore, code_hash: &str) -> StoreResult<()> {
    release(&mut db.lock()?.codes, code_hash);
    Ok(())
}

pub(super) async fn get_refresh_token(
    db: &MemoryStore,
    hash: &str,
) -> StoreResult<Option<(RefreshTokenRecord, bool)>> {
    Ok(db
        .lock()?
        .refresh
        .get(hash)
        .filter(|(r, _)| alive(r.exp))
        .map(|(r, used)| (r.clone(), *used > 0)))
}

pub(super) async fn delete_refresh_tokens(db: &MemoryStore, hashes: &[String]) -> StoreResult<()> {
    let mut g = db.lock()?;
    for h in hashes {
        g.refresh.remove(h);
    }
    Ok(())
}
