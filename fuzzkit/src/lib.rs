//! The seeded fuzz driver and input generator shared by every parser's fuzz target.
//!
//! A target is a plain `fn(&[u8])` that panics when a property fails (a parser panicked, a round
//! trip lost something). The same function runs two ways:
//! - bounded, on the stable toolchain, inside `cargo test`: [`run`] feeds it a fixed number of
//!   inputs from a seeded generator (random bytes, the seeds as they are, and mutations of them),
//!   so every run of `./test.sh` fuzzes each parser the same, repeatable way;
//! - for longer runs, under `cargo fuzz` (nightly, libFuzzer) from `fuzz/`, where the crates build
//!   with `--cfg fuzzing` and export their targets.
//!
//! [`Gen`] reads choices out of the input bytes (as libFuzzer mutates them), so a target that
//! builds a structured value, e.g. a valid digest to round-trip, works under both drivers.
//!
//! Environment: `FUZZ_CASES` (inputs per target, default [`DEFAULT_CASES`]) and `FUZZ_SEED`
//! (decimal or `0x` hex; default: derived from the target's name). A failure prints the target,
//! the seed, the case number and the input, and `FUZZ_SEED=… FUZZ_CASES=…` replays it.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Inputs per target in a bounded run, unless `FUZZ_CASES` says otherwise.
pub const DEFAULT_CASES: u64 = 3000;

/// Byte strings parsers treat specially; mutations insert them.
const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xa8",
    b"\xf0\x9f\x92\xa9",
    b"\xef\xbb\xbf",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"/",
    b":",
    b";",
    b",",
    b"=",
    b"-",
    b"--",
    b".",
    b"..",
    b"_",
    b"__",
    b"*",
    b"?",
    b"\"",
    b"\\",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"[]",
    b"{}",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e999",
    b"65535",
    b"65536",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"0.000001",
    b"bytes=",
    b"sha256:",
    b"sha512:",
    b"://",
    b"${",
    b"$IOTEDGE_PARENTHOSTNAME",
    b"PT",
    b"P",
    b"T",
    b"W",
    b"D",
    b"H",
    b"M",
    b"S",
    b"ms",
];

/// The SplitMix64 generator: tiny, fast, and the same on every platform and Rust version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Choices read from a fuzz input, front to back; an exhausted input reads as zeros, so every
/// input, even an empty one, builds some value.
#[derive(Clone, Debug)]
pub struct Gen<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Gen<'a> {
    pub fn new(data: &'a [u8]) -> Gen<'a> {
        Gen { data, pos: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number in `0..n` (`0` when `n` is 0), read from as few bytes as `n` needs.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let mut v: u64 = 0;
        let mut span: u64 = 1;
        while span < n as u64 {
            v = (v << 8) | u64::from(self.byte());
            span = span.saturating_mul(256);
        }
        (v % n as u64) as usize
    }

    /// Any `u64`, small values more often than large ones (they are where the edges are).
    pub fn u64(&mut self) -> u64 {
        let width = [1, 1, 2, 4, 8][self.below(5)];
        (0..width).fold(0u64, |v, _| (v << 8) | u64::from(self.byte()))
            ^ if self.byte() == 0xff { u64::MAX } else { 0 }
    }

    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// A string of up to `max` characters out of `alphabet`.
    pub fn string(&mut self, alphabet: &str, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let len = self.below(max + 1);
        (0..len).map(|_| *self.pick(&chars)).collect()
    }

    /// The bytes not read yet (and no more choices after them).
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len().max(self.pos);
        rest
    }
}

/// An input as text, as a header or file read leniently would give it.
pub fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// One mutation of `input`, in the style of libFuzzer's: flip, overwrite, insert, delete,
/// duplicate, or splice in a token or a piece of another seed.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[&[u8]]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(8) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = rng.next_u64() as u8;
        }
        2 => {
            let i = at(rng, input.len());
            let n = 1 + rng.below(8);
            let bytes = rng.bytes(n);
            input.splice(i..i, bytes);
        }
        3 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(16));
            input.drain(i..i + n);
        }
        4 if !input.is_empty() => {
            let i = rng.below(input.len());
            let n = 1 + rng.below((input.len() - i).min(32));
            let piece = input[i..i + n].to_vec();
            let j = at(rng, input.len());
            input.splice(j..j, piece);
        }
        5 if !seeds.is_empty() => {
            let other = seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(64));
                let j = at(rng, input.len());
                input.splice(j..j, other[i..i + n].iter().copied());
            }
        }
        6 if !input.is_empty() => {
            // Overwrite a piece with a token, so a token replaces a field rather than joins it.
            let token = TOKENS[rng.below(TOKENS.len())];
            let i = rng.below(input.len());
            let n = rng.below((input.len() - i).min(24) + 1);
            input.splice(i..i + n, token.iter().copied());
        }
        _ => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let j = at(rng, input.len());
            input.splice(j..j, token.iter().copied());
        }
    }
}

/// The `i`-th input of a run: a seed as it is, a seed mutated one to eight times, or random
/// bytes (the first case is always the empty input).
pub fn input(rng: &mut Rng, i: u64, seeds: &[&[u8]]) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    if (i as usize) <= seeds.len() {
        return seeds[i as usize - 1].to_vec();
    }
    if seeds.is_empty() || rng.below(8) == 0 {
        let max = if rng.below(4) == 0 { 1024 } else { 64 };
        let len = rng.below(max);
        return rng.bytes(len);
    }
    let mut input = seeds[rng.below(seeds.len())].to_vec();
    for _ in 0..1 + rng.below(8) {
        mutate(rng, &mut input, seeds);
    }
    input
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The default seed of a target: FNV-1a of its name, so each target fuzzes differently but the
/// same on every run.
pub fn default_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What one bounded run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub cases: u64,
    pub seed: u64,
}

/// Runs `target` on `FUZZ_CASES` inputs (default `default_cases`) made from `seeds`, with
/// `FUZZ_SEED` or the target's default seed; prints the count and the seed. A panic in the
/// target fails the run with the case, the seed and the input, replayable.
pub fn run_cases(
    name: &str,
    default_cases: u64,
    seeds: &[&[u8]],
    target: impl Fn(&[u8]),
) -> Summary {
    let cases = env_u64("FUZZ_CASES").unwrap_or(default_cases);
    let seed = env_u64("FUZZ_SEED").unwrap_or_else(|| default_seed(name));
    let mut rng = Rng::new(seed);
    for i in 0..cases {
        let input = input(&mut rng, i, seeds);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "fuzz target {name} failed on case {i} of {cases} (replay: FUZZ_SEED={seed:#x} \
                 FUZZ_CASES={}): {why}\ninput ({} bytes): {:?}\nas text: {:?}",
                i + 1,
                input.len(),
                input,
                text(&input),
            );
        }
    }
    println!("fuzz {name}: {cases} cases, seed {seed:#x}");
    Summary { cases, seed }
}

/// [`run_cases`] with [`DEFAULT_CASES`].
pub fn run(name: &str, seeds: &[&[u8]], target: impl Fn(&[u8])) -> Summary {
    run_cases(name, DEFAULT_CASES, seeds, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_repeatable() {
        let seeds: &[&[u8]] = &[b"sha256:abc", b"bytes=0-9"];
        let a: Vec<Vec<u8>> = {
            let mut rng = Rng::new(7);
            (0..200).map(|i| input(&mut rng, i, seeds)).collect()
        };
        let mut rng = Rng::new(7);
        let b: Vec<Vec<u8>> = (0..200).map(|i| input(&mut rng, i, seeds)).collect();
        assert_eq!(a, b);
        assert!(a[0].is_empty() && a[1] == seeds[0] && a[2] == seeds[1]);
    }

    #[test]
    fn gen_reads_zeros_past_the_end() {
        let mut g = Gen::new(&[3]);
        assert_eq!(g.below(10), 3);
        assert_eq!(g.below(10), 0);
        assert!(g.rest().is_empty());
        assert_eq!(g.string("ab", 5), "");
    }

    #[test]
    #[should_panic(expected = "replay: FUZZ_SEED=")]
    fn a_failing_target_names_the_replay() {
        run_cases("fuzzkit::fails", 10, &[b"x"], |data| {
            assert!(data.is_empty())
        });
    }
}
