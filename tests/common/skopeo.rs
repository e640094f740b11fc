//! Runs the real `skopeo` client against plain-HTTP loopback registries.

use std::process::Command;

/// Path of skopeo, or a panic that says how to install it.
fn skopeo() -> &'static str {
    let p = "/usr/bin/skopeo";
    assert!(
        std::path::Path::new(p).exists(),
        "skopeo is missing: ./test.sh installs Debian's skopeo"
    );
    p
}

/// Runs `skopeo ARGS` (TLS verification off: the registries under test speak plain HTTP on
/// loopback); returns stdout, panics with stderr on failure.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(skopeo())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run skopeo: {e} (./test.sh installs it)"));
    assert!(
        out.status.success(),
        "skopeo {} failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo copy [--all] SRC DST` with TLS verification off for registry ends.
pub fn copy(src: &str, dst: &str, all: bool) -> String {
    let mut args = vec!["copy", "--src-tls-verify=false", "--dest-tls-verify=false"];
    if all {
        args.push("--all");
    }
    args.push(src);
    args.push(dst);
    run(&args)
}

/// `skopeo inspect --raw REF`: the manifest bytes exactly as stored.
pub fn inspect_raw(reference: &str) -> Vec<u8> {
    try_inspect_raw(reference)
        .unwrap_or_else(|stderr| panic!("skopeo inspect --raw {reference}: {stderr}"))
}

/// `skopeo inspect --raw REF`, or skopeo's stderr when it fails (e.g. the image is not there
/// yet), for tests that wait for an image to appear.
pub fn try_inspect_raw(reference: &str) -> Result<Vec<u8>, String> {
    let out = Command::new(skopeo())
        .args(["inspect", "--raw", "--tls-verify=false", reference])
        .output()
        .expect("run skopeo inspect");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
