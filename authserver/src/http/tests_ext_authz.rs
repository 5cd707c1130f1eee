//! `/edge/authz`, Envoy `ext_authz`'s check service: who may ask (a gateway by mesh identity
//! or with a `tollgate:edge` client in `X-Tollgate-Edge-Authorization`) and which tokens pass
//! (active access tokens of this server that are not sender-constrained). Every test runs on
//! the real router against the in-memory store and a real `redis-server`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::json;

use super::tests::{assert_error, basic, App, Resp};

const GW: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const SIDECAR: ([u8; 4], u16) = ([127, 0, 0, 6], 41000);
const ELSEWHERE: ([u8; 4], u16) = ([10, 0, 0, 9], 41000);

async fn check(
    app: &App,
    peer: impl Into<SocketAddr>,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    app.public_from(peer.into(), b.body(Body::empty()).unwrap())
        .await
}

/// `/edge/authz` as the gateway with its client credentials `gw` asks it about `bearer`.
async fn as_gateway(app: &App, gw: &str, bearer: &str) -> Resp {
    check(
        app,
        ELSEWHERE,
        "/edge/authz",
        &[
            ("authorization", bearer),
            ("x-tollgate-edge-authorization", gw),
        ],
    )
    .await
}

fn xfcc(uri: &str) -> String {
    format!("By=spiffe://cluster.local/ns/tollgate/sa/tollgate;Hash=9f86d081884c7d65;Subject=\"\";URI={uri}")
}

async fn ext_authz(redis: bool) {
    let Some(app) = App::new(redis, |c| c.edge_trusted_principals = vec![GW.to_string()]).await
    else {
        return;
    };
    let (gw_id, gw_secret) = app
        .register(json!({"scope": "tollgate:edge", "grant_types": ["client_credentials"]}))
        .await;
    let gw = basic(&gw_id, &gw_secret);
    let (id, secret) = app
        .register(json!({"scope": "api:read", "grant_types": ["client_credentials"]}))
        .await;
    let r = app.token(&id, &secret, "").await;
    let tok = r.body["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {tok}");

    // The gateway with its client: 200 and the identity, for any method and path.
    let r = check(
        &app,
        ELSEWHERE,
        "/edge/authz/api/orders?x=1",
        &[
            ("authorization", &bearer),
            ("x-tollgate-edge-authorization", &gw),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["x-tollgate-client-id"], id.as_str());
    assert_eq!(r.headers["x-tollgate-sub"], id.as_str());
    assert_eq!(r.headers["x-tollgate-scope"], "api:read");
    // By mesh identity from the sidecar, no credentials.
    let r = check(
        &app,
        SIDECAR,
        "/edge/authz",
        &[
            ("authorization", &bearer),
            ("x-forwarded-client-cert", &xfcc(GW)),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Who must not ask: nobody, the token's own client, a client without tollgate:edge, a
    // wrong secret, an untrusted mesh identity, a trusted one not from the sidecar, the
    // token in the gateway's header (the client's token is not the gateway's credential).
    type Case<'a> = (Vec<(&'a str, String)>, SocketAddr, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("authorization", bearer.clone())],
            ELSEWHERE.into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("x-tollgate-edge-authorization", basic(&id, &secret)),
            ],
            ELSEWHERE.into(),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("x-tollgate-edge-authorization", basic(&gw_id, "wrong")),
            ],
            ELSEWHERE.into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                (
                    "x-forwarded-client-cert",
                    xfcc("spiffe://cluster.local/ns/shop/sa/cart"),
                ),
            ],
            SIDECAR.into(),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("x-forwarded-client-cert", xfcc(GW)),
            ],
            ELSEWHERE.into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("x-tollgate-edge-authorization", bearer.clone())],
            ELSEWHERE.into(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![
                ("authorization", bearer.clone()),
                ("x-tollgate-edge-authorization", gw.clone()),
                ("x-tollgate-edge-authorization", gw.clone()),
            ],
            ELSEWHERE.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (headers, peer, status, code) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = check(&app, peer, "/edge/authz/api", &h).await;
        assert_error(&r, status, code);
        assert!(r.headers.get("x-tollgate-sub").is_none(), "{headers:?}");
    }

    // Which tokens must not pass: none, another scheme, garbage, a forged one, a refresh-like
    // string, a revoked one, one of a deleted client.
    let forged = format!("{}AAAA", &tok[..tok.len() - 4]);
    for auth in [
        None,
        Some(format!("Basic {tok}")),
        Some("Bearer not-a-token".into()),
        Some(format!("Bearer {forged}")),
        Some("Bearer ".into()),
    ] {
        let mut h = vec![("x-tollgate-edge-authorization", gw.as_str())];
        if let Some(a) = auth.as_deref() {
            h.push(("authorization", a));
        }
        let r = check(&app, ELSEWHERE, "/edge/authz", &h).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
        assert!(r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer "));
    }
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token={tok}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = as_gateway(&app, &gw, &bearer).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");

    let r = app.token(&id, &secret, "").await;
    let second = format!("Bearer {}", r.body["access_token"].as_str().unwrap());
    let ok = as_gateway(&app, &gw, &second).await;
    assert_eq!(ok.status, StatusCode::OK);
    let r = app
        .send(
            Request::delete(format!("/oauth2/register/{id}"))
                .header(header::AUTHORIZATION, super::test_support::admin())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let r = as_gateway(&app, &gw, &second).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
}

/// A sender-constrained token is refused: ext_authz cannot check its proof of possession.
async fn sender_constrained_tokens_are_refused(redis: bool) {
    let Some(app) = App::new(redis, |c| c.cert_bound_tokens = true).await else {
        return;
    };
    let (gw_id, gw_secret) = app
        .register(json!({"scope": "tollgate:edge", "grant_types": ["client_credentials"]}))
        .await;
    let (id, secret) = app
        .register(
            json!({"scope": "api:read", "grant_types": ["client_credentials"],
                         "tls_client_certificate_bound_access_tokens": true}),
        )
        .await;
    let hash = "6f1ed002ab5595859014ebf0951522d9f1d7ba7e2e6c1d4d4ab4a4e2a1b5e7c3";
    let r = app
        .public_from(
            SocketAddr::from(SIDECAR),
            Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, basic(&id, &secret))
                .header(
                    "x-forwarded-client-cert",
                    format!("Hash={hash};URI=spiffe://cluster.local/ns/shop/sa/cart"),
                )
                .body(Body::from("grant_type=client_credentials"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let bearer = format!("Bearer {}", r.body["access_token"].as_str().unwrap());
    let r = as_gateway(&app, &basic(&gw_id, &gw_secret), &bearer).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_memory { $( #[tokio::test] async fn $name() { super::$name(false).await; } )* }
        mod on_redis { $( #[tokio::test] async fn $name() { super::$name(true).await; } )* }
    };
}

both_stores! {
    ext_authz,
    sender_constrained_tokens_are_refused,
}
