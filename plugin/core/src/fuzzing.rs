//! Property functions of the fuzz targets (`plugin/core/fuzz`), shared with the corpus
//! regression test (`tests/fuzz_corpus.rs`): each takes one input as bytes, runs the code
//! under test and panics when a property does not hold. Behind the `fuzzing` feature, which
//! the filter never enables. Targets, input formats and properties: `docs/fuzzing.md`.
//!
//! The fixed world every target runs in: the fixture keys of `tests/fixtures` (ES256,
//! Ed25519, RS256 in the JWKS; a second "rogue" ES256 key outside it that claims the ES256
//! key's `kid`), a configuration with two issuers, and the clock at [`NOW`].

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use crate::config::{normalize_typ, Config};
use crate::engine::{Outcome, Request, Worker};
use crate::error::TokenError;
use crate::host::Host;
use crate::identity::{header_safe, Identity, Reader};
use crate::jwks::{self, JwksError, KeyKind, KeySet};
use crate::jwt::{self, Alg, KeySource, VerifyError};
use crate::lease::{self, LeaseFailMode};
use crate::testing::MemoryHost;
use crate::{cache, introspection, revocation};

/// A property function: one input, a panic when a property fails.
pub type Property = fn(&[u8]);

/// Every target: its name (the fuzz target's and its corpus folder's) and its property.
pub const TARGETS: &[(&str, Property)] = &[
    ("jwt_parse", jwt_parse),
    ("jwt_verify", jwt_verify),
    ("jwks_parse", jwks_parse),
    ("config_parse", config_parse),
    ("revocation_feed", revocation_feed),
    ("introspection_answer", introspection_answer),
    ("lease_answer", lease_answer),
];

/// Issuer 0 of the fixture configuration: `typ` must be `at+jwt`; ES256, EdDSA, RS256, PS256.
pub const ISSUER: &str = "https://auth.fuzz.test";
/// Issuer 1: no `typ` requirement, the default algorithm list.
pub const ISSUER_PLAIN: &str = "https://plain.fuzz.test";
pub const AUDIENCE: &str = "fuzz-api";
/// The clock of every target (Unix seconds).
pub const NOW: u64 = 1_800_000_000;

/// The public half of the fixture keys (`tests/fixtures/jwks.json`).
pub const JWKS: &[u8] = include_bytes!("../tests/fixtures/jwks.json");

/// The fixture signing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixtureKey {
    Es256,
    Ed25519,
    Rs256,
    /// An ES256 key that is not in the JWKS but names the ES256 key's `kid`.
    Rogue,
}

impl FixtureKey {
    pub const ALL: [FixtureKey; 4] = [
        FixtureKey::Es256,
        FixtureKey::Ed25519,
        FixtureKey::Rs256,
        FixtureKey::Rogue,
    ];

    pub fn kid(self) -> &'static str {
        match self {
            FixtureKey::Es256 | FixtureKey::Rogue => "fixture-es256",
            FixtureKey::Ed25519 => "fixture-ed25519",
            FixtureKey::Rs256 => "fixture-rs256",
        }
    }

    pub fn in_jwks(self) -> bool {
        self != FixtureKey::Rogue
    }

    /// The algorithm a fixture token of this key uses.
    pub fn alg(self) -> Algorithm {
        match self {
            FixtureKey::Es256 | FixtureKey::Rogue => Algorithm::ES256,
            FixtureKey::Ed25519 => Algorithm::EdDSA,
            FixtureKey::Rs256 => Algorithm::RS256,
        }
    }

    fn kind(self) -> KeyKind {
        match self {
            FixtureKey::Es256 | FixtureKey::Rogue => KeyKind::P256,
            FixtureKey::Ed25519 => KeyKind::Ed25519,
            FixtureKey::Rs256 => KeyKind::Rsa,
        }
    }

    /// The fixture key (in the JWKS) of a key kind.
    fn of_kind(kind: KeyKind) -> Option<FixtureKey> {
        match kind {
            KeyKind::P256 => Some(FixtureKey::Es256),
            KeyKind::Ed25519 => Some(FixtureKey::Ed25519),
            KeyKind::Rsa => Some(FixtureKey::Rs256),
            KeyKind::P384 => None,
        }
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn alg_of(a: Alg) -> Algorithm {
    match a {
        Alg::ES256 => Algorithm::ES256,
        Alg::ES384 => Algorithm::ES384,
        Alg::RS256 => Algorithm::RS256,
        Alg::RS384 => Algorithm::RS384,
        Alg::RS512 => Algorithm::RS512,
        Alg::PS256 => Algorithm::PS256,
        Alg::PS384 => Algorithm::PS384,
        Alg::PS512 => Algorithm::PS512,
        Alg::EdDSA => Algorithm::EdDSA,
    }
}

/// The fixture private keys, parsed once (parsing derives public points and CRT values,
/// which would cost more than the signature).
struct Signers {
    es256: p256::ecdsa::SigningKey,
    rogue: p256::ecdsa::SigningKey,
    ed25519: ed25519_dalek::SigningKey,
    rsa: rsa::RsaPrivateKey,
}

fn signers() -> &'static Signers {
    static S: OnceLock<Signers> = OnceLock::new();
    S.get_or_init(|| {
        use p256::pkcs8::DecodePrivateKey;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let ec = |der: &[u8]| {
            p256::ecdsa::SigningKey::from_pkcs8_der(der)
                .unwrap_or_else(|e| panic!("fixture EC key: {e}"))
        };
        // An Ed25519 PKCS#8 document ends with the 32-byte seed.
        let ed = include_bytes!("../tests/fixtures/ed25519.pk8.der");
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&ed[ed.len() - 32..]);
        Signers {
            es256: ec(include_bytes!("../tests/fixtures/es256.pk8.der")),
            rogue: ec(include_bytes!("../tests/fixtures/es256-rogue.pk8.der")),
            ed25519: ed25519_dalek::SigningKey::from_bytes(&seed),
            rsa: rsa::RsaPrivateKey::from_pkcs1_der(include_bytes!(
                "../tests/fixtures/rsa2048.der"
            ))
            .unwrap_or_else(|e| panic!("fixture RSA key: {e}")),
        }
    })
}

/// A deterministic "random" source for RSASSA-PSS salts (reproducible fuzz inputs).
struct Counter(u64);

impl rsa::rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = (self.next_u64() >> 32) as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for Counter {}

/// The signature (base64url) of `input` by a fixture key with `alg` (which must be one of
/// the key's: ES256; EdDSA; RS256/384/512 or PS256/384/512).
pub fn signature(key: FixtureKey, alg: Algorithm, input: &str) -> String {
    // Signing (RSA above all, with the fuzz build's debug assertions) costs far more than
    // what is under test; mutations often leave the signed parts alone, so keep the last
    // signatures (all signatures here are deterministic).
    type Cache = HashMap<(FixtureKey, Algorithm, String), String>;
    thread_local! {
        static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(HashMap::new());
    }
    let k = (key, alg, input.to_string());
    if let Some(sig) = CACHE.with(|c| c.borrow().get(&k).cloned()) {
        return sig;
    }
    let sig = sign_uncached(key, alg, input);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(k, sig.clone());
    });
    sig
}

fn sign_uncached(key: FixtureKey, alg: Algorithm, input: &str) -> String {
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    let s = signers();
    let msg = input.as_bytes();
    let bytes: Vec<u8> = match (key, alg) {
        (FixtureKey::Es256, Algorithm::ES256) | (FixtureKey::Rogue, Algorithm::ES256) => {
            let k = if key == FixtureKey::Es256 {
                &s.es256
            } else {
                &s.rogue
            };
            let sig: p256::ecdsa::Signature = k.sign(msg);
            sig.to_bytes().to_vec()
        }
        (FixtureKey::Ed25519, Algorithm::EdDSA) => s.ed25519.sign(msg).to_bytes().to_vec(),
        (FixtureKey::Rs256, a) => {
            let k = s.rsa.clone();
            let mut rng = Counter(msg.len() as u64);
            match a {
                Algorithm::RS256 => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k)
                    .sign(msg)
                    .to_vec(),
                Algorithm::RS384 => rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(k)
                    .sign(msg)
                    .to_vec(),
                Algorithm::RS512 => rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(k)
                    .sign(msg)
                    .to_vec(),
                Algorithm::PS256 => rsa::pss::SigningKey::<sha2::Sha256>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                Algorithm::PS384 => rsa::pss::SigningKey::<sha2::Sha384>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                Algorithm::PS512 => rsa::pss::SigningKey::<sha2::Sha512>::new(k)
                    .sign_with_rng(&mut rng, msg)
                    .to_vec(),
                other => panic!("the RSA fixture key cannot sign {other:?}"),
            }
        }
        (k, a) => panic!("fixture key {k:?} cannot sign {a:?}"),
    };
    b64(&bytes)
}

/// A compact JWS over raw header and claims bytes (they need not be JSON).
pub fn sign(key: FixtureKey, alg: Algorithm, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = signature(key, alg, &input);
    format!("{input}.{sig}")
}

/// Claims the fixture configuration accepts (issuer 0).
pub fn good_claims() -> Value {
    json!({"iss": ISSUER, "sub": "fuzz-client", "aud": AUDIENCE, "exp": NOW + 600,
           "iat": NOW - 10, "nbf": NOW - 10, "jti": "fuzz-jti-1", "client_id": "fuzz-client",
           "scope": "api:read api:write", "tenant": "t-1"})
}

/// The header of a fixture token of `key`.
pub fn good_header(key: FixtureKey) -> Value {
    json!({"alg": format!("{:?}", key.alg()), "typ": "at+jwt", "kid": key.kid()})
}

/// A token the fixture configuration accepts, signed by `key`.
pub fn good_token(key: FixtureKey) -> String {
    sign(
        key,
        key.alg(),
        good_header(key).to_string().as_bytes(),
        good_claims().to_string().as_bytes(),
    )
}

/// The fixture filter configuration (JSON).
pub fn fixture_config_json() -> Vec<u8> {
    json!({
        "issuers": [
            {"issuer": ISSUER, "audiences": [AUDIENCE, "fuzz-other"],
             "algorithms": ["ES256", "EdDSA", "RS256", "PS256"], "typ": "at+jwt",
             "jwks": {"cluster": "auth"}},
            {"issuer": ISSUER_PLAIN, "audiences": [AUDIENCE],
             "jwks": {"cluster": "auth", "path": "/plain/jwks"}}
        ],
        "headers": {"claims": {"jti": "x-tollgate-jti", "tenant": "x-tollgate-tenant"}}
    })
    .to_string()
    .into_bytes()
}

struct Fixture {
    cfg: Config,
    keys: KeySet,
    jwks: Value,
    /// Valid tokens of the keys in the JWKS, and one ES256 token without `kid`.
    tokens: Vec<(FixtureKey, bool, String)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let cfg = Config::from_json(&fixture_config_json())
            .unwrap_or_else(|e| panic!("fixture configuration: {e}"));
        let keys = KeySet::parse(JWKS).unwrap_or_else(|e| panic!("fixture JWKS: {e}"));
        let jwks: Value =
            serde_json::from_slice(JWKS).unwrap_or_else(|e| panic!("fixture JWKS: {e}"));
        let mut tokens: Vec<(FixtureKey, bool, String)> =
            [FixtureKey::Es256, FixtureKey::Ed25519, FixtureKey::Rs256]
                .iter()
                .map(|k| (*k, true, good_token(*k)))
                .collect();
        let no_kid = sign(
            FixtureKey::Es256,
            Algorithm::ES256,
            br#"{"alg":"ES256","typ":"at+jwt"}"#,
            good_claims().to_string().as_bytes(),
        );
        tokens.push((FixtureKey::Es256, false, no_kid));
        Fixture {
            cfg,
            keys,
            jwks,
            tokens,
        }
    })
}

/// The fixture configuration.
pub fn fixture_config() -> &'static Config {
    &fixture().cfg
}

struct Fixed<'a>(&'a KeySet);

impl KeySource for Fixed<'_> {
    fn key_set(&mut self, _issuer: usize) -> Option<&KeySet> {
        Some(self.0)
    }
}

/// Verify against the fixture configuration and JWKS at [`NOW`].
pub fn verify_fixture(token: &str) -> Result<Identity, VerifyError> {
    let f = fixture();
    jwt::verify(token, &f.cfg, &mut Fixed(&f.keys), NOW)
}

fn decode_segment(seg: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(seg)
        .unwrap_or_else(|e| panic!("parse accepted a segment that does not decode: {e}"))
}

fn identity_round_trip(id: &Identity) {
    let mut buf = Vec::new();
    id.encode_into(&mut buf);
    let mut r = Reader::new(&buf);
    let back = Identity::decode(&mut r);
    assert_eq!(
        back.as_ref(),
        Some(id),
        "identity encoding does not round-trip"
    );
    assert!(r.is_empty(), "identity decoding left bytes behind");
}

/// What `jwt::parse` returned must be the token, split: the parts re-encode to the input.
fn check_parsed(token: &str, p: &jwt::Parsed<'_>) {
    assert_eq!(format!("{}.{}", p.signing_input, p.signature), token);
    let segs: Vec<&str> = token.split('.').collect();
    assert_eq!(segs.len(), 3, "parse accepted {} segments", segs.len());
    for seg in &segs {
        assert_eq!(
            b64(&decode_segment(seg)),
            *seg,
            "a segment is not in canonical base64url"
        );
    }
    let header: Map<String, Value> = serde_json::from_slice(&decode_segment(segs[0]))
        .unwrap_or_else(|e| panic!("parse accepted a header that is not a JSON object: {e}"));
    assert_eq!(header.get("alg"), Some(&Value::String(p.alg_name.clone())));
    assert_eq!(
        header.get("kid").and_then(Value::as_str),
        p.kid.as_deref(),
        "kid"
    );
    assert_eq!(
        header.get("typ").and_then(Value::as_str),
        p.typ.as_deref(),
        "typ"
    );
    for k in ["jku", "jwk", "x5u", "x5c", "crit"] {
        assert!(!header.contains_key(k), "parse accepted a header with {k}");
    }
    let claims: Map<String, Value> = serde_json::from_slice(&decode_segment(segs[1]))
        .unwrap_or_else(|e| panic!("parse accepted claims that are not a JSON object: {e}"));
    assert_eq!(claims, p.claims);
}

/// An accepted token: every check `verify` promises holds, and (`resign`) its signature is
/// one the fixture key made (re-signed: ES256, EdDSA and RSASSA-PKCS1-v1_5 are
/// deterministic; for ES256 the `(r, n - s)` twin shares `r`).
fn check_accepted(token: &str, id: &Identity, resign: bool) {
    let f = fixture();
    let cfg = &f.cfg;
    let p = jwt::parse(token, cfg.max_token_bytes)
        .unwrap_or_else(|e| panic!("verify accepted a token that does not parse: {e:?}"));
    check_parsed(token, &p);
    let alg =
        Alg::parse(&p.alg_name).unwrap_or_else(|| panic!("verify accepted alg {:?}", p.alg_name));
    let iss = p.claims.get("iss").and_then(Value::as_str);
    let (idx, issuer) = iss
        .and_then(|i| cfg.issuer(i))
        .unwrap_or_else(|| panic!("verify accepted issuer {iss:?}"));
    assert_eq!(id.issuer as usize, idx);
    assert!(issuer.algorithms.contains(&alg), "alg not allowed");
    if let Some(want) = &issuer.typ {
        assert_eq!(p.typ.as_deref().map(normalize_typ).as_ref(), Some(want));
    }
    let key = match &p.kid {
        Some(kid) => f.keys.by_kid(kid),
        None => f.keys.only_key_for(alg),
    }
    .unwrap_or_else(|| panic!("verify accepted a token whose key is not in the JWKS"));
    assert_eq!(key.kind, alg.key_kind(), "key type and alg differ");
    let fixture_key = FixtureKey::of_kind(key.kind)
        .unwrap_or_else(|| panic!("accepted by a key kind with no fixture key"));
    if resign
        && matches!(
            alg,
            Alg::ES256 | Alg::EdDSA | Alg::RS256 | Alg::RS384 | Alg::RS512
        )
    {
        let mine = URL_SAFE_NO_PAD
            .decode(signature(fixture_key, alg_of(alg), p.signing_input))
            .unwrap_or_default();
        let theirs = decode_segment(p.signature);
        let same = mine == theirs
            || (alg == Alg::ES256 && theirs.len() == 64 && mine[..32] == theirs[..32]);
        assert!(
            same,
            "verify accepted a signature the key holder did not make"
        );
    }
    // The claims checks.
    let skew = cfg.clock_skew_s;
    assert!(
        NOW < id.exp.saturating_add(skew),
        "accepted an expired token"
    );
    assert!(id.iat.is_none_or(|i| i <= NOW + skew), "iat in the future");
    assert_eq!(
        p.claims.get("sub").and_then(Value::as_str),
        Some(id.sub.as_str())
    );
    assert!(!id.sub.is_empty());
    assert!(
        id.aud.iter().any(|a| issuer.audiences.contains(a)),
        "audience not checked"
    );
    for v in [Some(&id.sub), id.client_id.as_ref(), Some(&id.scope)]
        .into_iter()
        .flatten()
        .chain(id.claims.iter().flatten())
    {
        assert!(
            header_safe(v),
            "an identity header value is not header-safe"
        );
    }
    identity_round_trip(id);
}

// ------------------------------------------------------------------ targets

/// `jwt_parse`: the input is a token as it would arrive in a header. `parse` either refuses
/// it or returns its parts, which re-encode to the input; `verify` against the fixture JWKS
/// never panics, and accepts only signatures the key holder made.
pub fn jwt_parse(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let max = fixture().cfg.max_token_bytes;
    match jwt::parse(token, max) {
        Ok(p) => {
            assert!(token.len() <= max);
            check_parsed(token, &p);
        }
        Err(TokenError::TooLarge) => assert!(token.len() > max),
        Err(TokenError::Malformed) | Err(TokenError::ForbiddenHeader) => {}
        Err(e) => panic!("parse refused with {e:?}, which only verification may return"),
    }
    // What `verify` parses: the claims it reads, refused exactly when `parse` refuses.
    let keep = jwt::Keep::Read(&fixture().cfg.headers.claims);
    match (jwt::parse(token, max), jwt::parse_keeping(token, max, keep)) {
        (Ok(full), Ok(kept)) => {
            let want: Map<String, Value> = full
                .claims
                .into_iter()
                .filter(|(name, _)| keep.keeps(name))
                .collect();
            assert_eq!(kept.claims, want, "parse_keeping kept other claims");
            assert_eq!(
                (kept.alg_name, kept.kid, kept.typ, kept.signature_bytes),
                (full.alg_name, full.kid, full.typ, full.signature_bytes)
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "parse and parse_keeping refuse differently"),
        (a, b) => panic!(
            "parse {} and parse_keeping {}",
            if a.is_ok() { "accepted" } else { "refused" },
            if b.is_ok() { "accepted" } else { "refused" }
        ),
    }
    if let Ok(id) = verify_fixture(token) {
        check_accepted(token, &id, true);
    }
}

/// Decoded `jwt_verify` input; see [`jwt_verify`].
#[derive(Debug)]
pub struct VerifyCase {
    pub key: FixtureKey,
    pub alg: Algorithm,
    pub tamper: u8,
    pub pos: usize,
    pub token: String,
    pub tampered: Option<String>,
}

/// Decode a `jwt_verify` input: byte 0 selects the key (bits 0-1: ES256, Ed25519, RS256,
/// rogue), PS256 instead of RS256 (bit 5) and the tampering (bits 2-4); bytes 1-2 a
/// position; the rest is `header \n claims [\n other]`, signed as they are.
pub fn verify_case(data: &[u8]) -> Option<VerifyCase> {
    let (&ctl, rest) = data.split_first()?;
    let (pos, rest) = match rest {
        [a, b, tail @ ..] => (u16::from_be_bytes([*a, *b]) as usize, tail),
        _ => (0, &[][..]),
    };
    let key = FixtureKey::ALL[(ctl & 3) as usize];
    let alg = if key == FixtureKey::Rs256 && ctl & 0x20 != 0 {
        Algorithm::PS256
    } else {
        key.alg()
    };
    let tamper = (ctl >> 2) & 7;
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let other = parts.next().unwrap_or_default();
    let token = sign(key, alg, header, claims);
    let segs: Vec<&str> = token.split('.').collect();
    let sig = URL_SAFE_NO_PAD.decode(segs[2]).unwrap_or_default();
    let with_sig = |s: &[u8]| format!("{}.{}.{}", segs[0], segs[1], b64(s));
    let tampered = match tamper {
        0 => None,
        // Flip one bit of the signature.
        1 => {
            let mut s = sig.clone();
            let bit = pos % (s.len() * 8).max(1);
            if let Some(b) = s.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
            Some(with_sig(&s))
        }
        // Truncate it.
        2 => Some(with_sig(&sig[..pos % sig.len().max(1)])),
        // Prepend zero bytes (the same integer for RSA).
        3 => {
            let mut s = vec![0u8; 1 + pos % 4];
            s.extend_from_slice(&sig);
            Some(with_sig(&s))
        }
        // Other claims under the original signature.
        4 => Some(format!("{}.{}.{}", segs[0], b64(other), segs[2])),
        // Another header under the original signature.
        5 => Some(format!("{}.{}.{}", b64(other), segs[1], segs[2])),
        // Append bytes.
        6 => {
            let mut s = sig.clone();
            s.extend_from_slice(if other.is_empty() { &[0] } else { other });
            Some(with_sig(&s))
        }
        // XOR with `other`, cycled.
        _ => {
            let mut s = sig.clone();
            if !other.is_empty() {
                for (i, b) in s.iter_mut().enumerate() {
                    *b ^= other[i % other.len()];
                }
            }
            Some(with_sig(&s))
        }
    };
    Some(VerifyCase {
        key,
        alg,
        tamper,
        pos,
        token,
        tampered,
    })
}

/// `jwt_verify` (structured): the fuzzer writes a token's header and claims, which are
/// signed with a fixture key, then optionally tampered with ([`verify_case`]). Properties:
/// an accepted token passes every check `verify` promises and carries a signature the key
/// holder made; a token signed by the rogue key is never accepted; a genuine signature by
/// the key the header names is never "bad signature"; a token whose signature bytes or
/// signed parts changed after signing is never accepted.
pub fn jwt_verify(data: &[u8]) {
    let Some(case) = verify_case(data) else {
        return;
    };
    let result = verify_fixture(&case.token);
    if let Ok(p) = jwt::parse(&case.token, fixture().cfg.max_token_bytes) {
        check_parsed(&case.token, &p);
        let names_signer = p.alg_name == format!("{:?}", case.alg)
            && match &p.kid {
                Some(kid) => kid == case.key.kid(),
                None => Alg::parse(&p.alg_name)
                    .and_then(|a| fixture().keys.only_key_for(a))
                    .is_some_and(|k| k.kind == case.key.kind()),
            };
        if names_signer && case.key.in_jwks() {
            assert_ne!(
                result,
                Err(VerifyError::Token(TokenError::BadSignature)),
                "a genuine signature was refused"
            );
        }
    }
    if let Ok(id) = &result {
        assert!(
            case.key.in_jwks(),
            "a token signed by a key outside the JWKS was accepted"
        );
        // Signed here by the key the case names: genuine by construction.
        check_accepted(&case.token, id, false);
    }
    if let Some(t) = &case.tampered {
        if *t != case.token {
            let r = verify_fixture(t);
            assert!(
                r.is_err(),
                "tampering {} at {} was accepted",
                case.tamper,
                case.pos
            );
        }
    }
}

/// The key material of a JWK, normalised (big-endian integers without leading zeros).
fn material(jwk: &Value) -> Option<Vec<Vec<u8>>> {
    let dec = |k: &str| -> Option<Vec<u8>> {
        let v = URL_SAFE_NO_PAD.decode(jwk.get(k)?.as_str()?).ok()?;
        let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        Some(v[first..].to_vec())
    };
    let kty = jwk.get("kty")?.as_str()?;
    Some(match kty {
        "EC" => vec![dec("x")?, dec("y")?],
        "OKP" => vec![dec("x")?],
        "RSA" => vec![dec("n")?, dec("e")?],
        _ => return None,
    })
}

fn usable_alone(entry: &Value) -> Option<KeySet> {
    KeySet::parse(json!({ "keys": [entry] }).to_string().as_bytes()).ok()
}

fn fixture_jwk(key: FixtureKey) -> &'static Value {
    fixture().jwks["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["kid"].as_str() == Some(key.kid())))
        .unwrap_or_else(|| panic!("{key:?} is not in the fixture JWKS"))
}

/// `jwks_parse`: the input is a JWKS document. `KeySet::parse` accounts for every entry
/// (usable + skipped = entries), never takes a document without a usable key, keeps keys
/// consistent with their `alg`; and a fixture token verifies against the set only if the
/// key it selects (by `kid`, or the only key of its type) is the fixture's own key.
pub fn jwks_parse(data: &[u8]) {
    let parsed = KeySet::parse(data);
    let doc: Option<Value> = serde_json::from_slice(data).ok();
    let entries = doc
        .as_ref()
        .and_then(|d| d.get("keys"))
        .and_then(Value::as_array);
    let set = match (parsed, entries) {
        (Ok(set), Some(list)) => {
            assert!(!set.keys.is_empty());
            assert_eq!(set.keys.len() + set.skipped, list.len());
            for k in &set.keys {
                assert!(k.alg.is_none_or(|a| a.key_kind() == k.kind));
                if let Some(kid) = &k.kid {
                    assert!(set.by_kid(kid).is_some());
                }
            }
            set
        }
        (Ok(_), None) => panic!("a document without a keys array was taken"),
        (Err(JwksError::NoUsableKey(n)), Some(list)) => {
            assert_eq!(n, list.len());
            return;
        }
        (Err(JwksError::NoUsableKey(_)), None) => panic!("no keys array, yet NoUsableKey"),
        (Err(JwksError::NotAJwks), Some(_)) => panic!("a keys array, yet NotAJwks"),
        (Err(JwksError::NotAJwks), None) => return,
    };
    let list = entries.map(Vec::as_slice).unwrap_or_default();
    let f = fixture();
    for (key, with_kid, token) in &f.tokens {
        let Ok(id) = jwt::verify(token, &f.cfg, &mut Fixed(&set), NOW) else {
            continue;
        };
        identity_round_trip(&id);
        let want = material(fixture_jwk(*key));
        let chosen: Vec<&Value> = if *with_kid {
            list.iter()
                .filter(|e| e.get("kid").and_then(Value::as_str) == Some(key.kid()))
                .filter(|e| usable_alone(e).is_some())
                .take(1)
                .collect()
        } else {
            list.iter()
                .filter(|e| {
                    usable_alone(e).is_some_and(|s| {
                        s.keys[0].kind == KeyKind::P256
                            && s.keys[0].alg.is_none_or(|a| a == Alg::ES256)
                    })
                })
                .collect()
        };
        assert_eq!(
            chosen.len(),
            1,
            "accepted without exactly one candidate key"
        );
        assert_eq!(
            material(chosen[0]),
            want,
            "a {key:?} token verified against another key"
        );
    }
}

fn total_slots(cfg: &Config) -> u64 {
    let mut n = 0u64;
    for r in &cfg.rules {
        if let Some(l) = &r.rate_limit {
            n += u64::from(l.limit.slots);
            if let Some(g) = &l.global {
                n += u64::from(g.slots);
            }
        }
    }
    if let Some(x) = &cfg.introspection {
        n += u64::from(x.settings.slots);
    }
    n
}

/// `config_parse`: the input is a filter configuration. A configuration that parses is
/// validated: parsing is deterministic, issuers are unique and found by their URL, the
/// header lists are normalised, what needs `auth_server` has it, the client secret appears
/// in no debug output; and it runs: a worker built from it answers requests (with and
/// without a fixture token) and ticks without panicking, and forwards only the configured
/// identity headers.
pub fn config_parse(data: &[u8]) {
    let Ok(cfg) = Config::from_json(data) else {
        return;
    };
    let again = Config::from_json(data)
        .unwrap_or_else(|e| panic!("the same configuration parsed, then not: {e}"));
    let shown = format!("{cfg:?}");
    assert_eq!(shown, format!("{again:?}"), "parsing is not deterministic");
    assert!(!cfg.issuers.is_empty() && !cfg.token_sources.is_empty());
    for (i, iss) in cfg.issuers.iter().enumerate() {
        assert_eq!(cfg.issuer(&iss.issuer).map(|(j, _)| j), Some(i));
        assert!(!iss.audiences.is_empty() && !iss.algorithms.is_empty());
        assert!(iss.jwks.path.starts_with('/'));
    }
    let h = &cfg.headers;
    let mut sorted = h.remove.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, h.remove, "headers.remove is not sorted and unique");
    let identity: Vec<String> = [&h.sub, &h.client_id, &h.scope, &h.iss]
        .into_iter()
        .chain(h.claims.iter().map(|(_, n)| n))
        .cloned()
        .collect();
    for name in &identity {
        assert!(h.remove.binary_search(name).is_ok(), "{name} not removed");
        assert!(!name.is_empty() && name.bytes().all(|b| !b.is_ascii_uppercase()));
    }
    assert_eq!(
        identity.iter().collect::<BTreeSet<_>>().len(),
        identity.len()
    );
    if cfg.revocation.is_some() || cfg.introspection.is_some() {
        assert!(cfg.auth_server.is_some());
    }
    if cfg
        .rules
        .iter()
        .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.global.is_some()))
    {
        assert!(cfg.auth_server.is_some());
    }
    if let Some(secret) = serde_json::from_slice::<Value>(data).ok().and_then(|v| {
        v["auth_server"]["client_secret"]
            .as_str()
            .map(str::to_string)
    }) {
        let text = String::from_utf8_lossy(data).to_ascii_lowercase();
        let lower = secret.to_ascii_lowercase();
        let elsewhere = text.matches(lower.as_str()).count() > 1;
        let hexish = secret.bytes().all(|b| b.is_ascii_hexdigit());
        if secret.len() >= 8 && !elsewhere && !hexish {
            assert!(
                !shown.contains(&secret),
                "the client secret is in Debug output"
            );
        }
    }
    // It runs (slot tables are allocated in full at start: skip the huge ones).
    if total_slots(&cfg) > 4096 {
        return;
    }
    let host = MemoryHost::new(NOW * 1000);
    for iss in &cfg.issuers {
        let _ = host.shared_set(
            &jwks::doc_key(iss),
            &jwks::encode_doc(NOW * 1000, JWKS),
            None,
        );
    }
    let mut worker = Worker::new(cfg);
    worker.init_shared(&host);
    let token = good_token(FixtureKey::Es256);
    let bearer = format!("Bearer {token}");
    let requests: [(&str, &str, Option<&str>); 4] = [
        ("GET", "/", None),
        ("GET", "/api/items?access_token=abc", Some(bearer.as_str())),
        ("POST", "/public/x", Some("Bearer not.a.token")),
        ("DELETE", "/admin", Some(bearer.as_str())),
    ];
    for (method, path, auth) in requests {
        let mut headers = vec![
            (":method".to_string(), method.to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "api.fuzz.test".to_string()),
            (
                "x-forwarded-for".to_string(),
                "10.1.2.3, 10.0.0.1".to_string(),
            ),
            ("cookie".to_string(), format!("session={token}")),
        ];
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), a.to_string()));
        }
        let mut req = Request::from_headers(headers);
        req.source = "127.0.0.1:40000".into();
        if let Outcome::Allow { set, .. } = worker.on_request(&host, &req) {
            for (name, value) in set.iter() {
                assert!(identity.contains(name), "forwarded header {name}");
                assert!(header_safe(value));
            }
        }
        host.advance_ms(250);
        let _ = worker.tick(&host);
    }
}

/// `revocation_feed`: byte 0 sets the bucket count, the rest is up to 8 feed answers
/// separated by NUL bytes, polled and applied in turn. Properties, against a model: after
/// each answer exactly the `jti`s the pages revoked (and not expired) are revoked, a resync
/// replaces the set, the stored cursor is the last accepted page's (a refused page never
/// moves it), and the next poll asks `since` that cursor.
pub fn revocation_feed(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let s = revocation::Settings {
        namespace: "fz".into(),
        path: "/edge/revocations".into(),
        buckets: 1 + u32::from(b & 15),
        poll_interval_ms: 1000,
        lease_ms: 5000,
        long_poll_wait_s: 0,
        call_timeout_ms: 1000,
    };
    let host = MemoryHost::new(NOW * 1000);
    let mut model: HashMap<String, u64> = HashMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for (i, body) in rest.split(|x| *x == 0).take(8).enumerate() {
        let now_ms = NOW * 1000 + i as u64 * 2000;
        let now = now_ms / 1000;
        host.now_ms.set(now_ms);
        let want = match &cursor {
            Some(c) => format!("/edge/revocations?since={c}"),
            None => "/edge/revocations".to_string(),
        };
        assert_eq!(
            revocation::plan_poll(&host, &s, 1, now_ms).as_deref(),
            Some(want.as_str())
        );
        let parsed = revocation::parse_page(body);
        let applied = revocation::on_poll_answer(&host, &s, 1, Some(body), now_ms);
        match parsed {
            Ok(page) => {
                assert!(!page.cursor.is_empty() && page.cursor.len() <= 64);
                assert!(page.cursor.bytes().all(|c| c.is_ascii_graphic()));
                let a = applied.unwrap_or_else(|e| panic!("a valid page was not applied: {e}"));
                assert!(a.added <= page.revocations.len() as u64);
                if page.resync {
                    model.clear();
                }
                for e in &page.revocations {
                    assert!(!e.jti.is_empty() && e.jti.len() <= 256);
                    seen.insert(e.jti.clone());
                    // Kept until exp + the largest clock skew.
                    if e.exp.saturating_add(revocation::RETAIN_AFTER_EXP_S) > now {
                        let x = model.entry(e.jti.clone()).or_insert(0);
                        *x = (*x).max(e.exp);
                    }
                }
                cursor = Some(page.cursor);
            }
            Err(_) => {
                assert!(applied.is_err(), "a refused page was applied");
                // As the engine does: the same poller retries after one interval.
                revocation::on_poll_failed(&host, &s, 1, now_ms);
            }
        }
        assert_eq!(revocation::state(&host, &s).cursor, cursor);
        for jti in &seen {
            let want = model
                .get(jti)
                .is_some_and(|e| e.saturating_add(revocation::RETAIN_AFTER_EXP_S) > now);
            assert_eq!(
                revocation::is_revoked(&host, &s, jti, now),
                want,
                "jti {jti:?}"
            );
        }
    }
}

/// `introspection_answer`: the input is an RFC 7662 answer. An answer accepted with the
/// gateway's expectations (issuer, audience) is accepted, identically, without them; an
/// active identity has `exp` in the future and header-safe values, round-trips through its
/// binary encoding and through the shared introspection cache.
pub fn introspection_answer(data: &[u8]) {
    let claims = vec!["tenant".to_string(), "jti".to_string()];
    let auds = vec![AUDIENCE.to_string()];
    let expect = introspection::Expect {
        iss: Some(ISSUER),
        audiences: &auds,
    };
    let strict = introspection::parse_answer_for(data, 3, &claims, NOW, expect);
    let loose = introspection::parse_answer(data, 3, &claims, NOW);
    if let Ok(Some(a)) = &strict {
        assert_eq!(loose.as_ref().ok().and_then(|x| x.as_ref()), Some(a));
        assert!(a.aud.is_empty() || a.aud.iter().any(|x| x == AUDIENCE));
    }
    if loose.is_err() {
        assert!(!matches!(strict, Ok(Some(_))));
    }
    let Ok(Some(id)) = loose else { return };
    assert!(id.exp > NOW, "an expired answer was taken as active");
    assert_eq!(id.claims.len(), claims.len());
    for v in [Some(&id.sub), id.client_id.as_ref(), Some(&id.scope)]
        .into_iter()
        .chain([id.jti.as_ref()])
        .flatten()
        .chain(id.claims.iter().flatten())
    {
        assert!(header_safe(v), "a forwarded value is not header-safe");
    }
    identity_round_trip(&id);
    let host = MemoryHost::new(NOW * 1000);
    let s = introspection::Settings {
        namespace: "fz".into(),
        slots: 8,
        max_ttl_s: 60,
        negative_ttl_s: 5,
        pending_ms: 2000,
    };
    let h = cache::hash_token("opaque-token");
    introspection::init_slots(&host, &s);
    if introspection::store(&host, &s, &h, Some(&id), NOW * 1000).is_ok() {
        let until = id.exp.saturating_mul(1000).min(NOW * 1000 + 60_000);
        assert_eq!(
            introspection::lookup(&host, &s, &h, NOW * 1000),
            introspection::State::Active(Box::new(id), until)
        );
    }
}

/// `lease_answer`: the input is the auth server's answer to a lease call. After it, the
/// gateway holds at most `lease` requests (what was granted, capped by what it asked for),
/// never past the policy window, and exactly that many requests are then allowed.
pub fn lease_answer(data: &[u8]) {
    let Ok(a) = lease::parse_answer(data) else {
        return;
    };
    let p = lease::Policy {
        namespace: "fz".into(),
        name: "fz".into(),
        slots: 4,
        requests: 100,
        window_s: 60,
        lease: 8,
        fail_mode: LeaseFailMode::Local,
    };
    let host = MemoryHost::new(NOW * 1000);
    lease::init_slots(&host, &p);
    let h = lease::key_hash("client-1");
    let want = lease::claim(&host, &p, &h, 1000)
        .unwrap_or_else(|| panic!("a key without a lease did not claim one"));
    assert_eq!(want, p.lease);
    lease::on_answer(&host, &p, &h, NOW * 1000, want, &a);
    let rec = lease::record(&host, &p, &h);
    assert_eq!(rec.left, a.granted.min(want));
    assert!(rec.left <= p.lease);
    assert!(rec.window_end_ms <= NOW * 1000 + p.window_s * 1000);
    let spendable = if NOW * 1000 < rec.window_end_ms {
        rec.left
    } else {
        0
    };
    for _ in 0..spendable {
        assert!(matches!(
            lease::spend(&host, &p, &h),
            Ok(lease::Spend::Allowed { .. })
        ));
    }
    assert!(!matches!(
        lease::spend(&host, &p, &h),
        Ok(lease::Spend::Allowed { .. })
    ));
}

// ------------------------------------------------------------------ seeds

/// A structured seed: name, control byte, header, claims, other.
type VerifySeed<'a> = (&'a str, u8, Value, &'a Value, Option<&'a [u8]>);

fn verify_seed(ctl: u8, header: &Value, claims: &Value, other: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![ctl, 0, 7];
    v.extend_from_slice(header.to_string().as_bytes());
    v.push(b'\n');
    v.extend_from_slice(claims.to_string().as_bytes());
    if let Some(o) = other {
        v.push(b'\n');
        v.extend_from_slice(o);
    }
    v
}

/// The seeds made from the fixture keys (tokens, structured verification cases, the
/// JWKS): `(target, file name, content)`. `tests/fuzz_corpus.rs` checks that the corpus
/// holds them (`FUZZ_WRITE_SEEDS=1` writes them).
pub fn generated_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for key in FixtureKey::ALL {
        let name = format!("token-{key:?}.jwt").to_lowercase();
        out.push(("jwt_parse", name, good_token(key).into_bytes()));
    }
    let no_kid = sign(
        FixtureKey::Es256,
        Algorithm::ES256,
        br#"{"alg":"ES256","typ":"at+jwt"}"#,
        good_claims().to_string().as_bytes(),
    );
    out.push((
        "jwt_parse",
        "token-es256-no-kid.jwt".into(),
        no_kid.into_bytes(),
    ));
    let claims = good_claims();
    let mut plain = good_claims();
    plain["iss"] = json!(ISSUER_PLAIN);
    plain["aud"] = json!(["elsewhere", AUDIENCE]);
    plain["scope"] = json!(["api:read", "api:write"]);
    let mut forged = good_claims();
    forged["scope"] = json!("admin");
    let forged = forged.to_string().into_bytes();
    let cases: [VerifySeed<'_>; 14] = [
        (
            "valid-es256",
            0,
            good_header(FixtureKey::Es256),
            &claims,
            None,
        ),
        (
            "valid-ed25519",
            1,
            good_header(FixtureKey::Ed25519),
            &claims,
            None,
        ),
        (
            "valid-rs256",
            2,
            good_header(FixtureKey::Rs256),
            &claims,
            None,
        ),
        (
            "valid-ps256",
            2 | 0x20,
            json!({"alg": "PS256", "typ": "application/at+jwt", "kid": "fixture-rs256"}),
            &claims,
            None,
        ),
        (
            "valid-plain-issuer",
            1,
            json!({"alg": "EdDSA"}),
            &plain,
            None,
        ),
        (
            "rogue-key",
            3,
            good_header(FixtureKey::Rogue),
            &claims,
            None,
        ),
        (
            "flip-bit",
            1 << 2,
            good_header(FixtureKey::Es256),
            &claims,
            None,
        ),
        (
            "truncate",
            (2 << 2) | 1,
            good_header(FixtureKey::Ed25519),
            &claims,
            None,
        ),
        (
            "prepend-zero",
            (3 << 2) | 2,
            good_header(FixtureKey::Rs256),
            &claims,
            None,
        ),
        (
            "swap-claims",
            4 << 2,
            good_header(FixtureKey::Es256),
            &claims,
            Some(&forged),
        ),
        (
            "swap-header",
            (5 << 2) | 2,
            good_header(FixtureKey::Rs256),
            &claims,
            Some(br#"{"alg":"PS256","typ":"at+jwt","kid":"fixture-rs256"}"#),
        ),
        (
            "append",
            (6 << 2) | 1,
            good_header(FixtureKey::Ed25519),
            &claims,
            None,
        ),
        (
            "xor",
            7 << 2,
            good_header(FixtureKey::Es256),
            &claims,
            Some(&[0, 0, 0, 1]),
        ),
        (
            "hs256-confusion",
            2,
            json!({"alg": "HS256", "typ": "at+jwt", "kid": "fixture-rs256"}),
            &claims,
            None,
        ),
    ];
    for (name, ctl, header, claims, other) in cases {
        out.push((
            "jwt_verify",
            format!("{name}.bin"),
            verify_seed(ctl, &header, claims, other),
        ));
    }
    out.push(("jwks_parse", "fixture.json".into(), JWKS.to_vec()));
    out
}
