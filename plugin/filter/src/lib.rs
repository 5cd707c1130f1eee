//! Tollgate edge filter: the proxy-wasm glue around `tollgate-edge-core`.
//!
//! Every decision is taken by [`tollgate_edge_core::Worker`]; this crate only
//! - implements the core's [`Host`] trait with proxy-wasm hostcalls ([`EnvoyHost`]),
//! - parses the configuration in `on_configure` (refusing a bad one with a log line),
//! - runs the timer in the root context: JWKS fetches and revocation-feed polls through
//!   `dispatch_http_call`,
//! - applies [`Outcome`]s to HTTP streams (remove spoofed headers, set identity headers,
//!   rate-limit response headers, local replies, holding a request while no JWKS was ever
//!   loaded or while its opaque token is introspected — the call is dispatched from the
//!   stream, and its answer decides every request of the worker waiting for that token —
//!   or while a globally rate-limited key has no lease yet: the root tick asks for it).
//!
//! Nothing here may panic: a panic aborts the Wasm VM and with it every request of the worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};
use tollgate_edge_core::cache::TokenHash;
use tollgate_edge_core::engine::{headers_to_remove, FetchKind, SecretToken};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::{Config, FetchPlan, Host, Level, Outcome, Request, SharedError, Worker};

/// Largest JWKS answer read (bytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest revocation-feed page read (bytes): a resync lists every live revocation.
const MAX_FEED_BYTES: usize = 16 * 1024 * 1024;
/// Largest introspection answer read (bytes).
const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;
/// Largest rate-limit lease answer read (bytes).
const MAX_LEASE_BYTES: usize = 4 * 1024;

/// [`Host`] over proxy-wasm hostcalls.
#[derive(Default)]
pub struct EnvoyHost {
    metrics: HashMap<Metric, u32>,
}

impl EnvoyHost {
    /// Define every counter of the filter (once per VM).
    pub fn define_metrics(&mut self) {
        for m in Metric::all() {
            if let Ok(id) = hostcalls::define_metric(MetricType::Counter, &m.name()) {
                self.metrics.insert(m, id);
            }
        }
    }
}

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Failed),
        }
    }

    fn metric(&self, m: Metric, delta: u64) {
        if let Some(id) = self.metrics.get(&m) {
            let _ = hostcalls::increment_metric(*id, delta as i64);
        }
    }

    fn log(&self, level: Level, msg: &str) {
        let l = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(l, msg);
    }
}

/// State shared by a worker's root context and its HTTP contexts (one VM = one thread).
#[derive(Default)]
pub struct Shared {
    pub host: EnvoyHost,
    pub worker: Option<Worker>,
}

type SharedRef = Rc<RefCell<Shared>>;

thread_local! {
    /// dispatch_http_call token -> what the call is for, and the context that dispatched it
    /// (0: the root). One map for the root and the HTTP contexts: whichever context
    /// receives an answer hands it to the worker.
    static CALLS: RefCell<HashMap<u32, (FetchKind, u32)>> = RefCell::new(HashMap::new());
    /// Response headers to add to allowed streams (rate-limit headers), by context id.
    static DEFERRED: RefCell<HashMap<u32, Vec<(String, String)>>> = RefCell::new(HashMap::new());
}

fn register_call(token: u32, kind: FetchKind, dispatcher: u32) {
    CALLS.with(|c| c.borrow_mut().insert(token, (kind, dispatcher)));
}

/// A stream ended: Envoy cancels the calls it dispatched, forget them.
fn forget_calls_of(dispatcher: u32) {
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
    // The bytes variant: the SDK's string variant unwraps `String::from_utf8`.
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u16>().ok())
        .unwrap_or(0);
    if body_size > max {
        return Err(format!("answer too large ({body_size} bytes)"));
    }
    let body = hostcalls::get_buffer(
        proxy_wasm::types::BufferType::HttpCallResponseBody,
        0,
        body_size,
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    Ok((status, body))
}

/// Dispatch an introspection for stream `ctx` (the current stream in `ops`). When the call
/// cannot be dispatched, returns the stream's answer by `fail_mode` (for the caller to
/// apply: the stream is no longer held).
fn start_introspection(
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
fn apply_decided(shared: &SharedRef, decided: Vec<(u32, Outcome)>, home: u32, dispatcher: u32) {
    if decided.is_empty() {
        return;
    }
    for (ctx, outcome) in decided {
        if hostcalls::set_effective_context(ctx).is_err() {
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
    let _ = hostcalls::set_effective_context(home);
}

/// An HTTP call's answer, delivered to context `home` (root or stream).
fn on_call_answer(
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
}

/// `dispatch_http_call` for a plan (the answer goes to the context running now).
fn dispatch_plan(p: &FetchPlan) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", p.method),
        (":path", p.path.as_str()),
        (":authority", p.authority.as_str()),
        ("user-agent", "tollgate-filter"),
    ];
    headers.extend(p.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    hostcalls::dispatch_http_call(
        &p.cluster,
        headers,
        p.body.as_deref(),
        vec![],
        Duration::from_millis(p.timeout_ms),
    )
    .map_err(|status| format!("dispatch to cluster {} refused: {status:?}", p.cluster))
}

/// What the glue does to an HTTP stream: behind a trait so that the glue's handling of
/// requests is tested natively with a recording double (see the tests below).
pub trait StreamOps {
    fn remove_request_header(&mut self, name: &str);
    /// Set a header the stream does not carry (any client copy was removed first).
    fn set_request_header(&mut self, name: &str, value: &str);
    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]);
    fn resume_request(&mut self);
    /// Headers to add to the upstream's response when it comes (rate-limit headers).
    fn add_response_headers(&mut self, headers: &[(String, String)]);
    /// Start an HTTP call (an introspection); returns the call's token.
    fn dispatch(&mut self, plan: &FetchPlan) -> Result<u32, String>;
}

/// [`StreamOps`] on the current (effective) stream through proxy-wasm hostcalls.
pub struct HostStream {
    pub context_id: u32,
}

impl StreamOps for HostStream {
    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        // An add, cheaper than a replace: every header set here (identity and claim
        // headers) is in `headers.remove`, so any copy from the client is already gone.
        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
    }
    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = hostcalls::send_http_response(u32::from(status), h, Some(body));
    }
    fn resume_request(&mut self) {
        let _ = hostcalls::resume_http_request();
    }
    fn add_response_headers(&mut self, headers: &[(String, String)]) {
        let ctx = self.context_id;
        DEFERRED.with(|d| d.borrow_mut().insert(ctx, headers.to_vec()));
    }
    fn dispatch(&mut self, plan: &FetchPlan) -> Result<u32, String> {
        dispatch_plan(plan)
    }
}

/// Apply an outcome to a stream. `resume` = the stream was paused (held).
pub fn apply_outcome(ops: &mut dyn StreamOps, outcome: &Outcome, resume: bool) {
    match outcome {
        Outcome::Allow {
            set,
            remove,
            response_headers,
        } => {
            for name in remove {
                ops.remove_request_header(name);
            }
            for (k, v) in set.iter() {
                ops.set_request_header(k, v);
            }
            if !response_headers.is_empty() {
                ops.add_response_headers(response_headers);
            }
            if resume {
                ops.resume_request();
            }
        }
        Outcome::Reject(r) => ops.send_response(r.status, &r.headers, r.body.as_bytes()),
        Outcome::WaitForJwks { .. }
        | Outcome::Introspect { .. }
        | Outcome::WaitForIntrospection { .. }
        | Outcome::WaitForLease { .. } => {}
    }
}

/// The request-headers step of a stream: remove spoofed identity headers, decide, apply.
/// Returns whether the stream continues now (`Action::Continue`) or is paused (answered
/// locally, or held until a first JWKS / an introspection answer arrives). `source` is the
/// downstream address (`source.address`).
pub fn handle_request_headers(
    worker: &mut Worker,
    host: &dyn Host,
    ops: &mut dyn StreamOps,
    context_id: u32,
    headers: Vec<(String, String)>,
    source: String,
) -> Action {
    for name in headers_to_remove(&worker.cfg, &headers) {
        ops.remove_request_header(&name);
    }
    let mut req = Request::from_headers(headers);
    req.source = source;
    let outcome = worker.on_request(host, &req);
    match outcome {
        Outcome::WaitForJwks { issuer } => {
            worker.hold(host, context_id, issuer, req);
            Action::Pause
        }
        Outcome::WaitForIntrospection { hash } => {
            worker.hold_introspection(host, context_id, hash, req);
            Action::Pause
        }
        Outcome::WaitForLease { rule, hash } => {
            // The root tick asks for the lease; its answer (or timeout) resumes the stream.
            worker.hold_lease(host, context_id, rule, hash, req);
            Action::Pause
        }
        Outcome::Introspect { hash, token } => {
            worker.hold_introspection(host, context_id, hash, req);
            match start_introspection(worker, host, ops, context_id, context_id, hash, &token) {
                None => Action::Pause,
                Some(o) => {
                    apply_outcome(ops, &o, false);
                    match o {
                        Outcome::Allow { .. } => Action::Continue,
                        _ => Action::Pause,
                    }
                }
            }
        }
        Outcome::Allow { .. } => {
            apply_outcome(ops, &outcome, false);
            Action::Continue
        }
        Outcome::Reject(_) => {
            apply_outcome(ops, &outcome, false);
            Action::Pause
        }
    }
}

impl Context for TollgateRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        on_call_answer(
            &self.shared,
            token_id,
            num_headers,
            body_size,
            self.context_id,
            0,
        );
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            let _ = hostcalls::log(
                LogLevel::Error,
                "tollgate: no configuration given; the filter does not start",
            );
            return false;
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
                self.set_tick_period(Duration::from_millis(tick));
                let _ = hostcalls::log(
                    LogLevel::Info,
                    &format!("tollgate: configured with {issuers} issuer(s), {features}"),
                );
                true
            }
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("tollgate: configuration refused, the filter does not start: {e}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.start_fetches();
        self.resolve_waiters();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TollgateHttp {
            context_id,
            shared: Rc::clone(&self.shared),
            held: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

extern "C" {
    /// The proxy-wasm ABI call behind the SDK's header-map getters, which panic (and abort
    /// the VM) on a header that is not UTF-8; see [`request_headers`].
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Decode a serialized proxy-wasm header map (`u32` count, then a `u32` name length and a
/// `u32` value length per pair, then each name and value followed by a NUL byte). Never
/// panics: bytes that are not UTF-8 become U+FFFD (such a value never verifies as a token,
/// and identity headers are removed by name whatever their value), and a truncated map
/// yields the pairs read so far.
pub fn decode_header_map(bytes: &[u8]) -> Vec<(String, String)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let (Some(klen), Some(vlen)) = (u32_at(4 + n * 8), u32_at(8 + n * 8)) else {
            break;
        };
        let Some(kend) = p.checked_add(klen) else {
            break;
        };
        let Some(key) = bytes.get(p..kend) else {
            break;
        };
        let vstart = kend + 1;
        let Some(vend) = vstart.checked_add(vlen) else {
            break;
        };
        let Some(value) = bytes.get(vstart..vend) else {
            break;
        };
        out.push((text(key), text(value)));
        p = vend + 1;
    }
    out
}

/// The request headers of the current stream, without a way to panic (the SDK's
/// `get_http_request_headers` unwraps `String::from_utf8`: one request with a byte ≥ 0x80
/// in a header value would abort the VM and fail every later request of the worker).
fn request_headers() -> Vec<(String, String)> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host hands over a buffer of `size` bytes that it allocated with
    // the module's `proxy_on_memory_allocate` (the SDK's export, a `Vec<u8>` of capacity
    // `size` from the global allocator); it is taken over exactly as the SDK does.
    let bytes = unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => return Vec::new(),
        }
    };
    decode_header_map(&bytes)
}

/// One HTTP stream.
pub struct TollgateHttp {
    context_id: u32,
    shared: SharedRef,
    held: bool,
}

impl Context for TollgateHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        on_call_answer(
            &self.shared,
            token_id,
            num_headers,
            body_size,
            self.context_id,
            self.context_id,
        );
    }
}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = request_headers();
        let mut guard = self.shared.borrow_mut();
        let s = &mut *guard;
        let Some(worker) = s.worker.as_mut() else {
            // Not configured: fail closed.
            drop(guard);
            let _ = hostcalls::send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"temporarily_unavailable"}"#),
            );
            return Action::Pause;
        };
        // A property lookup costs about as much as the rest of a cache hit: only when a
        // rule's rate limit is keyed by the client address.
        let source = if worker.cfg.uses_peer_address() {
            hostcalls::get_property(vec!["source", "address"])
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ctx = self.context_id;
        if let Some(headers) = DEFERRED.with(|d| d.borrow_mut().remove(&ctx)) {
            for (k, v) in headers {
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, &k, &v);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
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

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(TollgateRoot::new(context_id))
    });
}}

#[cfg(test)]
mod tests {
    //! The glue's request handling over a recording [`StreamOps`] double and the core's
    //! in-memory host: which hostcalls a stream gets for each kind of outcome.

    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use serde_json::json;
    use tollgate_edge_core::testing::MemoryHost;

    #[derive(Debug, Default)]
    struct Recorder {
        calls: Vec<String>,
        refuse_calls: bool,
    }

    impl StreamOps for Recorder {
        fn remove_request_header(&mut self, name: &str) {
            self.calls.push(format!("remove {name}"));
        }
        fn set_request_header(&mut self, name: &str, value: &str) {
            self.calls.push(format!("set {name}={value}"));
        }
        fn send_response(&mut self, status: u16, headers: &[(String, String)], _body: &[u8]) {
            let www = headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map_or("", |(_, v)| v.as_str());
            self.calls.push(format!("respond {status} {www}"));
        }
        fn resume_request(&mut self) {
            self.calls.push("resume".into());
        }
        fn add_response_headers(&mut self, headers: &[(String, String)]) {
            for (k, v) in headers {
                self.calls.push(format!("later {k}={v}"));
            }
        }
        fn dispatch(&mut self, plan: &FetchPlan) -> Result<u32, String> {
            self.calls.push(format!(
                "dispatch {} {} {}",
                plan.method, plan.cluster, plan.path
            ));
            if self.refuse_calls {
                return Err("cluster unknown".into());
            }
            Ok(77)
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn setup(loaded: bool) -> (MemoryHost, Worker, p256::ecdsa::SigningKey) {
        let sk = p256::ecdsa::SigningKey::from_bytes((&[5u8; 32]).into()).unwrap();
        let p = sk.verifying_key().to_encoded_point(false);
        let cfg = Config::from_json(
            json!({"issuers": [{"issuer": "https://i", "audiences": ["a"],
                                "jwks": {"cluster": "auth"}}],
                   "rules": [{"path_prefix": "/w", "scopes": ["write"]}],
                   "headers": {"strip_authorization": true}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let host = MemoryHost::new(NOW * 1000);
        let mut w = Worker::new(cfg);
        if loaded {
            let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
                "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())}]});
            w.tick(&host);
            w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
        }
        (host, w, sk)
    }

    fn token(sk: &p256::ecdsa::SigningKey, scope: &str) -> String {
        let claims = json!({"iss": "https://i", "sub": "alice", "aud": "a", "exp": NOW + 60,
                            "scope": scope});
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","kid":"k"}"#),
            b64(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn headers(path: &str, token: Option<&str>) -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "h".to_string()),
            ("x-tollgate-sub".to_string(), "mallory".to_string()),
        ];
        if let Some(t) = token {
            h.push(("authorization".into(), format!("Bearer {t}")));
        }
        h
    }

    /// The wire format of `proxy_get_header_map_pairs`.
    fn serialize_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_maps_that_are_not_utf8_or_truncated_decode_without_panicking() {
        let bytes = serialize_map(&[
            (b":path", b"/x"),
            (b"authorization", b"Bearer \xff\xfe"),
            (b"x-\xc3", b"caf\xc3\xa9"),
            (b"empty", b""),
        ]);
        let m = decode_header_map(&bytes);
        assert_eq!(
            m,
            vec![
                (":path".to_string(), "/x".to_string()),
                (
                    "authorization".to_string(),
                    "Bearer \u{fffd}\u{fffd}".to_string()
                ),
                ("x-\u{fffd}".to_string(), "caf\u{e9}".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        // Every truncation, and lies about the sizes, give a prefix of the pairs.
        for cut in 0..bytes.len() {
            let m = decode_header_map(&bytes[..cut]);
            assert!(m.len() <= 4);
        }
        let mut lying = bytes.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header_map(&lying).is_empty());
        let mut huge_count = bytes;
        huge_count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header_map(&huge_count).is_empty());
        assert!(decode_header_map(&[]).is_empty());
    }

    #[test]
    fn allowed_request_continues_with_identity_headers() {
        let (host, mut w, sk) = setup(true);
        let mut rec = Recorder::default();
        let t = token(&sk, "read");
        let action = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            1,
            headers("/r", Some(&t)),
            String::new(),
        );
        assert_eq!(action, Action::Continue);
        assert_eq!(
            rec.calls,
            vec![
                "remove x-tollgate-sub",
                "remove authorization",
                "set x-tollgate-sub=alice",
                "set x-tollgate-scope=read",
                "set x-tollgate-iss=https://i",
            ]
        );
    }

    #[test]
    fn rejected_request_is_answered_and_paused() {
        let (host, mut w, sk) = setup(true);
        let mut rec = Recorder::default();
        let action = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            1,
            headers("/r", None),
            String::new(),
        );
        assert_eq!(action, Action::Pause);
        assert_eq!(
            rec.calls,
            vec![
                "remove x-tollgate-sub",
                "respond 401 Bearer realm=\"tollgate\""
            ]
        );
        let mut rec = Recorder::default();
        let t = token(&sk, "read");
        let action = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            2,
            headers("/w", Some(&t)),
            String::new(),
        );
        assert_eq!(action, Action::Pause);
        assert!(rec.calls[1].starts_with("respond 403 "), "{:?}", rec.calls);
        assert!(rec.calls[1].contains("scope=\"write\""));
    }

    #[test]
    fn held_request_is_resumed_when_jwks_lands() {
        let (host, mut w, sk) = setup(false);
        let mut rec = Recorder::default();
        let t = token(&sk, "read");
        let action = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            9,
            headers("/r", Some(&t)),
            String::new(),
        );
        assert_eq!(action, Action::Pause);
        assert_eq!(rec.calls, vec!["remove x-tollgate-sub"]);
        assert!(w.is_held(9));
        // The JWKS arrives; the root context resolves the held stream.
        let p = sk.verifying_key().to_encoded_point(false);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())}]});
        w.tick(&host);
        w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
        let decided = w.resolve_waiters(&host);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].0, 9);
        let mut rec = Recorder::default();
        apply_outcome(&mut rec, &decided[0].1, true);
        assert_eq!(rec.calls.last().map(String::as_str), Some("resume"));
        assert!(rec.calls.contains(&"set x-tollgate-sub=alice".to_string()));
        assert!(!w.is_held(9));
    }

    #[test]
    fn globally_limited_request_is_held_until_the_lease_answer() {
        let sk = p256::ecdsa::SigningKey::from_bytes((&[5u8; 32]).into()).unwrap();
        let p = sk.verifying_key().to_encoded_point(false);
        let cfg = Config::from_json(
            json!({"issuers": [{"issuer": "https://i", "audiences": ["a"],
                                "jwks": {"cluster": "auth"}}],
                   "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
                   "rules": [{"name": "g", "path_prefix": "/g",
                              "rate_limit": {"requests": 10, "period_s": 60, "key": "sub",
                                             "mode": "global"}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let host = MemoryHost::new(NOW * 1000);
        let mut w = Worker::new(cfg);
        w.init_shared(&host);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())}]});
        w.tick(&host);
        w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
        let t = token(&sk, "read");
        let mut rec = Recorder::default();
        let action = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            5,
            headers("/g", Some(&t)),
            String::new(),
        );
        assert_eq!(action, Action::Pause);
        assert_eq!(
            rec.calls,
            vec!["remove x-tollgate-sub"],
            "no reply, no call from the stream"
        );
        assert!(w.is_held(5));
        // The root tick asks; the answer resumes the stream with the rate-limit headers.
        let plan = w
            .tick(&host)
            .into_iter()
            .find(|p| matches!(p.kind, FetchKind::Lease { .. }))
            .unwrap();
        let body = br#"{"granted":1,"used":1,"limit":10,"reset_s":60,"reset_ms":60000}"#;
        let decided = w.on_lease(&host, plan.kind, Ok((200, body.to_vec())));
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].0, 5);
        let mut rec = Recorder::default();
        apply_outcome(&mut rec, &decided[0].1, true);
        assert_eq!(rec.calls.last().map(String::as_str), Some("resume"));
        assert!(
            rec.calls
                .contains(&"later ratelimit=\"g\";r=9;t=60".to_string()),
            "{:?}",
            rec.calls
        );
        assert!(!w.is_held(5));
    }

    fn opaque_setup() -> (MemoryHost, Worker) {
        let cfg = Config::from_json(
            json!({"issuers": [{"issuer": "https://i", "audiences": ["a"],
                                "jwks": {"cluster": "auth"}}],
                   "auth_server": {"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"},
                   "introspection": {"issuer": "https://i", "slots": 16},
                   "rules": [{"path_prefix": "/rl", "rate_limit": {"requests": 1, "period_s": 60,
                                                                   "key": "sub"}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let host = MemoryHost::new(NOW * 1000);
        let w = Worker::new(cfg);
        w.init_shared(&host);
        (host, w)
    }

    #[test]
    fn opaque_token_is_held_then_resumed_by_the_introspection_answer() {
        let (host, mut w) = opaque_setup();
        let mut rec = Recorder::default();
        let t = "tg_at_opaqueAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let a = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            3,
            headers("/rl", Some(t)),
            String::new(),
        );
        assert_eq!(a, Action::Pause);
        assert_eq!(
            rec.calls,
            vec![
                "remove x-tollgate-sub",
                "dispatch POST auth /oauth2/introspect"
            ]
        );
        // A second stream with the same token waits for the same call.
        let mut rec2 = Recorder::default();
        let a = handle_request_headers(
            &mut w,
            &host,
            &mut rec2,
            4,
            headers("/rl", Some(t)),
            String::new(),
        );
        assert_eq!(a, Action::Pause);
        assert_eq!(rec2.calls, vec!["remove x-tollgate-sub"]);
        assert!(w.is_held(3) && w.is_held(4));
        let hash = tollgate_edge_core::cache::hash_token(t);
        let body = json!({"active": true, "iss": "https://i", "sub": "bob", "aud": "a",
                          "exp": NOW + 60, "scope": "read"});
        let decided = w.on_introspection(&host, hash, Ok((200, body.to_string().into_bytes())));
        assert_eq!(decided.len(), 2);
        let mut rec = Recorder::default();
        apply_outcome(&mut rec, &decided[0].1, true);
        assert!(rec.calls.contains(&"set x-tollgate-sub=bob".to_string()));
        assert!(
            rec.calls
                .contains(&"later ratelimit-policy=\"rule-0\";q=1;w=60".to_string()),
            "{:?}",
            rec.calls
        );
        assert_eq!(rec.calls.last().map(String::as_str), Some("resume"));
        // The second one is over the limit of 1 for this sub.
        let Outcome::Reject(r) = &decided[1].1 else {
            panic!("{:?}", decided[1])
        };
        assert_eq!(r.status, 429);
        assert!(!w.is_held(3) && !w.is_held(4));
    }

    #[test]
    fn opaque_token_fails_closed_when_the_call_fails() {
        let (host, mut w) = opaque_setup();
        let mut rec = Recorder::default();
        let t = "tg_at_downAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            5,
            headers("/x", Some(t)),
            String::new(),
        );
        let hash = tollgate_edge_core::cache::hash_token(t);
        let decided = w.on_introspection(&host, hash, Err("no answer".into()));
        assert_eq!(decided.len(), 1);
        let mut rec = Recorder::default();
        apply_outcome(&mut rec, &decided[0].1, true);
        assert_eq!(rec.calls, vec!["respond 503 Bearer realm=\"tollgate\""]);
        // The claim is released: the next request asks again.
        let mut rec = Recorder::default();
        handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            6,
            headers("/x", Some(t)),
            String::new(),
        );
        assert!(
            rec.calls.iter().any(|c| c.starts_with("dispatch POST")),
            "{:?}",
            rec.calls
        );
    }

    #[test]
    fn refused_dispatch_answers_at_once_and_releases_the_claim() {
        let (host, mut w) = opaque_setup();
        let mut rec = Recorder {
            refuse_calls: true,
            ..Recorder::default()
        };
        let t = "tg_at_noclusterAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let a = handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            8,
            headers("/x", Some(t)),
            String::new(),
        );
        assert_eq!(a, Action::Pause);
        assert_eq!(
            rec.calls[1..],
            [
                "dispatch POST auth /oauth2/introspect",
                "respond 503 Bearer realm=\"tollgate\""
            ]
        );
        assert!(!w.is_held(8));
        let mut rec = Recorder::default();
        handle_request_headers(
            &mut w,
            &host,
            &mut rec,
            9,
            headers("/x", Some(t)),
            String::new(),
        );
        assert!(
            rec.calls.iter().any(|c| c.starts_with("dispatch POST")),
            "{:?}",
            rec.calls
        );
    }
}
