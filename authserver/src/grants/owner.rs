//! What ends with a deleted user or client: its token families (their refresh tokens are
//! deleted and their access tokens revoked), its other access tokens (revoked like an RFC
//! 7009 revocation: blacklisted and published on the edge revocation feed, so the gateways
//! refuse them before `exp`) and, for a user, its login sessions. The store indexes each of
//! them under the owner ([`crate::store::Owned`]).

use crate::error::OAuthResult;
use crate::state::AppState;
use crate::store::{now_secs, Owned};

use super::family;

/// What [`end_all`] ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub families: usize,
    pub access_tokens: usize,
    pub sessions: usize,
}

/// End everything `owner` ([`crate::store::user_owner`] or
/// [`crate::store::client_owner`]) holds. Idempotent: run it again after a failure.
pub async fn end_all(state: &AppState, owner: &str, why: &str) -> OAuthResult<Ended> {
    let now = now_secs();
    let mut ended = Ended::default();
    for (grant_id, _) in state.store.list_owned(owner, Owned::Grants, now).await? {
        ended.access_tokens += family::revoke(state, &grant_id, why).await?;
        ended.families += 1;
    }
    for (jti, exp) in state
        .store
        .list_owned(owner, Owned::AccessTokens, now)
        .await?
    {
        if state.store.revoke_access_token(&jti, exp).await? {
            metrics::counter!("tollgate_revocations_total").increment(1);
            ended.access_tokens += 1;
        }
    }
    for (session, _) in state.store.list_owned(owner, Owned::Sessions, now).await? {
        state.store.delete_session(&session).await?;
        ended.sessions += 1;
    }
    Ok(ended)
}

/// End everything `owner` holds around the deletion of its record (`delete`, which answers
/// whether the record existed): once before, so that a failure leaves the record in place
/// for a retry, and once after, for what was issued while it was being deleted. The indexes
/// are dropped at the end.
pub async fn end_with<F, Fut>(
    state: &AppState,
    owner: &str,
    why: &str,
    delete: F,
) -> OAuthResult<Option<Ended>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = OAuthResult<bool>>,
{
    let before = end_all(state, owner, why).await?;
    if !delete().await? {
        return Ok(None);
    }
    let after = end_all(state, owner, why).await?;
    for kind in [Owned::Grants, Owned::AccessTokens, Owned::Sessions] {
        state.store.clear_owned(owner, kind).await?;
    }
    Ok(Some(Ended {
        families: before.families + after.families,
        access_tokens: before.access_tokens + after.access_tokens,
        sessions: before.sessions + after.sessions,
    }))
}
