//! Test support: a real `redis-server` on a free loopback port, stopped on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl RedisServer {
    /// Start a server, or `None` when `redis-server` is not installed and
    /// `TOLLGATE_REQUIRE_REDIS` is unset (`make test` sets it, so CI never skips).
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// A replica of this server, once its link to the master is up (for `WAIT` tests).
    pub fn replica(&self) -> RedisServer {
        let master = self.port.to_string();
        let r = Self::start_with(&["--replicaof", "127.0.0.1", &master])
            .unwrap_or_else(|| panic!("the master started, the replica must too"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // Linked on the replica's side and online on the master's.
            let info = self.info("replication");
            if r.info("replication").contains("master_link_status:up")
                && info.contains("state=online")
                && self.replicas_ack(info.matches("state=online").count())
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the replica did not link to its master");
    }

    /// Whether `n` replicas confirm a write (`WAIT`). After a diskless full sync Redis 7
    /// reports a replica `online` but streams commands to it only after its first
    /// `REPLCONF ACK`, up to a second later: until then `WAIT` counts it out.
    fn replicas_ack(&self, n: usize) -> bool {
        ::redis::Client::open(self.url(0))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| {
                ::redis::pipe()
                    .cmd("SET")
                    .arg("tollgate:test:replication-probe")
                    .arg(1)
                    .ignore()
                    .cmd("DEL")
                    .arg("tollgate:test:replication-probe")
                    .ignore()
                    .cmd("WAIT")
                    .arg(n)
                    .arg(200)
                    .query::<(usize,)>(&mut c)
            })
            .is_ok_and(|(acked,)| acked >= n)
    }

    /// `INFO <section>` ("" when the server does not answer).
    pub fn info(&self, section: &str) -> String {
        ::redis::Client::open(self.url(0))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| ::redis::cmd("INFO").arg(section).query(&mut c))
            .unwrap_or_default()
    }

    /// Start a server with extra arguments.
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
            let port = free_port();
            let spawned = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args([
                    "--appendonly",
                    "no",
                    "--dir",
                    &dir.path().display().to_string(),
                    // Replicas sync at once instead of after the default 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    if std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_some() {
                        panic!("redis-server is required but could not start: {e}");
                    }
                    eprintln!("SKIP: redis-server not available ({e}); Redis tests skipped");
                    return None;
                }
            };
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(server);
                }
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Redis Cluster on loopback: `masters` primaries sharing the 16384 slots evenly,
/// each with `replicas` replicas, every node a [`RedisServer`] (all stopped on drop, also
/// when a test panics). Formed the way `redis-cli --cluster create` does it: `CLUSTER
/// ADDSLOTS`, distinct config epochs, `CLUSTER MEET`, `CLUSTER REPLICATE`; ready when every
/// node reports `cluster_state:ok` with all slots and nodes known and replicas are linked.
pub struct RedisCluster {
    /// The primaries first (in slot order), then the replicas.
    pub nodes: Vec<RedisServer>,
    pub masters: usize,
}

impl RedisCluster {
    /// `None` when `redis-server` is missing and `TOLLGATE_REQUIRE_REDIS` is unset.
    pub fn start(masters: usize, replicas: usize) -> Option<RedisCluster> {
        assert!(masters > 0, "a cluster needs a primary");
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(Self::node()?);
        }
        let c = RedisCluster { nodes, masters };
        const SLOTS: usize = 16384;
        for (i, n) in c.nodes.iter().enumerate().take(masters) {
            let (from, to) = (i * SLOTS / masters, (i + 1) * SLOTS / masters);
            n.cmd::<()>(
                ::redis::cmd("CLUSTER")
                    .arg("ADDSLOTS")
                    .arg((from..to).collect::<Vec<_>>()),
            );
        }
        for (i, n) in c.nodes.iter().enumerate() {
            n.cmd::<()>(::redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1));
        }
        for n in &c.nodes[1..] {
            let (_, bus): (String, u16) =
                n.cmd(::redis::cmd("CONFIG").arg("GET").arg("cluster-port"));
            c.nodes[0].cmd::<()>(
                ::redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(n.port)
                    .arg(bus),
            );
        }
        c.wait_until("every node knows every node", |n| {
            n.cluster_info()
                .contains(&format!("cluster_known_nodes:{total}"))
        });
        for r in 0..masters * replicas {
            let id: String = c.nodes[r % masters].cmd(::redis::cmd("CLUSTER").arg("MYID"));
            c.nodes[masters + r].cmd::<()>(::redis::cmd("CLUSTER").arg("REPLICATE").arg(id));
        }
        c.wait_until("cluster_state:ok on every node", |n| {
            let info = n.cluster_info();
            info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
        });
        c.wait_until("replicas linked to their primaries", |n| {
            let repl = n.info("replication");
            repl.contains("role:master") || repl.contains("master_link_status:up")
        });
        // Roles travel by gossip: wait until every node sees every replica as one.
        c.wait_until("every node sees every replica", |n| {
            let nodes: String = n.cmd(::redis::cmd("CLUSTER").arg("NODES"));
            nodes.lines().filter(|l| l.contains("slave")).count() == masters * replicas
        });
        Some(c)
    }

    /// A node with `--cluster-enabled` and its bus on a free port of its own (the default,
    /// port + 10000, can be past 65535).
    fn node() -> Option<RedisServer> {
        for _attempt in 0..5 {
            let bus = free_port().to_string();
            let node = std::panic::catch_unwind(|| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            });
            if let Ok(n) = node {
                return n;
            }
        }
        panic!("no cluster node started");
    }

    fn wait_until(&self, what: &str, ok: impl Fn(&RedisServer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.nodes.iter().all(&ok) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the test cluster did not converge: {what}");
    }

    /// `redis+cluster://127.0.0.1:<p1>,…` with every primary.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// The primaries.
    pub fn primaries(&self) -> &[RedisServer] {
        &self.nodes[..self.masters]
    }
}

impl RedisServer {
    /// Run one command on this node (test set-up: panics on error).
    pub fn cmd<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> T {
        ::redis::Client::open(self.url(0))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .and_then(|mut c| cmd.query(&mut c))
            .unwrap_or_else(|e| panic!("redis-server :{}: {e}", self.port))
    }

    fn cluster_info(&self) -> String {
        ::redis::Client::open(self.url(0))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut c| ::redis::cmd("CLUSTER").arg("INFO").query(&mut c))
            .unwrap_or_default()
    }
}

// ------------------------------------------------------------ client certificates (RFC 8705)

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A test CA (rcgen, ECDSA P-256).
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

pub fn intermediate(issuer: &Ca) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    Ca {
        cert: p.signed_by(&key, &issuer.cert, &issuer.key).unwrap(),
        key,
    }
}

/// A client certificate: subject `CN=client-a,O=Example`, the SANs of a mesh workload and
/// more, `clientAuth`; `edit` changes the parameters first.
pub fn client(
    issuer: &Ca,
    edit: impl FnOnce(&mut CertificateParams),
) -> rustls_pki_types::CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    // DER order O then CN: RFC 4514 writes it the other way round. (The default name holds
    // a CN already, whose place a push would keep.)
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Example");
    p.distinguished_name.push(DnType::CommonName, "client-a");
    p.subject_alt_names = vec![
        SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/orders"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("orders.shop.svc".try_into().unwrap()),
        SanType::IpAddress("10.1.2.3".parse().unwrap()),
        SanType::IpAddress("fd00::7".parse().unwrap()),
        SanType::Rfc822Name("ops@Example.ORG".try_into().unwrap()),
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    edit(&mut p);
    p.signed_by(&key, &issuer.cert, &issuer.key)
        .unwrap()
        .der()
        .clone()
}
