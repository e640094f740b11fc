//! cargo-fuzz target `cron_schedule`: runs `sync::settings::fuzz_cron_schedule` (the same property the bounded `cargo test` run checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sync::settings::fuzz_cron_schedule(data));
