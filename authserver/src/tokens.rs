//! Minting access tokens: RFC 9068 JWTs signed by the active key, or opaque tokens for
//! clients registered with `access_token_format: opaque`. Either way the server keeps a
//! record (`auth:access_token:{jti}`) holding the SHA-256 of the token as issued.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::state::AppState;
use crate::store::{now_secs, AccessTokenRecord};

/// Prefix of opaque access tokens (lets introspection and the edge tell them apart).
pub const OPAQUE_PREFIX: &str = "tg_at_";

#[derive(Serialize)]
struct AtClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    /// RFC 9449 §6.1 / RFC 8705 §3.1: `{"jkt": …}` of a DPoP-bound token,
    /// `{"x5t#S256": …}` of a certificate-bound one.
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Value>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// What a grant asks to be issued.
pub struct TokenRequest<'a> {
    pub client_id: &'a str,
    pub sub: &'a str,
    pub scope: &'a str,
    pub aud: &'a str,
    pub ttl: u64,
    pub opaque: bool,
    /// Further claims (e.g. `act` for token exchange).
    pub extra: Map<String, Value>,
    /// The [`crate::store::UserRecord::id`] of the user the token speaks for, if any.
    pub user_id: Option<&'a str>,
    /// The thumbprint of the DPoP key the token is bound to (RFC 9449), if any.
    pub jkt: Option<&'a str>,
    /// The SHA-256 thumbprint (base64url) of the client certificate the token is bound to
    /// (RFC 8705 §3), if any.
    pub x5t: Option<&'a str>,
}

/// The `cnf` claim of a bound token: `jkt` (DPoP), `x5t#S256` (certificate), or none.
pub fn cnf(jkt: Option<&str>, x5t: Option<&str>) -> Option<Value> {
    let mut o = Map::new();
    if let Some(k) = jkt {
        o.insert("jkt".into(), Value::from(k));
    }
    if let Some(t) = x5t {
        o.insert("x5t#S256".into(), Value::from(t));
    }
    (!o.is_empty()).then_some(Value::Object(o))
}

/// The `token_type` of an access token bound to `jkt` (RFC 9449 §5) or not (RFC 6750).
pub fn token_type(jkt: Option<&str>) -> &'static str {
    if jkt.is_some() {
        "DPoP"
    } else {
        "Bearer"
    }
}

pub struct Issued {
    pub token: String,
    pub record: AccessTokenRecord,
}

/// Mint and record an access token (one round trip to the store).
pub async fn issue(state: &AppState, req: TokenRequest<'_>) -> OAuthResult<Issued> {
    let now = now_secs();
    let exp = now + req.ttl;
    let (token, jti, format) = if req.opaque {
        let token = format!("{OPAQUE_PREFIX}{}", crypto::random_b64(32));
        // Opaque tokens are found by their hash; the hash is also their `jti`, which is what
        // the revocation feed publishes (the edge keys its cache by the same hash).
        let jti = crypto::token_hash(&token);
        (token, jti, "opaque")
    } else {
        let jti = crypto::new_jti();
        let keys = state.keys();
        let key = keys
            .active(now)
            .ok_or_else(|| OAuthError::ServerError("no active signing key".into()))?;
        let claims = AtClaims {
            iss: &state.cfg.issuer,
            sub: req.sub,
            aud: req.aud,
            exp,
            iat: now,
            nbf: now,
            jti: &jti,
            client_id: req.client_id,
            scope: req.scope,
            cnf: cnf(req.jkt, req.x5t),
            extra: &req.extra,
        };
        let token = key
            .sign(&claims)
            .map_err(|e| OAuthError::ServerError(e.to_string()))?;
        (token, jti, "jwt")
    };
    let record = AccessTokenRecord {
        jti,
        client_id: req.client_id.to_string(),
        sub: req.sub.to_string(),
        scope: req.scope.to_string(),
        aud: req.aud.to_string(),
        iat: now,
        exp,
        token_hash: crypto::token_hash(&token),
        format: format.to_string(),
        act: req.extra.get("act").map(Value::to_string),
        user_id: req.user_id.map(str::to_string),
        cnf_jkt: req.jkt.map(str::to_string),
        cnf_x5t: req.x5t.map(str::to_string),
    };
    state.store.save_access_token(&record).await?;
    metrics::counter!("tollgate_tokens_issued_total", "format" => format).increment(1);
    Ok(Issued { token, record })
}

/// Find the record of a presented access token and check that it is the token that was
/// issued (constant-time hash comparison). Returns the record and whether it is revoked.
pub async fn lookup(
    state: &AppState,
    token: &str,
) -> OAuthResult<Option<(AccessTokenRecord, bool)>> {
    let Some(jti) = jti_of(token) else {
        return Ok(None);
    };
    let (rec, revoked) = state.store.get_access_token(&jti).await?;
    let Some(rec) = rec else { return Ok(None) };
    let presented = crypto::token_hash(token);
    if !crypto::ct_eq(presented.as_bytes(), rec.token_hash.as_bytes()) {
        return Ok(None);
    }
    Ok(Some((rec, revoked)))
}

/// The `jti` a presented token would be stored under: the hash for opaque tokens, the
/// `jti` claim (read without verification: the record check above is authoritative) for
/// JWTs.
pub fn jti_of(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    if token.len() > 8192 {
        return None;
    }
    if token.starts_with(OPAQUE_PREFIX) {
        return Some(crypto::token_hash(token));
    }
    let mut parts = token.split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
    #[derive(serde::Deserialize)]
    struct J {
        jti: String,
    }
    let j: J = serde_json::from_slice(&payload).ok()?;
    if j.jti.is_empty() || j.jti.len() > 128 {
        return None;
    }
    Some(j.jti)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_of_handles_garbage() {
        assert_eq!(jti_of(""), None);
        assert_eq!(jti_of("a.b.c"), None);
        assert_eq!(jti_of("a.b"), None);
        assert_eq!(jti_of("a.e30.c"), None); // {}
        assert_eq!(jti_of("a.eyJqdGkiOiJ4In0.c").as_deref(), Some("x"));
        assert_eq!(jti_of("a.eyJqdGkiOiJ4In0.c.d"), None);
        let opaque = format!("{OPAQUE_PREFIX}abc");
        assert_eq!(jti_of(&opaque), Some(crypto::token_hash(&opaque)));
    }
}
