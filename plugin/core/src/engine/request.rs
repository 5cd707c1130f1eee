//! The parts of a request the filter reads, and the incoming headers it removes first.

use crate::config::Config;

/// The parts of a request the filter reads.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Every request header as received, lower-case names (pseudo-headers may be included).
    pub headers: Vec<(String, String)>,
    /// The downstream peer address (`source.address`, `ip:port`), empty when unknown.
    pub source: String,
    /// The downstream peer certificate's SHA-256 (hex), read from the host the first time a
    /// certificate-bound token needs it ([`Request::peer_certificate`]); a request held for
    /// a fetch reads it before it leaves its stream's context.
    pub peer_certificate: std::cell::OnceCell<Option<String>>,
}

impl Request {
    /// Build from a header list (as `get_http_request_headers` returns it).
    pub fn from_headers(headers: Vec<(String, String)>) -> Request {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Request {
            method: get(":method"),
            path: get(":path"),
            authority: get(":authority"),
            headers,
            source: String::new(),
            peer_certificate: std::cell::OnceCell::new(),
        }
    }

    /// The downstream peer certificate's SHA-256 (hex), `None` without one. Read from the
    /// host once, in the stream's context (where Envoy has the connection).
    pub fn peer_certificate(&self, host: &dyn crate::host::Host) -> Option<&str> {
        self.peer_certificate
            .get_or_init(|| host.peer_certificate_sha256())
            .as_deref()
    }

    /// The first value of a header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The client address: the configured trusted header, else the `xff_hops`-th address
    /// from the right of `X-Forwarded-For` (1 = the rightmost, added by the proxy in front),
    /// else the downstream peer address without its port.
    pub fn client_ip(&self, cfg: &crate::config::ClientIp) -> String {
        if let Some(v) = cfg.header.as_deref().and_then(|h| self.header(h)) {
            let v = v.trim();
            if !v.is_empty() {
                return v.to_string();
            }
        }
        if cfg.xff_hops > 0 {
            let all: Vec<&str> = self
                .headers
                .iter()
                .filter(|(k, _)| k == "x-forwarded-for")
                .flat_map(|(_, v)| v.split(','))
                .map(str::trim)
                .collect();
            let hops = cfg.xff_hops as usize;
            if all.len() >= hops {
                let ip = all[all.len() - hops];
                if !ip.is_empty() {
                    return ip.to_string();
                }
            }
        }
        strip_port(&self.source).to_string()
    }
}

fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // One colon: ip:port. More: a bare IPv6 address.
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}

/// Names of incoming headers that must go before anything else: the configured identity
/// and claim headers, `headers.remove`, and every header starting with `strip_prefix`, each
/// also in any spelling that folds to it (`_` for `-`, any case: see
/// [`crate::config::fold_header_name`]), as CGI/WSGI upstreams read `x_tollgate_sub` as
/// `HTTP_X_TOLLGATE_SUB`.
pub fn headers_to_remove(cfg: &Config, headers: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, _) in headers {
        if k.starts_with(':') {
            continue;
        }
        // Envoy hands header names over in lower case: no copy unless one is not.
        let lower: std::borrow::Cow<'_, str> = if k.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(k.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(k.as_str())
        };
        if is_identity_header(cfg, &lower) && !out.iter().any(|o| *o == *lower) {
            out.push(lower.into_owned());
        }
    }
    out
}

/// Whether an incoming header (lower-case name) is, or folds to, a header the filter owns.
fn is_identity_header(cfg: &Config, lower: &str) -> bool {
    let folded = crate::config::fold_header_name(lower);
    let h = &cfg.headers;
    h.remove_folded
        .binary_search_by(|r| r.as_str().cmp(&folded))
        .is_ok()
        || h.strip_prefix_folded
            .as_deref()
            .is_some_and(|p| folded.starts_with(p))
}
