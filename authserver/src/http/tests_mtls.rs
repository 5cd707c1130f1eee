//! Certificate-bound access tokens (RFC 8705 §3) from the mesh: who gets a token bound to
//! which certificate, and who must not get one at all. The certificate is the `Hash` of the
//! last `X-Forwarded-Client-Cert` element, read only with `TOLLGATE_CERT_BOUND_TOKENS` and
//! only from Istio's inbound sidecar (127.0.0.6) for a request not forwarded by a gateway.
//! Every test runs on the real router against the in-memory store and a real `redis-server`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::test_support::form_body;
use super::tests::{assert_error, basic, claims, App, Resp};

const SIDECAR: ([u8; 4], u16) = ([127, 0, 0, 6], 41000);
const SIDECAR_V6: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
    41000,
);
/// SHA-256 (hex) of two workloads' certificates, as the sidecar writes them.
const CERT_A: &str = "6f1ed002ab5595859014ebf0951522d9f1d7ba7e2e6c1d4d4ab4a4e2a1b5e7c3";
const CERT_B: &str = "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8";

fn x5t(hex_digest: &str) -> String {
    URL_SAFE_NO_PAD.encode(hex::decode(hex_digest).unwrap())
}

/// What Istio's inbound sidecar appends for a caller whose certificate hashes to `hash`.
fn xfcc(hash: &str) -> String {
    format!(
        "By=spiffe://cluster.local/ns/tollgate/sa/tollgate;Hash={hash};Subject=\"\";\
         URI=spiffe://cluster.local/ns/shop/sa/cart"
    )
}

async fn app(redis: bool, on: bool) -> Option<App> {
    App::new(redis, move |c| c.cert_bound_tokens = on).await
}

async fn bound_client(app: &App) -> String {
    let (id, secret) = app
        .register(
            json!({"scope": "api:read", "grant_types": ["client_credentials"],
                         "tls_client_certificate_bound_access_tokens": true}),
        )
        .await;
    basic(&id, &secret)
}

/// A client_credentials token request from `peer` with extra headers.
async fn token(app: &App, peer: SocketAddr, auth: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, auth);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = form_body(&[("grant_type", "client_credentials")]);
    app.public_from(peer, b.body(Body::from(body)).unwrap())
        .await
}

async fn introspect(app: &App, auth: &str, tok: &str) -> Value {
    app.form(
        "/oauth2/introspect",
        &form_body(&[("token", tok)]),
        Some(auth),
    )
    .await
    .body
}

async fn bound_to_the_sidecars_certificate(redis: bool) {
    let Some(app) = app(redis, true).await else {
        return;
    };
    let auth = bound_client(&app).await;
    for peer in [SocketAddr::from(SIDECAR), SIDECAR_V6] {
        // The sidecar appends its element after whatever the caller sent: the last wins.
        let chain = format!(
            "Hash={CERT_B};URI=spiffe://cluster.local/ns/x/sa/y,{}",
            xfcc(CERT_A)
        );
        for h in [xfcc(CERT_A), chain] {
            let r = token(&app, peer, &auth, &[("x-forwarded-client-cert", &h)]).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            assert_eq!(
                r.body["token_type"], "Bearer",
                "RFC 8705 keeps the Bearer scheme"
            );
            let at = r.body["access_token"].as_str().unwrap();
            let (_, c) = claims(at);
            assert_eq!(c["cnf"], json!({"x5t#S256": x5t(CERT_A)}));
            let i = introspect(&app, &auth, at).await;
            assert_eq!(i["active"], true);
            assert_eq!(i["cnf"], json!({"x5t#S256": x5t(CERT_A)}));
        }
    }
    let meta = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(
        meta.body["tls_client_certificate_bound_access_tokens"],
        true
    );
}

/// No certificate the server may trust: no token (an unbound one would be a bearer token
/// the client asked never to get).
async fn no_trusted_certificate_no_token(redis: bool) {
    let Some(app) = app(redis, true).await else {
        return;
    };
    let auth = bound_client(&app).await;
    let h = xfcc(CERT_A);
    let not_sidecar = SocketAddr::from(([127, 0, 0, 1], 40000));
    let pod_ip = SocketAddr::from(([10, 1, 2, 3], 40000));
    for (peer, headers) in [
        // no header from the sidecar
        (SocketAddr::from(SIDECAR), vec![]),
        // forged: the header from a peer that is not the sidecar (port-forward, a pod)
        (not_sidecar, vec![("x-forwarded-client-cert", h.as_str())]),
        (pod_ip, vec![("x-forwarded-client-cert", h.as_str())]),
        // a request a gateway forwarded carries the gateway's certificate, not the client's
        (
            SocketAddr::from(SIDECAR),
            vec![
                ("x-forwarded-client-cert", h.as_str()),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        ),
        // the sidecar's element without a Hash, or a Hash that is no SHA-256
        (
            SocketAddr::from(SIDECAR),
            vec![(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/shop/sa/cart",
            )],
        ),
        (
            SocketAddr::from(SIDECAR),
            vec![("x-forwarded-client-cert", "Hash=abcd")],
        ),
    ] {
        let r = token(&app, peer, &auth, &headers).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("certificate"));
    }
    // Two XFCC headers: someone else wrote one.
    let req = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, &auth)
        .header("x-forwarded-client-cert", xfcc(CERT_A))
        .header("x-forwarded-client-cert", xfcc(CERT_B))
        .body(Body::from("grant_type=client_credentials"))
        .unwrap();
    let r = app.public_from(SocketAddr::from(SIDECAR), req).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(r.body["error_description"]
        .as_str()
        .unwrap()
        .contains("repeated"));
}

/// A client that did not ask for binding gets an unbound token, XFCC or not.
async fn unbound_clients_are_unchanged(redis: bool) {
    let Some(app) = app(redis, true).await else {
        return;
    };
    let (id, secret) = app
        .register(json!({"scope": "api:read", "grant_types": ["client_credentials"]}))
        .await;
    let auth = basic(&id, &secret);
    let r = token(
        &app,
        SocketAddr::from(SIDECAR),
        &auth,
        &[("x-forwarded-client-cert", &xfcc(CERT_A))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (_, c) = claims(r.body["access_token"].as_str().unwrap());
    assert!(c.get("cnf").is_none(), "{c}");
}

/// With binding off, a client cannot be registered for it (nor given it later), and the
/// server does not advertise it.
async fn off_by_default(redis: bool) {
    let Some(app) = app(redis, false).await else {
        return;
    };
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "a", "grant_types": ["client_credentials"],
                     "tls_client_certificate_bound_access_tokens": true}),
            Some(&super::test_support::admin()),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let meta = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(
        meta.body["tls_client_certificate_bound_access_tokens"],
        false
    );
}

/// The flag is a privilege: a client cannot turn it off with its own registration token
/// (that would make its tokens bearer tokens again), nor set a non-boolean.
async fn only_the_admin_changes_the_flag(redis: bool) {
    let Some(app) = app(redis, true).await else {
        return;
    };
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "a", "grant_types": ["client_credentials"],
                     "tls_client_certificate_bound_access_tokens": true}),
            Some(&super::test_support::admin()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (uri, rat) = (
        r.body["registration_client_uri"]
            .as_str()
            .unwrap()
            .to_string(),
        r.body["registration_access_token"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let path = url::Url::parse(&uri)
        .map(|u| u.path().to_string())
        .unwrap_or(uri);
    let mut md = r.body.clone();
    for k in [
        "client_secret",
        "registration_access_token",
        "registration_client_uri",
        "client_id_issued_at",
        "client_secret_expires_at",
    ] {
        md.as_object_mut().unwrap().remove(k);
    }
    md["tls_client_certificate_bound_access_tokens"] = json!(false);
    let r = app
        .json("PUT", &path, md, Some(&format!("Bearer {rat}")))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "a", "tls_client_certificate_bound_access_tokens": "yes"}),
            Some(&super::test_support::admin()),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
}

/// The metadata of a client_credentials client authenticating with `method`, plus `extra`.
fn certificate_client(method: &str, extra: Value) -> Value {
    let mut m = json!({"scope": "api:read", "grant_types": ["client_credentials"],
                       "token_endpoint_auth_method": method});
    if let (Value::Object(a), Value::Object(b)) = (&mut m, extra) {
        a.extend(b);
    }
    m
}

/// RFC 8705 §2.2 `self_signed_tls_client_auth`: registered certificates in `jwks` (`x5c`),
/// needs the TLS listener; the client authenticates with a registered certificate only.
async fn self_signed_certificate_clients(redis: bool) {
    use super::tls::PeerCertificate;
    use base64::engine::general_purpose::STANDARD;
    let Some(off) = app(redis, false).await else {
        return;
    };
    let cert: Vec<u8> = [0x30u8]
        .into_iter()
        .chain((0..200u8).map(|i| i.wrapping_mul(7)))
        .collect();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x5c": [STANDARD.encode(&cert)]}]});
    let md = |extra: Value| certificate_client("self_signed_tls_client_auth", extra);
    let admin = super::test_support::admin();
    // Without the TLS listener the method is refused (and not advertised).
    let r = off
        .json(
            "POST",
            "/oauth2/register",
            md(json!({"jwks": jwks})),
            Some(&admin),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let meta = off
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert!(!meta.body["token_endpoint_auth_methods_supported"]
        .to_string()
        .contains("self_signed"));

    let Some(app) = App::new(redis, |c| {
        c.tls = Some(crate::config::TlsListen {
            addr: SocketAddr::from(([127, 0, 0, 1], 9443)),
            cert: "unused.pem".into(),
            key: "unused.key".into(),
            client_ca: None,
        })
    })
    .await
    else {
        return;
    };
    for bad in [
        json!({}),
        json!({"jwks": {"keys": [{"kty": "EC"}]}}),
        json!({"jwks": {"keys": [{"x5c": ["not base64!"]}]}}),
        json!({"jwks": {"keys": [{"x5c": [STANDARD.encode(b"short")]}]}}),
    ] {
        let r = app
            .json("POST", "/oauth2/register", md(bad.clone()), Some(&admin))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    }
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            md(json!({"jwks": jwks})),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.body.get("client_secret").is_none());
    let id = r.body["client_id"].as_str().unwrap().to_string();
    let token = |presented: Option<PeerCertificate>| {
        let mut b = Request::post("/oauth2/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(p) = presented {
            b = b.extension(p);
        }
        b.body(Body::from(form_body(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
        ])))
        .unwrap()
    };
    let r = app.public(token(Some(PeerCertificate::of(&cert)))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for other in [None, Some(PeerCertificate::of(b"another certificate"))] {
        let r = app.public(token(other)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
}

/// RFC 8705 §2.1 `tls_client_auth`: the client registers one subject; a certificate of
/// `TOLLGATE_TLS_CLIENT_CA` carrying it authenticates the client on the TLS listener. Who
/// must not get in: no certificate, a self-signed one with the same subject, another CA's,
/// the CA's with another subject, a secret; and the client cannot change its subject itself.
async fn ca_issued_certificate_clients(redis: bool) {
    use super::tls::PeerCertificate;
    use crate::testutil::{ca, client};
    use rustls_pki_types::UnixTime;
    let admin = super::test_support::admin();
    let spiffe = "spiffe://cluster.local/ns/shop/sa/orders";
    let md = |extra: Value| certificate_client("tls_client_auth", extra);
    let listener = |client_ca: Option<&str>| crate::config::TlsListen {
        addr: SocketAddr::from(([127, 0, 0, 1], 9443)),
        cert: "unused.pem".into(),
        key: "unused.key".into(),
        client_ca: client_ca.map(Into::into),
    };
    // A TLS listener without client CAs neither offers nor registers the method.
    let Some(no_ca) = App::new(redis, |c| c.tls = Some(listener(None))).await else {
        return;
    };
    let r = no_ca
        .json(
            "POST",
            "/oauth2/register",
            md(json!({"tls_client_auth_san_uri": spiffe})),
            Some(&admin),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let meta = no_ca
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    let methods = meta.body["token_endpoint_auth_methods_supported"].to_string();
    assert!(!methods.contains("\"tls_client_auth\""), "{methods}");

    let Some(app) = App::new(redis, |c| c.tls = Some(listener(Some("ca.pem")))).await else {
        return;
    };
    let meta = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    let methods = meta.body["token_endpoint_auth_methods_supported"].to_string();
    assert!(methods.contains("\"tls_client_auth\""), "{methods}");
    for bad in [
        json!({}),
        json!({"tls_client_auth_san_uri": spiffe, "tls_client_auth_san_dns": "orders.shop.svc"}),
        json!({"tls_client_auth_san_uri": "not a uri"}),
        json!({"tls_client_auth_subject_dn": "client-a"}),
        json!({"tls_client_auth_san_ip": "10.1.2"}),
    ] {
        let r = app
            .json("POST", "/oauth2/register", md(bad.clone()), Some(&admin))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    }
    // A subject field with another method is refused rather than ignored.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "api:read", "grant_types": ["client_credentials"],
                   "tls_client_auth_san_uri": spiffe}),
            Some(&admin),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");

    let r = app
        .json(
            "POST",
            "/oauth2/register",
            md(json!({"tls_client_auth_san_uri": spiffe,
                      "tls_client_certificate_bound_access_tokens": true})),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.body.get("client_secret").is_none());
    let id = r.body["client_id"].as_str().unwrap().to_string();
    let rat = r.body["registration_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/oauth2/register/{id}");

    let (trusted, other) = (ca("trusted"), ca("other"));
    let ca = crate::pki::ClientCa::from_pem(trusted.cert.pem().as_bytes()).unwrap();
    let now = UnixTime::now();
    let presented = |chain: rustls_pki_types::CertificateDer<'static>| {
        PeerCertificate::from_chain(&[chain], Some(&ca), now)
    };
    let request =
        |uri: &str, form: &[(&str, &str)], p: Option<PeerCertificate>, auth: Option<&str>| {
            let mut b = Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(p) = p {
                b = b.extension(p);
            }
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(Body::from(form_body(form))).unwrap()
        };
    let grant = [
        ("grant_type", "client_credentials"),
        ("client_id", id.as_str()),
    ];

    let good = client(&trusted, |_| {});
    let r = app
        .public(request(
            "/oauth2/token",
            &grant,
            presented(good.clone()),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let tok = r.body["access_token"].as_str().unwrap().to_string();
    // Authenticated by the certificate and bound to it.
    let digest = PeerCertificate::of(good.as_ref()).sha256;
    assert_eq!(
        claims(&tok).1["cnf"]["x5t#S256"],
        json!(URL_SAFE_NO_PAD.encode(digest))
    );
    // The same certificate authenticates the client at introspection.
    let r = app
        .public(request(
            "/oauth2/introspect",
            &[("token", &tok), ("client_id", &id)],
            presented(good.clone()),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["active"], json!(true));

    let self_signed = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
        p.self_signed(&key).unwrap().der().clone()
    };
    let refused: Vec<(&str, Option<PeerCertificate>)> = vec![
        ("no certificate", None),
        ("self-signed, same SAN", presented(self_signed)),
        ("another CA's, same SAN", presented(client(&other, |_| {}))),
        (
            "the CA's, another workload",
            presented(client(&trusted, |p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    "spiffe://cluster.local/ns/shop/sa/cart".try_into().unwrap(),
                )];
            })),
        ),
        (
            "the right certificate, unverified",
            Some(PeerCertificate::of(good.as_ref())),
        ),
    ];
    for (what, p) in refused {
        let r = app.public(request("/oauth2/token", &grant, p, None)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
        assert!(r.body.get("access_token").is_none(), "{what}");
    }
    // No secret to guess: Basic credentials for the client are refused.
    let r = app
        .public(request(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            presented(good.clone()),
            Some(&basic(&id, "anything")),
        ))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");

    // The registered subject is the client's credential: only the admin changes it.
    let current = app.get(&path, Some(&format!("Bearer {rat}"))).await;
    assert_eq!(current.status, StatusCode::OK, "{:?}", current.body);
    let mut md2 = current.body.clone();
    for k in [
        "registration_client_uri",
        "client_id_issued_at",
        "client_secret_expires_at",
    ] {
        md2.as_object_mut().unwrap().remove(k);
    }
    md2["tls_client_auth_san_uri"] = json!("spiffe://cluster.local/ns/shop/sa/cart");
    let r = app
        .json("PUT", &path, md2.clone(), Some(&format!("Bearer {rat}")))
        .await;
    assert!(r.status.is_client_error(), "{:?}", r.body);
    let r = app
        .public(request("/oauth2/token", &grant, presented(good), None))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.json("PUT", &path, md2, Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_memory { $( #[tokio::test] async fn $name() { super::$name(false).await; } )* }
        mod on_redis { $( #[tokio::test] async fn $name() { super::$name(true).await; } )* }
    };
}

both_stores! {
    bound_to_the_sidecars_certificate,
    no_trusted_certificate_no_token,
    unbound_clients_are_unchanged,
    off_by_default,
    only_the_admin_changes_the_flag,
    self_signed_certificate_clients,
    ca_issued_certificate_clients,
}
