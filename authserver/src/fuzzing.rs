//! Property functions of the fuzz targets (`authserver/fuzz`), shared with the corpus
//! regression test (`tests/fuzz_corpus.rs`): each takes one input as bytes, runs the code
//! under test and panics when a property does not hold. Behind the `fuzzing` feature, which
//! the server binary never enables. Targets, input formats and properties: `docs/fuzzing.md`.
//!
//! A harness, not a request path: panicking is how it reports a broken property.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::config::Config;
use crate::error::OAuthError;
use crate::form::{parse_scope, valid_scope_token, Params};
use crate::keys::{new_stored_key, public_jwk, SigningAlg};
use crate::state::AppState;
use crate::store::memory::MemoryStore;
use crate::store::{
    now_secs, AuthCodeRecord, ClientMetadata, ClientRecord, RefreshTokenRecord, Store, StoredKey,
};
use crate::{crypto, tokens};

/// A property function: one input, a panic when a property fails.
pub type Property = fn(&[u8]);

/// Every target: its name (the fuzz target's and its corpus folder's) and its property.
pub const TARGETS: &[(&str, Property)] = &[
    ("form_parse", form_parse),
    ("token_request", token_request),
    ("dpop_proof", dpop_proof),
];

const FORM: &str = "application/x-www-form-urlencoded";

/// RFC 6749 §5.2 error codes, RFC 8707's `invalid_target` and RFC 8693's
/// `unsupported_token_type`: every code the token endpoint may answer.
const TOKEN_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "invalid_dpop_proof",
    "use_dpop_nonce",
];

/// RFC 6749 §5.2: `error_description` is limited to %x20-21 / %x23-5B / %x5D-7E.
fn description_charset(s: &str) -> bool {
    s.bytes()
        .all(|c| c == 0x20 || c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
}

/// What a refused parse must look like to the client: a 400 with a form error code.
fn check_error(e: &OAuthError) {
    let code = e.code();
    assert!(
        matches!(code, "invalid_request" | "invalid_scope"),
        "a form error answered {code}"
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

/// `dpop_proof`: the input is the value of a `DPoP` header, checked as the token endpoint
/// checks it (`POST https://server.example.com/token` at RFC 9449's example time, so the
/// RFC's own proof is a seed that passes), with and without required nonces. Properties:
/// never a panic; the same answer twice; an accepted proof has a thumbprint-shaped `jkt`,
/// a `jti` of 1 to 256 bytes and an `iat` in the window; requiring a nonce only ever turns
/// an acceptance into `UseNonce`, never a refusal into an acceptance; a refusal's
/// description stays in RFC 6749's charset.
pub fn dpop_proof(data: &[u8]) {
    use crate::dpop::{self, DpopError, Expect, Nonces};
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let now = 1_562_262_616;
    let nonces = Nonces::new(b"fuzz");
    let base = Expect {
        method: "POST",
        uri: "https://server.example.com/token",
        now,
        max_age: 300,
        max_skew: 60,
        access_token: None,
        nonces: None,
    };
    let plain = dpop::verify(proof, &base);
    assert_eq!(plain, dpop::verify(proof, &base), "not deterministic");
    let with_nonce = dpop::verify(
        proof,
        &Expect {
            nonces: Some(&nonces),
            ..base
        },
    );
    match &plain {
        Ok(p) => {
            assert!(dpop::is_thumbprint(&p.jkt), "jkt {:?}", p.jkt);
            assert!(!p.jti.is_empty() && p.jti.len() <= dpop::MAX_JTI_LEN);
            assert!(p.iat + 300 >= now && p.iat <= now + 60, "iat {}", p.iat);
            assert!(
                matches!(&with_nonce, Ok(q) if q == p) || with_nonce == Err(DpopError::UseNonce),
                "a nonce changed an acceptance into {with_nonce:?}"
            );
        }
        Err(e) => {
            assert!(with_nonce.is_err(), "a nonce made a refused proof pass");
            if let DpopError::Invalid(msg) = e {
                assert!(description_charset(msg), "description {msg:?}");
            }
            assert_ne!(*e, DpopError::UseNonce, "no nonce was required");
        }
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    }
}

/// `form_parse`: the first line is a `Content-Type`, the rest a form body. Properties: the
/// strict parser agrees with the `form_urlencoded` reference decoder on every body it
/// accepts (same parameters, empty values omitted) and refuses what the reference would
/// read differently (bad escapes, invalid UTF-8, repeats); decoding, re-encoding and
/// decoding again gives the same parameters; `from_request` is `parse` behind a content-type
/// check; scope values split into valid scope tokens; every refusal is a 400
/// `invalid_request` / `invalid_scope` whose description stays within RFC 6749's charset.
pub fn form_parse(data: &[u8]) {
    let (ct, body) = split_line(data);
    let direct = Params::parse(body);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(ct) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let form_ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(FORM));
    match (Params::from_request(&headers, body), &direct) {
        (Ok(a), Ok(b)) => {
            assert!(form_ct);
            assert_eq!(&a, b);
        }
        // Not a form: 400 invalid_request (RFC 6749 §5.2), never 415.
        (Err(e @ OAuthError::InvalidRequest(_)), _) if !form_ct => {
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        (Err(e), _) if !form_ct => panic!("a request that is not a form got {e:?}"),
        (Err(e), Err(d)) => {
            assert!(form_ct);
            assert_eq!(e.code(), d.code());
        }
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => panic!("from_request and parse disagree"),
    }
    let p = match direct {
        Ok(p) => p,
        Err(e) => {
            check_error(&e);
            assert!(
                description_charset(&error_description(&e)),
                "error_description outside RFC 6749's charset: {:?}",
                error_description(&e)
            );
            return;
        }
    };
    // The reference decoder reads the same parameters.
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
        .into_owned()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let mut canonical = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        assert!(!k.is_empty(), "an empty name was accepted");
        match k.as_str() {
            "resource" | "audience" => {
                assert!(p.all(k).contains(v), "{k} lost a value");
            }
            _ => assert_eq!(p.get(k), Some(v.as_str()), "{k} differs from the reference"),
        }
        canonical.append_pair(k, v);
    }
    let again = Params::parse(canonical.finish().as_bytes())
        .unwrap_or_else(|e| panic!("the re-encoded form does not parse: {e}"));
    assert_eq!(again, p, "decode, encode, decode is not the identity");
    for (k, v) in &pairs {
        if let Ok(tokens) = parse_scope(v) {
            let words: Vec<&str> = v.split(' ').filter(|t| !t.is_empty()).collect();
            assert_eq!(tokens, words, "scope {k}");
            assert!(tokens.iter().all(|t| valid_scope_token(t)));
        } else if let Err(e) = parse_scope(v) {
            assert_eq!(e.code(), "invalid_scope");
            assert!(
                description_charset(&error_description(&e)),
                "error_description outside RFC 6749's charset: {:?}",
                error_description(&e)
            );
        }
    }
}

fn error_description(e: &OAuthError) -> String {
    let body = axum::body::to_bytes(
        axum::response::IntoResponse::into_response(clone_error(e)).into_body(),
        64 * 1024,
    );
    let bytes = runtime()
        .block_on(body)
        .unwrap_or_else(|e| panic!("error body: {e}"));
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("error body: {e}"));
    v["error_description"].as_str().unwrap_or("").to_string()
}

fn clone_error(e: &OAuthError) -> OAuthError {
    // The variants a form parse returns; their text is what the response carries.
    match e {
        OAuthError::InvalidRequest(d) => OAuthError::InvalidRequest(d.clone()),
        OAuthError::InvalidScope(d) => OAuthError::InvalidScope(d.clone()),
        OAuthError::UnsupportedMediaType(d) => OAuthError::UnsupportedMediaType(d.clone()),
        other => OAuthError::ServerError(other.to_string()),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

// ------------------------------------------------------------------ the token endpoint

/// Client secrets, the pepper and the other fixed secrets of the token endpoint's world:
/// none may ever appear in an answer.
pub const BASIC_CLIENT: (&str, &str) = ("fuzz-basic", "fuzz-basic-secret-0123456789");
pub const POST_CLIENT: (&str, &str) = ("fuzz-post", "fuzz-post-secret-0123456789");
pub const PUBLIC_CLIENT: &str = "fuzz-public";
pub const JWT_CLIENT: &str = "fuzz-jwt";
pub const PEPPER: &str = "fuzz-pepper-0123456789abcdef";
/// An authorization code of the public client, with PKCE (S256 of [`CODE_VERIFIER`]).
pub const CODE: &str = "fuzz-code-0123456789abcdefghijklmnopqrstuvwxyz";
pub const CODE_VERIFIER: &str = "fuzz-verifier-0123456789abcdefghijklmnopqrstuvwxyz";
/// The id of the user `alice` the seeded code and refresh token speak for.
const FUZZ_USER_ID: &str = "fuzz-user-alice";
pub const REDIRECT_URI: &str = "https://app.fuzz.test/callback";
/// A refresh token of the public client.
pub const REFRESH_TOKEN: &str = "tg_rt_fuzz-refresh-0123456789abcdefghijklmnop";
/// Replaced in a `token_request` body by a live access token of the basic client (scope
/// `api:read api:write`, audience `fuzz-api`), for token exchange.
pub const SUBJECT_PLACEHOLDER: &str = "SUBJECT_TOKEN";

struct World {
    signing_key: StoredKey,
    assertion_jwk: Value,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let now = now_secs();
        let signing_key = new_stored_key(SigningAlg::ES256, now, now)
            .unwrap_or_else(|e| panic!("signing key: {e}"));
        let other = new_stored_key(SigningAlg::ES256, now, now)
            .unwrap_or_else(|e| panic!("assertion key: {e}"));
        let (_, mut assertion_jwk) = public_jwk(SigningAlg::ES256, &other.private_pem)
            .unwrap_or_else(|e| panic!("assertion key: {e}"));
        assertion_jwk["kid"] = json!("fuzz-assertion");
        World {
            signing_key,
            assertion_jwk,
        }
    })
}

fn client(id: &str, secret: Option<&str>, meta: Value) -> ClientRecord {
    let metadata: ClientMetadata =
        serde_json::from_value(meta).unwrap_or_else(|e| panic!("client metadata: {e}"));
    ClientRecord {
        client_id: id.into(),
        secret_hash: secret.map(|s| crypto::secret_hash(PEPPER.as_bytes(), s)),
        registration_token_hash: None,
        metadata,
        created_at: 0,
        updated_at: 0,
    }
}

fn clients() -> Vec<ClientRecord> {
    let w = world();
    vec![
        client(
            BASIC_CLIENT.0,
            Some(BASIC_CLIENT.1),
            json!({"grant_types": ["client_credentials", "refresh_token",
                                   "urn:ietf:params:oauth:grant-type:token-exchange"],
                   "token_endpoint_auth_method": "client_secret_basic",
                   "scope": "api:read api:write", "audience": ["fuzz-api", "other-api"],
                   "access_token_format": "jwt",
                   "token_exchange": {"audiences": ["downstream"], "scopes": ["api:read"],
                                      "subject_audiences": ["fuzz-api"]}}),
        ),
        client(
            POST_CLIENT.0,
            Some(POST_CLIENT.1),
            json!({"grant_types": ["client_credentials"],
                   "token_endpoint_auth_method": "client_secret_post",
                   "scope": "api:read", "access_token_format": "opaque",
                   "access_token_ttl": 60}),
        ),
        client(
            PUBLIC_CLIENT,
            None,
            json!({"grant_types": ["authorization_code", "refresh_token"],
                   "token_endpoint_auth_method": "none", "scope": "openid api:read",
                   "redirect_uris": [REDIRECT_URI], "response_types": ["code"],
                   "access_token_format": "jwt"}),
        ),
        client(
            JWT_CLIENT,
            None,
            json!({"grant_types": ["client_credentials"],
                   "token_endpoint_auth_method": "private_key_jwt", "scope": "api:read",
                   "access_token_format": "jwt", "jwks": {"keys": [w.assertion_jwk]}}),
        ),
    ]
}

/// A fresh in-memory world: the clients, the signing key, a code, a refresh token, and a
/// live subject token (returned).
async fn fresh_state() -> (Arc<AppState>, String) {
    let mut cfg = Config::for_tests();
    cfg.secret_pepper = Some(PEPPER.into());
    // No rate limits: every input is judged on its own, whatever ran before.
    cfg.rate_limit_per_client = 0;
    cfg.rate_limit_per_ip = 0;
    let store = Arc::new(MemoryStore::default());
    let now = now_secs();
    store
        .put_key(&world().signing_key)
        .await
        .unwrap_or_else(|e| panic!("put_key: {e}"));
    for c in clients() {
        store
            .create_client(&c)
            .await
            .unwrap_or_else(|e| panic!("create_client: {e}"));
    }
    // The user the code and the refresh token speak for (a grant of a user who does not
    // exist is refused).
    store
        .create_user(&crate::store::UserRecord {
            username: "alice".into(),
            password_hash: String::new(),
            created_at: now,
            user_id: FUZZ_USER_ID.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("create_user: {e}"));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(CODE_VERIFIER.as_bytes()));
    store
        .save_auth_code(
            &crypto::token_hash(CODE),
            &AuthCodeRecord {
                client_id: PUBLIC_CLIENT.into(),
                redirect_uri: REDIRECT_URI.into(),
                redirect_uri_given: true,
                scope: "openid api:read".into(),
                aud: "fuzz-api".into(),
                sub: "alice".into(),
                user_id: FUZZ_USER_ID.into(),
                code_challenge: Some(challenge),
                code_challenge_method: Some("S256".into()),
                grant_id: "grant-code".into(),
                auth_time: now,
                exp: now + 600,
                dpop_jkt: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("save_auth_code: {e}"));
    store
        .save_refresh_token(
            &crypto::token_hash(REFRESH_TOKEN),
            &RefreshTokenRecord {
                client_id: PUBLIC_CLIENT.into(),
                sub: "alice".into(),
                user_id: FUZZ_USER_ID.into(),
                scope: "openid api:read".into(),
                aud: "fuzz-api".into(),
                grant_id: "grant-refresh".into(),
                iat: now,
                exp: now + 3600,
                jkt: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("save_refresh_token: {e}"));
    let state = AppState::new(cfg, store)
        .await
        .unwrap_or_else(|e| panic!("state: {e}"));
    let subject = tokens::issue(
        &state,
        tokens::TokenRequest {
            client_id: BASIC_CLIENT.0,
            sub: BASIC_CLIENT.0,
            scope: "api:read api:write",
            aud: "fuzz-api",
            ttl: 600,
            opaque: false,
            extra: Default::default(),
            user_id: None,
            jkt: None,
            x5t: None,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("subject token: {e}"));
    (state, subject.token)
}

/// Decoded `token_request` input: `Authorization` line, `Content-Type` line, body.
pub struct TokenInput {
    pub authorization: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

pub fn token_input(data: &[u8]) -> TokenInput {
    let (auth, rest) = split_line(data);
    let (ct, body) = split_line(rest);
    TokenInput {
        authorization: (!auth.is_empty()).then(|| auth.to_vec()),
        content_type: (!ct.is_empty()).then(|| ct.to_vec()),
        body: body.to_vec(),
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The answer of the token endpoint to one input: status, headers, JSON body.
pub struct TokenAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

/// Run one input through the real router (middleware included) over a fresh in-memory
/// store; `None` when the input cannot be sent as an HTTP request (bad header bytes).
pub fn token_answer(data: &[u8]) -> Option<(TokenAnswer, Arc<AppState>)> {
    let input = token_input(data);
    runtime().block_on(async move {
        let (state, subject) = fresh_state().await;
        let body = replace_all(
            &input.body,
            SUBJECT_PLACEHOLDER.as_bytes(),
            subject.as_bytes(),
        );
        let mut req = Request::builder().method(Method::POST).uri("/oauth2/token");
        if let Some(a) = &input.authorization {
            req = req.header(header::AUTHORIZATION, HeaderValue::from_bytes(a).ok()?);
        }
        if let Some(c) = &input.content_type {
            req = req.header(header::CONTENT_TYPE, HeaderValue::from_bytes(c).ok()?);
        }
        let req = req.body(Body::from(body)).ok()?;
        let router = crate::http::router(state.clone())
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let resp = router
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("router: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("body: {e}"))
            .to_bytes()
            .to_vec();
        let body: Value = serde_json::from_slice(&raw)
            .unwrap_or_else(|e| panic!("{status}: the answer is not JSON ({e})"));
        Some((
            TokenAnswer {
                status,
                headers,
                body,
                raw,
            },
            state,
        ))
    })
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_else(|e| panic!("issued token payload: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("issued token payload: {e}"))
}

/// `token_request`: the first line is the `Authorization` header (empty: none), the second
/// the `Content-Type` (empty: none), the rest the body (`SUBJECT_TOKEN` is replaced by a
/// live access token), sent through the real router to a fresh in-memory world (four
/// clients: basic, post, public with a code and a refresh token, private_key_jwt).
/// Properties: the answer is JSON with `Cache-Control: no-store`; never a 5xx and never a
/// rate limit (there are none); an error is one of the token endpoint's codes, its
/// description within RFC 6749's charset, `invalid_client` is a 401 with
/// `WWW-Authenticate`; no answer contains a client secret, the pepper, the code verifier or
/// the signing key; a 200 carries a Bearer token that the server recorded, signed with its
/// key for its issuer, within the client's scope and audiences.
pub fn token_request(data: &[u8]) {
    let Some((a, state)) = token_answer(data) else {
        return;
    };
    let status = a.status;
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(&a.raw)
    );
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        a.headers
            .get(header::CACHE_CONTROL)
            .map(HeaderValue::as_bytes),
        Some(&b"no-store"[..]),
        "{status} without Cache-Control: no-store"
    );
    assert_eq!(
        a.headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
        Some(&b"application/json"[..])
    );
    let text = String::from_utf8_lossy(&a.raw);
    for secret in [
        BASIC_CLIENT.1,
        POST_CLIENT.1,
        PEPPER,
        CODE_VERIFIER,
        REFRESH_TOKEN,
        world().signing_key.private_pem.as_str(),
    ] {
        assert!(!text.contains(secret), "the answer leaks a secret");
    }
    if status != StatusCode::OK {
        let code = a.body["error"].as_str().unwrap_or_default();
        let known = TOKEN_ERRORS.contains(&code)
            || (status == StatusCode::PAYLOAD_TOO_LARGE && code == "invalid_request");
        assert!(known, "{status} {code}: not a token endpoint error");
        if let Some(d) = a.body.get("error_description") {
            let d = d
                .as_str()
                .unwrap_or_else(|| panic!("error_description: {d}"));
            assert!(
                description_charset(d),
                "error_description outside RFC 6749's charset: {d:?}"
            );
        }
        if code == "invalid_client" {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));
        }
        return;
    }
    // A 200: a Bearer token of a known client, within what that client may get.
    assert_eq!(a.body["token_type"], "Bearer");
    assert!(a.body["expires_in"].as_u64().is_some_and(|e| e > 0));
    let token = a.body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("200 without access_token"));
    let rec = runtime()
        .block_on(tokens::lookup(&state, token))
        .unwrap_or_else(|e| panic!("lookup: {e}"))
        .map(|(r, revoked)| {
            assert!(!revoked);
            r
        })
        .unwrap_or_else(|| panic!("an issued token is not recorded"));
    let all = clients();
    let c = all
        .iter()
        .find(|c| c.client_id == rec.client_id)
        .unwrap_or_else(|| panic!("issued to unknown client {}", rec.client_id));
    let registered: Vec<&str> = c.metadata.scope.split(' ').collect();
    let scope = a.body["scope"].as_str().unwrap_or_default();
    assert_eq!(scope, rec.scope);
    assert!(
        scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .all(|s| registered.contains(&s)),
        "scope {scope:?} beyond the client's {registered:?}"
    );
    if rec.format == "jwt" {
        let claims = claims_of(token);
        assert_eq!(claims["iss"], state.cfg.issuer.as_str());
        assert_eq!(claims["client_id"], rec.client_id.as_str());
        assert_eq!(claims["aud"], rec.aud.as_str());
        let jwks = state.keys().jwks(now_secs(), state.max_token_ttl());
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks).unwrap_or_else(|e| panic!("jwks: {e}"));
        let kid = jsonwebtoken::decode_header(token)
            .unwrap_or_else(|e| panic!("issued header: {e}"))
            .kid;
        let jwk = set
            .keys
            .iter()
            .find(|k| k.common.key_id == kid)
            .unwrap_or_else(|| panic!("signed by a key outside the JWKS"));
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap_or_else(|e| panic!("{e}"));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[rec.aud.as_str()]);
        v.set_issuer(&[state.cfg.issuer.as_str()]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .unwrap_or_else(|e| panic!("the issued token does not verify: {e}"));
    }
    let allowed_aud: Vec<String> = if rec.act.is_some() {
        vec!["downstream".into()]
    } else if c.metadata.audience.is_empty() {
        vec![state.cfg.default_audience.clone(), "fuzz-api".into()]
    } else {
        c.metadata.audience.clone()
    };
    assert!(allowed_aud.contains(&rec.aud), "audience {}", rec.aud);
}
