//! The proxy-wasm ABI (0.2.1) callbacks the module exports: only those the filter needs.
//!
//! Envoy (proxy-wasm-cpp-host) calls into V8 for each exported stream callback of every
//! stream and skips one the module does not export (`ContextBase::onLog`, `onDone`,
//! `onRequestBody`, ...: `if (wasm_->on_log_) ...`). An SDK's dispatcher exports them all;
//! this module exports, per stream, `proxy_on_context_create`, `proxy_on_request_headers`,
//! `proxy_on_response_headers` (rate-limit headers) and `proxy_on_delete`. No request or
//! response body, trailers, `proxy_on_done` or `proxy_on_log`: a held stream is forgotten
//! in `proxy_on_delete`, which Envoy calls when the stream is destroyed
//! (`Context::onDestroy`: `onDone(); onDelete();`), whether it ended or was reset.
//!
//! Contexts live in this worker thread's tables (one VM = one thread): root contexts (a
//! plugin configuration each) and the streams, each bound to its root's shared state.
//! A callback for a context the tables do not hold is ignored (never a panic).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::abi::Action;
use crate::{reply_not_configured, TollgateHttp, TollgateRoot};

thread_local! {
    static ROOTS: RefCell<HashMap<u32, TollgateRoot>> = RefCell::new(HashMap::new());
    static STREAMS: RefCell<HashMap<u32, TollgateHttp>> = RefCell::new(HashMap::new());
}

/// Run `f` on root context `id`: `None` when there is no such root, or its table is in use
/// (a re-entrant call).
fn with_root<R>(id: u32, f: impl FnOnce(&mut TollgateRoot) -> R) -> Option<R> {
    ROOTS.with(|r| r.try_borrow_mut().ok()?.get_mut(&id).map(f))
}

/// Run `f` on stream context `id` (as [`with_root`]).
fn with_stream<R>(id: u32, f: impl FnOnce(&mut TollgateHttp) -> R) -> Option<R> {
    STREAMS.with(|s| s.try_borrow_mut().ok()?.get_mut(&id).map(f))
}

extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor initialisation (Envoy calls `_initialize` before any other export).
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker's constructor list, run once, before anything else of the module.
    unsafe { __wasm_call_ctors() };
}

/// The ABI version the module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's allocator for buffers it hands the module: a `Vec<u8>` of exactly `size`
/// bytes of capacity, taken back with `Vec::from_raw_parts(ptr, size, size)` (`abi.rs`).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

/// A root context (`root_context_id` 0) or a stream of root `root_context_id`.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        ROOTS.with(|r| {
            if let Ok(mut roots) = r.try_borrow_mut() {
                roots.insert(context_id, TollgateRoot::new(context_id));
            }
        });
        return;
    }
    if let Some(stream) = with_root(root_context_id, |root| root.create_http_context(context_id)) {
        STREAMS.with(|s| {
            if let Ok(mut streams) = s.try_borrow_mut() {
                streams.insert(context_id, stream);
            }
        });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> bool {
    with_root(root_context_id, |root| {
        root.on_configure(configuration_size)
    })
    .unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    with_root(root_context_id, TollgateRoot::on_tick);
}

/// An HTTP call's answer, delivered to the context that dispatched it.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    let to_root = with_root(context_id, |root| {
        root.on_http_call_response(token, num_headers, body_size)
    });
    if to_root.is_none() {
        with_stream(context_id, |stream| {
            stream.on_http_call_response(token, num_headers, body_size)
        });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> Action {
    with_stream(context_id, TollgateHttp::on_http_request_headers).unwrap_or_else(|| {
        // No stream: its root was never created or configured. Fail closed.
        reply_not_configured();
        Action::Pause
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> Action {
    with_stream(context_id, TollgateHttp::on_http_response_headers).unwrap_or(Action::Continue)
}

/// A context is gone: a stream (forget what it held) or a root (the plugin is removed).
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let stream = STREAMS.with(|s| {
        s.try_borrow_mut()
            .ok()
            .and_then(|mut m| m.remove(&context_id))
    });
    if let Some(mut stream) = stream {
        stream.on_delete();
        return;
    }
    ROOTS.with(|r| {
        if let Ok(mut roots) = r.try_borrow_mut() {
            roots.remove(&context_id);
        }
    });
}
