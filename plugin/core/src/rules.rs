//! Route rules: first match wins, then the default rule.

use crate::config::{Config, PathMatch, Policy, Rule};

/// The request attributes rules look at.
#[derive(Debug, Clone, Default)]
pub struct RouteInfo<'a> {
    pub method: &'a str,
    /// `:path` as received (the query string is ignored for matching).
    pub path: &'a str,
    /// `:authority` / Host as received (the port is ignored for matching).
    pub authority: &'a str,
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
    } else {
        pattern == host
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

impl Rule {
    pub fn matches(&self, r: &RouteInfo<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == r.method) {
            return false;
        }
        if !self.hosts.is_empty() {
            let host = strip_port(r.authority).to_ascii_lowercase();
            if !self.hosts.iter().any(|p| host_matches(p, &host)) {
                return false;
            }
        }
        let path = r.path.split(['?', '#']).next().unwrap_or("");
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// The policy for a request and the name of the rule that gave it (`"default"`).
pub fn select<'c>(cfg: &'c Config, r: &RouteInfo<'_>) -> (&'c str, &'c Policy) {
    for rule in &cfg.rules {
        if rule.matches(r) {
            return (&rule.name, &rule.policy);
        }
    }
    ("default", &cfg.default_policy)
}

/// Index of the first matching rule (`None` = the default rule).
pub fn select_index(cfg: &Config, r: &RouteInfo<'_>) -> Option<usize> {
    cfg.rules.iter().position(|rule| rule.matches(r))
}

/// The policy of a rule index from [`select_index`].
pub fn policy(cfg: &Config, idx: Option<usize>) -> &Policy {
    idx.and_then(|i| cfg.rules.get(i))
        .map_or(&cfg.default_policy, |r| &r.policy)
}
