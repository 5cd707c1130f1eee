//! Endpoints for the edge filters: the revocation feed and the built Wasm module (quota
//! leases are in `lease.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::OAuthError;
use crate::form::Params;
use crate::{crypto, xfcc};

use super::introspect::has_scope;
use super::{client_auth, json_no_store, SharedState};

const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
/// Largest `wait` accepted (then cut to `TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S`).
const MAX_WAIT_PARAM_S: u64 = 3600;

/// The callers of the edge endpoints (docs/security.md "Edge endpoints"):
/// - a gateway by its mesh identity: with `TOLLGATE_EDGE_TRUSTED_PRINCIPALS` set and the TCP
///   peer Istio's inbound sidecar ([`from_inbound_sidecar`]), the URI SAN in the LAST element
///   of `X-Forwarded-Client-Cert` (the one the sidecar appended for the mTLS connection it
///   terminated) is one of those SPIFFE IDs, and the request is the gateway's own (no
///   `X-Forwarded-For`: not a client request the gateway forwarded);
/// - a client authenticated with `client_secret_basic` whose registered scope holds
///   `tollgate:edge`;
/// - the admin token (`Authorization: Bearer`).
///
/// 401 `invalid_client` for missing or bad credentials, 403 `insufficient_scope` for a client
/// without the scope or a mesh identity that is not trusted (and no other credential), 400
/// `invalid_request` for a malformed or repeated `X-Forwarded-Client-Cert` the sidecar passed.
pub(super) async fn authorize_edge(
    state: &SharedState,
    headers: &HeaderMap,
    peer: SocketAddr,
    what: &str,
) -> Result<(), OAuthError> {
    let mesh = mesh_identity(&state.cfg.edge_trusted_principals, headers, peer)?;
    if mesh == MeshIdentity::Trusted {
        return Ok(());
    }
    if client_auth::is_admin(state, headers) {
        return Ok(());
    }
    if mesh == MeshIdentity::Untrusted && !headers.contains_key(header::AUTHORIZATION) {
        return Err(OAuthError::InsufficientScope(format!(
            "{what} is not open to this mesh identity (TOLLGATE_EDGE_TRUSTED_PRINCIPALS)"
        )));
    }
    let client = client_auth::authenticate(state, headers, Some(peer), None, None).await?;
    if !has_scope(&client, "tollgate:edge") {
        return Err(OAuthError::InsufficientScope(format!(
            "{what} needs a client with scope tollgate:edge"
        )));
    }
    Ok(())
}

/// What `X-Forwarded-Client-Cert` says about the caller.
#[derive(Debug, PartialEq, Eq)]
enum MeshIdentity {
    /// Not read: no trusted principals, the peer is not the sidecar, or no header.
    None,
    /// The sidecar's element names a principal that is not trusted.
    Untrusted,
    Trusted,
}

/// Whether the TCP peer is Istio's sidecar forwarding an inbound request: it connects from
/// `127.0.0.6` (`::6` on IPv6), the upstream bind address of its inbound clusters
/// (`InboundPassthroughBindIpv4/6` in pilot/pkg/networking/core/listener_address.go, used
/// with the default `inboundTrafficPolicy` PASSTHROUGH). Other loopback peers (127.0.0.1:
/// `kubectl port-forward`, another container of the pod) are not the sidecar's inbound
/// listener and their XFCC is ignored.
pub(super) fn from_inbound_sidecar(peer: &SocketAddr) -> bool {
    match peer.ip().to_canonical() {
        IpAddr::V4(v4) => v4 == Ipv4Addr::new(127, 0, 0, 6),
        IpAddr::V6(v6) => v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6),
    }
}

fn mesh_identity(
    trusted: &[String],
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<MeshIdentity, OAuthError> {
    if trusted.is_empty() || !from_inbound_sidecar(&peer) {
        return Ok(MeshIdentity::None);
    }
    let mut values = headers.get_all("x-forwarded-client-cert").iter();
    let Some(v) = values.next() else {
        return Ok(MeshIdentity::None);
    };
    if values.next().is_some() {
        // Envoy writes one header; two lines mean someone else wrote one.
        return Err(OAuthError::InvalidRequest(
            "repeated X-Forwarded-Client-Cert header".into(),
        ));
    }
    let v = v
        .to_str()
        .map_err(|_| OAuthError::InvalidRequest("X-Forwarded-Client-Cert is not ASCII".into()))?;
    let last = xfcc::last(v).map_err(|e| OAuthError::InvalidRequest(e.to_string()))?;
    let ok = last.uris().any(|u| {
        trusted
            .iter()
            .any(|t| crypto::ct_eq(t.as_bytes(), u.as_bytes()))
    });
    // The filter's own calls leave the gateway from Envoy's async client, through no
    // connection manager: they carry no X-Forwarded-For. A client request the gateway
    // forwarded (its listener appends the client address) also arrives with the gateway's
    // certificate, so it must not count as the gateway itself.
    let ok = ok && !headers.contains_key("x-forwarded-for");
    Ok(if ok {
        MeshIdentity::Trusted
    } else {
        MeshIdentity::Untrusted
    })
}

/// `GET /edge/revocations?since=<cursor>[&limit=N][&wait=S]`: revoked `jti`s with their
/// expiry. With `wait`, a long poll ([`crate::feed_waiters`]): held up to `wait` seconds (cut
/// to `TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S`) while nothing is newer than the cursor; the
/// answer then says the wait it applied (`wait_s`). Long polls off: `wait` is answered 404.
/// Callers: a trusted mesh identity, a client registered with scope `tollgate:edge`, or the
/// admin token ([`authorize_edge`]).
#[utoipa::path(
    get,
    path = "/edge/revocations",
    tags = ["public"],
    params(("since" = Option<String>, Query, description = "cursor of the previous page"), ("limit" = Option<u32>, Query, description = "entries per page, 1..=10000"), ("wait" = Option<u32>, Query, description = "long poll: seconds to hold the request while nothing is newer than `since` (0..=3600, cut to TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S); the answer's `wait_s` says the wait applied")),
    security(("mesh_identity" = []), ("client_basic" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "a page of the revocation feed", body = super::openapi::RevocationPage),
        (status = 401, description = "invalid_client / invalid_token", body = super::openapi::ErrorBody),
        (status = 403, description = "insufficient_scope: the client lacks tollgate:edge, or the mesh identity is not trusted", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: `wait` given but long polls are off (TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S=0); poll without it", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
        // After CommonErrors: replaces its 400 and 503 with the edge endpoints' own descriptions.
        (status = 400, description = "invalid_request: malformed request, repeated Authorization or Content-Type header, malformed or repeated X-Forwarded-Client-Cert from the sidecar", body = super::openapi::ErrorBody),
        (status = 503, description = "temporarily_unavailable: the store is unreachable, or too many long polls are held (TOLLGATE_EDGE_LONG_POLL_MAX_WAITERS)", body = super::openapi::ErrorBody),
    )
)]
pub async fn revocations(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let r = async {
        authorize_edge(&state, &headers, peer, "the revocation feed").await?;
        // Strict: UTF-8, valid percent-encoding, no repeated parameter (one meaning only).
        let q = Params::parse(query.as_deref().unwrap_or("").as_bytes())?;
        let since = match q.get("since") {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                OAuthError::InvalidRequest("since must be a cursor returned by this feed".into())
            })?),
        };
        let limit = match q.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| {
                    OAuthError::InvalidRequest(format!("limit must be 1..={MAX_PAGE}"))
                })?,
        };
        let wait = match q.get("wait") {
            None => None,
            Some(w) => Some(
                w.parse::<u64>()
                    .ok()
                    .filter(|w| *w <= MAX_WAIT_PARAM_S)
                    .ok_or_else(|| {
                        OAuthError::InvalidRequest(format!(
                            "wait must be 0..={MAX_WAIT_PARAM_S} seconds"
                        ))
                    })?,
            ),
        };
        let waiters = &state.feed_waiters;
        if wait.is_some() && waiters.max_wait.is_zero() {
            return Err(OAuthError::NotFound(
                "long polls of the revocation feed are off (TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S=0)"
                    .into(),
            ));
        }
        let applied = wait.map(|w| Duration::from_secs(w).min(waiters.max_wait));
        let page = waiters
            .read(
                state.store.as_ref(),
                since,
                limit,
                applied.unwrap_or(Duration::ZERO),
            )
            .await?;
        let more = !page.resync && page.entries.len() >= limit;
        let mut body = json!({
            "cursor": page.cursor.to_string(),
            "resync": page.resync,
            "more": more,
            "revocations": page.entries,
        });
        if let Some(a) = applied {
            // Tells the filter that this server held the poll (an older one ignores `wait`).
            body["wait_s"] = json!(a.as_secs());
        }
        Ok(json_no_store(StatusCode::OK, &body))
    }
    .await;
    r.unwrap_or_else(|e: OAuthError| e.into_response())
}

/// `GET /edge/module.wasm`: the filter module, for clusters without an OCI registry.
#[utoipa::path(
    get,
    path = "/edge/module.wasm",
    tags = ["public"],
    responses(
        (status = 200, description = "the Wasm filter module", content_type = "application/wasm", body = Vec<u8>),
        (status = 404, description = "not_found: no module configured (TOLLGATE_EDGE_MODULE)", body = super::openapi::ErrorBody),
        super::openapi::RateLimited,
    )
)]
pub async fn module(State(state): State<SharedState>) -> Response {
    match &state.edge_module {
        Some(m) => {
            let mut r = (StatusCode::OK, m.bytes.clone()).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/wasm"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", m.sha256)) {
                h.insert(header::ETAG, v);
            }
            r
        }
        None => OAuthError::NotFound("no edge module is configured (TOLLGATE_EDGE_MODULE)".into())
            .into_response(),
    }
}

/// `GET /edge/module.wasm.sha256`: hex SHA-256 of the module (pin it in the WasmPlugin).
#[utoipa::path(
    get,
    path = "/edge/module.wasm.sha256",
    tags = ["public"],
    responses(
        (status = 200, description = "hex SHA-256 of the module and a newline", content_type = "text/plain", body = String),
        (status = 404, description = "not_found: no module configured", body = super::openapi::ErrorBody),
        super::openapi::RateLimited,
    )
)]
pub async fn module_sha256(State(state): State<SharedState>) -> Response {
    match &state.edge_module {
        Some(m) => (StatusCode::OK, format!("{}\n", m.sha256)).into_response(),
        None => OAuthError::NotFound("no edge module is configured (TOLLGATE_EDGE_MODULE)".into())
            .into_response(),
    }
}
