//! An in-memory [`Host`] with Envoy's shared-data semantics, for tests of the core and of
//! the glue. Not used by the filter at run time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::host::{Host, Level, SharedError};
use crate::metrics::Metric;

/// Test double of the proxy-wasm host.
#[derive(Debug, Default)]
pub struct MemoryHost {
    pub now_ms: Cell<u64>,
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    pub metrics: RefCell<HashMap<String, u64>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    /// What [`Host::peer_certificate_sha256`] answers (hex; `None`: no client certificate).
    pub peer_certificate: RefCell<Option<String>>,
    /// With `record` set, every call the core makes into the host, in order (`now`,
    /// `get <key>`, `set <key>`, `metric <name>`, `log`, `peer certificate`): what a
    /// request costs in hostcalls.
    pub record: Cell<bool>,
    pub calls: RefCell<Vec<String>>,
}

impl MemoryHost {
    pub fn new(now_ms: u64) -> MemoryHost {
        let h = MemoryHost::default();
        h.now_ms.set(now_ms);
        h.next_cas.set(1);
        h
    }
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }
    pub fn metric_value(&self, m: Metric) -> u64 {
        self.metrics.borrow().get(&m.name()).copied().unwrap_or(0)
    }
    fn note(&self, call: impl FnOnce() -> String) {
        if self.record.get() {
            self.calls.borrow_mut().push(call());
        }
    }
    pub fn shared_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.borrow().keys().cloned().collect();
        v.sort();
        v
    }
    pub fn shared_bytes(&self) -> usize {
        self.shared
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }
}

impl Host for MemoryHost {
    fn now_ms(&self) -> u64 {
        self.note(|| "now".into());
        self.now_ms.get()
    }
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.note(|| format!("get {key}"));
        match self.shared.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.note(|| format!("set {key}"));
        let mut m = self.shared.borrow_mut();
        if let (Some(c), Some((_, cur))) = (cas, m.get(key)) {
            if c != 0 && c != *cur {
                return Err(SharedError::CasMismatch);
            }
        }
        let c = self.next_cas.get().max(1);
        self.next_cas.set(c.wrapping_add(1));
        m.insert(key.to_string(), (value.to_vec(), c));
        Ok(())
    }
    fn metric(&self, m: Metric, delta: u64) {
        self.note(|| format!("metric {}", m.name()));
        *self.metrics.borrow_mut().entry(m.name()).or_insert(0) += delta;
    }
    fn log(&self, level: Level, msg: &str) {
        self.note(|| "log".into());
        self.logs.borrow_mut().push((level, msg.to_string()));
    }
    fn peer_certificate_sha256(&self) -> Option<String> {
        self.note(|| "peer certificate".into());
        self.peer_certificate.borrow().clone()
    }
}
