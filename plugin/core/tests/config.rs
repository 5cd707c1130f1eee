//! Configuration parsing and validation.

mod common;

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::*;
use serde_json::json;
use tollgate_edge_core::config::{PathMatch, ScopeMode, TokenSource};
use tollgate_edge_core::{Config, ConfigError};

fn err(v: serde_json::Value) -> String {
    match Config::from_json(v.to_string().as_bytes()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {v}"),
    }
}

fn minimal() -> serde_json::Value {
    json!({"issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": {"cluster": "auth"}}]})
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_json(minimal().to_string().as_bytes()).unwrap();
    assert_eq!(c.clock_skew_s, 30);
    assert_eq!(c.cache_slots, 8192);
    assert_eq!(c.cache_max_ttl_s, 300);
    assert_eq!(c.issuers[0].jwks.path, "/oauth2/jwks");
    assert_eq!(c.issuers[0].jwks.authority, "auth");
    assert_eq!(c.issuers[0].jwks.refresh_interval_ms, 300_000);
    assert_eq!(
        c.token_sources,
        vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into())
        }]
    );
    assert!(!c.default_policy.allow_anonymous);
    assert_eq!(c.headers.sub, "x-tollgate-sub");
    assert_eq!(c.headers.strip_prefix.as_deref(), Some("x-tollgate-"));
    assert!(c.headers.remove.contains(&"x-tollgate-iss".to_string()));
    assert_eq!(c.jwks_wait_status, 503);
}

#[test]
fn full_config_parses() {
    let c = config(json!({
        "token_sources": [{"header": {"name": "X-Token"}}, {"cookie": {"name": "at"}},
                          {"query": {"name": "access_token"}}],
        "default_rule": {"allow_anonymous": true},
    }));
    assert_eq!(c.token_sources.len(), 3);
    assert_eq!(
        c.token_sources[0],
        TokenSource::Header {
            name: "x-token".into(),
            prefix: None
        }
    );
    assert!(matches!(c.rules[0].path, PathMatch::Prefix(ref p) if p == "/public"));
    assert_eq!(c.rules[1].methods, vec!["POST".to_string()]);
    assert_eq!(c.rules[2].policy.scope_mode, ScopeMode::Any);
    assert!(c.default_policy.allow_anonymous);
    assert_eq!(
        c.headers.claims,
        vec![("jti".to_string(), "x-tollgate-jti".to_string())]
    );
}

#[test]
fn invalid_configs_are_explained() {
    assert!(err(json!({})).contains("issuers"));
    assert!(err(json!({"issuers": []})).contains("at least one issuer"));
    let mut v = minimal();
    v["surprise"] = json!(1);
    assert!(err(v).contains("unknown field `surprise`"));
    for alg in ["none", "HS256", "HS512", "es256"] {
        let mut v = minimal();
        v["issuers"][0]["algorithms"] = json!([alg]);
        let e = err(v);
        assert!(e.contains("issuers[0].algorithms"), "{e}");
    }
    let mut v = minimal();
    v["issuers"][0]["audiences"] = json!([]);
    assert!(err(v).contains("issuers[0].audiences"));
    let mut v = minimal();
    v["rules"] = json!([{"path_prefix": "/a", "path_exact": "/b"}]);
    assert!(err(v).contains("at most one of"));
    let mut v = minimal();
    v["rules"] = json!([{"path_regex": "(unclosed"}]);
    assert!(err(v).contains("rules[0].path_regex"));
    let mut v = minimal();
    v["rules"] = json!([{"allow_anonymous": true, "scopes": ["x"]}]);
    assert!(err(v).contains("anonymous"));
    let mut v = minimal();
    v["headers"] = json!({"sub": "bad header"});
    assert!(err(v).contains("headers.sub"));
    let mut v = minimal();
    v["headers"] = json!({"sub": "x-a", "iss": "x-a"});
    assert!(err(v).contains("two identity values"));
    let mut v = minimal();
    v["cache"] = json!({"slots": 0});
    assert!(err(v).contains("cache.slots"));
    let mut v = minimal();
    v["issuers"][0]["jwks"]["path"] = json!("oauth2/jwks");
    assert!(err(v).contains("jwks.path"));
    assert!(matches!(
        Config::from_json(b"{not json"),
        Err(ConfigError::Json(_))
    ));
}

#[test]
fn fingerprint_follows_the_text() {
    let a = Config::from_json(minimal().to_string().as_bytes()).unwrap();
    let mut v = minimal();
    v["clock_skew_s"] = json!(10);
    let b = Config::from_json(v.to_string().as_bytes()).unwrap();
    assert_ne!(a.fingerprint, b.fingerprint);
}

/// The examples in docs/filter.md are valid configurations.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn documented_examples_parse() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/filter.md"))
        .unwrap();
    let blocks: Vec<&str> = doc
        .split("```json")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 2, "docs/filter.md lost its examples");
    for b in &blocks {
        Config::from_json(b.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
    let full = Config::from_json(blocks[0].as_bytes()).unwrap();
    assert_eq!(full.rules.len(), 3);
    assert_eq!(full.token_sources.len(), 3);
}

#[test]
fn peer_address_is_needed_only_for_client_ip_limits() {
    let with_rules = |rules: serde_json::Value| {
        let mut v = minimal();
        v["rules"] = rules;
        Config::from_json(v.to_string().as_bytes()).unwrap()
    };
    assert!(!with_rules(json!([])).uses_peer_address());
    assert!(!with_rules(json!([
        {"path_prefix": "/a", "rate_limit": {"requests": 5, "period_s": 60, "key": "client_id"}},
        {"path_prefix": "/b", "rate_limit": {"requests": 5, "period_s": 60,
                                             "key": {"header": "x-user"}}},
        {"path_prefix": "/c", "scopes": ["read"]}
    ]))
    .uses_peer_address());
    assert!(with_rules(json!([
        {"path_prefix": "/a", "rate_limit": {"requests": 5, "period_s": 60, "key": "client_id"}},
        {"path_prefix": "/b", "rate_limit": {"requests": 5, "period_s": 60, "key": "client_ip"}}
    ]))
    .uses_peer_address());
}
