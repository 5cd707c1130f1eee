//! OAuth 2.0 protocol errors (RFC 6749 §5.2, RFC 6750 §3, RFC 7591 §3.2.2) and their HTTP form.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// An error that is answered to the client as an RFC 6749 JSON error object.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// Client authentication failed. `basic` says whether the client tried HTTP Basic,
    /// in which case the answer carries `WWW-Authenticate: Basic`.
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    #[error("unsupported_token_type: {0}")]
    UnsupportedTokenType(String),
    /// RFC 6750: the bearer token on a protected endpoint (registration, admin) is bad.
    #[error("invalid_token: {0}")]
    InvalidToken(String),
    #[error("insufficient_scope: {0}")]
    InsufficientScope(String),
    #[error("invalid_client_metadata: {0}")]
    InvalidClientMetadata(String),
    #[error("invalid_redirect_uri: {0}")]
    InvalidRedirectUri(String),
    #[error("access_denied: {0}")]
    AccessDenied(String),
    #[error("not_found: {0}")]
    NotFound(String),
    /// The resource exists already (409).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("method_not_allowed")]
    MethodNotAllowed,
    #[error("payload_too_large")]
    PayloadTooLarge,
    #[error("unsupported_media_type: {0}")]
    UnsupportedMediaType(String),
    #[error("rate limited, retry after {retry_after}s")]
    RateLimited { retry_after: u64 },
    #[error("temporarily_unavailable: {0}")]
    TemporarilyUnavailable(String),
    /// RFC 9449 §5: the `DPoP` proof is missing where required, malformed or invalid.
    #[error("invalid_dpop_proof: {0}")]
    InvalidDpopProof(String),
    /// RFC 9449 §8: the proof lacks a current server nonce; the answer carries one in
    /// `DPoP-Nonce`.
    #[error("use_dpop_nonce")]
    UseDpopNonce { nonce: String },
    #[error("server_error")]
    ServerError(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_description: &'a str,
}

impl OAuthError {
    /// The RFC error code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::UnsupportedTokenType(_) => "unsupported_token_type",
            OAuthError::InvalidToken(_) => "invalid_token",
            OAuthError::InsufficientScope(_) => "insufficient_scope",
            OAuthError::InvalidClientMetadata(_) => "invalid_client_metadata",
            OAuthError::InvalidRedirectUri(_) => "invalid_redirect_uri",
            OAuthError::AccessDenied(_) => "access_denied",
            OAuthError::NotFound(_) => "not_found",
            OAuthError::Conflict(_) => "invalid_request",
            OAuthError::MethodNotAllowed => "invalid_request",
            OAuthError::PayloadTooLarge => "invalid_request",
            OAuthError::UnsupportedMediaType(_) => "invalid_request",
            OAuthError::RateLimited { .. } => "slow_down",
            OAuthError::TemporarilyUnavailable(_) => "temporarily_unavailable",
            OAuthError::InvalidDpopProof(_) => "invalid_dpop_proof",
            OAuthError::UseDpopNonce { .. } => "use_dpop_nonce",
            OAuthError::ServerError(_) => "server_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient(_) | OAuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            OAuthError::InsufficientScope(_) | OAuthError::AccessDenied(_) => StatusCode::FORBIDDEN,
            OAuthError::NotFound(_) => StatusCode::NOT_FOUND,
            OAuthError::Conflict(_) => StatusCode::CONFLICT,
            OAuthError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            OAuthError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            OAuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            OAuthError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::ServerError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn description(&self) -> String {
        match self {
            OAuthError::MethodNotAllowed => "method not allowed on this endpoint".into(),
            OAuthError::PayloadTooLarge => "request body too large".into(),
            // Never leak internals: the detail of a server error goes to the log only.
            OAuthError::ServerError(_) => "internal error".into(),
            OAuthError::UseDpopNonce { .. } => {
                "resend the request with a DPoP proof carrying the nonce of DPoP-Nonce".into()
            }
            OAuthError::RateLimited { retry_after } => {
                format!("too many requests, retry after {retry_after} s")
            }
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidClient(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::UnauthorizedClient(d)
            | OAuthError::UnsupportedGrantType(d)
            | OAuthError::InvalidScope(d)
            | OAuthError::InvalidTarget(d)
            | OAuthError::UnsupportedTokenType(d)
            | OAuthError::InvalidToken(d)
            | OAuthError::InsufficientScope(d)
            | OAuthError::InvalidClientMetadata(d)
            | OAuthError::InvalidRedirectUri(d)
            | OAuthError::AccessDenied(d)
            | OAuthError::NotFound(d)
            | OAuthError::Conflict(d)
            | OAuthError::UnsupportedMediaType(d)
            | OAuthError::TemporarilyUnavailable(d)
            | OAuthError::InvalidDpopProof(d) => d.clone(),
        }
    }
}

/// RFC 6750 §3 quoted-string: drop characters that are not allowed in an auth-param.
fn quote_param(s: &str) -> String {
    s.chars()
        .filter(|c| {
            *c == ' '
                || *c == '!'
                || ('\u{23}'..='\u{5b}').contains(c)
                || ('\u{5d}'..='\u{7e}').contains(c)
        })
        .collect()
}

/// RFC 6749 §5.2 (and RFC 6750 §3, RFC 7591 §3.2.2): `error_description` is limited to
/// %x20-21 / %x23-5B / %x5D-7E. Messages that quote client input are mapped into that set
/// (`"` → `'`, `\` → `/`, anything else outside it → `?`) and bounded in length.
pub fn description_text(s: &str) -> String {
    s.chars()
        .take(512)
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' ' | '!' | '\u{23}'..='\u{5b}' | '\u{5d}'..='\u{7e}' => c,
            _ => '?',
        })
        .collect()
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let OAuthError::ServerError(detail) = &self {
            tracing::error!(error = %detail, "server error");
        }
        let status = self.status();
        let description = description_text(&self.description());
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code(),
            error_description: &description,
        })
        .unwrap_or_else(|_| br#"{"error":"server_error"}"#.to_vec());
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            OAuthError::InvalidClient(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tollgate\", charset=\"UTF-8\""),
                );
            }
            OAuthError::InvalidToken(_) | OAuthError::InsufficientScope(_) => {
                let v = format!(
                    "Bearer realm=\"tollgate\", error=\"{}\", error_description=\"{}\"",
                    self.code(),
                    quote_param(&description)
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            OAuthError::RateLimited { retry_after } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            OAuthError::UseDpopNonce { nonce } => {
                if let Ok(v) = HeaderValue::from_str(nonce) {
                    h.insert(DPOP_NONCE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// The response header that carries a server nonce (RFC 9449 §8).
pub const DPOP_NONCE: header::HeaderName = header::HeaderName::from_static("dpop-nonce");

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(d) => {
                tracing::warn!(error = %d, "store unavailable");
                OAuthError::TemporarilyUnavailable("storage temporarily unavailable".into())
            }
            other => OAuthError::ServerError(other.to_string()),
        }
    }
}

pub type OAuthResult<T> = Result<T, OAuthError>;

/// What stops a start, or a key-management job: the store, a signing key, the edge module
/// file or the configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("cannot read edge module {path}: {detail}")]
    EdgeModule { path: String, detail: String },
    #[error("configuration error: {0}")]
    Config(#[from] crate::config::ConfigError),
}
