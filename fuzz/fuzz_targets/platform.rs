//! cargo-fuzz target `platform`: runs `oci::fuzz_targets::platform` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz_targets::platform(data));
