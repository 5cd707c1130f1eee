//! Hostile input through the real router and the real connection loop (`server::serve`):
//! repeated single-valued headers and parameters, bodies too large or too slow, JSON that
//! is ambiguous or too deep, values never echoed, panics, slow heads. The end-to-end
//! counterpart over the release binary is `tests/e2e/test_hostile_authserver.py`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::{serve, ConnLimits};
use super::tests::{assert_error, basic, App, ADMIN};

async fn app() -> App {
    App::new(false, |_| {}).await.unwrap()
}

fn form(path: &str) -> axum::http::request::Builder {
    Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
}

#[tokio::test]
async fn repeated_authorization_or_content_type_is_invalid_request() {
    let app = app().await;
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let body = "grant_type=client_credentials";
    for extra in [
        (header::AUTHORIZATION, basic(&id, &secret)),
        (header::AUTHORIZATION, format!("Bearer {ADMIN}")),
        (header::CONTENT_TYPE, "text/plain".to_string()),
    ] {
        let req = form("/oauth2/token")
            .header(header::AUTHORIZATION, basic(&id, &secret))
            .header(extra.0, extra.1)
            .body(Body::from(body))
            .unwrap();
        let r = app.send(req).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("repeated"));
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_announced_or_not() {
    let app = App::new(false, |c| c.max_body_bytes = 1024).await.unwrap();
    // Announced: refused before a byte of the body is read.
    let req = form("/oauth2/token")
        .header(header::CONTENT_LENGTH, "1000000000")
        .body(Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >()))
        .unwrap();
    let r = app.send(req).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request");
    assert_eq!(r.headers.get(header::CONNECTION).unwrap(), "close");
    // Streamed without a length: cut at the limit.
    let chunks = (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 512])));
    let req = form("/oauth2/token")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_error(
        &app.send(req).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );
}

#[tokio::test]
async fn a_body_that_never_completes_is_408_not_503() {
    let app = App::new(false, |c| c.request_timeout_ms = 300)
        .await
        .unwrap();
    let req = form("/oauth2/token")
        .header(header::CONTENT_LENGTH, "30")
        .body(Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >()))
        .unwrap();
    let r = app.send(req).await;
    assert_error(&r, StatusCode::REQUEST_TIMEOUT, "invalid_request");
    assert_eq!(r.headers.get(header::CONNECTION).unwrap(), "close");
}

#[tokio::test]
async fn registration_json_that_is_ambiguous_or_too_deep_is_invalid_client_metadata() {
    let app = app().await;
    let admin = format!("Bearer {ADMIN}");
    let deep = "[".repeat(10_000);
    for body in [
        r#"{"scope":"a","grant_types":["client_credentials"],"scope":"admin"}"#,
        r#"{"jwks":{"keys":[{"kty":"EC","kty":"RSA"}]}}"#,
        deep.as_str(),
        r#"{"client_name":"#,
    ] {
        let req = Request::post("/oauth2/register")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, &admin)
            .body(Body::from(body.to_string()))
            .unwrap();
        assert_error(
            &app.send(req).await,
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
        );
    }
    // The admin user API is not RFC 7591: plain invalid_request there.
    let req = Request::post("/admin/users")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, &admin)
        .body(Body::from(
            r#"{"username":"a","username":"b","password":"pw-12345678"}"#,
        ))
        .unwrap();
    assert_error(
        &app.send(req).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

#[tokio::test]
async fn the_revocation_feed_query_is_strict() {
    let app = app().await;
    let admin = format!("Bearer {ADMIN}");
    for q in ["since=1&since=2", "limit=5&limit=5", "since=%ff", "since=%"] {
        let r = app
            .get(&format!("/edge/revocations?{q}"), Some(&admin))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let r = app
        .get("/edge/revocations?since=&limit=10", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn unsupported_values_are_not_echoed() {
    let app = app().await;
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let auth = basic(&id, &secret);
    let r = app
        .form(
            "/oauth2/token",
            &format!("grant_type={secret}"),
            Some(&auth),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    assert!(!String::from_utf8_lossy(&r.raw).contains(&secret));
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token=x&token_type_hint={secret}"),
            Some(&auth),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "unsupported_token_type");
    assert!(!String::from_utf8_lossy(&r.raw).contains(&secret));
}

#[test]
fn a_panic_becomes_a_plain_server_error() {
    let r = super::panicked(Box::new("index out of bounds at src/secret.rs:1"));
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let r = super::panicked(Box::new(String::from("boom")));
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// The connection loop with short limits, on a free port.
async fn served(limits: ConnLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = app().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = super::router(app.state.clone());
    tokio::spawn(serve(listener, router, limits, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn the_connection_loop_enforces_the_head_limits() {
    let limits = ConnLimits {
        header_timeout: Duration::from_millis(300),
        send_timeout: Duration::from_secs(5),
        max_header_bytes: 2048,
        max_headers: 10,
        max_connections: 64,
    };
    let (addr, _stop) = served(limits).await;
    // A complete request is served; handlers get the peer address (ConnectInfo).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n\
          grant_type=client_credentials",
    )
    .await
    .unwrap();
    let got = read_to_end(&mut s).await;
    assert!(got.starts_with(b"HTTP/1.1 401"), "{got:?}");
    // A head that never completes: closed by the server, without an answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let got = read_to_end(&mut s).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(start.elapsed() < Duration::from_secs(9), "not closed");
    // An idle connection too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_end(&mut s).await.is_empty());
    // Too large a head, too many headers: 431.
    for req in [
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4096)
        ),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..20).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let got = read_to_end(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 431"), "{got:?}");
    }
}
