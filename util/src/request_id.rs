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

/// A fresh id: 32 lower-case hex digits (128 bits from a per-thread sequence seeded from std's
/// per-process random hash keys; an id needs to be unique, not secret). Cheap on purpose: the
/// proxy makes one per request (README, Performance, one module).
pub fn new() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let words = [next_random(), next_random()];
    for (i, digit) in id.iter_mut().enumerate() {
        let nibble = (words[i / 16] >> (60 - 4 * (i % 16))) & 0xf;
        *digit = HEX[nibble as usize];
    }
    String::from_utf8(id.to_vec()).expect("hex digits are ASCII")
}

/// The next number of this thread's sequence: SplitMix64 (Steele, Lea, Flood 2014) over a
/// counter that starts at a random seed, so two threads or two processes do not meet.
fn next_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish(),
        );
    }
    let mut z = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

    /// Each thread has its own sequence, seeded at random: many ids made on several threads at
    /// once are all different.
    #[test]
    fn ids_made_on_several_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10_000).map(|_| new()).collect::<Vec<_>>()))
            .collect();
        let ids: std::collections::HashSet<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(ids.len(), 40_000);
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
