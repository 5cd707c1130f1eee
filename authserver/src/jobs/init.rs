//! `authserver init --file seed.yaml`: seed clients and `auth_config` (the init Job runs it
//! on every deploy). Idempotent: running it twice leaves the same state.
//!
//! ```yaml
//! config:            # auth_config overrides (TTLs, limits)
//!   access_token_ttl: 600
//! cache_config:      # service cache (DB 1)
//!   default_ttl: 86400
//!   max_entries_per_service: 10000
//! clients:
//!   - client_id: gateway            # fixed id
//!     client_secret_env: GATEWAY_CLIENT_SECRET   # or client_secret_hash / client_secret
//!     scope: "tollgate:edge"
//!     grant_types: [client_credentials]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::clients;
use crate::crypto;
use crate::store::{now_secs, CacheConfig, ClientRecord, ServiceCache, Store};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read seed file: {0}")]
    Read(String),
    #[error("invalid seed file: {0}")]
    Parse(String),
    #[error("client {client_id}: {detail}")]
    Client { client_id: String, detail: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub cache_config: Option<CacheConfigSeed>,
    #[serde(default)]
    pub clients: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfigSeed {
    pub default_ttl: Option<u64>,
    pub max_entries_per_service: Option<u64>,
}

const CONFIG_KEYS: &[&str] = &[
    "auth_code_ttl",
    "access_token_ttl",
    "refresh_token_ttl",
    "session_ttl",
    "rate_limit_default",
    "rate_limit_per_client",
    "rate_limit_per_ip",
];

#[derive(Debug, Default, serde::Serialize)]
pub struct InitReport {
    pub clients_created: u64,
    pub clients_updated: u64,
    pub clients_unchanged: u64,
    pub config_keys: u64,
}

pub fn parse_seed(text: &str) -> Result<Seed, InitError> {
    serde_yaml::from_str(text).map_err(|e| InitError::Parse(e.to_string()))
}

pub async fn run(
    store: &dyn Store,
    cache: Option<&dyn ServiceCache>,
    pepper: &[u8],
    seed: &Seed,
) -> Result<InitReport, InitError> {
    let mut report = InitReport::default();
    let mut cfg = BTreeMap::new();
    for (k, v) in &seed.config {
        if !CONFIG_KEYS.contains(&k.as_str()) {
            return Err(InitError::Parse(format!(
                "unknown config key {k:?} (one of {CONFIG_KEYS:?})"
            )));
        }
        let n = v
            .as_u64()
            .ok_or_else(|| InitError::Parse(format!("config {k} must be a whole number")))?;
        cfg.insert(k.clone(), n.to_string());
    }
    report.config_keys = cfg.len() as u64;
    store.set_config(&cfg).await?;
    if let (Some(c), Some(cache)) = (&seed.cache_config, cache) {
        let d = CacheConfig::DEFAULT;
        cache
            .set_cache_config(&CacheConfig {
                default_ttl: c.default_ttl.unwrap_or(d.default_ttl),
                max_entries_per_service: c
                    .max_entries_per_service
                    .unwrap_or(d.max_entries_per_service),
            })
            .await?;
    }
    for raw in &seed.clients {
        let mut v: Value =
            serde_json::to_value(raw).map_err(|e| InitError::Parse(e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| InitError::Parse("each client must be a mapping".into()))?;
        let client_id = obj
            .remove("client_id")
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| InitError::Parse("every seeded client needs a client_id".into()))?;
        let err = |d: String| InitError::Client {
            client_id: client_id.clone(),
            detail: d,
        };
        let secret_hash = if let Some(h) = obj.remove("client_secret_hash") {
            Some(
                h.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err("client_secret_hash must be a string".into()))?,
            )
        } else if let Some(var) = obj.remove("client_secret_env") {
            let var = var
                .as_str()
                .ok_or_else(|| err("client_secret_env must be a string".into()))?;
            let s = std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?;
            Some(crypto::secret_hash(pepper, &s))
        } else if let Some(s) = obj.remove("client_secret") {
            let s = s
                .as_str()
                .ok_or_else(|| err("client_secret must be a string".into()))?;
            if s.len() < 32 {
                return Err(err("client_secret must have at least 32 characters".into()));
            }
            Some(crypto::secret_hash(pepper, s))
        } else {
            None
        };
        let md = clients::validate(v).map_err(|e| err(e.to_string()))?;
        if clients::uses_secret(&md.token_endpoint_auth_method) && secret_hash.is_none() {
            return Err(err("a confidential client needs client_secret_env, client_secret_hash or client_secret".into()));
        }
        let now = now_secs();
        match store.get_client(&client_id).await? {
            Some(existing) if existing.metadata == md && existing.secret_hash == secret_hash => {
                report.clients_unchanged += 1;
            }
            existing => {
                let created_at = existing.as_ref().map(|e| e.created_at).unwrap_or(now);
                let reg = existing.and_then(|e| e.registration_token_hash);
                if created_at == now {
                    report.clients_created += 1;
                } else {
                    report.clients_updated += 1;
                }
                store
                    .put_client(&ClientRecord {
                        client_id: client_id.clone(),
                        secret_hash,
                        registration_token_hash: reg,
                        metadata: md,
                        created_at,
                        updated_at: now,
                    })
                    .await?;
            }
        }
    }
    Ok(report)
}
