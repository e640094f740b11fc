//! Garbage collection end to end: `connected-registry gc` on a stopped registry's data, and the
//! collection `serve` runs by itself. Referenced content always survives; strays go.

#![forbid(unsafe_code)]

mod common;

use common::api::*;
use common::target::{setup, Target};

fn gc(data: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["gc", "--data", data.to_str().unwrap(), "--gc-grace", "0s"];
    args.extend_from_slice(extra);
    let out = common::run_ok(common::bin().to_str().unwrap(), &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("gc printed no JSON report ({e}): {out}"))
}

#[test]
fn gc_command_removes_strays_and_untagged_but_keeps_tagged_images() {
    let (_dir, mut target, api) = setup();
    let (_, kept, kept_blobs) = api.push_image("app", "v1", 2, 4096);
    let (_, old, old_blobs) = api.push_image("app", "v0", 1, 4096);
    let stray = api.push_blob("app", b"a layer whose manifest never came");
    api.delete("/v2/app/manifests/v0").expect(202);
    target.kill9();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // link times have 1 s resolution

    let report = gc(&target.data_dir(), &[]);
    assert_eq!(
        report["blobs_deleted"], 1,
        "only the stray blob goes: {report}"
    );
    let report = gc(&target.data_dir(), &["--gc-delete-untagged"]);
    assert_eq!(report["manifests_deleted"], 1, "{report}");

    target.restart();
    let api = Api::new(&target.url());
    api.get_manifest("app", "v1").expect(200);
    for blob in &kept_blobs {
        api.get(&format!("/v2/app/blobs/{}", blob.digest))
            .expect(200);
    }
    api.get(&format!("/v2/app/manifests/{}", old.digest))
        .expect(404);
    for blob in &old_blobs {
        api.head(&format!("/v2/app/blobs/{}", blob.digest))
            .expect(404);
    }
    api.head(&format!("/v2/app/blobs/{stray}")).expect(404);
    api.get(&format!("/v2/app/manifests/{}", kept.digest))
        .expect(200);
    assert!(target.corrupt_blob_files().is_empty());
}

#[test]
fn gc_command_refuses_a_data_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start(&dir.path().join("reg"));
    let out = std::process::Command::new(common::bin())
        .args(["gc", "--data", target.data_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is `connected-registry serve` running"),
        "{stderr}"
    );
}

#[test]
fn serve_collects_garbage_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start_with(
        &dir.path().join("reg"),
        &["--gc-interval", "1s", "--gc-grace", "0s"],
    );
    let api = Api::new(&target.url());
    api.push_image("app", "v1", 1, 1024);
    let stray = api.push_blob("app", b"stray");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while api.head(&format!("/v2/app/blobs/{stray}")).status == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stray blob was never collected:\n{}",
            target.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    api.get_manifest("app", "v1").expect(200);
}
