//! Regression tests of issue 12's privilege and lifetime defects, against both stores:
//! RFC 7592 self-service escalation (a client's registration access token changes only what
//! the client owns), what ends with a deleted user or client (families, sessions, issued
//! access tokens, also at the edge), the token-exchange default (subject tokens sent to the
//! exchanging client only, of a client and user that still exist), and the exact `aud` of a
//! `private_key_jwt` client assertion.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::test_support::{
    add_user, admin, assertion, authz, feed_jtis, form_body, full_code_flow, html, pkce,
    public_client, query, redeem, refresh, register, store_suite, Browser,
};
use super::tests::{assert_error, claims, App, Resp};
use crate::keys::{self, SigningAlg};
use crate::store::now_secs;

const XG: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap().to_string()
}

/// The metadata as the client reads it back (what an RFC 7592 client sends in a PUT).
async fn read_back(app: &App, id: &str, auth: &str) -> Value {
    let r = app.get(&format!("/oauth2/register/{id}"), Some(auth)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

// ------------------------------------------------------ 1. RFC 7592 self-service escalation

/// The reviewer's reproduction: with its own registration access token a client raised its
/// scope to `payments:admin tollgate:introspect` and then got a token for it.
async fn self_service_put_cannot_raise_the_clients_own_scope(app: App) {
    let c = register(&app, json!({"client_name": "svc", "scope": "api:read"})).await;
    let (id, secret, rat) = (
        s(&c, "client_id"),
        s(&c, "client_secret"),
        bearer(&s(&c, "registration_access_token")),
    );
    let mut md = read_back(&app, &id, &rat).await;
    md["scope"] = json!("api:read payments:admin tollgate:introspect");
    let r = app
        .json("PUT", &format!("/oauth2/register/{id}"), md, Some(&rat))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("scope"),
        "{:?}",
        r.body
    );
    assert_eq!(read_back(&app, &id, &rat).await["scope"], "api:read");
    let r = app
        .token(
            &id,
            &secret,
            "&scope=payments%3Aadmin%20tollgate%3Aintrospect",
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_scope");
    let r = app.token(&id, &secret, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["scope"], "api:read");
}

/// Every privileged field, changed alone in an otherwise echoed document: refused with
/// `invalid_client_metadata`, nothing changes. The admin token may change them.
async fn self_service_put_cannot_change_any_privileged_field(app: App) {
    let c = register(
        &app,
        json!({"client_name": "svc",
               "grant_types": ["authorization_code", "client_credentials", XG],
               "redirect_uris": ["https://app.example/cb"],
               "scope": "a", "audience": ["https://api"],
               "token_exchange": {"audiences": ["https://down"], "scopes": ["a"]},
               "rate_limit_per_minute": 10}),
    )
    .await;
    let (id, rat) = (
        s(&c, "client_id"),
        bearer(&s(&c, "registration_access_token")),
    );
    let uri = format!("/oauth2/register/{id}");
    let before = read_back(&app, &id, &rat).await;
    let changes: Vec<(&str, Value)> = vec![
        ("scope", json!("a payments:admin")),
        ("audience", json!(["https://api", "https://payments"])),
        (
            "grant_types",
            json!([
                "authorization_code",
                "client_credentials",
                XG,
                "refresh_token"
            ]),
        ),
        (
            "token_exchange",
            json!({"audiences": ["https://down", "https://payments"], "scopes": ["a"]}),
        ),
        ("skip_consent", json!(true)),
        ("allow_plain_pkce", json!(true)),
        (
            "redirect_uris",
            json!(["https://app.example/cb", "https://evil.example/cb"]),
        ),
        ("rate_limit_per_minute", json!(100000)),
        ("access_token_ttl", json!(3600)),
        ("access_token_format", json!("opaque")),
        ("dpop_bound_access_tokens", json!(true)),
        ("token_endpoint_auth_method", json!("client_secret_post")),
        ("software_id", json!("anything-unknown")),
    ];
    for (field, value) in &changes {
        let mut md = before.clone();
        md[*field] = value.clone();
        let r = app.json("PUT", &uri, md, Some(&rat)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
        assert!(
            r.body["error_description"]
                .as_str()
                .unwrap()
                .contains(field),
            "{field}: {:?}",
            r.body
        );
        assert_eq!(read_back(&app, &id, &rat).await, before, "{field} changed");
    }
    // Leaving a privileged field out changes it too (RFC 7592 §2.2: omitted = deleted).
    let mut md = before.clone();
    md.as_object_mut().unwrap().remove("rate_limit_per_minute");
    let r = app.json("PUT", &uri, md, Some(&rat)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_client_metadata");
    // What the client owns it may change, the rest echoed back unchanged.
    let mut md = before.clone();
    md["client_name"] = json!("svc renamed");
    md["contacts"] = json!(["ops@example.com"]);
    md["logo_uri"] = json!("https://app.example/logo.png");
    let r = app.json("PUT", &uri, md, Some(&rat)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let after = read_back(&app, &id, &rat).await;
    assert_eq!(after["client_name"], "svc renamed");
    assert_eq!(after["contacts"], json!(["ops@example.com"]));
    assert_eq!(after["scope"], "a");
    // The admin token changes privileged fields.
    for (field, value) in changes {
        if field == "software_id" || field == "token_endpoint_auth_method" {
            continue;
        }
        let mut md = read_back(&app, &id, &admin()).await;
        md[field] = value.clone();
        let r = app.json("PUT", &uri, md, Some(&admin())).await;
        assert_eq!(r.status, StatusCode::OK, "{field}: {:?}", r.body);
        assert_eq!(read_back(&app, &id, &admin()).await[field], value);
    }
}

/// A private_key_jwt client rotates its own keys with its registration access token.
async fn self_service_put_may_rotate_the_clients_own_keys(app: App) {
    let pem = keys::generate_pem(SigningAlg::ES256).unwrap();
    let (_, jwk) = keys::public_jwk(SigningAlg::ES256, &pem).unwrap();
    let pem2 = keys::generate_pem(SigningAlg::ES256).unwrap();
    let (_, jwk2) = keys::public_jwk(SigningAlg::ES256, &pem2).unwrap();
    let c = register(
        &app,
        json!({"token_endpoint_auth_method": "private_key_jwt", "scope": "a",
               "jwks": {"keys": [jwk]}}),
    )
    .await;
    let (id, rat) = (
        s(&c, "client_id"),
        bearer(&s(&c, "registration_access_token")),
    );
    let mut md = read_back(&app, &id, &rat).await;
    md["jwks"] = json!({"keys": [jwk2.clone()]});
    let r = app
        .json("PUT", &format!("/oauth2/register/{id}"), md, Some(&rat))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(read_back(&app, &id, &rat).await["jwks"]["keys"][0], jwk2);
}

/// Someone else's registration access token, no token, a wrong token, and the token of a
/// deleted client: refused for read, update and delete; creating a client needs the admin
/// token, a registration access token does not do.
async fn registration_access_token_of_another_client_or_none_is_refused(app: App) {
    let a = register(&app, json!({"client_name": "a", "scope": "a"})).await;
    let b = register(&app, json!({"client_name": "b", "scope": "b"})).await;
    let (aid, arat) = (
        s(&a, "client_id"),
        bearer(&s(&a, "registration_access_token")),
    );
    let brat = bearer(&s(&b, "registration_access_token"));
    let uri = format!("/oauth2/register/{aid}");
    let before = read_back(&app, &aid, &arat).await;
    let mut widened = before.clone();
    widened["scope"] = json!("a b payments:admin");
    for auth in [
        Some(brat.as_str()),
        None,
        Some("Bearer not-a-registration-token"),
    ] {
        assert_error(
            &app.get(&uri, auth).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
        assert_error(
            &app.json("PUT", &uri, widened.clone(), auth).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
        assert_error(
            &app.delete(&uri, auth).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
    }
    assert_eq!(read_back(&app, &aid, &admin()).await, before);
    // Creation: a registration access token is not the admin token.
    let r = app
        .json(
            "POST",
            "/oauth2/register",
            json!({"scope": "payments:admin", "skip_consent": true}),
            Some(&arat),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token");
    // A deleted client's registration access token is revoked with it.
    assert_eq!(
        app.delete(&uri, Some(&arat)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &app.get(&uri, Some(&arat)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_error(
        &app.json("PUT", &uri, before, Some(&arat)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

// ------------------------------------------------------------- 4. deleting a user or client

/// The reviewer's reproduction: a deleted user's refresh token kept working. Deleting the
/// user ends its families (refresh tokens deleted, access tokens revoked and on the edge
/// feed) and its login sessions.
async fn deleted_users_refresh_token_and_session_stop_working(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&app);
    let cb = browser.authorize(&authz(&cid, Some(&challenge), "")).await;
    let r = redeem(&app, &cid, &query(&cb)["code"], Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (at, rt) = (s(&r.body, "access_token"), s(&r.body, "refresh_token"));
    let jti = s(&claims(&at).1, "jti");
    // A token exchanged from the user's token speaks for the user too.
    let svc = register(
        &app,
        json!({"grant_types": [XG], "scope": "", "audience": ["tollgate"],
               "token_exchange": {"audiences": ["https://down"], "scopes": ["api:read"]}}),
    )
    .await;
    let x = exchange(&app, &svc, &at).await;
    assert_eq!(x.status, StatusCode::OK, "{:?}", x.body);
    let xjti = s(&claims(&s(&x.body, "access_token")).1, "jti");

    let r = app.delete("/admin/users/alice", Some(&admin())).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_error(
        &refresh(&app, &cid, &rt).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    let feed = feed_jtis(&app).await;
    assert!(
        feed.contains(&jti),
        "the user's access token is on the feed"
    );
    assert!(feed.contains(&xjti), "so is the token exchanged from it");
    assert!(app.state.store.is_revoked(&jti).await.unwrap());
    // The login session ended: the authorization endpoint asks for a login again.
    let page = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&cid, Some(&challenge), "")
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", html(&page));
    assert!(html(&page).contains("name=\"username\""));
}

/// Sessions, codes and refresh tokens carry the user's id: a user re-created under the same
/// name inherits none of them, even when the old user's record went away without the
/// deletion's clean-up (removed from the store directly).
async fn recreated_user_with_the_same_name_inherits_nothing(app: App) {
    add_user(&app, "alice").await;
    let cid = public_client(&app, json!({})).await;
    let (verifier, challenge) = pkce();
    let mut browser = Browser::new(&app);
    let cb = browser.authorize(&authz(&cid, Some(&challenge), "")).await;
    let code = query(&cb)["code"].clone();
    // A second code, not redeemed yet.
    let (v2, c2) = pkce();
    let cb2 = browser.authorize(&authz(&cid, Some(&c2), "")).await;
    let code2 = query(&cb2)["code"].clone();
    let r = redeem(&app, &cid, &code, Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let rt = s(&r.body, "refresh_token");

    assert!(app.state.store.delete_user("alice").await.unwrap());
    add_user(&app, "alice").await;

    assert_error(
        &refresh(&app, &cid, &rt).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    assert_error(
        &redeem(&app, &cid, &code2, Some(&v2)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    let page = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            authz(&cid, Some(&challenge), "")
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", html(&page));
    assert!(
        html(&page).contains("name=\"username\""),
        "the old session does not log the new alice in"
    );
    // The new alice logs in herself and works normally.
    let mut fresh = Browser::new(&app);
    let (v3, c3) = pkce();
    let cb3 = fresh.authorize(&authz(&cid, Some(&c3), "")).await;
    let r = redeem(&app, &cid, &query(&cb3)["code"], Some(&v3)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = refresh(&app, &cid, &s(&r.body, "refresh_token")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// A deleted client's issued access tokens are revoked (blacklist and edge feed, like RFC
/// 7009), its token families end (refresh tokens gone); other clients keep theirs.
async fn deleted_clients_tokens_are_revoked_at_the_edge(app: App) {
    let c = register(&app, json!({"scope": "a"})).await;
    let (id, secret) = (s(&c, "client_id"), s(&c, "client_secret"));
    let mut jtis = Vec::new();
    for _ in 0..3 {
        let r = app.token(&id, &secret, "").await;
        assert_eq!(r.status, StatusCode::OK);
        jtis.push(s(&claims(&s(&r.body, "access_token")).1, "jti"));
    }
    let other = register(&app, json!({"scope": "a"})).await;
    let r = app
        .token(&s(&other, "client_id"), &s(&other, "client_secret"), "")
        .await;
    let other_jti = s(&claims(&s(&r.body, "access_token")).1, "jti");
    // A public client with a user grant.
    add_user(&app, "alice").await;
    let pc = public_client(&app, json!({})).await;
    let (at, rt) = full_code_flow(&app, &pc).await;
    let pjti = s(&claims(&at).1, "jti");

    let r = app
        .delete(&format!("/oauth2/register/{id}"), Some(&admin()))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .delete(&format!("/oauth2/register/{pc}"), Some(&admin()))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let feed = feed_jtis(&app).await;
    for j in jtis.iter().chain([&pjti]) {
        assert!(feed.contains(j), "{j} not on the feed");
        assert!(app.state.store.is_revoked(j).await.unwrap());
    }
    assert!(!feed.contains(&other_jti), "another client's token stays");
    let h = crate::crypto::token_hash(&rt);
    assert_eq!(app.state.store.get_refresh_token(&h).await.unwrap(), None);
}

// ------------------------------------------------------------------ 7. token exchange default

async fn exchange(app: &App, client: &Value, subject: &str) -> Resp {
    app.form(
        "/oauth2/token",
        &form_body(&[
            ("grant_type", XG),
            ("subject_token", subject),
            ("subject_token_type", AT_TYPE),
        ]),
        Some(&super::tests::basic(
            &s(client, "client_id"),
            &s(client, "client_secret"),
        )),
    )
    .await
}

/// Without `subject_audiences` a client exchanges only tokens sent to itself (one of its
/// own registered audiences, or its client id), not any live token.
async fn token_exchange_without_subject_audiences_takes_only_tokens_for_the_client(app: App) {
    let svc = register(
        &app,
        json!({"grant_types": [XG], "scope": "", "audience": ["https://svc"],
               "token_exchange": {"audiences": ["https://down"], "scopes": ["a"]}}),
    )
    .await;
    let caller = |aud: &str| {
        let app = &app;
        let aud = aud.to_string();
        async move {
            let c = register(app, json!({"scope": "a", "audience": [aud]})).await;
            let r = app
                .token(&s(&c, "client_id"), &s(&c, "client_secret"), "")
                .await;
            s(&r.body, "access_token")
        }
    };
    for foreign in ["https://elsewhere", "tollgate"] {
        let t = caller(foreign).await;
        assert_error(
            &exchange(&app, &svc, &t).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        );
    }
    let t = caller("https://svc").await;
    let r = exchange(&app, &svc, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let t = caller(&s(&svc, "client_id")).await;
    let r = exchange(&app, &svc, &t).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// A subject token whose client or user no longer exists is not exchanged, even when its
/// revocation was lost (the records are removed from the store directly here).
async fn token_exchange_refuses_subjects_of_deleted_clients_and_users(app: App) {
    let svc = register(
        &app,
        json!({"grant_types": [XG], "scope": "", "audience": ["https://svc"],
               "token_exchange": {"audiences": ["https://down"], "scopes": ["a", "api:read"]}}),
    )
    .await;
    let c = register(&app, json!({"scope": "a", "audience": ["https://svc"]})).await;
    let t = s(
        &app.token(&s(&c, "client_id"), &s(&c, "client_secret"), "")
            .await
            .body,
        "access_token",
    );
    assert_eq!(exchange(&app, &svc, &t).await.status, StatusCode::OK);
    assert!(app
        .state
        .store
        .delete_client(&s(&c, "client_id"))
        .await
        .unwrap());
    assert_error(
        &exchange(&app, &svc, &t).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // A user's token.
    add_user(&app, "alice").await;
    let pc = public_client(&app, json!({"audience": ["https://svc"]})).await;
    let (at, _) = full_code_flow(&app, &pc).await;
    assert_eq!(claims(&at).1["aud"], "https://svc");
    assert_eq!(exchange(&app, &svc, &at).await.status, StatusCode::OK);
    assert!(app.state.store.delete_user("alice").await.unwrap());
    assert_error(
        &exchange(&app, &svc, &at).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    add_user(&app, "alice").await;
    assert_error(
        &exchange(&app, &svc, &at).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

// ------------------------------------------------------------ 11. private_key_jwt audience

/// `aud` must be exactly the issuer or the token endpoint, as a string or an array of that
/// one value: an array that also names another audience (an assertion meant for another
/// server, the 2025 audience-injection pattern) is refused.
async fn client_assertion_with_extra_audiences_is_refused(app: App) {
    let pem = keys::generate_pem(SigningAlg::ES256).unwrap();
    let (kid, jwk) = keys::public_jwk(SigningAlg::ES256, &pem).unwrap();
    let c = register(
        &app,
        json!({"token_endpoint_auth_method": "private_key_jwt", "scope": "a",
               "jwks": {"keys": [jwk]}}),
    )
    .await;
    let cid = s(&c, "client_id");
    let iss = app.state.cfg.issuer.clone();
    let te = format!("{iss}/oauth2/token");
    let now = now_secs();
    let call = |aud: Value, jti: String| {
        let app = &app;
        let a = assertion(
            &pem,
            jsonwebtoken::Algorithm::ES256,
            &kid,
            json!({"iss": cid, "sub": cid, "aud": aud, "exp": now + 60, "iat": now, "jti": jti}),
        );
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
    let refused = [
        json!(["https://other.example", iss.clone()]),
        json!([te.clone(), "https://other.example/token"]),
        json!([iss.clone(), te.clone()]),
        json!([iss.clone(), iss.clone()]),
        json!([]),
        json!(format!("{iss}/")),
        json!(42),
        json!([[iss.clone()]]),
    ];
    for (i, aud) in refused.into_iter().enumerate() {
        let r = call(aud.clone(), format!("bad{i}")).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    for (i, aud) in [
        json!(iss.clone()),
        json!(te.clone()),
        json!([iss.clone()]),
        json!([te.clone()]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = call(aud.clone(), format!("good{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{aud}: {:?}", r.body);
    }
}

store_suite! {
    config: |c| c.rate_limit_per_ip = 0;
    self_service_put_cannot_raise_the_clients_own_scope,
    self_service_put_cannot_change_any_privileged_field,
    self_service_put_may_rotate_the_clients_own_keys,
    registration_access_token_of_another_client_or_none_is_refused,
    deleted_users_refresh_token_and_session_stop_working,
    recreated_user_with_the_same_name_inherits_nothing,
    deleted_clients_tokens_are_revoked_at_the_edge,
    token_exchange_without_subject_audiences_takes_only_tokens_for_the_client,
    token_exchange_refuses_subjects_of_deleted_clients_and_users,
    client_assertion_with_extra_audiences_is_refused,
}
