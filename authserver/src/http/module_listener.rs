//! The module listener (`TOLLGATE_MODULE_LISTEN`): a second port that serves only the Wasm
//! module, `GET /edge/module.wasm` and `GET /edge/module.wasm.sha256`, and nothing else.
//!
//! Why a port of its own: istio-agent downloads a WasmPlugin's / EnvoyFilter's http(s)
//! module itself (istio/istio pkg/wasm/httpfetcher.go, a plain Go `http.Client`), from the
//! agent process, whose traffic the sidecar does not capture: it arrives without mTLS. Under
//! STRICT mTLS the auth server's sidecar refuses such a connection on the API port. The chart
//! leaves this port out of the sidecar's inbound capture
//! (`traffic.sidecar.istio.io/excludeInboundPorts`), so the download works under STRICT while
//! every other endpoint stays behind mTLS. What it serves is public and pinned by its sha256.

use std::future::Future;
use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::server::{serve, ConnLimits};
use super::{edge, SharedState};
use crate::error::OAuthError;

/// The module endpoints and a 404 for everything else.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/edge/module.wasm", get(edge::module))
        .route("/edge/module.wasm.sha256", get(edge::module_sha256))
        .fallback(|| async { OAuthError::NotFound("this port serves only the edge module".into()) })
        .with_state(state)
}

/// Bind the module listener when `TOLLGATE_MODULE_LISTEN` is set, and serve it in the
/// background until `shutdown` completes.
pub async fn spawn(
    state: &SharedState,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(addr): Option<SocketAddr> = state.cfg.module_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (TOLLGATE_MODULE_LISTEN): {e}"))?;
    tracing::info!(listen = %addr, "serving the edge module");
    let app = router(state.clone());
    Ok(Some(tokio::spawn(serve(listener, app, limits, shutdown))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::AppState;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
        (status, out[head_end + 4..].to_vec())
    }

    #[tokio::test]
    async fn module_listener_serves_only_the_module() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0module-bytes").unwrap();
        let mut cfg = Config::for_tests();
        cfg.edge_module = Some(module);
        cfg.module_listen = Some("127.0.0.1:0".parse().unwrap());
        let state = AppState::new(cfg.clone(), Arc::new(MemoryStore::new(100)))
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits::from_config(&cfg);
        tokio::spawn(serve(
            listener,
            router(state),
            limits,
            std::future::pending(),
        ));

        let (status, body) = get(addr, "/edge/module.wasm").await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"\0asm\x01\0\0\0module-bytes"[..])
        );
        let (status, body) = get(addr, "/edge/module.wasm.sha256").await;
        assert_eq!(status, 200);
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(b"\0asm\x01\0\0\0module-bytes"));
        assert_eq!(String::from_utf8(body).unwrap().trim(), want);
        // Nothing else: not the API, not the admin endpoints, not the metrics, not the feed.
        for path in [
            "/oauth2/jwks",
            "/oauth2/token",
            "/metrics",
            "/admin/clients",
            "/edge/revocations",
            "/healthz",
        ] {
            assert_eq!(get(addr, path).await.0, 404, "{path}");
        }
    }
}
