//! `serve` with sync settings: the schedule runs in the background, the synced image appears
//! in the child, and `GET /acr/v1/_sync/status` reports the last result and the next window.
//! Invalid sync settings stop `serve` at start with the valid range.

mod common;

use std::process::Command;
use std::time::Duration;

use common::distribution::start_distribution;
use common::sync::{image, push};
use common::{bin, poll, start_registry};

#[test]
fn serve_runs_the_sync_schedule_and_reports_status() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.addr.to_string();
    let (layout, _) = image(&tmp.path().join("img"), &[4096]);
    push(&layout, &host, "srv/app", "v1");

    let child = start_registry(
        &tmp.path().join("child"),
        &[
            "--parent",
            &parent.url(),
            "--repo",
            "srv/app",
            "--sync-schedule",
            "* * * * * *",
        ],
    );
    let status_url = format!("{}/acr/v1/_sync/status", child.url());
    let status = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let out = Command::new("curl")
            .args(["-sf", &status_url])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (s["lastResult"]["outcome"] == "Completed").then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no completed pass reported; child log:\n{}",
            child.log_text()
        )
    });
    assert_eq!(status["parent"], parent.url());
    assert!(status["nextWindowStart"].is_string(), "{status}");
    assert_eq!(status["lastResult"]["tagsChecked"], 1, "{status}");
    let get = |base: String| {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("{base}/v2/srv/app/manifests/v1"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "no srv/app:v1 at {base}");
        out.stdout
    };
    // skopeo may recompress on push, so compare with what the parent serves.
    assert!(
        get(child.url()) == get(parent.url()),
        "served manifest differs from the parent's"
    );
}

#[test]
fn serve_refuses_invalid_sync_settings_at_start() {
    let parent = ["--parent", "http://127.0.0.1:9", "--repo", "a"];
    assert_refused_at_start(&[&parent[..], &["--message-ttl", "PT1H"]].concat());
}

/// A registry with no parent keeps its change log for children for messageTtl, so the setting
/// is checked at start there too.
#[test]
fn standalone_serve_refuses_an_invalid_message_ttl() {
    assert_refused_at_start(&["--message-ttl", "P91D"]);
}

/// `serve` with `args` exits with status 2 and names messageTtl's valid range.
fn assert_refused_at_start(args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data", data])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("messageTtl") && e.contains("P1D to P90D"), "{e}");
}
