//! RFC 6750 rejections: `WWW-Authenticate: Bearer ...` and a JSON body.

use serde_json::json;

/// A local reply the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Short label for logs and metrics.
    pub reason: &'static str,
}

fn quote(s: &str) -> String {
    // error_description is limited to %x20-21 / %x23-5B / %x5D-7E (RFC 6750 §3).
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

fn reply(status: u16, www: String, body: serde_json::Value, reason: &'static str) -> Rejection {
    Rejection {
        status,
        headers: vec![
            ("www-authenticate".into(), www),
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body: body.to_string(),
        reason,
    }
}

/// 401 without an error code: the request carried no token (RFC 6750 §3.1).
pub fn missing_token(realm: &str) -> Rejection {
    reply(
        401,
        format!("Bearer realm=\"{}\"", quote(realm)),
        json!({"error": "invalid_request", "error_description": "bearer token required"}),
        "missing",
    )
}

/// 400 `invalid_request`: the request is malformed (RFC 6750 §3.1), e.g. it carries the
/// token header more than once.
pub fn invalid_request(realm: &str, description: &str, reason: &'static str) -> Rejection {
    let d = quote(description);
    reply(
        400,
        format!(
            "Bearer realm=\"{}\", error=\"invalid_request\", error_description=\"{d}\"",
            quote(realm)
        ),
        json!({"error": "invalid_request", "error_description": d}),
        reason,
    )
}

/// 401 `invalid_token`.
pub fn invalid_token(realm: &str, description: &str, reason: &'static str) -> Rejection {
    let d = quote(description);
    reply(
        401,
        format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{d}\"",
            quote(realm)
        ),
        json!({"error": "invalid_token", "error_description": d}),
        reason,
    )
}

/// 403 `insufficient_scope` with the scope the route needs.
pub fn insufficient_scope(realm: &str, needed: &str) -> Rejection {
    let s = quote(needed);
    reply(
        403,
        format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\", \
             error_description=\"the token lacks a required scope\", scope=\"{s}\"",
            quote(realm)
        ),
        json!({"error": "insufficient_scope",
               "error_description": "the token lacks a required scope",
               "scope": s}),
        "scope",
    )
}

/// No JWKS could be loaded in time: 503 (or 401 when so configured).
pub fn jwks_unavailable(realm: &str, status: u16) -> Rejection {
    if status == 401 {
        return invalid_token(realm, "token cannot be verified now", "no_jwks");
    }
    let mut r = reply(
        503,
        format!("Bearer realm=\"{}\"", quote(realm)),
        json!({"error": "temporarily_unavailable",
               "error_description": "signing keys not available yet"}),
        "no_jwks",
    );
    r.headers.push(("retry-after".into(), "1".into()));
    r
}

/// 503 `temporarily_unavailable` with `Retry-After` (revocation feed stale in `closed`
/// mode, introspection unreachable in `closed` mode).
pub fn unavailable(realm: &str, description: &str, reason: &'static str) -> Rejection {
    let mut r = reply(
        503,
        format!("Bearer realm=\"{}\"", quote(realm)),
        json!({"error": "temporarily_unavailable", "error_description": quote(description)}),
        reason,
    );
    r.headers.push(("retry-after".into(), "1".into()));
    r
}

/// 429 over a rate limit, with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit`
/// headers.
pub fn rate_limited(retry_after_s: u64, policy: &str, ratelimit: &str) -> Rejection {
    Rejection {
        status: 429,
        headers: vec![
            ("retry-after".into(), retry_after_s.max(1).to_string()),
            ("ratelimit-policy".into(), policy.to_string()),
            ("ratelimit".into(), ratelimit.to_string()),
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body: json!({"error": "rate_limited",
                     "error_description": "too many requests, retry later"})
        .to_string(),
        reason: "rate_limited",
    }
}

/// The signature algorithms the filter verifies DPoP proofs with (`algs` of the DPoP
/// challenge, RFC 9449 §7.1).
pub const DPOP_ALGS: &str = "ES256";

/// 401 with a DPoP challenge (RFC 9449 §7.1): `error` is `invalid_token` (the token cannot
/// be used so: a DPoP-bound token as Bearer, an unbound one as DPoP, an unbound one where
/// the route requires sender-constrained tokens) or `invalid_dpop_proof`.
pub fn dpop(
    realm: &str,
    error: &'static str,
    description: &str,
    reason: &'static str,
) -> Rejection {
    let d = quote(description);
    reply(
        401,
        format!(
            "DPoP realm=\"{}\", error=\"{error}\", error_description=\"{d}\", algs=\"{DPOP_ALGS}\"",
            quote(realm)
        ),
        json!({"error": error, "error_description": d}),
        reason,
    )
}

/// 401 without an error code on a route that requires a sender-constrained token: the
/// request carried no token; the challenge names the `DPoP` scheme (RFC 9449 §7.1).
pub fn missing_dpop_token(realm: &str) -> Rejection {
    reply(
        401,
        format!("DPoP realm=\"{}\", algs=\"{DPOP_ALGS}\"", quote(realm)),
        json!({"error": "invalid_request", "error_description": "DPoP-bound token required"}),
        "missing",
    )
}
