//! Dynamic client registration (RFC 7591) and management (RFC 7592). Creating a client
//! needs the admin token; reading, updating and deleting accept the admin token or the
//! client's own registration access token. With its own token a client changes only what
//! it owns ([`clients::SELF_SERVICE_FIELDS`]); every field that grants privilege (scope,
//! audience, grant types, redirect URIs, token exchange, consent and PKCE exemptions, rate
//! limit, token format and lifetime, authentication method) needs the admin token
//! (docs/contracts.md). Deleting a client ends its token families and revokes its issued
//! access tokens.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::clients;
use crate::crypto;
use crate::error::OAuthError;
use crate::grants;
use crate::store::{client_owner, now_secs, ClientMetadata, ClientRecord, StoreError};

use super::{client_auth, json_no_store, SharedState};

fn client_json(state: &SharedState, c: &ClientRecord) -> Value {
    let mut v = serde_json::to_value(&c.metadata).unwrap_or_else(|_| json!({}));
    v["client_id"] = json!(c.client_id);
    v["client_id_issued_at"] = json!(c.created_at);
    if c.secret_hash.is_some() {
        v["client_secret_expires_at"] = json!(0);
    }
    v["registration_client_uri"] = json!(format!(
        "{}/oauth2/register/{}",
        state.cfg.issuer, c.client_id
    ));
    v
}

/// The client metadata document: a body that is not strict JSON (syntax, invalid UTF-8,
/// a member given twice, nesting deeper than the parser allows) is `invalid_client_metadata`
/// (RFC 7591 §3.2.2): with duplicated members, which value counts would be a guess.
fn metadata_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    crate::json::from_request(headers, body).map_err(|e| match e {
        OAuthError::InvalidRequest(d) => OAuthError::InvalidClientMetadata(d),
        other => other,
    })
}

#[utoipa::path(
    post,
    path = "/oauth2/register",
    tags = ["admin"],
    request_body(content = super::openapi::ClientMetadata, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "RFC 7591 §3.2.1", body = super::openapi::ClientInformation,
            links(
                ("read" = (operation_ref = "#/paths/~1oauth2~1register~1{client_id}/get",
                    parameters(("client_id" = "$response.body#/client_id")),
                    description = "RFC 7592 §2.1: the client configuration endpoint")),
                ("update" = (operation_ref = "#/paths/~1oauth2~1register~1{client_id}/put",
                    parameters(("client_id" = "$response.body#/client_id")),
                    request_body = json!({"client_id": "$response.body#/client_id"}),
                    description = "RFC 7592 §2.2: the body names the client it replaces")),
                ("delete" = (operation_ref = "#/paths/~1oauth2~1register~1{client_id}/delete",
                    parameters(("client_id" = "$response.body#/client_id")),
                    description = "RFC 7592 §2.3")),
            )),
        (status = 401, description = "invalid_token: missing or wrong admin token", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let md = clients::validate(metadata_json(&headers, &body)?)?;
        cert_binding_supported(&state, &md)?;
        let now = now_secs();
        let secret =
            clients::uses_secret(&md.token_endpoint_auth_method).then(crypto::new_client_secret);
        let reg_token = crypto::random_b64(32);
        let client = ClientRecord {
            client_id: crypto::random_b64(16),
            secret_hash: secret
                .as_ref()
                .map(|s| crypto::secret_hash(&state.pepper, s)),
            registration_token_hash: Some(crypto::secret_hash(&state.pepper, &reg_token)),
            metadata: md,
            created_at: now,
            updated_at: now,
        };
        state
            .store
            .create_client(&client)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => OAuthError::ServerError("client id collision".into()),
                other => other.into(),
            })?;
        state.stat("clients_registered");
        tracing::info!(client_id = %client.client_id, "client registered");
        let mut v = client_json(&state, &client);
        if let Some(s) = secret {
            v["client_secret"] = json!(s);
        }
        v["registration_access_token"] = json!(reg_token);
        Ok::<_, OAuthError>(json_no_store(StatusCode::CREATED, &v))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Who is managing a client registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    /// The admin token: every field.
    Admin,
    /// The client's own registration access token: only [`clients::SELF_SERVICE_FIELDS`].
    Client,
}

/// Admin token, or the registration access token of this very client (RFC 7592 §3).
async fn authorize_for(
    state: &SharedState,
    headers: &HeaderMap,
    peer: SocketAddr,
    client_id: &str,
) -> Result<(ClientRecord, Manager), OAuthError> {
    if client_auth::is_admin(state, headers) {
        return state
            .store
            .get_client(client_id)
            .await?
            .map(|c| (c, Manager::Admin))
            .ok_or_else(|| OAuthError::NotFound("no such client".into()));
    }
    let token = client_auth::bearer(headers);
    let client = state.store.get_client(client_id).await?;
    let ok = match (&client, token) {
        (Some(c), Some(t)) => c
            .registration_token_hash
            .as_deref()
            .is_some_and(|h| crypto::verify_secret(&state.pepper, t, h)),
        _ => false,
    };
    match (ok, client) {
        (true, Some(c)) => Ok((c, Manager::Client)),
        _ => {
            // Same answer whether the client exists or not (RFC 7592 §3).
            client_auth::require_admin(state, headers, Some(peer)).await?;
            Err(OAuthError::InvalidToken(
                "invalid registration access token".into(),
            ))
        }
    }
}

#[utoipa::path(
    get,
    path = "/oauth2/register/{client_id}",
    tags = ["public", "admin"],
    params(("client_id" = String, Path, description = "the client id")),
    security(("registration_access_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "RFC 7592 §2.1", body = super::openapi::ClientInformation),
        (status = 401, description = "invalid_token (the admin token counts only on the admin listener)", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such client (admin token only)", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn read(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match authorize_for(&state, &headers, peer, &client_id).await {
        Ok((c, _)) => json_no_store(StatusCode::OK, &client_json(&state, &c)),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    put,
    path = "/oauth2/register/{client_id}",
    tags = ["public", "admin"],
    params(("client_id" = String, Path, description = "the client id")),
    request_body(content = super::openapi::ClientMetadata, content_type = "application/json"),
    security(("registration_access_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "RFC 7592 §2.2", body = super::openapi::ClientInformation),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such client (admin token only)", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn update(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        let (existing, manager) = authorize_for(&state, &headers, peer, &client_id).await?;
        let v = metadata_json(&headers, &body)?;
        // RFC 7592 §2.2: the body carries the client_id, which must match.
        match v.get("client_id").and_then(Value::as_str) {
            Some(id) if id == client_id => {}
            _ => {
                return Err(OAuthError::InvalidRequest(
                    "body client_id must match the client being updated".into(),
                ))
            }
        }
        if let Some(s) = v.get("client_secret").and_then(Value::as_str) {
            if !existing
                .secret_hash
                .as_deref()
                .is_some_and(|h| crypto::verify_secret(&state.pepper, s, h))
            {
                return Err(OAuthError::InvalidRequest(
                    "client_secret does not match".into(),
                ));
            }
        }
        let md = clients::validate(v)?;
        cert_binding_supported(&state, &md)?;
        if manager == Manager::Client {
            // RFC 7592 clients send their whole metadata: a privileged field sent back
            // unchanged is fine, a changed one needs the admin token.
            let changed = clients::privileged_changes(&existing.metadata, &md);
            if !changed.is_empty() {
                return Err(OAuthError::InvalidClientMetadata(format!(
                    "changing {} needs the admin token; the registration access token changes only {}",
                    changed.join(", "),
                    clients::SELF_SERVICE_FIELDS.join(", ")
                )));
            }
        }
        if clients::uses_secret(&md.token_endpoint_auth_method) != existing.secret_hash.is_some() {
            return Err(OAuthError::InvalidClientMetadata(
                "a client cannot switch between secret and secret-less authentication".into(),
            ));
        }
        let updated = ClientRecord {
            metadata: md,
            updated_at: now_secs(),
            ..existing
        };
        state.store.put_client(&updated).await?;
        Ok(json_no_store(
            StatusCode::OK,
            &client_json(&state, &updated),
        ))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    delete,
    path = "/oauth2/register/{client_id}",
    tags = ["public", "admin"],
    params(("client_id" = String, Path, description = "the client id")),
    security(("registration_access_token" = []), ("admin_token" = [])),
    responses(
        (status = 204, description = "RFC 7592 §2.3: deleted"),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such client (admin token only)", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn delete(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        authorize_for(&state, &headers, peer, &client_id).await?;
        // Its token families and its issued access tokens end with it (revoked: the edge
        // refuses them from the next revocation-feed poll, not at `exp`).
        let ended = grants::owner::end_with(
            &state,
            &client_owner(&client_id),
            "the client was deleted",
            || async { Ok(state.store.delete_client(&client_id).await?) },
        )
        .await?
        .ok_or_else(|| OAuthError::NotFound("no such client".into()))?;
        tracing::info!(
            client_id = %client_id,
            families = ended.families,
            access_tokens = ended.access_tokens,
            "client deleted"
        );
        Ok::<_, OAuthError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// RFC 8705 §3.4: a client asking for certificate-bound tokens on a server that does not
/// bind them (`TOLLGATE_CERT_BOUND_TOKENS` off) would get no token at all; say so now.
fn cert_binding_supported(state: &SharedState, md: &ClientMetadata) -> Result<(), OAuthError> {
    if md.token_endpoint_auth_method == clients::SELF_SIGNED_TLS && state.cfg.tls.is_none() {
        return Err(OAuthError::InvalidClientMetadata(
            "self_signed_tls_client_auth needs the TLS listener (TOLLGATE_TLS_LISTEN)".into(),
        ));
    }
    if md.token_endpoint_auth_method == clients::TLS_CLIENT_AUTH
        && !state.cfg.offers_tls_client_auth()
    {
        return Err(OAuthError::InvalidClientMetadata(
            "tls_client_auth needs the TLS listener with the CAs of client certificates \
             (TOLLGATE_TLS_LISTEN, TOLLGATE_TLS_CLIENT_CA)"
                .into(),
        ));
    }
    if md.tls_client_certificate_bound_access_tokens
        && !state.cfg.cert_bound_tokens
        && state.cfg.tls.is_none()
    {
        return Err(OAuthError::InvalidClientMetadata(
            "tls_client_certificate_bound_access_tokens: this server does not bind tokens to \
             client certificates (TOLLGATE_CERT_BOUND_TOKENS or TOLLGATE_TLS_LISTEN)"
                .into(),
        ));
    }
    Ok(())
}
