//! DPoP (RFC 9449) at the token endpoint, on the real router, both stores: bound tokens
//! (`token_type: DPoP`, `cnf.jkt` in the JWT and in introspection), every way a proof is
//! refused (never a 500), replay, bound refresh tokens of public clients, `dpop_jkt`, server
//! nonces and clients that must use DPoP.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::test_support::*;
use super::tests::{assert_error, basic, claims, App, Resp};
use crate::dpop::testing::TestKey;
use crate::store::now_secs;

fn token_uri(app: &App) -> String {
    format!("{}/oauth2/token", app.state.cfg.issuer)
}

/// `POST /oauth2/token` with `body`, optional Basic credentials and one `DPoP` header per
/// proof.
async fn token_with(app: &App, body: &str, auth: Option<&str>, proofs: &[&str]) -> Resp {
    let mut b = Request::post("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    for p in proofs {
        b = b.header("DPoP", *p);
    }
    app.send(b.body(Body::from(body.to_string())).unwrap())
        .await
}

async fn cc_client(app: &App, extra: Value) -> String {
    let mut md = json!({"scope": "api:read"});
    if let (Value::Object(m), Value::Object(e)) = (&mut md, extra) {
        m.extend(e);
    }
    let (id, secret) = app.register(md).await;
    basic(&id, &secret)
}

async fn introspect(app: &App, auth: &str, token: &str) -> Value {
    app.form(
        "/oauth2/introspect",
        &form_body(&[("token", token)]),
        Some(auth),
    )
    .await
    .body
}

async fn client_credentials_tokens_are_bound_to_the_proof_key(app: App) {
    let auth = cc_client(&app, json!({})).await;
    let uri = token_uri(&app);
    for key in [
        TestKey::es256(),
        TestKey::eddsa(),
        TestKey::rsa(false),
        TestKey::rsa(true),
    ] {
        let proof = key.proof("POST", &uri, now_secs());
        let r = token_with(
            &app,
            "grant_type=client_credentials",
            Some(&auth),
            &[&proof],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", key.alg(), r.body);
        assert_eq!(r.body["token_type"], "DPoP");
        let at = r.body["access_token"].as_str().unwrap();
        let (_, c) = claims(at);
        assert_eq!(c["cnf"], json!({"jkt": key.jkt()}), "{}", key.alg());
        let i = introspect(&app, &auth, at).await;
        assert_eq!(i["active"], true);
        assert_eq!(i["token_type"], "DPoP");
        assert_eq!(i["cnf"], json!({"jkt": key.jkt()}));
    }
    // Without a proof: a bearer token, no cnf.
    let r = token_with(&app, "grant_type=client_credentials", Some(&auth), &[]).await;
    assert_eq!(r.body["token_type"], "Bearer");
    let at = r.body["access_token"].as_str().unwrap();
    assert!(claims(at).1.get("cnf").is_none());
    let i = introspect(&app, &auth, at).await;
    assert_eq!(i["token_type"], "Bearer");
    assert!(i.get("cnf").is_none());
}

async fn opaque_tokens_record_the_key(app: App) {
    let auth = cc_client(&app, json!({"access_token_format": "opaque"})).await;
    let key = TestKey::es256();
    let proof = key.proof("POST", &token_uri(&app), now_secs());
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&proof],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    let at = r.body["access_token"].as_str().unwrap();
    assert!(at.starts_with(crate::tokens::OPAQUE_PREFIX));
    let i = introspect(&app, &auth, at).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["cnf"], json!({"jkt": key.jkt()}));
}

async fn a_replayed_proof_is_refused(app: App) {
    let auth = cc_client(&app, json!({})).await;
    let key = TestKey::es256();
    let proof = key.proof("POST", &token_uri(&app), now_secs());
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&proof],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&proof],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    assert!(r.body["error_description"]
        .as_str()
        .unwrap()
        .contains("used before"));
    // Another client replaying it fares no better: the jti is the key's.
    let other = cc_client(&app, json!({})).await;
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&other),
        &[&proof],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
}

async fn bad_proofs_get_invalid_dpop_proof(app: App) {
    let auth = cc_client(&app, json!({})).await;
    let uri = token_uri(&app);
    let now = now_secs();
    let key = TestKey::es256();
    let other = TestKey::es256();
    let good_claims = |jti: &str| json!({"jti": jti, "htm": "POST", "htu": uri, "iat": now});
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let mut with_private = key.header();
    with_private["jwk"]["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let mut hs = key.header();
    hs["alg"] = json!("HS256");
    let revoke_uri = format!("{}/oauth2/revoke", app.state.cfg.issuer);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("wrong htm", vec![key.proof("GET", &uri, now)]),
        ("wrong htu", vec![key.proof("POST", &revoke_uri, now)]),
        (
            "another host",
            vec![key.proof("POST", "https://evil.example/oauth2/token", now)],
        ),
        ("stale iat", vec![key.proof("POST", &uri, now - 3600)]),
        ("future iat", vec![key.proof("POST", &uri, now + 3600)]),
        (
            "signed by another key",
            vec![other.jws(&key.header(), &good_claims("a"))],
        ),
        (
            "private key in jwk",
            vec![key.jws(&with_private, &good_claims("b"))],
        ),
        (
            "alg none",
            vec![format!(
                "{}.{}.",
                b64(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()})),
                b64(&good_claims("c"))
            )],
        ),
        ("alg HS256", vec![key.jws(&hs, &good_claims("d"))]),
        (
            "typ JWT",
            vec![key.jws(
                &json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk()}),
                &good_claims("e"),
            )],
        ),
        (
            "too large",
            vec![key.proof_with("POST", &uri, now, json!({"pad": "x".repeat(9000)}))],
        ),
        (
            "two DPoP headers",
            vec![key.proof("POST", &uri, now), key.proof("POST", &uri, now)],
        ),
        ("not a JWT", vec!["garbage".into()]),
        ("empty", vec![String::new()]),
    ];
    for (what, proofs) in &cases {
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let r = token_with(&app, "grant_type=client_credentials", Some(&auth), &refs).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {:?}", r.body);
        assert_eq!(
            r.body["error"], "invalid_dpop_proof",
            "{what}: {:?}",
            r.body
        );
        assert!(r.body.get("access_token").is_none(), "{what}");
    }
    // A header that is not even text.
    let r = app
        .send(
            Request::post("/oauth2/token")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::AUTHORIZATION, &auth)
                .header(
                    "DPoP",
                    axum::http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
                )
                .body(Body::from("grant_type=client_credentials"))
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    // The client is not locked out by bad proofs: a good one still works.
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&key.proof("POST", &uri, now)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn a_dpop_bound_client_must_send_a_proof(app: App) {
    let auth = cc_client(&app, json!({"dpop_bound_access_tokens": true})).await;
    let r = token_with(&app, "grant_type=client_credentials", Some(&auth), &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    let key = TestKey::eddsa();
    let proof = key.proof("POST", &token_uri(&app), now_secs());
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&proof],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    // The flag is metadata: a boolean, kept in the store and read back by the admin.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "a", "dpop_bound_access_tokens": "yes"}),
            Some(&admin()),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    let md = register(
        &app,
        json!({"scope": "a", "dpop_bound_access_tokens": true}),
    )
    .await;
    let id = md["client_id"].as_str().unwrap();
    assert_eq!(md["dpop_bound_access_tokens"], true);
    let stored = app.state.store.get_client(id).await.unwrap().unwrap();
    assert!(stored.metadata.dpop_bound_access_tokens);
}

async fn public_client_refresh_tokens_are_bound_to_the_key(app: App) {
    add_user(&app, "alice").await;
    let client = public_client(&app, json!({})).await;
    let key = TestKey::es256();
    let uri = token_uri(&app);
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&app);
    let cb = b.authorize(&authz(&client, Some(&challenge), "")).await;
    let code = query(&cb)["code"].clone();
    let body = form_body(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("client_id", &client),
        ("code_verifier", &verifier),
    ]);
    let r = token_with(&app, &body, None, &[&key.proof("POST", &uri, now_secs())]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap()).1["cnf"]["jkt"],
        key.jkt()
    );
    let rt = r.body["refresh_token"].as_str().unwrap().to_string();
    let refresh_body = form_body(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &rt),
        ("client_id", &client),
    ]);
    // Who holds the refresh token without the key gets nothing, and spends nothing.
    let r = token_with(&app, &refresh_body, None, &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    let thief = TestKey::es256();
    let r = token_with(
        &app,
        &refresh_body,
        None,
        &[&thief.proof("POST", &uri, now_secs())],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // The key holder refreshes; the new refresh token is bound to the same key.
    let r = token_with(
        &app,
        &refresh_body,
        None,
        &[&key.proof("POST", &uri, now_secs())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    let rt2 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        app.state
            .store
            .get_refresh_token(&crate::crypto::token_hash(&rt2))
            .await
            .unwrap()
            .unwrap()
            .0
            .jkt
            .as_deref(),
        Some(key.jkt().as_str())
    );
    // Introspection shows the binding of the refresh token too (RFC 9449 §6.2).
    let body = introspect_public(&app, &client, &rt2).await;
    assert_eq!(body["active"], json!(true), "{body:?}");
    assert_eq!(body["cnf"], json!({"jkt": key.jkt()}));
    let r = refresh(&app, &client, &rt2).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
}

async fn a_code_requested_with_dpop_jkt_needs_that_key(app: App) {
    add_user(&app, "alice").await;
    let client = public_client(&app, json!({})).await;
    let key = TestKey::es256();
    let uri = token_uri(&app);
    let mut b = Browser::new(&app);
    // A malformed dpop_jkt goes back to the client as invalid_request.
    let (_, challenge) = pkce();
    let r = b
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&client, Some(&challenge), "&dpop_jkt=short")
        ))
        .await;
    let q = query(&location(&r));
    assert_eq!(q["error"], "invalid_request", "{q:?}");
    let extra = format!("&dpop_jkt={}", key.jkt());
    // No proof, a proof by another key, then the right key.
    for (proof, ok) in [
        (None, false),
        (
            Some(TestKey::es256().proof("POST", &uri, now_secs())),
            false,
        ),
        (Some(key.proof("POST", &uri, now_secs())), true),
    ] {
        let (verifier, challenge) = pkce();
        let cb = b.authorize(&authz(&client, Some(&challenge), &extra)).await;
        let code = query(&cb)["code"].clone();
        let body = form_body(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client),
            ("code_verifier", &verifier),
        ]);
        let proofs: Vec<&str> = proof.iter().map(String::as_str).collect();
        let r = token_with(&app, &body, None, &proofs).await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            assert_eq!(r.body["token_type"], "DPoP");
        } else {
            assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
}

async fn confidential_refresh_tokens_are_not_bound(app: App) {
    add_user(&app, "alice").await;
    let md = register(
        &app,
        json!({
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "api:read",
            "skip_consent": true,
        }),
    )
    .await;
    let (id, secret) = (
        md["client_id"].as_str().unwrap(),
        md["client_secret"].as_str().unwrap(),
    );
    let auth = basic(id, secret);
    let key = TestKey::es256();
    let uri = token_uri(&app);
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&app);
    let cb = b.authorize(&authz(id, Some(&challenge), "")).await;
    let body = form_body(&[
        ("grant_type", "authorization_code"),
        ("code", &query(&cb)["code"]),
        ("redirect_uri", REDIRECT),
        ("code_verifier", &verifier),
    ]);
    let r = token_with(
        &app,
        &body,
        Some(&auth),
        &[&key.proof("POST", &uri, now_secs())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    // RFC 9449 §5: a confidential client's refresh token is bound by client authentication.
    let rt = r.body["refresh_token"].as_str().unwrap();
    let body = form_body(&[("grant_type", "refresh_token"), ("refresh_token", rt)]);
    let r = token_with(&app, &body, Some(&auth), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
}

async fn server_nonces_when_configured(app: App) {
    let auth = cc_client(&app, json!({})).await;
    let key = TestKey::es256();
    let uri = token_uri(&app);
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&key.proof("POST", &uri, now_secs())],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "use_dpop_nonce");
    let nonce = r.headers["dpop-nonce"].to_str().unwrap().to_string();
    let wrong = key.proof_with("POST", &uri, now_secs(), json!({"nonce": "made-up"}));
    let r = token_with(
        &app,
        "grant_type=client_credentials",
        Some(&auth),
        &[&wrong],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "use_dpop_nonce");
    let good = key.proof_with("POST", &uri, now_secs(), json!({"nonce": nonce}));
    let r = token_with(&app, "grant_type=client_credentials", Some(&auth), &[&good]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.headers.contains_key("dpop-nonce"));
    // A bad proof with a good nonce is still a bad proof.
    let bad = key.proof_with("GET", &uri, now_secs(), json!({"nonce": nonce}));
    let r = token_with(&app, "grant_type=client_credentials", Some(&auth), &[&bad]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
}

/// Token exchange with a proof: the derived token is bound to the exchanging service's key;
/// a service registered with `dpop_bound_access_tokens` cannot exchange without one.
async fn token_exchange_issues_bound_tokens(app: App) {
    const XG: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    let svc = register(
        &app,
        json!({"grant_types": [XG], "scope": "", "audience": ["https://svc"],
               "dpop_bound_access_tokens": true,
               "token_exchange": {"audiences": ["https://down"], "scopes": ["a"]}}),
    )
    .await;
    let svc_auth = basic(
        svc["client_id"].as_str().unwrap(),
        svc["client_secret"].as_str().unwrap(),
    );
    let caller = cc_client(&app, json!({"scope": "a", "audience": ["https://svc"]})).await;
    let subject = token_with(&app, "grant_type=client_credentials", Some(&caller), &[]).await;
    let subject = subject.body["access_token"].as_str().unwrap().to_string();
    let body = form_body(&[
        ("grant_type", XG),
        ("subject_token", &subject),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
    ]);
    let r = token_with(&app, &body, Some(&svc_auth), &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    let key = TestKey::rsa(true);
    let proof = key.proof("POST", &token_uri(&app), now_secs());
    let r = token_with(&app, &body, Some(&svc_auth), &[&proof]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    let (_, c) = claims(r.body["access_token"].as_str().unwrap());
    assert_eq!(c["cnf"]["jkt"], key.jkt());
    assert_eq!(c["aud"], "https://down");
}

async fn metadata_lists_the_proof_algs(app: App) {
    let r = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(
        r.body["dpop_signing_alg_values_supported"],
        json!(["ES256", "RS256", "PS256", "EdDSA"])
    );
}

store_suite! {
    client_credentials_tokens_are_bound_to_the_proof_key => |_| {},
    opaque_tokens_record_the_key => |_| {},
    a_replayed_proof_is_refused => |_| {},
    bad_proofs_get_invalid_dpop_proof => |_| {},
    a_dpop_bound_client_must_send_a_proof => |_| {},
    public_client_refresh_tokens_are_bound_to_the_key => |c| c.rate_limit_per_ip = 50,
    a_code_requested_with_dpop_jkt_needs_that_key => |c| c.rate_limit_per_ip = 50,
    confidential_refresh_tokens_are_not_bound => |c| c.rate_limit_per_ip = 50,
    server_nonces_when_configured => |c| c.dpop_nonce = true,
    token_exchange_issues_bound_tokens => |_| {},
    metadata_lists_the_proof_algs => |_| {},
}
