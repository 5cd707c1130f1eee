//! The few HTML pages of the authorization endpoint (login, consent, errors): minimal,
//! accessible, every value HTML-escaped, served with a strict Content-Security-Policy, no
//! framing and no caching. CSRF protection is a stateless double submit bound to its use: a
//! random nonce in a cookie, and in the form an HMAC under the pepper of that nonce, the
//! form (login or consent), the browser's session cookie and the authorization request the
//! form carries. Over HTTPS the cookies carry the `__Host-` prefix (no `Domain`, `Secure`,
//! `Path=/`), so a sibling subdomain cannot plant a nonce or a session.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto;

pub const CSRF_COOKIE: &str = "tg_csrf";
pub const SESSION_COOKIE: &str = "tg_session";
/// Set on a successful sign-in: proof that this browser signed in as a user before, which
/// lets it sign in while that user's name is locked by other people's failures.
pub const DEVICE_COOKIE: &str = "tg_device";
/// How long a device cookie is good for, seconds (30 days).
pub const DEVICE_TTL: u64 = 30 * 86_400;

/// The name a cookie has for this issuer: `__Host-<base>` over HTTPS (the browser then
/// refuses it from a subdomain or without `Secure`), `<base>` otherwise.
pub fn cookie_name(issuer: &str, base: &str) -> String {
    if issuer.starts_with("https://") {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

/// The policy of every page; `form-action` also names the client's redirect origin where a
/// form submission ends in a redirect to it (browsers check form-action on redirects), and
/// `frame-ancestors` (not covered by `default-src`) backs up `X-Frame-Options: DENY`.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#111}\
label{display:block;margin-top:1rem}input{display:block;width:100%;padding:.5rem;margin-top:.25rem;box-sizing:border-box}\
button{margin-top:1.25rem;padding:.5rem 1.25rem;margin-right:.5rem}.error{color:#a00;font-weight:600}";

/// HTML-escape text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete page.
pub fn page(
    status: StatusCode,
    title: &str,
    body_html: &str,
    extra_form_action: Option<&str>,
) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\">\
<title>{t}</title><style>{STYLE}</style></head>\
<body><main><h1>{t}</h1>{body_html}</main></body></html>\n",
        t = escape(title)
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    let csp = match extra_form_action {
        Some(src) => format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {src}; frame-ancestors 'none'"
        ),
        None => CSP.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    } else {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error page: never a redirect (used for a bad client_id or redirect_uri).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Authorization error",
        &format!(
            "<p role=\"alert\" class=\"error\">{}</p><p>Return to the application and try again.</p>",
            escape(message)
        ),
        None,
    )
}

/// The value of a cookie of the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

/// Whether cookies get `Secure`: always, except for an `http` issuer on a loopback host
/// (local development and tests).
pub fn secure_cookies(issuer: &str) -> bool {
    match url::Url::parse(issuer) {
        Ok(u) if u.scheme() == "http" => !matches!(
            u.host_str(),
            Some("127.0.0.1") | Some("[::1]") | Some("localhost")
        ),
        _ => true,
    }
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Lax; Path=/`, `Secure` unless on loopback.
pub fn set_cookie(issuer: &str, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if secure_cookies(issuer) {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

fn hmac_hex(pepper: &[u8], parts: &[&str]) -> String {
    match Hmac::<Sha256>::new_from_slice(pepper) {
        Ok(mut m) => {
            for p in parts {
                // Length-prefixed, so that no two lists of parts sign the same bytes.
                m.update(&(p.len() as u64).to_be_bytes());
                m.update(p.as_bytes());
            }
            hex::encode(m.finalize().into_bytes())
        }
        // HMAC takes keys of any length; never reached.
        Err(_) => crypto::token_hash(&parts.join("\u{0}")),
    }
}

/// What a CSRF token is good for: one form, in one browser session, for one
/// authorization request.
pub struct CsrfUse<'a> {
    /// `login` or `consent`.
    pub form: &'a str,
    /// The `authz` field: the authorization request the form carries.
    pub authz: &'a str,
}

/// The session cookie of the request ("" without one), as the CSRF token binds it.
fn session_binding(issuer: &str, headers: &HeaderMap) -> String {
    cookie(headers, &cookie_name(issuer, SESSION_COOKIE))
        .map(crypto::token_hash)
        .unwrap_or_default()
}

/// The form token for a CSRF nonce, bound to its use and the request's session cookie.
pub fn csrf_token(pepper: &[u8], nonce: &str, session: &str, u: &CsrfUse<'_>) -> String {
    hmac_hex(
        pepper,
        &["tollgate-csrf:v2", nonce, u.form, session, u.authz],
    )
}

/// The form token for the page answering `headers`, with the nonce the page uses.
pub fn csrf_token_for(
    pepper: &[u8],
    issuer: &str,
    headers: &HeaderMap,
    nonce: &str,
    u: &CsrfUse<'_>,
) -> String {
    csrf_token(pepper, nonce, &session_binding(issuer, headers), u)
}

/// Check the double submit: the form's token must be the one for the cookie's nonce, this
/// form, the request's session cookie and the authorization request posted with it.
pub fn csrf_ok(
    pepper: &[u8],
    issuer: &str,
    headers: &HeaderMap,
    form_token: Option<&str>,
    u: &CsrfUse<'_>,
) -> bool {
    match (
        cookie(headers, &cookie_name(issuer, CSRF_COOKIE)),
        form_token,
    ) {
        (Some(nonce), Some(t)) if nonce.len() >= 16 => crypto::ct_eq(
            csrf_token(pepper, nonce, &session_binding(issuer, headers), u).as_bytes(),
            t.as_bytes(),
        ),
        _ => false,
    }
}

/// The request's CSRF nonce, or a new one with the cookie that sets it.
pub fn csrf_nonce(issuer: &str, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    let name = cookie_name(issuer, CSRF_COOKIE);
    match cookie(headers, &name).filter(|n| n.len() >= 16) {
        Some(n) => (n.to_string(), None),
        None => {
            let n = crypto::random_b64(24);
            let c = set_cookie(issuer, &name, &n, 3600);
            (n, c)
        }
    }
}

/// A new device cookie value for `username`: `<nonce>.<HMAC(pepper, nonce, username)>`.
pub fn device_value(pepper: &[u8], username: &str) -> String {
    let nonce = crypto::random_b64(16);
    let mac = hmac_hex(pepper, &["tollgate-device:v1", &nonce, username]);
    format!("{nonce}.{mac}")
}

/// The nonce of the request's device cookie when it is a genuine one for `username`.
pub fn device_of<'a>(
    pepper: &[u8],
    issuer: &str,
    headers: &'a HeaderMap,
    username: &str,
) -> Option<&'a str> {
    let v = cookie(headers, &cookie_name(issuer, DEVICE_COOKIE))?;
    let (nonce, mac) = v.split_once('.')?;
    let want = hmac_hex(pepper, &["tollgate-device:v1", nonce, username]);
    crypto::ct_eq(want.as_bytes(), mac.as_bytes()).then_some(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn cookies_are_secure_except_on_loopback_http() {
        assert!(!secure_cookies("http://127.0.0.1:9080"));
        assert!(!secure_cookies("http://localhost:1"));
        assert!(secure_cookies("https://127.0.0.1"));
        assert!(secure_cookies("http://auth.example.com"));
        let c = set_cookie("https://a.example", "n", "v", 60).unwrap();
        assert_eq!(
            c.to_str().unwrap(),
            "n=v; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn csrf_double_submit() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; tg_csrf=0123456789abcdefXYZ"),
        );
        let iss = "http://127.0.0.1:9080";
        let login = CsrfUse {
            form: "login",
            authz: "client_id=a",
        };
        let t = csrf_token_for(b"p", iss, &h, "0123456789abcdefXYZ", &login);
        assert!(csrf_ok(b"p", iss, &h, Some(&t), &login));
        assert!(!csrf_ok(b"q", iss, &h, Some(&t), &login));
        assert!(!csrf_ok(b"p", iss, &h, None, &login));
        assert!(!csrf_ok(b"p", iss, &HeaderMap::new(), Some(&t), &login));
    }

    #[test]
    fn csrf_token_of_another_session_or_request_is_refused() {
        let iss = "http://127.0.0.1:9080";
        let nonce = "0123456789abcdefXYZ";
        let headers = |cookies: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_static(cookies));
            h
        };
        let mine = headers("tg_csrf=0123456789abcdefXYZ; tg_session=mine");
        let consent = CsrfUse {
            form: "consent",
            authz: "client_id=a&state=1",
        };
        let t = csrf_token_for(b"p", iss, &mine, nonce, &consent);
        assert!(csrf_ok(b"p", iss, &mine, Some(&t), &consent));
        // Another session with the same nonce.
        let other = headers("tg_csrf=0123456789abcdefXYZ; tg_session=theirs");
        assert!(!csrf_ok(b"p", iss, &other, Some(&t), &consent));
        // No session at all.
        let none = headers("tg_csrf=0123456789abcdefXYZ");
        assert!(!csrf_ok(b"p", iss, &none, Some(&t), &consent));
        // Another authorization request, or the other form.
        let other_req = CsrfUse {
            form: "consent",
            authz: "client_id=a&state=2",
        };
        assert!(!csrf_ok(b"p", iss, &mine, Some(&t), &other_req));
        let login = CsrfUse {
            form: "login",
            authz: consent.authz,
        };
        assert!(!csrf_ok(b"p", iss, &mine, Some(&t), &login));
    }

    #[test]
    fn https_cookies_carry_the_host_prefix() {
        assert_eq!(
            cookie_name("https://auth.example", CSRF_COOKIE),
            "__Host-tg_csrf"
        );
        assert_eq!(cookie_name("http://127.0.0.1:9080", CSRF_COOKIE), "tg_csrf");
        let (_, set) = csrf_nonce("https://auth.example", &HeaderMap::new());
        let set = set.unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Host-tg_csrf="), "{set}");
        assert!(set.contains("; Path=/;") && set.ends_with("; Secure") && !set.contains("Domain"));
        // A plain `tg_csrf` planted by a subdomain is not read over HTTPS.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("tg_csrf=0123456789abcdefXYZ"),
        );
        let u = CsrfUse {
            form: "login",
            authz: "",
        };
        let t = csrf_token(b"p", "0123456789abcdefXYZ", "", &u);
        assert!(!csrf_ok(b"p", "https://auth.example", &h, Some(&t), &u));
    }

    #[test]
    fn device_cookies_name_their_user() {
        let v = device_value(b"p", "alice");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("tg_device={v}")).unwrap(),
        );
        let iss = "http://127.0.0.1:9080";
        assert!(device_of(b"p", iss, &h, "alice").is_some());
        assert!(device_of(b"p", iss, &h, "bob").is_none());
        assert!(device_of(b"q", iss, &h, "alice").is_none());
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_static("tg_device=abc.0000"),
        );
        assert!(device_of(b"p", iss, &forged, "alice").is_none());
    }
}
