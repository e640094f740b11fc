//! cargo-fuzz target `digest`: runs `oci::fuzz_targets::digest` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz_targets::digest(data));
