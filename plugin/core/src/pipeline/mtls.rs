//! Stage `mtls`: certificate-bound tokens (RFC 8705 §3). A token whose verified claims (or
//! introspection answer) carry `cnf.x5t#S256` is accepted only on a connection whose
//! client certificate has that SHA-256: Envoy's `connection.sha256_peer_certificate_digest`
//! of the downstream TLS connection (the gateway's listener must request client
//! certificates; in a mesh, the calling workload's sidecar presents its certificate). No
//! client certificate, or another one: `401 invalid_token` with a `Bearer` challenge
//! (RFC 8705 §3 keeps the scheme), counted as `tollgate_denied_mtls_no_certificate` /
//! `tollgate_denied_mtls_mismatch`. A token without the binding passes on one claim check,
//! and the certificate is read only for a bound token (one host call).

use std::ops::ControlFlow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::engine::{Outcome, Worker};
use crate::host::Host;
use crate::metrics::Metric;
use crate::reject;

use super::{Ctx, Step};

/// Passes a request whose token is not certificate-bound, or whose connection presented
/// the certificate the token is bound to.
pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let Some(want) = cx
        .verified
        .as_deref()
        .and_then(|v| v.identity.cnf_x5t.as_deref())
    else {
        return ControlFlow::Continue(());
    };
    let refuse = |description: &str, reason: &'static str| {
        host.metric(Metric::Denied(reason), 1);
        ControlFlow::Break(Outcome::Reject(reject::invalid_token(
            &w.cfg.realm,
            description,
            reason,
        )))
    };
    let Some(peer) = cx.req.peer_certificate(host).and_then(hex_digest) else {
        return refuse(
            "the token is bound to a client certificate; none was presented",
            "mtls_no_certificate",
        );
    };
    let bound = URL_SAFE_NO_PAD.decode(want).ok();
    if bound.is_some_and(|b| crate::ct_eq(&b, &peer)) {
        ControlFlow::Continue(())
    } else {
        refuse(
            "the token is bound to another client certificate",
            "mtls_mismatch",
        )
    }
}

/// A 64-hex-digit SHA-256 (either case) as bytes.
fn hex_digest(h: &str) -> Option<[u8; 32]> {
    let b = h.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::super::test_support::*;
    use super::*;
    use crate::engine::Outcome;

    const CERT: &[u8] = b"DER of the workload certificate";

    fn x5t(der: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(der))
    }

    fn hex(der: &[u8]) -> String {
        Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn bound_token() -> String {
        token_json(serde_json::json!({"scope": "read", "cnf": {"x5t#S256": x5t(CERT)}}))
    }

    fn status(o: &Outcome) -> Option<u16> {
        match o {
            Outcome::Reject(r) => Some(r.status),
            _ => None,
        }
    }

    #[test]
    fn a_bound_token_passes_only_with_its_certificate() {
        let (host, mut w) = worker(serde_json::json!({}));
        // A request reads its connection's certificate once: a new request per case.
        let req = || request("/r", Some(&bound_token()));
        // its certificate (Envoy writes lower-case hex; upper case is accepted too)
        for peer in [hex(CERT), hex(CERT).to_uppercase()] {
            *host.peer_certificate.borrow_mut() = Some(peer);
            assert!(matches!(w.on_request(&host, &req()), Outcome::Allow { .. }));
        }
        // another workload's certificate, none, or a digest that is not one
        for (peer, reason) in [
            (Some(hex(b"another workload")), "mtls_mismatch"),
            (None, "mtls_no_certificate"),
            (Some("not-hex".to_string()), "mtls_no_certificate"),
            (Some(hex(CERT)[..62].to_string()), "mtls_no_certificate"),
        ] {
            *host.peer_certificate.borrow_mut() = peer;
            let o = w.on_request(&host, &req());
            assert_eq!(status(&o), Some(401), "{o:?}");
            let Outcome::Reject(r) = &o else {
                unreachable!()
            };
            let challenge = r
                .headers
                .iter()
                .find(|(k, _)| k == "www-authenticate")
                .map(|(_, v)| v.as_str());
            assert!(
                challenge.is_some_and(
                    |c| c.starts_with("Bearer") && c.contains("error=\"invalid_token\"")
                ),
                "{challenge:?}"
            );
            assert_eq!(host.metric_value(Metric::Denied(reason)), 1, "{reason}");
            host.metrics.borrow_mut().clear();
        }
    }

    #[test]
    fn an_unbound_token_never_reads_the_certificate() {
        let (host, mut w) = worker(serde_json::json!({}));
        *host.peer_certificate.borrow_mut() = Some(hex(b"whatever"));
        let req = request("/r", Some(&token(&[("scope", "read")])));
        assert!(matches!(w.on_request(&host, &req), Outcome::Allow { .. }));
    }

    #[test]
    fn a_certificate_bound_token_satisfies_require_sender_constrained() {
        let cfg = serde_json::json!({"rules": [{"name": "bound", "path_prefix": "/pay/",
                                                "require": "sender_constrained"}]});
        let (host, mut w) = worker(cfg);
        *host.peer_certificate.borrow_mut() = Some(hex(CERT));
        let ok = request("/pay/x", Some(&bound_token()));
        assert!(matches!(w.on_request(&host, &ok), Outcome::Allow { .. }));
        let unbound = request("/pay/x", Some(&token(&[("scope", "read")])));
        assert_eq!(status(&w.on_request(&host, &unbound)), Some(401));
    }
}
