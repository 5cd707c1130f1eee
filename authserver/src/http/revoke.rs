//! `POST /oauth2/revoke` (RFC 7009). A client revokes its own tokens; an unknown or
//! already invalid token is answered 200 as the RFC requires. A revoked access token's
//! `jti` is blacklisted until it expires and published on the edge revocation feed.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::crypto;
use crate::error::OAuthError;
use crate::form::Params;
use crate::grants::{self, family::REFRESH_PREFIX};
use crate::tokens;

use super::introspect::has_scope;
use super::tls::PeerCertificate;
use super::{client_auth, SharedState};

#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    tags = ["public"],
    request_body(content = super::openapi::TokenParam, content_type = "application/x-www-form-urlencoded"),
    security(("client_basic" = []), ()),
    responses(
        (status = 200, description = "RFC 7009 §2.2: revoked, or unknown to this server"),
        (status = 401, description = "invalid_client", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn revoke(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    tls: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tls = tls.map(|Extension(c)| c);
    match handle(&state, &headers, Some(peer), tls.as_ref(), &body).await {
        Ok(()) => {
            let mut r = StatusCode::OK.into_response();
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    body: &[u8],
) -> Result<(), OAuthError> {
    let params = Params::from_request(headers, body)?;
    let caller = client_auth::authenticate(state, headers, peer, tls, Some(&params)).await?;
    let token = params.require("token")?;
    match params.get("token_type_hint") {
        None | Some("access_token") | Some("refresh_token") => {}
        // The value is not echoed: a confused client may have put the token in it.
        Some(_) => {
            return Err(OAuthError::UnsupportedTokenType(
                "token_type_hint must be access_token or refresh_token".into(),
            ))
        }
    }
    if token.starts_with(REFRESH_PREFIX) {
        // RFC 7009 §2.1: revoking a refresh token revokes its grant: the whole family.
        let Some((rec, _used)) = state
            .store
            .get_refresh_token(&crypto::token_hash(token))
            .await?
        else {
            return Ok(());
        };
        if rec.client_id != caller.client_id && !has_scope(&caller, "tollgate:revoke") {
            return Err(OAuthError::UnauthorizedClient(
                "the token was not issued to this client".into(),
            ));
        }
        grants::family::revoke(state, &rec.grant_id, "refresh token revoked").await?;
        return Ok(());
    }
    let Some((rec, _revoked)) = tokens::lookup(state, token).await? else {
        // No record, yet possibly one of our JWTs: a Redis failover can lose the last
        // access-token records the old master had not replicated (docs/reliability.md), and
        // the edge still accepts such a token. Revoke it by its verified claims.
        if let Some(c) = state.keys().verify(token, &state.cfg.issuer) {
            if c.client_id != caller.client_id && !has_scope(&caller, "tollgate:revoke") {
                return Err(OAuthError::UnauthorizedClient(
                    "the token was not issued to this client".into(),
                ));
            }
            if state.store.revoke_access_token(&c.jti, c.exp).await? {
                metrics::counter!("tollgate_revocations_total").increment(1);
                tracing::info!(client_id = %caller.client_id, "access token without a record revoked");
            }
        }
        return Ok(());
    };
    if rec.client_id != caller.client_id && !has_scope(&caller, "tollgate:revoke") {
        // RFC 7009 §2.1: the token was not issued to this client; refuse.
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client".into(),
        ));
    }
    if state.store.revoke_access_token(&rec.jti, rec.exp).await? {
        metrics::counter!("tollgate_revocations_total").increment(1);
        tracing::info!(client_id = %caller.client_id, token_client = %rec.client_id, "access token revoked");
    }
    Ok(())
}
