//! Token exchange (RFC 8693) for service-to-service delegation: a service presents the
//! caller's access token (`subject_token`) and gets a new token for a narrower audience and
//! scope, with itself recorded as the actor (`act`, nesting any earlier actor).
//!
//! Policy is per client, in its metadata:
//! `"token_exchange": {"audiences": [..], "scopes": [..], "subject_audiences": [..]}`.
//! Without it the client may not exchange. The audience must be in `audiences`; the scope
//! must be within the subject token's scope and within `scopes`; the subject token must
//! have been issued for one of `subject_audiences`, by default for the exchanging client
//! itself (one of its registered `audience` values, or its client id). The subject token's
//! client and user must still exist.

use serde_json::{json, Map, Value};

use crate::error::{OAuthError, OAuthResult};
use crate::form::{parse_scope, Params};
use crate::state::AppState;
use crate::store::{now_secs, ClientRecord};
use crate::tokens::{self, TokenRequest};

use super::client_has_grant;

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn list<'a>(policy: &'a Map<String, Value>, k: &str) -> Option<Vec<&'a str>> {
    policy
        .get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
}

pub async fn handle(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
    dpop: Option<&str>,
    x5t: Option<&str>,
) -> OAuthResult<Value> {
    let policy = match client.metadata.extra.get("token_exchange") {
        Some(Value::Object(p)) if client_has_grant(client, GRANT) => p,
        _ => {
            return Err(OAuthError::UnauthorizedClient(
                "client is not allowed to exchange tokens".into(),
            ))
        }
    };
    let subject = params.require("subject_token")?;
    match params.require("subject_token_type")? {
        ACCESS_TOKEN_TYPE => {}
        _ => {
            return Err(OAuthError::InvalidRequest(
                "subject_token_type must be urn:ietf:params:oauth:token-type:access_token".into(),
            ))
        }
    }
    if params.get("actor_token").is_some() || params.get("actor_token_type").is_some() {
        return Err(OAuthError::InvalidRequest(
            "actor_token is not supported: the authenticated client is the actor".into(),
        ));
    }
    match params.get("requested_token_type") {
        None | Some(ACCESS_TOKEN_TYPE) | Some(JWT_TOKEN_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "only access tokens can be requested".into(),
            ))
        }
    }
    let Some((rec, revoked)) = tokens::lookup(state, subject).await? else {
        return Err(OAuthError::InvalidGrant("invalid subject_token".into()));
    };
    let now = now_secs();
    if revoked || rec.exp <= now {
        return Err(OAuthError::InvalidGrant("invalid subject_token".into()));
    }
    // Without `subject_audiences`: only tokens sent to this client (its own audience).
    let own: Vec<&str> = client
        .metadata
        .audience
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(client.client_id.as_str()))
        .collect();
    let allowed = list(policy, "subject_audiences").unwrap_or(own);
    if !allowed.contains(&rec.aud.as_str()) {
        return Err(OAuthError::InvalidGrant(
            "the subject token was not issued for an audience this client may exchange".into(),
        ));
    }
    // A token of a deleted client, or of a deleted user, speaks for no one any more.
    if state.store.get_client(&rec.client_id).await?.is_none() {
        return Err(OAuthError::InvalidGrant("invalid subject_token".into()));
    }
    if let Some(uid) = rec.user_id.as_deref() {
        if !super::user_is_current(state, &rec.sub, uid).await? {
            return Err(OAuthError::InvalidGrant("invalid subject_token".into()));
        }
    }
    // Audience: exactly one, within the policy (the first when none is asked for).
    let audiences = list(policy, "audiences").unwrap_or_default();
    let mut asked: Vec<&String> = params.all("resource").iter().collect();
    asked.extend(params.all("audience").iter());
    let aud = match asked.as_slice() {
        [] => audiences
            .first()
            .map(|a| a.to_string())
            .ok_or_else(|| OAuthError::InvalidTarget("no audience allowed".into()))?,
        [one] if audiences.contains(&one.as_str()) => (*one).clone(),
        [_] => {
            return Err(OAuthError::InvalidTarget(
                "the requested audience is not allowed for token exchange by this client".into(),
            ))
        }
        _ => {
            return Err(OAuthError::InvalidTarget(
                "request one audience per token".into(),
            ))
        }
    };
    // Scope: within the subject's and within the policy's.
    let subject_scope: Vec<&str> = rec.scope.split(' ').filter(|s| !s.is_empty()).collect();
    let policy_scopes = list(policy, "scopes").unwrap_or_default();
    let scope: Vec<&str> = match params.get("scope") {
        Some(req) => {
            let mut out = Vec::new();
            for s in parse_scope(req)? {
                if !subject_scope.contains(&s) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope '{s}' is not in the subject token"
                    )));
                }
                if !policy_scopes.contains(&s) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope '{s}' may not be delegated by this client"
                    )));
                }
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            out
        }
        None => subject_scope
            .iter()
            .copied()
            .filter(|s| policy_scopes.contains(s))
            .collect(),
    };
    let scope = scope.join(" ");
    // The actor is the exchanging client, nesting the subject token's own actor.
    let mut act = json!({"sub": client.client_id});
    if let Some(prior) = rec.act.as_deref() {
        if let Ok(v) = serde_json::from_str::<Value>(prior) {
            act["act"] = v;
        }
    }
    let client_ttl = client
        .metadata
        .access_token_ttl
        .unwrap_or(state.cfg.access_token_ttl);
    // Never outlive the token it was derived from.
    let ttl = client_ttl.min(rec.exp.saturating_sub(now)).max(1);
    let mut extra = Map::new();
    extra.insert("act".into(), act);
    let issued = tokens::issue(
        state,
        TokenRequest {
            client_id: &client.client_id,
            sub: &rec.sub,
            scope: &scope,
            aud: &aud,
            ttl,
            opaque: client.metadata.access_token_format == "opaque",
            extra,
            // It speaks for the subject's user: it ends with that user.
            user_id: rec.user_id.as_deref(),
            jkt: dpop,
            x5t,
        },
    )
    .await?;
    state.stat("token_exchanges");
    let mut body = json!({
        "access_token": issued.token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": tokens::token_type(dpop),
        "expires_in": ttl,
    });
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    Ok(body)
}
