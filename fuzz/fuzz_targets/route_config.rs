//! cargo-fuzz target `route_config`: runs `proxy::config::fuzz_route_config` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy::config::fuzz_route_config(data));
