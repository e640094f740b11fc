//! cargo-fuzz target `challenge`: runs `sync::client::fuzz_parse_challenge` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sync::client::fuzz_parse_challenge(data));
