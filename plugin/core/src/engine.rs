//! The filter's state and its background side, independent of proxy-wasm.
//!
//! A [`Worker`] is the state of one Wasm VM (one Envoy worker thread): the configuration,
//! parsed key sets, the local verified-token cache, held requests, and what the timer keeps.
//! Its request side is the stage pipeline of [`crate::pipeline`] ([`Worker::on_request`]);
//! its background side is here: the timer and the answers of the calls it starts
//! ([`fetch`]: JWKS, revocation feed, introspection, rate-limit leases) and the requests
//! that wait for them ([`held`]). The glue turns [`Outcome`]s and [`FetchPlan`]s into
//! hostcalls. Module map: docs/architecture.md "Filter module map".

use std::cell::RefCell;

use crate::cache::TokenHash;
use crate::config::Config;
use crate::host::{Host, Level};
use crate::introspection;
use crate::jwks::WorkerKeys;
use crate::lease::{self, KeyHash};
use crate::pipeline::authenticate::LocalCache;
use crate::ratelimit;

pub mod fetch;
pub mod held;
mod outcome;
mod request;

pub use fetch::request_refresh;
pub use held::{IntroWaiter, LeaseWaiter, Waiter};
pub use outcome::{FetchKind, FetchPlan, Outcome, SecretToken};
pub use request::{headers_to_remove, Request};

/// Most keys a worker remembers to ask a lease for at its next tick.
pub(crate) const MAX_WANTED: usize = 4096;

/// A worker writes at most one warning per this interval about one failing dependency
/// (introspection, rate-limit leases), whose failures can come with every request.
pub const WARN_EVERY_MS: u64 = 10_000;

/// Rate limit of one kind of warning: during an outage of the auth server every request
/// with a new opaque token (or every lease call) fails, and a warning each would flood the
/// log of a busy gateway (and let anyone sending made-up tokens write it). The metrics still
/// count every failure; a warning says how many were not logged since the previous one.
#[derive(Debug, Default)]
pub(crate) struct WarnThrottle {
    /// When the last warning was written (Unix ms); `None`: never.
    last_ms: std::cell::Cell<Option<u64>>,
    /// Warnings left out since then.
    suppressed: std::cell::Cell<u64>,
}

impl WarnThrottle {
    /// Write `msg` at warning level unless a warning of this kind was written in the last
    /// [`WARN_EVERY_MS`]; then it is only counted.
    pub(crate) fn warn(&self, host: &dyn Host, msg: &str) {
        let now = host.now_ms();
        if matches!(self.last_ms.get(), Some(t) if now.saturating_sub(t) < WARN_EVERY_MS) {
            self.suppressed.set(self.suppressed.get().saturating_add(1));
            return;
        }
        self.last_ms.set(Some(now));
        match self.suppressed.replace(0) {
            0 => host.log(Level::Warn, msg),
            n => host.log(
                Level::Warn,
                &format!(
                    "{msg} ({n} more like it in the last {} s)",
                    WARN_EVERY_MS / 1000
                ),
            ),
        }
    }
}

/// Per-worker state: the configuration, parsed key sets, held requests, and a small local
/// copy of recently used verified tokens (`cache.local_entries`, in front of the shared
/// cache: a hit there costs no hostcall). Local entries expire with their shared entry; when
/// full, expired entries are dropped, and if none was expired the local cache is cleared.
#[derive(Debug)]
pub struct Worker {
    pub cfg: Config,
    pub keys: WorkerKeys,
    pub waiters: Vec<Waiter>,
    /// Requests waiting for an introspection answer.
    pub intro_waiters: Vec<IntroWaiter>,
    /// Requests waiting for a rate-limit lease.
    pub lease_waiters: Vec<LeaseWaiter>,
    /// Keys (rule, hash) whose lease runs low or is missing: the next tick asks for one.
    pub(crate) wanted: RefCell<Vec<(usize, KeyHash)>>,
    /// This worker's id in shared-data leases and claims (random per VM).
    pub id: u32,
    /// Recently verified tokens, keyed by the whole token (see [`LocalCache`]).
    pub(crate) local: LocalCache,
    /// Introspection calls this worker has in flight: token hash, dispatching context.
    pub(crate) inflight: Vec<(TokenHash, u32)>,
    /// The revocation feed is stale beyond `stale_after_s` (computed on every tick).
    pub(crate) stale: bool,
    pub(crate) started_ms: u64,
    pub(crate) last_prune_ms: u64,
    pub(crate) poll_failing: bool,
    /// A long-poll answer carried revocations: the next poll starts now, not at the next
    /// tick ([`Worker::take_poll_follow_up`]).
    pub(crate) poll_follow_up: bool,
    /// Warnings about failed introspections / lease calls (see [`WarnThrottle`]).
    pub(crate) introspection_warn: WarnThrottle,
    pub(crate) lease_warn: WarnThrottle,
}

/// A random non-zero u32 (std's `RandomState` is seeded from the OS / WASI `random_get`),
/// mixed with a per-process counter so that workers made in one process (tests) differ even
/// where the platform has no randomness.
fn random_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x746f_6c6c_6761_7465);
    let r = (h.finish() as u32) ^ n.wrapping_mul(0x9E37_79B9);
    r.max(1)
}

/// Lower-case hex of a token hash (the `jti` the auth server publishes for opaque tokens).
pub fn hex(h: &TokenHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl Worker {
    pub fn new(cfg: Config) -> Worker {
        Worker {
            keys: WorkerKeys::new(&cfg),
            cfg,
            waiters: Vec::new(),
            intro_waiters: Vec::new(),
            lease_waiters: Vec::new(),
            wanted: RefCell::new(Vec::new()),
            id: random_id(),
            local: LocalCache::default(),
            inflight: Vec::new(),
            stale: false,
            started_ms: 0,
            last_prune_ms: 0,
            poll_failing: false,
            poll_follow_up: false,
            introspection_warn: WarnThrottle::default(),
            lease_warn: WarnThrottle::default(),
        }
    }

    /// Create the shared-data slot tables (rate limits, introspection cache) so that every
    /// later write is a true compare-and-swap. The glue runs it once in `on_configure`.
    pub fn init_shared(&self, host: &dyn Host) {
        for r in &self.cfg.rules {
            if let Some(l) = &r.rate_limit {
                ratelimit::init_slots(host, &l.limit);
                if let Some(g) = &l.global {
                    lease::init_slots(host, g);
                }
            }
        }
        crate::pipeline::dpop::init_slots(host, &self.cfg.dpop);
        if let Some(x) = &self.cfg.introspection {
            introspection::init_slots(host, &x.settings);
            if let Some(l) = &x.miss_limit {
                ratelimit::init_slots(host, l);
            }
        }
    }

    /// Whether the revocation feed is stale beyond `stale_after_s` (as of the last tick).
    pub fn revocations_stale(&self) -> bool {
        self.stale
    }

    /// Remember to ask for a lease of `rule`'s key `hash` at the next tick.
    pub(crate) fn want_lease(&self, rule: usize, hash: KeyHash) {
        let mut w = self.wanted.borrow_mut();
        if w.len() < MAX_WANTED && !w.iter().any(|(r, h)| *r == rule && *h == hash) {
            w.push((rule, hash));
        }
    }

    /// The global (lease) policy of `rule`'s rate limit.
    pub(crate) fn global_policy(&self, rule: usize) -> Option<&lease::Policy> {
        self.cfg
            .rules
            .get(rule)
            .and_then(|r| r.rate_limit.as_ref())
            .and_then(|l| l.global.as_ref())
    }
}
