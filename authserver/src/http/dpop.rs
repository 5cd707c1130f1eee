//! The DPoP proof of a token request (RFC 9449 §5): exactly one `DPoP` header, verified by
//! [`crate::dpop`] against the token endpoint's URI, its `jti` used once per key in the
//! store; required for clients registered with `dpop_bound_access_tokens`.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use crate::dpop::{self, DpopError, Expect};
use crate::error::{OAuthError, OAuthResult, DPOP_NONCE};
use crate::store::{now_secs, ClientRecord};

use super::SharedState;

/// The request header that carries the proof.
pub const DPOP: &str = "dpop";

/// The thumbprint of the key of the request's valid proof (`None`: no proof, and none is
/// required). Refused: two headers, a bad proof (`invalid_dpop_proof`), a proof without a
/// current nonce when nonces are on (`use_dpop_nonce`), a replayed proof, no proof from a
/// client that must send one.
pub async fn token_request_key(
    state: &SharedState,
    headers: &HeaderMap,
    client: &ClientRecord,
) -> OAuthResult<Option<String>> {
    let mut values = headers.get_all(DPOP).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(OAuthError::InvalidDpopProof(
            "send exactly one DPoP header".into(),
        ));
    }
    let Some(value) = first else {
        if client.metadata.dpop_bound_access_tokens {
            return Err(OAuthError::InvalidDpopProof(
                "this client must send a DPoP proof (dpop_bound_access_tokens)".into(),
            ));
        }
        return Ok(None);
    };
    let proof = value
        .to_str()
        .map_err(|_| OAuthError::InvalidDpopProof("the DPoP header is not a JWT".into()))?;
    let now = now_secs();
    let uri = format!("{}/oauth2/token", state.cfg.issuer);
    let expect = Expect {
        method: "POST",
        uri: &uri,
        now,
        max_age: state.cfg.dpop_proof_max_age,
        max_skew: state.cfg.dpop_clock_skew,
        access_token: None,
        nonces: state.cfg.dpop_nonce.then_some(&state.dpop_nonces),
    };
    let verified = match dpop::verify(proof, &expect) {
        Ok(p) => p,
        Err(DpopError::Invalid(why)) => {
            return Err(OAuthError::InvalidDpopProof(format!(
                "DPoP proof rejected: {why}"
            )));
        }
        Err(DpopError::UseNonce) => {
            return Err(OAuthError::UseDpopNonce {
                nonce: state.dpop_nonces.current(now),
            })
        }
    };
    let until = verified.jti_kept_until(&expect);
    if !state
        .store
        .claim_dpop_jti(&verified.jkt, &verified.jti, until)
        .await?
    {
        return Err(OAuthError::InvalidDpopProof(
            "DPoP proof rejected: it was used before (jti)".into(),
        ));
    }
    Ok(Some(verified.jkt))
}

/// With nonces on, every token response hands out the current nonce (RFC 9449 §8.2).
pub fn add_nonce(state: &SharedState, resp: &mut Response) {
    if state.cfg.dpop_nonce {
        if let Ok(v) = HeaderValue::from_str(&state.dpop_nonces.current(now_secs())) {
            resp.headers_mut().insert(DPOP_NONCE, v);
        }
    }
}
