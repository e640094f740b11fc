//! cargo-fuzz target `manifest_check_text`: runs `deploy_manifests::fuzz_targets::check_text` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deploy_manifests::fuzz_targets::check_text(data));
