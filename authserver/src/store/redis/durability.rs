//! Durable writes: one pipeline per write, `MULTI`/`EXEC` when atomic, then `WAIT` for
//! the configured replicas; [`Batch`] groups multi-key writes by Cluster slot.

use super::*;

/// The code of a `WAIT` shortfall: the write ran on the master, but fewer replicas than
/// required confirmed it in time.
pub(super) const UNREPLICATED: &str = "UNREPLICATED";

pub(super) fn first_error(values: &[Value]) -> Result<(), RedisError> {
    match values.iter().find_map(|v| match v {
        Value::ServerError(e) => Some(e.clone()),
        _ => None,
    }) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

pub(super) fn unexpected(what: &'static str, got: Option<Value>) -> RedisError {
    RedisError::from((
        ::redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{what}: {got:?}"),
    ))
}

/// The `i`th reply of a [`RedisStore::write`], decoded.
pub(super) fn reply<T: FromRedisValue>(replies: &[Value], i: usize) -> Result<T, RedisError> {
    let v = replies
        .get(i)
        .cloned()
        .ok_or_else(|| unexpected("missing reply", None))?;
    Ok(::redis::from_redis_value(v)?)
}

impl Batch {
    /// The indices of the commands, grouped by Cluster slot in the order of first
    /// appearance; one group when not on Cluster.
    pub(super) fn slot_groups(&self, cluster: bool) -> Vec<Vec<usize>> {
        if !cluster {
            return vec![(0..self.cmds.len()).collect()];
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut slot_group: HashMap<Slot, usize> = HashMap::new();
        for (i, (key, _)) in self.cmds.iter().enumerate() {
            let g = *slot_group.entry(Slot::for_key(key)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }
}

impl RedisStore {
    /// Send a write in one pipeline (so on one connection): `cmds`, inside `MULTI`/`EXEC`
    /// when `atomic`, then, when `durable` and `wait_replicas` > 0, `WAIT <replicas>
    /// <timeout>`, which answers how many replicas have everything this connection wrote so
    /// far. Fewer than required is an `UNREPLICATED` error: the write ran on the master and
    /// may survive there, but it is not acknowledged. `WAIT` is outside the transaction
    /// (inside one it would not block). On Cluster the pipeline goes to the node of its
    /// keyed commands, `WAIT` with it. Returns the replies of `cmds`.
    pub(super) async fn write(
        &self,
        mut c: Conn,
        cmds: &[Cmd],
        atomic: bool,
        durable: bool,
    ) -> Result<Vec<Value>, RedisError> {
        let wait = if durable { self.opts.wait_replicas } else { 0 };
        let mut p = ::redis::pipe();
        if atomic {
            p.cmd("MULTI");
        }
        for cmd in cmds {
            p.add_command(cmd.clone());
        }
        if atomic {
            p.cmd("EXEC");
        }
        if wait > 0 {
            p.cmd("WAIT")
                .arg(wait)
                .arg(self.opts.wait_timeout.as_millis() as u64);
        }
        let mut raw = c.req_packed_commands(&p, 0, p.len()).await?;
        let waited = if wait > 0 { raw.pop() } else { None };
        // A refused queued command (READONLY) explains the EXECABORT that follows it.
        first_error(&raw)?;
        let replies = if atomic {
            match raw.pop() {
                Some(Value::Array(items)) => items,
                other => return Err(unexpected("EXEC", other)),
            }
        } else {
            raw
        };
        first_error(&replies)?;
        match waited {
            None => {}
            Some(Value::Int(n)) if n >= i64::from(wait) => {}
            Some(Value::Int(n)) => {
                metrics::counter!("tollgate_store_wait_shortfalls_total").increment(1);
                return Err(::redis::make_extension_error(
                    UNREPLICATED.into(),
                    Some(format!(
                        "WAIT: {n} of {wait} replicas confirmed the write within {} ms \
                         (it may still be on the master)",
                        self.opts.wait_timeout.as_millis()
                    )),
                ));
            }
            Some(other) => return Err(unexpected("WAIT", Some(other))),
        }
        Ok(replies)
    }

    /// A durable [`Batch`]: one [`Self::write`] (one `WAIT`) per Cluster slot, sent at once;
    /// elsewhere everything in one pipeline. Replies in the order the commands were added.
    pub(super) async fn write_batch(&self, b: &Batch, c: Conn) -> Result<Vec<Value>, RedisError> {
        let groups = b.slot_groups(self.cluster);
        let runs = groups.iter().map(|idx| {
            let cmds: Vec<Cmd> = idx.iter().map(|&i| b.cmds[i].1.clone()).collect();
            let c = c.clone();
            async move { self.write(c, &cmds, b.atomic, true).await }
        });
        let results = futures::future::try_join_all(runs).await?;
        let mut out = vec![Value::Nil; b.cmds.len()];
        for (idx, vals) in groups.iter().zip(results) {
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Commands that may touch keys in several Cluster slots, each with the key it touches; one
/// round trip. Standalone and Sentinel: one pipeline (one `MULTI` when atomic). Cluster,
/// where a pipeline or a `MULTI` must stay in one slot: one pipeline (one `MULTI` when
/// atomic) per slot, all sent at once, so atomicity holds per slot, and the commands on one
/// key keep their order. Results come back in the order the commands were added.
#[derive(Clone, Default)]
pub(super) struct Batch {
    pub(super) cmds: Vec<(String, Cmd)>,
    pub(super) atomic: bool,
    /// A command's error is its result (a `Value::ServerError`) instead of failing the batch.
    pub(super) errors_as_values: bool,
}

impl Batch {
    pub(super) fn atomic() -> Batch {
        Batch {
            atomic: true,
            ..Batch::default()
        }
    }

    pub(super) fn add(&mut self, key: &str, cmd: Cmd) -> &mut Batch {
        self.cmds.push((key.to_string(), cmd));
        self
    }

    pub(super) fn pipeline<'a>(&self, cmds: impl Iterator<Item = &'a Cmd>) -> Pipeline {
        let mut p = ::redis::pipe();
        if self.atomic {
            p.atomic();
        }
        if self.errors_as_values {
            p.ignore_errors();
        }
        for c in cmds {
            p.add_command(c.clone());
        }
        p
    }

    pub(super) async fn run(
        &self,
        cluster: bool,
        mut conn: Conn,
    ) -> Result<Vec<Value>, RedisError> {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !cluster {
            return self
                .pipeline(self.cmds.iter().map(|(_, c)| c))
                .query_async(&mut conn)
                .await;
        }
        let groups = self.slot_groups(true);
        let runs = groups.iter().map(|idx| {
            let p = self.pipeline(idx.iter().map(|&i| &self.cmds[i].1));
            let mut c = conn.clone();
            async move { p.query_async::<Vec<Value>>(&mut c).await }
        });
        let results = futures::future::try_join_all(runs).await?;
        let mut out = vec![Value::Nil; self.cmds.len()];
        for (idx, vals) in groups.iter().zip(results) {
            if vals.len() != idx.len() {
                return Err(RedisError::from((
                    ::redis::ErrorKind::UnexpectedReturnType,
                    "a pipeline answered with a different number of results",
                )));
            }
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
