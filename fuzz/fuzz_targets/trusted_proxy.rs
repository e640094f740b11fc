//! cargo-fuzz target `trusted_proxy`: runs `registry::api::auth::fuzz_trusted_proxy` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| registry::api::auth::fuzz_trusted_proxy(data));
