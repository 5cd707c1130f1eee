//! What the glue does to an HTTP stream: remove spoofed identity headers, run the worker's
//! decision, and apply its [`Outcome`] (set headers and continue, answer locally, or hold
//! the stream and dispatch its introspection).

use crate::abi::{self, Action, MapType};
use tollgate_edge_core::engine::headers_to_remove;
use tollgate_edge_core::{FetchPlan, Host, Outcome, Request, Worker};

use crate::calls::{dispatch_plan, start_introspection, DEFERRED};

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
        let _ = abi::remove_header(MapType::HttpRequestHeaders, name);
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        // An add, cheaper than a replace: every header set here (identity and claim
        // headers) is in `headers.remove`, so any copy from the client is already gone.
        let _ = abi::add_header(MapType::HttpRequestHeaders, name, value);
    }
    fn send_response(&mut self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = abi::send_local_response(status, &h, body);
    }
    fn resume_request(&mut self) {
        let _ = abi::resume_request();
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

#[cfg(test)]
mod tests {
    //! The glue's request handling over a recording [`StreamOps`] double and the core's
    //! in-memory host: which hostcalls a stream gets for each kind of outcome.

    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use serde_json::json;
    use tollgate_edge_core::engine::FetchKind;
    use tollgate_edge_core::testing::MemoryHost;
    use tollgate_edge_core::Config;

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
