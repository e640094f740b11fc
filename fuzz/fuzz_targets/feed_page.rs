//! cargo-fuzz target `feed_page`: runs `oci::fuzz_targets::feed_page` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oci::fuzz_targets::feed_page(data));
