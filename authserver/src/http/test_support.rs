//! What the HTTP test files share: the per-store suite macro (every test against the
//! in-memory store and a real `redis-server`), a browser with a cookie jar, and the
//! fixtures of the user-facing flows (users, public clients, the code flow, client
//! assertions).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::tests::{App, Resp, ADMIN};

/// Run each `async fn name(app: App)` of the invoking module twice, as
/// `on_memory::name` and `on_redis::name` (skipped without `redis-server`, failed with
/// `TOLLGATE_REQUIRE_REDIS=1`), on an [`App`] built with a configuration change: one for
/// all (`config: |c| ...; name, ...`) or one per test (`name => |c| ..., ...`).
macro_rules! store_suite {
    (config: $tweak:expr; $($name:ident),* $(,)?) => {
        $crate::http::test_support::store_suite! { $($name => $tweak),* }
    };
    ($($name:ident => $tweak:expr),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let app = super::App::new(false, $tweak).await.unwrap();
                    super::$name(app).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(app) = super::App::new(true, $tweak).await else { return };
                    super::$name(app).await;
                }
            )*
        }
    };
}
pub(super) use store_suite;

pub(super) const PASSWORD: &str = "correct horse battery staple";
pub(super) const REDIRECT: &str = "http://127.0.0.1/cb";

pub(super) fn admin() -> String {
    format!("Bearer {ADMIN}")
}

pub(super) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) fn form_body(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of a hidden input in a page.
pub(super) fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

pub(super) fn html(r: &Resp) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

/// Cookies set by a response: name -> value (a malformed `Set-Cookie` fails the test).
fn set_cookies(r: &Resp) -> HashMap<String, String> {
    r.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            let (k, v) = v.split(';').next().unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub(super) fn location(r: &Resp) -> url::Url {
    let l = r
        .headers
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location; status {} body {}", r.status, html(r)));
    url::Url::parse(l.to_str().unwrap()).unwrap()
}

pub(super) fn query(u: &url::Url) -> HashMap<String, String> {
    u.query_pairs().into_owned().collect()
}

pub(super) fn pkce() -> (String, String) {
    let verifier = crate::crypto::random_b64(48);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A browser-ish client of the in-process router: a cookie jar and an optional
/// `X-Forwarded-For`.
pub(super) struct Browser<'a> {
    app: &'a App,
    pub(super) jar: HashMap<String, String>,
    pub(super) xff: Option<String>,
}

impl<'a> Browser<'a> {
    pub(super) fn new(app: &'a App) -> Self {
        Browser {
            app,
            jar: HashMap::new(),
            xff: None,
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, b: axum::http::request::Builder, body: String) -> Resp {
        let mut b = b;
        if !self.jar.is_empty() {
            b = b.header(header::COOKIE, self.cookie_header());
        }
        if let Some(x) = &self.xff {
            b = b.header("x-forwarded-for", x.as_str());
        }
        let r = self.app.send(b.body(Body::from(body)).unwrap()).await;
        self.jar.extend(set_cookies(&r));
        r
    }

    pub(super) async fn get(&mut self, path: &str) -> Resp {
        self.send(Request::get(path), String::new()).await
    }

    pub(super) async fn post(&mut self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        self.send(
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            form_body(pairs),
        )
        .await
    }

    /// Open the authorization URL; the login page it shows: (csrf, authz).
    pub(super) async fn login_form(&mut self, authz_query: &str) -> (String, String) {
        let page = self.get(&format!("/oauth2/authorize?{authz_query}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", html(&page));
        let body = html(&page);
        assert!(body.contains("name=\"username\""), "{body}");
        (
            hidden(&body, "csrf").unwrap(),
            hidden(&body, "authz").unwrap(),
        )
    }

    /// Open the authorization URL, and log in on the page it shows.
    pub(super) async fn login(&mut self, authz_query: &str, user: &str, password: &str) -> Resp {
        let (csrf, authz) = self.login_form(authz_query).await;
        self.post(
            "/oauth2/login",
            &[
                ("csrf", &csrf),
                ("authz", &authz),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }

    /// Log in and follow to the code; returns the redirect to the client.
    pub(super) async fn authorize(&mut self, authz_query: &str) -> url::Url {
        if self.jar.contains_key("tg_session") {
            let r = self.get(&format!("/oauth2/authorize?{authz_query}")).await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
            return location(&r);
        }
        let r = self.login(authz_query, "alice", PASSWORD).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
        assert!(self.jar.contains_key("tg_session"));
        let next = location(&r);
        let r = self
            .get(&format!("{}?{}", next.path(), next.query().unwrap_or("")))
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
        location(&r)
    }
}

pub(super) async fn add_user(app: &App, name: &str) {
    let r = app
        .json(
            "POST",
            "/admin/users",
            json!({"username": name, "password": PASSWORD}),
            Some(&admin()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

pub(super) async fn register(app: &App, md: Value) -> Value {
    let r = app
        .json("POST", "/oauth2/register", md, Some(&admin()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

/// A public (PKCE) client for the code flow with refresh tokens, first-party.
pub(super) async fn public_client(app: &App, extra: Value) -> String {
    let mut md = json!({
        "client_name": "SPA",
        "redirect_uris": [REDIRECT, "https://app.example/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        "scope": "api:read api:write",
        "skip_consent": true,
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut md, extra) {
        m.extend(e);
    }
    register(app, md).await["client_id"]
        .as_str()
        .unwrap()
        .to_string()
}

pub(super) fn authz(client_id: &str, challenge: Option<&str>, extra: &str) -> String {
    let mut q = format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&scope=api%3Aread&state=xyz%2F%3D1",
        enc(REDIRECT)
    );
    if let Some(c) = challenge {
        q.push_str(&format!("&code_challenge={c}&code_challenge_method=S256"));
    }
    q.push_str(extra);
    q
}

pub(super) async fn redeem(app: &App, client_id: &str, code: &str, verifier: Option<&str>) -> Resp {
    let mut pairs = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("client_id", client_id),
    ];
    if let Some(v) = verifier {
        pairs.push(("code_verifier", v));
    }
    app.form("/oauth2/token", &form_body(&pairs), None).await
}

pub(super) async fn refresh(app: &App, client_id: &str, rt: &str) -> Resp {
    app.form(
        "/oauth2/token",
        &form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client_id),
        ]),
        None,
    )
    .await
}

pub(super) async fn introspect_public(app: &App, client_id: &str, token: &str) -> Value {
    app.form(
        "/oauth2/introspect",
        &form_body(&[("token", token), ("client_id", client_id)]),
        None,
    )
    .await
    .body
}

pub(super) async fn feed_jtis(app: &App) -> Vec<String> {
    let r = app.get("/edge/revocations", Some(&admin())).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["jti"].as_str().unwrap().to_string())
        .collect()
}

/// Log in, get a code and redeem it: (access token, refresh token).
pub(super) async fn full_code_flow(app: &App, client_id: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(app);
    let cb = b.authorize(&authz(client_id, Some(&challenge), "")).await;
    let code = query(&cb)["code"].clone();
    let r = redeem(app, client_id, &code, Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    (
        r.body["access_token"].as_str().unwrap().to_string(),
        r.body["refresh_token"].as_str().unwrap().to_string(),
    )
}

/// A signed client assertion.
pub(super) fn assertion(
    pem: &str,
    alg: jsonwebtoken::Algorithm,
    kid: &str,
    claims: Value,
) -> String {
    let key = match alg {
        jsonwebtoken::Algorithm::ES256 => {
            jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
        }
        jsonwebtoken::Algorithm::EdDSA => {
            jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()
        }
        _ => jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}
