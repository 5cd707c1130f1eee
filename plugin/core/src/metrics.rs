//! The counters the filter defines (proxy-wasm `define_metric`), with their names.

use crate::error::TokenError;

/// A counter. Envoy shows each as `wasmcustom.<name>` in its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Allowed,
    AllowedAnonymous,
    DeniedMissing,
    DeniedScope,
    DeniedRuleAudience,
    DeniedNoJwks,
    Denied(&'static str),
    CacheHit,
    CacheMiss,
    JwksFetch,
    JwksRefreshOk,
    JwksRefreshFailed,
    JwksUnknownKidRefresh,
    RevocationPollOk,
    RevocationPollFailed,
    RevocationStale,
    RateLimited,
    RateLimitError,
    RateLimitLease,
    RateLimitLeaseFailed,
    RateLimitFallback,
    IntrospectionCall,
    IntrospectionFailed,
    /// A new opaque token refused without an introspection call: its client address is
    /// over `introspection.miss_limit`.
    IntrospectionLimited,
    AllowedUnverified,
}

/// Every `TokenError::reason()` label, so the glue can define all counters up front.
pub const TOKEN_REASONS: [&str; 12] = [
    "malformed",
    "too_large",
    "forbidden_header",
    "alg",
    "typ",
    "issuer",
    "unknown_kid",
    "signature",
    "expired",
    "nbf",
    "iat",
    "audience",
];

/// Every refusal label of the `dpop` stage (`tollgate_denied_<label>`).
pub const DPOP_REASONS: [&str; 19] = [
    "dpop_bearer",
    "dpop_unbound",
    "dpop_required",
    "dpop_missing",
    "dpop_repeated",
    "dpop_too_large",
    "dpop_malformed",
    "dpop_typ",
    "dpop_alg",
    "dpop_jwk",
    "dpop_key",
    "dpop_signature",
    "dpop_htm",
    "dpop_htu",
    "dpop_iat",
    "dpop_ath",
    "dpop_replay",
    "dpop_replay_full",
    "dpop_nonce",
];

/// Every refusal label of the `mtls` stage (`tollgate_denied_<label>`).
pub const MTLS_REASONS: [&str; 2] = ["mtls_no_certificate", "mtls_mismatch"];

impl Metric {
    pub fn for_token_error(e: &TokenError) -> Metric {
        Metric::Denied(e.reason())
    }

    /// The metric name (without Envoy's `wasmcustom.` prefix).
    pub fn name(&self) -> String {
        match self {
            Metric::Allowed => "tollgate_allowed".into(),
            Metric::AllowedAnonymous => "tollgate_allowed_anonymous".into(),
            Metric::DeniedMissing => "tollgate_denied_missing".into(),
            Metric::DeniedScope => "tollgate_denied_scope".into(),
            Metric::DeniedRuleAudience => "tollgate_denied_rule_audience".into(),
            Metric::DeniedNoJwks => "tollgate_denied_no_jwks".into(),
            Metric::Denied(r) => format!("tollgate_denied_{r}"),
            Metric::CacheHit => "tollgate_cache_hit".into(),
            Metric::CacheMiss => "tollgate_cache_miss".into(),
            Metric::JwksFetch => "tollgate_jwks_fetch".into(),
            Metric::JwksRefreshOk => "tollgate_jwks_refresh_ok".into(),
            Metric::JwksRefreshFailed => "tollgate_jwks_refresh_failed".into(),
            Metric::JwksUnknownKidRefresh => "tollgate_jwks_unknown_kid_refresh".into(),
            Metric::RevocationPollOk => "tollgate_revocation_poll_ok".into(),
            Metric::RevocationPollFailed => "tollgate_revocation_poll_failed".into(),
            Metric::RevocationStale => "tollgate_revocation_stale".into(),
            Metric::RateLimited => "tollgate_rate_limited".into(),
            Metric::RateLimitError => "tollgate_rate_limit_error".into(),
            Metric::RateLimitLease => "tollgate_rate_limit_lease".into(),
            Metric::RateLimitLeaseFailed => "tollgate_rate_limit_lease_failed".into(),
            Metric::RateLimitFallback => "tollgate_rate_limit_fallback".into(),
            Metric::IntrospectionCall => "tollgate_introspection_call".into(),
            Metric::IntrospectionFailed => "tollgate_introspection_failed".into(),
            Metric::IntrospectionLimited => "tollgate_introspection_limited".into(),
            Metric::AllowedUnverified => "tollgate_allowed_unverified".into(),
        }
    }

    /// Every metric, for definition at start-up.
    pub fn all() -> Vec<Metric> {
        let mut v = vec![
            Metric::Allowed,
            Metric::AllowedAnonymous,
            Metric::DeniedMissing,
            Metric::DeniedScope,
            Metric::DeniedRuleAudience,
            Metric::DeniedNoJwks,
            Metric::CacheHit,
            Metric::CacheMiss,
            Metric::JwksFetch,
            Metric::JwksRefreshOk,
            Metric::JwksRefreshFailed,
            Metric::JwksUnknownKidRefresh,
            Metric::Denied("claims"),
            Metric::Denied("revoked"),
            Metric::Denied("inactive"),
            Metric::Denied("unavailable"),
            Metric::Denied("repeated"),
            Metric::Denied("opaque_shape"),
            Metric::RevocationPollOk,
            Metric::RevocationPollFailed,
            Metric::RevocationStale,
            Metric::RateLimited,
            Metric::RateLimitError,
            Metric::RateLimitLease,
            Metric::RateLimitLeaseFailed,
            Metric::RateLimitFallback,
            Metric::IntrospectionCall,
            Metric::IntrospectionFailed,
            Metric::IntrospectionLimited,
            Metric::AllowedUnverified,
        ];
        v.extend(TOKEN_REASONS.iter().map(|r| Metric::Denied(r)));
        v.extend(DPOP_REASONS.iter().map(|r| Metric::Denied(r)));
        v.extend(MTLS_REASONS.iter().map(|r| Metric::Denied(r)));
        v
    }
}
