//! A statically linked build of `connected-registry`, for the tests that package it into the
//! module image and run it in a container (the image has no libc, so the tests' own, dynamically
//! linked binary cannot run there). Built once per test process with glibc's static linking
//! into `<target>/static`, beside the tests' own build, without debug information: it costs one
//! more debug build of the workspace (about 3 CPU minutes), and nothing when it is up to date.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Set to the path of a static `connected-registry` to use it instead of building one.
pub const OVERRIDE: &str = "CONNECTED_REGISTRY_STATIC_BINARY";

/// The static binary, built on first use (a panic with cargo's output if it cannot be).
pub fn static_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    if let Some(path) = std::env::var_os(OVERRIDE) {
        return PathBuf::from(path);
    }
    let own = super::bin();
    // <target>/debug/connected-registry -> <target>/static
    let target_dir = own
        .parent()
        .and_then(|debug| debug.parent())
        .expect("the test binary lives in <target>/debug")
        .join("static");
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--bin",
            "connected-registry",
            "--target",
            &triple,
        ])
        .args(["--manifest-path", manifest])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo")
        .output()
        .expect("run cargo to build the static binary");
    assert!(
        out.status.success(),
        "the static build failed ({}); set {OVERRIDE} to a static binary to skip it:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir
        .join(&triple)
        .join("debug")
        .join("connected-registry")
}
