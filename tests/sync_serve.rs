//! `serve` with sync settings: the schedule runs in the background, the synced image appears
//! in the child, and `GET /acr/v1/_sync/status` reports the last result and the next window.
//! Invalid sync settings stop `serve` at start with the valid range.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::distribution::start_distribution;
use common::{bin, run_ok, start_registry};

#[test]
fn serve_runs_the_sync_schedule_and_reports_status() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.addr.to_string();
    // Any small image will do: the connected-registry binary's own test layout is not needed,
    // a one-blob OCI layout written here is enough.
    let layout = tmp.path().join("img");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        use sha2::Digest as _;
        let hex = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let (ld, ls) = put(&[42u8; 4096]);
    let (cd, cs) =
        put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]
    }))
    .unwrap();
    let (md, ms) = put(&manifest);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
        .unwrap(),
    )
    .unwrap();
    run_ok(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker://{host}/srv/app:v1"),
        ],
    );

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
    let start = Instant::now();
    let status = loop {
        let out = Command::new("curl")
            .args(["-sf", &status_url])
            .output()
            .unwrap();
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if s["lastResult"]["outcome"] == "Completed" {
                break s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no completed pass reported; child log:\n{}",
            child.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
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
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            tmp.path().to_str().unwrap(),
            "--parent",
            "http://127.0.0.1:9",
            "--repo",
            "a",
            "--message-ttl",
            "PT1H",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("messageTtl") && e.contains("P1D to P90D"), "{e}");
}
