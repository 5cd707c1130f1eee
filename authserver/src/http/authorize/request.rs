//! The authorization request: its validation (client, exact redirect URI, PKCE S256,
//! scope, audience, `dpop_jkt`) and its errors.

use axum::http::StatusCode;

use crate::form::Params;
use crate::grants::{client_has_grant, granted_audience, granted_scope};
use crate::store::{ClientRecord, StoreError};

use crate::http::SharedState;

/// A validated authorization request.
pub struct AuthzRequest {
    pub client: ClientRecord,
    pub redirect_uri: String,
    pub redirect_given: bool,
    pub state: Option<String>,
    pub scope: String,
    pub aud: String,
    pub challenge: Option<String>,
    pub method: Option<String>,
    /// RFC 9449 §10: the thumbprint of the DPoP key that must redeem the code.
    pub dpop_jkt: Option<String>,
    pub prompt_none: bool,
    /// The request re-serialised from the parameters we understood (carried through the
    /// login and consent forms).
    pub raw: String,
}

pub enum AuthzError {
    /// Shown to the user; never redirected.
    Page(StatusCode, String),
    /// Sent back to the client's (validated) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl From<StoreError> for AuthzError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store error at the authorization endpoint");
        AuthzError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is temporarily unavailable. Try again in a moment.".into(),
        )
    }
}

/// Parameters carried from the authorization request through login and consent.
pub(super) const CARRIED: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "response_mode",
    "nonce",
    "dpop_jkt",
];

pub(super) fn is_loopback_host(h: Option<&str>) -> bool {
    matches!(h, Some("127.0.0.1") | Some("[::1]") | Some("localhost"))
}

/// Does a requested redirect URI match a registered one: exactly, or for `http` on a
/// loopback host with any port (RFC 8252 §7.3).
pub fn redirect_matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(a), Ok(b)) = (url::Url::parse(registered), url::Url::parse(requested)) else {
        return false;
    };
    a.scheme() == "http"
        && b.scheme() == "http"
        && is_loopback_host(a.host_str())
        && a.host_str() == b.host_str()
        && a.path() == b.path()
        && a.query() == b.query()
        && b.fragment().is_none()
        && b.username().is_empty()
        && b.password().is_none()
}

pub use crate::grants::pkce::valid_pkce_string;

pub(super) fn redirect_err(
    req_uri: &str,
    state: Option<&str>,
    error: &'static str,
    d: impl Into<String>,
) -> AuthzError {
    AuthzError::Redirect {
        redirect_uri: req_uri.to_string(),
        state: state.map(str::to_string),
        error,
        description: d.into(),
    }
}

/// Validate an authorization request.
pub async fn validate(state: &SharedState, p: &Params) -> Result<AuthzRequest, AuthzError> {
    let page = |m: &str| Err(AuthzError::Page(StatusCode::BAD_REQUEST, m.to_string()));
    let Some(client_id) = p.get("client_id") else {
        return page("The request has no client_id.");
    };
    if client_id.len() > 256 {
        return page("The client is not registered.");
    }
    let Some(client) = state.store.get_client(client_id).await? else {
        return page("The client is not registered.");
    };
    let registered = &client.metadata.redirect_uris;
    let (redirect_uri, redirect_given) = match p.get("redirect_uri") {
        Some(r) => {
            if !registered.iter().any(|reg| redirect_matches(reg, r)) {
                return page("The redirect URI is not registered for this client.");
            }
            (r.to_string(), true)
        }
        None => match registered.as_slice() {
            [only] => (only.clone(), false),
            [] => return page("The client has no registered redirect URI."),
            _ => return page("The request must name one of the client's redirect URIs."),
        },
    };
    // From here on errors go back to the client.
    let st = p.get("state");
    let err = |e: &'static str, d: &str| Err(redirect_err(&redirect_uri, st, e, d));
    match p.get("response_mode") {
        None | Some("query") => {}
        Some(_) => return err("invalid_request", "only response_mode=query is supported"),
    }
    if p.get("request").is_some() || p.get("request_uri").is_some() {
        return err("request_not_supported", "request objects are not supported");
    }
    match p.get("response_type") {
        Some("code") => {}
        None => return err("invalid_request", "response_type is required"),
        Some(_) => {
            return err(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    if !client_has_grant(&client, "authorization_code") {
        return err(
            "unauthorized_client",
            "the client is not registered for the authorization code grant",
        );
    }
    let scope = match granted_scope(&client, p.get("scope")) {
        Ok(s) => s,
        Err(e) => return err("invalid_scope", &e.to_string()),
    };
    let aud = match granted_audience(state, &client, p) {
        Ok(a) => a,
        Err(e) => return err("invalid_target", &e.to_string()),
    };
    let public = client.metadata.token_endpoint_auth_method == "none";
    let allow_plain = client
        .metadata
        .extra
        .get("allow_plain_pkce")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let (challenge, method) = match (p.get("code_challenge"), p.get("code_challenge_method")) {
        (None, Some(_)) => {
            return err(
                "invalid_request",
                "code_challenge_method without code_challenge",
            )
        }
        (None, None) if public => {
            return err(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            )
        }
        (None, None) => (None, None),
        (Some(c), m) => {
            // RFC 7636 §4.3: no method means plain.
            let m = m.unwrap_or("plain");
            match m {
                "S256" => {}
                "plain" if allow_plain => {}
                "plain" => {
                    return err(
                        "invalid_request",
                        "code_challenge_method=plain is not allowed for this client; use S256",
                    )
                }
                _ => return err("invalid_request", "unsupported code_challenge_method"),
            }
            if !valid_pkce_string(c) {
                return err("invalid_request", "malformed code_challenge");
            }
            (Some(c.to_string()), Some(m.to_string()))
        }
    };
    let dpop_jkt = match p.get("dpop_jkt") {
        None => None,
        Some(j) if crate::dpop::is_thumbprint(j) => Some(j.to_string()),
        Some(_) => {
            return err(
                "invalid_request",
                "malformed dpop_jkt (the base64url SHA-256 JWK thumbprint)",
            )
        }
    };
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for k in CARRIED {
        if let Some(v) = p.get(k) {
            ser.append_pair(k, v);
        }
    }
    for k in ["resource", "audience"] {
        for v in p.all(k) {
            ser.append_pair(k, v);
        }
    }
    Ok(AuthzRequest {
        redirect_uri: redirect_uri.clone(),
        redirect_given,
        state: st.map(str::to_string),
        scope,
        aud,
        challenge,
        method,
        dpop_jkt,
        prompt_none: p
            .get("prompt")
            .is_some_and(|v| v.split(' ').any(|x| x == "none")),
        raw: ser.finish(),
        client,
    })
}
