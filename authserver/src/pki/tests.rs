use std::time::Duration;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
use serde_json::json;

use super::*;
use crate::testutil::{ca, client, intermediate, Ca};

fn trust(cas: &[&Ca]) -> ClientCa {
    let pem: String = cas.iter().map(|c| c.cert.pem()).collect();
    ClientCa::from_pem(pem.as_bytes()).unwrap()
}

fn expected(field: &str, value: &str) -> Result<Expected, String> {
    let md = json!({ field: value });
    Expected::from_metadata(md.as_object().unwrap())
}

#[test]
fn a_certificate_of_the_ca_yields_its_subject() {
    let root = ca("root");
    let id = trust(&[&root])
        .verify(&[client(&root, |_| {})], UnixTime::now())
        .unwrap();
    for (field, value) in [
        ("tls_client_auth_subject_dn", "CN=client-a,O=Example"),
        ("tls_client_auth_subject_dn", "cn=Client-A,o=example"),
        (
            "tls_client_auth_subject_dn",
            "2.5.4.3=#0c08636c69656e742d61,O=Example",
        ),
        (
            "tls_client_auth_san_uri",
            "spiffe://cluster.local/ns/shop/sa/orders",
        ),
        ("tls_client_auth_san_dns", "Orders.Shop.svc"),
        ("tls_client_auth_san_ip", "10.1.2.3"),
        ("tls_client_auth_san_ip", "fd00:0::7"),
        ("tls_client_auth_san_email", "ops@example.org"),
    ] {
        assert!(
            expected(field, value).unwrap().matches(&id),
            "{field}={value}"
        );
    }
    for (field, value) in [
        ("tls_client_auth_subject_dn", "CN=client-a"),
        ("tls_client_auth_subject_dn", "O=Example,CN=client-a"),
        ("tls_client_auth_subject_dn", "CN=client-b,O=Example"),
        ("tls_client_auth_subject_dn", "CN=client-a,O=Example,C=DE"),
        (
            "tls_client_auth_san_uri",
            "spiffe://cluster.local/ns/shop/sa/Orders",
        ),
        (
            "tls_client_auth_san_uri",
            "spiffe://cluster.local/ns/shop/sa",
        ),
        ("tls_client_auth_san_dns", "shop.svc"),
        ("tls_client_auth_san_dns", "client-a"),
        ("tls_client_auth_san_ip", "10.1.2.4"),
        ("tls_client_auth_san_email", "OPS@example.org"),
        ("tls_client_auth_san_email", "ops@example.com"),
    ] {
        assert!(
            !expected(field, value).unwrap().matches(&id),
            "{field}={value}"
        );
    }
}

#[test]
fn the_chain_must_reach_a_trusted_ca_for_client_auth_now() {
    let (root, other) = (ca("root"), ca("other"));
    let mid = intermediate(&root);
    let via_mid = client(&mid, |_| {});
    let now = UnixTime::now();
    let trusted = trust(&[&root]);
    assert!(trusted
        .verify(&[via_mid.clone(), mid.cert.der().clone()], now)
        .is_ok());
    // Without the intermediate there is no path.
    assert!(trusted.verify(std::slice::from_ref(&via_mid), now).is_err());
    // Another CA's certificate, a self-signed one, the CA's own certificate as a leaf.
    let self_signed = {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["orders.shop.svc".into()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.self_signed(&key).unwrap().der().clone()
    };
    for chain in [
        vec![client(&other, |_| {})],
        vec![self_signed],
        vec![root.cert.der().clone()],
        vec![],
        vec![CertificateDer::from(b"\x30\x03garbage".to_vec())],
    ] {
        assert!(trusted.verify(&chain, now).is_err());
    }
    // A server-only certificate, an expired one, one not yet valid.
    let server_only = client(&root, |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert!(trusted.verify(&[server_only], now).is_err());
    let leaf = client(&root, |_| {});
    let year = Duration::from_secs(366 * 86400);
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + year * 30);
    assert!(trusted.verify(std::slice::from_ref(&leaf), later).is_err());
    let earlier = UnixTime::since_unix_epoch(Duration::from_secs(86400));
    assert!(trusted.verify(&[leaf], earlier).is_err());
    // Trusting both CAs accepts both.
    assert!(trust(&[&root, &other])
        .verify(&[client(&other, |_| {})], now)
        .is_ok());
}

#[test]
fn the_ca_file_needs_certificates() {
    assert!(ClientCa::from_pem(b"").is_err());
    assert!(
        ClientCa::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
    let key_only = KeyPair::generate().unwrap().serialize_pem();
    assert!(ClientCa::from_pem(key_only.as_bytes()).is_err());
}

#[test]
fn exactly_one_valid_subject_is_registered() {
    let none = json!({"token_endpoint_auth_method": "tls_client_auth"});
    assert!(Expected::from_metadata(none.as_object().unwrap()).is_err());
    let two = json!({"tls_client_auth_san_dns": "a.example", "tls_client_auth_san_ip": "10.0.0.1"});
    assert!(Expected::from_metadata(two.as_object().unwrap()).is_err());
    for (field, value) in [
        ("tls_client_auth_subject_dn", ""),
        ("tls_client_auth_subject_dn", "client-a"),
        ("tls_client_auth_subject_dn", "CN"),
        ("tls_client_auth_san_dns", "a..example"),
        ("tls_client_auth_san_dns", "a example"),
        ("tls_client_auth_san_uri", "not a uri"),
        ("tls_client_auth_san_uri", "/relative"),
        ("tls_client_auth_san_ip", "10.0.0"),
        ("tls_client_auth_san_email", "nobody"),
    ] {
        assert!(expected(field, value).is_err(), "{field}={value:?}");
    }
    let not_a_string = json!({"tls_client_auth_san_dns": 7});
    assert!(Expected::from_metadata(not_a_string.as_object().unwrap()).is_err());
    assert_eq!(
        expected("tls_client_auth_subject_dn", "cn=a,o=b"),
        Ok(Expected::SubjectDn("CN=a,O=b".into()))
    );
}
