//! `refresh_token` (RFC 6749 §6) with rotation (RFC 9700 §4.14.2): every use consumes the
//! refresh token and issues a new one; presenting a rotated token again revokes the whole
//! family.

use serde_json::Value;

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::form::{parse_scope, Params};
use crate::state::AppState;
use crate::store::{now_secs, ClientRecord, Consumed, RefreshTokenRecord};

use super::{client_has_grant, family};

pub async fn handle(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
    dpop: Option<&str>,
    x5t: Option<&str>,
) -> OAuthResult<Value> {
    if !client_has_grant(client, "refresh_token") {
        return Err(OAuthError::UnauthorizedClient(
            "client is not registered for refresh_token".into(),
        ));
    }
    let token = params.require("refresh_token")?;
    if !token.starts_with(family::REFRESH_PREFIX) || token.len() > 256 {
        return Err(OAuthError::InvalidGrant("invalid refresh token".into()));
    }
    let hash = crypto::token_hash(token);
    // A request that is wrong in itself (a wider scope) must not spend the token: check it
    // against the record before consuming.
    // (Used, unknown or another client's tokens: consumption below decides and detects
    // reuse.)
    if let Some((rec, false)) = state.store.get_refresh_token(&hash).await? {
        if rec.client_id == client.client_id {
            narrowed_scope(&rec.scope, params.get("scope"))?;
            // Without the key a bound token stays unspent for its holder.
            bound_key_matches(&rec, dpop)?;
        }
    }
    let rec = match state
        .store
        .consume_refresh_token(&hash, &client.client_id)
        .await?
    {
        Consumed::Missing | Consumed::WrongClient => {
            return Err(OAuthError::InvalidGrant(
                "invalid or expired refresh token".into(),
            ))
        }
        Consumed::Replayed(rec) => {
            state.stat("refresh_token_reuse");
            family::revoke(state, &rec.grant_id, "rotated refresh token reused").await?;
            return Err(OAuthError::InvalidGrant(
                "the refresh token was already used; the grant is revoked".into(),
            ));
        }
        Consumed::Fresh(rec) => rec,
    };
    if let Err(e) = bound_key_matches(&rec, dpop) {
        // Checked above too; this covers a record that changed in between.
        if let Err(e) = state.store.release_refresh_token(&hash).await {
            tracing::warn!(error = %e, "could not release a refresh token");
        }
        return Err(e);
    }
    if rec.exp <= now_secs() {
        return Err(OAuthError::InvalidGrant(
            "the refresh token has expired".into(),
        ));
    }
    if !super::user_is_current(state, &rec.sub, &rec.user_id).await? {
        // The user was deleted (or deleted and re-created under the same name).
        family::revoke(state, &rec.grant_id, "the user no longer exists").await?;
        return Err(OAuthError::InvalidGrant(
            "the user of this grant no longer exists".into(),
        ));
    }
    let scope = narrowed_scope(&rec.scope, params.get("scope"))?;
    let issued = family::issue(
        state,
        family::Grant {
            client,
            sub: &rec.sub,
            user_id: &rec.user_id,
            scope: &scope,
            aud: &rec.aud,
            grant_id: &rec.grant_id,
            jkt: dpop,
            x5t,
            // A bound refresh token's successor is bound to the same key; a public client's
            // first proof binds a token issued without one (RFC 9449 §5).
            refresh_jkt: rec
                .jkt
                .as_deref()
                .or(dpop.filter(|_| super::is_public(client))),
        },
    )
    .await;
    if issued.as_ref().is_err_and(family::issued_nothing) {
        // The store failed after the rotation: the client got no new token, so its refresh
        // token stays usable; presenting it again is a retry, not a reuse that revokes the
        // grant (docs/reliability.md).
        if let Err(e) = state.store.release_refresh_token(&hash).await {
            tracing::warn!(error = %e, "could not release a refresh token");
        }
    }
    issued
}

/// RFC 9449 §5: a refresh token bound to a DPoP key is redeemed only with a proof by that
/// key.
fn bound_key_matches(rec: &RefreshTokenRecord, dpop: Option<&str>) -> OAuthResult<()> {
    match (rec.jkt.as_deref(), dpop) {
        (None, _) => Ok(()),
        (Some(want), Some(have)) if crypto::ct_eq(want.as_bytes(), have.as_bytes()) => Ok(()),
        (Some(_), None) => Err(OAuthError::InvalidGrant(
            "the refresh token is bound to a DPoP key: send a DPoP proof by that key".into(),
        )),
        (Some(_), Some(_)) => Err(OAuthError::InvalidGrant(
            "the refresh token is bound to another DPoP key".into(),
        )),
    }
}

/// RFC 6749 §6: a narrower scope may be asked for, never a wider one.
fn narrowed_scope(granted: &str, requested: Option<&str>) -> OAuthResult<String> {
    let Some(req) = requested else {
        return Ok(granted.to_string());
    };
    let have: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
    let mut out: Vec<&str> = Vec::new();
    for s in parse_scope(req)? {
        if !have.contains(&s) {
            return Err(OAuthError::InvalidScope(format!(
                "scope '{s}' was not granted"
            )));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out.join(" "))
}
