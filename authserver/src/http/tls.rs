//! The optional TLS listener of the public endpoints (`TOLLGATE_TLS_LISTEN`): rustls with the
//! configured certificate chain, asking every client for a certificate without requiring
//! one (RFC 8705 §3: binding needs only possession of the certificate's key, which the TLS
//! handshake proves; the certificate need not chain to any CA, self-signed ones bind as
//! well). Client authentication stays what the client registered (a secret, a signed
//! assertion): the certificate is what its tokens are bound to, not who it is; unless the
//! client registered a certificate method: `self_signed_tls_client_auth` (the certificate
//! itself, RFC 8705 §2.2) or `tls_client_auth` (a certificate of `TOLLGATE_TLS_CLIENT_CA`
//! with the registered subject, §2.1, whose chain is verified here once per connection).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsListen;
use crate::pki::{CertIdentity, ClientCa};

/// The client certificate of the connection a request came on, set as a request extension
/// by the TLS listener when the client presented one: the SHA-256 of the leaf's DER and,
/// when its chain verified against `TOLLGATE_TLS_CLIENT_CA`, its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub sha256: [u8; 32],
    pub verified: Option<Arc<CertIdentity>>,
}

impl PeerCertificate {
    /// A certificate no CA vouched for.
    pub fn of(der: &[u8]) -> PeerCertificate {
        PeerCertificate {
            sha256: Sha256::digest(der).into(),
            verified: None,
        }
    }

    /// The presented chain (leaf first), verified against `ca` when there is one.
    pub fn from_chain(
        chain: &[CertificateDer<'_>],
        ca: Option<&ClientCa>,
        now: UnixTime,
    ) -> Option<PeerCertificate> {
        let leaf = chain.first()?;
        let verified = ca.and_then(|ca| match ca.verify(chain, now) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate not issued by TOLLGATE_TLS_CLIENT_CA");
                None
            }
        });
        Some(PeerCertificate {
            verified,
            ..PeerCertificate::of(leaf.as_ref())
        })
    }
}

/// What the TLS listener needs: the acceptor, and the CAs of `tls_client_auth` clients.
#[derive(Clone)]
pub struct Listener {
    pub acceptor: TlsAcceptor,
    pub client_ca: Option<Arc<ClientCa>>,
}

/// The TLS listener's acceptor and client CAs, from its PEM files.
pub fn listener(cfg: &TlsListen) -> Result<Listener, String> {
    let client_ca = match &cfg.client_ca {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("TOLLGATE_TLS_CLIENT_CA {}: {e}", path.display()))?;
            let ca = ClientCa::from_pem(&pem)
                .map_err(|e| format!("TOLLGATE_TLS_CLIENT_CA {}: {e}", path.display()))?;
            Some(Arc::new(ca))
        }
    };
    Ok(Listener {
        acceptor: acceptor(cfg)?,
        client_ca,
    })
}

fn acceptor(cfg: &TlsListen) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TOLLGATE_TLS_CERT {}: {e}", cfg.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TOLLGATE_TLS_CERT {}: no certificate",
            cfg.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| format!("TOLLGATE_TLS_KEY {}: {e}", cfg.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCertificate { provider }))
        .with_single_cert(certs, key)
        .map_err(|e| format!("TOLLGATE_TLS_CERT / TOLLGATE_TLS_KEY: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts any client certificate whose key signs the handshake (the signature is checked
/// with the provider's algorithms), and none.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
