//! Guards in front of opaque-token introspection: with introspection on, every new opaque
//! token costs one call to the auth server, so a client sending made-up strings could turn
//! each of its requests into a call (and, with `fail_mode: open`, cause the failures that
//! let requests through). Two checks come first, both without a call:
//!
//! - **Shape** ([`Shape`]): a string that cannot be an opaque token of the issuer (wrong
//!   prefix, length or characters) is refused at once with 401 `invalid_token`. The
//!   default is the Tollgate auth server's format: `tg_at_` and 43 base64url characters.
//! - **Miss limit**: new opaque tokens that would be introspected are counted per client
//!   address (a GCRA bucket in shared data, shared by every worker, see [`crate::ratelimit`]);
//!   over the limit the request gets 429 without a call.

use crate::host::{Host, Level};
use crate::metrics::Metric;
use crate::ratelimit::{self, Limit};
use crate::reject::{self, Rejection};

/// The characters an opaque token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Charset {
    /// `A-Z a-z 0-9 - _` (RFC 4648 §5, as the Tollgate auth server mints them).
    #[default]
    Base64url,
    /// RFC 6750 `b64token`: base64url plus `. ~ + /`, then `=` padding at the end.
    B64token,
}

impl Charset {
    fn allows(self, token: &str) -> bool {
        match self {
            Charset::Base64url => token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            Charset::B64token => {
                let body = token.trim_end_matches('=');
                !body.is_empty()
                    && body.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
                    })
            }
        }
    }
}

/// What an opaque token of the introspecting issuer looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Every opaque token starts with this (`""`: any).
    pub prefix: String,
    /// Length in bytes, prefix included.
    pub min_length: usize,
    pub max_length: usize,
    pub charset: Charset,
}

/// The Tollgate auth server's opaque access tokens: `tg_at_` + base64url of 32 random
/// bytes (43 characters).
pub const TOLLGATE_PREFIX: &str = "tg_at_";
pub const TOLLGATE_LENGTH: usize = 6 + 43;

impl Default for Shape {
    fn default() -> Self {
        Shape {
            prefix: TOLLGATE_PREFIX.into(),
            min_length: TOLLGATE_LENGTH,
            max_length: TOLLGATE_LENGTH,
            charset: Charset::Base64url,
        }
    }
}

impl Shape {
    /// Whether `token` can be an opaque token of this issuer.
    pub fn fits(&self, token: &str) -> bool {
        (self.min_length..=self.max_length).contains(&token.len())
            && token.starts_with(self.prefix.as_str())
            && self.charset.allows(token)
    }
}

/// The refusal of a token whose shape no opaque token of the issuer has (counted).
pub fn refuse_shape(host: &dyn Host, realm: &str) -> Rejection {
    host.metric(Metric::Denied("opaque_shape"), 1);
    reject::invalid_token(realm, "malformed token", "opaque_shape")
}

/// Count one introspection miss of `client_ip` against `limit`. `Some(429)` when over it
/// (counted in `tollgate_introspection_limited`); a shared-data failure lets the call
/// happen (counted as a rate-limit error, logged).
pub fn count_miss(host: &dyn Host, limit: &Limit, client_ip: &str) -> Option<Rejection> {
    match ratelimit::check(host, limit, client_ip) {
        Ok(d) if d.allowed => None,
        Ok(d) => {
            host.metric(Metric::IntrospectionLimited, 1);
            Some(reject::rate_limited(
                d.retry_after_s,
                &limit.policy_header(MISS_LIMIT_NAME),
                &d.header(MISS_LIMIT_NAME),
            ))
        }
        Err(e) => {
            host.metric(Metric::RateLimitError, 1);
            host.log(
                Level::Warn,
                &format!("tollgate: introspection miss limit not counted: {e}"),
            );
            None
        }
    }
}

/// The policy name in the `RateLimit` headers of a 429 over the miss limit.
pub const MISS_LIMIT_NAME: &str = "introspection";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_shape_is_the_tollgate_format() {
        let s = Shape::default();
        let good = format!("tg_at_{}", "aZ09-_".repeat(7) + "x");
        assert_eq!(good.len(), TOLLGATE_LENGTH);
        assert!(s.fits(&good));
        for bad in [
            "",
            "tg_at_",
            "garbage",
            &good[..good.len() - 1],
            &format!("{good}A"),
            &good.replacen("tg_at_", "tg_rt_", 1),
            &good.replacen('x', ".", 1),
            &format!("{}é", &good[..TOLLGATE_LENGTH - 2]),
        ] {
            assert!(!s.fits(bad), "{bad:?}");
        }
    }

    #[test]
    fn b64token_charset() {
        let s = Shape {
            prefix: String::new(),
            min_length: 4,
            max_length: 64,
            charset: Charset::B64token,
        };
        assert!(s.fits("ab.c~d+e/f=="));
        assert!(!s.fits("ab=c"));
        assert!(!s.fits("===="));
        assert!(!s.fits("ab c"));
        assert!(!s.fits("abc"));
    }
}
