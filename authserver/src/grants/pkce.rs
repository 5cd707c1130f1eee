//! PKCE (RFC 7636): the shape of a `code_challenge` / `code_verifier`, checked by the
//! authorization endpoint (the challenge) and the `authorization_code` grant (the verifier).

/// A PKCE `code_challenge` / `code_verifier`: 43–128 unreserved characters.
pub fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
}
