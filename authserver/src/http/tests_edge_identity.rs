//! Who may call the edge endpoints (`/edge/revocations`, `/edge/ratelimit/lease`) by mesh
//! identity: the last `X-Forwarded-Client-Cert` element, read only with
//! `TOLLGATE_EDGE_TRUSTED_PRINCIPALS` set and only from Istio's inbound sidecar (127.0.0.6).
//! Every test runs on the real router against the in-memory store and a real `redis-server`
//! (leases and the feed live in the store).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::tests::{assert_error, basic, App, Resp};

const GW: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const SIDECAR: ([u8; 4], u16) = ([127, 0, 0, 6], 41000);
const LEASE: &str = "/edge/ratelimit/lease";
const LEASE_BODY: &str = "key=api%3Aedge&limit=10&window_s=60&want=1";

/// What Istio's sidecar inbound listener appends for a peer certificate with URI SAN `uri`.
fn element(uri: &str) -> String {
    format!("By=spiffe://cluster.local/ns/tollgate/sa/tollgate;Hash=9f86d081884c7d65;Subject=\"\";URI={uri}")
}

async fn app(redis: bool, trusted: &[&str]) -> Option<App> {
    let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
    App::new(redis, move |c| c.edge_trusted_principals = trusted).await
}

fn router(app: &App, peer: SocketAddr) -> Router {
    super::router(app.state.clone()).layer(MockConnectInfo(peer))
}

/// A feed read and a lease from `peer` with these headers.
async fn call(app: &App, peer: SocketAddr, headers: &[(&str, &str)]) -> [Resp; 2] {
    let mut out = Vec::new();
    for lease in [false, true] {
        let mut b = if lease {
            Request::post(LEASE).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        } else {
            Request::get("/edge/revocations")
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = if lease {
            Body::from(LEASE_BODY)
        } else {
            Body::empty()
        };
        let resp = router(app, peer)
            .oneshot(b.body(body).unwrap())
            .await
            .unwrap();
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
        out.push(Resp {
            status,
            headers,
            body,
            raw,
        });
    }
    let [a, b]: [Resp; 2] = out.try_into().ok().unwrap();
    [a, b]
}

fn sidecar() -> SocketAddr {
    SocketAddr::from(SIDECAR)
}

async fn trusted_principal_through_the_sidecar_is_admitted(redis: bool) {
    let Some(app) = app(redis, &[OTHER, GW]).await else {
        return;
    };
    let x = element(GW);
    let [feed, lease] = call(&app, sidecar(), &[("x-forwarded-client-cert", &x)]).await;
    assert_eq!(
        feed.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&feed.raw)
    );
    assert!(feed.body["cursor"].is_string());
    assert_eq!(
        lease.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&lease.raw)
    );
    assert_eq!(lease.body["granted"], 1);
    // The IPv6 sidecar address and its IPv4-mapped form (a dual-stack listener).
    for peer in ["[::6]:41000", "[::ffff:127.0.0.6]:41000"] {
        let [feed, _] = call(
            &app,
            peer.parse().unwrap(),
            &[("x-forwarded-client-cert", &x)],
        )
        .await;
        assert_eq!(feed.status, StatusCode::OK, "{peer}");
    }
}

async fn forged_xfcc_is_refused(redis: bool) {
    let Some(app) = app(redis, &[GW]).await else {
        return;
    };
    let x = element(GW);
    // Not the sidecar: a pod reaching the port directly, port-forward (127.0.0.1), a remote
    // IPv6 peer. The header is not read: no credential, 401.
    for peer in [
        "10.1.2.3:5555",
        "127.0.0.1:5555",
        "[::1]:5555",
        "[2001:db8::6]:5555",
    ] {
        for r in call(
            &app,
            peer.parse().unwrap(),
            &[("x-forwarded-client-cert", &x)],
        )
        .await
        {
            assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
        }
    }
    // Trust off (no principals configured): the sidecar's header is not read either.
    let Some(off) = super::tests::App::new(redis, |_| {}).await else {
        return;
    };
    assert!(off.state.cfg.edge_trusted_principals.is_empty());
    for r in call(&off, sidecar(), &[("x-forwarded-client-cert", &x)]).await {
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
}

async fn the_last_element_wins(redis: bool) {
    let Some(app) = app(redis, &[GW]).await else {
        return;
    };
    // The client sent an element naming the gateway; the sidecar appended the real one of
    // another workload: refused.
    let x = format!("{},{}", element(GW), element(OTHER));
    for r in call(&app, sidecar(), &[("x-forwarded-client-cert", &x)]).await {
        assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    }
    // A client request the gateway forwarded (its listener appended X-Forwarded-For) comes
    // with the gateway's certificate too: not the gateway's own call.
    let x = element(GW);
    for r in call(
        &app,
        sidecar(),
        &[
            ("x-forwarded-client-cert", &x),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await
    {
        assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    }
    // The other order: the gateway's certificate is the sidecar's element.
    let x = format!("{},{}", element(OTHER), element(GW));
    for r in call(&app, sidecar(), &[("x-forwarded-client-cert", &x)]).await {
        assert_eq!(r.status, StatusCode::OK);
    }
}

async fn untrusted_principal_and_no_credential(redis: bool) {
    let Some(app) = app(redis, &[GW]).await else {
        return;
    };
    // Another workload of the mesh: 403.
    for uri in [
        OTHER,
        "",
        &format!("{GW}x"),
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-accoun",
    ] {
        let x = element(uri);
        for r in call(&app, sidecar(), &[("x-forwarded-client-cert", &x)]).await {
            assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
        }
    }
    // No XFCC and no Authorization: 401.
    for r in call(&app, sidecar(), &[]).await {
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    // An untrusted workload with a tollgate:edge client: the client credential is the caller.
    let (id, secret) = app.register(json!({"scope": "tollgate:edge"})).await;
    let x = element(OTHER);
    let auth = basic(&id, &secret);
    for r in call(
        &app,
        sidecar(),
        &[("x-forwarded-client-cert", &x), ("authorization", &auth)],
    )
    .await
    {
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.raw)
        );
    }
    // ... and a bad secret with it is still 401.
    let bad = basic(&id, "wrong-secret");
    for r in call(
        &app,
        sidecar(),
        &[("x-forwarded-client-cert", &x), ("authorization", &bad)],
    )
    .await
    {
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    // A client without the scope: 403 as before.
    let (id, secret) = app.register(json!({"scope": "read"})).await;
    let auth = basic(&id, &secret);
    for r in call(&app, sidecar(), &[("authorization", &auth)]).await {
        assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    }
}

async fn malformed_xfcc_is_400(redis: bool) {
    let Some(app) = app(redis, &[GW]).await else {
        return;
    };
    let trailing = format!("{},", element(GW));
    let unterminated = format!("Subject=\"x;{}", element(GW));
    for x in ["", "URI", &trailing, &unterminated, "URI=a=b", "=x"] {
        for r in call(&app, sidecar(), &[("x-forwarded-client-cert", x)]).await {
            assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }
    // Two header lines: Envoy writes one.
    let x = element(GW);
    for r in call(
        &app,
        sidecar(),
        &[
            ("x-forwarded-client-cert", &x),
            ("x-forwarded-client-cert", &x),
        ],
    )
    .await
    {
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Not ASCII.
    let req = Request::get("/edge/revocations")
        .header(
            "x-forwarded-client-cert",
            axum::http::HeaderValue::from_bytes(b"URI=\xff").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    let resp = router(&app, sidecar()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_memory { $( #[tokio::test] async fn $name() { super::$name(false).await; } )* }
        mod on_redis { $( #[tokio::test] async fn $name() { super::$name(true).await; } )* }
    };
}

both_stores! {
    trusted_principal_through_the_sidecar_is_admitted,
    forged_xfcc_is_refused,
    the_last_element_wins,
    untrusted_principal_and_no_credential,
    malformed_xfcc_is_400,
}
