//! The benchmark scripts find the shared harness relative to the repository (`../shared/bench`),
//! not at a path that exists on one machine only.

use std::path::Path;
use std::process::Command;

/// A copy of `sync/bench/sync-bench.sh` in a checkout with no `../shared/bench` beside it
/// stops at once and names where it looked.
#[test]
fn sync_bench_looks_for_the_harness_beside_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("checkout");
    let script = repo.join("sync/bench/sync-bench.sh");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("sync/bench/sync-bench.sh");
    std::fs::copy(&source, &script).unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .arg("/nonexistent/connected-registry")
        .env_remove("BENCH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!("{}/../shared/bench", repo.display());
    assert!(stderr.contains(&expected), "{stderr}");
}
