//! `authorization_code` (RFC 6749 §4.1.3) with PKCE (RFC 7636). The code is consumed
//! atomically; a replay fails with `invalid_grant` and revokes every token the code issued.

use sha2::{Digest, Sha256};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::form::Params;
use crate::state::AppState;
use crate::store::{now_secs, ClientRecord, Consumed};

use super::pkce::valid_pkce_string;
use super::{client_has_grant, family};

fn bad(msg: &str) -> OAuthError {
    OAuthError::InvalidGrant(msg.into())
}

pub async fn handle(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
    dpop: Option<&str>,
    x5t: Option<&str>,
) -> OAuthResult<Value> {
    if !client_has_grant(client, "authorization_code") {
        return Err(OAuthError::UnauthorizedClient(
            "client is not registered for authorization_code".into(),
        ));
    }
    let code = params.require("code")?;
    if code.len() > 512 {
        return Err(bad("invalid authorization code"));
    }
    let code_hash = crypto::token_hash(code);
    let rec = match state
        .store
        .consume_auth_code(&code_hash, &client.client_id)
        .await?
    {
        Consumed::Missing | Consumed::WrongClient => {
            return Err(bad("invalid or expired authorization code"))
        }
        Consumed::Replayed(rec) => {
            state.stat("code_replays");
            family::revoke(state, &rec.grant_id, "authorization code replayed").await?;
            return Err(bad(
                "the authorization code was already used; tokens issued with it are revoked",
            ));
        }
        Consumed::Fresh(rec) => rec,
    };
    if rec.exp <= now_secs() {
        return Err(bad("the authorization code has expired"));
    }
    match (params.get("redirect_uri"), rec.redirect_uri_given) {
        (Some(r), _) if r == rec.redirect_uri => {}
        (None, false) => {}
        (None, true) => return Err(OAuthError::InvalidGrant("redirect_uri is required".into())),
        (Some(_), _) => return Err(bad("redirect_uri does not match the authorization request")),
    }
    let verifier = params.get("code_verifier");
    match (&rec.code_challenge, verifier) {
        (None, None) => {}
        (None, Some(_)) => {
            // RFC 9700 §2.1.1: a verifier without a challenge is a PKCE downgrade attempt.
            return Err(bad(
                "code_verifier sent but the authorization request had no code_challenge",
            ));
        }
        (Some(_), None) => return Err(bad("code_verifier is required")),
        (Some(challenge), Some(v)) => {
            if !valid_pkce_string(v) {
                return Err(bad("malformed code_verifier"));
            }
            let computed = match rec.code_challenge_method.as_deref() {
                Some("S256") => URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())),
                Some("plain") => v.to_string(),
                _ => return Err(bad("unsupported code_challenge_method")),
            };
            if !crypto::ct_eq(computed.as_bytes(), challenge.as_bytes()) {
                return Err(bad("code_verifier does not match the code_challenge"));
            }
        }
    }
    if !super::user_is_current(state, &rec.sub, &rec.user_id).await? {
        return Err(bad("the user of this authorization code no longer exists"));
    }
    // RFC 9449 §10: a code requested with dpop_jkt is redeemed only by that key.
    if let Some(want) = rec.dpop_jkt.as_deref() {
        if !dpop.is_some_and(|have| crypto::ct_eq(have.as_bytes(), want.as_bytes())) {
            return Err(bad(
                "the authorization request bound this code to another DPoP key (dpop_jkt)",
            ));
        }
    }
    let issued = family::issue(
        state,
        family::Grant {
            client,
            sub: &rec.sub,
            user_id: &rec.user_id,
            scope: &rec.scope,
            aud: &rec.aud,
            grant_id: &rec.grant_id,
            jkt: dpop,
            x5t,
            refresh_jkt: dpop.filter(|_| super::is_public(client)),
        },
    )
    .await;
    if issued.as_ref().is_err_and(family::issued_nothing) {
        // Nothing reached the client: the code may be exchanged again (docs/reliability.md).
        if let Err(e) = state.store.release_auth_code(&code_hash).await {
            tracing::warn!(error = %e, "could not release an authorization code");
        }
    }
    issued
}
