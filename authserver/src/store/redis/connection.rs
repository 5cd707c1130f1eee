//! Connection and topology: standalone, Sentinel (with the master-role check) and Cluster
//! (following `MOVED` inside pipelines, routing to every node).

use super::*;

/// A connection of any kind, cheap to clone (all are multiplexed).
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                let r = c.req_packed_commands(pipeline, offset, count).await;
                let Some((host, port)) = moved_to(&r) else {
                    return r;
                };
                // The slot moved (a failover, a resharding). The client library follows
                // MOVED for single commands, not inside a pipeline or MULTI, where the node
                // refused every command (they all name the slot): nothing ran. A plain
                // command on the slot makes the library learn the new owner for later
                // calls; this pipeline goes straight there.
                if let Some(key) = first_key(pipeline) {
                    let _ = ::redis::cmd("EXISTS")
                        .arg(key)
                        .query_async::<Value>(&mut *c)
                        .await;
                }
                tracing::debug!(%host, port, "a Cluster slot moved: the pipeline follows it");
                let to = SingleNodeRoutingInfo::ByAddress { host, port };
                c.route_pipeline(pipeline.clone(), offset, count, to).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The master connection of a Sentinel deployment: a generation number (so that a check
/// clears only the connection it checked), the master's address, the connection.
pub(super) type MasterSlot = Arc<RwLock<Option<(u64, String, MultiplexedConnection)>>>;

pub(super) struct SentinelBackend {
    pub(super) client: Arc<Mutex<SentinelClient>>,
    pub(super) conn: MasterSlot,
    pub(super) config: AsyncConnectionConfig,
    pub(super) generation: std::sync::atomic::AtomicU64,
    /// When the cached connection was last checked against the Sentinels.
    pub(super) role_checked: std::sync::Mutex<Instant>,
    /// The address of the master the data connection last reached: the revocation
    /// signal's subscription follows it (see `signal`).
    pub(super) master: tokio::sync::watch::Sender<String>,
}

/// How often a Sentinel connection in use checks that its server is still the master the
/// Sentinels name. A demoted master keeps answering reads (writes get `READONLY` and
/// reconnect at once); after a switchover the old master stays master until the Sentinels
/// reconfigure it, which can take their 10 s `INFO` period, and writes there would be lost.
pub(super) const ROLE_CHECK_EVERY: Duration = Duration::from_secs(1);

impl SentinelBackend {
    /// True at most once per [`ROLE_CHECK_EVERY`].
    pub(super) fn role_check_due(&self) -> bool {
        let mut last = self.role_checked.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= ROLE_CHECK_EVERY {
            *last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// In the background: forget the master connection `gen` (to `addr`) unless its server
/// still says it is the master and the Sentinels still name it. A failed lookup changes
/// nothing (the Sentinels may be mid-failover); only a successful answer naming another
/// master does.
pub(super) fn spawn_role_check(
    slot: MasterSlot,
    client: Arc<Mutex<SentinelClient>>,
    gen: u64,
    addr: String,
    mut conn: MultiplexedConnection,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let role: Result<Value, RedisError> = ::redis::cmd("ROLE").query_async(&mut conn).await;
        let master = matches!(&role, Ok(Value::Array(v))
            if matches!(v.first(), Some(Value::BulkString(b)) if b.as_slice() == b"master"));
        let why = if !master {
            Some("is no longer master".to_string())
        } else {
            let named = tokio::time::timeout(timeout, async {
                client.lock().await.async_get_client().await
            })
            .await;
            match named {
                Ok(Ok(c)) if c.get_connection_info().addr().to_string() != addr => Some(format!(
                    "is not the master the Sentinels name ({})",
                    c.get_connection_info().addr()
                )),
                _ => None,
            }
        };
        if let Some(why) = why {
            let mut g = slot.write().await;
            if matches!(g.as_ref(), Some((g0, _, _)) if *g0 == gen) {
                tracing::warn!(master = %addr, "the Redis master {why}: reconnecting");
                *g = None;
            }
        }
    });
}

pub(super) enum Backend {
    Single(ConnectionManager),
    Sentinel(Box<SentinelBackend>),
    Cluster(ClusterConnection),
}

impl RedisStore {
    /// Connect according to a parsed store URL.
    pub async fn connect(url: &StoreUrl, opts: RedisOptions) -> StoreResult<RedisStore> {
        if opts.wait_replicas > 0 && opts.wait_timeout.is_zero() {
            return Err(StoreError::Config(
                "WAIT needs a timeout above 0 (WAIT n 0 blocks forever)".into(),
            ));
        }
        let (backend, cluster, source) = match url {
            StoreUrl::Memory => {
                return Err(StoreError::Config("memory is not a Redis URL".into()));
            }
            StoreUrl::Redis { url } => {
                let client = ::redis::Client::open(url.as_str())
                    .map_err(|e| StoreError::Config(format!("bad Redis URL: {e}")))?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let cm = ConnectionManager::new_with_config(client.clone(), cfg)
                    .await
                    .map_err(map_err)?;
                (
                    Backend::Single(cm),
                    false,
                    PubSubSource::Single(Box::new(client)),
                )
            }
            StoreUrl::Sentinel {
                sentinels,
                master,
                db,
                username,
                password,
                tls,
            } => {
                let addrs: Vec<String> = sentinels
                    .iter()
                    .map(|(h, p)| {
                        let scheme = if *tls { "rediss" } else { "redis" };
                        match (username, password) {
                            // Sentinels use the same credentials as the data nodes.
                            (u, Some(pw)) => format!(
                                "{scheme}://{}:{}@{h}:{p}",
                                enc(u.as_deref().unwrap_or("")),
                                enc(pw)
                            ),
                            _ => format!("{scheme}://{h}:{p}"),
                        }
                    })
                    .collect();
                let mut info = ::redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(u) = username {
                    info = info.set_username(u);
                }
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if *tls {
                    node = node.set_tls_mode(::redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    addrs.iter().map(|s| s.as_str()).collect(),
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| StoreError::Config(format!("bad Sentinel configuration: {e}")))?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout));
                let client = Arc::new(Mutex::new(client));
                let master = tokio::sync::watch::Sender::new(String::new());
                let source = PubSubSource::Sentinel {
                    client: client.clone(),
                    master: master.subscribe(),
                };
                let b = SentinelBackend {
                    client,
                    conn: Arc::new(RwLock::new(None)),
                    config,
                    generation: std::sync::atomic::AtomicU64::new(0),
                    role_checked: std::sync::Mutex::new(Instant::now()),
                    master,
                };
                (Backend::Sentinel(Box::new(b)), false, source)
            }
            StoreUrl::Cluster {
                nodes,
                username,
                password,
                tls,
            } => {
                let scheme = if *tls { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|(h, p)| format!("{scheme}://{h}:{p}"))
                    .collect();
                let mut b = ::redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(opts.connect_timeout)
                    .response_timeout(opts.response_timeout);
                if let Some(u) = username {
                    b = b.username(u);
                }
                if let Some(p) = password {
                    b = b.password(p);
                }
                let client = b
                    .build()
                    .map_err(|e| StoreError::Config(format!("bad cluster configuration: {e}")))?;
                let conn = client.get_async_connection().await.map_err(map_err)?;
                // The revocation signal subscribes on any one node.
                let auth = match (username, password) {
                    (u, Some(pw)) => {
                        format!("{}:{}@", enc(u.as_deref().unwrap_or("")), enc(pw))
                    }
                    _ => String::new(),
                };
                let node_clients = nodes
                    .iter()
                    .filter_map(|(h, p)| {
                        ::redis::Client::open(format!("{scheme}://{auth}{h}:{p}")).ok()
                    })
                    .collect();
                (
                    Backend::Cluster(conn),
                    true,
                    PubSubSource::Cluster(node_clients),
                )
            }
        };
        let signal = Signal::new(source, opts.connect_timeout, opts.client_cache_ttl);
        let store = RedisStore {
            backend,
            opts,
            cluster,
            rate: Arc::new(Script::new(RATE_LUA)),
            lease: Arc::new(Script::new(LEASE_LUA)),
            feed_read: Arc::new(Script::new(FEED_READ_LUA)),
            feed_trim: Arc::new(Script::new(FEED_TRIM_LUA)),
            signal,
        };
        // Fail fast on a wrong address or password.
        store.ping().await?;
        Ok(store)
    }

    pub(super) async fn conn(&self) -> StoreResult<Conn> {
        match &self.backend {
            Backend::Single(c) => Ok(Conn::Managed(c.clone())),
            Backend::Cluster(c) => Ok(Conn::Cluster(c.clone())),
            Backend::Sentinel(s) => {
                if let Some((gen, addr, c)) = s.conn.read().await.as_ref() {
                    if s.role_check_due() {
                        spawn_role_check(
                            s.conn.clone(),
                            s.client.clone(),
                            *gen,
                            addr.clone(),
                            c.clone(),
                            self.opts.connect_timeout * 2,
                        );
                    }
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                let mut slot = s.conn.write().await;
                if let Some((_, _, c)) = slot.as_ref() {
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                // Ask the Sentinels for the master (the client checks its ROLE), connect.
                let timeout = self.opts.connect_timeout * 2;
                let fresh = tokio::time::timeout(timeout, async {
                    let master = s.client.lock().await.async_get_client().await?;
                    let addr = master.get_connection_info().addr().to_string();
                    let conn = master
                        .get_multiplexed_async_connection_with_config(&s.config)
                        .await?;
                    Ok::<_, RedisError>((addr, conn))
                })
                .await
                .map_err(|_| StoreError::Unavailable("sentinel lookup timed out".into()))?
                .map_err(map_err)?;
                let gen = s
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (addr, conn) = fresh;
                tracing::info!(master = %addr, "connected to the Redis master named by Sentinel");
                s.master.send_if_modified(|m| {
                    let changed = *m != addr;
                    if changed {
                        m.clone_from(&addr);
                    }
                    changed
                });
                *slot = Some((gen, addr, conn.clone()));
                Ok(Conn::Multiplexed(conn))
            }
        }
    }
}

pub(super) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Where a `MOVED` among a pipeline's or a transaction's replies points: (host, port).
pub(super) fn moved_to(r: &Result<Vec<Value>, RedisError>) -> Option<(String, u16)> {
    let detail = match r {
        Ok(values) => values.iter().find_map(|v| match v {
            Value::ServerError(e) if e.code() == "MOVED" => e.details().map(str::to_string),
            _ => None,
        }),
        Err(e) => e
            .clone()
            .into_server_errors()?
            .iter()
            .find(|(_, se)| se.code() == "MOVED")
            .and_then(|(_, se)| se.details().map(str::to_string)),
    }?;
    // "<slot> <host>:<port>"
    let (h, p) = detail.split_whitespace().nth(1)?.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

/// The first key a pipeline's commands name (the argument after the command's name; for a
/// script, its first key), to send a probe to that key's slot.
pub(super) fn first_key(p: &Pipeline) -> Option<Vec<u8>> {
    for cmd in p.cmd_iter() {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                ::redis::Arg::Simple(d) => Some(d),
                _ => None,
            })
            .collect();
        let Some(name) = args.first() else { continue };
        match name.to_ascii_uppercase().as_slice() {
            b"MULTI" | b"EXEC" | b"DISCARD" | b"WAIT" | b"PING" => continue,
            b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
                let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
                if numkeys > 0 {
                    return args.get(3).map(|k| k.to_vec());
                }
            }
            _ => return args.get(1).map(|k| k.to_vec()),
        }
    }
    None
}

/// `host:port` of a Cluster node as the client names it.
pub(super) fn node_addr(addr: &Value) -> Result<(String, u16), RedisError> {
    let s: String = ::redis::from_redis_value_ref(addr)?;
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| {
            RedisError::from((
                ::redis::ErrorKind::UnexpectedReturnType,
                "a cluster node address without a port",
                s,
            ))
        })
}

/// Send `cmd` to every primary (or every node) of a Cluster; the answers by node address.
pub(super) async fn on_each_node(
    c: &mut ClusterConnection,
    cmd: &Cmd,
    which: MultipleNodeRoutingInfo,
) -> Result<Vec<((String, u16), Value)>, RedisError> {
    let v = c
        .route_command(cmd.clone(), RoutingInfo::MultiNode((which, None)))
        .await?;
    let Value::Map(pairs) = v else {
        return Err(RedisError::from((
            ::redis::ErrorKind::UnexpectedReturnType,
            "a multi-node command did not answer by node",
        )));
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (addr, v) in pairs {
        if let Value::ServerError(e) = v {
            return Err(e.into());
        }
        out.push((node_addr(&addr)?, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `SCAN` every primary of a Cluster to the end (a plain `SCAN` sees one node only).
pub(super) async fn scan_cluster(
    c: &mut ClusterConnection,
    pattern: &str,
) -> Result<Vec<String>, RedisError> {
    let scan = |cursor: u64| {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        cmd
    };
    let mut out = Vec::new();
    for ((host, port), first) in
        on_each_node(c, &scan(0), MultipleNodeRoutingInfo::AllMasters).await?
    {
        let (mut cursor, keys): (u64, Vec<String>) = ::redis::from_redis_value(first)?;
        out.extend(keys);
        while cursor != 0 {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port,
            });
            let v = c.route_command(scan(cursor), route).await?;
            let (next, keys): (u64, Vec<String>) = ::redis::from_redis_value(v)?;
            out.extend(keys);
            cursor = next;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
