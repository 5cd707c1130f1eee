//! What the authorization endpoint answers: redirects to the client (with `iss`, RFC
//! 9207), error pages, and the login and consent pages.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::ClientRecord;

use super::request::{AuthzError, AuthzRequest};
use crate::http::pages::{self, escape};
use crate::http::SharedState;

/// A redirect to the client with `params` (and `iss`) added to its redirect URI.
pub(super) fn to_client(issuer: &str, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut u) = url::Url::parse(redirect_uri) else {
        return pages::error_page(StatusCode::BAD_REQUEST, "The redirect URI is invalid.");
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", issuer);
    }
    see_other(u.as_str())
}

pub(super) fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => pages::error_page(StatusCode::BAD_REQUEST, "The redirect URI is invalid."),
    }
}

pub(super) fn render_error(state: &SharedState, e: AuthzError) -> Response {
    match e {
        AuthzError::Page(status, msg) => pages::error_page(status, &msg),
        AuthzError::Redirect {
            redirect_uri,
            state: st,
            error,
            description,
        } => {
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = st.as_deref() {
                params.push(("state", s));
            }
            to_client(&state.cfg.issuer, &redirect_uri, &params)
        }
    }
}

/// The CSP `form-action` source for a redirect URI (browsers apply form-action to the
/// redirects that follow a form submission).
pub(super) fn form_action_source(redirect_uri: &str) -> Option<String> {
    let u = url::Url::parse(redirect_uri).ok()?;
    let src = match u.scheme() {
        "http" | "https" => u.origin().ascii_serialization(),
        s => format!("{s}:"),
    };
    src.bytes()
        .all(|c| c.is_ascii_graphic() && c != b';' && c != b',' && c != b'\'')
        .then_some(src)
}

pub(super) fn with_cookie(mut r: Response, c: Option<HeaderValue>) -> Response {
    if let Some(c) = c {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

pub(super) fn client_label(c: &ClientRecord) -> String {
    c.metadata
        .client_name
        .clone()
        .unwrap_or_else(|| c.client_id.clone())
}

pub(super) fn login_page(
    state: &SharedState,
    headers: &HeaderMap,
    req: &AuthzRequest,
    status: StatusCode,
    error: Option<&str>,
    username: &str,
) -> Response {
    let (nonce, set) = pages::csrf_nonce(&state.cfg.issuer, headers);
    let csrf = pages::csrf_token_for(
        &state.pepper,
        &state.cfg.issuer,
        headers,
        &nonce,
        &pages::CsrfUse {
            form: "login",
            authz: &req.raw,
        },
    );
    let err = error
        .map(|e| format!("<p role=\"alert\" class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<p>Sign in to continue to <strong>{client}</strong>.</p>{err}\
<form method=\"post\" action=\"login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"authz\" value=\"{authz}\">\
<label for=\"username\">Username<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" required value=\"{user}\"></label>\
<label for=\"password\">Password<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
<button type=\"submit\">Sign in</button></form>",
        client = escape(&client_label(&req.client)),
        csrf = escape(&csrf),
        authz = escape(&req.raw),
        user = escape(username),
    );
    let src = form_action_source(&req.redirect_uri);
    with_cookie(page_or(status, "Sign in", &body, src.as_deref()), set)
}

pub(super) fn page_or(status: StatusCode, title: &str, body: &str, src: Option<&str>) -> Response {
    pages::page(status, title, body, src)
}

pub(super) fn consent_page(
    state: &SharedState,
    headers: &HeaderMap,
    req: &AuthzRequest,
    user: &str,
) -> Response {
    let (nonce, set) = pages::csrf_nonce(&state.cfg.issuer, headers);
    let csrf = pages::csrf_token_for(
        &state.pepper,
        &state.cfg.issuer,
        headers,
        &nonce,
        &pages::CsrfUse {
            form: "consent",
            authz: &req.raw,
        },
    );
    let scopes: String = if req.scope.is_empty() {
        "<li>basic access (no scopes)</li>".into()
    } else {
        req.scope
            .split(' ')
            .map(|s| format!("<li><code>{}</code></li>", escape(s)))
            .collect()
    };
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>.</p>\
<p><strong>{client}</strong> asks for access to <code>{aud}</code> with:</p><ul>{scopes}</ul>\
<form method=\"post\" action=\"consent\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"authz\" value=\"{authz}\">\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        user = escape(user),
        client = escape(&client_label(&req.client)),
        aud = escape(&req.aud),
        csrf = escape(&csrf),
        authz = escape(&req.raw),
    );
    let src = form_action_source(&req.redirect_uri);
    with_cookie(
        page_or(StatusCode::OK, "Allow access?", &body, src.as_deref()),
        set,
    )
}
