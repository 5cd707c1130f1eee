//! The few HTML pages of the authorization endpoint (login, consent, errors): minimal,
//! accessible, every value HTML-escaped, served with a strict Content-Security-Policy, no
//! framing and no caching. CSRF protection is a stateless double submit: a random nonce in
//! a cookie and HMAC(pepper, nonce) in the form.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto;

pub const CSRF_COOKIE: &str = "tg_csrf";
pub const SESSION_COOKIE: &str = "tg_session";

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

/// The form token that goes with a CSRF nonce.
pub fn csrf_token(pepper: &[u8], nonce: &str) -> String {
    match Hmac::<Sha256>::new_from_slice(pepper) {
        Ok(mut m) => {
            m.update(b"tollgate-csrf:");
            m.update(nonce.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
        // HMAC takes keys of any length; never reached.
        Err(_) => crypto::token_hash(nonce),
    }
}

/// Check the double submit: the cookie's nonce and the form's token must agree.
pub fn csrf_ok(pepper: &[u8], headers: &HeaderMap, form_token: Option<&str>) -> bool {
    match (cookie(headers, CSRF_COOKIE), form_token) {
        (Some(nonce), Some(t)) if nonce.len() >= 16 => {
            crypto::ct_eq(csrf_token(pepper, nonce).as_bytes(), t.as_bytes())
        }
        _ => false,
    }
}

/// The request's CSRF nonce, or a new one with the cookie that sets it.
pub fn csrf_nonce(issuer: &str, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE).filter(|n| n.len() >= 16) {
        Some(n) => (n.to_string(), None),
        None => {
            let n = crypto::random_b64(24);
            let c = set_cookie(issuer, CSRF_COOKIE, &n, 3600);
            (n, c)
        }
    }
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
        let t = csrf_token(b"p", "0123456789abcdefXYZ");
        assert!(csrf_ok(b"p", &h, Some(&t)));
        assert!(!csrf_ok(b"q", &h, Some(&t)));
        assert!(!csrf_ok(b"p", &h, None));
        assert!(!csrf_ok(b"p", &HeaderMap::new(), Some(&t)));
    }
}
