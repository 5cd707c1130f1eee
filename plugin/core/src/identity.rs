//! The verified identity of a token, its compact binary form (for the shared token cache),
//! and the headers forwarded upstream.

use crate::config::Config;

/// What the filter keeps of a verified token: enough for rules and identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Index of the issuer in the configuration.
    pub issuer: u16,
    pub sub: String,
    pub client_id: Option<String>,
    /// Space-separated scopes.
    pub scope: String,
    pub aud: Vec<String>,
    pub jti: Option<String>,
    /// Token expiry, Unix seconds.
    pub exp: u64,
    pub iat: Option<u64>,
    /// Values of the configured claim headers, in `Config.headers.claims` order.
    pub claims: Vec<Option<String>>,
    /// `cnf.jkt` (RFC 9449 §6): the token is DPoP-bound to the key with this JWK SHA-256
    /// thumbprint (base64url).
    pub cnf_jkt: Option<String>,
    /// `cnf.x5t#S256` (RFC 8705 §3.1): the token is bound to the client certificate with
    /// this SHA-256 thumbprint (base64url).
    pub cnf_x5t: Option<String>,
}

/// A header value is forwarded only if it is visible ASCII, space or tab.
pub fn header_safe(v: &str) -> bool {
    v.len() <= 8192 && v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

impl Identity {
    pub fn has_scope(&self, s: &str) -> bool {
        self.scope.split(' ').any(|x| x == s)
    }

    /// The identity headers to set upstream, in a stable order.
    pub fn headers(&self, cfg: &Config) -> Vec<(String, String)> {
        let h = &cfg.headers;
        let mut out = Vec::with_capacity(4 + self.claims.len());
        out.push((h.sub.clone(), self.sub.clone()));
        if let Some(c) = &self.client_id {
            out.push((h.client_id.clone(), c.clone()));
        }
        out.push((h.scope.clone(), self.scope.clone()));
        if let Some(iss) = cfg.issuers.get(self.issuer as usize) {
            out.push((h.iss.clone(), iss.issuer.clone()));
        }
        for ((_, header), v) in h.claims.iter().zip(self.claims.iter()) {
            if let Some(v) = v {
                out.push((header.clone(), v.clone()));
            }
        }
        out
    }

    /// Append the compact binary encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.issuer.to_be_bytes());
        out.extend_from_slice(&self.exp.to_be_bytes());
        out.extend_from_slice(&self.iat.map_or(u64::MAX, |v| v).to_be_bytes());
        put_str(out, &self.sub);
        put_opt(out, self.client_id.as_deref());
        put_str(out, &self.scope);
        put_opt(out, self.jti.as_deref());
        out.extend_from_slice(&(self.aud.len() as u16).to_be_bytes());
        for a in &self.aud {
            put_str(out, a);
        }
        out.extend_from_slice(&(self.claims.len() as u16).to_be_bytes());
        for c in &self.claims {
            put_opt(out, c.as_deref());
        }
        // Last: an entry written before the field existed has no byte here and does not
        // decode (a cache miss: the token is verified again), nor does this one in an older
        // module (trailing bytes).
        put_opt(out, self.cnf_jkt.as_deref());
        put_opt(out, self.cnf_x5t.as_deref());
    }

    /// Decode what [`Identity::encode_into`] wrote; `None` on any inconsistency.
    pub fn decode(r: &mut Reader<'_>) -> Option<Identity> {
        let issuer = r.u16()?;
        let exp = r.u64()?;
        let iat = match r.u64()? {
            u64::MAX => None,
            v => Some(v),
        };
        let sub = r.string()?;
        let client_id = r.opt()?;
        let scope = r.string()?;
        let jti = r.opt()?;
        let n = r.u16()? as usize;
        let mut aud = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            aud.push(r.string()?);
        }
        let n = r.u16()? as usize;
        let mut claims = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            claims.push(r.opt()?);
        }
        let cnf_jkt = r.opt()?;
        let cnf_x5t = r.opt()?;
        Some(Identity {
            issuer,
            sub,
            client_id,
            scope,
            aud,
            jti,
            exp,
            iat,
            claims,
            cnf_jkt,
            cnf_x5t,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// A bounds-checked reader over bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
    pub fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).ok()
    }
    pub fn opt(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}
