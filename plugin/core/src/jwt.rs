//! JWT (JWS compact serialization) parsing and verification.
//!
//! Only asymmetric algorithms exist here: `none` and `HS*` cannot even be named in the
//! configuration, and a token header carrying `jku`, `jwk`, `x5u`, `x5c` or `crit` is refused
//! before any key is looked at, so a key is never taken from the token itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{normalize_typ, Config};
use crate::error::TokenError;
use crate::identity::{header_safe, Identity};
use crate::jwks::{Key, KeyKind, KeySet};
use crate::rsassa::{Hash, Scheme};

/// An accepted signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Alg {
    /// The list used when an issuer does not set `algorithms`.
    pub const DEFAULT_ALLOWED: [Alg; 7] = [
        Alg::ES256,
        Alg::ES384,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::EdDSA,
    ];

    /// Parse an `alg` value; `none` and every `HS*` are not algorithms here.
    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    /// The RSA signature scheme of an `RS*` or `PS*` algorithm.
    pub fn rsa_scheme(self) -> Option<Scheme> {
        Some(match self {
            Alg::RS256 => Scheme::Pkcs1(Hash::Sha256),
            Alg::RS384 => Scheme::Pkcs1(Hash::Sha384),
            Alg::RS512 => Scheme::Pkcs1(Hash::Sha512),
            Alg::PS256 => Scheme::Pss(Hash::Sha256),
            Alg::PS384 => Scheme::Pss(Hash::Sha384),
            Alg::PS512 => Scheme::Pss(Hash::Sha512),
            Alg::ES256 | Alg::ES384 | Alg::EdDSA => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
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

    /// The key type this algorithm needs.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Alg::ES256 => KeyKind::P256,
            Alg::ES384 => KeyKind::P384,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyKind::Rsa
            }
            Alg::EdDSA => KeyKind::Ed25519,
        }
    }
}

/// Header parameters that would make us trust key material named by the token.
const FORBIDDEN_HEADER_KEYS: [&str; 5] = ["jku", "jwk", "x5u", "x5c", "crit"];
/// Upper bound on the decoded JOSE header.
const MAX_HEADER_BYTES: usize = 2048;

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg_name: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The claims object's members: all of them ([`parse`]), or those a [`Keep`] names.
    pub claims: Map<String, Value>,
    pub signing_input: &'a str,
    pub signature: &'a str,
    /// `signature`, decoded (once: the verifiers take these bytes).
    pub signature_bytes: Vec<u8>,
}

/// base64url's alphabet, one table load per byte in [`looks_like_jwt`] (under node's
/// profiler the per-byte range tests took ≈ 1.5 µs of a 1.2 KB token's cache miss; the
/// table check does not show up on its own).
const B64URL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        i += 1;
    }
    t
};

/// A non-empty run of base64url characters.
fn b64url_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| B64URL[usize::from(b)])
}

/// Whether the string has the shape of a JWS compact token (three base64url segments).
pub fn looks_like_jwt(token: &str) -> bool {
    let (mut dots, mut segment) = (0, 0usize);
    for &b in token.as_bytes() {
        if b == b'.' {
            if segment == 0 || dots == 2 {
                return false;
            }
            dots += 1;
            segment = 0;
        } else if B64URL[usize::from(b)] {
            segment += 1;
        } else {
            return false;
        }
    }
    dots == 2 && segment > 0
}

/// The claims [`verify`] reads from every token (besides the configured claim headers').
pub const READ_CLAIMS: [&str; 10] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "cnf",
];

/// Which members of the claims object [`parse_keeping`] keeps in [`Parsed::claims`].
#[derive(Debug, Clone, Copy)]
pub enum Keep<'c> {
    /// Every member.
    All,
    /// [`READ_CLAIMS`] and these configured claims (`Config.headers.claims`' names).
    Read(&'c [(String, String)]),
}

impl Keep<'_> {
    /// Whether the member `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            Keep::All => true,
            Keep::Read(extra) => {
                READ_CLAIMS.contains(&name) || extra.iter().any(|(c, _)| c == name)
            }
        }
    }
}

/// A member name, borrowed from the payload when it has no escapes.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, parsed in full (strings decoded and checked, numbers read, nesting
/// limited) as `Value` would be, but not kept: nothing is allocated for it.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> serde::de::Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Skip, A::Error> {
        while a.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Skip, A::Error> {
        while a.next_entry::<Name<'de>, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// The claims object, keeping the members `keep` names.
struct ClaimsObject<'c>(Keep<'c>);

impl<'de> serde::de::DeserializeSeed<'de> for ClaimsObject<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ClaimsObject<'_> {
    type Value = Map<String, Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(Name(name)) = a.next_key::<Name<'de>>()? {
            if self.0.keeps(&name) {
                let v: Value = a.next_value()?;
                out.insert(name.into_owned(), v);
            } else {
                a.next_value::<Skip>()?;
            }
        }
        Ok(out)
    }
}

/// Split and decode a compact JWS. No key is used and nothing is trusted yet.
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, TokenError> {
    parse_keeping(token, max_bytes, Keep::All)
}

/// [`parse`], keeping only the claims `keep` names. The whole payload is parsed either way:
/// what one refuses the other refuses.
pub fn parse_keeping<'t>(
    token: &'t str,
    max_bytes: usize,
    keep: Keep<'_>,
) -> Result<Parsed<'t>, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    if !looks_like_jwt(token) {
        return Err(TokenError::Malformed);
    }
    let last_dot = token.rfind('.').ok_or(TokenError::Malformed)?;
    let signing_input = &token[..last_dot];
    let signature = &token[last_dot + 1..];
    let (h64, p64) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    if h64.len() > MAX_HEADER_BYTES * 4 / 3 + 4 {
        return Err(TokenError::Malformed);
    }
    let hbytes = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| TokenError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&hbytes).map_err(|_| TokenError::Malformed)?;
    if FORBIDDEN_HEADER_KEYS
        .iter()
        .any(|k| header.contains_key(*k))
    {
        return Err(TokenError::ForbiddenHeader);
    }
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(TokenError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let pbytes = URL_SAFE_NO_PAD
        .decode(p64)
        .map_err(|_| TokenError::Malformed)?;
    let claims = {
        use serde::de::DeserializeSeed as _;
        let mut de = serde_json::Deserializer::from_slice(&pbytes);
        let claims = ClaimsObject(keep)
            .deserialize(&mut de)
            .map_err(|_| TokenError::Malformed)?;
        de.end().map_err(|_| TokenError::Malformed)?;
        claims
    };
    // The signature must be decodable too (checked here so that a garbage signature is
    // "malformed", not "bad signature").
    let signature_bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    Ok(Parsed {
        alg_name,
        kid,
        typ,
        claims,
        signing_input,
        signature,
        signature_bytes,
    })
}

/// Why verification did not produce an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The token is refused.
    Token(TokenError),
    /// The issuer is known but its JWKS has never been loaded on this host.
    NoJwks { issuer: usize },
    /// The `kid` is not in the issuer's current JWKS: the caller may ask for a refresh.
    UnknownKid { issuer: usize },
}

impl From<TokenError> for VerifyError {
    fn from(e: TokenError) -> Self {
        VerifyError::Token(e)
    }
}

/// Access to the parsed key sets, by issuer index; `None` = never loaded.
pub trait KeySource {
    fn key_set(&mut self, issuer: usize) -> Option<&KeySet>;
}

fn numeric_date(v: Option<&Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64() {
                if f.is_finite() && (0.0..1.0e15).contains(&f) {
                    Ok(Some(f.floor() as u64))
                } else {
                    Err(TokenError::MissingClaim(name))
                }
            } else {
                Err(TokenError::MissingClaim(name))
            }
        }
        Some(_) => Err(TokenError::MissingClaim(name)),
    }
}

fn opt_string(v: Option<&Value>, name: &'static str) -> Result<Option<String>, TokenError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::MissingClaim(name)),
    }
}

/// Render a claim value for a header: strings as they are, anything else as JSON.
pub fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Verify a token completely: header, issuer, algorithm, key, signature, then claims.
/// `now` is Unix seconds.
pub fn verify(
    token: &str,
    cfg: &Config,
    keys: &mut dyn KeySource,
    now: u64,
) -> Result<Identity, VerifyError> {
    verify_with_digest(token, cfg, keys, now, None)
}

/// [`verify`], given SHA-256 of the token's signing input (everything before its last
/// `.`) when the caller has it: [`crate::cache::hash_token_and_input`] gets it in the same
/// pass as the token's cache hash, and RS256 and ES256 then need no second pass over the
/// token. `input_sha256` must be that digest of this `token`.
pub fn verify_with_digest(
    token: &str,
    cfg: &Config,
    keys: &mut dyn KeySource,
    now: u64,
    input_sha256: Option<&[u8; 32]>,
) -> Result<Identity, VerifyError> {
    let p = parse_keeping(token, cfg.max_token_bytes, Keep::Read(&cfg.headers.claims))?;
    let alg = Alg::parse(&p.alg_name).ok_or(TokenError::AlgorithmNotAllowed)?;
    let iss = match read(&p.claims, "iss") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(TokenError::MissingClaim("iss").into()),
    };
    let (idx, issuer) = cfg.issuer(iss).ok_or(TokenError::UnknownIssuer)?;
    if !issuer.algorithms.contains(&alg) {
        return Err(TokenError::AlgorithmNotAllowed.into());
    }
    if let Some(want) = &issuer.typ {
        match &p.typ {
            Some(t) if normalize_typ(t) == *want => {}
            _ => return Err(TokenError::WrongType.into()),
        }
    }
    let set = keys
        .key_set(idx)
        .ok_or(VerifyError::NoJwks { issuer: idx })?;
    let key = match &p.kid {
        Some(kid) => match set.by_kid(kid) {
            Some(k) => k,
            None => return Err(VerifyError::UnknownKid { issuer: idx }),
        },
        None => set.only_key_for(alg).ok_or(TokenError::UnknownKey)?,
    };
    if key.kind != alg.key_kind() || key.alg.is_some_and(|a| a != alg) {
        // A kid naming a key of another type (e.g. an RSA kid in an ES256 token).
        return Err(TokenError::AlgorithmNotAllowed.into());
    }
    if !check_signature(&p, input_sha256, key, alg) {
        return Err(TokenError::BadSignature.into());
    }
    claims_to_identity(&p.claims, cfg, idx, now)
}

fn check_signature(p: &Parsed<'_>, input_sha256: Option<&[u8; 32]>, key: &Key, alg: Alg) -> bool {
    let (input, sig) = (p.signing_input.as_bytes(), p.signature_bytes.as_slice());
    // ES256, RS256 and PS256 sign SHA-256 of the input, which the caller may have already.
    let sha256 = || input_sha256.map_or_else(|| Sha256::digest(input).into(), |d| *d);
    if let (Alg::ES256, Some(pk)) = (alg, &key.p256) {
        // Several times faster than the generic path in Wasm (see crate::es256).
        return crate::es256::verify_digest(pk, &sha256(), sig);
    }
    if let (Alg::ES384, Some(pk)) = (alg, &key.p384) {
        // The same design on P-384, where the generic path is slower still (see crate::es384).
        return crate::es384::verify(pk, input, sig);
    }
    if let (Some(scheme), Some(pk)) = (alg.rsa_scheme(), &key.rsa) {
        // Carry-free Montgomery columns, four products per Wasm SIMD step (see crate::rsassa).
        let digest = match scheme.hash() {
            Hash::Sha256 => sha256().to_vec(),
            h => h.digest(&[input]),
        };
        return crate::rsassa::verify_digest(pk, scheme, &digest, sig);
    }
    if let (Alg::EdDSA, Some(pk)) = (alg, &key.ed25519) {
        // A table per key instead of 253 doublings per signature (see crate::eddsa).
        return crate::eddsa::verify(pk, input, sig);
    }
    matches!(
        jsonwebtoken::crypto::verify(p.signature, input, &key.decoding, alg.jwt()),
        Ok(true)
    )
}

/// A claim [`verify`] reads; it must be one of [`READ_CLAIMS`], the claims
/// [`parse_keeping`] keeps for it (checked in debug builds, so a test reading a new claim
/// fails until it is added there).
fn read<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    debug_assert!(READ_CLAIMS.contains(&name), "{name} is not in READ_CLAIMS");
    claims.get(name)
}

/// Validate the time and audience claims and build the identity.
pub fn claims_to_identity(
    claims: &Map<String, Value>,
    cfg: &Config,
    issuer_idx: usize,
    now: u64,
) -> Result<Identity, VerifyError> {
    let issuer = &cfg.issuers[issuer_idx.min(cfg.issuers.len().saturating_sub(1))];
    let skew = cfg.clock_skew_s;
    let exp = numeric_date(read(claims, "exp"), "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired.into());
    }
    if let Some(nbf) = numeric_date(read(claims, "nbf"), "nbf")? {
        if nbf > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid.into());
        }
    }
    let iat = numeric_date(read(claims, "iat"), "iat")?;
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(TokenError::IssuedInFuture.into());
        }
    }
    let aud: Vec<String> = match read(claims, "aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for v in a {
                match v {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(TokenError::MissingClaim("aud").into()),
                }
            }
            out
        }
        _ => return Err(TokenError::MissingClaim("aud").into()),
    };
    if !aud.iter().any(|a| issuer.audiences.contains(a)) {
        return Err(TokenError::WrongAudience.into());
    }
    let sub = opt_string(read(claims, "sub"), "sub")?
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::MissingClaim("sub"))?;
    let client_id = opt_string(read(claims, "client_id"), "client_id")?;
    let scope = match read(claims, "scope") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => {
            let mut parts = Vec::with_capacity(a.len());
            for v in a {
                match v {
                    Value::String(s) => parts.push(s.as_str()),
                    _ => return Err(TokenError::MissingClaim("scope").into()),
                }
            }
            parts.join(" ")
        }
        Some(_) => return Err(TokenError::MissingClaim("scope").into()),
    };
    let jti = opt_string(read(claims, "jti"), "jti")?;
    let cnf_jkt = cnf_jkt(read(claims, "cnf"))?;
    let cnf_x5t = cnf_x5t(read(claims, "cnf"))?;
    let mut extra = Vec::with_capacity(cfg.headers.claims.len());
    for (claim, _) in &cfg.headers.claims {
        let v = claims.get(claim).filter(|v| !v.is_null()).map(claim_text);
        if let Some(text) = &v {
            if !header_safe(text) {
                return Err(TokenError::UnsafeClaim(claim.clone()).into());
            }
        }
        extra.push(v);
    }
    for (name, v) in [
        ("sub", Some(&sub)),
        ("client_id", client_id.as_ref()),
        ("scope", Some(&scope)),
    ] {
        if let Some(v) = v {
            if !header_safe(v) {
                return Err(TokenError::UnsafeClaim(name.to_string()).into());
            }
        }
    }
    Ok(Identity {
        issuer: issuer_idx as u16,
        sub,
        client_id,
        scope,
        aud,
        jti,
        exp,
        iat,
        claims: extra,
        cnf_jkt,
        cnf_x5t,
    })
}

/// The `cnf.x5t#S256` of a token (RFC 8705 §3.1): `None` without `cnf` or without it; a
/// `cnf` that is not an object, or a value that is not a base64url SHA-256 (43
/// characters), makes the token malformed.
pub fn cnf_x5t(cnf: Option<&Value>) -> Result<Option<String>, TokenError> {
    match cnf {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => match o.get("x5t#S256") {
            None => Ok(None),
            Some(Value::String(t)) if t.len() == 43 && b64url_segment(t) => Ok(Some(t.clone())),
            Some(_) => Err(TokenError::MissingClaim("cnf")),
        },
        Some(_) => Err(TokenError::MissingClaim("cnf")),
    }
}

/// The `cnf.jkt` of a token (RFC 9449 §6.1): `None` without `cnf` or without `jkt` in it
/// (another confirmation method); a `cnf` that is not an object, or a `jkt` that is not a
/// base64url SHA-256 (43 characters), makes the token malformed.
pub fn cnf_jkt(cnf: Option<&Value>) -> Result<Option<String>, TokenError> {
    match cnf {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => match o.get("jkt") {
            None => Ok(None),
            Some(Value::String(j)) if j.len() == 43 && b64url_segment(j) => Ok(Some(j.clone())),
            Some(_) => Err(TokenError::MissingClaim("cnf")),
        },
        Some(_) => Err(TokenError::MissingClaim("cnf")),
    }
}
