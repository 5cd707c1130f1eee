//! HTTP tests of every endpoint, success and error cases, against both stores. The router
//! runs in-process (the real axum stack, middleware included); the Redis variant talks to a
//! real `redis-server`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::Config;
use crate::state::AppState;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Store, StoreUrl};
use crate::testutil::RedisServer;

use super::test_support::store_suite;

pub(super) const ADMIN: &str = "test-admin-token-0123456789";

/// Both listeners' routers in-process. [`App::send`] takes a request to the listener its
/// caller would use (see [`App::admin_bound`]); `public`/`admin` reach one listener only.
pub(super) struct App {
    pub(super) router: Router,
    pub(super) admin: Router,
    pub(super) state: Arc<AppState>,
    pub(super) _redis: Option<RedisServer>,
}

pub(super) struct Resp {
    pub(super) status: StatusCode,
    pub(super) headers: axum::http::HeaderMap,
    pub(super) body: Value,
    pub(super) raw: Vec<u8>,
}

pub(super) fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

impl App {
    pub(super) async fn new(redis: bool, tweak: impl FnOnce(&mut Config)) -> Option<App> {
        let mut cfg = Config::for_tests();
        tweak(&mut cfg);
        let (store, server): (Arc<dyn Store>, _) = if redis {
            let server = RedisServer::start()?;
            let s = RedisStore::connect(
                &StoreUrl::parse(&server.url(0)).unwrap(),
                RedisOptions::default(),
            )
            .await
            .unwrap();
            (Arc::new(s), Some(server))
        } else {
            (Arc::new(MemoryStore::default()), None)
        };
        let state = AppState::new(cfg, store).await.unwrap();
        Some(App::from_state(state, server))
    }

    pub(super) fn from_state(state: Arc<AppState>, redis: Option<RedisServer>) -> App {
        let peer = MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000)));
        App {
            router: super::router(state.clone()).layer(peer),
            admin: super::admin_router(state.clone()).layer(peer),
            state,
            _redis: redis,
        }
    }

    /// Whether an operator's request goes to the admin listener: the admin API, `/metrics`,
    /// registration, and client management with the admin token (docs/contracts.md).
    pub(super) fn admin_bound(req: &Request<Body>) -> bool {
        let path = req.uri().path();
        let admin_token = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {ADMIN}").as_bytes());
        path.starts_with("/admin/")
            || path == "/metrics"
            || path == "/oauth2/register"
            || (path.starts_with("/oauth2/register/") && admin_token)
    }

    /// A request to the listener its caller would use.
    pub(super) async fn send(&self, req: Request<Body>) -> Resp {
        if App::admin_bound(&req) {
            self.send_to(&self.admin, req).await
        } else {
            self.send_to(&self.router, req).await
        }
    }

    /// A request to the public listener only.
    pub(super) async fn public(&self, req: Request<Body>) -> Resp {
        self.send_to(&self.router, req).await
    }

    /// A request to the admin listener only.
    pub(super) async fn admin(&self, req: Request<Body>) -> Resp {
        self.send_to(&self.admin, req).await
    }

    /// A request to the public listener from another TCP peer (e.g. Istio's inbound
    /// sidecar, 127.0.0.6).
    pub(super) async fn public_from(&self, peer: SocketAddr, req: Request<Body>) -> Resp {
        let router = super::router(self.state.clone()).layer(MockConnectInfo(peer));
        self.send_to(&router, req).await
    }

    async fn send_to(&self, router: &Router, req: Request<Body>) -> Resp {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            raw,
        }
    }

    pub(super) async fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        let mut b = Request::get(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    pub(super) async fn delete(&self, path: &str, auth: Option<&str>) -> Resp {
        let mut b = Request::delete(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    pub(super) async fn form(&self, path: &str, body: &str, auth: Option<&str>) -> Resp {
        let mut b =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        self.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub(super) async fn json(
        &self,
        method: &str,
        path: &str,
        body: Value,
        auth: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        self.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }

    pub(super) async fn register(&self, md: Value) -> (String, String) {
        let r = self
            .json(
                "POST",
                "/oauth2/register",
                md,
                Some(&format!("Bearer {ADMIN}")),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        (
            r.body["client_id"].as_str().unwrap().to_string(),
            r.body["client_secret"].as_str().unwrap().to_string(),
        )
    }

    pub(super) async fn token(&self, id: &str, secret: &str, extra: &str) -> Resp {
        self.form(
            "/oauth2/token",
            &format!("grant_type=client_credentials{extra}"),
            Some(&basic(id, secret)),
        )
        .await
    }
}

pub(super) fn claims(jwt: &str) -> (Value, Value) {
    let mut p = jwt.split('.');
    let h = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

pub(super) fn assert_error(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.raw)
    );
    assert_eq!(
        r.body["error"],
        code,
        "body: {}",
        String::from_utf8_lossy(&r.raw)
    );
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
}

async fn metadata_and_jwks(app: App) {
    let r = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let iss = app.state.cfg.issuer.clone();
    assert_eq!(r.body["issuer"], iss);
    assert_eq!(r.body["token_endpoint"], format!("{iss}/oauth2/token"));
    // Registration is on the admin listener only: the public issuer advertises none.
    assert!(
        r.body.get("registration_endpoint").is_none(),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["jwks_uri"], format!("{iss}/oauth2/jwks"));
    let r = app.get("/.well-known/openid-configuration", None).await;
    assert_eq!(r.body["issuer"], iss);
    let r = app.get("/oauth2/jwks", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["alg"], "ES256");
    assert!(keys[0].get("d").is_none(), "no private part");
}

async fn client_credentials_issues_a_verifiable_rfc9068_token(app: App) {
    let (id, secret) = app
        .register(json!({"client_name": "svc", "scope": "api:read api:write"}))
        .await;
    let r = app.token(&id, &secret, "&scope=api%3Aread").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    assert_eq!(r.body["scope"], "api:read");
    assert!(r.body.get("refresh_token").is_none());
    let at = r.body["access_token"].as_str().unwrap();
    let (h, c) = claims(at);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "ES256");
    for k in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "scope",
    ] {
        assert!(c.get(k).is_some(), "claim {k} missing");
    }
    assert_eq!(c["sub"], id.as_str());
    assert_eq!(c["aud"], "tollgate");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 900);
    // Verify offline with the published JWKS.
    let jwks = app.get("/oauth2/jwks", None).await.body;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find(h["kid"].as_str().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["tollgate"]);
    v.set_issuer(&[app.state.cfg.issuer.as_str()]);
    jsonwebtoken::decode::<Value>(at, &key, &v).unwrap();

    // client_secret_post for a client registered for it.
    let (pid, psecret) = app
        .register(json!({"token_endpoint_auth_method": "client_secret_post", "scope": "a"}))
        .await;
    let r = app
        .form(
            "/oauth2/token",
            &format!("grant_type=client_credentials&client_id={pid}&client_secret={psecret}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["scope"], "a", "no scope asked: the registered scope");
}

async fn token_endpoint_errors(app: App) {
    let (id, secret) = app.register(json!({"scope": "a b"})).await;
    // Client authentication.
    let r = app.token(&id, "wrong", "").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(r
        .headers
        .get(header::WWW_AUTHENTICATE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    assert_error(
        &app.token("nobody", &secret, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &app.form("/oauth2/token", "grant_type=client_credentials", None)
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &app.form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some("Bearer x"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &app.form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some("Basic %%%"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // Registered for basic, tried post.
    assert_error(
        &app.form(
            "/oauth2/token",
            &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // Two methods at once.
    assert_error(
        &app.form(
            "/oauth2/token",
            &format!("grant_type=client_credentials&client_secret={secret}"),
            Some(&basic(&id, &secret)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // Grant and parameters.
    assert_error(
        &app.form("/oauth2/token", "scope=a", Some(&basic(&id, &secret)))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &app.form(
            "/oauth2/token",
            "grant_type=password&username=a&password=b",
            Some(&basic(&id, &secret)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    assert_error(
        &app.token(&id, &secret, "&scope=c").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_error(
        &app.token(&id, &secret, "&scope=a%22").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_error(
        &app.token(&id, &secret, "&scope=a&scope=b").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &app.token(&id, &secret, "&resource=https%3A%2F%2Fother")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );
    assert_error(
        &app.token(&id, &secret, "&x=%zz").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // Malformed bodies.
    let r = app
        .send(
            Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, basic(&id, &secret))
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let r = app
        .send(
            Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, basic(&id, &secret))
                .body(Body::from(vec![b'a', b'=', 0xff, 0xfe]))
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(70_000));
    assert_error(
        &app.form("/oauth2/token", &big, Some(&basic(&id, &secret)))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
    // Wrong method, unknown path.
    let r = app.get("/oauth2/token", None).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    assert!(r.headers.get(header::ALLOW).is_some());
    assert_error(
        &app.get("/nope", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // No client_credentials grant registered.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"grant_types": ["authorization_code"], "redirect_uris": ["https://app.example/cb"]}),
            Some(&format!("Bearer {ADMIN}")),
        )
        .await;
    let (cid, csecret) = (
        r.body["client_id"].as_str().unwrap().to_string(),
        r.body["client_secret"].as_str().unwrap().to_string(),
    );
    assert_error(
        &app.token(&cid, &csecret, "").await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    );
}

async fn registration_management(app: App) {
    let admin = format!("Bearer {ADMIN}");
    // Protected.
    let r = app.json("POST", "/oauth2/register", json!({}), None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
    assert!(r
        .headers
        .get(header::WWW_AUTHENTICATE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_error(
        &app.json(
            "POST",
            "/oauth2/register",
            json!({}),
            Some("Bearer wrong-token-xxxxxxxx"),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // Bad bodies.
    let r = app
        .send(
            Request::post("/oauth2/register")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, &admin)
                .body(Body::from(r#"{"scope":"a","scope":"b"}"#))
                .unwrap(),
        )
        .await;
    // A member given twice: which value counts would be a guess (RFC 7591 §3.2.2).
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let r = app
        .send(
            Request::post("/oauth2/register")
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::AUTHORIZATION, &admin)
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request");
    assert_error(
        &app.json(
            "POST",
            "/oauth2/register",
            json!({"grant_types": ["password"]}),
            Some(&admin),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_client_metadata",
    );
    assert_error(
        &app.json(
            "POST",
            "/oauth2/register",
            json!({"grant_types": ["authorization_code"], "redirect_uris": ["http://evil.example/cb"]}),
            Some(&admin),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_redirect_uri",
    );
    // Create, read with the registration access token, update, delete.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"client_name": "svc", "scope": "a", "client_id": "chosen"}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["client_id"].as_str().unwrap().to_string();
    assert_ne!(id, "chosen", "the server assigns client ids");
    let secret = r.body["client_secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 43, "256-bit secret");
    let rat = format!(
        "Bearer {}",
        r.body["registration_access_token"].as_str().unwrap()
    );
    let uri = format!("/oauth2/register/{id}");
    assert_eq!(
        r.body["registration_client_uri"],
        format!("{}{uri}", app.state.cfg.issuer)
    );

    let r = app.get(&uri, Some(&rat)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["client_name"], "svc");
    assert!(
        r.body.get("client_secret").is_none(),
        "the secret is shown once"
    );
    assert_eq!(app.get(&uri, Some(&admin)).await.status, StatusCode::OK);
    assert_error(
        &app.get(&uri, Some("Bearer not-the-token")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_error(
        &app.get("/oauth2/register/unknown", Some(&rat)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_error(
        &app.get("/oauth2/register/unknown", Some(&admin)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // The client renames itself; widening its scope needs the admin token (the negative
    // cases are in tests_escalation.rs).
    let r = app
        .json(
            "PUT",
            &uri,
            json!({"client_id": id, "client_name": "svc2", "scope": "a"}),
            Some(&rat),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["client_name"], "svc2");
    let r = app
        .json(
            "PUT",
            &uri,
            json!({"client_id": id, "client_name": "svc2", "scope": "a b"}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["scope"], "a b");
    assert_error(
        &app.json(
            "PUT",
            &uri,
            json!({"client_id": "other", "scope": "a"}),
            Some(&rat),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_eq!(
        app.token(&id, &secret, "&scope=b").await.status,
        StatusCode::OK
    );

    let r = app
        .send(
            Request::delete(&uri)
                .header(header::AUTHORIZATION, &rat)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(
        &app.token(&id, &secret, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let r = app.get("/admin/clients", Some(&admin)).await;
    assert!(!r.body["clients"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == id.as_str()));
}

async fn introspection(app: App) {
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let (other, osecret) = app.register(json!({"scope": "b"})).await;
    let (rs, rsecret) = app.register(json!({"scope": "tollgate:introspect"})).await;
    let at = app.token(&id, &secret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["client_id"], id.as_str());
    assert_eq!(r.body["scope"], "a");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["iss"], app.state.cfg.issuer.as_str());
    // Another ordinary client learns nothing; a resource server with the scope does.
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&basic(&other, &osecret)),
        )
        .await;
    assert_eq!(r.body, json!({"active": false}));
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&basic(&rs, &rsecret)),
        )
        .await;
    assert_eq!(r.body["active"], true);
    // Garbage, a forged token with a real jti, and no credentials.
    for t in ["garbage", "a.b.c", "tg_at_nope"] {
        let r = app
            .form(
                "/oauth2/introspect",
                &format!("token={t}"),
                Some(&basic(&id, &secret)),
            )
            .await;
        assert_eq!(r.body, json!({"active": false}), "{t}");
    }
    let (h, c) = {
        let mut p = at.split('.');
        (p.next().unwrap().to_string(), p.next().unwrap().to_string())
    };
    let forged = format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={forged}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"active": false}),
        "a forged signature is never active"
    );
    assert_error(
        &app.form("/oauth2/introspect", &format!("token={at}"), None)
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &app.form("/oauth2/introspect", "", Some(&basic(&id, &secret)))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // Expired tokens are inactive.
    let (sid, ssecret) = app
        .register(json!({"scope": "a", "access_token_ttl": 1}))
        .await;
    let short = app.token(&sid, &ssecret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={short}"),
            Some(&basic(&sid, &ssecret)),
        )
        .await;
    assert_eq!(r.body, json!({"active": false}));
    // Opaque tokens.
    let (oid, osec) = app
        .register(json!({"scope": "a", "access_token_format": "opaque"}))
        .await;
    let opaque = app.token(&oid, &osec, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(opaque.starts_with("tg_at_"));
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={opaque}"),
            Some(&basic(&oid, &osec)),
        )
        .await;
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["client_id"], oid.as_str());
}

async fn revocation_and_feed(app: App) {
    let admin = format!("Bearer {ADMIN}");
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let (other, osecret) = app.register(json!({"scope": "a"})).await;
    let (edge, esecret) = app.register(json!({"scope": "tollgate:edge"})).await;
    let feed0 = app
        .get("/edge/revocations", Some(&basic(&edge, &esecret)))
        .await;
    assert_eq!(feed0.status, StatusCode::OK);
    assert_eq!(feed0.body["resync"], true);
    let cursor = feed0.body["cursor"].as_str().unwrap().to_string();

    let at = app.token(&id, &secret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, c) = claims(&at);
    // Not this client's token: refused.
    assert_error(
        &app.form(
            "/oauth2/revoke",
            &format!("token={at}"),
            Some(&basic(&other, &osecret)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    );
    assert_error(
        &app.form(
            "/oauth2/revoke",
            &format!("token={at}&token_type_hint=saml"),
            Some(&basic(&id, &secret)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unsupported_token_type",
    );
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token={at}&token_type_hint=access_token"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Unknown tokens: 200 as RFC 7009 says.
    assert_eq!(
        app.form(
            "/oauth2/revoke",
            "token=whatever",
            Some(&basic(&id, &secret))
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.body, json!({"active": false}));

    let r = app
        .get(
            &format!("/edge/revocations?since={cursor}"),
            Some(&basic(&edge, &esecret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["resync"], false);
    let revs = r.body["revocations"].as_array().unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0]["jti"], c["jti"]);
    assert_eq!(revs[0]["exp"], c["exp"]);
    let next = r.body["cursor"].as_str().unwrap().to_string();
    let r = app
        .get(&format!("/edge/revocations?since={next}"), Some(&admin))
        .await;
    assert_eq!(r.body["revocations"].as_array().unwrap().len(), 0);
    // Feed access control and input validation.
    assert_error(
        &app.get("/edge/revocations", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &app.get("/edge/revocations", Some(&basic(&id, &secret)))
            .await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    );
    assert_error(
        &app.get("/edge/revocations?since=abc", Some(&admin)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &app.get("/edge/revocations?limit=0", Some(&admin)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

/// A JWT whose record is gone (a Redis failover can lose the last unreplicated records) is
/// still revoked, by its verified claims, and only by its own client.
async fn revocation_without_a_record(app: App) {
    let admin = format!("Bearer {ADMIN}");
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let (other, osecret) = app.register(json!({"scope": "a"})).await;
    let at = app.token(&id, &secret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, c) = claims(&at);
    let exp = c["exp"].as_u64().unwrap();
    // The cleanup pass at the token's expiry drops its record: the record is lost.
    app.state.store.cleanup(exp, 0).await.unwrap();
    let jti = c["jti"].as_str().unwrap();
    assert_eq!(app.state.store.get_access_token(jti).await.unwrap().0, None);
    assert_error(
        &app.form(
            "/oauth2/revoke",
            &format!("token={at}"),
            Some(&basic(&other, &osecret)),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
    );
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token={at}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(app.state.store.is_revoked(jti).await.unwrap());
    let feed = app.get("/edge/revocations", Some(&admin)).await;
    let listed: Vec<&str> = feed.body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["jti"].as_str())
        .collect();
    assert_eq!(listed, vec![jti]);
    // Another jti under the same signature is not ours: nothing more is revoked.
    let mut forged_claims = c.clone();
    forged_claims["jti"] = json!("forged-jti");
    let parts: Vec<&str> = at.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged_claims.to_string()),
        parts[2]
    );
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token={forged}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let feed = app.get("/edge/revocations", Some(&admin)).await;
    assert_eq!(feed.body["revocations"].as_array().unwrap().len(), 1);
}

async fn rate_limits(app: App) {
    // Per-client limit of 3 a minute.
    let (id, secret) = app
        .register(json!({"scope": "a", "rate_limit_per_minute": 3}))
        .await;
    for _ in 0..3 {
        assert_eq!(app.token(&id, &secret, "").await.status, StatusCode::OK);
    }
    let r = app.token(&id, &secret, "").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    // Failed authentications per (client_id, IP) (limit 20 in this app).
    let (id2, secret2) = app.register(json!({"scope": "a"})).await;
    let mut limited = false;
    for _ in 0..30 {
        let r = app.token(&id2, "wrong", "").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert!(
        limited,
        "failed authentications of one client from one IP are limited"
    );
    // The right secret is still accepted: failures never lock a client with the right
    // credentials out (issue 12: behind a sidecar every caller has one IP).
    assert_eq!(app.token(&id2, &secret2, "").await.status, StatusCode::OK);
}

async fn health_and_metrics(app: App) {
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["store"], "ok");
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    app.token(&id, &secret, "").await;
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.raw).unwrap();
    assert!(text.contains("tollgate_http_requests_total"), "{text}");
    assert!(text.contains("tollgate_tokens_issued_total"));
    assert!(!text.contains(&secret), "no secret in metrics");
    let r = app
        .get("/admin/stats", Some(&format!("Bearer {ADMIN}")))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["auth_stats"]["tokens_issued"].as_i64().unwrap() >= 1);
    assert!(r.body["live_tokens"].as_u64().unwrap() >= 1);
}

store_suite! {
    config: |c| c.rate_limit_per_ip = 20;
    metadata_and_jwks,
    client_credentials_issues_a_verifiable_rfc9068_token,
    token_endpoint_errors,
    registration_management,
    introspection,
    revocation_and_feed,
    revocation_without_a_record,
    rate_limits,
    health_and_metrics,
}

#[tokio::test]
async fn admin_api_is_off_without_a_token() {
    let app = App::new(false, |c| c.admin_token = None).await.unwrap();
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({}),
            Some("Bearer anything-at-all-long"),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
}

#[tokio::test]
async fn unreachable_store_answers_503_not_500() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::connect(
        &StoreUrl::parse(&server.url(0)).unwrap(),
        RedisOptions {
            response_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let state = AppState::new(Config::for_tests(), Arc::new(store))
        .await
        .unwrap();
    drop(server); // Redis goes away
    let app = App::from_state(state, None);
    let r = app
        .form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some(&basic("a", "b")),
        )
        .await;
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    assert_eq!(
        app.get("/readyz", None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
}
