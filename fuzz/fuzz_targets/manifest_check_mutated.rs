//! cargo-fuzz target `manifest_check_mutated`: runs `deploy_manifests::fuzz_targets::check_mutated_shipped` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deploy_manifests::fuzz_targets::check_mutated_shipped(data));
