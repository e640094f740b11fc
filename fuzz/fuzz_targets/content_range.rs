//! cargo-fuzz target `content_range`: runs `registry::api::v2::fuzz_content_range` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| registry::api::v2::fuzz_content_range(data));
