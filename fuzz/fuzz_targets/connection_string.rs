//! cargo-fuzz target `connection_string`: runs `connection_string::fuzz_targets::connection_string` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| connection_string::fuzz_targets::connection_string(data));
