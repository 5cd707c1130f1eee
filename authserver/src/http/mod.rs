//! The HTTP surface: one module per endpoint family, a router, the middleware every
//! request passes (single-valued headers, body limit and read deadline, timeout, panics,
//! metrics, uniform JSON errors) and the connection loop (`server`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::OAuthError;
use crate::state::AppState;

pub mod admin;
pub mod authorize;
pub mod client_assertion;
pub mod client_auth;
pub mod dpop;
pub mod edge;
pub mod ext_authz;
pub mod health;
pub mod introspect;
pub mod lease;
pub mod metadata;
pub mod module_listener;
pub mod mtls;
pub mod openapi;
pub mod pages;
pub mod register;
pub mod revoke;
pub mod server;
pub mod tls;
pub mod token;
pub mod users;

pub type SharedState = Arc<AppState>;

pub use crate::telemetry::{metrics_handle, spawn_metrics_upkeep, METRICS_UPKEEP_INTERVAL};

/// The listener a router serves (docs/contracts.md, "Listeners").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `TOLLGATE_LISTEN`: OAuth endpoints, discovery, the edge endpoints, probes.
    Public,
    /// `TOLLGATE_ADMIN_LISTEN`: `/admin/*`, registration management with the admin token,
    /// `/metrics`. Never exposed through a gateway.
    Admin,
}

/// The public listener's router (`TOLLGATE_LISTEN`). The admin API, client registration
/// with the admin token and `/metrics` are not here: they answer 404 (see [`admin_router`]).
pub fn router(state: SharedState) -> Router {
    let cacheable = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::openid_configuration),
        )
        .route("/oauth2/jwks", get(metadata::jwks))
        .route("/.well-known/openapi.json", get(openapi::served_public))
        .route("/edge/module.wasm", get(edge::module))
        .route("/edge/module.wasm.sha256", get(edge::module_sha256))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            default_rate_limit,
        ));
    // RFC 7592 management with the client's own registration access token only: the admin
    // token manages clients on the admin listener.
    let self_service = Router::new()
        .route(
            "/oauth2/register/{client_id}",
            get(register::read)
                .put(register::update)
                .delete(register::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_admin_token,
        ));
    let routes = Router::new()
        .merge(cacheable)
        .merge(self_service)
        .route(
            "/oauth2/authorize",
            get(authorize::authorize).post(authorize::authorize),
        )
        .route("/oauth2/login", post(authorize::login))
        .route("/oauth2/consent", post(authorize::consent))
        .route("/oauth2/token", post(token::token))
        .route("/oauth2/introspect", post(introspect::introspect))
        .route("/oauth2/revoke", post(revoke::revoke))
        .route("/edge/revocations", get(edge::revocations))
        .route("/edge/ratelimit/lease", post(lease::lease))
        .route("/edge/authz", any(ext_authz::check))
        .route("/edge/authz/{*path}", any(ext_authz::check))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    finish(routes, state)
}

/// The admin listener's router (`TOLLGATE_ADMIN_LISTEN`): the admin API, client
/// registration (RFC 7591) and management (RFC 7592) with the admin token, Prometheus
/// metrics and a liveness probe. Nothing else: the OAuth endpoints answer 404 here.
pub fn admin_router(state: SharedState) -> Router {
    let routes = Router::new()
        .route("/oauth2/register", post(register::create))
        .route(
            "/oauth2/register/{client_id}",
            get(register::read)
                .put(register::update)
                .delete(register::delete),
        )
        .route("/admin/clients", get(admin::list_clients))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/users", get(users::list).post(users::create))
        .route(
            "/admin/users/{username}",
            get(users::read).delete(users::delete),
        )
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/.well-known/openapi.json", get(openapi::served_full));
    finish(routes, state)
}

/// The middleware every request passes, on both listeners.
fn finish(routes: Router<SharedState>, state: SharedState) -> Router {
    metrics_handle();
    let body_limit = state.cfg.max_body_bytes;
    let guard = GuardLimits {
        timeout: Duration::from_millis(state.cfg.request_timeout_ms),
        long_poll: state.feed_waiters.max_wait,
        max_body: body_limit,
        max_header_bytes: state.cfg.max_header_bytes,
        max_headers: state.cfg.max_headers,
    };
    routes
        .fallback(not_found)
        .layer(middleware::from_fn(uniform_errors))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(guard, request_guard))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// On the public listener the admin token manages no client: the same answer as any other
/// wrong registration access token (RFC 7592 §3), so the public port tells nothing about it.
/// A method the route does not have still gets its 405 (a route layer also sees those).
async fn refuse_admin_token(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    let managed = [Method::GET, Method::HEAD, Method::PUT, Method::DELETE];
    if managed.contains(req.method()) && client_auth::is_admin(&state, req.headers()) {
        return OAuthError::InvalidToken("invalid registration access token".into())
            .into_response();
    }
    next.run(req).await
}

async fn not_found() -> OAuthError {
    OAuthError::NotFound("no such endpoint".into())
}

/// What [`request_guard`] enforces.
#[derive(Debug, Clone, Copy)]
struct GuardLimits {
    /// Time for the whole request: reading the body and the handler.
    timeout: Duration,
    /// Added to `timeout` for the revocation feed, whose long polls are held this long.
    long_poll: Duration,
    /// Largest body.
    max_body: usize,
    /// `TOLLGATE_MAX_HEADER_BYTES`: checked here for a JSON 431 (hyper's own limit is set
    /// higher, see `server::ConnLimits`).
    max_header_bytes: usize,
    /// `TOLLGATE_MAX_HEADERS`, likewise.
    max_headers: usize,
}

/// The size of a request head as it came on the wire: request line and header lines.
fn head_bytes(req: &Request) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}

/// Headers that must appear at most once: a second `Authorization` or `Content-Type` would
/// let this server and a proxy in front read different values (RFC 6749 §3.1, RFC 6750 §2).
const SINGLE_VALUED: [header::HeaderName; 2] = [header::AUTHORIZATION, header::CONTENT_TYPE];

/// An error answer after which the connection is closed (the body may be unread).
fn closing(mut r: Response, status: StatusCode) -> Response {
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Every request passes here first: repeated single-valued headers are refused, the body is
/// read completely (at most `max_body` bytes: 413, and within the request deadline: 408),
/// then the handler runs within what is left of the deadline (503 when a slow store makes
/// it miss it). A slow client or store never holds a request forever.
async fn request_guard(State(limits): State<GuardLimits>, req: Request, next: Next) -> Response {
    let mut deadline = tokio::time::Instant::now() + limits.timeout;
    if req.uri().path() == "/edge/revocations" {
        deadline += limits.long_poll;
    }
    if req.headers().len() > limits.max_headers || head_bytes(&req) > limits.max_header_bytes {
        return closing(
            OAuthError::InvalidRequest("the request head is too large".into()).into_response(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        );
    }
    for name in &SINGLE_VALUED {
        if req.headers().get_all(name).iter().nth(1).is_some() {
            return closing(
                OAuthError::InvalidRequest(format!("the {name} header is repeated"))
                    .into_response(),
                StatusCode::BAD_REQUEST,
            );
        }
    }
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body as u64) {
        return closing(
            OAuthError::PayloadTooLarge.into_response(),
            StatusCode::PAYLOAD_TOO_LARGE,
        );
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout_at(deadline, Limited::new(body, limits.max_body).collect());
    let body: Bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(
                OAuthError::PayloadTooLarge.into_response(),
                StatusCode::PAYLOAD_TOO_LARGE,
            );
        }
        Ok(Err(_)) => {
            return closing(
                OAuthError::InvalidRequest("malformed or incomplete request body".into())
                    .into_response(),
                StatusCode::BAD_REQUEST,
            );
        }
        Err(_) => {
            return closing(
                OAuthError::InvalidRequest("the request body did not arrive in time".into())
                    .into_response(),
                StatusCode::REQUEST_TIMEOUT,
            );
        }
    };
    let req = Request::from_parts(parts, Body::from(body));
    match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(r) => r,
        Err(_) => OAuthError::TemporarilyUnavailable("request timed out".into()).into_response(),
    }
}

/// A handler panicked: answer a plain `server_error` (the detail goes to the log only).
fn panicked(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    OAuthError::ServerError(format!("handler panicked: {detail}")).into_response()
}

/// Turn the framework's own plain-text rejections (405, 413, 415, 400 from extractors) into
/// RFC 6749 JSON errors, so every error has the same shape.
async fn uniform_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_json {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = match status {
        StatusCode::METHOD_NOT_ALLOWED => OAuthError::MethodNotAllowed.into_response(),
        StatusCode::PAYLOAD_TOO_LARGE => OAuthError::PayloadTooLarge.into_response(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            OAuthError::UnsupportedMediaType("unsupported content type".into()).into_response()
        }
        StatusCode::NOT_FOUND => OAuthError::NotFound("not found".into()).into_response(),
        s if s.is_server_error() => OAuthError::ServerError(format!("status {s}")).into_response(),
        _ => OAuthError::InvalidRequest("malformed request".into()).into_response(),
    };
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

/// Request metrics by route template (never by raw path: no unbounded label values).
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [
        ("method", method.as_str().to_string()),
        ("route", route.clone()),
        ("status", status),
    ];
    metrics::counter!("tollgate_http_requests_total", &labels).increment(1);
    metrics::histogram!("tollgate_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The client's IP: the TCP peer, or the address `trusted_proxy_hops` hops from the right
/// of `X-Forwarded-For` when proxies in front are trusted.
pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, hops: usize) -> String {
    if hops > 0 {
        let xff: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if xff.len() >= hops {
            if let Ok(ip) = xff[xff.len() - hops].parse::<IpAddr>() {
                return ip.to_string();
            }
        }
    }
    peer.map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Per-IP limit on the public, unauthenticated endpoints (`rate_limit_default`/min), except
/// the JWKS and the metadata documents: they are answered from memory (counting them costs
/// more than serving them), and behind a sidecar every caller has one address, so one
/// caller's flood would stop every gateway's key fetch.
async fn default_rate_limit(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.cfg.rate_limit_default;
    let path = req.uri().path();
    let unlimited = path == "/oauth2/jwks" || path.starts_with("/.well-known/");
    if limit > 0 && !unlimited {
        let ip = client_ip(req.headers(), peer_of(&req), state.cfg.trusted_proxy_hops);
        match state.store.rate_limit(&format!("ip:{ip}"), limit, 60).await {
            Ok(d) if !d.allowed => {
                metrics::counter!("tollgate_rate_limited_total", "kind" => "ip").increment(1);
                return OAuthError::RateLimited {
                    retry_after: d.reset_after,
                }
                .into_response();
            }
            Ok(_) => {}
            // Fail open on the rate limiter only: these endpoints are public and cacheable.
            Err(e) => tracing::warn!(error = %e, "rate limiter unavailable"),
        }
    }
    next.run(req).await
}

/// A JSON response with `Cache-Control: no-store` (RFC 6749 §5.1).
pub fn json_no_store(status: StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_client_cache;
#[cfg(test)]
mod tests_edge_identity;
#[cfg(test)]
mod tests_escalation;
#[cfg(test)]
mod tests_ext_authz;
#[cfg(test)]
mod tests_flows;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_listeners;
#[cfg(test)]
mod tests_lockout;
#[cfg(test)]
mod tests_longpoll;
#[cfg(test)]
mod tests_mtls;

// DPoP (RFC 9449) at the token endpoint, both stores.
#[cfg(test)]
mod tests_dpop;
