//! The resource cache of the edge services ([`ServiceCache`]).

use super::*;

pub(super) async fn cache_put(
    db: &RedisStore,
    service: &str,
    key: &str,
    value: &str,
    ttl: Option<u64>,
) -> StoreResult<()> {
    let k = k_cache(service, key);
    let value = value.to_string();
    db.idem(|mut c| {
        let (k, value) = (k.clone(), value.clone());
        async move {
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(&k).arg(&value);
            if let Some(t) = ttl {
                cmd.arg("EX").arg(t.max(1));
            }
            cmd.query_async::<()>(&mut c).await
        }
    })
    .await
}

pub(super) async fn cache_get(
    db: &RedisStore,
    service: &str,
    key: &str,
) -> StoreResult<Option<String>> {
    let k = k_cache(service, key);
    db.idem(|mut c| {
        let k = k.clone();
        async move { ::redis::cmd("GET").arg(&k).query_async(&mut c).await }
    })
    .await
}

pub(super) async fn cache_config(db: &RedisStore) -> StoreResult<CacheConfig> {
    let m: HashMap<String, String> = db
        .idem(|mut c| async move {
            ::redis::cmd("HGETALL")
                .arg(K_CACHE_CONFIG)
                .query_async(&mut c)
                .await
        })
        .await?;
    let d = CacheConfig::DEFAULT;
    Ok(CacheConfig {
        default_ttl: m
            .get("default_ttl")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.default_ttl),
        max_entries_per_service: m
            .get("max_entries_per_service")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.max_entries_per_service),
    })
}

pub(super) async fn set_cache_config(db: &RedisStore, cfg: &CacheConfig) -> StoreResult<()> {
    let cfg = cfg.clone();
    db.idem(|mut c| {
        let cfg = cfg.clone();
        async move {
            ::redis::cmd("HSET")
                .arg(K_CACHE_CONFIG)
                .arg("default_ttl")
                .arg(cfg.default_ttl)
                .arg("max_entries_per_service")
                .arg(cfg.max_entries_per_service)
                .query_async::<()>(&mut c)
                .await
        }
    })
    .await
}

pub(super) async fn cache_cleanup(db: &RedisStore, now: u64) -> StoreResult<CacheCleanupReport> {
    let started = std::time::Instant::now();
    let cfg = db.cache_config().await?;
    // Make sure the configuration is visible to operators with its defaults.
    db.set_cache_config(&cfg).await?;
    let keys = db.scan("cache:resource:*").await?;
    let cluster = db.cluster;
    let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in keys {
        let svc = k.split(':').nth(2).unwrap_or("").to_string();
        by_service.entry(svc).or_default().push(k);
    }
    let mut report = CacheCleanupReport::default();
    let mut stats: Vec<(String, String)> = Vec::new();
    for (svc, keys) in by_service {
        report.services += 1;
        let mut idle: Vec<(i64, String)> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let chunk: Vec<String> = chunk.to_vec();
            let mut b = Batch {
                // Under an LFU eviction policy OBJECT IDLETIME errors; treat such keys
                // as recently used rather than fail the pass.
                errors_as_values: true,
                ..Batch::default()
            };
            for k in &chunk {
                b.add(k, ::redis::cmd("TTL").arg(k).clone())
                    .add(k, ::redis::cmd("OBJECT").arg("IDLETIME").arg(k).clone());
            }
            let vals: Vec<(i64, Option<i64>)> = db
                .idem(|c| {
                    let (chunk, b) = (chunk.clone(), b.clone());
                    async move {
                        let raw: Vec<Value> = b.run(cluster, c).await?;
                        let mut out = Vec::with_capacity(chunk.len());
                        for pair in raw.chunks(2) {
                            let ttl = match pair.first() {
                                Some(Value::Int(t)) => *t,
                                _ => -2,
                            };
                            let idle = match pair.get(1) {
                                Some(Value::Int(i)) => Some(*i),
                                _ => None,
                            };
                            out.push((ttl, idle));
                        }
                        Ok(out)
                    }
                })
                .await?;
            let mut set_ttl = Batch::default();
            let mut n_set = 0;
            for (k, (ttl, id)) in chunk.iter().zip(vals) {
                if ttl == -2 {
                    continue; // gone meanwhile
                }
                if ttl == -1 {
                    set_ttl.add(
                        k,
                        ::redis::cmd("EXPIRE")
                            .arg(k)
                            .arg(cfg.default_ttl as i64)
                            .clone(),
                    );
                    n_set += 1;
                }
                idle.push((id.unwrap_or(0), k.clone()));
            }
            if n_set > 0 {
                db.idem(|c| {
                    let b = set_ttl.clone();
                    async move { b.run(cluster, c).await.map(|_| ()) }
                })
                .await?;
                report.ttl_set += n_set;
            }
        }
        let max = cfg.max_entries_per_service as usize;
        if idle.len() > max {
            // Most idle first.
            idle.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let excess = idle.len() - max;
            let victims: Vec<String> = idle.drain(..excess).map(|(_, k)| k).collect();
            for chunk in victims.chunks(500) {
                let mut b = Batch::default();
                for k in chunk {
                    b.add(k, ::redis::cmd("UNLINK").arg(k).clone());
                }
                db.idem(|c| {
                    let b = b.clone();
                    async move { b.run(cluster, c).await.map(|_| ()) }
                })
                .await?;
            }
            report.trimmed += excess as u64;
        }
        report.entries += idle.len() as u64;
        stats.push((format!("entries:{svc}"), idle.len().to_string()));
    }
    stats.push(("services".into(), report.services.to_string()));
    stats.push(("entries".into(), report.entries.to_string()));
    stats.push(("last_cleanup".into(), now.to_string()));
    stats.push(("last_trimmed".into(), report.trimmed.to_string()));
    stats.push(("last_ttl_set".into(), report.ttl_set.to_string()));
    let metrics: Vec<(String, String)> = vec![
        ("last_run".into(), now.to_string()),
        (
            "last_duration_ms".into(),
            started.elapsed().as_millis().to_string(),
        ),
        ("last_services".into(), report.services.to_string()),
        ("last_entries".into(), report.entries.to_string()),
        ("last_trimmed".into(), report.trimmed.to_string()),
        ("last_ttl_set".into(), report.ttl_set.to_string()),
    ];
    let (trimmed, ttl_set) = (report.trimmed, report.ttl_set);
    // The stats hash is replaced in one MULTI (on Cluster: one per key), so a reader
    // never sees it empty.
    let mut b = Batch::atomic();
    let hincr = |field: &str, by: u64| {
        ::redis::cmd("HINCRBY")
            .arg(K_CACHE_METRICS)
            .arg(field)
            .arg(by)
            .clone()
    };
    b.add(
        K_CACHE_STATS,
        ::redis::cmd("DEL").arg(K_CACHE_STATS).clone(),
    )
    .add(
        K_CACHE_STATS,
        ::redis::cmd("HSET").arg(K_CACHE_STATS).arg(&stats).clone(),
    )
    .add(
        K_CACHE_METRICS,
        ::redis::cmd("HSET")
            .arg(K_CACHE_METRICS)
            .arg(&metrics)
            .clone(),
    )
    .add(K_CACHE_METRICS, hincr("runs_total", 1))
    .add(K_CACHE_METRICS, hincr("trimmed_total", trimmed))
    .add(K_CACHE_METRICS, hincr("ttl_set_total", ttl_set));
    db.idem(|c| {
        let b = b.clone();
        async move { b.run(cluster, c).await.map(|_| ()) }
    })
    .await?;
    Ok(report)
}

pub(super) async fn cache_stats(db: &RedisStore) -> StoreResult<BTreeMap<String, String>> {
    db.idem(|mut c| async move {
        ::redis::cmd("HGETALL")
            .arg(K_CACHE_STATS)
            .query_async(&mut c)
            .await
    })
    .await
}
