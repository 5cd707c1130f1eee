//! HTTP calls to the auth server's cluster: dispatching a [`FetchPlan`], remembering what
//! each call is for, reading its answer and handing it to the worker, then applying what
//! the worker decided about the streams it held.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::abi::{self, BufferType, MapType};
use tollgate_edge_core::cache::TokenHash;
use tollgate_edge_core::engine::{FetchKind, SecretToken};
use tollgate_edge_core::{FetchPlan, Host, Outcome, Worker};

use crate::stream::{apply_outcome, HostStream, StreamOps};
use crate::SharedRef;

/// Largest JWKS answer read (bytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest revocation-feed page read (bytes): a resync lists every live revocation.
const MAX_FEED_BYTES: usize = 16 * 1024 * 1024;
/// Largest introspection answer read (bytes).
const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;
/// Largest rate-limit lease answer read (bytes).
const MAX_LEASE_BYTES: usize = 4 * 1024;

thread_local! {
    /// dispatch_http_call token -> what the call is for, and the context that dispatched it
    /// (0: the root). One map for the root and the HTTP contexts: whichever context
    /// receives an answer hands it to the worker.
    static CALLS: RefCell<HashMap<u32, (FetchKind, u32)>> = RefCell::new(HashMap::new());
    /// Response headers to add to allowed streams (rate-limit headers), by context id.
    pub(crate) static DEFERRED: RefCell<HashMap<u32, Vec<(String, String)>>> = RefCell::new(HashMap::new());
}

pub(crate) fn register_call(token: u32, kind: FetchKind, dispatcher: u32) {
    CALLS.with(|c| c.borrow_mut().insert(token, (kind, dispatcher)));
}

/// A stream ended: Envoy cancels the calls it dispatched, forget them.
pub(crate) fn forget_calls_of(dispatcher: u32) {
    CALLS.with(|c| c.borrow_mut().retain(|_, (_, d)| *d != dispatcher));
}

/// Largest answer read, by kind of call (bytes).
fn max_answer_bytes(kind: &FetchKind) -> usize {
    match kind {
        FetchKind::Jwks { .. } => MAX_JWKS_BYTES,
        FetchKind::Revocations => MAX_FEED_BYTES,
        FetchKind::Introspection { .. } => MAX_INTROSPECTION_BYTES,
        FetchKind::Lease { .. } => MAX_LEASE_BYTES,
    }
}

/// Read the answer of the call being delivered: `Ok((status, body))` or why there is none.
fn read_call_answer(
    num_headers: usize,
    body_size: usize,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    if num_headers == 0 {
        return Err("no answer (timeout or connection failure)".to_string());
    }
    let status = abi::get_header(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    if body_size > max {
        return Err(format!("answer too large ({body_size} bytes)"));
    }
    let body = abi::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok((status, body))
}

/// Dispatch an introspection for stream `ctx` (the current stream in `ops`). When the call
/// cannot be dispatched, returns the stream's answer by `fail_mode` (for the caller to
/// apply: the stream is no longer held).
pub(crate) fn start_introspection(
    worker: &mut Worker,
    host: &dyn Host,
    ops: &mut dyn StreamOps,
    ctx: u32,
    dispatcher: u32,
    hash: TokenHash,
    token: &SecretToken,
) -> Option<Outcome> {
    let dispatched = match worker.introspection_plan(&hash, token) {
        Some(plan) => ops.dispatch(&plan).map(|call| (call, plan.kind)),
        None => Err("introspection is not configured".to_string()),
    };
    match dispatched {
        Ok((call, kind)) => {
            register_call(call, kind, dispatcher);
            worker.note_introspection_call(hash, dispatcher);
            None
        }
        Err(e) => Some(worker.introspection_dispatch_failed(host, hash, ctx, &e)),
    }
}

/// Apply decisions about held streams from another context (`home`: the one running now):
/// switch to each stream, apply (or dispatch its introspection), switch back.
pub(crate) fn apply_decided(
    shared: &SharedRef,
    decided: Vec<(u32, Outcome)>,
    home: u32,
    dispatcher: u32,
) {
    if decided.is_empty() {
        return;
    }
    for (ctx, outcome) in decided {
        if abi::set_effective_context(ctx).is_err() {
            continue; // the stream is gone
        }
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let mut ops = HostStream { context_id: ctx };
        match &outcome {
            Outcome::Introspect { hash, token } => {
                if let Some(w) = s.worker.as_mut() {
                    if let Some(o) =
                        start_introspection(w, &s.host, &mut ops, ctx, dispatcher, *hash, token)
                    {
                        apply_outcome(&mut ops, &o, true);
                    }
                }
            }
            Outcome::Reject(r) => {
                Worker::count_rejection(&s.host, r);
                apply_outcome(&mut ops, &outcome, true);
            }
            _ => apply_outcome(&mut ops, &outcome, true),
        }
    }
    let _ = abi::set_effective_context(home);
}

/// An HTTP call's answer, delivered to context `home` (root or stream).
pub(crate) fn on_call_answer(
    shared: &SharedRef,
    token_id: u32,
    num_headers: usize,
    body_size: usize,
    home: u32,
    dispatcher: u32,
) {
    let Some((kind, _)) = CALLS.with(|c| c.borrow_mut().remove(&token_id)) else {
        return;
    };
    let result = read_call_answer(num_headers, body_size, max_answer_bytes(&kind));
    let decided = {
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let Some(w) = s.worker.as_mut() else {
            return;
        };
        match kind {
            FetchKind::Jwks { issuer } => {
                w.on_fetch(&s.host, issuer, result);
                w.resolve_waiters(&s.host)
            }
            FetchKind::Revocations => {
                w.on_revocations(&s.host, result);
                Vec::new()
            }
            FetchKind::Introspection { hash } => w.on_introspection(&s.host, hash, result),
            FetchKind::Lease { .. } => w.on_lease(&s.host, kind, result),
        }
    };
    apply_decided(shared, decided, home, dispatcher);
}

/// `dispatch_http_call` for a plan (the answer goes to the context running now).
pub(crate) fn dispatch_plan(p: &FetchPlan) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", p.method),
        (":path", p.path.as_str()),
        (":authority", p.authority.as_str()),
        ("user-agent", "tollgate-filter"),
    ];
    headers.extend(p.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let timeout = u32::try_from(p.timeout_ms).unwrap_or(u32::MAX);
    abi::http_call(&p.cluster, &headers, p.body.as_deref(), timeout)
        .map_err(|status| format!("dispatch to cluster {} refused: status {status}", p.cluster))
}
