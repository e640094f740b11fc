//! cargo-fuzz target `repo_name`: runs `oci::fuzz_targets::repo_name` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz_targets::repo_name(data));
