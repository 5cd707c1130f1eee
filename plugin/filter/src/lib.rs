//! Tollgate edge filter: the proxy-wasm glue around `tollgate-edge-core`.
//!
//! Every decision is taken by [`tollgate_edge_core::Worker`]; this crate only
//! - exports the proxy-wasm ABI callbacks it needs and no other (`exports.rs`), over its own
//!   hostcall wrappers (`abi.rs`): no SDK, so Envoy makes no call into V8 for a stream
//!   callback the filter does not use,
//! - implements the core's [`tollgate_edge_core::Host`] trait with proxy-wasm hostcalls
//!   ([`EnvoyHost`], `host.rs`),
//! - parses the configuration in `on_configure` (refusing a bad one with a log line) and
//!   holds the root and HTTP contexts (this file),
//! - runs the timer in the root context: JWKS fetches, revocation-feed polls and
//!   rate-limit leases through `dispatch_http_call` (`calls.rs`),
//! - reads request headers without a way to panic (`headers.rs`),
//! - applies [`tollgate_edge_core::Outcome`]s to HTTP streams (`stream.rs`): remove spoofed
//!   headers, set identity headers, rate-limit response headers, local replies, holding a request while no JWKS was ever
//!   loaded or while its opaque token is introspected — the call is dispatched from the
//!   stream, and its answer decides every request of the worker waiting for that token —
//!   or while a globally rate-limited key has no lease yet: the root tick asks for it.
//!
//! Nothing here may panic: a panic aborts the Wasm VM and with it every request of the worker.

use std::cell::RefCell;
use std::rc::Rc;

use tollgate_edge_core::engine::FetchKind;
use tollgate_edge_core::{Config, Worker};

pub mod abi;
mod calls;
#[cfg(target_arch = "wasm32")]
mod exports;
mod headers;
mod host;
mod stream;

use abi::{Action, BufferType, LogLevel, MapType};

use calls::{
    apply_decided, dispatch_plan, forget_calls_of, on_call_answer, register_call, DEFERRED,
};
pub use headers::decode_header_map;
use headers::request_headers;
pub use host::EnvoyHost;
pub use stream::{apply_outcome, handle_request_headers, HostStream, StreamOps};

/// State shared by a worker's root context and its HTTP contexts (one VM = one thread).
#[derive(Default)]
pub struct Shared {
    pub host: EnvoyHost,
    pub worker: Option<Worker>,
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// The root context: configuration, timer, JWKS fetches, revocation polls, held requests.
pub struct TollgateRoot {
    context_id: u32,
    shared: SharedRef,
}

impl TollgateRoot {
    pub fn new(context_id: u32) -> Self {
        TollgateRoot {
            context_id,
            shared: Rc::new(RefCell::new(Shared::default())),
        }
    }

    /// Answer or resume held requests that can be decided now.
    fn resolve_waiters(&mut self) {
        let decided = {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            match s.worker.as_mut() {
                Some(w) => w.resolve_waiters(&s.host),
                None => Vec::new(),
            }
        };
        apply_decided(&self.shared, decided, self.context_id, 0);
    }

    fn start_fetches(&mut self) {
        let plans = {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            match s.worker.as_mut() {
                Some(w) => w.tick(&s.host),
                None => return,
            }
        };
        let mut decided = Vec::new();
        for p in plans {
            match dispatch_plan(&p) {
                Ok(token) => register_call(token, p.kind, 0),
                Err(e) => {
                    let mut guard = self.shared.borrow_mut();
                    let s = &mut *guard;
                    if let Some(w) = s.worker.as_mut() {
                        match p.kind {
                            FetchKind::Jwks { issuer } => w.on_fetch(&s.host, issuer, Err(e)),
                            FetchKind::Revocations => w.on_revocations(&s.host, Err(e)),
                            FetchKind::Introspection { .. } => {}
                            FetchKind::Lease { .. } => {
                                decided.extend(w.on_lease(&s.host, p.kind, Err(e)))
                            }
                        }
                    }
                }
            }
        }
        apply_decided(&self.shared, decided, self.context_id, 0);
    }

    /// `proxy_on_http_call_response` for a call the root dispatched.
    pub fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize) {
        on_call_answer(
            &self.shared,
            token_id,
            num_headers,
            body_size,
            self.context_id,
            0,
        );
        // A long-poll answer with revocations: the next long poll starts now.
        let follow_up = {
            let mut guard = self.shared.borrow_mut();
            guard
                .worker
                .as_mut()
                .is_some_and(|w| w.take_poll_follow_up())
        };
        if follow_up {
            self.start_fetches();
        }
    }

    /// `proxy_on_configure`: parse the plugin configuration, (re)build the worker.
    pub fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(Some(b)) if !b.is_empty() => b,
            _ => {
                abi::log(
                    LogLevel::Error,
                    "tollgate: no configuration given; the filter does not start",
                );
                return false;
            }
        };
        // `auth_server.client_secret_env` reads the VM's environment: Envoy hands
        // `vm_config.environment_variables` (WasmPlugin `vmConfig.env`) to WASI `environ_get`.
        match Config::from_json_with_env(&bytes, &|k| std::env::var(k).ok()) {
            Ok(cfg) => {
                let tick = cfg.tick_ms;
                let issuers = cfg.issuers.len();
                let features = format!(
                    "revocation {}, introspection {}, {} rate-limited rule(s)",
                    if cfg.revocation.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                    if cfg.introspection.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                    cfg.rules.iter().filter(|r| r.rate_limit.is_some()).count()
                );
                let features = match &cfg.auth_server {
                    None => features,
                    Some(a) if a.has_credentials() => {
                        format!("{features}, auth server calls with client credentials")
                    }
                    Some(_) => format!("{features}, auth server calls by mesh identity"),
                };
                let mut s = self.shared.borrow_mut();
                if s.host.metrics.is_empty() {
                    s.host.define_metrics();
                }
                let mut worker = Worker::new(cfg);
                worker.init_shared(&s.host);
                if let Some(old) = s.worker.take() {
                    // Requests held under the previous configuration are decided by the new one.
                    worker.waiters = old.waiters;
                    worker.intro_waiters = old.intro_waiters;
                    worker.lease_waiters = old.lease_waiters;
                    worker.id = old.id;
                }
                s.worker = Some(worker);
                drop(s);
                // tick_ms is within 10..=60000 (Config validates it).
                let _ = abi::set_tick_period_ms(u32::try_from(tick).unwrap_or(60_000));
                abi::log(
                    LogLevel::Info,
                    &format!("tollgate: configured with {issuers} issuer(s), {features}"),
                );
                true
            }
            Err(e) => {
                abi::log(
                    LogLevel::Error,
                    &format!("tollgate: configuration refused, the filter does not start: {e}"),
                );
                false
            }
        }
    }

    /// `proxy_on_tick`.
    pub fn on_tick(&mut self) {
        self.start_fetches();
        self.resolve_waiters();
    }

    /// A stream of this root (`proxy_on_context_create`).
    pub fn create_http_context(&self, context_id: u32) -> TollgateHttp {
        TollgateHttp {
            context_id,
            shared: Rc::clone(&self.shared),
            held: false,
        }
    }
}

/// One HTTP stream.
pub struct TollgateHttp {
    context_id: u32,
    shared: SharedRef,
    held: bool,
}

impl TollgateHttp {
    /// `proxy_on_http_call_response` for a call this stream dispatched (an introspection).
    pub fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize) {
        on_call_answer(
            &self.shared,
            token_id,
            num_headers,
            body_size,
            self.context_id,
            self.context_id,
        );
    }

    /// `proxy_on_request_headers`.
    pub fn on_http_request_headers(&mut self) -> Action {
        let headers = request_headers();
        let mut guard = self.shared.borrow_mut();
        let s = &mut *guard;
        let Some(worker) = s.worker.as_mut() else {
            // Not configured: fail closed.
            drop(guard);
            reply_not_configured();
            return Action::Pause;
        };
        // A property lookup costs about as much as the rest of a cache hit: only when a
        // rule's rate limit is keyed by the client address.
        let source = if worker.cfg.uses_peer_address() {
            abi::get_property(&["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut ops = HostStream {
            context_id: self.context_id,
        };
        let action =
            handle_request_headers(worker, &s.host, &mut ops, self.context_id, headers, source);
        if action == Action::Pause && worker.is_held(self.context_id) {
            self.held = true;
        }
        action
    }

    /// `proxy_on_response_headers`: the rate-limit headers of an allowed request.
    pub fn on_http_response_headers(&mut self) -> Action {
        let ctx = self.context_id;
        if let Some(headers) = DEFERRED.with(|d| d.borrow_mut().remove(&ctx)) {
            for (k, v) in headers {
                let _ = abi::add_header(MapType::HttpResponseHeaders, &k, &v);
            }
        }
        Action::Continue
    }

    /// `proxy_on_delete`: the stream is gone (answered, finished, or reset by the client);
    /// a request it held is forgotten, with the calls it dispatched (Envoy cancels them).
    pub fn on_delete(&mut self) {
        let ctx = self.context_id;
        DEFERRED.with(|d| d.borrow_mut().remove(&ctx));
        if self.held {
            forget_calls_of(ctx);
            if let Ok(mut guard) = self.shared.try_borrow_mut() {
                let s = &mut *guard;
                if let Some(w) = s.worker.as_mut() {
                    w.forget(&s.host, ctx);
                }
            }
        }
    }
}

/// Fail closed when a stream comes before any configuration was accepted.
pub(crate) fn reply_not_configured() {
    let _ = abi::send_local_response(
        503,
        &[("content-type", "application/json")],
        br#"{"error":"temporarily_unavailable"}"#,
    );
}
