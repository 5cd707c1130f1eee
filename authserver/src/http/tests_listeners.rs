//! The public/admin listener split (docs/contracts.md, "Listeners"): what each listener
//! serves, what it must answer 404 for whoever asks, and the connection loop's own answers
//! (head limits, connection limit) in the uniform JSON error shape.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::{serve, ConnLimits};
use super::tests::{assert_error, App, ADMIN};

async fn app() -> App {
    App::new(false, |_| {}).await.unwrap()
}

fn req(method: &Method, path: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method.clone()).uri(path);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    if *method == Method::POST || *method == Method::PUT {
        b = b.header(header::CONTENT_TYPE, "application/json");
        return b.body(Body::from("{}")).unwrap();
    }
    b.body(Body::empty()).unwrap()
}

/// Every operation of the admin listener except RFC 7592 self-service.
const ADMIN_ONLY: &[(&str, &str)] = &[
    ("GET", "/admin/clients"),
    ("GET", "/admin/stats"),
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("GET", "/admin/users/alice"),
    ("DELETE", "/admin/users/alice"),
    ("POST", "/oauth2/register"),
    ("GET", "/metrics"),
];

/// Every operation of the public listener that the admin listener does not serve.
const PUBLIC_ONLY: &[(&str, &str)] = &[
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/openid-configuration"),
    ("GET", "/oauth2/jwks"),
    ("GET", "/oauth2/authorize"),
    ("POST", "/oauth2/authorize"),
    ("POST", "/oauth2/login"),
    ("POST", "/oauth2/consent"),
    ("POST", "/oauth2/token"),
    ("POST", "/oauth2/introspect"),
    ("POST", "/oauth2/revoke"),
    ("GET", "/edge/revocations"),
    ("POST", "/edge/ratelimit/lease"),
    ("GET", "/edge/module.wasm"),
    ("GET", "/edge/module.wasm.sha256"),
    ("GET", "/readyz"),
];

#[tokio::test]
async fn admin_routes_answer_404_on_the_public_listener_even_with_the_admin_token() {
    let app = app().await;
    let admin = format!("Bearer {ADMIN}");
    for (m, path) in ADMIN_ONLY {
        let m: Method = m.parse().unwrap();
        for auth in [Some(admin.as_str()), None] {
            let r = app.public(req(&m, path, auth)).await;
            assert_error(&r, StatusCode::NOT_FOUND, "not_found");
        }
    }
    // Nothing was created through the public listener.
    let r = app
        .admin(req(&Method::GET, "/admin/clients", Some(&admin)))
        .await;
    assert_eq!(r.body["clients"], json!([]), "{:?}", r.body);
    // ... and they are served on the admin listener (a 404 there is the handler's).
    for (m, path) in ADMIN_ONLY {
        let m: Method = m.parse().unwrap();
        let r = app.admin(req(&m, path, Some(&admin))).await;
        assert_ne!(
            r.body["error_description"], "no such endpoint",
            "{m} {path}"
        );
    }
}

#[tokio::test]
async fn public_routes_answer_404_on_the_admin_listener() {
    let app = app().await;
    let admin = format!("Bearer {ADMIN}");
    for (m, path) in PUBLIC_ONLY {
        let m: Method = m.parse().unwrap();
        let r = app.admin(req(&m, path, Some(&admin))).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    }
    // The liveness probe is on both.
    for r in [
        app.admin(req(&Method::GET, "/healthz", None)).await,
        app.public(req(&Method::GET, "/healthz", None)).await,
    ] {
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_admin_token_manages_no_client_on_the_public_listener() {
    let app = app().await;
    let admin = format!("Bearer {ADMIN}");
    let r = app
        .admin(
            Request::post("/oauth2/register")
                .header(header::AUTHORIZATION, &admin)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"scope": "a"}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["client_id"].as_str().unwrap().to_string();
    let rat = format!(
        "Bearer {}",
        r.body["registration_access_token"].as_str().unwrap()
    );
    let path = format!("/oauth2/register/{id}");
    // The admin token on the public listener: the answer of any wrong token, nothing done.
    for m in [Method::GET, Method::PUT, Method::DELETE] {
        let r = app.public(req(&m, &path, Some(&admin))).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
    }
    // A method the route does not have is still 405, with the admin token too.
    let r = app.public(req(&Method::POST, &path, Some(&admin))).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    // The client's own registration access token works there (RFC 7592) ...
    let r = app.public(req(&Method::GET, &path, Some(&rat))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["client_id"], id.as_str());
    // ... and the admin token on the admin listener.
    let r = app.admin(req(&Method::GET, &path, Some(&admin))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.admin(req(&Method::DELETE, &path, Some(&admin))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_admin_listener_still_requires_the_admin_token() {
    let app = app().await;
    for (m, path) in ADMIN_ONLY {
        if *path == "/metrics" {
            continue;
        }
        let m: Method = m.parse().unwrap();
        for auth in [None, Some("Bearer not-the-admin-token-at-all")] {
            let r = app.admin(req(&m, path, auth)).await;
            assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
        }
    }
    let r = app.admin(req(&Method::GET, "/metrics", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

/// A router on a real socket with `limits`.
async fn served(
    router: axum::Router,
    limits: ConnLimits,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, limits, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn limits(max_connections: usize) -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        max_header_bytes: 2048,
        max_headers: 10,
        max_connections,
    }
}

#[tokio::test]
async fn too_large_a_request_head_gets_the_uniform_json_error() {
    let app = App::new(false, |c| {
        c.max_header_bytes = 2048;
        c.max_headers = 10;
    })
    .await
    .unwrap();
    let (addr, _stop) = served(super::router(app.state.clone()), limits(64)).await;
    for request in [
        // Over TOLLGATE_MAX_HEADER_BYTES, under hyper's hard limit.
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2500)
        ),
        // Over TOLLGATE_MAX_HEADERS, likewise.
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..12).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()
        ),
    ] {
        let got = exchange(addr, request.as_bytes()).await;
        assert!(got.starts_with("HTTP/1.1 431"), "{got}");
        assert!(got.contains("content-type: application/json"), "{got}");
        assert!(got.contains("\"error\":\"invalid_request\""), "{got}");
        assert!(got.contains("connection: close"), "{got}");
    }
    // At the limit: served.
    let got = exchange(
        addr,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1800)
        )
        .as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_json_503() {
    let app = app().await;
    let (addr, _stop) = served(super::router(app.state.clone()), limits(2)).await;
    // Two keep-alive connections, each served once and kept open: both slots taken.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let got = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("content-type: application/json"), "{got}");
    assert!(got.contains("retry-after: 1"), "{got}");
    assert!(
        got.contains("\"error\":\"temporarily_unavailable\""),
        "{got}"
    );
    // A slot frees when a connection ends: served again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if got.starts_with("HTTP/1.1 200") {
            break;
        }
        // The server sees the close asynchronously; until then it still refuses.
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
