//! RFC 8705 §2.1 `tls_client_auth`: a client authenticates with a certificate issued by a CA
//! the server trusts (`TOLLGATE_TLS_CLIENT_CA`), whose subject matches the one value the
//! client registered: its subject DN or one of its subject alternative names (DNS, URI,
//! IP address, e-mail). Pure logic: the TLS listener hands the presented chain to
//! [`ClientCa::verify`] once per connection, and client authentication compares the
//! [`CertIdentity`] it returns with the client's [`Expected`] subject.

use std::net::IpAddr;
use std::str::FromStr;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Map, Value};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::RdnSequence;
use x509_cert::Certificate;

/// The client metadata naming the expected subject (RFC 8705 §2.1.2); a client registers
/// exactly one of them.
pub const SUBJECT_FIELDS: [&str; 5] = [
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
];

/// The CAs whose certificates authenticate `tls_client_auth` clients.
#[derive(Debug)]
pub struct ClientCa {
    anchors: Vec<TrustAnchor<'static>>,
}

impl ClientCa {
    /// Every `CERTIFICATE` of a PEM file is a trust anchor; at least one is needed.
    pub fn from_pem(pem: &[u8]) -> Result<ClientCa, String> {
        let mut anchors = Vec::new();
        for der in CertificateDer::pem_slice_iter(pem) {
            let der = der.map_err(|e| e.to_string())?;
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("not a CA certificate: {e:?}"))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err("no certificate".into());
        }
        Ok(ClientCa { anchors })
    }

    /// Verify a client's chain (leaf first, then intermediates) up to one of the anchors, for
    /// client authentication (the leaf's extended key usage, when it has one, must allow
    /// it), valid at `now`; the leaf's subject on success.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<CertIdentity, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("{e:?}"))?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| format!("{e:?}"))?;
        CertIdentity::parse(leaf)
    }
}

/// The subject of a verified client certificate: its DN (RFC 4514 form) and its subject
/// alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    subject_dn: String,
    dns: Vec<String>,
    uris: Vec<String>,
    ips: Vec<IpAddr>,
    emails: Vec<String>,
}

impl CertIdentity {
    pub fn parse(der: &[u8]) -> Result<CertIdentity, String> {
        let cert = Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = &cert.tbs_certificate;
        let mut id = CertIdentity {
            subject_dn: tbs.subject.to_string(),
            ..CertIdentity::default()
        };
        // A certificate with two subjectAltName extensions is malformed (RFC 5280 §4.2).
        let san = tbs
            .get::<SubjectAltName>()
            .map_err(|e| format!("subjectAltName: {e}"))?;
        for name in san.map(|(_, s)| s.0).unwrap_or_default() {
            match name {
                GeneralName::DnsName(n) => id.dns.push(n.to_string()),
                GeneralName::UniformResourceIdentifier(u) => id.uris.push(u.to_string()),
                GeneralName::Rfc822Name(e) => id.emails.push(e.to_string()),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    if let Ok(v4) = <[u8; 4]>::try_from(b) {
                        id.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
                        id.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(id)
    }
}

/// The subject a `tls_client_auth` client registered (RFC 8705 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// In the canonical RFC 4514 form the certificate's DN is compared in.
    SubjectDn(String),
    SanDns(String),
    SanUri(String),
    SanIp(IpAddr),
    SanEmail(String),
}

impl Expected {
    /// The one subject field of the registered metadata, checked.
    pub fn from_metadata(md: &Map<String, Value>) -> Result<Expected, String> {
        let present: Vec<&str> = SUBJECT_FIELDS
            .into_iter()
            .filter(|f| md.contains_key(*f))
            .collect();
        let [field] = present[..] else {
            return Err(format!(
                "tls_client_auth needs exactly one of {}",
                SUBJECT_FIELDS.join(", ")
            ));
        };
        let value = md
            .get(field)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 1024)
            .ok_or_else(|| format!("{field} must be a non-empty string"))?;
        let bad = |what: &str| format!("{field} is not {what}");
        match field {
            "tls_client_auth_subject_dn" => canonical_dn(value)
                .map(Expected::SubjectDn)
                .ok_or_else(|| bad("a distinguished name in RFC 4514 form (CN=a,O=b)")),
            "tls_client_auth_san_dns" => {
                let ok = value.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                });
                ok.then(|| Expected::SanDns(value.to_ascii_lowercase()))
                    .ok_or_else(|| bad("a DNS name"))
            }
            "tls_client_auth_san_uri" => url::Url::parse(value)
                .ok()
                .filter(|_| value.is_ascii() && !value.contains(char::is_whitespace))
                .map(|_| Expected::SanUri(value.to_owned()))
                .ok_or_else(|| bad("an absolute URI")),
            "tls_client_auth_san_ip" => IpAddr::from_str(value)
                .map(Expected::SanIp)
                .map_err(|_| bad("an IPv4 or IPv6 address")),
            _ => value
                .split_once('@')
                .filter(|(local, domain)| {
                    !local.is_empty() && !domain.is_empty() && value.is_ascii()
                })
                .map(|_| Expected::SanEmail(value.to_owned()))
                .ok_or_else(|| bad("an e-mail address")),
        }
    }

    /// Does the certificate carry the registered subject? DNS names and the domain of an
    /// e-mail address compare case-insensitively, URIs exactly, DNs in their canonical form
    /// with ASCII case folded (X.520 caseIgnoreMatch, as directory strings are compared).
    pub fn matches(&self, id: &CertIdentity) -> bool {
        match self {
            Expected::SubjectDn(dn) => id.subject_dn.eq_ignore_ascii_case(dn),
            Expected::SanDns(d) => id.dns.iter().any(|n| n.eq_ignore_ascii_case(d)),
            Expected::SanUri(u) => id.uris.iter().any(|n| n == u),
            Expected::SanIp(ip) => id.ips.contains(ip),
            Expected::SanEmail(e) => id.emails.iter().any(|n| email_eq(n, e)),
        }
    }
}

/// A DN parsed as RFC 4514 and written back the way a certificate's DN is written (short
/// attribute names, one escaping), so that equal names compare equal as strings.
fn canonical_dn(s: &str) -> Option<String> {
    let dn = RdnSequence::from_str(s).ok()?;
    (!dn.0.is_empty()).then(|| dn.to_string())
}

fn email_eq(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
