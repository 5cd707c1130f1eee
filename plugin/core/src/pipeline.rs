//! The request path: a fixed list of named stages, top to bottom.
//!
//! ```text
//! extract → authenticate → mtls → dpop → revoked → authorize → limit → identity
//! ```
//!
//! Each stage is one module with one entry function of the same shape, [`Stage`]: it reads
//! the request context ([`Ctx`]: the request, its route rule, what earlier stages found)
//! and the worker's shared state, and answers [`Step::Continue`] (next stage) or
//! [`Step::Break`] with the request's [`Outcome`]: a rejection (deny), or a wait for a
//! fetch (hold: JWKS, introspection, rate-limit lease; the glue holds the request and the
//! background side of [`crate::engine`] runs it through this list again when the answer is
//! in). A request that passes every stage is forwarded by `identity::forward`.
//!
//! The list is the body of [`Worker::on_request`]: plain calls, no boxing and no dynamic
//! dispatch on the per-request path. A new stage (e.g. DPoP or certificate binding,
//! issue 14) is a new module here with a `run` function and one line in that list; see
//! docs/architecture.md "Where to add a filter stage".
//!
//! An anonymous request (no token on a rule with `allow_anonymous`) passes the identity
//! stages untouched: `authenticate`, `revoked` and `authorize` act only on a token / a
//! verified identity; `limit` counts it (by client address or header, or in the one
//! bucket of the missing key).

use std::ops::ControlFlow;
use std::rc::Rc;

use crate::config::Config;
use crate::engine::{Outcome, Request, Worker};
use crate::host::Host;
use crate::identity::Identity;
use crate::rules::{self, RouteInfo};

pub(crate) mod authenticate;
pub(crate) mod authorize;
pub(crate) mod dpop;
pub(crate) mod extract;
pub(crate) mod identity;
pub(crate) mod limit;
pub(crate) mod mtls;
pub(crate) mod revoked;

#[cfg(test)]
pub(crate) mod test_support;

/// What a stage answers: `Continue(())` (on to the next stage) or `Break(outcome)` (the
/// request's outcome: a rejection, or one of the waits of [`Outcome`]).
pub type Step = ControlFlow<Outcome>;

/// The shape of every stage's entry function.
pub type Stage = fn(&mut Ctx<'_>, &mut Worker, &dyn Host) -> Step;

/// A verified token: its identity and the identity headers made from it once (shared by
/// the worker's local cache and the outcomes of the requests that carry the token).
#[derive(Debug)]
pub struct Verified {
    pub identity: Identity,
    pub headers: Rc<[(String, String)]>,
}

/// The request context the stages share: the request, its route rule, and what the
/// stages found so far. `Debug` never shows the token.
pub struct Ctx<'r> {
    pub req: &'r Request,
    /// Index of the first matching rule (`None`: the default rule).
    pub rule: Option<usize>,
    /// The token (`extract`); `None` for an anonymous request.
    pub token: Option<String>,
    /// The token came as `Authorization: DPoP <token>` (`extract`).
    pub dpop: bool,
    /// When the request was decided (Unix ms; `authenticate` reads the clock, 0 before).
    pub now_ms: u64,
    /// The verified identity (`authenticate`); `None` for an anonymous request.
    pub verified: Option<Rc<Verified>>,
    /// Response headers to add to the upstream's answer (`limit`: rate-limit headers).
    pub response_headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("rule", &self.rule)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("now_ms", &self.now_ms)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl<'r> Ctx<'r> {
    /// The context of a request: its route rule is selected first (every stage may read it).
    pub fn new(cfg: &Config, req: &'r Request) -> Ctx<'r> {
        let route = RouteInfo {
            method: &req.method,
            path: &req.path,
            authority: &req.authority,
        };
        Ctx {
            req,
            rule: rules::select_index(cfg, &route),
            token: None,
            dpop: false,
            now_ms: 0,
            verified: None,
            response_headers: Vec::new(),
        }
    }

    /// The verified identity, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.verified.as_deref().map(|v| &v.identity)
    }
}

impl Worker {
    /// Decide about a request: the stages, top to bottom, then forward with identity
    /// headers. Spoofed identity headers are the caller's to remove first (see
    /// [`crate::engine::headers_to_remove`]); the outcome never depends on them.
    pub fn on_request(&mut self, host: &dyn Host, req: &Request) -> Outcome {
        let mut cx = Ctx::new(&self.cfg, req);
        match self.stages(&mut cx, host) {
            ControlFlow::Continue(()) => identity::forward(&mut cx, self, host),
            ControlFlow::Break(outcome) => outcome,
        }
    }

    /// The list of stages ([`Stage`]): a new stage is one module and one line here.
    fn stages(&mut self, cx: &mut Ctx<'_>, host: &dyn Host) -> Step {
        extract::run(cx, self, host)?;
        authenticate::run(cx, self, host)?;
        mtls::run(cx, self, host)?;
        dpop::run(cx, self, host)?;
        revoked::run(cx, self, host)?;
        authorize::run(cx, self, host)?;
        limit::run(cx, self, host)?;
        Step::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    /// Every stage's `run` has the [`Stage`] shape (a new stage must too).
    #[test]
    fn every_stage_has_the_stage_shape() {
        let stages: [(&str, Stage); 7] = [
            ("extract", extract::run),
            ("authenticate", authenticate::run),
            ("mtls", mtls::run),
            ("dpop", dpop::run),
            ("revoked", revoked::run),
            ("authorize", authorize::run),
            ("limit", limit::run),
        ];
        // Run one allowed request through the list by hand: every stage continues.
        let (host, mut w) = worker(serde_json::json!({}));
        let req = request("/r", Some(&token(&[("scope", "read")])));
        let mut cx = Ctx::new(&w.cfg, &req);
        for (name, stage) in stages {
            assert_eq!(stage(&mut cx, &mut w, &host), Step::Continue(()), "{name}");
        }
        let Outcome::Allow { set, .. } = identity::forward(&mut cx, &w, &host) else {
            panic!("not allowed")
        };
        assert!(set
            .iter()
            .any(|(k, v)| k == "x-tollgate-sub" && v == "alice"));
    }

    /// The fixed per-request path of a cached token (issue 13: every hostcall crosses
    /// V8): one clock read and two counters, no shared-data access.
    #[test]
    fn a_cached_token_costs_one_clock_read_and_two_counters() {
        let (host, mut w) = worker(serde_json::json!({}));
        let req = request("/r", Some(&token(&[("scope", "read")])));
        assert!(matches!(w.on_request(&host, &req), Outcome::Allow { .. }));
        host.record.set(true);
        assert!(matches!(w.on_request(&host, &req), Outcome::Allow { .. }));
        assert_eq!(
            *host.calls.borrow(),
            [
                "now",
                "metric tollgate_cache_hit",
                "metric tollgate_allowed"
            ]
        );
    }

    #[test]
    fn the_context_never_shows_the_token() {
        let (_, w) = worker(serde_json::json!({}));
        let t = token(&[]);
        let req = request("/r", None);
        let mut cx = Ctx::new(&w.cfg, &req);
        cx.token = Some(t.clone());
        let shown = format!("{cx:?}");
        assert!(!shown.contains(&t[..20]), "{shown}");
    }

    #[test]
    fn the_route_rule_is_selected_before_any_stage() {
        let (_, w) = worker(serde_json::json!({"rules": [{"path_prefix": "/a"},
                                                          {"path_prefix": "/b"}]}));
        let req = request("/b/x", None);
        assert_eq!(Ctx::new(&w.cfg, &req).rule, Some(1));
        let req = request("/c", None);
        assert_eq!(Ctx::new(&w.cfg, &req).rule, None);
    }
}
