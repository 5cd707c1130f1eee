//! Tollgate's OAuth 2.0 authorization server.
//!
//! Layout: `http/` (one module per endpoint family) and `grants/` (one handler per grant)
//! talk only to the [`store::Store`] trait; `store/` has the Redis and in-memory
//! implementations; `jobs/` holds the one-shot subcommands (cleanup, init, keys, status).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod clients;
pub mod config;
pub mod crypto;
pub mod dpop;
pub mod error;
pub mod feed_waiters;
pub mod form;
/// Property functions of the fuzz targets and the corpus regression test (`fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grants;
pub mod http;
pub mod jobs;
pub mod json;
pub mod key_rotation;
pub mod keys;
pub mod pki;
pub mod quota;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod users;
pub mod xfcc;

use std::sync::Arc;

use store::{
    memory::MemoryStore, redis::RedisOptions, redis::RedisStore, ServiceCache, Store, StoreResult,
    StoreUrl,
};

/// Open the auth data store (and the service cache on the same kind of backend).
pub async fn open_store(url: &StoreUrl, cfg: &config::Config) -> StoreResult<Arc<dyn Store>> {
    match url {
        StoreUrl::Memory => Ok(Arc::new(MemoryStore::new(cfg.revocation_feed_max))),
        other => Ok(Arc::new(
            RedisStore::connect(other, redis_options(cfg)).await?,
        )),
    }
}

pub async fn open_cache(
    url: &StoreUrl,
    cfg: &config::Config,
) -> StoreResult<Arc<dyn ServiceCache>> {
    match url {
        StoreUrl::Memory => Ok(Arc::new(MemoryStore::new(cfg.revocation_feed_max))),
        other => Ok(Arc::new(
            RedisStore::connect(other, redis_options(cfg)).await?,
        )),
    }
}

fn redis_options(cfg: &config::Config) -> RedisOptions {
    RedisOptions {
        response_timeout: std::time::Duration::from_millis(cfg.store_timeout_ms),
        connect_timeout: std::time::Duration::from_millis(cfg.store_timeout_ms),
        feed_max: cfg.revocation_feed_max,
        retry_budget: std::time::Duration::from_millis(cfg.store_retry_ms),
        wait_replicas: cfg.redis_wait_replicas,
        wait_timeout: std::time::Duration::from_millis(cfg.redis_wait_timeout_ms),
        client_cache_ttl: std::time::Duration::from_secs(cfg.client_cache_seconds as u64),
    }
}

#[cfg(test)]
pub mod testutil;
