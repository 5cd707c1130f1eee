//! Certificate-bound access tokens (RFC 8705 §3). The client's certificate is the one it
//! presented on our own TLS listener (`TOLLGATE_TLS_LISTEN`, [`super::tls`]), or, in the
//! mesh, the one its Istio sidecar presented to ours, which our inbound sidecar reports in the
//! `Hash` (hex SHA-256 of the DER certificate) of the last `X-Forwarded-Client-Cert`
//! element (Envoy's `APPEND_FORWARD`). Trusted on the terms of the mesh identity of the
//! edge endpoints ([`super::edge`]): only with `TOLLGATE_CERT_BOUND_TOKENS`, only from the
//! sidecar's inbound passthrough peer, and only for a request the caller made itself (no
//! `X-Forwarded-For`: a request a gateway forwarded carries the gateway's certificate).

use std::net::SocketAddr;

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::error::{OAuthError, OAuthResult};
use crate::store::ClientRecord;
use crate::xfcc;

use super::edge::from_inbound_sidecar;
use super::tls::PeerCertificate;
use super::SharedState;

/// The `x5t#S256` to bind the client's access tokens to: `None` for a client not registered
/// with `tls_client_certificate_bound_access_tokens`. Such a client without a certificate
/// the server can trust is refused (`invalid_request`): an unbound token would be a bearer
/// token the client asked never to get.
pub fn token_request_thumbprint(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    client: &ClientRecord,
) -> OAuthResult<Option<String>> {
    if !client.metadata.tls_client_certificate_bound_access_tokens {
        return Ok(None);
    }
    // Our own TLS listener: the certificate whose key signed the handshake.
    if let Some(c) = tls {
        return Ok(Some(URL_SAFE_NO_PAD.encode(c.sha256)));
    }
    if !state.cfg.cert_bound_tokens {
        return Err(OAuthError::InvalidRequest(
            "this client's access tokens are bound to its TLS client certificate: call the TLS \
             listener with it (TOLLGATE_TLS_LISTEN); the mesh's is not read here \
             (TOLLGATE_CERT_BOUND_TOKENS)"
                .into(),
        ));
    }
    let missing = || {
        OAuthError::InvalidRequest(
            "this client's access tokens are bound to its TLS client certificate \
             (tls_client_certificate_bound_access_tokens): call through the mesh with it"
                .into(),
        )
    };
    if !peer.is_some_and(|p| from_inbound_sidecar(&p)) || headers.contains_key("x-forwarded-for") {
        return Err(missing());
    }
    let mut values = headers.get_all("x-forwarded-client-cert").iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(
            match headers.get_all("x-forwarded-client-cert").iter().count() {
                0 => missing(),
                _ => OAuthError::InvalidRequest("repeated X-Forwarded-Client-Cert header".into()),
            },
        );
    };
    let v = v
        .to_str()
        .map_err(|_| OAuthError::InvalidRequest("X-Forwarded-Client-Cert is not ASCII".into()))?;
    let last = xfcc::last(v).map_err(|e| OAuthError::InvalidRequest(e.to_string()))?;
    let digest = last
        .hash()
        .and_then(|h| hex::decode(h).ok())
        .filter(|d| d.len() == 32)
        .ok_or_else(missing)?;
    Ok(Some(URL_SAFE_NO_PAD.encode(digest)))
}
