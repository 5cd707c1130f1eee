//! Tollgate edge filter: the proxy-wasm glue around `tollgate-edge-core`.
//!
//! Every decision is taken by [`tollgate_edge_core::Worker`]; this crate only
//! - implements the core's [`Host`] trait with proxy-wasm hostcalls ([`EnvoyHost`]),
//! - parses the configuration in `on_configure` (refusing a bad one with a log line),
//! - runs the timer in the root context: JWKS fetches through `dispatch_http_call`,
//! - applies [`Outcome`]s to HTTP streams (remove spoofed headers, set identity headers,
//!   local replies, holding a request while no JWKS was ever loaded).
//!
//! Nothing here may panic: a panic aborts the Wasm VM and with it every request of the worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};
use tollgate_edge_core::engine::headers_to_remove;
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::{Config, Host, Level, Outcome, Request, SharedError, Worker};

/// Largest JWKS answer read (bytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;

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

/// The root context: configuration, timer, JWKS fetches, held requests.
pub struct TollgateRoot {
    context_id: u32,
    shared: SharedRef,
    /// dispatch_http_call token -> issuer index.
    pending: HashMap<u32, usize>,
}

impl TollgateRoot {
    pub fn new(context_id: u32) -> Self {
        TollgateRoot {
            context_id,
            shared: Rc::new(RefCell::new(Shared::default())),
            pending: HashMap::new(),
        }
    }

    /// Answer or resume requests that waited for a first JWKS.
    fn resolve_waiters(&mut self) {
        let decided = {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            match s.worker.as_mut() {
                Some(w) => w.resolve_waiters(&s.host),
                None => Vec::new(),
            }
        };
        if decided.is_empty() {
            return;
        }
        for (ctx, outcome) in decided {
            if hostcalls::set_effective_context(ctx).is_err() {
                continue; // the stream is gone
            }
            if let Outcome::Reject(r) = &outcome {
                let s = self.shared.borrow();
                Worker::count_rejection(&s.host, r);
            }
            apply_outcome(&mut HostStream, &outcome, true);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
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
        for p in plans {
            let headers = vec![
                (":method", "GET"),
                (":path", p.path.as_str()),
                (":authority", p.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "tollgate-filter"),
            ];
            match self.dispatch_http_call(
                &p.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(p.timeout_ms),
            ) {
                Ok(token) => {
                    self.pending.insert(token, p.issuer);
                }
                Err(status) => {
                    let mut guard = self.shared.borrow_mut();
                    let s = &mut *guard;
                    if let Some(w) = s.worker.as_mut() {
                        w.on_fetch(
                            &s.host,
                            p.issuer,
                            Err(format!(
                                "dispatch to cluster {} refused: {status:?}",
                                p.cluster
                            )),
                        );
                    }
                }
            }
        }
    }
}

/// What the glue does to an HTTP stream: behind a trait so that the glue's handling of
/// requests is tested natively with a recording double (see the tests below).
pub trait StreamOps {
    fn remove_request_header(&mut self, name: &str);
    fn set_request_header(&mut self, name: &str, value: &str);
    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]);
    fn resume_request(&mut self);
}

/// [`StreamOps`] on the current (effective) stream through proxy-wasm hostcalls.
pub struct HostStream;

impl StreamOps for HostStream {
    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
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
}

/// Apply an outcome to a stream. `resume` = the stream was paused (held for a JWKS).
pub fn apply_outcome(ops: &mut dyn StreamOps, outcome: &Outcome, resume: bool) {
    match outcome {
        Outcome::Allow { set, remove } => {
            for name in remove {
                ops.remove_request_header(name);
            }
            for (k, v) in set.iter() {
                ops.set_request_header(k, v);
            }
            if resume {
                ops.resume_request();
            }
        }
        Outcome::Reject(r) => ops.send_response(r.status, &r.headers, r.body.as_bytes()),
        Outcome::WaitForJwks { .. } => {}
    }
}

/// The request-headers step of a stream: remove spoofed identity headers, decide, apply.
/// Returns whether the stream continues now (`Action::Continue`) or is paused (answered
/// locally, or held until a first JWKS arrives).
pub fn handle_request_headers(
    worker: &mut Worker,
    host: &dyn Host,
    ops: &mut dyn StreamOps,
    context_id: u32,
    headers: Vec<(String, String)>,
) -> Action {
    for name in headers_to_remove(&worker.cfg, &headers) {
        ops.remove_request_header(&name);
    }
    let req = Request::from_headers(headers);
    let outcome = worker.on_request(host, &req);
    if let Outcome::WaitForJwks { issuer } = outcome {
        worker.hold(host, context_id, issuer, req);
        return Action::Pause;
    }
    apply_outcome(ops, &outcome, false);
    match outcome {
        Outcome::Allow { .. } => Action::Continue,
        _ => Action::Pause,
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
        let Some(issuer) = self.pending.remove(&token_id) else {
            return;
        };
        let result = if num_headers == 0 {
            Err("no answer (timeout or connection failure)".to_string())
        } else {
            let status = self
                .get_http_call_response_header(":status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            if body_size > MAX_JWKS_BYTES {
                Err(format!("JWKS answer too large ({body_size} bytes)"))
            } else {
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                Ok((status, body))
            }
        };
        {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            if let Some(w) = s.worker.as_mut() {
                w.on_fetch(&s.host, issuer, result);
            }
        }
        self.resolve_waiters();
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
        match Config::from_json(&bytes) {
            Ok(cfg) => {
                let tick = cfg.tick_ms;
                let issuers = cfg.issuers.len();
                let mut s = self.shared.borrow_mut();
                if s.host.metrics.is_empty() {
                    s.host.define_metrics();
                }
                let mut worker = Worker::new(cfg);
                if let Some(old) = s.worker.take() {
                    // Requests held under the previous configuration are decided by the new one.
                    worker.waiters = old.waiters;
                }
                s.worker = Some(worker);
                drop(s);
                self.set_tick_period(Duration::from_millis(tick));
                let _ = hostcalls::log(
                    LogLevel::Info,
                    &format!("tollgate: configured with {issuers} issuer(s)"),
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

/// One HTTP stream.
pub struct TollgateHttp {
    context_id: u32,
    shared: SharedRef,
    held: bool,
}

impl Context for TollgateHttp {}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        let mut guard = self.shared.borrow_mut();
        let s = &mut *guard;
        let Some(worker) = s.worker.as_mut() else {
            // Not configured: fail closed.
            drop(guard);
            self.send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"temporarily_unavailable"}"#),
            );
            return Action::Pause;
        };
        let action =
            handle_request_headers(worker, &s.host, &mut HostStream, self.context_id, headers);
        if action == Action::Pause && worker.is_held(self.context_id) {
            self.held = true;
        }
        action
    }

    fn on_log(&mut self) {
        if self.held {
            if let Ok(mut s) = self.shared.try_borrow_mut() {
                if let Some(w) = s.worker.as_mut() {
                    w.forget(self.context_id);
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

    #[test]
    fn allowed_request_continues_with_identity_headers() {
        let (host, mut w, sk) = setup(true);
        let mut rec = Recorder::default();
        let t = token(&sk, "read");
        let action = handle_request_headers(&mut w, &host, &mut rec, 1, headers("/r", Some(&t)));
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
        let action = handle_request_headers(&mut w, &host, &mut rec, 1, headers("/r", None));
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
        let action = handle_request_headers(&mut w, &host, &mut rec, 2, headers("/w", Some(&t)));
        assert_eq!(action, Action::Pause);
        assert!(rec.calls[1].starts_with("respond 403 "), "{:?}", rec.calls);
        assert!(rec.calls[1].contains("scope=\"write\""));
    }

    #[test]
    fn held_request_is_resumed_when_jwks_lands() {
        let (host, mut w, sk) = setup(false);
        let mut rec = Recorder::default();
        let t = token(&sk, "read");
        let action = handle_request_headers(&mut w, &host, &mut rec, 9, headers("/r", Some(&t)));
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
}
