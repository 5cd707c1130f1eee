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

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::crypto;
use crate::form::Params;
use crate::grants::{client_has_grant, granted_audience, granted_scope};
use crate::store::{now_secs, AuthCodeRecord, ClientRecord, SessionRecord, StoreError};
use crate::users;

use super::pages::{self, escape};
use super::SharedState;

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
const CARRIED: &[&str] = &[
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

fn is_loopback_host(h: Option<&str>) -> bool {
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

fn redirect_err(
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

/// A redirect to the client with `params` (and `iss`) added to its redirect URI.
fn to_client(issuer: &str, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
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

fn see_other(location: &str) -> Response {
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

fn render_error(state: &SharedState, e: AuthzError) -> Response {
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
fn form_action_source(redirect_uri: &str) -> Option<String> {
    let u = url::Url::parse(redirect_uri).ok()?;
    let src = match u.scheme() {
        "http" | "https" => u.origin().ascii_serialization(),
        s => format!("{s}:"),
    };
    src.bytes()
        .all(|c| c.is_ascii_graphic() && c != b';' && c != b',' && c != b'\'')
        .then_some(src)
}

fn with_cookie(mut r: Response, c: Option<HeaderValue>) -> Response {
    if let Some(c) = c {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn client_label(c: &ClientRecord) -> String {
    c.metadata
        .client_name
        .clone()
        .unwrap_or_else(|| c.client_id.clone())
}

fn login_page(
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

fn page_or(status: StatusCode, title: &str, body: &str, src: Option<&str>) -> Response {
    pages::page(status, title, body, src)
}

fn consent_page(
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
