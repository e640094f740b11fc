//! Fuzz targets for the duration syntax, each a `fn(&[u8])` that panics when a property fails:
//! the bounded runs at the bottom are part of `cargo test` (the `fuzzkit` seeded driver), and
//! `fuzz/` runs them under `cargo fuzz` (built with `--cfg fuzzing`).

use std::time::Duration;

use fuzzkit::{text, Gen};

use crate::duration::{parse, parse_or_seconds, Iso};

/// Any text parses or is refused, never a panic, in both spellings, and what the strict parser
/// takes the lenient one takes the same; any duration (to the millisecond) formatted as
/// ISO-8601 reads back to itself, exactly.
pub fn duration(data: &[u8]) {
    let mut g = Gen::new(data);
    if g.bool() {
        let input = text(g.rest());
        let strict = parse(&input);
        let lenient = parse_or_seconds(&input);
        if let Ok(d) = &strict {
            assert_eq!(lenient.as_ref(), Ok(d), "{input:?}");
        }
        if let Err(e) = strict {
            assert!(e.to_string().contains(crate::duration::EXPECTED));
        }
        return;
    }
    let secs = g.u64();
    let millis = g.below(1000) as u32;
    let d = Duration::new(secs, millis * 1_000_000);
    let iso = Iso(d).to_string();
    assert_eq!(parse(&iso), Ok(d), "{iso}");
    assert_eq!(parse(&iso.to_ascii_lowercase()), Ok(d), "{iso}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_duration() {
        let seeds: [&[u8]; 8] = [
            b"\x01500ms",
            b"\x011.5h",
            b"\x017d",
            b"\x01PT1H",
            b"\x01P1DT12H",
            b"\x01P2W",
            b"\x01PT0.5S",
            b"\x0160",
        ];
        fuzzkit::run("util::duration", &seeds, duration);
    }
}
