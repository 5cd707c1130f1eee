//! Revocations: the blacklist and the revocation feed the edge filter follows.

use super::*;

pub(super) async fn revoke_access_token(
    db: &MemoryStore,
    jti: &str,
    exp: u64,
) -> StoreResult<bool> {
    if !revocation_alive(exp) {
        return Ok(false);
    }
    let mut g = db.lock()?;
    if g.blacklist.get(jti).is_some_and(|e| revocation_alive(*e)) {
        return Ok(false);
    }
    g.blacklist.insert(jti.to_string(), exp);
    g.revoked_index.insert(jti.to_string(), exp);
    g.feed_seq += 1;
    let seq = g.feed_seq;
    g.feed.insert(
        seq,
        RevokedEntry {
            jti: jti.to_string(),
            exp,
        },
    );
    while g.feed.len() > db.feed_max {
        if let Some((s, _)) = g.feed.pop_first() {
            g.feed_floor = g.feed_floor.max(s);
        }
    }
    *g.stats.entry("tokens_revoked".into()).or_insert(0) += 1;
    drop(g);
    db.feed_signal.send_replace(seq);
    Ok(true)
}

pub(super) async fn is_revoked(db: &MemoryStore, jti: &str) -> StoreResult<bool> {
    Ok(db
        .lock()?
        .blacklist
        .get(jti)
        .is_some_and(|exp| revocation_alive(*exp)))
}

pub(super) async fn revocation_feed(
    db: &MemoryStore,
    since: Option<u64>,
    limit: usize,
) -> StoreResult<FeedPage> {
    let g = db.lock()?;
    let full = |g: &Inner| {
        let mut entries: Vec<RevokedEntry> = g
            .revoked_index
            .iter()
            .filter(|(_, exp)| revocation_alive(**exp))
            .map(|(jti, exp)| RevokedEntry {
                jti: jti.clone(),
                exp: *exp,
            })
            .collect();
        entries.sort_by(|a, b| (a.exp, &a.jti).cmp(&(b.exp, &b.jti)));
        entries
    };
    match since {
        Some(s) if s >= g.feed_floor && s <= g.feed_seq => {
            let mut entries = Vec::new();
            let mut cursor = s;
            for (seq, e) in g.feed.range(s + 1..).take(limit.max(1)) {
                cursor = *seq;
                if revocation_alive(e.exp) {
                    entries.push(e.clone());
                }
            }
            if entries.is_empty() && cursor == s {
                cursor = g.feed_seq.max(s);
            }
            Ok(FeedPage {
                cursor,
                resync: false,
                entries,
            })
        }
        Some(_) => Ok(FeedPage {
            cursor: g.feed_seq,
            resync: true,
            entries: full(&g),
        }),
        None => Ok(FeedPage {
            cursor: g.feed_seq,
            resync: true,
            entries: full(&g),
        }),
    }
}
