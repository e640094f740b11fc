//! Hands the shipped build's extra linker arguments to the linker of the binary:
//! `CONNECTED_REGISTRY_LINK_ARGS` (whitespace-separated; `image/build.sh` sets it to lay out the
//! start-up code together, `--symbol-ordering-file`, and to strip the symbols). Through
//! RUSTFLAGS they would change every crate's symbol names (cargo hashes RUSTFLAGS and the
//! profile's `strip` into them), so the ordering file, made from a build with symbols, would
//! name functions the stripped build does not have. Also relinks when a file named there
//! changes, which cargo does not track by itself.
//!
//! A static glibc build for x86-64 (the module image's, `+crt-static`) also packs its relative
//! relocations (`-z pack-relative-relocs`, DT_RELR; glibc 2.36 and lld or binutils 2.38 on): the
//! binary stays position-independent, so its addresses are still randomised, and its 23,000
//! relocations take 6 KB instead of 550 KB that every start read whole and kept resident
//! (README, Performance > Size). Only a static binary: a dynamic one so linked would need glibc
//! 2.36 where it runs. The cross builds (aarch64, armv7) go without until their toolchains are
//! tested with it.

fn main() {
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    let crt_static = cfg("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|feature| feature == "crt-static");
    if crt_static
        && cfg("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo::rerun-if-env-changed=CONNECTED_REGISTRY_LINK_ARGS");
    let Ok(args) = std::env::var("CONNECTED_REGISTRY_LINK_ARGS") else {
        return;
    };
    for arg in args.split_whitespace() {
        println!("cargo::rustc-link-arg-bins={arg}");
        if let Some((_, file)) = arg.split_once("--symbol-ordering-file=") {
            println!("cargo::rerun-if-changed={file}");
        }
    }
}
