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
