//! Stage `dpop`: proof of possession (RFC 9449). A token whose verified claims carry
//! `cnf.jkt` is accepted only as `Authorization: DPoP <token>` with one valid `DPoP` proof
//! header; a token without `cnf.jkt` is refused with the `DPoP` scheme, and on a rule with
//! `require: sender_constrained`. Everything else (no `cnf.jkt`, Bearer scheme, no
//! requirement: the common case) passes on one claim check.
//!
//! A proof is checked in this order, each failure a `401` with
//! `WWW-Authenticate: DPoP error="invalid_dpop_proof", algs="ES256"` and its own counter
//! (`tollgate_denied_dpop_<reason>`): size (`dpop.max_proof_bytes`), shape (three base64url
//! parts, JSON header and claims, no `crit`), `typ` = `dpop+jwt`, `alg` = `ES256` (the
//! only algorithm the filter verifies proofs with; `none`/`HS*`/others refused), a public
//! P-256 `jwk` (any private member refused), its RFC 7638 thumbprint = `cnf.jkt`
//! (constant time), `htm` = the method, `htu` = the URI the client addressed (scheme from
//! `:scheme` or `dpop.scheme_header`, authority from `:authority`, the path without query
//! and fragment; scheme and host case-insensitive, default ports ignored), `iat` within
//! `dpop.iat_window_s` of now (both ways), `ath` = base64url(SHA-256(token)) (constant
//! time), `jti` of 1..=128 bytes, the signature by the `jwk`, and last the `jti` not seen
//! before (the replay set below).
//!
//! ## The replay set
//!
//! Shared data (every worker of the Envoy), `dpop.replay_shards` keys
//! `tollgate/dpop/<shards>/<n>`, each a list of at most `dpop.replay_entries_per_shard`
//! entries of 20 bytes: the first 16 bytes of SHA-256(`cnf.jkt` ‖ 0 ‖ `jti`) and the Unix
//! second the entry expires (the proof's `iat` + `iat_window_s` + 1: after that the proof
//! itself is refused for its `iat`). A proof's shard is read, expired entries dropped, its
//! entry looked for (found: a replay) and appended, and the shard written back with the
//! compare-and-swap counter of the read (a lost race retries, at most 4 times). Memory is
//! bounded by `shards × entries × 20` bytes of values (defaults: 1024 × 64 × 20 B =
//! 1.25 MiB) whatever arrives. A shard full of live entries does not evict one: a proof
//! landing there is refused (`503`, `tollgate_denied_dpop_replay_full`) rather than
//! accepted without a replay check, since evicting a live entry would let that proof be
//! replayed within its window. So the set fails closed under a flood, at the price that
//! a client with a valid bound token can exhaust it; size it for the peak proof rate
//! (entries live ≈ `iat_window_s`).

use std::ops::ControlFlow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{normalize_typ, Dpop};
use crate::engine::{Outcome, Request, Worker};
use crate::es256;
use crate::host::{Host, SharedError};
use crate::metrics::Metric;
use crate::reject;
use crate::rules;

use super::{Ctx, Step};

/// Longest accepted proof `jti`.
const MAX_JTI_BYTES: usize = 128;
/// Bytes of one replay-set entry: 16 bytes of hash, 4 of expiry.
const ENTRY: usize = 20;
/// JWK members that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// Passes a request whose token is not DPoP-bound and that needs no binding; else demands
/// the `DPoP` scheme and a valid, unreplayed proof.
pub(crate) fn run(cx: &mut Ctx<'_>, w: &mut Worker, host: &dyn Host) -> Step {
    let Some(v) = cx.verified.as_deref() else {
        return ControlFlow::Continue(());
    };
    let jkt = v.identity.cnf_jkt.as_deref();
    // A certificate-bound token (RFC 8705) is sender-constrained too: the `mtls` stage has
    // checked its certificate.
    let constrained_elsewhere = v.identity.cnf_x5t.is_some();
    if jkt.is_none()
        && !cx.dpop
        && (constrained_elsewhere || !rules::policy(&w.cfg, cx.rule).sender_constrained)
    {
        return ControlFlow::Continue(());
    }
    let realm = &w.cfg.realm;
    let refuse = |error: &'static str, description: &str, reason: &'static str| {
        host.metric(Metric::Denied(reason), 1);
        ControlFlow::Break(Outcome::Reject(reject::dpop(
            realm,
            error,
            description,
            reason,
        )))
    };
    let Some(jkt) = jkt else {
        if cx.dpop {
            return refuse(
                "invalid_token",
                "the token is not DPoP-bound",
                "dpop_unbound",
            );
        }
        return refuse(
            "invalid_token",
            "a sender-constrained (DPoP) token is required",
            "dpop_required",
        );
    };
    if !cx.dpop {
        return refuse(
            "invalid_token",
            "a DPoP-bound token must be sent with the DPoP scheme and a proof",
            "dpop_bearer",
        );
    }
    let Some(token) = cx.token.as_deref() else {
        // A verified identity always comes with its token; refuse rather than pass.
        return refuse(
            "invalid_dpop_proof",
            describe("dpop_malformed"),
            "dpop_malformed",
        );
    };
    // `authenticate` read the clock for this request.
    let now = cx.now_ms / 1000;
    let proof = match check_proof(cx.req, token, jkt, &w.cfg.dpop, now) {
        Ok(p) => p,
        Err("dpop_nonce") => {
            // RFC 9449 §9: `use_dpop_nonce` with the nonce to put in the next proof.
            host.metric(Metric::Denied("dpop_nonce"), 1);
            let mut r = reject::dpop(
                realm,
                "use_dpop_nonce",
                "DPoP proof needs a current nonce from the DPoP-Nonce header",
                "dpop_nonce",
            );
            if let Some(n) = &w.cfg.dpop.nonce {
                r.headers
                    .push(("dpop-nonce".into(), nonce::current(n, now)));
            }
            return ControlFlow::Break(Outcome::Reject(r));
        }
        Err(reason) => return refuse("invalid_dpop_proof", describe(reason), reason),
    };
    match claim(host, &w.cfg.dpop, &proof.hash, proof.expires_at, now) {
        Claim::Fresh => ControlFlow::Continue(()),
        Claim::Replay => refuse("invalid_dpop_proof", describe("dpop_replay"), "dpop_replay"),
        Claim::Full | Claim::Busy => {
            host.metric(Metric::Denied("dpop_replay_full"), 1);
            ControlFlow::Break(Outcome::Reject(reject::unavailable(
                realm,
                "DPoP replay check at capacity",
                "dpop_replay_full",
            )))
        }
    }
}

/// The `error_description` of a refusal reason.
fn describe(reason: &'static str) -> &'static str {
    match reason {
        "dpop_missing" => "DPoP proof required",
        "dpop_repeated" => "more than one DPoP proof",
        "dpop_too_large" => "DPoP proof too large",
        "dpop_typ" => "DPoP proof typ must be dpop+jwt",
        "dpop_alg" => "DPoP proof algorithm not supported",
        "dpop_jwk" => "DPoP proof jwk must be a public P-256 key",
        "dpop_key" => "DPoP proof key does not match the token binding",
        "dpop_signature" => "DPoP proof signature invalid",
        "dpop_htm" => "DPoP proof htm does not match the request method",
        "dpop_htu" => "DPoP proof htu does not match the request URI",
        "dpop_iat" => "DPoP proof iat outside the accepted window",
        "dpop_ath" => "DPoP proof ath does not match the access token",
        "dpop_replay" => "DPoP proof already used",
        _ => "DPoP proof malformed",
    }
}

/// What a valid proof leaves for the replay check.
struct Proof {
    hash: [u8; 16],
    expires_at: u64,
}

fn b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn json_object(seg: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(seg).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// The single `DPoP` header value, or the refusal reason.
fn proof_header(req: &Request) -> Result<&str, &'static str> {
    let mut found = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("dpop"))
        .map(|(_, v)| v.as_str());
    let v = found.next().ok_or("dpop_missing")?;
    // Two field lines, or two values a proxy combined into one (a JWS has no comma).
    if found.next().is_some() || v.contains(',') {
        return Err("dpop_repeated");
    }
    Ok(v.trim())
}

/// Check everything of the proof but the replay set.
fn check_proof(
    req: &Request,
    token: &str,
    jkt: &str,
    cfg: &Dpop,
    now: u64,
) -> Result<Proof, &'static str> {
    let proof = proof_header(req)?;
    if proof.len() > cfg.max_proof_bytes {
        return Err("dpop_too_large");
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("dpop_malformed");
    };
    if !(b64url(h) && b64url(c) && b64url(sig)) {
        return Err("dpop_malformed");
    }
    let header = json_object(h).ok_or("dpop_malformed")?;
    if header.contains_key("crit") {
        return Err("dpop_malformed");
    }
    match header.get("typ") {
        Some(Value::String(t)) if normalize_typ(t) == "dpop+jwt" => {}
        _ => return Err("dpop_typ"),
    }
    match header.get("alg") {
        Some(Value::String(a)) if a == "ES256" => {}
        _ => return Err("dpop_alg"),
    }
    let (xy, thumbprint) = public_p256(header.get("jwk")).ok_or("dpop_jwk")?;
    if !crate::ct_eq(thumbprint.as_bytes(), jkt.as_bytes()) {
        return Err("dpop_key");
    }
    let claims = json_object(c).ok_or("dpop_malformed")?;
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => j,
        _ => return Err("dpop_malformed"),
    };
    match claims.get("htm") {
        Some(Value::String(m)) if *m == req.method => {}
        _ => return Err("dpop_htm"),
    }
    let expected = addressed_uri(req, cfg).ok_or("dpop_htu")?;
    match claims
        .get("htu")
        .and_then(Value::as_str)
        .and_then(normalize_htu)
    {
        Some(u) if u == expected => {}
        _ => return Err("dpop_htu"),
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .ok_or("dpop_iat")?,
        _ => return Err("dpop_iat"),
    };
    if iat.abs_diff(now) > cfg.iat_window_s {
        return Err("dpop_iat");
    }
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    match claims.get("ath") {
        Some(Value::String(a)) if crate::ct_eq(a.as_bytes(), ath.as_bytes()) => {}
        _ => return Err("dpop_ath"),
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "dpop_signature")?;
    let input_len = h.len() + 1 + c.len();
    let input = proof.get(..input_len).ok_or("dpop_malformed")?;
    if !es256::verify_one_shot(&xy, input.as_bytes(), &sig) {
        return Err("dpop_signature");
    }
    // After the signature: only the key holder learns whether its nonce was current.
    if let Some(n) = &cfg.nonce {
        match claims.get("nonce") {
            Some(Value::String(v)) if nonce::valid(n, v, now) => {}
            _ => return Err("dpop_nonce"),
        }
    }
    let mut d = Sha256::new();
    d.update(jkt.as_bytes());
    d.update([0u8]);
    d.update(jti.as_bytes());
    let full = d.finalize();
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&full[..16]);
    Ok(Proof {
        hash,
        expires_at: iat.saturating_add(cfg.iat_window_s).saturating_add(1),
    })
}

/// A public P-256 JWK: its coordinates `x ‖ y` and its RFC 7638 thumbprint (base64url of
/// the SHA-256 of the required members in lexicographic order, no whitespace). `None` for
/// any other key type, a private member, or coordinates of the wrong length.
fn public_p256(jwk: Option<&Value>) -> Option<([u8; 64], String)> {
    let o = jwk?.as_object()?;
    if PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)) {
        return None;
    }
    if o.get("kty")?.as_str()? != "EC" || o.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let x = o.get("x")?.as_str()?;
    let y = o.get("y")?.as_str()?;
    // Strict decoding (no padding, canonical trailing bits): the thumbprint hashes the
    // members as sent, so one key has one thumbprint.
    let xb: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
    let yb: [u8; 32] = URL_SAFE_NO_PAD.decode(y).ok()?.try_into().ok()?;
    let mut xy = [0u8; 64];
    xy[..32].copy_from_slice(&xb);
    xy[32..].copy_from_slice(&yb);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Some((
        xy,
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())),
    ))
}

/// `scheme://authority/path` normalized: scheme and host in lower case, the scheme's
/// default port dropped, no query or fragment, an empty path as `/`. Only `http(s)`.
fn normalize(scheme: &str, authority: &str, path: &str) -> Option<String> {
    let scheme = scheme.trim().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.is_empty() || authority.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    Some(format!("{scheme}://{authority}{path}"))
}

/// A proof's `htu`, normalized.
fn normalize_htu(htu: &str) -> Option<String> {
    let (scheme, rest) = htu.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = if path.starts_with('/') { path } else { "" };
    normalize(scheme, authority, path)
}

/// The URI the client addressed, normalized: the scheme from `dpop.scheme_header` (its
/// first value) or Envoy's `:scheme`, `:authority`, `:path`.
fn addressed_uri(req: &Request, cfg: &Dpop) -> Option<String> {
    let scheme = match &cfg.scheme_header {
        Some(h) => req.header(h)?.split(',').next()?,
        None => req.header(":scheme")?,
    };
    normalize(scheme, &req.authority, &req.path)
}

/// The outcome of claiming a proof's `jti` in the replay set.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    Fresh,
    Replay,
    /// The shard holds its maximum of live entries.
    Full,
    /// The shard could not be written (lost compare-and-swap races, write failure).
    Busy,
}

fn shard_key(cfg: &Dpop, h: &[u8; 16]) -> String {
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % cfg.replay_shards.max(1);
    format!("tollgate/dpop/{}/{n}", cfg.replay_shards)
}

/// Create every shard (empty) that does not exist yet, so that every later write is a
/// true compare-and-swap. Run once in `on_configure` ([`Worker::init_shared`]).
pub(crate) fn init_slots(host: &dyn Host, cfg: &Dpop) {
    for n in 0..cfg.replay_shards {
        let key = format!("tollgate/dpop/{}/{n}", cfg.replay_shards);
        if host.shared_get(&key).0.is_none() {
            let _ = host.shared_set(&key, &[], None);
        }
    }
}

/// Record `h` (until `expires_at`, Unix s) unless it is there already.
fn claim(host: &dyn Host, cfg: &Dpop, h: &[u8; 16], expires_at: u64, now: u64) -> Claim {
    let key = shard_key(cfg, h);
    let max = cfg.replay_entries_per_shard as usize;
    let exp = u32::try_from(expires_at).unwrap_or(u32::MAX).to_be_bytes();
    for _ in 0..4 {
        let (value, cas) = host.shared_get(&key);
        let value = value.unwrap_or_default();
        let mut out = Vec::with_capacity(value.len() + ENTRY);
        for e in value.chunks_exact(ENTRY) {
            if u64::from(u32::from_be_bytes([e[16], e[17], e[18], e[19]])) <= now {
                continue;
            }
            if e[..16] == h[..] {
                return Claim::Replay;
            }
            out.extend_from_slice(e);
        }
        if out.len() / ENTRY >= max {
            return Claim::Full;
        }
        out.extend_from_slice(h);
        out.extend_from_slice(&exp);
        match host.shared_set(&key, &out, cas) {
            Ok(()) => return Claim::Fresh,
            Err(SharedError::CasMismatch) => continue,
            Err(SharedError::Failed) => return Claim::Busy,
        }
    }
    Claim::Busy
}

mod nonce;

#[cfg(test)]
mod tests;
