//! `POST /oauth2/token`: authenticate the client, dispatch on `grant_type`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::error::OAuthError;
use crate::form::Params;
use crate::grants;

use super::tls::PeerCertificate;
use super::{client_auth, dpop, json_no_store, mtls, SharedState};

#[utoipa::path(
    post,
    path = "/oauth2/token",
    tags = ["public"],
    request_body(content = super::openapi::TokenRequest, content_type = "application/x-www-form-urlencoded"),
    security(("client_basic" = []), ()),
    params(
        ("DPoP" = Option<String>, Header, description = "RFC 9449 DPoP proof JWT (at most one): the access token is bound to its key (`token_type: DPoP`, `cnf.jkt`); required for clients registered with `dpop_bound_access_tokens`"),
    ),
    responses(
        (status = 200, description = "RFC 6749 §5.1 token response (with `DPoP-Nonce` when server nonces are on)", body = super::openapi::TokenResponse,
            headers(("DPoP-Nonce" = Option<String>, description = "RFC 9449 §8: the nonce for the next DPoP proof (TOLLGATE_DPOP_NONCE)"))),
        (status = 401, description = "invalid_client", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
        (status = 400, description = "RFC 6749 §5.2 error (invalid_request, invalid_grant, ...); `invalid_dpop_proof` (RFC 9449 §5) for a missing, invalid or replayed DPoP proof; `use_dpop_nonce` (RFC 9449 §8) with a `DPoP-Nonce` header", body = super::openapi::ErrorBody,
            headers(("DPoP-Nonce" = Option<String>, description = "with use_dpop_nonce: the nonce to put in the proof"))),
    )
)]
pub async fn token(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    tls: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tls = tls.map(|Extension(c)| c);
    match handle(&state, &headers, Some(peer), tls.as_ref(), &body).await {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("tollgate_token_errors_total", "error" => e.code()).increment(1);
            state.stat("token_errors");
            e.into_response()
        }
    }
}

async fn handle(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let params = Params::from_request(headers, body)?;
    let grant_type = params.require("grant_type")?.to_string();
    let caller = client_auth::authenticate_caller(state, headers, peer, tls, Some(&params)).await?;
    // A public client's quota is per (client_id, IP) and spent only by a grant that
    // succeeds: somebody sending bad codes under its client_id spends nothing of it.
    if caller.is_public() {
        client_auth::check_quota(state, &caller).await?;
    } else {
        client_auth::spend_quota(state, &caller).await?;
    }
    let client = &caller.client;
    let jkt = dpop::token_request_key(state, headers, client).await?;
    let jkt = jkt.as_deref();
    let x5t = mtls::token_request_thumbprint(state, headers, peer, tls, client)?;
    let x5t = x5t.as_deref();
    let outcome = match grant_type.as_str() {
        "client_credentials" => {
            grants::client_credentials::handle(state, client, &params, jkt, x5t).await
        }
        "authorization_code" => {
            grants::authorization_code::handle(state, client, &params, jkt, x5t).await
        }
        "refresh_token" => grants::refresh_token::handle(state, client, &params, jkt, x5t).await,
        grants::token_exchange::GRANT => {
            grants::token_exchange::handle(state, client, &params, jkt, x5t).await
        }
        // The value is not echoed: a confused client may have put a secret in it.
        _ => Err(OAuthError::UnsupportedGrantType(format!(
            "grant_type must be one of: {}",
            crate::clients::GRANT_TYPES.join(", ")
        ))),
    };
    let body = match outcome {
        Ok(body) => body,
        Err(e) => return Err(client_auth::note_grant_failure(state, &caller, e).await),
    };
    if caller.is_public() {
        client_auth::spend_quota_after_success(state, &caller).await;
    }
    let mut resp = json_no_store(StatusCode::OK, &body);
    dpop::add_nonce(state, &mut resp);
    Ok(resp)
}
