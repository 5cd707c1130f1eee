//! Client registration rules (RFC 7591 §2): metadata validation and defaults, shared by the
//! registration endpoint and `authserver init`.

use serde_json::Value;

use crate::error::OAuthError;
use crate::form::parse_scope;
use crate::store::ClientMetadata;

pub const GRANT_TYPES: &[&str] = &[
    "client_credentials",
    "authorization_code",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:token-exchange",
];

pub const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "self_signed_tls_client_auth",
    "tls_client_auth",
    "none",
];

/// RFC 8705 §2.2: the client proves possession of a certificate registered in its `jwks`
/// (`x5c`) on the TLS listener; no secret.
pub const SELF_SIGNED_TLS: &str = "self_signed_tls_client_auth";

/// RFC 8705 §2.1: the client presents, on the TLS listener, a certificate issued by a CA of
/// `TOLLGATE_TLS_CLIENT_CA` with the one subject it registered ([`crate::pki::Expected`]).
pub const TLS_CLIENT_AUTH: &str = "tls_client_auth";

/// Signature algorithms accepted for `private_key_jwt` client assertions.
pub const ASSERTION_ALGS: &[&str] = &["ES256", "RS256", "PS256", "EdDSA"];

/// Does a client with this `token_endpoint_auth_method` get a client secret?
pub fn uses_secret(method: &str) -> bool {
    !matches!(
        method,
        "none" | "private_key_jwt" | SELF_SIGNED_TLS | TLS_CLIENT_AUTH
    )
}

/// The SHA-256 of every certificate registered for `self_signed_tls_client_auth`: the first
/// `x5c` entry (base64 DER) of each key of the client's `jwks`.
pub fn registered_certificates(md: &ClientMetadata) -> Vec<[u8; 32]> {
    use base64::Engine as _;
    use sha2::Digest as _;
    md.extra
        .get("jwks")
        .and_then(|j| j.get("keys"))
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.get("x5c")?.as_array()?.first()?.as_str())
                .filter_map(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .map(|der| sha2::Sha256::digest(der).into())
                .collect()
        })
        .unwrap_or_default()
}

/// `jwks` of a `self_signed_tls_client_auth` client: 1 to 10 keys, each with an `x5c`
/// whose first entry is a base64 DER certificate (RFC 8705 §2.2), no private members.
fn validate_certificate_jwks(v: &Value) -> Result<(), OAuthError> {
    use base64::Engine as _;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .filter(|k| (1..=10).contains(&k.len()))
        .ok_or_else(|| bad("jwks must hold between 1 and 10 keys"))?;
    for k in keys {
        if ["d", "p", "q", "k"].iter().any(|f| k.get(*f).is_some()) {
            return Err(bad("jwks must hold public keys only"));
        }
        let der = k
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .ok_or_else(|| {
                bad("every key in jwks needs an x5c with the certificate (base64 DER)")
            })?;
        // A DER certificate is a SEQUENCE.
        if der.len() < 64 || der[0] != 0x30 {
            return Err(bad("x5c[0] is not a DER certificate"));
        }
    }
    Ok(())
}

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Validate an inline JWK Set for `private_key_jwt`: every key parses, is public, and names
/// one of [`ASSERTION_ALGS`] in `alg`.
fn validate_jwks(v: &Value) -> Result<(), OAuthError> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(v.clone())
        .map_err(|e| bad(format!("jwks is not a JWK Set: {e}")))?;
    if set.keys.is_empty() || set.keys.len() > 10 {
        return Err(bad("jwks must hold between 1 and 10 keys"));
    }
    let raw = v
        .get("keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (k, r) in set.keys.iter().zip(raw.iter()) {
        if ["d", "p", "q", "k"].iter().any(|f| r.get(*f).is_some()) {
            return Err(bad("jwks must hold public keys only"));
        }
        let alg = k
            .common
            .key_algorithm
            .map(|a| a.to_string())
            .ok_or_else(|| bad("every key in jwks needs an alg"))?;
        if !ASSERTION_ALGS.contains(&alg.as_str()) {
            return Err(bad(format!(
                "jwks alg {alg} is not one of ES256, RS256, PS256, EdDSA"
            )));
        }
        jsonwebtoken::DecodingKey::from_jwk(k)
            .map_err(|e| bad(format!("unusable key in jwks: {e}")))?;
    }
    Ok(())
}

/// Validate the `token_exchange` policy: `{"audiences": [..], "scopes": [..]}` and optional
/// `subject_audiences`, all lists of non-empty strings.
fn validate_exchange_policy(v: &Value) -> Result<(), OAuthError> {
    let Value::Object(m) = v else {
        return Err(bad("token_exchange must be an object"));
    };
    for (k, list) in m {
        if !["audiences", "scopes", "subject_audiences"].contains(&k.as_str()) {
            return Err(bad(format!("unknown token_exchange member {k:?}")));
        }
        let ok = list.as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 512))
        });
        if !ok {
            return Err(bad(format!("token_exchange.{k} must be a list of strings")));
        }
    }
    if m.get("audiences")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Err(bad(
            "token_exchange.audiences must name at least one audience",
        ));
    }
    Ok(())
}

/// Fields a client may not set itself in its metadata.
const SERVER_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "client_id_issued_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
];

/// The metadata a client may change with its own registration access token (RFC 7592):
/// what describes it and the keys it authenticates with. Every other field grants privilege
/// (what it may ask for, where codes go, what it is exempt from) and needs the admin token.
/// `redirect_uris` is not here: every client is registered with the admin token, so its
/// redirect URIs are admin-granted trust.
pub const SELF_SERVICE_FIELDS: &[&str] = &[
    "client_name",
    "contacts",
    "logo_uri",
    "client_uri",
    "policy_uri",
    "tos_uri",
    "jwks",
    "jwks_uri",
];

/// The fields outside [`SELF_SERVICE_FIELDS`] whose validated value differs between the
/// registered metadata and an update (a field present in one and absent in the other
/// differs), sorted.
pub fn privileged_changes(old: &ClientMetadata, new: &ClientMetadata) -> Vec<String> {
    let as_map = |m: &ClientMetadata| match serde_json::to_value(m) {
        Ok(Value::Object(o)) => o,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !SELF_SERVICE_FIELDS.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| crate::form::sanitize(k))
        .collect()
}

/// Longest per-client access-token lifetime, seconds (keys stay published this long after
/// retirement).
pub const MAX_ACCESS_TOKEN_TTL: u64 = 3600;

fn bad(msg: impl Into<String>) -> OAuthError {
    OAuthError::InvalidClientMetadata(msg.into())
}

/// Is this a redirect URI we accept at registration: absolute, no fragment, `https`, or
/// `http` on a loopback host (RFC 8252 §7.3), or a private-use scheme with a dot (§7.1).
pub fn valid_redirect_uri(u: &str) -> bool {
    let Ok(url) = url::Url::parse(u) else {
        return false;
    };
    if url.fragment().is_some() || u.len() > 2048 {
        return false;
    }
    match url.scheme() {
        "https" => url.host_str().is_some(),
        "http" => matches!(
            url.host_str(),
            Some("127.0.0.1") | Some("[::1]") | Some("localhost")
        ),
        s => s.contains('.'),
    }
}

/// Validate registration metadata and fill defaults. `value` is the request body.
pub fn validate(value: Value) -> Result<ClientMetadata, OAuthError> {
    let Value::Object(mut obj) = value else {
        return Err(bad("metadata must be a JSON object"));
    };
    for f in SERVER_FIELDS {
        obj.remove(*f);
    }
    let mut md: ClientMetadata = serde_json::from_value(Value::Object(obj))
        .map_err(|e| bad(format!("malformed metadata: {e}")))?;
    if md.grant_types.is_empty() {
        md.grant_types = if md.redirect_uris.is_empty() {
            vec!["client_credentials".into()]
        } else {
            vec!["authorization_code".into()]
        };
    }
    for g in &md.grant_types {
        if !GRANT_TYPES.contains(&g.as_str()) {
            return Err(bad(format!("unsupported grant type {g:?}")));
        }
    }
    if md.token_endpoint_auth_method.is_empty() {
        md.token_endpoint_auth_method = "client_secret_basic".into();
    }
    if !AUTH_METHODS.contains(&md.token_endpoint_auth_method.as_str()) {
        return Err(bad(format!(
            "unsupported token_endpoint_auth_method {:?}",
            md.token_endpoint_auth_method
        )));
    }
    if md.token_endpoint_auth_method == "none"
        && md.grant_types.iter().any(|g| g == "client_credentials")
    {
        return Err(bad("client_credentials needs a confidential client"));
    }
    let uses_code = md.grant_types.iter().any(|g| g == "authorization_code");
    if uses_code && md.redirect_uris.is_empty() {
        return Err(OAuthError::InvalidRedirectUri(
            "authorization_code needs redirect_uris".into(),
        ));
    }
    if let Some(u) = md.redirect_uris.iter().find(|u| !valid_redirect_uri(u)) {
        return Err(OAuthError::InvalidRedirectUri(format!(
            "redirect URI {:?} is not absolute https, loopback http or a private-use scheme, or has a fragment",
            u.chars().take(200).collect::<String>()
        )));
    }
    if md.response_types.is_empty() && uses_code {
        md.response_types = vec!["code".into()];
    }
    if let Some(r) = md.response_types.iter().find(|r| r.as_str() != "code") {
        return Err(bad(format!("unsupported response type {r:?}")));
    }
    let scopes = parse_scope(&md.scope).map_err(|_| bad("malformed scope"))?;
    md.scope = scopes.join(" ");
    if md.access_token_format.is_empty() {
        md.access_token_format = "jwt".into();
    }
    if md.access_token_format != "jwt" && md.access_token_format != "opaque" {
        return Err(bad("access_token_format must be jwt or opaque"));
    }
    if let Some(ttl) = md.access_token_ttl {
        if ttl == 0 || ttl > MAX_ACCESS_TOKEN_TTL {
            return Err(bad(format!(
                "access_token_ttl must be between 1 and {MAX_ACCESS_TOKEN_TTL}"
            )));
        }
    }
    if md.audience.iter().any(|a| a.is_empty() || a.len() > 512) {
        return Err(bad("audience entries must be non-empty strings"));
    }
    if let Some(name) = &md.client_name {
        if name.len() > 256 {
            return Err(bad("client_name is too long"));
        }
    }
    for flag in ["skip_consent", "allow_plain_pkce"] {
        if md.extra.get(flag).is_some_and(|v| !v.is_boolean()) {
            return Err(bad(format!("{flag} must be true or false")));
        }
    }
    match (md.token_endpoint_auth_method.as_str(), md.extra.get("jwks")) {
        ("private_key_jwt", Some(j)) => validate_jwks(j)?,
        ("private_key_jwt", None) => return Err(bad("private_key_jwt needs an inline jwks")),
        (SELF_SIGNED_TLS, Some(j)) => validate_certificate_jwks(j)?,
        (SELF_SIGNED_TLS, None) => {
            return Err(bad(
                "self_signed_tls_client_auth needs an inline jwks with the certificates (x5c)",
            ))
        }
        (_, Some(_)) => {
            return Err(bad(
                "jwks is only used with private_key_jwt and self_signed_tls_client_auth",
            ))
        }
        _ => {}
    }
    if md.token_endpoint_auth_method == TLS_CLIENT_AUTH {
        crate::pki::Expected::from_metadata(&md.extra).map_err(bad)?;
    } else if let Some(f) = crate::pki::SUBJECT_FIELDS
        .iter()
        .find(|f| md.extra.contains_key(**f))
    {
        return Err(bad(format!("{f} is only used with tls_client_auth")));
    }
    if md.extra.contains_key("jwks_uri") {
        return Err(bad(
            "jwks_uri is not supported: register the keys inline in jwks",
        ));
    }
    if let Some(p) = md.extra.get("token_exchange") {
        validate_exchange_policy(p)?;
        if !md.grant_types.iter().any(|g| g == TOKEN_EXCHANGE) {
            return Err(bad(
                "token_exchange policy needs the token-exchange grant type",
            ));
        }
    }
    if md.token_endpoint_auth_method == "none"
        && md
            .scope
            .split(' ')
            .any(|s| ["tollgate:edge", "tollgate:introspect", "tollgate:revoke"].contains(&s))
    {
        // Anyone who knows a public client's id can act as it.
        return Err(bad("a public client cannot hold tollgate:* privileges"));
    }
    if md.token_endpoint_auth_method == "none" && md.grant_types.iter().any(|g| g == TOKEN_EXCHANGE)
    {
        return Err(bad("token exchange needs a confidential client"));
    }
    if let Some(v) = md.extra.get("rate_limit_per_minute") {
        if !v.is_u64() {
            return Err(bad("rate_limit_per_minute must be a non-negative integer"));
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_for_a_service_client() {
        let md = validate(json!({"client_name": "svc", "scope": "a b"})).unwrap();
        assert_eq!(md.grant_types, vec!["client_credentials"]);
        assert_eq!(md.token_endpoint_auth_method, "client_secret_basic");
        assert_eq!(md.access_token_format, "jwt");
    }

    #[test]
    fn server_fields_are_ignored() {
        let md = validate(json!({"client_id": "mine", "client_secret": "x"})).unwrap();
        assert!(!md.extra.contains_key("client_id"));
        assert!(!md.extra.contains_key("client_secret"));
    }

    #[test]
    fn rejects_bad_metadata() {
        for v in [
            json!([]),
            json!({"grant_types": ["password"]}),
            json!({"grant_types": ["implicit"]}),
            json!({"token_endpoint_auth_method": "tls_client_auth"}),
            json!({"grant_types": ["authorization_code"]}),
            json!({"grant_types": ["authorization_code"], "redirect_uris": ["http://evil.example/cb"]}),
            json!({"grant_types": ["authorization_code"], "redirect_uris": ["https://a/cb#frag"]}),
            json!({"grant_types": ["authorization_code"], "redirect_uris": ["/relative"]}),
            json!({"scope": "a\"b"}),
            json!({"access_token_format": "saml"}),
            json!({"access_token_ttl": 0}),
            json!({"access_token_ttl": 100000}),
            json!({"grant_types": "client_credentials"}),
            json!({"token_endpoint_auth_method": "none"}),
            json!({"token_endpoint_auth_method": "none", "grant_types": ["authorization_code"],
                   "redirect_uris": ["https://a/cb"], "scope": "tollgate:edge"}),
            json!({"token_endpoint_auth_method": "private_key_jwt"}),
            json!({"skip_consent": "yes"}),
            json!({"jwks_uri": "https://a/jwks"}),
            json!({"response_types": ["token"], "grant_types": ["authorization_code"], "redirect_uris": ["https://a/cb"]}),
        ] {
            assert!(validate(v.clone()).is_err(), "{v} accepted");
        }
    }

    #[test]
    fn redirect_uris() {
        assert!(valid_redirect_uri("https://app.example/cb"));
        assert!(valid_redirect_uri("http://127.0.0.1:8000/cb"));
        assert!(valid_redirect_uri("http://localhost/cb"));
        assert!(valid_redirect_uri("com.example.app:/cb"));
        assert!(!valid_redirect_uri("http://example.com/cb"));
        assert!(!valid_redirect_uri("javascript:alert(1)"));
    }
}
