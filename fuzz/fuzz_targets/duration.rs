//! cargo-fuzz target `duration`: runs `util::fuzz_targets::duration` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| util::fuzz_targets::duration(data));
