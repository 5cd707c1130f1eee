//! The request headers of a stream, read without a way to panic.

use crate::abi::{self, MapType};

/// Decode a serialized proxy-wasm header map (`u32` count, then a `u32` name length and a
/// `u32` value length per pair, then each name and value followed by a NUL byte). Never
/// panics: bytes that are not UTF-8 become U+FFFD (such a value never verifies as a token,
/// and identity headers are removed by name whatever their value), and a truncated map
/// yields the pairs read so far.
pub fn decode_header_map(bytes: &[u8]) -> Vec<(String, String)> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(0) else {
        return Vec::new();
    };
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let (Some(klen), Some(vlen)) = (u32_at(4 + n * 8), u32_at(8 + n * 8)) else {
            break;
        };
        let Some(kend) = p.checked_add(klen) else {
            break;
        };
        let Some(key) = bytes.get(p..kend) else {
            break;
        };
        let vstart = kend + 1;
        let Some(vend) = vstart.checked_add(vlen) else {
            break;
        };
        let Some(value) = bytes.get(vstart..vend) else {
            break;
        };
        out.push((text(key), text(value)));
        p = vend + 1;
    }
    out
}

/// The request headers of the current stream, without a way to panic (a header value that
/// is not UTF-8 is read lossily; see [`decode_header_map`]).
pub(crate) fn request_headers() -> Vec<(String, String)> {
    match abi::get_header_map_pairs(MapType::HttpRequestHeaders) {
        Ok(Some(bytes)) => decode_header_map(&bytes),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format of `proxy_get_header_map_pairs`.
    fn serialize_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_maps_that_are_not_utf8_or_truncated_decode_without_panicking() {
        let bytes = serialize_map(&[
            (b":path", b"/x"),
            (b"authorization", b"Bearer \xff\xfe"),
            (b"x-\xc3", b"caf\xc3\xa9"),
            (b"empty", b""),
        ]);
        let m = decode_header_map(&bytes);
        assert_eq!(
            m,
            vec![
                (":path".to_string(), "/x".to_string()),
                (
                    "authorization".to_string(),
                    "Bearer \u{fffd}\u{fffd}".to_string()
                ),
                ("x-\u{fffd}".to_string(), "caf\u{e9}".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        // Every truncation, and lies about the sizes, give a prefix of the pairs.
        for cut in 0..bytes.len() {
            let m = decode_header_map(&bytes[..cut]);
            assert!(m.len() <= 4);
        }
        let mut lying = bytes.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header_map(&lying).is_empty());
        let mut huge_count = bytes;
        huge_count[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header_map(&huge_count).is_empty());
        assert!(decode_header_map(&[]).is_empty());
    }
}
