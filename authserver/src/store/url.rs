//! Parsing of `TOLLGATE_STORE`: `memory`, `redis://`, `rediss://`,
//! `redis+sentinel://[user:pass@]h1:p1,h2:p2/<master>[/db]` and
//! `redis+cluster://[user:pass@]h1:p1,h2:p2`.

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    /// A single Redis server (`redis://` or `rediss://`), passed to the client as given.
    Redis {
        url: String,
    },
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
    Cluster {
        nodes: Vec<(String, u16)>,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    },
}

fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn split_userinfo(rest: &str) -> (Option<String>, Option<String>, &str) {
    match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = if u.is_empty() {
                None
            } else {
                Some(pct_decode(u))
            };
            (user, p.map(pct_decode), hosts)
        }
        None => (None, None, rest),
    }
}

fn parse_hosts(hosts: &str, default_port: u16) -> Result<Vec<(String, u16)>, StoreError> {
    let mut out = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = if let Some(stripped) = h.strip_prefix('[') {
            // [ipv6]:port
            let (addr, rest) = stripped
                .split_once(']')
                .ok_or_else(|| StoreError::Config(format!("bad host {h}")))?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .map_err(|_| StoreError::Config(format!("bad port in {h}")))?,
                None => default_port,
            };
            (addr.to_string(), port)
        } else {
            match h.rsplit_once(':') {
                Some((host, p)) => (
                    host.to_string(),
                    p.parse()
                        .map_err(|_| StoreError::Config(format!("bad port in {h}")))?,
                ),
                None => (h.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(StoreError::Config(format!("empty host in {hosts}")));
        }
        out.push((host, port));
    }
    if out.is_empty() {
        return Err(StoreError::Config("no hosts given".into()));
    }
    Ok(out)
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<StoreUrl, StoreError> {
        let s = s.trim();
        if s.is_empty() || s == "memory" || s == "memory://" {
            return Ok(StoreUrl::Memory);
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            url::Url::parse(s).map_err(|e| StoreError::Config(format!("bad Redis URL: {e}")))?;
            return Ok(StoreUrl::Redis { url: s.to_string() });
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| StoreError::Config(format!("unknown store {s:?}")))?;
        let tls = scheme.ends_with("+tls") || scheme.starts_with("rediss+");
        match scheme {
            "redis+sentinel" | "rediss+sentinel" | "redis+sentinel+tls" => {
                let (username, password, rest) = split_userinfo(rest);
                let mut parts = rest.splitn(3, '/');
                let hosts = parts.next().unwrap_or("");
                let master = parts
                    .next()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| StoreError::Config("sentinel URL needs /<master>".into()))?;
                let db = match parts.next().filter(|d| !d.is_empty()) {
                    Some(d) => d
                        .parse()
                        .map_err(|_| StoreError::Config(format!("bad db {d:?}")))?,
                    None => 0,
                };
                Ok(StoreUrl::Sentinel {
                    sentinels: parse_hosts(hosts, 26379)?,
                    master: pct_decode(master),
                    db,
                    username,
                    password,
                    tls,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let (username, password, rest) = split_userinfo(rest);
                let hosts = rest.split('/').next().unwrap_or("");
                Ok(StoreUrl::Cluster {
                    nodes: parse_hosts(hosts, 6379)?,
                    username,
                    password,
                    tls,
                })
            }
            _ => Err(StoreError::Config(format!(
                "unknown store scheme {scheme:?} (memory, redis://, rediss://, redis+sentinel://, redis+cluster://)"
            ))),
        }
    }

    /// The URL with any password replaced, for logs and `status`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Memory => "memory".into(),
            StoreUrl::Redis { url } => match url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    u.to_string()
                }
                Err(_) => "redis://(unparseable)".into(),
            },
            StoreUrl::Sentinel {
                sentinels,
                master,
                db,
                username,
                password,
                ..
            } => format!(
                "redis+sentinel://{}{}/{}/{}",
                cred(username, password),
                join_hosts(sentinels),
                master,
                db
            ),
            StoreUrl::Cluster {
                nodes,
                username,
                password,
                ..
            } => format!(
                "redis+cluster://{}{}",
                cred(username, password),
                join_hosts(nodes)
            ),
        }
    }
}

fn cred(u: &Option<String>, p: &Option<String>) -> String {
    match (u, p) {
        (Some(u), Some(_)) => format!("{u}:***@"),
        (None, Some(_)) => ":***@".into(),
        (Some(u), None) => format!("{u}@"),
        (None, None) => String::new(),
    }
}

fn join_hosts(h: &[(String, u16)]) -> String {
    h.iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_and_redis() {
        assert_eq!(StoreUrl::parse("memory").unwrap(), StoreUrl::Memory);
        assert_eq!(StoreUrl::parse("").unwrap(), StoreUrl::Memory);
        assert!(matches!(
            StoreUrl::parse("redis://:pw@127.0.0.1:6379/0").unwrap(),
            StoreUrl::Redis { .. }
        ));
        assert!(matches!(
            StoreUrl::parse("rediss://h:6380/0").unwrap(),
            StoreUrl::Redis { .. }
        ));
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert!(StoreUrl::parse("nonsense").is_err());
    }

    #[test]
    fn parses_sentinel() {
        let u =
            StoreUrl::parse("redis+sentinel://app:p%40ss@s1:26379,s2:26380,s3/mymaster/1").unwrap();
        assert_eq!(
            u,
            StoreUrl::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26379),
                    ("s2".into(), 26380),
                    ("s3".into(), 26379)
                ],
                master: "mymaster".into(),
                db: 1,
                username: Some("app".into()),
                password: Some("p@ss".into()),
                tls: false,
            }
        );
        assert!(!u.redacted().contains("p@ss"));
        assert!(StoreUrl::parse("redis+sentinel://s1:1").is_err());
        assert!(StoreUrl::parse("redis+sentinel://s1:x/m").is_err());
        assert!(StoreUrl::parse("redis+sentinel://s1/m/notanumber").is_err());
    }

    #[test]
    fn parses_cluster() {
        let u = StoreUrl::parse("redis+cluster://:pw@[::1]:7000,127.0.0.1:7001").unwrap();
        match u {
            StoreUrl::Cluster {
                nodes, password, ..
            } => {
                assert_eq!(nodes[0], ("::1".into(), 7000));
                assert_eq!(password.as_deref(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redacts_passwords() {
        let u = StoreUrl::parse("redis://user:topsecret@h:1/0").unwrap();
        assert!(!u.redacted().contains("topsecret"));
    }
}
