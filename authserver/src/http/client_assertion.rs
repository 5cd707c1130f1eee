//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9): the
//! client signs a short-lived JWT with a key whose public part it registered inline
//! (`jwks`). `iss` = `sub` = client_id, `aud` = exactly the issuer or the token endpoint
//! (a string, or an array of that one string: an array with other values is refused, the
//! 2025 audience-injection pattern), `exp` required and at most [`MAX_LIFETIME`] ahead,
//! `jti` usable once until `exp`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::clients::ASSERTION_ALGS;
use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::store::{now_secs, ClientRecord};

use super::SharedState;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest accepted remaining lifetime of an assertion, seconds.
pub const MAX_LIFETIME: u64 = 300;
/// Clock skew allowed on `exp` / `nbf`.
const LEEWAY: u64 = 30;

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    jti: Option<String>,
    aud: serde_json::Value,
}

/// `aud` names exactly one of `accepted`: as a string, or as an array of that one string.
/// An array naming anything else too is refused: an assertion meant for another server
/// that also lists ours must not authenticate here.
fn audience_is_exactly(aud: &serde_json::Value, accepted: &[String]) -> bool {
    use serde_json::Value;
    let one = match aud {
        Value::String(s) => s,
        Value::Array(a) => match a.as_slice() {
            [Value::String(s)] => s,
            _ => return false,
        },
        _ => return false,
    };
    accepted.iter().any(|a| a == one)
}

fn fail(msg: &str) -> OAuthError {
    OAuthError::InvalidClient(format!("client assertion rejected: {msg}"))
}

/// The client id an assertion claims to come from (`iss`, which must equal `sub`), read
/// without verification: only used to find the keys to verify with.
pub fn claimed_client_id(assertion: &str) -> OAuthResult<String> {
    if assertion.len() > 8192 {
        return Err(fail("too long"));
    }
    let mut parts = assertion.split('.');
    let (Some(_), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(fail("not a compact JWS"));
    };
    let raw = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| fail("malformed payload"))?;
    let u: Unverified = serde_json::from_slice(&raw).map_err(|_| fail("malformed payload"))?;
    match (u.iss, u.sub) {
        (Some(i), Some(s)) if i == s && !i.is_empty() => Ok(i),
        _ => Err(fail("iss and sub must both be the client_id")),
    }
}

/// Verify the assertion against the client's registered keys and claim its `jti`.
pub async fn verify(
    state: &SharedState,
    client: &ClientRecord,
    assertion: &str,
) -> OAuthResult<()> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| fail("malformed header"))?;
    let alg_name = format!("{:?}", header.alg);
    if !ASSERTION_ALGS.contains(&alg_name.as_str()) {
        return Err(fail("unsupported alg"));
    }
    let jwks = client
        .metadata
        .extra
        .get("jwks")
        .cloned()
        .ok_or_else(|| fail("the client has no registered keys"))?;
    let set: JwkSet = serde_json::from_value(jwks).map_err(|_| fail("unusable registered keys"))?;
    // The key decides the algorithm: it must be registered with the alg the header names.
    let key_alg = |k: &jsonwebtoken::jwk::Jwk| k.common.key_algorithm.map(|a| a.to_string());
    let jwk = set
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .find(|k| key_alg(k).as_deref() == Some(alg_name.as_str()))
        .ok_or_else(|| fail("no registered key matches kid and alg"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| fail("unusable registered key"))?;
    let alg: Algorithm = header.alg;
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY;
    let iss = &state.cfg.issuer;
    let accepted = [format!("{iss}/oauth2/token"), iss.clone()];
    // Checked below, strictly: the library accepts any array that contains one of them.
    v.validate_aud = false;
    v.set_issuer(&[client.client_id.as_str()]);
    v.sub = Some(client.client_id.clone());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data = jsonwebtoken::decode::<Claims>(assertion, &key, &v)
        .map_err(|e| fail(&format!("{:?}", e.kind()).to_lowercase()))?;
    if !audience_is_exactly(&data.claims.aud, &accepted) {
        return Err(fail("aud must be exactly the issuer or the token endpoint"));
    }
    let now = now_secs();
    if data.claims.exp > now + MAX_LIFETIME + LEEWAY {
        return Err(fail("exp is too far in the future"));
    }
    let jti = data
        .claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| fail("jti is required"))?;
    let key = format!("{}:{}", client.client_id, crypto::token_hash(&jti));
    let until = data.claims.exp.max(now + 1) + LEEWAY;
    if !state.store.claim_assertion_jti(&key, until).await? {
        return Err(fail("jti was used before"));
    }
    Ok(())
}
