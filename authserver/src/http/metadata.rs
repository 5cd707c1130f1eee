//! RFC 8414 metadata and the RFC 7517 JWK Set.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::store::now_secs;

use super::SharedState;

/// RFC 8414 metadata of the public listener. No `registration_endpoint`: registration
/// (RFC 7591) takes the admin token on the admin listener, which no client outside reaches.
fn metadata(state: &SharedState) -> Value {
    let iss = &state.cfg.issuer;
    // The certificate methods only where a TLS listener sees the certificates (and, for
    // tls_client_auth, knows the CAs).
    let methods: Vec<&str> = crate::clients::AUTH_METHODS
        .iter()
        .copied()
        .filter(|m| match *m {
            crate::clients::SELF_SIGNED_TLS => state.cfg.tls.is_some(),
            crate::clients::TLS_CLIENT_AUTH => state.cfg.offers_tls_client_auth(),
            _ => true,
        })
        .collect();
    json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/oauth2/token"),
        "jwks_uri": format!("{iss}/oauth2/jwks"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "grant_types_supported": crate::clients::GRANT_TYPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": crate::clients::ASSERTION_ALGS,
        "introspection_endpoint_auth_signing_alg_values_supported": crate::clients::ASSERTION_ALGS,
        "revocation_endpoint_auth_signing_alg_values_supported": crate::clients::ASSERTION_ALGS,
        "scopes_supported": [],
        "access_token_signing_alg_values_supported": [state.keys().active(now_secs()).map(|k| k.alg.as_str()).unwrap_or("ES256")],
        "service_documentation": "https://github.com/tollgate-auth/tollgate/tree/main/docs",
        "tollgate_revocation_feed_endpoint": format!("{iss}/edge/revocations"),
        "dpop_signing_alg_values_supported": crate::dpop::ALGS,
        // RFC 8705 §3.3: with TOLLGATE_CERT_BOUND_TOKENS (certificates from the mesh).
        "tls_client_certificate_bound_access_tokens": state.cfg.cert_bound_tokens || state.cfg.tls.is_some(),
    })
}

#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tags = ["public"],
    responses(
        (status = 200, description = "RFC 8414 metadata", body = super::openapi::Metadata),
        super::openapi::RateLimited,
    )
)]
pub async fn authorization_server(State(state): State<SharedState>) -> Response {
    cached(Json(metadata(&state)).into_response(), 300)
}

#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tags = ["public"],
    responses(
        (status = 200, description = "OpenID discovery metadata", body = super::openapi::Metadata),
        super::openapi::RateLimited,
    )
)]
pub async fn openid_configuration(State(state): State<SharedState>) -> Response {
    let mut m = metadata(&state);
    // OpenID Provider Metadata requires these; Tollgate issues no ID tokens for
    // client_credentials but discovery clients expect the document to be well-formed.
    m["subject_types_supported"] = json!(["public"]);
    m["id_token_signing_alg_values_supported"] = json!(["ES256"]);
    cached(Json(m).into_response(), 300)
}

#[utoipa::path(
    get,
    path = "/oauth2/jwks",
    tags = ["public"],
    responses(
        (status = 200, description = "RFC 7517 JWK Set", content_type = "application/jwk-set+json", body = super::openapi::JwkSet),
        super::openapi::RateLimited,
    )
)]
pub async fn jwks(State(state): State<SharedState>) -> Response {
    let body = state.keys().jwks(now_secs(), state.max_token_ttl());
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Short: a rotated key must reach caches well before it signs.
    cached(r, 60)
}

fn cached(mut r: Response, secs: u32) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={secs}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    r
}
