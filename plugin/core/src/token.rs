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
    Token(String),
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
                    return Found::Unusable;
                }
                let v = v.trim();
                let t = match prefix {
                    None => v,
                    Some(p) => {
                        let p = p.trim_end();
                        if v.len() > p.len()
                            && v.is_char_boundary(p.len())
                            && v[..p.len()].eq_ignore_ascii_case(p)
                            && v.as_bytes()[p.len()] == b' '
                        {
                            v[p.len()..].trim_start()
                        } else {
                            return Found::Unusable;
                        }
                    }
                };
                if t.is_empty() || t.contains(' ') {
                    return Found::Unusable;
                }
                return Found::Token(t.to_string());
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
