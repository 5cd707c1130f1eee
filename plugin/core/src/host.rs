//! What the core needs from its host (Envoy through proxy-wasm, or a test double).
//!
//! The proxy-wasm glue implements [`Host`] with hostcalls; [`crate::testing::MemoryHost`] is
//! an in-memory double with the same compare-and-swap semantics as Envoy's shared data.

use crate::metrics::Metric;

/// Log levels, as proxy-wasm has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// Someone else wrote the key since it was read (compare-and-swap failed).
    #[error("shared data changed since read (cas mismatch)")]
    CasMismatch,
    #[error("shared data write failed")]
    Failed,
}

/// Host services. Every method must be cheap and must not panic.
pub trait Host {
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&self) -> u64;
    /// Value and compare-and-swap counter of a shared-data key (`(None, None)` if absent).
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Write a shared-data key; with `cas`, only if the key was not written since that read.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
    /// Count an event.
    fn metric(&self, m: Metric, delta: u64);
    /// Log a line (never with a token or secret in it).
    fn log(&self, level: Level, msg: &str);
    /// The SHA-256 of the current request's downstream peer certificate (DER), hex, as
    /// Envoy's `connection.sha256_peer_certificate_digest` gives it; `None` without a
    /// client certificate (no TLS, or TLS without one). Read only for a certificate-bound
    /// token.
    fn peer_certificate_sha256(&self) -> Option<String> {
        None
    }
}
