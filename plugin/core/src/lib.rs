//! Host-independent core of the Tollgate edge filter.
//!
//! Everything the proxy-wasm filter decides lives here, as plain Rust over the [`host::Host`]
//! trait: configuration ([`config`]), token extraction ([`token`]), JWT verification
//! ([`jwt`]), JWK Sets ([`jwks`]), rules ([`rules`]), RFC 6750 rejections ([`reject`]),
//! identity headers ([`identity`]), the shared verified-token cache ([`cache`]), revocation
//! at the edge ([`revocation`]), opaque-token introspection ([`introspection`]) and its guards ([`opaque`]), shared rate
//! limits ([`ratelimit`]), global rate limits by quota leases ([`lease`]), the request path as a list of stages
//! ([`pipeline`]) and the worker's state, timer and fetch answers ([`engine`]). The `tollgate-filter` crate only maps this onto
//! proxy-wasm hostcalls. See `docs/filter.md`.

pub mod cache;
pub mod config;
mod ecdsa_curve;
mod ecdsa_shared;
pub mod eddsa;
pub mod engine;
pub mod error;
pub mod es256;
pub mod es384;
/// Property functions of the fuzz targets and the corpus regression test (`fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod identity;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod lease;
pub mod metrics;
pub mod opaque;
pub mod pipeline;
pub mod ratelimit;
pub mod reject;
pub mod revocation;
pub mod rsassa;
pub mod rules;
pub mod testing;
pub mod token;

pub use config::Config;
pub use engine::{FetchPlan, Outcome, Request, Worker};
pub use error::{ConfigError, TokenError};
pub use host::{Host, Level, SharedError};

/// Byte equality in time independent of where the inputs differ (the lengths are not
/// secret): token bindings, proof hashes, nonce MACs, RSA encoded messages.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod ct_eq_tests {
    #[test]
    fn ct_eq_is_byte_equality() {
        assert!(super::ct_eq(b"", b""));
        assert!(super::ct_eq(b"abc", b"abc"));
        assert!(!super::ct_eq(b"abc", b"abd"));
        assert!(!super::ct_eq(b"xbc", b"abc"));
        assert!(!super::ct_eq(b"abc", b"abcd"));
        assert!(!super::ct_eq(b"abcd", b"abc"));
    }
}
