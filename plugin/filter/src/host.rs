//! [`Host`] over proxy-wasm hostcalls: the clock, shared data, metrics, logs.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType, Status};
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

    fn peer_certificate_sha256(&self) -> Option<String> {
        // Bytes of the string attribute (docs: Envoy "Attributes", `connection.*`); absent
        // without a downstream client certificate.
        let v = hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"])
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
        let _ = hostcalls::log(l, msg);
    }
}
