//! Stage `identity`, the end of the pipeline: a request that passed every stage is
//! forwarded with the verified identity's headers (made once per token by `authenticate`,
//! shared with the local cache), without `Authorization` when `strip_authorization` is set,
//! and with the rate-limit response headers of `limit`. Spoofed identity headers were
//! removed before the pipeline ran ([`crate::engine::headers_to_remove`]).

use std::rc::Rc;

use crate::config::Config;
use crate::engine::{Outcome, Worker};
use crate::host::Host;
use crate::metrics::Metric;

use super::Ctx;

/// The outcome of a request that passed every stage.
pub(crate) fn forward(cx: &mut Ctx<'_>, w: &Worker, host: &dyn Host) -> Outcome {
    let response_headers = std::mem::take(&mut cx.response_headers);
    let set = match &cx.verified {
        Some(v) => {
            host.metric(Metric::Allowed, 1);
            Rc::clone(&v.headers)
        }
        None => {
            host.metric(Metric::AllowedAnonymous, 1);
            Rc::from(Vec::new())
        }
    };
    Outcome::Allow {
        set,
        remove: removed(&w.cfg),
        response_headers,
    }
}

/// The request headers a forwarded request loses: `Authorization` with
/// `strip_authorization`.
pub(crate) fn removed(cfg: &Config) -> Vec<String> {
    if cfg.headers.strip_authorization {
        vec!["authorization".to_string()]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;
    use crate::pipeline::{authenticate, Step};
    use std::ops::ControlFlow;

    #[test]
    fn the_verified_identity_goes_out_in_headers() {
        let (host, mut w) = worker(json!({"headers": {"strip_authorization": true}}));
        let t = token(&[("scope", "read")]);
        let req = request("/r", Some(&t));
        let mut cx = Ctx::new(&w.cfg, &req);
        cx.token = Some(t.clone());
        let step: Step = authenticate::run(&mut cx, &mut w, &host);
        assert_eq!(step, ControlFlow::Continue(()));
        cx.response_headers = vec![("ratelimit".into(), "x".into())];
        let Outcome::Allow {
            set,
            remove,
            response_headers,
        } = forward(&mut cx, &w, &host)
        else {
            panic!("not allowed")
        };
        assert!(set
            .iter()
            .any(|(k, v)| k == "x-tollgate-sub" && v == "alice"));
        assert!(set
            .iter()
            .any(|(k, v)| k == "x-tollgate-scope" && v == "read"));
        assert_eq!(remove, vec!["authorization".to_string()]);
        assert_eq!(response_headers, vec![("ratelimit".into(), "x".into())]);
        assert_eq!(host.metric_value(Metric::Allowed), 1);
    }

    #[test]
    fn an_anonymous_request_goes_out_without_identity() {
        let (host, w) = worker(json!({}));
        let req = request("/r", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        let Outcome::Allow { set, remove, .. } = forward(&mut cx, &w, &host) else {
            panic!("not allowed")
        };
        assert!(set.is_empty());
        assert!(
            remove.is_empty(),
            "Authorization kept without strip_authorization"
        );
        assert_eq!(host.metric_value(Metric::AllowedAnonymous), 1);
        assert_eq!(host.metric_value(Metric::Allowed), 0);
    }
}
