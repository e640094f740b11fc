//! cargo-fuzz target `manifest`: runs `oci::fuzz_targets::manifest` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz_targets::manifest(data));
