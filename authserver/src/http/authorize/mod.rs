//! The authorization endpoint (RFC 6749 §4.1 with PKCE, RFC 7636) and its login and
//! consent pages.
//!
//! - `GET/POST /oauth2/authorize`: validate the request; a bad `client_id` or
//!   `redirect_uri` gets an error page and never a redirect (no open redirector); other
//!   errors go back to the client with `error` and the unchanged `state`. A logged-in user
//!   gets the consent page (skipped for clients registered with `skip_consent: true`), then
//!   a single-use code. Every response to the client carries `iss` (RFC 9207).
//! - `POST /oauth2/login`: the login form (CSRF-checked; attempts limited per user, or per
//!   device for a browser holding the user's device cookie; password checks bounded in
//!   number); creates `auth:session:{sha256(id)}` and the `tg_session` and `tg_device`
//!   cookies (`__Host-` prefixed over HTTPS).
//! - `POST /oauth2/consent`: the user's decision (CSRF-checked).

mod render;
mod request;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;

use crate::crypto;
use crate::form::Params;
use crate::store::{now_secs, AuthCodeRecord, ClientRecord, SessionRecord, StoreError};
use crate::users;

use crate::http::pages;
use crate::http::SharedState;

use render::*;
use request::*;
pub use request::{redirect_matches, valid_pkce_string, validate, AuthzError, AuthzRequest};

/// The logged-in user of this request (a live session of a user that still exists).
async fn current_user(
    state: &SharedState,
    headers: &HeaderMap,
) -> Result<Option<SessionRecord>, StoreError> {
    let name = pages::cookie_name(&state.cfg.issuer, pages::SESSION_COOKIE);
    let Some(sid) = pages::cookie(headers, &name) else {
        return Ok(None);
    };
    let Some(s) = state.store.get_session(&crypto::token_hash(sid)).await? else {
        return Ok(None);
    };
    // The very user who logged in: not a user re-created under the same name.
    match state.store.get_user(&s.username).await? {
        Some(u) if !s.user_id.is_empty() && u.id() == s.user_id => {}
        _ => return Ok(None),
    }
    Ok(Some(s))
}

/// Mint the code and send it to the client.
async fn issue_code(
    state: &SharedState,
    req: &AuthzRequest,
    session: &SessionRecord,
) -> Result<Response, AuthzError> {
    let code = crypto::random_b64(32);
    let rec = AuthCodeRecord {
        client_id: req.client.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        redirect_uri_given: req.redirect_given,
        scope: req.scope.clone(),
        aud: req.aud.clone(),
        sub: session.username.clone(),
        user_id: session.user_id.clone(),
        code_challenge: req.challenge.clone(),
        code_challenge_method: req.method.clone(),
        grant_id: crypto::random_b64(16),
        auth_time: session.auth_time,
        exp: now_secs() + state.cfg.auth_code_ttl,
        dpop_jkt: req.dpop_jkt.clone(),
    };
    state
        .store
        .save_auth_code(&crypto::token_hash(&code), &rec)
        .await?;
    state.stat("authorization_codes_issued");
    metrics::counter!("tollgate_authorization_codes_issued_total").increment(1);
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = req.state.as_deref() {
        params.push(("state", s));
    }
    Ok(to_client(&state.cfg.issuer, &req.redirect_uri, &params))
}

fn skip_consent(c: &ClientRecord) -> bool {
    c.metadata
        .extra
        .get("skip_consent")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// `GET/POST /oauth2/authorize`.
#[utoipa::path(
    method(get, post),
    path = "/oauth2/authorize",
    tags = ["public"],
    params(("response_type" = Option<String>, Query), ("client_id" = Option<String>, Query), ("redirect_uri" = Option<String>, Query), ("scope" = Option<String>, Query), ("state" = Option<String>, Query), ("code_challenge" = Option<String>, Query), ("code_challenge_method" = Option<String>, Query), ("dpop_jkt" = Option<String>, Query, description = "RFC 9449 §10: thumbprint of the DPoP key that must redeem the code")),
    responses(
        (status = 200, description = "the login or consent page", content_type = "text/html", body = String),
        (status = 303, description = "back to the client's redirect_uri with a code or an error"),
        (status = 400, description = "error page (the client or redirect_uri is not valid), or a malformed request", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 403, description = "error page", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        super::openapi::HeadLimits,
        (status = 415, description = "unsupported content type (POST)", body = super::openapi::ErrorBody),
        (status = 429, description = "too many requests", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "temporarily_unavailable: store unreachable or request timed out", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
    )
)]
pub async fn authorize(
    State(state): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = if method == Method::POST {
        Params::from_request(&headers, &body)
    } else {
        Params::parse(uri.query().unwrap_or("").as_bytes())
    };
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            return pages::error_page(StatusCode::BAD_REQUEST, &format!("Malformed request: {e}"))
        }
    };
    let r = async {
        let req = validate(&state, &params).await?;
        match current_user(&state, &headers).await? {
            Some(session) => {
                if skip_consent(&req.client) {
                    issue_code(&state, &req, &session).await
                } else if req.prompt_none {
                    Err(redirect_err(
                        &req.redirect_uri,
                        req.state.as_deref(),
                        "consent_required",
                        "the user has to consent",
                    ))
                } else {
                    Ok(consent_page(&state, &headers, &req, &session.username))
                }
            }
            None if req.prompt_none => Err(redirect_err(
                &req.redirect_uri,
                req.state.as_deref(),
                "login_required",
                "the user is not logged in",
            )),
            None => Ok(login_page(&state, &headers, &req, StatusCode::OK, None, "")),
        }
    }
    .await;
    r.unwrap_or_else(|e| render_error(&state, e))
}

fn csrf_failure() -> Response {
    pages::error_page(
        StatusCode::FORBIDDEN,
        "The form expired or did not come from this site (CSRF check failed). Go back to the application and start again.",
    )
}

/// The authorization request carried in a form's `authz` field.
async fn carried(state: &SharedState, form: &Params) -> Result<AuthzRequest, AuthzError> {
    let raw = form.get("authz").unwrap_or("");
    let p = Params::parse(raw.as_bytes())
        .map_err(|_| AuthzError::Page(StatusCode::BAD_REQUEST, "Malformed request.".into()))?;
    validate(state, &p).await
}

/// `POST /oauth2/login`.
#[utoipa::path(
    post,
    path = "/oauth2/login",
    tags = ["public"],
    request_body(content = super::openapi::LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "the consent page", content_type = "text/html", body = String),
        (status = 303, description = "back to the client"),
        (status = 400, description = "error page, or a malformed request", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 401, description = "the login page again: wrong username or password", content_type = "text/html", body = String),
        (status = 403, description = "error page: CSRF check failed", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        super::openapi::HeadLimits,
        (status = 415, description = "unsupported content type (POST)", body = super::openapi::ErrorBody),
        (status = 429, description = "too many requests", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "temporarily_unavailable: store unreachable or request timed out", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
    )
)]
pub async fn login(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match Params::from_request(&headers, &body) {
        Ok(p) => p,
        Err(e) => {
            return pages::error_page(StatusCode::BAD_REQUEST, &format!("Malformed request: {e}"))
        }
    };
    let csrf_use = pages::CsrfUse {
        form: "login",
        authz: form.get("authz").unwrap_or(""),
    };
    if !pages::csrf_ok(
        &state.pepper,
        &state.cfg.issuer,
        &headers,
        form.get("csrf"),
        &csrf_use,
    ) {
        state.stat("login_csrf_failures");
        return csrf_failure();
    }
    let r = async {
        let req = carried(&state, &form).await?;
        let username = form.get("username").unwrap_or("");
        let password = form.get("password").unwrap_or("");
        if username.is_empty() || password.is_empty() {
            return Ok(login_page(
                &state,
                &headers,
                &req,
                StatusCode::BAD_REQUEST,
                Some("Enter your username and password."),
                username,
            ));
        }
        // Count the attempt before checking the password, so that parallel attempts
        // cannot all run: per username, or, from a browser that signed in as this user
        // before (a genuine device cookie), per device, so that other people's failures
        // never lock the user out of a device they used. No per-IP counter: behind a proxy
        // every user has one address.
        let device = pages::device_of(&state.pepper, &state.cfg.issuer, &headers, username);
        let limit = state.cfg.rate_limit_per_ip;
        if limit > 0 {
            let key = match device {
                Some(nonce) => format!("loginfail:device:{}", crypto::token_hash(nonce)),
                None => format!("loginfail:user:{}", crypto::token_hash(username)),
            };
            let d = state.store.rate_limit(&key, limit, 60).await?;
            if !d.allowed {
                state.stat("login_rate_limited");
                metrics::counter!("tollgate_rate_limited_total", "kind" => "login").increment(1);
                let mut r = login_page(
                    &state,
                    &headers,
                    &req,
                    StatusCode::TOO_MANY_REQUESTS,
                    Some("Too many sign-in attempts for this user. Wait a minute and try again."),
                    username,
                );
                if let Ok(v) = HeaderValue::from_str(&d.reset_after.max(1).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return Ok(r);
            }
        }
        let user = if users::valid_username(username) && password.len() <= users::MAX_PASSWORD {
            state.store.get_user(username).await?
        } else {
            None
        };
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let ok = match state
            .password_checks
            .verify(password.to_string(), phc)
            .await
        {
            Ok(ok) => ok,
            Err(users::Busy) => {
                state.stat("login_busy");
                metrics::counter!("tollgate_rate_limited_total", "kind" => "password_checks")
                    .increment(1);
                let mut r = login_page(
                    &state,
                    &headers,
                    &req,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Too many people are signing in right now. Try again in a moment."),
                    username,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            }
        };
        if !ok {
            state.stat("login_failures");
            metrics::counter!("tollgate_login_failures_total").increment(1);
            return Ok(login_page(
                &state,
                &headers,
                &req,
                StatusCode::UNAUTHORIZED,
                Some("Wrong username or password."),
                username,
            ));
        }
        let now = now_secs();
        let sid = crypto::random_b64(32);
        let session = SessionRecord {
            username: username.to_string(),
            user_id: user.as_ref().map(|u| u.id()).unwrap_or_default(),
            auth_time: now,
            exp: now + state.cfg.session_ttl,
        };
        state
            .store
            .save_session(&crypto::token_hash(&sid), &session)
            .await?;
        state.stat("logins");
        tracing::info!(client_id = %req.client.client_id, "user logged in");
        let mut r = see_other(&format!(
            "{}/oauth2/authorize?{}",
            state.cfg.issuer, req.raw
        ));
        let issuer = &state.cfg.issuer;
        let cookies = [
            pages::set_cookie(
                issuer,
                &pages::cookie_name(issuer, pages::SESSION_COOKIE),
                &sid,
                state.cfg.session_ttl,
            ),
            pages::set_cookie(
                issuer,
                &pages::cookie_name(issuer, pages::DEVICE_COOKIE),
                &pages::device_value(&state.pepper, username),
                pages::DEVICE_TTL,
            ),
        ];
        for c in cookies.into_iter().flatten() {
            r.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(r)
    }
    .await;
    r.unwrap_or_else(|e| render_error(&state, e))
}

/// `POST /oauth2/consent`.
#[utoipa::path(
    post,
    path = "/oauth2/consent",
    tags = ["public"],
    request_body(content = super::openapi::ConsentForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "the login page (no session)", content_type = "text/html", body = String),
        (status = 303, description = "back to the client with a code or access_denied"),
        (status = 400, description = "error page, or a malformed request", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 403, description = "error page: CSRF check failed", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        super::openapi::HeadLimits,
        (status = 415, description = "unsupported content type (POST)", body = super::openapi::ErrorBody),
        (status = 429, description = "too many requests", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
        (status = 503, description = "temporarily_unavailable: store unreachable or request timed out", content((String = "text/html"), (super::openapi::ErrorBody = "application/json"))),
    )
)]
pub async fn consent(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Params::from_request(&headers, &body) {
        Ok(p) => p,
        Err(e) => {
            return pages::error_page(StatusCode::BAD_REQUEST, &format!("Malformed request: {e}"))
        }
    };
    let csrf_use = pages::CsrfUse {
        form: "consent",
        authz: form.get("authz").unwrap_or(""),
    };
    if !pages::csrf_ok(
        &state.pepper,
        &state.cfg.issuer,
        &headers,
        form.get("csrf"),
        &csrf_use,
    ) {
        return csrf_failure();
    }
    let r = async {
        let req = carried(&state, &form).await?;
        let Some(session) = current_user(&state, &headers).await? else {
            return Ok(login_page(&state, &headers, &req, StatusCode::OK, None, ""));
        };
        match form.get("decision") {
            Some("allow") => issue_code(&state, &req, &session).await,
            Some("deny") => Err(redirect_err(
                &req.redirect_uri,
                req.state.as_deref(),
                "access_denied",
                "the user denied the request",
            )),
            _ => Err(AuthzError::Page(
                StatusCode::BAD_REQUEST,
                "Choose Allow or Deny.".into(),
            )),
        }
    }
    .await;
    r.unwrap_or_else(|e| render_error(&state, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_matching() {
        assert!(redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb/"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example:444/cb"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb?x=1"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5555/cb"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1:80/cb",
            "http://127.0.0.1:5555/cb"
        ));
        assert!(redirect_matches("http://[::1]:1/cb", "http://[::1]:2/cb"));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.2:5555/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5555/other"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://u@127.0.0.1:5555/cb"
        ));
        assert!(!redirect_matches(
            "https://127.0.0.1/cb",
            "https://127.0.0.1:5555/cb"
        ));
    }

    #[test]
    fn pkce_strings() {
        assert!(valid_pkce_string(&"a".repeat(43)));
        assert!(!valid_pkce_string(&"a".repeat(42)));
        assert!(!valid_pkce_string(&"a".repeat(129)));
        assert!(!valid_pkce_string(&format!("{}+", "a".repeat(43))));
    }
}
