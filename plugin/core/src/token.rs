//! Finding the token in a request: header (with prefix), cookie or query parameter.

use crate::config::{Config, TokenSource};

/// Read access to the request headers (lower-case names).
pub trait HeaderLookup {
    /// The first value of a header.
    fn header(&self, name: &str) -> Option<&str>;
    /// Every value of a header (cookies may come in several headers).
    fn all(&self, name: &str) -> Vec<&str>;
}

impl HeaderLookup for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No source carried a token.
    None,
    /// A source was present but its value is not a usable token (wrong scheme, empty).
    Unusable,
    /// The token header came more than once: a malformed request (RFC 6750 §3.1
    /// `invalid_request`, 400), not a bad token.
    Repeated,
    Token(String),
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1): the token must be DPoP-bound and come
    /// with a valid proof (stage `dpop`).
    DPoP(String),
}

/// Whether a header source is `Authorization` with the `Bearer` scheme: the one where the
/// `DPoP` scheme is accepted too.
fn bearer_authorization(name: &str, prefix: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") && prefix.trim_end().eq_ignore_ascii_case("bearer")
}

/// The credential after `scheme` and a space, if `v` starts so (scheme case-insensitive).
fn after_scheme<'v>(v: &'v str, scheme: &str) -> Option<&'v str> {
    let scheme = scheme.trim_end();
    (v.len() > scheme.len()
        && v.is_char_boundary(scheme.len())
        && v[..scheme.len()].eq_ignore_ascii_case(scheme)
        && v.as_bytes()[scheme.len()] == b' ')
        .then(|| v[scheme.len()..].trim_start())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// An HTTP `token` character (RFC 9110 §5.6.2), as in an auth scheme name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether one member of a comma-separated value is a credential: `<scheme> <something>`.
fn looks_like_credential(m: &str) -> bool {
    match m.split_once(' ') {
        Some((scheme, rest)) => {
            !scheme.is_empty() && scheme.bytes().all(is_tchar) && !rest.trim().is_empty()
        }
        None => false,
    }
}

/// Whether an `Authorization`-style value holds more than one credential: two field lines
/// that a proxy combined into one comma-separated value (RFC 9110 §5.3; Envoy does so for
/// `Authorization`), e.g. `Bearer a,Bearer b` or `Basic x, Bearer y`. A comma inside one
/// token (`Bearer a,b`) is not: that is a malformed token.
fn several_credentials(v: &str) -> bool {
    v.contains(',')
        && v.split(',')
            .filter(|m| looks_like_credential(m.trim()))
            .nth(1)
            .is_some()
}

/// Look for the token in the configured sources, in order.
pub fn extract(cfg: &Config, headers: &(impl HeaderLookup + ?Sized), path: &str) -> Found {
    for src in &cfg.token_sources {
        match src {
            TokenSource::Header { name, prefix } => {
                let Some(v) = headers.header(name) else {
                    continue;
                };
                // One credential only (RFC 6750 §2): a repeated header is refused rather than
                // letting the filter and the upstream read different values.
                if headers.all(name).len() > 1 {
                    return Found::Repeated;
                }
                let v = v.trim();
                if prefix.is_some() && several_credentials(v) {
                    return Found::Repeated;
                }
                let mut dpop = false;
                let t = match prefix {
                    None => v,
                    Some(p) => match after_scheme(v, p) {
                        Some(t) => t,
                        None if bearer_authorization(name, p) => match after_scheme(v, "DPoP") {
                            Some(t) => {
                                dpop = true;
                                t
                            }
                            None => return Found::Unusable,
                        },
                        None => return Found::Unusable,
                    },
                };
                if t.is_empty() || t.contains(' ') {
                    return Found::Unusable;
                }
                return if dpop {
                    Found::DPoP(t.to_string())
                } else {
                    Found::Token(t.to_string())
                };
            }
            TokenSource::Cookie { name } => {
                for line in headers.all("cookie") {
                    for pair in line.split(';') {
                        if let Some((k, v)) = pair.trim().split_once('=') {
                            if k == name {
                                let v = v.trim().trim_matches('"');
                                if v.is_empty() {
                                    return Found::Unusable;
                                }
                                return Found::Token(v.to_string());
                            }
                        }
                    }
                }
            }
            TokenSource::Query { name } => {
                let Some((_, q)) = path.split_once('?') else {
                    continue;
                };
                let q = q.split('#').next().unwrap_or("");
                for pair in q.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if percent_decode(k).as_deref() == Some(name.as_str()) {
                        return match percent_decode(v) {
                            Some(t) if !t.is_empty() && !t.contains(' ') => Found::Token(t),
                            _ => Found::Unusable,
                        };
                    }
                }
            }
        }
    }
    Found::None
}
