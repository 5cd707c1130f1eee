//! One handler per grant type (the fosite model). The token endpoint authenticates the
//! client and dispatches here.

pub mod authorization_code;
pub mod client_credentials;
pub mod family;
pub mod owner;
pub mod pkce;
pub mod refresh_token;
pub mod token_exchange;

use crate::error::{OAuthError, OAuthResult};
use crate::form::{parse_scope, Params};
use crate::state::AppState;
use crate::store::ClientRecord;

/// The scope to grant: the requested scope if every token is registered for the client,
/// else `invalid_scope`; the registered scope when none is requested (RFC 6749 §3.3).
pub fn granted_scope(client: &ClientRecord, requested: Option<&str>) -> OAuthResult<String> {
    let allowed: Vec<&str> = client
        .metadata
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    match requested {
        None => Ok(allowed.join(" ")),
        Some(req) => {
            let want = parse_scope(req)?;
            if let Some(bad) = want.iter().find(|s| !allowed.contains(s)) {
                return Err(OAuthError::InvalidScope(format!(
                    "scope '{bad}' is not allowed for this client"
                )));
            }
            let mut out: Vec<&str> = Vec::new();
            for s in want {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Ok(out.join(" "))
        }
    }
}

/// The audience of the token: `resource` (RFC 8707) or `audience`, which must be one the
/// client is registered for; else the client's first audience or the server default.
pub fn granted_audience(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
) -> OAuthResult<String> {
    let mut asked: Vec<&String> = params.all("resource").iter().collect();
    asked.extend(params.all("audience").iter());
    let allowed: Vec<String> = if client.metadata.audience.is_empty() {
        vec![state.cfg.default_audience.clone()]
    } else {
        client.metadata.audience.clone()
    };
    match asked.as_slice() {
        [] => Ok(allowed[0].clone()),
        [one] => {
            if allowed.iter().any(|a| a == *one) {
                Ok((*one).clone())
            } else {
                Err(OAuthError::InvalidTarget(
                    "the requested audience is not allowed for this client".into(),
                ))
            }
        }
        _ => Err(OAuthError::InvalidTarget(
            "request one audience per token".into(),
        )),
    }
}

/// Whether the user a grant speaks for still exists and is that very user (not another one
/// created under the same name since): `user_id` is the [`crate::store::UserRecord::id`]
/// recorded with the grant.
pub async fn user_is_current(state: &AppState, username: &str, user_id: &str) -> OAuthResult<bool> {
    if user_id.is_empty() {
        return Ok(false);
    }
    Ok(state
        .store
        .get_user(username)
        .await?
        .is_some_and(|u| u.id() == user_id))
}

/// A public client (no client authentication): its refresh tokens are bound to its DPoP
/// key (RFC 9449 §5).
pub fn is_public(client: &ClientRecord) -> bool {
    client.metadata.token_endpoint_auth_method == "none"
}

pub fn client_has_grant(client: &ClientRecord, grant: &str) -> bool {
    client.metadata.grant_types.iter().any(|g| g == grant)
}
