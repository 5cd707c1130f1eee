//! `X-Forwarded-Client-Cert` (XFCC), as Envoy writes it: a pure, strict parser.
//!
//! Grammar (Envoy's `http_conn_man/headers` documentation, `mutateXfccRequestHeader` in
//! `source/common/http/conn_manager_utility.cc`): the value is a `,`-separated list of
//! elements, one per proxy; an element is a `;`-separated list of `key=value` pairs; keys
//! (`By`, `Hash`, `Cert`, `Chain`, `Subject`, `URI`, `DNS`) are case-insensitive, values
//! case-sensitive; a value holding `,`, `;` or `=` is double-quoted, and a `"` inside a quoted
//! value is written `\"`. With `forward_client_cert_details: APPEND_FORWARD` (Istio's sidecar
//! inbound listener) the proxy appends the element of the connection it terminated LAST; every
//! element before it came from the client and proves nothing. Envoy removes the header when
//! the downstream connection is not mutual TLS (unless `ALWAYS_FORWARD_ONLY`).
//!
//! Anything that does not follow the grammar is an error: the caller refuses the request
//! rather than guessing which element is the proxy's.

use std::fmt;

/// Longest header value parsed (Envoy's own default header limit is 60 KiB).
pub const MAX_LEN: usize = 16 * 1024;

/// Why an XFCC value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XfccError {
    Empty,
    TooLong,
    /// An element without pairs (`a=b,,c=d`, a leading or trailing `,`).
    EmptyElement,
    /// A pair without `=` or with an empty key.
    BadPair,
    /// A key with characters other than ASCII letters, digits or `-`.
    BadKey,
    /// An unquoted value with `"`, `=` or a control character, or a quoted value not
    /// followed by `;`, `,` or the end.
    BadValue,
    /// A quoted value without its closing `"`.
    Unterminated,
}

impl fmt::Display for XfccError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XfccError::Empty => "empty X-Forwarded-Client-Cert",
            XfccError::TooLong => "X-Forwarded-Client-Cert too long",
            XfccError::EmptyElement => "empty X-Forwarded-Client-Cert element",
            XfccError::BadPair => "X-Forwarded-Client-Cert pair without key=value",
            XfccError::BadKey => "bad X-Forwarded-Client-Cert key",
            XfccError::BadValue => "bad X-Forwarded-Client-Cert value",
            XfccError::Unterminated => "unterminated quoted X-Forwarded-Client-Cert value",
        })
    }
}

impl std::error::Error for XfccError {}

/// One element: the pairs one proxy wrote, keys folded to lower case, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub pairs: Vec<(String, String)>,
}

impl Element {
    /// Every value of `key` (case-insensitive), in order: `URI` and `DNS` may repeat.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The `URI=` values: the peer certificate's URI SANs (its SPIFFE ID in a mesh).
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.values("uri")
    }

    /// The `Hash=` value: hex SHA-256 of the peer certificate (absent or repeated: `None`).
    pub fn hash(&self) -> Option<&str> {
        let mut it = self.values("hash");
        match (it.next(), it.next()) {
            (Some(h), None) => Some(h),
            _ => None,
        }
    }
}

/// Parse a whole XFCC value into its elements, first to last.
pub fn parse(value: &str) -> Result<Vec<Element>, XfccError> {
    if value.len() > MAX_LEN {
        return Err(XfccError::TooLong);
    }
    if value.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let b = value.as_bytes();
    let mut elements = Vec::new();
    let mut cur = Element::default();
    let mut i = 0;
    loop {
        // Optional whitespace before a pair (other proxies join elements with ", ").
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        // Key.
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' && b[i] != b',' {
            i += 1;
        }
        if i == ks {
            return Err(if i < b.len() && b[i] == b'=' {
                XfccError::BadPair
            } else {
                XfccError::EmptyElement
            });
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(XfccError::BadPair);
        }
        let key = &value[ks..i];
        if !key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            return Err(XfccError::BadKey);
        }
        i += 1; // '='
                // Value.
        let val = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = String::new();
            let mut seg = i;
            loop {
                if i >= b.len() {
                    return Err(XfccError::Unterminated);
                }
                match b[i] {
                    b'\\' if b.get(i + 1) == Some(&b'"') => {
                        v.push_str(&value[seg..i]);
                        v.push('"');
                        i += 2;
                        seg = i;
                    }
                    b'"' => {
                        v.push_str(&value[seg..i]);
                        i += 1;
                        break;
                    }
                    c if c.is_ascii_control() => return Err(XfccError::BadValue),
                    _ => i += 1,
                }
            }
            v
        } else {
            let vs = i;
            while i < b.len() && b[i] != b';' && b[i] != b',' {
                if b[i] == b'"' || b[i] == b'=' || b[i].is_ascii_control() {
                    return Err(XfccError::BadValue);
                }
                i += 1;
            }
            value[vs..i].trim_end_matches([' ', '\t']).to_owned()
        };
        cur.pairs.push((key.to_ascii_lowercase(), val));
        // Separator.
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            elements.push(cur);
            return Ok(elements);
        }
        match b[i] {
            b';' => {}
            b',' => elements.push(std::mem::take(&mut cur)),
            _ => return Err(XfccError::BadValue),
        }
        i += 1;
        if i >= b.len() {
            return Err(XfccError::EmptyElement);
        }
    }
}

/// The element the nearest proxy appended (the last one); see the module documentation for
/// when that element can be trusted.
pub fn last(value: &str) -> Result<Element, XfccError> {
    parse(value)?.pop().ok_or(XfccError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str =
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

    #[test]
    fn envoy_append_forward_element() {
        // What Envoy's sidecar inbound listener writes (By, Hash, Subject quoted, URI, DNS).
        let v = format!(
            "By=spiffe://cluster.local/ns/tollgate/sa/tollgate;Hash=0a1b2c;Subject=\"\";URI={GW};DNS=gw.example"
        );
        let e = parse(&v).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].uris().collect::<Vec<_>>(), vec![GW]);
        assert_eq!(e[0].hash(), Some("0a1b2c"));
        assert_eq!(e[0].values("subject").collect::<Vec<_>>(), vec![""]);
        assert_eq!(e[0].values("DNS").collect::<Vec<_>>(), vec!["gw.example"]);
    }

    #[test]
    fn the_last_element_is_the_nearest_proxys() {
        let v = format!("URI={GW};Hash=aa,By=spiffe://x;URI=spiffe://cluster.local/ns/a/sa/b");
        let e = last(&v).unwrap();
        assert_eq!(
            e.uris().collect::<Vec<_>>(),
            vec!["spiffe://cluster.local/ns/a/sa/b"]
        );
        // Whitespace around elements, as other proxies join them.
        let e = parse("Hash=aa , Hash=bb").unwrap();
        assert_eq!(e[1].hash(), Some("bb"));
    }

    #[test]
    fn quoted_values_hold_separators_and_escaped_quotes() {
        let e = parse(r#"Subject="CN=a,O=b;c";URI=spiffe://t/x,Subject="say \"hi\", ok";Hash=ff"#)
            .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].values("subject").next(), Some("CN=a,O=b;c"));
        assert_eq!(e[1].values("Subject").next(), Some(r#"say "hi", ok"#));
        assert_eq!(e[1].hash(), Some("ff"));
        // A backslash not before a quote is kept as written.
        let e = parse(r#"Subject="CN=a\,b""#).unwrap();
        assert_eq!(e[0].values("subject").next(), Some(r"CN=a\,b"));
    }

    #[test]
    fn keys_are_case_insensitive_and_repeat() {
        let e = last("uri=spiffe://a;URI=spiffe://b;Hash=1;hash=2").unwrap();
        assert_eq!(
            e.uris().collect::<Vec<_>>(),
            vec!["spiffe://a", "spiffe://b"]
        );
        assert_eq!(e.hash(), None, "two hashes: none is the certificate's");
    }

    #[test]
    fn malformed_values_are_errors() {
        for (v, want) in [
            ("", XfccError::Empty),
            ("   ", XfccError::Empty),
            (",URI=spiffe://a", XfccError::EmptyElement),
            ("URI=spiffe://a,", XfccError::EmptyElement),
            ("URI=spiffe://a,,URI=spiffe://b", XfccError::EmptyElement),
            ("URI=spiffe://a;", XfccError::EmptyElement),
            ("URI", XfccError::BadPair),
            ("URI=a;Hash", XfccError::BadPair),
            ("=x", XfccError::BadPair),
            ("U RI=x", XfccError::BadKey),
            ("URI=a=b", XfccError::BadValue),
            ("URI=a\"b", XfccError::BadValue),
            ("Subject=\"x\"y", XfccError::BadValue),
            ("Subject=\"x", XfccError::Unterminated),
            ("Subject=\"x\\\"", XfccError::Unterminated),
            ("URI=a\u{1}", XfccError::BadValue),
        ] {
            assert_eq!(parse(v), Err(want.clone()), "{v:?}");
        }
        assert_eq!(parse(&"a".repeat(MAX_LEN + 1)), Err(XfccError::TooLong));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // Every prefix of a tricky value, byte by byte (the parser indexes bytes; it must
        // only ever slice at ASCII boundaries).
        let v = "By=é;Subject=\"é\\\"x,;=\";URI=spiffe://ü,Hash=ab";
        for end in (0..=v.len()).filter(|&e| v.is_char_boundary(e)) {
            let _ = parse(&v[..end]);
        }
        assert!(parse(v).is_ok());
    }
}
