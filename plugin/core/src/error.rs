//! Error types of the core.

use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration is not valid JSON for this filter: {0}")]
    Json(String),
    #[error("configuration field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

/// Why a token was refused. The `Display` text is what goes into `error_description`:
/// it never contains the token or any part of it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token too large")]
    TooLarge,
    #[error("token header not accepted")]
    ForbiddenHeader,
    #[error("signing algorithm not accepted")]
    AlgorithmNotAllowed,
    #[error("token type not accepted")]
    WrongType,
    #[error("issuer not accepted")]
    UnknownIssuer,
    #[error("signing key not found")]
    UnknownKey,
    #[error("signature invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("audience not accepted")]
    WrongAudience,
    #[error("required claim missing or invalid: {0}")]
    MissingClaim(&'static str),
    #[error("claim not representable as a header: {0}")]
    UnsafeClaim(String),
}

impl TokenError {
    /// Short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLarge => "too_large",
            TokenError::ForbiddenHeader => "forbidden_header",
            TokenError::AlgorithmNotAllowed => "alg",
            TokenError::WrongType => "typ",
            TokenError::UnknownIssuer => "issuer",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::BadSignature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "nbf",
            TokenError::IssuedInFuture => "iat",
            TokenError::WrongAudience => "audience",
            TokenError::MissingClaim(_) => "claims",
            TokenError::UnsafeClaim(_) => "claims",
        }
    }
}
