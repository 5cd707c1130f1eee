//! The OpenAPI 3.1 contract, generated from the handlers' `#[utoipa::path]` attributes and
//! the schema types below (the types only describe the wire format: the handlers build
//! their JSON themselves).
//!
//! Every operation is tagged with the listener that serves it (`public`, `admin`, or both);
//! [`document`] gives the whole contract (committed as `docs/openapi.json`, served on the
//! admin listener) or one listener's part (the public one is served at
//! `/.well-known/openapi.json` on the public listener). `make openapi` rewrites the
//! committed file; a test fails while it is not current.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Tag of the operations served on the public listener (`TOLLGATE_LISTEN`).
pub const PUBLIC: &str = "public";
/// Tag of the operations served on the admin listener (`TOLLGATE_ADMIN_LISTEN`).
pub const ADMIN: &str = "admin";

/// Which part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Both listeners (docs/openapi.json).
    Full,
    /// The operations of the public listener.
    Public,
    /// The operations of the admin listener.
    Admin,
}

/// RFC 6749 §5.2 error response, the shape of every JSON error of this server.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The error code (`invalid_request`, `invalid_client`, `not_found`, ...).
    error: String,
    /// Human-readable detail, RFC 6749 §5.2 character set.
    error_description: Option<String>,
}

/// The error answers that the middleware and the store give on most endpoints (a
/// malformed request, the body and head limits, the rate limit, an unreachable store or a
/// timeout), listed once: `responses(..., super::openapi::CommonErrors)`. Documentation
/// only; the handlers answer [`crate::error::OAuthError`]s.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum CommonErrors {
    #[response(
        status = 400,
        description = "invalid_request: malformed request, repeated Authorization or Content-Type header"
    )]
    BadRequest(ErrorBody),
    #[response(status = 413, description = "request body too large")]
    BodyTooLarge(ErrorBody),
    #[response(status = 429, description = "rate limited (Retry-After)")]
    RateLimited(ErrorBody),
    #[response(status = 431, description = "request head too large")]
    HeadTooLarge(ErrorBody),
    #[response(
        status = 503,
        description = "temporarily_unavailable: store unreachable or request timed out"
    )]
    Unavailable(ErrorBody),
}

/// The body and head limits alone, for the endpoints that answer their other errors in
/// their own form (the HTML pages of `/oauth2/authorize`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum HeadLimits {
    #[response(status = 413, description = "request body too large")]
    BodyTooLarge(ErrorBody),
    #[response(status = 431, description = "request head too large")]
    HeadTooLarge(ErrorBody),
}

/// The rate limit alone, for the cacheable documents (metadata, JWKS, the edge module).
#[derive(utoipa::IntoResponses)]
#[response(status = 429, description = "rate limited (Retry-After)")]
#[allow(dead_code)]
pub struct RateLimited(ErrorBody);

/// RFC 6749 §5.1 / RFC 8693 §2.2.1 token response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenResponse {
    access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to the key of the request's DPoP proof
    /// (RFC 9449 §5).
    token_type: String,
    expires_in: u64,
    scope: Option<String>,
    refresh_token: Option<String>,
    issued_token_type: Option<String>,
}

/// A token request (RFC 6749 §4.1.3, §4.4.2, §6; RFC 8693 §2.1), form-encoded. Client
/// credentials go in `Authorization: Basic`, in `client_id`/`client_secret`, or as a
/// `client_assertion` (RFC 7523).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenRequest {
    grant_type: String,
    scope: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion: Option<String>,
    client_assertion_type: Option<String>,
}

/// RFC 7662 §2.1 / RFC 7009 §2.1 request, form-encoded.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenParam {
    token: String,
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion: Option<String>,
    client_assertion_type: Option<String>,
}

/// RFC 7662 §2.2 introspection response: `{"active": false}` for any token the caller may
/// not see.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Introspection {
    active: bool,
    iss: Option<String>,
    sub: Option<String>,
    client_id: Option<String>,
    aud: Option<Value>,
    exp: Option<u64>,
    iat: Option<u64>,
    nbf: Option<u64>,
    jti: Option<String>,
    /// `Bearer` or `DPoP`.
    token_type: Option<String>,
    scope: Option<String>,
    act: Option<Value>,
    /// RFC 9449 §6.2: `{"jkt": <RFC 7638 thumbprint>}` of a DPoP-bound token; RFC 8705
    /// §3.2: `{"x5t#S256": <certificate SHA-256, base64url>}` of a certificate-bound one.
    cnf: Option<Value>,
}

/// RFC 8414 authorization server metadata (OpenID discovery adds a few members).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Metadata {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
    authorization_endpoint: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
    grant_types_supported: Vec<String>,
    response_types_supported: Vec<String>,
    token_endpoint_auth_methods_supported: Vec<String>,
    /// RFC 9449 §5.1: the `alg` values of DPoP proofs.
    dpop_signing_alg_values_supported: Vec<String>,
    /// RFC 8705 §3.3: certificate-bound access tokens (`TOLLGATE_CERT_BOUND_TOKENS`).
    tls_client_certificate_bound_access_tokens: bool,
}

/// RFC 7517 JWK Set.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JwkSet {
    keys: Vec<Value>,
}

/// RFC 7591 §2 client metadata (a JSON object; docs/contracts.md lists the members).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClientMetadata {
    client_name: Option<String>,
    grant_types: Option<Vec<String>>,
    scope: Option<String>,
    redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    /// RFC 9449 §5.2: every token request of the client must carry a DPoP proof.
    dpop_bound_access_tokens: Option<bool>,
    /// RFC 8705 §3.4: the client's access tokens are bound to its mesh client certificate
    /// (needs `TOLLGATE_CERT_BOUND_TOKENS`; admin-only, like every privilege).
    tls_client_certificate_bound_access_tokens: Option<bool>,
    /// RFC 8705 §2.1.2, for `tls_client_auth` (exactly one of the five): the subject DN of the
    /// client's certificate, RFC 4514.
    tls_client_auth_subject_dn: Option<String>,
    /// A DNS name in the certificate's subjectAltName.
    tls_client_auth_san_dns: Option<String>,
    /// A URI (e.g. a SPIFFE ID) in the certificate's subjectAltName.
    tls_client_auth_san_uri: Option<String>,
    /// An IPv4 or IPv6 address in the certificate's subjectAltName.
    tls_client_auth_san_ip: Option<String>,
    /// An e-mail address in the certificate's subjectAltName.
    tls_client_auth_san_email: Option<String>,
}

/// RFC 7591 §3.2.1 / RFC 7592 §3 client information response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClientInformation {
    client_id: String,
    client_id_issued_at: u64,
    registration_client_uri: String,
    /// Only in the registration response.
    registration_access_token: Option<String>,
    /// Only in the registration response, for clients that use a secret.
    client_secret: Option<String>,
    client_secret_expires_at: Option<u64>,
}

/// `GET /admin/clients`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ClientList {
    clients: Vec<String>,
}

/// `GET /admin/stats`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Stats {
    auth_stats: BTreeMap<String, i64>,
    live_tokens: u64,
}

/// A user who can log in (the password hash is never returned).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct User {
    username: String,
    created_at: u64,
}

/// `POST /admin/users`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewUser {
    /// 1-64 letters, digits and `. _ @ -`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    /// 8-1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

/// `GET /admin/users`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserList {
    users: Vec<User>,
}

/// A page of the revocation feed (docs/contracts.md, "Revocation feed").
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RevocationPage {
    cursor: String,
    resync: bool,
    more: bool,
    revocations: Vec<Value>,
    /// Present on an answer to a long poll (`wait`): the wait this server applied, seconds.
    wait_s: Option<u64>,
}

/// A quota lease request, form-encoded (docs/contracts.md, "Rate-limit leases").
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LeaseRequest {
    key: String,
    limit: u64,
    window_s: u64,
    want: u64,
}

/// A quota lease.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Lease {
    granted: u64,
    used: u64,
    limit: u64,
    reset_s: u64,
    reset_ms: u64,
}

/// `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    status: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    status: String,
    store: String,
    signing_key: String,
}

/// An authorization request (RFC 6749 §4.1.1, RFC 7636), query or form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuthorizeForm {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The login form (the authorization request travels with it).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LoginForm {
    username: Option<String>,
    password: Option<String>,
    csrf: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
}

/// The consent form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConsentForm {
    decision: Option<String>,
    csrf: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
}

/// `GET /.well-known/openapi.json`: this contract.
#[utoipa::path(
    get,
    path = "/.well-known/openapi.json",
    tags = ["public", "admin"],
    responses(
        (status = 200, description = "The OpenAPI document of this listener (the whole contract on the admin listener)", content_type = "application/json", body = Object),
    )
)]
pub async fn served_public() -> Response {
    json_doc(document(Part::Public))
}

/// The admin listener serves the whole contract.
pub async fn served_full() -> Response {
    json_doc(document(Part::Full))
}

fn json_doc(v: Value) -> Response {
    let mut r = axum::Json(v).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        c.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        c.add_security_scheme(
            "mesh_identity",
            SecurityScheme::MutualTls {
                description: Some(
                    "Istio mTLS: the caller's SPIFFE ID, as the auth server's sidecar writes it in the last X-Forwarded-Client-Cert element, is one of TOLLGATE_EDGE_TRUSTED_PRINCIPALS (docs/security.md \"Edge endpoints\")".into(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
        c.add_security_scheme(
            "registration_access_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate authorization server",
        description = "OAuth 2.0 authorization server of Tollgate. Two listeners: `public` (TOLLGATE_LISTEN) and `admin` (TOLLGATE_ADMIN_LISTEN); each operation is tagged with the listener(s) that serve it. Every error is an RFC 6749 §5.2 JSON object (`ErrorBody`), except the HTML pages of the authorization code flow and hyper's own answers to what is not HTTP (docs/security.md).",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::metadata::authorization_server,
        super::metadata::openid_configuration,
        super::metadata::jwks,
        served_public,
        super::authorize::authorize,
        super::authorize::login,
        super::authorize::consent,
        super::token::token,
        super::introspect::introspect,
        super::revoke::revoke,
        super::register::create,
        super::register::read,
        super::register::update,
        super::register::delete,
        super::edge::revocations,
        super::ext_authz::check,
        super::edge::module,
        super::edge::module_sha256,
        super::lease::lease,
        super::admin::list_clients,
        super::admin::stats,
        super::users::list,
        super::users::create,
        super::users::read,
        super::users::delete,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
    ),
    components(schemas(
        ErrorBody, TokenResponse, TokenRequest, TokenParam, Introspection, Metadata, JwkSet,
        ClientMetadata, ClientInformation, ClientList, Stats, User, NewUser, UserList,
        RevocationPage, LeaseRequest, Lease, Health, Readiness, AuthorizeForm, LoginForm,
        ConsentForm,
    )),
    modifiers(&Security),
    tags(
        (name = "public", description = "Served on the public listener (TOLLGATE_LISTEN)"),
        (name = "admin", description = "Served on the admin listener (TOLLGATE_ADMIN_LISTEN); never exposed through a gateway"),
    )
)]
struct Contract;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The contract, or one listener's part of it (the operations tagged with it).
pub fn document(part: Part) -> Value {
    let mut doc = serde_json::to_value(Contract::openapi()).unwrap_or_else(|_| json!({}));
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let tag = match part {
        Part::Full => return doc,
        Part::Public => PUBLIC,
        Part::Admin => ADMIN,
    };
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            if let Some(item) = item.as_object_mut() {
                for m in METHODS {
                    let keep = item.get(m).is_some_and(|op| {
                        op["tags"]
                            .as_array()
                            .is_some_and(|t| t.iter().any(|x| x == tag))
                    });
                    if !keep {
                        item.remove(m);
                    }
                }
            }
        }
        paths.retain(|_, item| {
            item.as_object()
                .is_some_and(|o| METHODS.iter().any(|m| o.contains_key(*m)))
        });
    }
    if let Some(tags) = doc.get_mut("tags").and_then(Value::as_array_mut) {
        tags.retain(|t| t["name"] == tag);
    }
    doc
}

/// The committed form: pretty JSON and a final newline.
pub fn render(part: Part) -> String {
    let mut s = serde_json::to_string_pretty(&document(part)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_openapi_json_is_current() {
        let committed = include_str!("../../../docs/openapi.json");
        assert!(
            committed == render(Part::Full),
            "docs/openapi.json is not the contract the code generates: run `make openapi`"
        );
    }

    #[test]
    fn the_contract_is_openapi_3_1_and_each_listener_has_only_its_operations() {
        let full = document(Part::Full);
        assert_eq!(full["openapi"], "3.1.0");
        let public = document(Part::Public);
        let admin = document(Part::Admin);
        let ops = |d: &Value| -> Vec<String> {
            d["paths"]
                .as_object()
                .unwrap()
                .iter()
                .flat_map(|(p, item)| {
                    item.as_object()
                        .unwrap()
                        .keys()
                        .filter(|m| METHODS.contains(&m.as_str()))
                        .map(move |m| format!("{m} {p}"))
                })
                .collect()
        };
        let (p, a) = (ops(&public), ops(&admin));
        for op in [
            "post /oauth2/token",
            "get /oauth2/jwks",
            "get /oauth2/register/{client_id}",
        ] {
            assert!(
                p.contains(&op.to_string()),
                "{op} missing from the public part"
            );
        }
        for op in [
            "get /admin/clients",
            "post /oauth2/register",
            "get /metrics",
            "get /oauth2/register/{client_id}",
        ] {
            assert!(
                a.contains(&op.to_string()),
                "{op} missing from the admin part"
            );
        }
        for op in [
            "get /admin/clients",
            "post /oauth2/register",
            "get /metrics",
            "post /admin/users",
        ] {
            assert!(!p.contains(&op.to_string()), "{op} in the public part");
        }
        for op in ["post /oauth2/token", "get /oauth2/jwks", "get /readyz"] {
            assert!(!a.contains(&op.to_string()), "{op} in the admin part");
        }
        assert_eq!(
            ops(&full).len(),
            p.len() + a.len() - 5,
            "shared: healthz, openapi, register/{{id}} x3"
        );
    }

    /// Every declared link (RFC 7591 registration -> RFC 7592 management, user creation ->
    /// read/delete) points, in each part that has its source, at an operation of that part
    /// taking the parameters it fills: what the fuzzer's stateful phase follows.
    #[test]
    fn the_links_point_at_operations_of_the_same_part() {
        let mut seen = Vec::new();
        for part in [Part::Full, Part::Public, Part::Admin] {
            let d = document(part);
            for (path, item) in d["paths"].as_object().unwrap() {
                for (method, op) in item.as_object().unwrap() {
                    let responses = op["responses"].as_object().into_iter().flatten();
                    for (status, r) in responses {
                        for (name, link) in r["links"].as_object().into_iter().flatten() {
                            let target = link["operationRef"].as_str().unwrap();
                            let pointer = target.strip_prefix('#').unwrap();
                            let t = d.pointer(pointer).unwrap_or_else(|| {
                                panic!("{method} {path} {status} link {name}: {target} is not in the part")
                            });
                            for p in link["parameters"].as_object().unwrap().keys() {
                                let params = t["parameters"].as_array().unwrap();
                                assert!(
                                    params.iter().any(|x| x["name"] == *p),
                                    "{target} takes no parameter {p}"
                                );
                            }
                            if part == Part::Full {
                                seen.push(format!("{method} {path} {status} {name}"));
                            }
                        }
                    }
                }
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "post /admin/users 201 delete",
                "post /admin/users 201 read",
                "post /oauth2/register 201 delete",
                "post /oauth2/register 201 read",
                "post /oauth2/register 201 update",
            ]
        );
    }
}
