//! Client authentication at the token, introspection, revocation and feed endpoints:
//! `client_secret_basic` and `client_secret_post` (RFC 6749 §2.3.1), `private_key_jwt` and
//! public clients, with the per-(client_id, IP) limit on failed attempts and the per-client
//! request limit.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::form::Params;
use crate::store::ClientRecord;

use super::tls::PeerCertificate;
use super::{client_ip, SharedState};

/// Credentials as presented.
#[derive(Debug)]
pub enum Presented {
    Basic {
        client_id: String,
        secret: String,
    },
    Post {
        client_id: String,
        secret: String,
    },
    /// A public client (`none`): only its `client_id`.
    Public {
        client_id: String,
    },
    /// `private_key_jwt`: a signed client assertion.
    Jwt {
        client_id: String,
        assertion: String,
    },
}

fn pct_decode(s: &str) -> Result<String, OAuthError> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| OAuthError::InvalidClient("malformed client credentials".into()))
}

/// Extract the client credentials from the `Authorization` header or the body. Using more
/// than one method is an error (RFC 6749 §2.3).
pub fn presented(headers: &HeaderMap, params: Option<&Params>) -> OAuthResult<Presented> {
    let auth = headers.get(header::AUTHORIZATION);
    let body_id = params.and_then(|p| p.get("client_id"));
    let body_secret = params.and_then(|p| p.get("client_secret"));
    let assertion = params.and_then(|p| p.get("client_assertion"));
    let assertion_type = params.and_then(|p| p.get("client_assertion_type"));
    if assertion.is_some() || assertion_type.is_some() {
        if auth.is_some() || body_secret.is_some() {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method, not several".into(),
            ));
        }
        let (Some(a), Some(super::client_assertion::ASSERTION_TYPE)) = (assertion, assertion_type)
        else {
            return Err(OAuthError::InvalidClient(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
        };
        let client_id = super::client_assertion::claimed_client_id(a)?;
        if body_id.is_some_and(|b| b != client_id) {
            return Err(OAuthError::InvalidClient(
                "client_id differs from the assertion's issuer".into(),
            ));
        }
        return Ok(Presented::Jwt {
            client_id,
            assertion: a.to_string(),
        });
    }
    if let Some(v) = auth {
        if body_secret.is_some() {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method, not several".into(),
            ));
        }
        let v = v
            .to_str()
            .map_err(|_| OAuthError::InvalidClient("malformed Authorization header".into()))?;
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(OAuthError::InvalidClient(
                "client authentication must use the Basic scheme".into(),
            ));
        }
        let raw = STANDARD
            .decode(rest.trim())
            .map_err(|_| OAuthError::InvalidClient("malformed Basic credentials".into()))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| OAuthError::InvalidClient("malformed Basic credentials".into()))?;
        let (id, secret) = raw
            .split_once(':')
            .ok_or_else(|| OAuthError::InvalidClient("malformed Basic credentials".into()))?;
        let (client_id, secret) = (pct_decode(id)?, pct_decode(secret)?);
        if let Some(bid) = body_id {
            if bid != client_id {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body differs from the authenticated client".into(),
                ));
            }
        }
        if client_id.is_empty() {
            return Err(OAuthError::InvalidClient("empty client_id".into()));
        }
        return Ok(Presented::Basic { client_id, secret });
    }
    match (body_id, body_secret) {
        (Some(id), Some(secret)) => Ok(Presented::Post {
            client_id: id.to_string(),
            secret: secret.to_string(),
        }),
        (Some(id), None) => Ok(Presented::Public {
            client_id: id.to_string(),
        }),
        _ => Err(OAuthError::InvalidClient(
            "client authentication required".into(),
        )),
    }
}

/// A client that authenticated, and the address it called from.
#[derive(Debug)]
pub struct Caller {
    pub client: ClientRecord,
    ip: String,
}

impl Caller {
    /// A public client (`none`): it proves nothing but its `client_id`, so its request
    /// quota is counted per (client_id, IP), never for the client as a whole.
    pub fn is_public(&self) -> bool {
        c_method(&self.client) == "none"
    }

    fn quota_key(&self) -> String {
        if self.is_public() {
            format!(
                "client:{}:{}",
                crypto::token_hash(&self.client.client_id),
                self.ip
            )
        } else {
            format!("client:{}", self.client.client_id)
        }
    }
}

/// The failure counter of one (client_id, IP) pair. Only the caller that fails spends it:
/// failures of one client, or from one address, never count against another.
fn fail_key(client_id: &str, ip: &str) -> String {
    format!("authfail:{}:{ip}", crypto::token_hash(client_id))
}

/// Authenticate the calling client and spend one request of its quota
/// (`rate_limit_per_client` a minute or the client's own `rate_limit_per_minute`; for a
/// public client per (client_id, IP)).
pub async fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    params: Option<&Params>,
) -> OAuthResult<ClientRecord> {
    let caller = authenticate_caller(state, headers, peer, tls, params).await?;
    spend_quota(state, &caller).await?;
    Ok(caller.client)
}

/// Authenticate the calling client without spending its quota.
///
/// Valid credentials are always accepted: failures are counted per (client_id, IP) after
/// the credentials were checked, and a pair over `rate_limit_per_ip` failures a minute gets
/// 429 instead of 401 for its further failures. Client secrets are 256-bit random values
/// and assertions are signatures, so answering a right secret while the pair is limited
/// gives a guesser nothing, and nobody else's failures, from the same address (every caller
/// behind one sidecar) or for the same client, lock a client with the right credentials out.
pub async fn authenticate_caller(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    params: Option<&Params>,
) -> OAuthResult<Caller> {
    let ip = client_ip(headers, peer, state.cfg.trusted_proxy_hops);
    let creds = match presented(headers, params) {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, OAuthError::InvalidClient(_)) {
                // Malformed credentials name no client: their own counter per IP.
                let id = params.and_then(|p| p.get("client_id")).unwrap_or("");
                note_failure(state, &fail_key(id, &ip)).await?;
            }
            return Err(e);
        }
    };
    let (client_id, secret, method) = match &creds {
        Presented::Basic { client_id, secret } => (client_id, secret, "client_secret_basic"),
        Presented::Post { client_id, secret } => (client_id, secret, "client_secret_post"),
        Presented::Public { client_id } => {
            let client = authenticate_secretless(state, client_id, None, tls, &ip).await?;
            return Ok(Caller { client, ip });
        }
        Presented::Jwt {
            client_id,
            assertion,
        } => {
            let client =
                authenticate_secretless(state, client_id, Some(assertion), tls, &ip).await?;
            return Ok(Caller { client, ip });
        }
    };
    let (mut client, cached) = state.store.get_client_cached(client_id).await?;

    // Always compute the keyed hash, so an unknown client id costs the same as a wrong
    // secret.
    let presented_hash = crypto::secret_hash(&state.pepper, secret);
    let matches = |client: &Option<ClientRecord>| match client {
        Some(c) => match &c.secret_hash {
            Some(stored) => crypto::ct_eq(presented_hash.as_bytes(), stored.as_bytes()),
            None => false,
        },
        None => {
            let _ = crypto::ct_eq(presented_hash.as_bytes(), presented_hash.as_bytes());
            false
        }
    };
    let mut ok = matches(&client);
    let right_method = |c: &Option<ClientRecord>| c.as_ref().is_some_and(|c| c_method(c) == method);
    if cached && !(ok && right_method(&client)) {
        // The cached record may predate a change made through another replica (a rotated
        // secret, another authentication method).
        client = state.store.get_client(client_id).await?;
        ok = matches(&client);
    }
    let client = match (ok, client) {
        (true, Some(c)) => c,
        _ => {
            state.stat("client_auth_failures");
            metrics::counter!("tollgate_client_auth_failures_total").increment(1);
            note_failure(state, &fail_key(client_id, &ip)).await?;
            return Err(OAuthError::InvalidClient(
                "client authentication failed".into(),
            ));
        }
    };
    if c_method(&client) != method {
        state.stat("client_auth_failures");
        note_failure(state, &fail_key(client_id, &ip)).await?;
        return Err(OAuthError::InvalidClient(format!(
            "client is registered for {}",
            c_method(&client)
        )));
    }
    Ok(Caller { client, ip })
}

/// The client's request limit: `rate_limit_per_client`, or its own `rate_limit_per_minute`.
fn quota(state: &SharedState, client: &ClientRecord) -> u64 {
    client
        .metadata
        .extra
        .get("rate_limit_per_minute")
        .and_then(|v| v.as_u64())
        .unwrap_or(state.cfg.rate_limit_per_client)
}

/// Spend one request of the caller's quota; 429 when it is used up. A confidential
/// client's quota is spent from this process's leases (`crate::quota`: a store round trip
/// once per lease, not per request); a public client's is counted per request, by
/// (client_id, IP), as [`check_quota`] reads it.
pub async fn spend_quota(state: &SharedState, caller: &Caller) -> OAuthResult<()> {
    let limit = quota(state, &caller.client);
    if limit == 0 {
        return Ok(());
    }
    let retry_after = if caller.is_public() {
        let d = state
            .store
            .rate_limit(&caller.quota_key(), limit, 60)
            .await?;
        (!d.allowed).then_some(d.reset_after)
    } else {
        match state
            .quotas
            .spend(state.store.as_ref(), &caller.quota_key(), limit)
            .await?
        {
            crate::quota::Spent::Allowed => None,
            crate::quota::Spent::Refused { retry_after } => Some(retry_after),
        }
    };
    match retry_after {
        None => Ok(()),
        Some(retry_after) => {
            metrics::counter!("tollgate_rate_limited_total", "kind" => "client").increment(1);
            Err(OAuthError::RateLimited { retry_after })
        }
    }
}

/// Whether the caller's quota is used up, without spending it (429 when it is). For a
/// public client at the token endpoint, whose quota is spent only once a grant succeeded.
pub async fn check_quota(state: &SharedState, caller: &Caller) -> OAuthResult<()> {
    let limit = quota(state, &caller.client);
    if limit > 0 && state.store.peek_rate(&caller.quota_key()).await? >= limit {
        metrics::counter!("tollgate_rate_limited_total", "kind" => "client").increment(1);
        return Err(OAuthError::RateLimited { retry_after: 60 });
    }
    Ok(())
}

/// Spend one request of the quota of a caller whose grant already succeeded: what was
/// issued is answered whatever the count says, and a store error is only logged.
pub async fn spend_quota_after_success(state: &SharedState, caller: &Caller) {
    let limit = quota(state, &caller.client);
    if limit > 0 {
        if let Err(e) = state.store.rate_limit(&caller.quota_key(), limit, 60).await {
            tracing::warn!(error = %e, "could not count a request against the client's quota");
        }
    }
}

/// Count a failed grant of a public client against its (client_id, IP) failure counter: a
/// public client proves nothing at authentication, so a wrong code or refresh token is the
/// failure that an attacker using its client_id repeats. 429 once the pair is over the
/// limit, else `e` unchanged.
pub async fn note_grant_failure(state: &SharedState, caller: &Caller, e: OAuthError) -> OAuthError {
    if caller.is_public() && matches!(e, OAuthError::InvalidGrant(_)) {
        if let Err(limited) =
            note_failure(state, &fail_key(&caller.client.client_id, &caller.ip)).await
        {
            return limited;
        }
    }
    e
}

/// Public clients (`none`), `private_key_jwt`, `self_signed_tls_client_auth` and
/// `tls_client_auth`: the client must be registered for exactly that method; an assertion
/// must verify; a certificate client must have presented, on the TLS listener, a
/// certificate registered in its `jwks` (compared by SHA-256 of the DER, in constant time)
/// or one of `TOLLGATE_TLS_CLIENT_CA` with the subject it registered. Failures count per
/// (client_id, IP).
async fn authenticate_secretless(
    state: &SharedState,
    client_id: &str,
    assertion: Option<&str>,
    tls: Option<&PeerCertificate>,
    ip: &str,
) -> OAuthResult<ClientRecord> {
    let (client, cached) = state.store.get_client_cached(client_id).await?;
    let mut outcome = check_secretless(state, client, assertion, tls).await;
    if outcome.is_err() && cached {
        // The cached record may predate a change (keys, certificate, method) made through
        // another replica.
        let client = state.store.get_client(client_id).await?;
        outcome = check_secretless(state, client, assertion, tls).await;
    }
    match outcome {
        Ok(c) => Ok(c),
        Err(e) => {
            if matches!(e, OAuthError::InvalidClient(_)) {
                state.stat("client_auth_failures");
                metrics::counter!("tollgate_client_auth_failures_total").increment(1);
                note_failure(state, &fail_key(client_id, ip)).await?;
            }
            Err(e)
        }
    }
}

/// Whether `client` authenticates with `assertion` or the TLS certificate `tls`.
async fn check_secretless(
    state: &SharedState,
    client: Option<ClientRecord>,
    assertion: Option<&str>,
    tls: Option<&PeerCertificate>,
) -> OAuthResult<ClientRecord> {
    match (client, assertion) {
        (Some(c), Some(a)) if c_method(&c) == "private_key_jwt" => {
            super::client_assertion::verify(state, &c, a)
                .await
                .map(|_| c)
        }
        (Some(c), None) if c_method(&c) == "none" => Ok(c),
        (Some(c), None) if c_method(&c) == crate::clients::SELF_SIGNED_TLS => {
            let registered = crate::clients::registered_certificates(&c.metadata);
            let ok = tls.is_some_and(|t| {
                registered
                    .iter()
                    .fold(false, |acc, r| acc | crypto::ct_eq(r, &t.sha256))
            });
            if ok {
                Ok(c)
            } else {
                Err(OAuthError::InvalidClient(
                    "client authentication failed: present a certificate registered in the \
                     client's jwks on the TLS listener"
                        .into(),
                ))
            }
        }
        (Some(c), None) if c_method(&c) == crate::clients::TLS_CLIENT_AUTH => {
            let subject = crate::pki::Expected::from_metadata(&c.metadata.extra);
            let ok = match (tls.and_then(|t| t.verified.as_deref()), subject) {
                (Some(id), Ok(expected)) => expected.matches(id),
                _ => false,
            };
            if ok {
                Ok(c)
            } else {
                Err(OAuthError::InvalidClient(
                    "client authentication failed: present, on the TLS listener, a certificate \
                     issued by a CA this server trusts with the subject the client registered"
                        .into(),
                ))
            }
        }
        _ => Err(OAuthError::InvalidClient(
            "client authentication failed".into(),
        )),
    }
}

fn c_method(c: &ClientRecord) -> &str {
    if c.metadata.token_endpoint_auth_method.is_empty() {
        "client_secret_basic"
    } else {
        &c.metadata.token_endpoint_auth_method
    }
}

/// Count one failure under `key` (`rate_limit_per_ip` a minute); 429 once over the limit.
async fn note_failure(state: &SharedState, key: &str) -> OAuthResult<()> {
    let limit = state.cfg.rate_limit_per_ip;
    if limit == 0 {
        return Ok(());
    }
    let d = state.store.rate_limit(key, limit, 60).await?;
    if !d.allowed {
        metrics::counter!("tollgate_rate_limited_total", "kind" => "auth_failures").increment(1);
        return Err(OAuthError::RateLimited {
            retry_after: d.reset_after,
        });
    }
    Ok(())
}

/// Check `Authorization: Bearer <admin token>` in constant time.
pub fn is_admin(state: &SharedState, headers: &HeaderMap) -> bool {
    let Some(expected) = state.cfg.admin_token.as_deref() else {
        return false;
    };
    bearer(headers).is_some_and(|t| crypto::ct_eq(t.as_bytes(), expected.as_bytes()))
}

/// The bearer token of the `Authorization` header (RFC 6750 §2.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
        Some(token.trim())
    } else {
        None
    }
}

/// Require the admin token; count failures against the client IP.
pub async fn require_admin(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> OAuthResult<()> {
    if state.cfg.admin_token.is_none() {
        return Err(OAuthError::InvalidToken(
            "the admin API is disabled (TOLLGATE_ADMIN_TOKEN is not set)".into(),
        ));
    }
    if is_admin(state, headers) {
        return Ok(());
    }
    // The admin token is a long random secret: failures are counted per IP after the check
    // (429 instead of 401 once over the limit), never held against the right token.
    let ip = client_ip(headers, peer, state.cfg.trusted_proxy_hops);
    note_failure(state, &format!("adminfail:{ip}")).await?;
    Err(OAuthError::InvalidToken(
        "missing or invalid admin token".into(),
    ))
}
