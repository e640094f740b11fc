//! cargo-fuzz target `azure_xml`: runs `registry::storage::azure::fuzz_azure_xml` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| registry::storage::azure::fuzz_azure_xml(data));
