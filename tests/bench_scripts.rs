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

/// `sync/bench/hierarchy-bench.sh` given no binary stops at once and names the path it tried.
#[test]
fn hierarchy_bench_names_a_missing_binary() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sync/bench/hierarchy-bench.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("/nonexistent/connected-registry")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/connected-registry"),
        "{stderr}"
    );
}

/// A tiny run of `sync/bench/hierarchy-bench.sh` (2 repositories x 2 tags, one latency push,
/// no skopeo) with this build: three layers come up, the one changed tag arrives, the pass
/// through the feed costs fewer requests than the tag walk, and a nothing-new pass through the
/// feed is one request.
#[test]
fn hierarchy_bench_tiny_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sync/bench/hierarchy-bench.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_connected-registry"))
        .env("REPOS", "2")
        .env("TAGS", "2")
        .env("LATENCY_RUNS", "1")
        .env("SKOPEO", "0")
        .env("PROPAGATION_TIMEOUT", "60")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let figure = |name: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in\n{stdout}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(figure("incremental.feed_tags_updated"), 1.0, "{stdout}");
    assert_eq!(figure("incremental.walk_tags_updated"), 1.0, "{stdout}");
    assert_eq!(figure("nothing_new.feed_requests"), 1.0, "{stdout}");
    assert!(
        figure("nothing_new.walk_requests") > figure("nothing_new.feed_requests"),
        "{stdout}"
    );
    assert!(
        stdout.contains("latency.cloud_to_lower_median "),
        "{stdout}"
    );
}
