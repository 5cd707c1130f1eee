//! Regression tests of the lockout and brute-force defects of issue 12: one address's
//! failures never lock out good clients, users or the gateways; a public client's quota
//! is not burnt by someone else's bad codes; sign-in attempts are counted before the
//! password check and the checks are bounded; a browser that signed in before gets past a
//! username lockout; CSRF tokens are bound to their session and request; form endpoints
//! answer a wrong content type with 400. Every test runs against the in-memory store and a
//! real `redis-server`.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};

use super::test_support::{
    add_user, admin, enc, form_body, hidden, html, location, pkce, query, store_suite, Browser,
    PASSWORD, REDIRECT,
};
use super::tests::{assert_error, basic, App, Resp};

/// A public (PKCE) client for the code flow, first-party.
async fn public_client(app: &App, extra: Value) -> String {
    let mut md = json!({
        "client_name": "SPA",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
        "scope": "api:read",
        "skip_consent": true,
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut md, extra) {
        m.extend(e);
    }
    let r = app
        .json("POST", "/oauth2/register", md, Some(&admin()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["client_id"].as_str().unwrap().to_string()
}

fn authz(client_id: &str, challenge: &str, state: &str) -> String {
    format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&scope=api%3Aread&state={state}\
&code_challenge={challenge}&code_challenge_method=S256",
        enc(REDIRECT)
    )
}

/// A form POST with an optional `X-Forwarded-For` and `Authorization`.
async fn post_from(
    app: &App,
    path: &str,
    body: &str,
    xff: Option<&str>,
    auth: Option<&str>,
) -> Resp {
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(x) = xff {
        b = b.header("x-forwarded-for", x);
    }
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    app.send(b.body(Body::from(body.to_string())).unwrap())
        .await
}

// ------------------------------------------------------------------------------ tests

/// Issue 12 item 2: 200 failures from one address (the only address behind a sidecar) at
/// every endpoint that counts them, against the good client's own id too, and 200 metadata
/// and JWKS fetches; the good client (token, introspection, feed, lease), the JWKS and
/// another user's login keep working. The failing pair itself is limited.
async fn one_address_failures_never_lock_out_good_clients(app: App) {
    let (good, good_secret) = app
        .register(json!({"scope": "tollgate:edge api:read"}))
        .await;
    let good_auth = basic(&good, &good_secret);
    add_user(&app, "alice").await;
    add_user(&app, "bob").await;
    let spa = public_client(&app, json!({})).await;
    let q = authz(&spa, &pkce().1, "s");

    // The attacker, on the same address as everyone else: wrong secrets for the good
    // client's own id and for made-up ids, a wrong admin token, wrong passwords for alice,
    // and JWKS/metadata floods.
    let mut limited = 0;
    for i in 0..200 {
        let id = if i % 2 == 0 {
            good.clone()
        } else {
            format!("nobody-{i}")
        };
        let r = app.token(&id, "wrong-secret", "").await;
        match r.status {
            StatusCode::UNAUTHORIZED => assert_eq!(r.body["error"], "invalid_client"),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.get(header::RETRY_AFTER).is_some());
                limited += 1;
            }
            s => panic!("{s}: {}", html(&r)),
        }
        let r = app
            .form("/oauth2/introspect", "token=x", Some(&basic(&id, "wrong")))
            .await;
        assert!(matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
        let r = app
            .get("/edge/revocations", Some(&basic(&id, "wrong")))
            .await;
        assert!(matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
        let r = app
            .get("/admin/stats", Some("Bearer not-the-admin-token"))
            .await;
        assert!(matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
        assert_eq!(
            app.get("/oauth2/jwks", None).await.status,
            StatusCode::OK,
            "JWKS fetch {i}"
        );
        assert_eq!(
            app.get("/.well-known/oauth-authorization-server", None)
                .await
                .status,
            StatusCode::OK
        );
    }
    for _ in 0..60 {
        let r = Browser::new(&app)
            .login(&q, "alice", "wrong password!")
            .await;
        assert!(matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    // The attacker's own (client_id, IP) pair is limited: its failures now get 429.
    assert!(limited > 0, "the failing pair was never limited");
    let r = app.token(&good, "wrong-secret", "").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    let r = app
        .get("/admin/stats", Some("Bearer not-the-admin-token"))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);

    // The good client, from the same address, with the right secret: every endpoint works.
    let r = app.token(&good, &good_secret, "&scope=api%3Aread").await;
    assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
    let at = r.body["access_token"].as_str().unwrap().to_string();
    let r = app
        .form(
            "/oauth2/introspect",
            &format!("token={at}"),
            Some(&good_auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
    assert_eq!(r.body["active"], true);
    let r = app.get("/edge/revocations", Some(&good_auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
    let r = app
        .form(
            "/edge/ratelimit/lease",
            "key=k&limit=10&window_s=60&want=1",
            Some(&good_auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
    assert_eq!(r.body["granted"], 1);
    let r = app
        .form("/oauth2/revoke", &format!("token={at}"), Some(&good_auth))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
    assert_eq!(
        app.get("/admin/stats", Some(&admin())).await.status,
        StatusCode::OK
    );
    assert_eq!(app.get("/oauth2/jwks", None).await.status, StatusCode::OK);
    // Another user signs in from the same address.
    let r = Browser::new(&app).login(&q, "bob", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
}

/// Issue 12 item 9: an attacker sending bad codes under a public client's id from one
/// address does not spend the quota of the real client at another address, and is limited
/// itself.
async fn public_client_quota_is_not_burnt_by_bad_codes(app: App) {
    add_user(&app, "alice").await;
    let spa = public_client(&app, json!({"rate_limit_per_minute": 3})).await;
    let bad = form_body(&[
        ("grant_type", "authorization_code"),
        ("code", "not-a-code"),
        ("redirect_uri", REDIRECT),
        ("client_id", &spa),
        ("code_verifier", &pkce().0),
    ]);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = post_from(&app, "/oauth2/token", &bad, Some("10.6.6.6"), None).await;
        statuses.push(r.status);
        if r.status == StatusCode::BAD_REQUEST {
            assert_eq!(r.body["error"], "invalid_grant");
        }
    }
    // The attacker's own (client_id, IP) pair is limited after `rate_limit_per_ip` (5).
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_REQUEST)
            .count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    // The real client, from another address, gets its codes redeemed and refreshes within
    // its own quota of 3 successful grants.
    let mut rt = String::new();
    for i in 0..3 {
        let (verifier, challenge) = pkce();
        let mut b = Browser::new(&app);
        b.xff = Some("10.1.1.1".into());
        let q = authz(&spa, &challenge, "s");
        let code = if i == 0 {
            let r = b.login(&q, "alice", PASSWORD).await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
            let next = location(&r);
            let r = b
                .get(&format!("{}?{}", next.path(), next.query().unwrap()))
                .await;
            query(&location(&r))["code"].clone()
        } else {
            // Refresh instead of a second login.
            let r = post_from(
                &app,
                "/oauth2/token",
                &form_body(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &spa),
                ]),
                Some("10.1.1.1"),
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "refresh {i}: {}", html(&r));
            rt = r.body["refresh_token"].as_str().unwrap().to_string();
            continue;
        };
        let r = post_from(
            &app,
            "/oauth2/token",
            &form_body(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &spa),
                ("code_verifier", &verifier),
            ]),
            Some("10.1.1.1"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", html(&r));
        rt = r.body["refresh_token"].as_str().unwrap().to_string();
    }
    // Its quota (3 successful grants a minute from this address) is now spent.
    let r = post_from(
        &app,
        "/oauth2/token",
        &form_body(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", &spa),
        ]),
        Some("10.1.1.1"),
        None,
    )
    .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "slow_down");
}

/// Issue 12 item 3: sign-in attempts are counted before the password check, so that
/// parallel attempts for one user cannot all run: exactly `rate_limit_per_ip` (5) of 20
/// parallel wrong passwords are checked, the others get 429 at once.
async fn parallel_sign_ins_are_counted_before_the_password_check(app: App) {
    add_user(&app, "alice").await;
    let spa = public_client(&app, json!({})).await;
    let q = authz(&spa, &pkce().1, "s");
    let mut forms = Vec::new();
    for _ in 0..20 {
        let mut b = Browser::new(&app);
        let (csrf, authz_field) = b.login_form(&q).await;
        forms.push((b, csrf, authz_field));
    }
    let answers = futures::future::join_all(forms.iter_mut().map(|(b, csrf, a)| {
        let (csrf, a) = (csrf.clone(), a.clone());
        async move {
            b.post(
                "/oauth2/login",
                &[
                    ("csrf", &csrf),
                    ("authz", &a),
                    ("username", "alice"),
                    ("password", "wrong password!"),
                ],
            )
            .await
            .status
        }
    }))
    .await;
    let checked = answers
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((checked, refused), (5, 15), "{answers:?}");
}

/// Issue 12 item 3: when every password-check slot stays busy, a sign-in is answered with
/// the login page, 503 and `Retry-After`, not left hanging.
async fn sign_in_is_answered_503_when_password_checks_are_busy(app: App) {
    add_user(&app, "alice").await;
    let spa = public_client(&app, json!({})).await;
    let q = authz(&spa, &pkce().1, "s");
    let held = app.state.password_checks.hold_all().await;
    let r = Browser::new(&app).login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", html(&r));
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    assert!(html(&r).contains("Try again in a moment"));
    drop(held);
    let r = Browser::new(&app).login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
}

/// Issue 12 item 12: wrong passwords from elsewhere lock a username (a new browser with the
/// right password gets 429), but a browser that signed in as that user before (its device
/// cookie) still signs in. A device cookie of another user, or a forged one, does not
/// help; a device's own failures are limited too.
async fn a_known_device_signs_in_while_the_username_is_locked(app: App) {
    add_user(&app, "alice").await;
    add_user(&app, "bob").await;
    let spa = public_client(&app, json!({})).await;
    let q = authz(&spa, &pkce().1, "s");
    let mut device = Browser::new(&app);
    let r = device.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    assert!(device.jar.contains_key("tg_device"), "{:?}", device.jar);
    device.jar.remove("tg_session");
    let mut bobs = Browser::new(&app);
    assert_eq!(
        bobs.login(&q, "bob", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    bobs.jar.remove("tg_session");

    // The attacker locks the name alice (5 attempts a minute here).
    for i in 0..8 {
        let mut b = Browser::new(&app);
        b.xff = Some(format!("10.0.0.{i}"));
        let r = b.login(&q, "alice", "wrong password!").await;
        assert!(matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    // A new browser with the right password: locked (the documented trade-off).
    let r = Browser::new(&app).login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", html(&r));
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    // Bob's device cookie does not unlock alice; neither does a forged one.
    let r = bobs.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", html(&r));
    let mut forged = Browser::new(&app);
    let v = device.jar["tg_device"].clone();
    let (nonce, _) = v.split_once('.').unwrap();
    forged
        .jar
        .insert("tg_device".into(), format!("{nonce}.{}", "0".repeat(64)));
    let r = forged.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", html(&r));
    // Alice's own browser signs in.
    let r = device.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    assert!(device.jar.contains_key("tg_session"));
    device.jar.remove("tg_session");
    // A stolen device cookie gives no unlimited guesses: its own attempts are limited.
    let mut last = StatusCode::OK;
    for _ in 0..6 {
        last = device.login(&q, "alice", "wrong password!").await.status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

/// Issue 12 item 10: a CSRF token is good only for its own browser session and
/// authorization request: a login token posted with another request, or a consent token
/// posted from another session (same nonce cookie), is refused with 403.
async fn csrf_token_of_another_session_or_request_is_refused(app: App) {
    add_user(&app, "alice").await;
    add_user(&app, "bob").await;
    let spa = public_client(
        &app,
        json!({"skip_consent": false, "client_name": "Third party"}),
    )
    .await;
    let (_, challenge) = pkce();
    let q1 = authz(&spa, &challenge, "one");
    let q2 = authz(&spa, &challenge, "two");

    // Login: the token of request one, posted with request two.
    let mut b = Browser::new(&app);
    let (csrf1, _) = b.login_form(&q1).await;
    let (_, authz2) = b.login_form(&q2).await;
    let r = b
        .post(
            "/oauth2/login",
            &[
                ("csrf", &csrf1),
                ("authz", &authz2),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", html(&r));
    assert!(!b.jar.contains_key("tg_session"));

    // Consent: alice's consent token, posted by bob's session with the same nonce cookie.
    let r = b.login(&q1, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    let page = b.get(&format!("/oauth2/authorize?{q1}")).await;
    let body = html(&page);
    let consent_csrf = hidden(&body, "csrf").unwrap();
    let consent_authz = hidden(&body, "authz").unwrap();
    let mut other = Browser::new(&app);
    assert_eq!(
        other.login(&q1, "bob", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    other.jar.insert("tg_csrf".into(), b.jar["tg_csrf"].clone());
    let r = other
        .post(
            "/oauth2/consent",
            &[
                ("csrf", &consent_csrf),
                ("authz", &consent_authz),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", html(&r));
    // ... and with another authorization request in the same session.
    let page2 = b.get(&format!("/oauth2/authorize?{q2}")).await;
    let authz_two = hidden(&html(&page2), "authz").unwrap();
    let r = b
        .post(
            "/oauth2/consent",
            &[
                ("csrf", &consent_csrf),
                ("authz", &authz_two),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", html(&r));
    // The right token in the right session and request works.
    let r = b
        .post(
            "/oauth2/consent",
            &[
                ("csrf", &consent_csrf),
                ("authz", &consent_authz),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    assert!(query(&location(&r)).contains_key("code"));
}

/// Issue 12 item 10: over HTTPS the cookies carry the `__Host-` prefix, and the flow works
/// with them.
async fn https_cookies_carry_the_host_prefix(app: App) {
    add_user(&app, "alice").await;
    let spa = public_client(&app, json!({})).await;
    let q = authz(&spa, &pkce().1, "s");
    let mut b = Browser::new(&app);
    let r = b.login(&q, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", html(&r));
    let mut names: Vec<&str> = b.jar.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["__Host-tg_csrf", "__Host-tg_device", "__Host-tg_session"]
    );
    for v in r.headers.get_all(header::SET_COOKIE) {
        let v = v.to_str().unwrap();
        assert!(
            v.contains("; Path=/;") && v.ends_with("; Secure") && !v.contains("Domain"),
            "{v}"
        );
    }
    // The session is read under its prefixed name.
    let next = location(&r);
    let r = b
        .get(&format!("{}?{}", next.path(), next.query().unwrap()))
        .await;
    assert!(query(&location(&r)).contains_key("code"));
}

/// Issue 12 item 16a: the form endpoints answer a missing or wrong content type with 400
/// `invalid_request` (RFC 6749 §5.2), not 415.
async fn form_endpoints_answer_a_wrong_content_type_with_400(app: App) {
    let (id, secret) = app.register(json!({"scope": "tollgate:edge"})).await;
    let auth = basic(&id, &secret);
    for path in [
        "/oauth2/token",
        "/oauth2/introspect",
        "/oauth2/revoke",
        "/edge/ratelimit/lease",
    ] {
        for ct in [
            None,
            Some("application/json"),
            Some("text/plain"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let mut b = Request::post(path).header(header::AUTHORIZATION, &auth);
            if let Some(ct) = ct {
                b = b.header(header::CONTENT_TYPE, ct);
            }
            let r = app
                .send(
                    b.body(Body::from("grant_type=client_credentials&token=x"))
                        .unwrap(),
                )
                .await;
            assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }
}

store_suite! {
    one_address_failures_never_lock_out_good_clients => |_| {},
    public_client_quota_is_not_burnt_by_bad_codes => |c| {
        c.rate_limit_per_ip = 5;
        c.trusted_proxy_hops = 1;
    },
    parallel_sign_ins_are_counted_before_the_password_check => |c| c.rate_limit_per_ip = 5,
    sign_in_is_answered_503_when_password_checks_are_busy => |_| {},
    a_known_device_signs_in_while_the_username_is_locked => |c| {
        c.rate_limit_per_ip = 5;
        c.trusted_proxy_hops = 1;
    },
    csrf_token_of_another_session_or_request_is_refused => |_| {},
    https_cookies_carry_the_host_prefix => |c| c.issuer = "https://auth.example".into(),
    form_endpoints_answer_a_wrong_content_type_with_400 => |_| {},
}
