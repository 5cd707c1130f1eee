//! HTTP tests of the user-facing flows and of every protection around them: authorization
//! code + PKCE, login (CSRF, brute-force limit), consent, code replay, refresh rotation and
//! family revocation, token exchange, private_key_jwt, the users admin API, and key
//! rotation across replicas. Every test runs against the in-memory store and a real
//! `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};

use super::test_support::*;
use super::tests::{assert_error, basic, claims, App, Resp};
use crate::config::Config;
use crate::keys::{self, SigningAlg};
use crate::state::AppState;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{now_secs, Store, StoreUrl};
use crate::testutil::RedisServer;

// ------------------------------------------------------------------------------ tests

async fn code_flow_with_pkce_and_refresh_rotation(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&app);

    // The login page: strict headers, the form fields, the CSRF cookie.
    let page = b
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&cid, Some(&challenge), "")
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
        "{csp}"
    );
    assert!(
        csp.ends_with("form-action 'self' http://127.0.0.1; frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let csrf_cookie = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("tg_csrf="))
        .unwrap();
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Lax"));
    assert!(
        !csrf_cookie.contains("Secure"),
        "loopback http issuer: no Secure"
    );

    let r = b
        .login(&authz(&cid, Some(&challenge), ""), "alice", PASSWORD)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    let session_cookie = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("tg_session="))
        .unwrap();
    assert!(session_cookie.contains("HttpOnly; SameSite=Lax"));
    assert!(session_cookie.contains("Path=/"));
    let next = location(&r);
    assert_eq!(next.path(), "/oauth2/authorize");
    let r = b
        .get(&format!("/oauth2/authorize?{}", next.query().unwrap()))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let cb = location(&r);
    let q = query(&cb);
    assert_eq!(
        format!("{}://{}{}", cb.scheme(), cb.host_str().unwrap(), cb.path()),
        REDIRECT
    );
    assert_eq!(q["state"], "xyz/=1", "state comes back unchanged");
    assert_eq!(q["iss"], app.state.cfg.issuer, "RFC 9207 iss");
    let code = q["code"].clone();

    let r = redeem(&app, &cid, &code, Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let at1 = r.body["access_token"].as_str().unwrap().to_string();
    let rt1 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert!(rt1.starts_with("tg_rt_"));
    assert_eq!(r.body["scope"], "api:read");
    let (_, c) = claims(&at1);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["client_id"], cid.as_str());

    // Refresh token introspection: for its own client only.
    let i = introspect_public(&app, &cid, &rt1).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["token_type"], "refresh_token");
    assert_eq!(i["sub"], "alice");
    let other = public_client(&app, json!({})).await;
    assert_eq!(introspect_public(&app, &other, &rt1).await["active"], false);

    // Rotation: a new pair, the old refresh token is spent.
    let r = refresh(&app, &cid, &rt1).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let at2 = r.body["access_token"].as_str().unwrap().to_string();
    let rt2 = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert_eq!(introspect_public(&app, &cid, &rt1).await["active"], false);
    assert_eq!(introspect_public(&app, &cid, &at2).await["active"], true);
    // A narrower scope is fine, a wider one is not.
    let r = app
        .form(
            "/oauth2/token",
            &form_body(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt2),
                ("client_id", &cid),
                ("scope", "api:write"),
            ]),
            None,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_scope");
    // Another client cannot use it (and does not burn it).
    assert_error(
        &refresh(&app, &other, &rt2).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    let r = refresh(&app, &cid, &rt2).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let at3 = r.body["access_token"].as_str().unwrap().to_string();
    let rt3 = r.body["refresh_token"].as_str().unwrap().to_string();

    // Reuse of a rotated refresh token: invalid_grant, and the whole family dies.
    assert_error(
        &refresh(&app, &cid, &rt1).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    for at in [&at1, &at2, &at3] {
        assert_eq!(introspect_public(&app, &cid, at).await["active"], false);
    }
    assert_eq!(introspect_public(&app, &cid, &rt3).await["active"], false);
    assert_error(
        &refresh(&app, &cid, &rt3).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    let feed = feed_jtis(&app).await;
    for at in [&at1, &at2, &at3] {
        let jti = claims(at).1["jti"].as_str().unwrap().to_string();
        assert!(feed.contains(&jti), "revoked jti on the edge feed");
    }
}

async fn code_replay_revokes_what_the_code_issued(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (verifier, challenge) = pkce();
    let mut b = Browser::new(&app);
    let code = query(&b.authorize(&authz(&cid, Some(&challenge), "")).await)["code"].clone();
    let r = redeem(&app, &cid, &code, Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK);
    let at = r.body["access_token"].as_str().unwrap().to_string();
    let rt = r.body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(introspect_public(&app, &cid, &at).await["active"], true);

    let r = redeem(&app, &cid, &code, Some(&verifier)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(introspect_public(&app, &cid, &at).await["active"], false);
    let jti = claims(&at).1["jti"].as_str().unwrap().to_string();
    assert!(feed_jtis(&app).await.contains(&jti));
    assert_error(
        &refresh(&app, &cid, &rt).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // The same session can still get a fresh code: only that grant was revoked.
    let (v2, c2) = pkce();
    let code2 = query(&b.authorize(&authz(&cid, Some(&c2), "")).await)["code"].clone();
    assert_eq!(
        redeem(&app, &cid, &code2, Some(&v2)).await.status,
        StatusCode::OK
    );
}

async fn pkce_is_enforced(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let mut b = Browser::new(&app);
    // Log in once (with a valid request), then try bad requests with the session.
    b.authorize(&authz(&cid, Some(&pkce().1), "")).await;
    let bad = |q: String| format!("/oauth2/authorize?{q}");

    // Missing for a public client.
    let r = b.get(&bad(authz(&cid, None, ""))).await;
    let q = query(&location(&r));
    assert_eq!(q["error"], "invalid_request");
    assert_eq!(q["state"], "xyz/=1");
    assert!(!q.contains_key("code"));
    // plain is refused unless the client allows it; no method means plain.
    let plain = "p".repeat(50);
    for extra in [
        format!("&code_challenge={plain}&code_challenge_method=plain"),
        format!("&code_challenge={plain}"),
    ] {
        let r = b.get(&bad(authz(&cid, None, &extra))).await;
        assert_eq!(query(&location(&r))["error"], "invalid_request");
    }
    // Malformed challenge.
    let r = b
        .get(&bad(authz(
            &cid,
            None,
            "&code_challenge=short&code_challenge_method=S256",
        )))
        .await;
    assert_eq!(query(&location(&r))["error"], "invalid_request");

    // Wrong and missing verifier.
    let (_, challenge) = pkce();
    let code = query(&location(
        &b.get(&bad(authz(&cid, Some(&challenge), ""))).await,
    ))["code"]
        .clone();
    let r = redeem(&app, &cid, &code, Some(&pkce().0)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    let code = query(&location(
        &b.get(&bad(authz(&cid, Some(&challenge), ""))).await,
    ))["code"]
        .clone();
    assert_error(
        &redeem(&app, &cid, &code, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );

    // Downgrade: a confidential client authorises without PKCE, then sends a verifier.
    let conf = register(
        &app,
        json!({"redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
               "scope": "api:read", "skip_consent": true}),
    )
    .await;
    let (ccid, csec) = (
        conf["client_id"].as_str().unwrap().to_string(),
        conf["client_secret"].as_str().unwrap().to_string(),
    );
    let code = query(&location(&b.get(&bad(authz(&ccid, None, ""))).await))["code"].clone();
    let r = app
        .form(
            "/oauth2/token",
            &form_body(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &pkce().0),
            ]),
            Some(&basic(&ccid, &csec)),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    assert!(r.body["error_description"]
        .as_str()
        .unwrap()
        .contains("no code_challenge"));

    // plain where the client allows it.
    let pc = public_client(&app, json!({"allow_plain_pkce": true})).await;
    let code = query(&location(
        &b.get(&bad(authz(
            &pc,
            None,
            &format!("&code_challenge={plain}&code_challenge_method=plain"),
        )))
        .await,
    ))["code"]
        .clone();
    let r = redeem(&app, &pc, &code, Some(&plain)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn redirect_uris_are_checked_and_never_open(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (_, ch) = pkce();
    let mut b = Browser::new(&app);
    let no_redirect = |r: &Resp| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", html(r));
        assert!(r.headers.get(header::LOCATION).is_none());
        assert!(r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    };
    // Unknown client, unregistered redirect URI, missing client_id: error page only.
    no_redirect(
        &b.get(&format!(
            "/oauth2/authorize?response_type=code&client_id=nope&redirect_uri={}&state=s",
            enc(REDIRECT)
        ))
        .await,
    );
    for evil in [
        "https://evil.example/cb",
        "https://app.example/cb/../evil",
        "https://app.example/cb?x=1",
        "https://app.example:8443/cb",
        "http://127.0.0.1.evil.example/cb",
    ] {
        let q = format!(
            "response_type=code&client_id={cid}&redirect_uri={}&state=s&code_challenge={ch}&code_challenge_method=S256",
            enc(evil)
        );
        no_redirect(&b.get(&format!("/oauth2/authorize?{q}")).await);
    }
    no_redirect(&b.get("/oauth2/authorize?response_type=code").await);
    // Two registered URIs: redirect_uri is required.
    no_redirect(
        &b.get(&format!(
            "/oauth2/authorize?response_type=code&client_id={cid}&code_challenge={ch}&code_challenge_method=S256"
        ))
        .await,
    );
    // An escaped client name on the error-free login page.
    let x = public_client(&app, json!({"client_name": "<script>alert(1)</script>"})).await;
    let r = Browser::new(&app)
        .get(&format!("/oauth2/authorize?{}", authz(&x, Some(&ch), "")))
        .await;
    assert!(!html(&r).contains("<script>alert"));
    assert!(html(&r).contains("&lt;script&gt;"));

    // Loopback: any port (RFC 8252 §7.3).
    b.authorize(&authz(&cid, Some(&ch), "")).await;
    let q = format!(
        "response_type=code&client_id={cid}&redirect_uri={}&state=s&code_challenge={ch}&code_challenge_method=S256",
        enc("http://127.0.0.1:53117/cb")
    );
    let cb = location(&b.get(&format!("/oauth2/authorize?{q}")).await);
    assert_eq!(cb.port(), Some(53117));
    assert!(query(&cb).contains_key("code"));
    // ... but the token request must repeat that exact URI.
    let (v, ch2) = pkce();
    let q = format!(
        "response_type=code&client_id={cid}&redirect_uri={}&state=s&code_challenge={ch2}&code_challenge_method=S256",
        enc("http://127.0.0.1:53117/cb")
    );
    let code = query(&location(&b.get(&format!("/oauth2/authorize?{q}")).await))["code"].clone();
    let r = redeem(&app, &cid, &code, Some(&v)).await; // sends REDIRECT, without the port
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");

    // Other errors go back to the client with the state.
    let r = b
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&cid, Some(&ch), "").replace("response_type=code", "response_type=token")
        ))
        .await;
    let q = query(&location(&r));
    assert_eq!(q["error"], "unsupported_response_type");
    assert_eq!(q["state"], "xyz/=1");
    assert_eq!(q["iss"], app.state.cfg.issuer);
    let r = b
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&cid, Some(&ch), "").replace("api%3Aread", "admin")
        ))
        .await;
    assert_eq!(query(&location(&r))["error"], "invalid_scope");
}

async fn wrong_client_and_expired_codes(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let other = public_client(&app, json!({})).await;
    let (v, ch) = pkce();
    let mut b = Browser::new(&app);
    let code = query(&b.authorize(&authz(&cid, Some(&ch), "")).await)["code"].clone();
    // Another client presenting the code: invalid_grant, and the code stays usable.
    assert_error(
        &redeem(&app, &other, &code, Some(&v)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_eq!(
        redeem(&app, &cid, &code, Some(&v)).await.status,
        StatusCode::OK
    );
    // Unknown code.
    assert_error(
        &redeem(&app, &cid, "made-up", Some(&v)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // Expired (auth_code_ttl is 1 s in this test).
    let (v, ch) = pkce();
    let cb = location(
        &b.get(&format!("/oauth2/authorize?{}", authz(&cid, Some(&ch), "")))
            .await,
    );
    let code = query(&cb)["code"].clone();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_error(
        &redeem(&app, &cid, &code, Some(&v)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

async fn login_csrf_and_brute_force_limits(app: App) {
    add_user(&app, "alice").await;
    add_user(&app, "bob").await;
    let cid = public_client(&app, json!({})).await;
    let q = authz(&cid, Some(&pkce().1), "");

    // CSRF: missing token, wrong token, missing cookie.
    let mut b = Browser::new(&app);
    let page = b.get(&format!("/oauth2/authorize?{q}")).await;
    let authz_field = hidden(&html(&page), "authz").unwrap();
    let csrf = hidden(&html(&page), "csrf").unwrap();
    for token in [None, Some("0".repeat(64))] {
        let mut pairs = vec![
            ("authz", authz_field.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ];
        if let Some(t) = &token {
            pairs.push(("csrf", t));
        }
        let r = b.post("/oauth2/login", &pairs).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", html(&r));
        assert!(!b.jar.contains_key("tg_session"));
    }
    let mut cookieless = Browser::new(&app);
    let r = cookieless
        .post(
            "/oauth2/login",
            &[
                ("csrf", &csrf),
                ("authz", &authz_field),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!cookieless.jar.contains_key("tg_session"));

    // Per-user limit (3 a minute here): failures from several IPs lock alice out, even
    // with the right password from a fresh IP; bob is unaffected.
    for i in 0..3 {
        let mut b = Browser::new(&app);
        b.xff = Some(format!("10.0.0.{i}"));
        let r = b.login(&q, "alice", "wrong password!").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", html(&r));
        assert!(html(&r).contains("Wrong username or password"));
        assert!(!b.jar.contains_key("tg_session"));
    }
    let mut b = Browser::new(&app);
    b.xff = Some("10.0.1.1".into());
    let r = b.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", html(&r));
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    assert!(!b.jar.contains_key("tg_session"));
    let r = b.login(&q, "bob", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));

    // No per-IP limit at the login page (issue 12: behind a proxy every user has one IP):
    // failures for other names from one IP do not keep bob out.
    let mut b = Browser::new(&app);
    b.xff = Some("10.9.9.9".into());
    for u in ["mallory1", "mallory2", "mallory3", "mallory4"] {
        assert_eq!(
            b.login(&q, u, "whatever-pass").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    b.jar.remove("tg_session");
    assert_eq!(
        b.login(&q, "bob", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
}

async fn consent_page_and_decisions(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(
        &app,
        json!({"skip_consent": false, "client_name": "Third party"}),
    )
    .await;
    let (v, ch) = pkce();
    let q = authz(&cid, Some(&ch), "");
    let mut b = Browser::new(&app);
    let r = b.login(&q, "alice", PASSWORD).await;
    let next = location(&r);
    let page = b
        .get(&format!("/oauth2/authorize?{}", next.query().unwrap()))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let body = html(&page);
    assert!(body.contains("Third party") && body.contains("api:read"));
    let csrf = hidden(&body, "csrf").unwrap();
    let authz_field = hidden(&body, "authz").unwrap();
    // No CSRF token: refused.
    let r = b
        .post(
            "/oauth2/consent",
            &[("authz", &authz_field), ("decision", "allow")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Deny.
    let r = b
        .post(
            "/oauth2/consent",
            &[
                ("csrf", &csrf),
                ("authz", &authz_field),
                ("decision", "deny"),
            ],
        )
        .await;
    let q2 = query(&location(&r));
    assert_eq!(q2["error"], "access_denied");
    assert_eq!(q2["state"], "xyz/=1");
    // Allow.
    let r = b
        .post(
            "/oauth2/consent",
            &[
                ("csrf", &csrf),
                ("authz", &authz_field),
                ("decision", "allow"),
            ],
        )
        .await;
    let code = query(&location(&r))["code"].clone();
    assert_eq!(
        redeem(&app, &cid, &code, Some(&v)).await.status,
        StatusCode::OK
    );
    // prompt=none without a session: login_required, no page.
    let r = Browser::new(&app)
        .get(&format!("/oauth2/authorize?{q}&prompt=none"))
        .await;
    assert_eq!(query(&location(&r))["error"], "login_required");
    // A deleted user's session no longer counts.
    let r = app
        .send(
            Request::delete("/admin/users/alice")
                .header(header::AUTHORIZATION, admin())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = b.get(&format!("/oauth2/authorize?{q}")).await;
    assert!(
        html(&r).contains("name=\"password\""),
        "back to the login page"
    );
}

async fn revoking_a_refresh_token_revokes_its_family(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (at, rt) = full_code_flow(&app, &cid).await;
    let (at_other, _) = full_code_flow(&app, &cid).await;
    let r = app
        .form(
            "/oauth2/revoke",
            &form_body(&[("token", &rt), ("client_id", &cid)]),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(introspect_public(&app, &cid, &at).await["active"], false);
    assert_eq!(introspect_public(&app, &cid, &rt).await["active"], false);
    assert_eq!(
        introspect_public(&app, &cid, &at_other).await["active"],
        true,
        "another grant is untouched"
    );
    assert_error(
        &refresh(&app, &cid, &rt).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

async fn token_exchange_within_policy_only(app: App) {
    // A caller's token: client_credentials of a "frontend" service with two scopes.
    let fe = register(
        &app,
        json!({"scope": "api:read api:write", "audience": ["https://gw"]}),
    )
    .await;
    let (fid, fsec) = (
        fe["client_id"].as_str().unwrap().to_string(),
        fe["client_secret"].as_str().unwrap().to_string(),
    );
    let subject = app.token(&fid, &fsec, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let xg = "urn:ietf:params:oauth:grant-type:token-exchange";
    let at_type = "urn:ietf:params:oauth:token-type:access_token";
    let svc = register(
        &app,
        json!({"grant_types": [xg], "scope": "",
               "token_exchange": {"audiences": ["https://orders", "https://billing"], "scopes": ["api:read"],
                                  "subject_audiences": ["https://gw", "https://orders"]}}),
    )
    .await;
    let (sid, ssec) = (
        svc["client_id"].as_str().unwrap().to_string(),
        svc["client_secret"].as_str().unwrap().to_string(),
    );
    let exchange = |id: String, sec: String, extra: Vec<(&'static str, String)>, subj: String| {
        let app = &app;
        async move {
            let mut pairs: Vec<(&str, String)> = vec![
                ("grant_type", xg.to_string()),
                ("subject_token", subj),
                ("subject_token_type", at_type.to_string()),
            ];
            pairs.extend(extra);
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.form("/oauth2/token", &form_body(&refs), Some(&basic(&id, &sec)))
                .await
        }
    };
    let r = exchange(
        sid.clone(),
        ssec.clone(),
        vec![
            ("audience", "https://orders".into()),
            ("scope", "api:read".into()),
        ],
        subject.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["issued_token_type"], at_type);
    assert_eq!(r.body["token_type"], "Bearer");
    let exchanged = r.body["access_token"].as_str().unwrap().to_string();
    let (_, c) = claims(&exchanged);
    assert_eq!(c["sub"], fid.as_str(), "the subject stays the caller");
    assert_eq!(c["client_id"], sid.as_str());
    assert_eq!(c["act"], json!({"sub": sid}));
    assert_eq!(c["aud"], "https://orders");
    assert_eq!(c["scope"], "api:read");
    assert!(c["exp"].as_u64().unwrap() <= claims(&subject).1["exp"].as_u64().unwrap());
    // Introspection shows the actor.
    let i = app
        .form(
            "/oauth2/introspect",
            &form_body(&[("token", &exchanged)]),
            Some(&basic(&sid, &ssec)),
        )
        .await;
    assert_eq!(i.body["act"], json!({"sub": sid}));

    // Delegation chain: a second service exchanges the exchanged token; act nests.
    let svc2 = register(
        &app,
        // Without subject_audiences: tokens sent to svc2 itself (its own audience).
        json!({"grant_types": [xg], "audience": ["https://orders"],
               "token_exchange": {"audiences": ["https://ledger"], "scopes": ["api:read"]}}),
    )
    .await;
    let (s2, s2sec) = (
        svc2["client_id"].as_str().unwrap().to_string(),
        svc2["client_secret"].as_str().unwrap().to_string(),
    );
    let r = exchange(s2.clone(), s2sec.clone(), vec![], exchanged.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (_, c2) = claims(r.body["access_token"].as_str().unwrap());
    assert_eq!(c2["act"], json!({"sub": s2, "act": {"sub": sid}}));
    assert_eq!(c2["aud"], "https://ledger");

    // Outside the policy.
    let cases: Vec<(Vec<(&'static str, String)>, &str)> = vec![
        (vec![("audience", "https://evil".into())], "invalid_target"),
        (
            vec![
                ("audience", "https://orders".into()),
                ("audience", "https://billing".into()),
            ],
            "invalid_target",
        ),
        (vec![("scope", "api:write".into())], "invalid_scope"), // in the subject, not the policy
        (vec![("scope", "admin".into())], "invalid_scope"),     // in neither
        (vec![("actor_token", subject.clone())], "invalid_request"),
    ];
    for (extra, code) in cases {
        let r = exchange(sid.clone(), ssec.clone(), extra, subject.clone()).await;
        assert_error(&r, StatusCode::BAD_REQUEST, code);
    }
    let r = exchange(sid.clone(), ssec.clone(), vec![], "not-a-token".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // subject_audiences: a token for another audience may not be exchanged by svc.
    let other = register(
        &app,
        json!({"scope": "api:read", "audience": ["https://elsewhere"]}),
    )
    .await;
    let foreign = app
        .token(
            other["client_id"].as_str().unwrap(),
            other["client_secret"].as_str().unwrap(),
            "",
        )
        .await
        .body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = exchange(sid.clone(), ssec.clone(), vec![], foreign).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // A client without a policy may not exchange at all.
    let r = exchange(fid.clone(), fsec.clone(), vec![], subject.clone()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "unauthorized_client");
    // A revoked subject token cannot be exchanged.
    let r = app
        .form(
            "/oauth2/revoke",
            &form_body(&[("token", &subject)]),
            Some(&basic(&fid, &fsec)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = exchange(sid, ssec, vec![], subject).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_grant");
    // Registration refuses a malformed policy.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"grant_types": [xg], "token_exchange": {"audiences": "x"}}),
            Some(&admin()),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
}

async fn private_key_jwt_client_authentication(app: App) {
    let pem = keys::generate_pem(SigningAlg::ES256).unwrap();
    let (kid, jwk) = keys::public_jwk(SigningAlg::ES256, &pem).unwrap();
    let ed_pem = keys::generate_pem(SigningAlg::EdDSA).unwrap();
    let (ed_kid, ed_jwk) = keys::public_jwk(SigningAlg::EdDSA, &ed_pem).unwrap();
    let c = register(
        &app,
        json!({"token_endpoint_auth_method": "private_key_jwt", "scope": "api:read",
               "jwks": {"keys": [jwk, ed_jwk]}}),
    )
    .await;
    assert!(c.get("client_secret").is_none());
    let cid = c["client_id"].as_str().unwrap().to_string();
    let iss = app.state.cfg.issuer.clone();
    let now = now_secs();
    let good = |jti: &str| {
        json!({"iss": cid, "sub": cid, "aud": format!("{iss}/oauth2/token"),
               "exp": now + 60, "iat": now, "jti": jti})
    };
    let call = |a: String| {
        let app = &app;
        async move {
            app.form(
                "/oauth2/token",
                &form_body(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &a),
                ]),
                None,
            )
            .await
        }
    };
    let a1 = assertion(&pem, jsonwebtoken::Algorithm::ES256, &kid, good("one"));
    let r = call(a1.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap()).1["sub"],
        cid.as_str()
    );
    // EdDSA key, audience = the issuer.
    let mut cl = good("two");
    cl["aud"] = json!(iss);
    let r = call(assertion(
        &ed_pem,
        jsonwebtoken::Algorithm::EdDSA,
        &ed_kid,
        cl,
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Replay of the same assertion (same jti).
    assert_error(&call(a1).await, StatusCode::UNAUTHORIZED, "invalid_client");
    // Signed by a key that is not registered (under a registered kid).
    let other = keys::generate_pem(SigningAlg::ES256).unwrap();
    let r = call(assertion(
        &other,
        jsonwebtoken::Algorithm::ES256,
        &kid,
        good("three"),
    ))
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    // Wrong audience, no exp, exp far away, expired, sub != iss, no jti.
    let mut bad_claims = Vec::new();
    let mut x = good("a1");
    x["aud"] = json!("https://other.example/token");
    bad_claims.push(x);
    let mut x = good("a2");
    x.as_object_mut().unwrap().remove("exp");
    bad_claims.push(x);
    let mut x = good("a3");
    x["exp"] = json!(now + 3600);
    bad_claims.push(x);
    let mut x = good("a4");
    x["exp"] = json!(now - 600);
    bad_claims.push(x);
    let mut x = good("a5");
    x["sub"] = json!("someone-else");
    bad_claims.push(x);
    let mut x = good("a6");
    x.as_object_mut().unwrap().remove("jti");
    bad_claims.push(x);
    for cl in bad_claims {
        let r = call(assertion(
            &pem,
            jsonwebtoken::Algorithm::ES256,
            &kid,
            cl.clone(),
        ))
        .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    // The alg comes from the key: an EdDSA-signed assertion under the ES256 kid fails.
    let r = call(assertion(
        &ed_pem,
        jsonwebtoken::Algorithm::EdDSA,
        &kid,
        good("a7"),
    ))
    .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    // A client secret does not work for this client.
    let r = app.token(&cid, "guess", "").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    // Registration refuses private keys and missing jwks.
    let (_, mut private) = keys::public_jwk(SigningAlg::ES256, &pem).unwrap();
    private["d"] = json!("AAAA");
    for md in [
        json!({"token_endpoint_auth_method": "private_key_jwt"}),
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [private]}}),
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "AAAA", "alg": "HS256"}]}}),
    ] {
        let r = app
            .json("POST", "/oauth2/register", md, Some(&admin()))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    }
}

async fn users_admin_api(app: App) {
    let r = app
        .json(
            "POST",
            "/admin/users",
            json!({"username": "carol", "password": PASSWORD}),
            None,
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
    add_user(&app, "carol").await;
    let r = app
        .json(
            "POST",
            "/admin/users",
            json!({"username": "carol", "password": PASSWORD}),
            Some(&admin()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    for bad in [
        json!({"username": "dave", "password": "short"}),
        json!({"username": "bad name", "password": PASSWORD}),
        json!({"username": "dave", "password": PASSWORD, "role": "admin"}),
        json!({"username": "dave"}),
    ] {
        let r = app.json("POST", "/admin/users", bad, Some(&admin())).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let r = app.get("/admin/users", Some(&admin())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["users"][0]["username"], "carol");
    assert!(
        !String::from_utf8_lossy(&r.raw).contains("argon2"),
        "no hashes"
    );
    let r = app.get("/admin/users/carol", Some(&admin())).await;
    assert_eq!(r.body["username"], "carol");
    assert!(r.body.get("password_hash").is_none());
    let stored = app.state.store.get_user("carol").await.unwrap().unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"));
    assert!(crate::users::verify_password(
        PASSWORD,
        &stored.password_hash
    ));
    assert_eq!(
        app.get("/admin/users/nobody", Some(&admin())).await.status,
        StatusCode::NOT_FOUND
    );
    let del = |u: &str| {
        Request::delete(format!("/admin/users/{u}"))
            .header(header::AUTHORIZATION, admin())
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(app.send(del("carol")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.send(del("carol")).await.status, StatusCode::NOT_FOUND);
}

async fn metadata_advertises_the_flows(app: App) {
    let r = app
        .get("/.well-known/oauth-authorization-server", None)
        .await;
    let iss = app.state.cfg.issuer.clone();
    assert_eq!(
        r.body["authorization_endpoint"],
        format!("{iss}/oauth2/authorize")
    );
    assert_eq!(r.body["response_types_supported"], json!(["code"]));
    assert_eq!(r.body["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        r.body["authorization_response_iss_parameter_supported"],
        true
    );
    let methods = r.body["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    for m in ["private_key_jwt", "none", "client_secret_basic"] {
        assert!(methods.contains(&json!(m)));
    }
    let grants = r.body["grant_types_supported"].as_array().unwrap();
    for g in [
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ] {
        assert!(grants.contains(&json!(g)));
    }
}

store_suite! {
    code_flow_with_pkce_and_refresh_rotation => |c| c.rate_limit_per_ip = 20,
    code_replay_revokes_what_the_code_issued => |c| c.rate_limit_per_ip = 20,
    pkce_is_enforced => |c| c.rate_limit_per_ip = 20,
    redirect_uris_are_checked_and_never_open => |c| c.rate_limit_per_ip = 20,
    wrong_client_and_expired_codes => |c| c.auth_code_ttl = 1,
    login_csrf_and_brute_force_limits => |c| { c.rate_limit_per_ip = 3; c.trusted_proxy_hops = 1; },
    consent_page_and_decisions => |c| c.rate_limit_per_ip = 20,
    revoking_a_refresh_token_revokes_its_family => |c| c.rate_limit_per_ip = 20,
    token_exchange_within_policy_only => |c| c.rate_limit_per_ip = 20,
    private_key_jwt_client_authentication => |c| c.rate_limit_per_ip = 50,
    users_admin_api => |c| c.rate_limit_per_ip = 20,
    metadata_advertises_the_flows => |_| {},
}

/// Two replicas on one Redis: a rotation by either is seen by both, both sign with the
/// same key at every moment, and each verifies the other's tokens with its own JWKS.
#[tokio::test]
async fn replicas_agree_on_the_active_key_through_the_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let connect = || async {
        let s = RedisStore::connect(
            &StoreUrl::parse(&server.url(0)).unwrap(),
            RedisOptions::default(),
        )
        .await
        .unwrap();
        Arc::new(s) as Arc<dyn Store>
    };
    let mk = |store: Arc<dyn Store>| async move {
        let state = AppState::new(Config::for_tests(), store).await.unwrap();
        App::from_state(state, None)
    };
    let a = mk(connect().await).await;
    let b = mk(connect().await).await;
    let active = |app: &App| {
        app.state
            .keys()
            .active(now_secs())
            .map(|k| k.stored.kid.clone())
            .unwrap()
    };
    let first = active(&a);
    assert_eq!(first, active(&b), "one key created, both use it");

    // Rotate with a 2 s activation delay (as `authserver keys rotate --delay 2` does).
    let new = crate::jobs::keys::rotate(
        a.state.store.as_ref(),
        SigningAlg::ES256,
        2,
        &a.state.cfg.key_encryption,
    )
    .await
    .unwrap();
    a.state.reload_keys().await.unwrap();
    b.state.reload_keys().await.unwrap();
    // Published at once by both, not signing yet.
    for app in [&a, &b] {
        let jwks = app.get("/oauth2/jwks", None).await.body;
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(kids.contains(&new.kid.as_str()) && kids.contains(&first.as_str()));
        assert_eq!(active(app), first);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    a.state.reload_keys().await.unwrap();
    b.state.reload_keys().await.unwrap();
    assert_eq!(active(&a), new.kid);
    assert_eq!(active(&b), new.kid);

    // A token from replica A verifies with replica B's JWKS, and B still publishes the old
    // key (tokens it signed are still valid).
    let (id, secret) = a.register(json!({"scope": "api:read"})).await;
    let at = a.token(&id, &secret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (h, _) = claims(&at);
    assert_eq!(h["kid"], new.kid.as_str());
    let jwks = b.get("/oauth2/jwks", None).await.body;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    assert!(
        set.find(&first).is_some(),
        "the retired key stays published"
    );
    let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&new.kid).unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["tollgate"]);
    jsonwebtoken::decode::<Value>(&at, &key, &v).unwrap();
    let i = b
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(i.body["active"], true);
}
