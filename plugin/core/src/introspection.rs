//! Opaque tokens: RFC 7662 introspection results cached in shared data, with one
//! introspection call per token however many requests (on however many workers) arrive
//! with it while the answer is pending.
//!
//! - Slot table `tollgate/ic/<ns>/<slot>` keyed by the SHA-256 of the token (never the
//!   token), one entry per slot, a new entry replacing an expired or different one, except
//!   that another token's live *active* answer is never replaced by a claim or an inactive
//!   answer: well-shaped made-up tokens cannot evict the tokens the auth server vouched for
//!   (which would cost them a new call, and a 503 with `fail_mode: closed` while the auth
//!   server is down). A token whose slot is held that way is introspected without a claim
//!   (one call per worker at a time); an active answer for it takes the slot.
//! - An entry is `Active` (identity, until min(token `exp`, now + max TTL)), `Inactive`
//!   (for the negative TTL) or `Pending` (a worker is asking the auth server; others wait
//!   for its answer until the pending deadline, then may ask themselves).

use serde_json::Value;

use crate::cache::TokenHash;
use crate::host::{Host, SharedError};
use crate::identity::{Identity, Reader};

const MAGIC: u8 = 0xD5;
const ACTIVE: u8 = 1;
const INACTIVE: u8 = 2;
const PENDING: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    pub slots: u32,
    /// Longest time an active answer is cached, seconds.
    pub max_ttl_s: u64,
    /// How long an inactive answer is cached, seconds.
    pub negative_ttl_s: u64,
    /// How long others wait for a pending introspection, ms (≥ the call timeout).
    pub pending_ms: u64,
}

/// What the cache says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// An active token's identity, and until when (Unix ms) the answer may be used.
    Active(Box<Identity>, u64),
    Inactive,
    /// Someone is introspecting this token; `mine` when it is this worker.
    Pending {
        owner: u32,
    },
    /// Nothing usable: introspect (claim first with the returned CAS, unless `held`).
    Miss {
        cas: Option<u32>,
        /// The slot holds another token's live active answer: do not claim it.
        held: bool,
    },
}

fn slot_key(s: &Settings, h: &TokenHash) -> String {
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % s.slots.max(1);
    format!("tollgate/ic/{}/{n}", s.namespace)
}

fn header(h: &TokenHash, kind: u8, until_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(MAGIC);
    out.extend_from_slice(h);
    out.push(kind);
    out.extend_from_slice(&until_ms.to_be_bytes());
    out
}

/// Create every slot (empty) if it does not exist yet. Run when the filter starts, before
/// traffic: Envoy's compare-and-swap cannot express "create if absent", so a claim on a
/// slot that does not exist would be unconditional and two workers could both win it.
pub fn init_slots(host: &dyn Host, s: &Settings) {
    for n in 0..s.slots.max(1) {
        let key = format!("tollgate/ic/{}/{n}", s.namespace);
        if host.shared_get(&key).1.is_none() {
            let _ = host.shared_set(&key, &[], None);
        }
    }
}

/// Look a token up. `now_ms` is Unix ms.
pub fn lookup(host: &dyn Host, s: &Settings, h: &TokenHash, now_ms: u64) -> State {
    let (v, cas) = host.shared_get(&slot_key(s, h));
    let miss = State::Miss { cas, held: false };
    let Some(v) = v else {
        return miss;
    };
    let mut r = Reader::new(&v);
    let parsed = (|| {
        if r.u8()? != MAGIC {
            return None;
        }
        let mine = r.take(32)? == h.as_slice();
        let kind = r.u8()?;
        let until = r.u64()?;
        Some((mine, kind, until))
    })();
    match parsed {
        Some((false, kind, until)) => State::Miss {
            cas,
            held: kind == ACTIVE && until > now_ms,
        },
        Some((true, _, until)) if until <= now_ms => miss,
        Some((true, ACTIVE, until)) => match Identity::decode(&mut r) {
            Some(id) => State::Active(Box::new(id), until),
            None => miss,
        },
        Some((true, INACTIVE, _)) => State::Inactive,
        Some((true, PENDING, _)) => match r.u32() {
            Some(owner) => State::Pending { owner },
            None => miss,
        },
        _ => miss,
    }
}

/// Claim the introspection of a token for worker `me`. `false` when another worker
/// claimed it (or wrote an answer) in between.
pub fn claim(
    host: &dyn Host,
    s: &Settings,
    h: &TokenHash,
    me: u32,
    cas: Option<u32>,
    now_ms: u64,
) -> bool {
    let mut v = header(h, PENDING, now_ms.saturating_add(s.pending_ms));
    v.extend_from_slice(&me.to_be_bytes());
    host.shared_set(&slot_key(s, h), &v, cas.or(Some(0)))
        .is_ok()
}

/// Store an answer: `Some(identity)` for an active token, `None` for an inactive one.
pub fn store(
    host: &dyn Host,
    s: &Settings,
    h: &TokenHash,
    answer: Option<&Identity>,
    now_ms: u64,
) -> Result<(), SharedError> {
    let v = match answer {
        Some(id) => {
            let until =
                (id.exp.saturating_mul(1000)).min(now_ms.saturating_add(s.max_ttl_s * 1000));
            let mut v = header(h, ACTIVE, until);
            id.encode_into(&mut v);
            v
        }
        None => {
            // Another token's live active answer keeps its slot (see the module doc).
            if let State::Miss { held: true, .. } = lookup(host, s, h, now_ms) {
                return Ok(());
            }
            header(h, INACTIVE, now_ms.saturating_add(s.negative_ttl_s * 1000))
        }
    };
    host.shared_set(&slot_key(s, h), &v, None)
}

/// Drop a pending claim after a failed call, so the next request may try again.
pub fn release(host: &dyn Host, s: &Settings, h: &TokenHash, me: u32, now_ms: u64) {
    let (v, cas) = host.shared_get(&slot_key(s, h));
    if let Some(State::Pending { owner }) = v.as_ref().map(|_| lookup(host, s, h, now_ms)) {
        if owner == me {
            let _ = host.shared_set(&slot_key(s, h), &header(h, PENDING, 0), cas);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection answer is not valid JSON")]
    Json,
    #[error("introspection answer lacks `active`")]
    NoActive,
    #[error("introspection answer field `{0}` is invalid")]
    Field(&'static str),
}

/// What an active answer must show to be accepted by this gateway.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// The configured issuer: an answer with another `iss` is not accepted.
    pub iss: Option<&'a str>,
    /// The issuer's audiences: when non-empty, the answer's `aud` must contain one.
    pub audiences: &'a [String],
}

/// Parse an RFC 7662 answer into an identity (`None`: inactive). `issuer` is the index of
/// the configured issuer the token is attributed to; `claim_names` the configured claim
/// headers' claim names. An active token must have `exp` in the future.
pub fn parse_answer(
    body: &[u8],
    issuer: u16,
    claim_names: &[String],
    now_s: u64,
) -> Result<Option<Identity>, IntrospectionError> {
    parse_answer_for(body, issuer, claim_names, now_s, Expect::default())
}

/// [`parse_answer`], refusing (as inactive) an active answer for another issuer, for none
/// of the expected audiences, or for a refresh token.
pub fn parse_answer_for(
    body: &[u8],
    issuer: u16,
    claim_names: &[String],
    now_s: u64,
    expect: Expect<'_>,
) -> Result<Option<Identity>, IntrospectionError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| IntrospectionError::Json)?;
    let active = v
        .get("active")
        .and_then(Value::as_bool)
        .ok_or(IntrospectionError::NoActive)?;
    if !active {
        return Ok(None);
    }
    if v.get("token_type").and_then(Value::as_str) == Some("refresh_token") {
        return Ok(None);
    }
    if let (Some(want), Some(got)) = (expect.iss, v.get("iss")) {
        if got.as_str() != Some(want) {
            return Ok(None);
        }
    }
    let s = |k: &'static str| -> Result<Option<String>, IntrospectionError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(x)) if crate::identity::header_safe(x) => Ok(Some(x.clone())),
            _ => Err(IntrospectionError::Field(k)),
        }
    };
    let exp = v
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(IntrospectionError::Field("exp"))?;
    if exp <= now_s {
        return Ok(None);
    }
    let aud = match v.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(IntrospectionError::Field("aud"))?,
        _ => return Err(IntrospectionError::Field("aud")),
    };
    if !expect.audiences.is_empty() && !aud.iter().any(|a| expect.audiences.contains(a)) {
        return Ok(None);
    }
    let claims = claim_names
        .iter()
        .map(|c| match v.get(c) {
            Some(Value::String(x)) if crate::identity::header_safe(x) => Some(x.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        })
        .collect();
    Ok(Some(Identity {
        issuer,
        sub: s("sub")?.unwrap_or_default(),
        client_id: s("client_id")?,
        scope: s("scope")?.unwrap_or_default(),
        aud,
        jti: s("jti")?,
        exp,
        iat: v.get("iat").and_then(Value::as_u64),
        claims,
        cnf_jkt: crate::jwt::cnf_jkt(v.get("cnf")).map_err(|_| IntrospectionError::Field("cnf"))?,
        cnf_x5t: crate::jwt::cnf_x5t(v.get("cnf")).map_err(|_| IntrospectionError::Field("cnf"))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::hash_token;
    use crate::testing::MemoryHost;

    fn settings() -> Settings {
        Settings {
            namespace: "t".into(),
            slots: 16,
            max_ttl_s: 60,
            negative_ttl_s: 5,
            pending_ms: 2000,
        }
    }

    #[test]
    fn another_tokens_live_active_answer_is_not_evicted_by_a_claim_or_an_inactive_answer() {
        let host = MemoryHost::new(1_000_000);
        let s = Settings {
            slots: 1, // every token shares the one slot
            ..settings()
        };
        init_slots(&host, &s);
        let (a, b) = (hash_token("tg_at_vouched"), hash_token("tg_at_madeup"));
        let body = br#"{"active":true,"sub":"u","aud":"api","exp":1000030}"#;
        let id = parse_answer(body, 0, &[], 1000).unwrap().unwrap();
        store(&host, &s, &a, Some(&id), 1_000_000).unwrap();
        // B finds A's live answer in its slot: a miss it must not claim.
        assert!(matches!(
            lookup(&host, &s, &b, 1_000_100),
            State::Miss { held: true, .. }
        ));
        // B's inactive answer is not stored over it; A is still answered from the cache.
        store(&host, &s, &b, None, 1_000_200).unwrap();
        assert!(matches!(
            lookup(&host, &s, &a, 1_000_300),
            State::Active(..)
        ));
        assert!(matches!(
            lookup(&host, &s, &b, 1_000_300),
            State::Miss { held: true, .. }
        ));
        // Once A's answer has expired (max_ttl, 60 s) the slot is free to take.
        assert!(matches!(
            lookup(&host, &s, &b, 1_060_001),
            State::Miss { held: false, .. }
        ));
        // An active answer for B (the auth server vouched for it too) takes the slot.
        store(&host, &s, &b, Some(&id), 1_000_400).unwrap();
        assert!(matches!(
            lookup(&host, &s, &b, 1_000_500),
            State::Active(..)
        ));
        assert!(matches!(
            lookup(&host, &s, &a, 1_000_500),
            State::Miss { held: true, .. }
        ));
    }

    #[test]
    fn single_flight_then_cached_answer() {
        let host = MemoryHost::new(1_000_000);
        let s = settings();
        init_slots(&host, &s);
        let h = hash_token("tg_at_abc");
        let State::Miss { cas, .. } = lookup(&host, &s, &h, 1_000_000) else {
            panic!()
        };
        assert!(claim(&host, &s, &h, 1, cas, 1_000_000));
        // A second worker sees the claim and waits instead of calling.
        assert_eq!(
            lookup(&host, &s, &h, 1_000_100),
            State::Pending { owner: 1 }
        );
        assert!(
            !claim(&host, &s, &h, 2, cas, 1_000_100),
            "stale CAS: claim refused"
        );
        let body = br#"{"active":true,"sub":"u","client_id":"c","scope":"a b","aud":"api","exp":1000030,"jti":"j","tenant":"t1"}"#;
        let id = parse_answer(body, 0, &["tenant".into()], 1000)
            .unwrap()
            .unwrap();
        assert_eq!(id.claims, vec![Some("t1".into())]);
        store(&host, &s, &h, Some(&id), 1_000_200).unwrap();
        assert_eq!(
            lookup(&host, &s, &h, 1_000_300),
            State::Active(Box::new(id), 1_060_200)
        );
        // Cached no longer than max_ttl (60 s) nor the token's exp.
        assert!(matches!(
            lookup(&host, &s, &h, 1_060_201),
            State::Miss { .. }
        ));
    }

    #[test]
    fn inactive_answers_expire_after_the_negative_ttl() {
        let host = MemoryHost::new(0);
        let s = settings();
        let h = hash_token("x");
        assert_eq!(
            parse_answer(br#"{"active":false}"#, 0, &[], 0).unwrap(),
            None
        );
        store(&host, &s, &h, None, 0).unwrap();
        assert_eq!(lookup(&host, &s, &h, 4999), State::Inactive);
        assert!(matches!(lookup(&host, &s, &h, 5000), State::Miss { .. }));
    }

    #[test]
    fn a_stuck_claim_expires_and_release_frees_it() {
        let host = MemoryHost::new(0);
        let s = settings();
        let h = hash_token("y");
        assert!(claim(&host, &s, &h, 1, None, 0));
        assert!(matches!(lookup(&host, &s, &h, 2001), State::Miss { .. }));
        let State::Miss { cas, .. } = lookup(&host, &s, &h, 2001) else {
            panic!()
        };
        assert!(claim(&host, &s, &h, 2, cas, 2001));
        release(&host, &s, &h, 2, 2002);
        assert!(matches!(lookup(&host, &s, &h, 2003), State::Miss { .. }));
    }

    #[test]
    fn answers_for_elsewhere_are_inactive() {
        let auds = vec!["api".to_string()];
        let e = Expect {
            iss: Some("https://i"),
            audiences: &auds,
        };
        let ok = br#"{"active":true,"iss":"https://i","sub":"u","aud":["x","api"],"exp":99}"#;
        assert!(parse_answer_for(ok, 0, &[], 10, e).unwrap().is_some());
        for other in [
            &br#"{"active":true,"iss":"https://other","sub":"u","aud":"api","exp":99}"#[..],
            br#"{"active":true,"iss":"https://i","sub":"u","aud":"web","exp":99}"#,
            br#"{"active":true,"iss":"https://i","sub":"u","exp":99}"#,
            br#"{"active":true,"iss":"https://i","sub":"u","aud":"api","exp":99,"token_type":"refresh_token"}"#,
        ] {
            assert_eq!(parse_answer_for(other, 0, &[], 10, e).unwrap(), None);
        }
    }

    #[test]
    fn answers_are_validated() {
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"active":"yes"}"#,
            br#"{"active":true}"#,
            br#"{"active":true,"exp":9999,"sub":5}"#,
            br#"{"active":true,"exp":9999,"aud":[1]}"#,
            br#"{"active":true,"exp":9999,"sub":"a\nb"}"#,
        ] {
            assert!(
                parse_answer(bad, 0, &[], 10).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Active but already expired counts as inactive.
        assert_eq!(
            parse_answer(br#"{"active":true,"exp":5}"#, 0, &[], 10).unwrap(),
            None
        );
    }
}
