//! How the metadata's keys and values become bytes for the key-value contract, so that the
//! byte order of two encoded keys is the order redb gives the typed keys: a range scan returns
//! the same rows in the same order on every backend.
//!
//! Keys are a string, a `u64`, or a tuple of two or three strings. A `u64` is 8 bytes, big
//! endian. A string is its UTF-8 bytes with each `0x00` written as `0x00 0xFF`, then the
//! terminator `0x00 0x01`: a string sorts before every longer string it is a prefix of (the
//! terminator is below every byte that can follow), and a tuple's bytes are its elements' bytes
//! one after the other, so tuples sort element by element as redb's tuples do.
//!
//! Values need no order: a string is its UTF-8 bytes, bytes are themselves, a `u64` 8 bytes and
//! a pair of `u64`s 16, big endian.

use super::{KeyKind, ValueKind};
use crate::storage::StorageError;

/// The byte after `0x00` that marks the end of a string.
const END: u8 = 0x01;
/// The byte after `0x00` that marks a `0x00` inside a string.
const ZERO: u8 = 0xFF;

/// A key type a table can have: how it is encoded and decoded.
pub(crate) trait Key: Sized {
    const KIND: KeyKind;
    /// How many strings it holds (the prefixes a scan can fix).
    const STRINGS: usize;
    /// The borrowed form callers pass in.
    type Ref<'a>: Copy;
    fn encode(key: Self::Ref<'_>, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Result<Self, StorageError>;
}

/// A value type a table can have.
pub(crate) trait Value: Sized {
    const KIND: ValueKind;
    type Ref<'a>: Copy;
    fn encode(value: Self::Ref<'_>) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self, StorageError>;
}

/// The bytes of `key`.
pub(crate) fn key_bytes<K: Key>(key: K::Ref<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    K::encode(key, &mut out);
    out
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Db(format!("corrupt metadata key or value: {what}"))
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(ZERO);
        }
    }
    out.extend_from_slice(&[0, END]);
}

/// Decodes one string from the front of `bytes`; returns it and the rest.
fn decode_str(bytes: &[u8]) -> Result<(String, &[u8]), StorageError> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match bytes.get(i) {
            None => return Err(corrupt("a string key without its terminator")),
            Some(0) => match bytes.get(i + 1) {
                Some(&END) => break,
                Some(&ZERO) => {
                    out.push(0);
                    i += 2;
                }
                _ => return Err(corrupt("a string key with a stray 0x00")),
            },
            Some(&b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| corrupt("a string key that is not UTF-8"))?;
    Ok((s, &bytes[i + 2..]))
}

fn decode_u64(bytes: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    let (head, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("a number shorter than 8 bytes"))?;
    Ok((u64::from_be_bytes(*head), rest))
}

fn whole<T>((value, rest): (T, &[u8])) -> Result<T, StorageError> {
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(corrupt("bytes after the end of a key or value"))
    }
}

impl Key for String {
    const KIND: KeyKind = KeyKind::Str;
    const STRINGS: usize = 1;
    type Ref<'a> = &'a str;
    fn encode(key: &str, out: &mut Vec<u8>) {
        encode_str(key, out);
    }
    fn decode(bytes: &[u8]) -> Result<String, StorageError> {
        whole(decode_str(bytes)?)
    }
}

impl Key for u64 {
    const KIND: KeyKind = KeyKind::U64;
    const STRINGS: usize = 0;
    type Ref<'a> = u64;
    fn encode(key: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&key.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<u64, StorageError> {
        whole(decode_u64(bytes)?)
    }
}

impl Key for (String, String) {
    const KIND: KeyKind = KeyKind::Str2;
    const STRINGS: usize = 2;
    type Ref<'a> = (&'a str, &'a str);
    fn encode((a, b): (&str, &str), out: &mut Vec<u8>) {
        encode_str(a, out);
        encode_str(b, out);
    }
    fn decode(bytes: &[u8]) -> Result<(String, String), StorageError> {
        let (a, rest) = decode_str(bytes)?;
        let b = whole(decode_str(rest)?)?;
        Ok((a, b))
    }
}

impl Key for (String, String, String) {
    const KIND: KeyKind = KeyKind::Str3;
    const STRINGS: usize = 3;
    type Ref<'a> = (&'a str, &'a str, &'a str);
    fn encode((a, b, c): (&str, &str, &str), out: &mut Vec<u8>) {
        encode_str(a, out);
        encode_str(b, out);
        encode_str(c, out);
    }
    fn decode(bytes: &[u8]) -> Result<(String, String, String), StorageError> {
        let (a, rest) = decode_str(bytes)?;
        let (b, rest) = decode_str(rest)?;
        let c = whole(decode_str(rest)?)?;
        Ok((a, b, c))
    }
}

impl Value for String {
    const KIND: ValueKind = ValueKind::Str;
    type Ref<'a> = &'a str;
    fn encode(value: &str) -> Vec<u8> {
        value.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<String, StorageError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("a string value that is not UTF-8"))
    }
}

impl Value for Vec<u8> {
    const KIND: ValueKind = ValueKind::Bytes;
    type Ref<'a> = &'a [u8];
    fn encode(value: &[u8]) -> Vec<u8> {
        value.to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
        Ok(bytes.to_vec())
    }
}

impl Value for u64 {
    const KIND: ValueKind = ValueKind::U64;
    type Ref<'a> = u64;
    fn encode(value: u64) -> Vec<u8> {
        value.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<u64, StorageError> {
        whole(decode_u64(bytes)?)
    }
}

impl Value for (u64, u64) {
    const KIND: ValueKind = ValueKind::U64Pair;
    type Ref<'a> = (u64, u64);
    fn encode((a, b): (u64, u64)) -> Vec<u8> {
        let mut out = a.to_be_bytes().to_vec();
        out.extend_from_slice(&b.to_be_bytes());
        out
    }
    fn decode(bytes: &[u8]) -> Result<(u64, u64), StorageError> {
        let (a, rest) = decode_u64(bytes)?;
        let b = whole(decode_u64(rest)?)?;
        Ok((a, b))
    }
}

/// The bounds of every key whose leading strings are `prefix`, as two whole keys (a backend
/// that keeps typed keys can decode them): from the prefix followed by empty strings (the
/// smallest such key), up to but excluding the prefix with `"\0"` appended to its last string
/// (the smallest key beyond them all), also followed by empty strings.
pub(crate) fn prefix_bounds<K: Key>(prefix: &[&str]) -> (Vec<u8>, Vec<u8>) {
    assert!(
        !prefix.is_empty() && prefix.len() < K::STRINGS,
        "a prefix fixes some, not all, of a key's strings"
    );
    let mut lower = Vec::new();
    for part in prefix {
        encode_str(part, &mut lower);
    }
    let mut upper = Vec::new();
    for part in &prefix[..prefix.len() - 1] {
        encode_str(part, &mut upper);
    }
    encode_str(&format!("{}\0", prefix[prefix.len() - 1]), &mut upper);
    for _ in prefix.len()..K::STRINGS {
        encode_str("", &mut lower);
        encode_str("", &mut upper);
    }
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Strings drawn from a small alphabet with the bytes that matter for the escaping (0x00,
    /// 0x01, 0xFF's neighbours in UTF-8), so prefixes and equal elements are common.
    fn string(rng: &mut impl Rng) -> String {
        const PIECES: &[&str] = &["", "\0", "\u{1}", "a", "b", ":", "/", "é", "\u{7f}", "ÿ"];
        (0..rng.gen_range(0..4))
            .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
            .collect()
    }

    /// The property the backends rely on: for random keys, encoded bytes compare exactly as
    /// the typed keys do (the order of Rust's tuples and `str`, which is redb's), and decode
    /// back to the same key.
    #[test]
    fn encoded_keys_sort_as_the_typed_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for _ in 0..20_000 {
            let a = (string(&mut rng), string(&mut rng), string(&mut rng));
            let b = (string(&mut rng), string(&mut rng), string(&mut rng));
            let ea = key_bytes::<(String, String, String)>((&a.0, &a.1, &a.2));
            let eb = key_bytes::<(String, String, String)>((&b.0, &b.1, &b.2));
            assert_eq!(a.cmp(&b), ea.cmp(&eb), "{a:?} vs {b:?}");
            assert_eq!(<(String, String, String)>::decode(&ea).unwrap(), a);

            let (a2, b2) = ((a.0.clone(), a.1.clone()), (b.0.clone(), b.1.clone()));
            let ea = key_bytes::<(String, String)>((&a2.0, &a2.1));
            let eb = key_bytes::<(String, String)>((&b2.0, &b2.1));
            assert_eq!(a2.cmp(&b2), ea.cmp(&eb), "{a2:?} vs {b2:?}");
            assert_eq!(<(String, String)>::decode(&ea).unwrap(), a2);

            let ea = key_bytes::<String>(&a.0);
            let eb = key_bytes::<String>(&b.0);
            assert_eq!(a.0.cmp(&b.0), ea.cmp(&eb));
            assert_eq!(<String as Key>::decode(&ea).unwrap(), a.0);

            let (x, y): (u64, u64) = (rng.gen(), rng.gen_range(0..3));
            for (x, y) in [(x, y), (y, x), (x, x)] {
                assert_eq!(x.cmp(&y), key_bytes::<u64>(x).cmp(&key_bytes::<u64>(y)));
            }
        }
    }

    /// A prefix scan's bounds hold exactly the keys that start with the prefix.
    #[test]
    fn prefix_bounds_hold_exactly_the_keys_with_the_prefix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let prefix = (string(&mut rng), string(&mut rng));
            let key = (string(&mut rng), string(&mut rng), string(&mut rng));
            let encoded = key_bytes::<(String, String, String)>((&key.0, &key.1, &key.2));
            let (lower, upper) = prefix_bounds::<(String, String, String)>(&[&prefix.0]);
            let inside = lower <= encoded && encoded < upper;
            assert_eq!(inside, key.0 == prefix.0, "{key:?} with prefix {prefix:?}");
            let (lower, upper) = prefix_bounds::<(String, String, String)>(&[&prefix.0, &prefix.1]);
            let inside = lower <= encoded && encoded < upper;
            assert_eq!(inside, key.0 == prefix.0 && key.1 == prefix.1);
            // Both bounds are whole keys.
            <(String, String, String)>::decode(&lower).unwrap();
            <(String, String, String)>::decode(&upper).unwrap();
        }
    }

    #[test]
    fn values_round_trip_and_bad_bytes_are_refused() {
        assert_eq!(
            <(u64, u64)>::decode(&<(u64, u64)>::encode((7, u64::MAX))).unwrap(),
            (7, u64::MAX)
        );
        let value = <String as Value>::encode("tag:é");
        assert_eq!(<String as Value>::decode(&value).unwrap(), "tag:é");
        assert!(<u64 as Value>::decode(&[1, 2, 3]).is_err());
        assert!(
            <String as Key>::decode(&[b'a', 0, 7]).is_err(),
            "a stray 0x00"
        );
        assert!(
            <(String, String)>::decode(&key_bytes::<String>("a")).is_err(),
            "one string short"
        );
        let two = key_bytes::<(String, String)>(("a", "b"));
        assert!(<String as Key>::decode(&two).is_err(), "one too many");
    }
}
