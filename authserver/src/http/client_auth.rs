//! Client authentication at the token, introspection, revocation and feed endpoints:
//! `client_secret_basic` and `client_secret_post` (RFC 6749 §2.3.1), with the per-IP limit
//! on failed attempts and the per-client request limit.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::crypto;
use crate::error::{OAuthError, OAuthResult};
use crate::form::Params;
use crate::store::ClientRecord;

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

/// Authenticate the calling client. Counts failures per client IP (refusing an IP over
/// `rate_limit_per_ip` failures a minute) and requests per client (`rate_limit_per_client`
/// a minute, or the client's own `rate_limit_per_minute`).
pub async fn authenticate(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    params: Option<&Params>,
) -> OAuthResult<ClientRecord> {
    let ip = client_ip(headers, peer, state.cfg.trusted_proxy_hops);
    let fail_key = format!("authfail:{ip}");
    let ip_limit = state.cfg.rate_limit_per_ip;

    let creds = match presented(headers, params) {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, OAuthError::InvalidClient(_)) {
                note_failure(state, &fail_key, ip_limit).await?;
            }
            return Err(e);
        }
    };
    let (client_id, secret, method) = match &creds {
        Presented::Basic { client_id, secret } => (client_id, secret, "client_secret_basic"),
        Presented::Post { client_id, secret } => (client_id, secret, "client_secret_post"),
        Presented::Public { client_id } => {
            return authenticate_secretless(state, client_id, None, &fail_key, ip_limit).await;
        }
        Presented::Jwt {
            client_id,
            assertion,
        } => {
            return authenticate_secretless(state, client_id, Some(assertion), &fail_key, ip_limit)
                .await;
        }
    };

    // One round trip: the client record, this IP's failure count, this client's window.
    let store = state.store.as_ref();
    let client_limit = state.cfg.rate_limit_per_client;
    let (client, failures) = tokio::join!(store.get_client(client_id), async {
        if ip_limit > 0 {
            store.peek_rate(&fail_key).await.map(Some)
        } else {
            Ok(None)
        }
    });
    if let Some(f) = failures? {
        if f >= ip_limit {
            metrics::counter!("tollgate_rate_limited_total", "kind" => "auth_failures")
                .increment(1);
            return Err(OAuthError::RateLimited { retry_after: 60 });
        }
    }
    let client = client?;

    // Always compute the keyed hash, so an unknown client id costs the same as a wrong
    // secret.
    let presented_hash = crypto::secret_hash(&state.pepper, secret);
    let ok = match &client {
        Some(c) => match &c.secret_hash {
            Some(stored) => crypto::ct_eq(presented_hash.as_bytes(), stored.as_bytes()),
            None => false,
        },
        None => {
            let _ = crypto::ct_eq(presented_hash.as_bytes(), presented_hash.as_bytes());
            false
        }
    };
    let client = match (ok, client) {
        (true, Some(c)) => c,
        _ => {
            state.stat("client_auth_failures");
            metrics::counter!("tollgate_client_auth_failures_total").increment(1);
            note_failure(state, &fail_key, ip_limit).await?;
            return Err(OAuthError::InvalidClient(
                "client authentication failed".into(),
            ));
        }
    };
    if c_method(&client) != method {
        state.stat("client_auth_failures");
        note_failure(state, &fail_key, ip_limit).await?;
        return Err(OAuthError::InvalidClient(format!(
            "client is registered for {}",
            c_method(&client)
        )));
    }
    client_rate_limit(state, &client, client_limit).await?;
    Ok(client)
}

/// The per-client request limit (`rate_limit_per_client`, or the client's own).
async fn client_rate_limit(
    state: &SharedState,
    client: &ClientRecord,
    default_limit: u64,
) -> OAuthResult<()> {
    let limit = client
        .metadata
        .extra
        .get("rate_limit_per_minute")
        .and_then(|v| v.as_u64())
        .unwrap_or(default_limit);
    if limit > 0 {
        let d = state
            .store
            .rate_limit(&format!("client:{}", client.client_id), limit, 60)
            .await?;
        if !d.allowed {
            metrics::counter!("tollgate_rate_limited_total", "kind" => "client").increment(1);
            return Err(OAuthError::RateLimited {
                retry_after: d.reset_after,
            });
        }
    }
    Ok(())
}

/// Public clients (`none`) and `private_key_jwt`: the client must be registered for exactly
/// that method; an assertion must verify.
async fn authenticate_secretless(
    state: &SharedState,
    client_id: &str,
    assertion: Option<&str>,
    fail_key: &str,
    ip_limit: u64,
) -> OAuthResult<ClientRecord> {
    let store = state.store.as_ref();
    let (client, failures) = tokio::join!(store.get_client(client_id), async {
        if ip_limit > 0 {
            store.peek_rate(fail_key).await.map(Some)
        } else {
            Ok(None)
        }
    });
    if failures?.is_some_and(|f| f >= ip_limit) {
        metrics::counter!("tollgate_rate_limited_total", "kind" => "auth_failures").increment(1);
        return Err(OAuthError::RateLimited { retry_after: 60 });
    }
    let want = if assertion.is_some() {
        "private_key_jwt"
    } else {
        "none"
    };
    let outcome = match client? {
        Some(c) if c_method(&c) == want => match assertion {
            Some(a) => super::client_assertion::verify(state, &c, a)
                .await
                .map(|_| c),
            None => Ok(c),
        },
        _ => Err(OAuthError::InvalidClient(
            "client authentication failed".into(),
        )),
    };
    match outcome {
        Ok(c) => {
            client_rate_limit(state, &c, state.cfg.rate_limit_per_client).await?;
            Ok(c)
        }
        Err(e) => {
            if matches!(e, OAuthError::InvalidClient(_)) {
                state.stat("client_auth_failures");
                metrics::counter!("tollgate_client_auth_failures_total").increment(1);
                note_failure(state, fail_key, ip_limit).await?;
            }
            Err(e)
        }
    }
}

fn c_method(c: &ClientRecord) -> &str {
    if c.metadata.token_endpoint_auth_method.is_empty() {
        "client_secret_basic"
    } else {
        &c.metadata.token_endpoint_auth_method
    }
}

async fn note_failure(state: &SharedState, key: &str, limit: u64) -> OAuthResult<()> {
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
    let ip = client_ip(headers, peer, state.cfg.trusted_proxy_hops);
    let fail_key = format!("authfail:{ip}");
    let limit = state.cfg.rate_limit_per_ip;
    if limit > 0 && state.store.peek_rate(&fail_key).await? >= limit {
        return Err(OAuthError::RateLimited { retry_after: 60 });
    }
    if is_admin(state, headers) {
        return Ok(());
    }
    note_failure(state, &fail_key, limit).await?;
    Err(OAuthError::InvalidToken(
        "missing or invalid admin token".into(),
    ))
}
