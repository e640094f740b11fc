//! Request ids (`X-Request-Id`): the proxy keeps a client's id when it is fit to log, or makes
//! a fresh one, and every hop logs it, so one pull can be followed across proxy and registry.

use std::hash::{BuildHasher, Hasher};

/// The header that carries the id, lower-case as HTTP/2 wants it.
pub const HEADER: &str = "x-request-id";

/// Longest id kept; a longer one is replaced.
pub const MAX_LEN: usize = 128;

/// Whether `id` may be kept and logged as it is: 1 to [`MAX_LEN`] bytes of letters, digits and
/// `-`, `_`, `.`, `:`, so it can break no log line (no spaces, quotes or control characters).
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh id: 32 lower-case hex digits (128 random bits from std's per-process random hash
/// keys; an id needs to be unique, not secret).
pub fn new() -> String {
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    // Written digit by digit: `format!` with padding cost 2k instructions per request, as much as
    // the rest of the proxy's header work (README, Performance, one module).
    let mut id = String::with_capacity(32);
    for word in [random(), random()] {
        for shift in (0..16).rev() {
            let nibble = ((word >> (4 * shift)) & 0xf) as u32;
            id.push(char::from_digit(nibble, 16).expect("a nibble is one hex digit"));
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_valid_and_differ() {
        let (a, b) = (new(), new());
        assert_eq!(a.len(), 32);
        assert!(is_valid(a.as_bytes()), "{a}");
        assert_ne!(a, b);
        assert!(
            a.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
    }

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"quote\"d"));
        assert!(!is_valid(b"line\nbreak"));
        assert!(!is_valid("é".as_bytes()));
        assert!(is_valid(&[b'a'; MAX_LEN]));
        assert!(!is_valid(&[b'a'; MAX_LEN + 1]));
    }
}
