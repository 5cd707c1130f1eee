//! `/edge/authz`: the check service of Envoy's `ext_authz` filter (HTTP), for gateways that
//! ask the auth server on every request instead of running the edge filter (the
//! architecture the edge filter replaces; `make bench-gateway` measures both). Envoy sends
//! the client request's method and headers to `/edge/authz` + its path; the answer is 200
//! with the token's identity as `x-tollgate-*` headers (Envoy's
//! `allowed_upstream_headers` copies them onto the request), or the RFC 6750 refusal Envoy
//! returns to the client as it is.
//!
//! Who may ask: a gateway, as for every edge endpoint ([`super::edge::authorize_edge`]), by
//! its mesh identity or with the `client_secret_basic` credentials of a `tollgate:edge`
//! client in `X-Tollgate-Edge-Authorization` (the client's own `Authorization` carries the
//! token being checked). Otherwise this would be an unauthenticated introspection endpoint
//! (RFC 7662 §4: token scanning).
//!
//! The token: an access token of this server (JWT or opaque) whose record is in the store,
//! unexpired, not revoked, of a client that still exists; one store read for the record and
//! its revocation, one for the client. Sender-constrained tokens (`cnf`) are refused: their
//! proof of possession is checked at the edge filter, which `ext_authz` cannot do.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::OAuthError;
use crate::store::now_secs;
use crate::tokens;

use super::edge::authorize_edge;
use super::SharedState;

/// The gateway's own credentials, beside the client's `Authorization`.
pub const EDGE_AUTHORIZATION: &str = "x-tollgate-edge-authorization";

/// The identity headers of an allowed request, always all of them (empty when the token has
/// no such claim): Envoy overwrites a header the answer carries, so a client's spoofed copy
/// of one the answer left out would reach the upstream.
const IDENTITY: [&str; 3] = ["x-tollgate-sub", "x-tollgate-client-id", "x-tollgate-scope"];

#[utoipa::path(
    get,
    path = "/edge/authz",
    tags = ["public"],
    security(("mesh_identity" = [])),
    params(
        ("Authorization" = String, Header, description = "the client request's `Bearer` access token"),
        ("X-Tollgate-Edge-Authorization" = Option<String>, Header, description = "the gateway's `client_secret_basic` credentials (a client with scope `tollgate:edge`), unless it calls by its mesh identity"),
    ),
    responses(
        (status = 200, description = "the token is active; its identity in `x-tollgate-sub`, `x-tollgate-client-id`, `x-tollgate-scope`"),
        (status = 401, description = "invalid_token (no, unknown, expired, revoked or sender-constrained token), or invalid_client (the gateway's credentials)", body = super::openapi::ErrorBody),
        (status = 403, description = "insufficient_scope: the gateway's client lacks tollgate:edge, or the mesh identity is not trusted", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn check(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match handle(&state, &headers, peer).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &SharedState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Response, OAuthError> {
    // The gateway's credentials are checked as on every edge endpoint, from its own header.
    let mut edge = headers.clone();
    edge.remove(header::AUTHORIZATION);
    let mut own = headers.get_all(EDGE_AUTHORIZATION).iter();
    match (own.next(), own.next()) {
        (Some(v), None) => {
            edge.insert(header::AUTHORIZATION, v.clone());
        }
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "repeated X-Tollgate-Edge-Authorization header".into(),
            ))
        }
        (None, _) => {}
    }
    authorize_edge(state, &edge, peer, "the ext_authz check").await?;

    let mut presented = headers.get_all(header::AUTHORIZATION).iter();
    let token = match (presented.next(), presented.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
            .map(|(_, t)| t.trim()),
        _ => None,
    };
    let Some(token) = token else {
        return Err(OAuthError::InvalidToken(
            "a Bearer access token is required".into(),
        ));
    };
    let invalid = || OAuthError::InvalidToken("the access token is not active".into());
    let Some((rec, revoked)) = tokens::lookup(state, token).await? else {
        return Err(invalid());
    };
    if revoked || rec.exp <= now_secs() {
        return Err(invalid());
    }
    if rec.cnf_jkt.is_some() || rec.cnf_x5t.is_some() {
        return Err(OAuthError::InvalidToken(
            "a sender-constrained token is checked by the edge filter, not by ext_authz".into(),
        ));
    }
    // A deleted client's tokens are no longer active (a deletion evicts the client from every replica's cache) (as at introspection).
    if state
        .store
        .get_client_cached(&rec.client_id)
        .await?
        .0
        .is_none()
    {
        return Err(invalid());
    }
    metrics::counter!("tollgate_ext_authz_total", "allowed" => "true").increment(1);
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    for (name, value) in
        IDENTITY
            .iter()
            .zip([rec.sub.as_str(), rec.client_id.as_str(), rec.scope.as_str()])
    {
        let v = HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static(""));
        h.insert(HeaderName::from_static(name), v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
