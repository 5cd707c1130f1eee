//! A proxy-wasm HTTP filter that does nothing: every request continues, no header is read,
//! no hostcall is made beyond what the SDK's dispatcher does itself. `make bench-gateway`
//! runs it as the "Wasm floor" beside Tollgate's filter, in the same interleaved rounds:
//! what Envoy's Wasm extension, V8 and the SDK cost per request before a filter does any
//! work, so that the part of Tollgate's cost that is its own shows. Never shipped.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Floor) });
}}

struct Floor;

impl Context for Floor {}

impl RootContext for Floor {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }
}

/// A request's context: every callback keeps its default (continue).
struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {}
