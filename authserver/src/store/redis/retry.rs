//! Error classification and retries: what is transient, what proves a command did not
//! run, and the idempotent / once-only retry loops.

use super::*;

/// Every server error code an error carries, those of an aborted transaction's queued
/// commands included: a `MULTI` sent to a demoted master fails with `EXECABORT` because its
/// commands were refused with `READONLY`.
pub(super) fn error_codes(e: &RedisError) -> Vec<String> {
    let mut codes: Vec<String> = e.code().map(|c| vec![c.to_string()]).unwrap_or_default();
    if let Some(items) = e.clone().into_server_errors() {
        codes.extend(items.iter().map(|(_, se)| se.code().to_string()));
    }
    codes
}

/// Errors that prove the command did not run (refused before execution): any operation may
/// be sent again.
pub(super) fn not_executed(e: &RedisError) -> bool {
    e.is_connection_refusal()
        // The Sentinels name no usable master: mid-failover, the old one is gone and the new
        // one is not promoted yet.
        || matches!(
            e.kind(),
            ::redis::ErrorKind::MasterNameNotFoundBySentinel
                | ::redis::ErrorKind::NoValidReplicasFoundBySentinel
                // The Cluster client has no connection to the node the command is for (a
                // primary just died, the slot map is not updated yet): raised before
                // anything is sent.
                | ::redis::ErrorKind::ClusterConnectionNotFound
        )
        || error_codes(e).iter().any(|c| {
            matches!(
                c.as_str(),
                "READONLY"
                    | "LOADING"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "NOREPLICAS"
                    // A Cluster redirect: the node did not run the command.
                    | "MOVED"
                    | "ASK"
            )
        })
}

/// Connectivity, failover and replication errors: worth another attempt (for idempotent
/// operations), answered 503 when the attempts are spent.
pub(super) fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_cluster_error()
        || not_executed(e)
        || error_codes(e).iter().any(|c| c == UNREPLICATED)
}

pub(super) fn map_err(e: RedisError) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

impl RedisStore {
    /// After a connectivity, failover or replication error on a Sentinel-managed
    /// connection, forget it so that the next call asks the Sentinels for the (possibly
    /// new) master. A `WAIT` shortfall counts too: a master cut off from its replicas may
    /// have been replaced.
    pub(super) async fn on_error(&self, e: &RedisError) {
        if let Backend::Sentinel(s) = &self.backend {
            if is_transient(e) {
                *s.conn.write().await = None;
            }
        }
    }

    /// Run an idempotent operation: on a transient error (connection lost, failover,
    /// `READONLY`, `WAIT` shortfall) retry with backoff, after re-resolving the master when
    /// behind Sentinel, for at most `retry_budget`.
    pub(super) async fn idem<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.retrying(f, is_transient).await
    }

    /// Run a non-idempotent operation: sent again only when the error proves it did not run
    /// (connection refused, `READONLY`, `LOADING`, ...), never after a lost answer.
    pub(super) async fn once<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.retrying(f, not_executed).await
    }

    pub(super) async fn retrying<T, F, Fut>(
        &self,
        f: F,
        retry: fn(&RedisError) -> bool,
    ) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let deadline = Instant::now() + self.opts.retry_budget;
        let mut pause = Duration::from_millis(25);
        loop {
            let err = match self.conn().await {
                // No connection: nothing was sent.
                Err(e) => e,
                Ok(c) => match f(c).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        self.on_error(&e).await;
                        if !retry(&e) {
                            return Err(map_err(e));
                        }
                        map_err(e)
                    }
                },
            };
            if !matches!(err, StoreError::Unavailable(_)) || Instant::now() + pause > deadline {
                return Err(err);
            }
            metrics::counter!("tollgate_store_retries_total").increment(1);
            tracing::debug!(error = %err, "store operation failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_without_a_connection_is_unavailable_and_retried() {
        // What the Cluster client answers while a dead primary is still in its slot map
        // (seen in tests/e2e/test_redis_cluster.py's failover): nothing was sent.
        let e = RedisError::from((
            ::redis::ErrorKind::ClusterConnectionNotFound,
            "Requested connection not found",
            "127.0.0.1:7001".to_string(),
        ));
        assert!(not_executed(&e) && is_transient(&e));
        assert!(matches!(map_err(e), StoreError::Unavailable(_)));
        // A reply the store could not use is neither.
        let refused = RedisError::from((::redis::ErrorKind::UnexpectedReturnType, "not a hash"));
        assert!(!not_executed(&refused) && !is_transient(&refused));
    }
}
