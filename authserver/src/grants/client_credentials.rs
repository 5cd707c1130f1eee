//! `client_credentials` (RFC 6749 §4.4): a confidential client gets an access token for
//! itself. No refresh token is issued (§4.4.3).

use serde_json::json;

use crate::error::{OAuthError, OAuthResult};
use crate::form::Params;
use crate::state::AppState;
use crate::store::ClientRecord;
use crate::tokens::{self, TokenRequest};

use super::{client_has_grant, granted_audience, granted_scope};

pub async fn handle(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
    dpop: Option<&str>,
    x5t: Option<&str>,
) -> OAuthResult<serde_json::Value> {
    if !client_has_grant(client, "client_credentials") {
        return Err(OAuthError::UnauthorizedClient(
            "client is not registered for client_credentials".into(),
        ));
    }
    let scope = granted_scope(client, params.get("scope"))?;
    let aud = granted_audience(state, client, params)?;
    let ttl = client
        .metadata
        .access_token_ttl
        .unwrap_or(state.cfg.access_token_ttl);
    let issued = tokens::issue(
        state,
        TokenRequest {
            client_id: &client.client_id,
            sub: &client.client_id,
            scope: &scope,
            aud: &aud,
            ttl,
            opaque: client.metadata.access_token_format == "opaque",
            extra: Default::default(),
            user_id: None,
            jkt: dpop,
            x5t,
        },
    )
    .await?;
    let mut body = json!({
        "access_token": issued.token,
        "token_type": tokens::token_type(dpop),
        "expires_in": ttl,
    });
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    Ok(body)
}
