//! `POST /edge/ratelimit/lease`: quota leases for the edge filters' global rate-limit mode.
//!
//! A filter takes a batch of requests ("a lease") for one rate-limit key from a fixed window
//! kept in the store (`auth:rate_limit:lease:{key}`), and spends it locally. The store grants
//! atomically `min(want, limit - used)`, so all gateway replicas together never receive more
//! than `limit` per window; what a replica leased but did not spend is lost for that window
//! (the limit errs on the side of admitting fewer requests, by at most one lease per replica).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::OAuthError;
use crate::form::Params;

use super::edge::authorize_edge;
use super::{json_no_store, SharedState};

/// Longest accepted `key`.
pub const MAX_KEY_LEN: usize = 256;
/// Largest accepted `limit` (requests per window).
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// Longest accepted window, seconds (one day).
pub const MAX_WINDOW_SECS: u64 = 86_400;

/// A validated lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub key: String,
    pub limit: u64,
    pub window_s: u64,
    pub want: u64,
}

/// A decimal integer in `min..=max`: ASCII digits only (no sign, no spaces), so a value has
/// one spelling.
fn number(params: &Params, name: &str, min: u64, max: u64) -> Result<u64, OAuthError> {
    let raw = params.require(name)?;
    let bad = || OAuthError::InvalidRequest(format!("{name} must be an integer in {min}..={max}"));
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    raw.parse::<u64>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(bad)
}

impl LeaseRequest {
    pub fn parse(params: &Params) -> Result<LeaseRequest, OAuthError> {
        let key = params.require("key")?;
        if key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OAuthError::InvalidRequest(format!(
                "key must be 1..={MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        let limit = number(params, "limit", 1, MAX_LIMIT)?;
        let window_s = number(params, "window_s", 1, MAX_WINDOW_SECS)?;
        let want = number(params, "want", 1, limit)?;
        Ok(LeaseRequest {
            key: key.to_string(),
            limit,
            window_s,
            want,
        })
    }
}

#[utoipa::path(
    post,
    path = "/edge/ratelimit/lease",
    tags = ["public"],
    request_body(content = super::openapi::LeaseRequest, content_type = "application/x-www-form-urlencoded"),
    security(("mesh_identity" = []), ("client_basic" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "a quota lease", body = super::openapi::Lease),
        (status = 401, description = "invalid_client / invalid_token", body = super::openapi::ErrorBody),
        (status = 403, description = "insufficient_scope: the client lacks tollgate:edge, or the mesh identity is not trusted", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
        // After CommonErrors: replaces its 400 with the edge endpoints' own description.
        (status = 400, description = "invalid_request: malformed request, repeated Authorization or Content-Type header, malformed or repeated X-Forwarded-Client-Cert from the sidecar", body = super::openapi::ErrorBody),
    )
)]
pub async fn lease(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        // Authenticate before looking at the body: an unauthenticated caller learns nothing
        // about the parameters.
        authorize_edge(&state, &headers, peer, "a rate-limit lease").await?;
        let params = Params::from_request(&headers, &body)?;
        let req = LeaseRequest::parse(&params)?;
        let l = state
            .store
            .rate_lease(&req.key, req.limit, req.window_s, req.want)
            .await?;
        let result = if l.granted > 0 {
            "granted"
        } else {
            "exhausted"
        };
        metrics::counter!("tollgate_ratelimit_leases_total", "result" => result).increment(1);
        metrics::counter!("tollgate_ratelimit_leased_requests_total").increment(l.granted);
        Ok(json_no_store(
            StatusCode::OK,
            &json!({
                "granted": l.granted,
                "used": l.used,
                "limit": l.limit,
                "reset_s": l.reset_ms.div_ceil(1000),
                "reset_ms": l.reset_ms,
            }),
        ))
    }
    .await;
    r.unwrap_or_else(|e: OAuthError| e.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<LeaseRequest, OAuthError> {
        LeaseRequest::parse(&Params::parse(body.as_bytes())?)
    }

    #[test]
    fn accepts_the_bounds() {
        let k = "k".repeat(MAX_KEY_LEN);
        let r = parse(&format!(
            "key={k}&limit=1000000000&window_s=86400&want=1000000000"
        ))
        .unwrap();
        assert_eq!(
            (r.key.len(), r.limit, r.window_s, r.want),
            (256, MAX_LIMIT, 86_400, MAX_LIMIT)
        );
        let r = parse("key=api%3Aab12&limit=1&window_s=1&want=1").unwrap();
        assert_eq!(r.key, "api:ab12");
    }

    #[test]
    fn a_gateway_cannot_name_a_clients_quota() {
        // The auth server spends a client's quota from leases under `quota <key>`
        // (crate::quota); a space never passes here, so no gateway can drain or read one.
        for key in ["quota%20client%3Aorders", "quota+client%3Aorders"] {
            assert!(
                matches!(
                    parse(&format!("key={key}&limit=5&window_s=60&want=5")),
                    Err(OAuthError::InvalidRequest(_))
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn refuses_what_is_out_of_contract() {
        for body in [
            "limit=5&window_s=1&want=1",
            "key=&limit=5&window_s=1&want=1",
            "key=a%20b&limit=5&window_s=1&want=1",
            "key=a%09b&limit=5&window_s=1&want=1",
            "key=caf%C3%A9&limit=5&window_s=1&want=1",
            "key=a&limit=0&window_s=1&want=1",
            "key=a&limit=1000000001&window_s=1&want=1",
            "key=a&limit=%2B5&window_s=1&want=1",
            "key=a&limit=-5&window_s=1&want=1",
            "key=a&limit=5.0&window_s=1&want=1",
            "key=a&limit=99999999999999999999999&window_s=1&want=1",
            "key=a&limit=5&window_s=0&want=1",
            "key=a&limit=5&window_s=86401&want=1",
            "key=a&limit=5&want=1",
            "key=a&limit=5&window_s=1&want=0",
            "key=a&limit=5&window_s=1&want=6",
            "key=a&limit=5&window_s=1",
            "key=a&key=b&limit=5&window_s=1&want=1",
        ] {
            assert!(
                matches!(parse(body), Err(OAuthError::InvalidRequest(_))),
                "{body}"
            );
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(parse(&format!("key={long}&limit=5&window_s=1&want=1")).is_err());
    }
}
