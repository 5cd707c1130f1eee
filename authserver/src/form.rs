//! Strict parsing of `application/x-www-form-urlencoded` request bodies (RFC 6749 §3.1:
//! parameters sent without a value are treated as omitted, and a parameter must not appear
//! more than once).

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap};

use crate::error::OAuthError;

/// Parameters that RFC 8707 allows to repeat.
const REPEATABLE: &[&str] = &["resource", "audience"];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    single: BTreeMap<String, String>,
    multi: BTreeMap<String, Vec<String>>,
}

impl Params {
    /// Parse a form body. Rejects invalid UTF-8, duplicated parameters and bad encoding.
    pub fn parse(body: &[u8]) -> Result<Params, OAuthError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OAuthError::InvalidRequest("body is not valid UTF-8".into()))?;
        let mut p = Params::default();
        for pair in text.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k)?;
            let v = decode(v)?;
            if k.is_empty() {
                return Err(OAuthError::InvalidRequest("empty parameter name".into()));
            }
            if v.is_empty() {
                continue;
            }
            if REPEATABLE.contains(&k.as_str()) {
                p.multi.entry(k).or_default().push(v);
                continue;
            }
            if p.single.contains_key(&k) {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter {} is repeated",
                    sanitize(&k)
                )));
            }
            p.single.insert(k, v);
        }
        Ok(p)
    }

    /// Parse the body of a request after checking its content type.
    pub fn from_request(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        // RFC 6749 §5.2 (and RFC 7662, RFC 7009 after it): a request the endpoint cannot
        // read is `invalid_request`, 400, not 415.
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::InvalidRequest(
                "content type must be application/x-www-form-urlencoded".into(),
            ));
        }
        Self::parse(body)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.single.get(k).map(String::as_str)
    }

    pub fn require(&self, k: &str) -> Result<&str, OAuthError> {
        self.get(k)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter {k}")))
    }

    pub fn all(&self, k: &str) -> &[String] {
        self.multi.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn decode(s: &str) -> Result<String, OAuthError> {
    let plus = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&plus).collect();
    // A lone '%' or '%zz' is passed through by percent_decode; treat it as malformed.
    if has_bad_escape(s) {
        return Err(OAuthError::InvalidRequest(
            "malformed percent-encoding".into(),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| OAuthError::InvalidRequest("parameter is not valid UTF-8".into()))
}

fn has_bad_escape(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// A parameter name safe to echo in an error description.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect()
}

/// RFC 6749 §3.3 scope-token characters.
pub fn valid_scope_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
}

/// Split and validate a scope string.
pub fn parse_scope(s: &str) -> Result<Vec<&str>, OAuthError> {
    let tokens: Vec<&str> = s.split(' ').filter(|t| !t.is_empty()).collect();
    if let Some(bad) = tokens.iter().find(|t| !valid_scope_token(t)) {
        return Err(OAuthError::InvalidScope(format!(
            "malformed scope token '{}'",
            crate::error::description_text(&bad.chars().take(32).collect::<String>())
        )));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let p = Params::parse(b"grant_type=client_credentials&scope=a+b%20c&empty=").unwrap();
        assert_eq!(p.get("grant_type"), Some("client_credentials"));
        assert_eq!(p.get("scope"), Some("a b c"));
        assert_eq!(p.get("empty"), None);
    }

    #[test]
    fn rejects_duplicates_but_allows_resource() {
        assert!(Params::parse(b"scope=a&scope=b").is_err());
        let p = Params::parse(b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb").unwrap();
        assert_eq!(p.all("resource").len(), 2);
    }

    #[test]
    fn rejects_bad_encoding() {
        assert!(Params::parse(b"a=%").is_err());
        assert!(Params::parse(b"a=%4").is_err());
        assert!(Params::parse(b"a=%zz").is_err());
        assert!(Params::parse(b"a=%ff").is_err());
        assert!(Params::parse(&[b'a', b'=', 0xff]).is_err());
        assert!(Params::parse(b"=x").is_err());
    }

    #[test]
    fn scope_tokens() {
        assert!(parse_scope("api:read api:write").is_ok());
        assert!(parse_scope("a\"b").is_err());
        assert!(parse_scope("a\\b").is_err());
        assert_eq!(parse_scope("  a  b ").unwrap(), vec!["a", "b"]);
    }
}
