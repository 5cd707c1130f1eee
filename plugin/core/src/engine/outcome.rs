//! What the core hands the glue: an [`Outcome`] per request, a [`FetchPlan`] per call.

use std::rc::Rc;

#[cfg(doc)]
use super::Worker;
use crate::cache::TokenHash;
use crate::lease::KeyHash;
use crate::reject::Rejection;

/// A bearer token carried inside an [`Outcome`]: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(pub String);

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(..)")
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it, after setting these headers and removing these; add `response_headers`
    /// to the upstream's answer (rate-limit headers).
    Allow {
        set: Rc<[(String, String)]>,
        remove: Vec<String>,
        response_headers: Vec<(String, String)>,
    },
    /// Answer locally.
    Reject(Rejection),
    /// The issuer's JWKS was never loaded: hold the request until it is (or time out).
    WaitForJwks { issuer: usize },
    /// An opaque token this worker claimed: hold the request and dispatch
    /// [`Worker::introspection_plan`]; the answer goes to [`Worker::on_introspection`].
    Introspect { hash: TokenHash, token: SecretToken },
    /// Another request (of this or another worker) is introspecting this token: hold the
    /// request until the answer is in shared data.
    WaitForIntrospection { hash: TokenHash },
    /// A globally rate-limited key without a lease: hold the request (see
    /// [`Worker::hold_lease`]) until the root tick's lease call is answered (or times out).
    WaitForLease { rule: usize, hash: KeyHash },
}

/// What a [`FetchPlan`] is for (and where its answer goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// A JWKS: [`Worker::on_fetch`].
    Jwks { issuer: usize },
    /// The revocation feed: [`Worker::on_revocations`].
    Revocations,
    /// An introspection: [`Worker::on_introspection`].
    Introspection { hash: TokenHash },
    /// A rate-limit lease for `rule`'s key `hash`, sent at `sent_ms` asking for `want`:
    /// [`Worker::on_lease`].
    Lease {
        rule: usize,
        hash: KeyHash,
        sent_ms: u64,
        want: u64,
    },
}

/// An HTTP call the glue must dispatch (`dispatch_http_call`).
#[derive(Clone, PartialEq, Eq)]
pub struct FetchPlan {
    pub kind: FetchKind,
    pub cluster: String,
    pub method: &'static str,
    pub path: String,
    pub authority: String,
    /// Extra request headers (may hold credentials: never logged).
    pub headers: Vec<(String, String)>,
    /// Request body (may hold a token: never logged).
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl FetchPlan {
    /// The JWKS issuer index, for JWKS fetches.
    pub fn issuer(&self) -> Option<usize> {
        match self.kind {
            FetchKind::Jwks { issuer } => Some(issuer),
            _ => None,
        }
    }
}

impl std::fmt::Debug for FetchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchPlan")
            .field("kind", &self.kind)
            .field("cluster", &self.cluster)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}
