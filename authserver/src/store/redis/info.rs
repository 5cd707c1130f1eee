//! Health and topology reports: `PING`, `INFO` / `ROLE` on one server, `CLUSTER INFO` /
//! `CLUSTER NODES` and each node's `INFO` on a Cluster.

use super::*;

/// The `INFO` fields `authserver status` shows (per node on a Cluster).
pub(super) const INFO_FIELDS: [&str; 11] = [
    "role",
    "connected_slaves",
    "master_host",
    "master_port",
    "master_link_status",
    "master_repl_offset",
    "redis_version",
    "redis_mode",
    "aof_enabled",
    "rdb_last_bgsave_status",
    "aof_last_write_status",
];

impl RedisStore {
    /// A Cluster's state (`CLUSTER INFO`), its nodes as `CLUSTER NODES` lists them (every
    /// node, replicas and failed nodes included) and, from each node that is not marked
    /// failed, its role, replication and persistence (`INFO`), as `node.<host:port>.<field>`.
    /// The role is `cluster`; `primaries` counts the primaries that serve slots, `replicas`
    /// the replicas not marked failed.
    pub(super) async fn cluster_backend_info(&self) -> StoreResult<BackendInfo> {
        let (cluster, topology, infos) = self
            .idem(|c| async move {
                let Conn::Cluster(mut cc) = c else {
                    return Err(RedisError::from((
                        ::redis::ErrorKind::InvalidClientConfig,
                        "not a cluster connection",
                    )));
                };
                let cluster: String = ::redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut cc)
                    .await?;
                let topology: String = ::redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut cc)
                    .await?;
                let mut infos: BTreeMap<String, Result<String, String>> = BTreeMap::new();
                for node in parse_cluster_nodes(&topology) {
                    if node.failed {
                        continue;
                    }
                    let Some((host, port)) = node
                        .addr
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    else {
                        continue;
                    };
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let info = cc
                        .route_command(::redis::cmd("INFO"), route)
                        .await
                        .and_then(|v| Ok(::redis::from_redis_value::<String>(v)?))
                        .map_err(|e| e.to_string());
                    infos.insert(node.addr, info);
                }
                Ok((cluster, topology, infos))
            })
            .await?;
        let mut details = BTreeMap::new();
        for line in cluster.lines() {
            if let Some((k, v)) = line.trim().split_once(':') {
                if matches!(
                    k,
                    "cluster_state" | "cluster_slots_ok" | "cluster_known_nodes" | "cluster_size"
                ) {
                    details.insert(k.to_string(), v.to_string());
                }
            }
        }
        let (mut primaries, mut replicas) = (0, 0);
        for node in parse_cluster_nodes(&topology) {
            let addr = &node.addr;
            details.insert(format!("node.{addr}.flags"), node.flags.clone());
            details.insert(format!("node.{addr}.link_state"), node.link_state.clone());
            if !node.slots.is_empty() {
                details.insert(format!("node.{addr}.slots"), node.slots.join(" "));
            }
            if !node.failed {
                if node.primary && !node.slots.is_empty() {
                    primaries += 1;
                } else if !node.primary {
                    replicas += 1;
                }
            }
        }
        for (addr, info) in infos {
            match info {
                Ok(text) => {
                    for line in text.lines() {
                        if let Some((k, v)) = line.trim().split_once(':') {
                            if INFO_FIELDS.contains(&k) || k.starts_with("slave") {
                                details.insert(format!("node.{addr}.{k}"), v.to_string());
                            }
                        }
                    }
                }
                Err(e) => {
                    details.insert(format!("node.{addr}.error"), e);
                }
            }
        }
        details.insert("primaries".into(), primaries.to_string());
        details.insert("replicas".into(), replicas.to_string());
        Ok(BackendInfo {
            kind: "redis+cluster".into(),
            role: "cluster".into(),
            details,
        })
    }
}

/// One line of `CLUSTER NODES`.
pub(super) struct ClusterNode {
    /// `host:port` (the bus port and hostname left out).
    pub(super) addr: String,
    pub(super) flags: String,
    pub(super) primary: bool,
    /// Marked failing (`fail`, `fail?`), or not usable yet (`handshake`, `noaddr`).
    pub(super) failed: bool,
    pub(super) link_state: String,
    pub(super) slots: Vec<String>,
}

pub(super) fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?.to_string();
            let flags: Vec<&str> = f[2].split(',').collect();
            Some(ClusterNode {
                addr,
                flags: f[2].to_string(),
                primary: flags.contains(&"master"),
                failed: flags
                    .iter()
                    .any(|x| matches!(*x, "fail" | "fail?" | "handshake" | "noaddr")),
                link_state: f[7].to_string(),
                slots: f[8..].iter().map(|s| s.to_string()).collect(),
            })
        })
        .collect()
}

pub(super) async fn ping(db: &RedisStore) -> StoreResult<()> {
    db.idem(|mut c| async move {
        let _: String = ::redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    })
    .await
}

pub(super) async fn backend_info(db: &RedisStore) -> StoreResult<BackendInfo> {
    if db.cluster {
        return db.cluster_backend_info().await;
    }
    let (repl, server, persistence): (String, String, String) = db
        .idem(|mut c| async move {
            let repl: String = ::redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await?;
            let server: String = ::redis::cmd("INFO")
                .arg("server")
                .query_async(&mut c)
                .await?;
            let pers: String = ::redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut c)
                .await?;
            Ok((repl, server, pers))
        })
        .await?;
    let mut details = BTreeMap::new();
    for line in repl
        .lines()
        .chain(server.lines())
        .chain(persistence.lines())
    {
        if let Some((k, v)) = line.trim().split_once(':') {
            if INFO_FIELDS.contains(&k) || k.starts_with("slave") {
                details.insert(k.to_string(), v.to_string());
            }
        }
    }
    let kind = match &db.backend {
        Backend::Single(_) => "redis",
        Backend::Sentinel(_) => "redis+sentinel",
        Backend::Cluster(_) => "redis+cluster",
    };
    Ok(BackendInfo {
        kind: kind.into(),
        role: details
            .get("role")
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        details,
    })
}
