//! Token families: every token minted from one authorization code (the access and refresh
//! tokens of the code exchange and of every refresh after it) belongs to the grant's
//! family (`auth:family:{grant_id}:*`). A replayed code or a reused (rotated) refresh token
//! revokes the whole family: the access tokens go to the blacklist and the edge revocation
//! feed, the refresh tokens are deleted, and the family refuses new members.

use serde_json::{json, Value};

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::state::AppState;
use crate::store::{client_owner, now_secs, user_owner, ClientRecord, Owned, RefreshTokenRecord};
use crate::tokens::{self, TokenRequest};

use super::client_has_grant;

/// Prefix of refresh tokens (opaque, 256 bits after the prefix).
pub const REFRESH_PREFIX: &str = "tg_rt_";

/// How long a family's revocation mark must outlive: any refresh token or access token of
/// the family that could still be presented.
fn family_horizon(state: &AppState) -> u64 {
    now_secs() + state.cfg.refresh_token_ttl.max(state.max_token_ttl())
}

/// Revoke a family. Returns the number of access tokens newly revoked.
pub async fn revoke(state: &AppState, grant_id: &str, why: &str) -> OAuthResult<usize> {
    let members = state
        .store
        .revoke_family(grant_id, family_horizon(state))
        .await?;
    let mut n = 0;
    for (jti, exp) in &members.access {
        if state.store.revoke_access_token(jti, *exp).await? {
            n += 1;
        }
    }
    state.store.delete_refresh_tokens(&members.refresh).await?;
    state.stat("families_revoked");
    metrics::counter!("tollgate_families_revoked_total").increment(1);
    tracing::warn!(
        reason = why,
        access_tokens = members.access.len(),
        refresh_tokens = members.refresh.len(),
        "token family revoked"
    );
    Ok(n)
}

/// Whether `issue` failed without handing anything out because the store or the server
/// failed (not because the grant was revoked): the consumed code or refresh token may then
/// be given back.
pub fn issued_nothing(e: &OAuthError) -> bool {
    matches!(
        e,
        OAuthError::TemporarilyUnavailable(_) | OAuthError::ServerError(_)
    )
}

/// What a user grant issues.
pub struct Grant<'a> {
    pub client: &'a ClientRecord,
    pub sub: &'a str,
    /// The user's [`crate::store::UserRecord::id`].
    pub user_id: &'a str,
    pub scope: &'a str,
    pub aud: &'a str,
    pub grant_id: &'a str,
    /// The DPoP key the access token is bound to (RFC 9449), if any.
    pub jkt: Option<&'a str>,
    /// The DPoP key the refresh token is bound to (a public client's, RFC 9449 §5).
    pub refresh_jkt: Option<&'a str>,
    /// The client certificate the access token is bound to (RFC 8705 §3), if any.
    pub x5t: Option<&'a str>,
}

/// Mint an access token (and a refresh token when the client has the refresh_token grant)
/// in a family; refused with `invalid_grant` when the family was revoked meanwhile.
pub async fn issue(state: &AppState, g: Grant<'_>) -> OAuthResult<Value> {
    let ttl = g
        .client
        .metadata
        .access_token_ttl
        .unwrap_or(state.cfg.access_token_ttl);
    let issued = tokens::issue(
        state,
        TokenRequest {
            client_id: &g.client.client_id,
            sub: g.sub,
            scope: g.scope,
            aud: g.aud,
            ttl,
            opaque: g.client.metadata.access_token_format == "opaque",
            extra: Default::default(),
            user_id: Some(g.user_id),
            jkt: g.jkt,
            x5t: g.x5t,
        },
    )
    .await?;
    let now = now_secs();
    let refresh = client_has_grant(g.client, "refresh_token").then(|| {
        let token = format!("{REFRESH_PREFIX}{}", crypto::random_b64(32));
        let rec = RefreshTokenRecord {
            client_id: g.client.client_id.clone(),
            sub: g.sub.to_string(),
            user_id: g.user_id.to_string(),
            scope: g.scope.to_string(),
            aud: g.aud.to_string(),
            grant_id: g.grant_id.to_string(),
            iat: now,
            exp: now + state.cfg.refresh_token_ttl,
            jkt: g.refresh_jkt.map(str::to_string),
        };
        (crypto::token_hash(&token), token, rec)
    });
    let family_exp = issued
        .record
        .exp
        .max(refresh.as_ref().map(|r| r.2.exp).unwrap_or(0));
    let hashes: Vec<String> = refresh.iter().map(|r| r.0.clone()).collect();
    // The family ends with its user or its client (a deleted user or client revokes it).
    state
        .store
        .index_owned(
            &[user_owner(g.user_id), client_owner(&g.client.client_id)],
            Owned::Grants,
            g.grant_id,
            family_exp,
        )
        .await?;
    let joined = state
        .store
        .family_add(
            g.grant_id,
            &[(issued.record.jti.clone(), issued.record.exp)],
            &hashes,
            family_exp,
        )
        .await?;
    if !joined {
        // The family was revoked between the check of the code / refresh token and now.
        state
            .store
            .revoke_access_token(&issued.record.jti, issued.record.exp)
            .await?;
        return Err(OAuthError::InvalidGrant(
            "the grant has been revoked".into(),
        ));
    }
    let mut body = json!({
        "access_token": issued.token,
        "token_type": tokens::token_type(g.jkt),
        "expires_in": ttl,
    });
    if !g.scope.is_empty() {
        body["scope"] = json!(g.scope);
    }
    if let Some((hash, token, rec)) = refresh {
        state.store.save_refresh_token(&hash, &rec).await?;
        body["refresh_token"] = json!(token);
    }
    Ok(body)
}
