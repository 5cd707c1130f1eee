//! [`Host`] over proxy-wasm hostcalls (`abi.rs`): the clock, shared data, metrics, logs.

use std::collections::HashMap;

use crate::abi::{self, LogLevel};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::{Host, Level, SharedError};

/// [`Host`] over proxy-wasm hostcalls.
#[derive(Default)]
pub struct EnvoyHost {
    pub(crate) metrics: HashMap<Metric, u32>,
}

impl EnvoyHost {
    /// Define every counter of the filter (once per VM).
    pub fn define_metrics(&mut self) {
        for m in Metric::all() {
            if let Ok(id) = abi::define_counter(&m.name()) {
                self.metrics.insert(m, id);
            }
        }
    }
}

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        abi::now_nanos().map_or(0, |ns| ns / 1_000_000)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(abi::CAS_MISMATCH) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Failed),
        }
    }

    fn metric(&self, m: Metric, delta: u64) {
        if let Some(id) = self.metrics.get(&m) {
            let _ = abi::increment_metric(*id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn peer_certificate_sha256(&self) -> Option<String> {
        // Bytes of the string attribute (docs: Envoy "Attributes", `connection.*`); absent
        // without a downstream client certificate.
        let v = abi::get_property(&["connection", "sha256_peer_certificate_digest"])
            .ok()
            .flatten()?;
        String::from_utf8(v).ok().filter(|s| !s.is_empty())
    }

    fn log(&self, level: Level, msg: &str) {
        let l = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        abi::log(l, msg);
    }
}
