//! A registry on a small filesystem (a tmpfs of a few MiB mounted by the test): a push that
//! does not fit, or would go below the free-space reserve (`--min-free`), is refused with 507
//! and the spec's error body naming the free space and the size; nothing partial stays, reads
//! keep working, and once space is freed pushes work again without a restart. A sync pass that
//! runs out of space stops with a `local` error in its status and continues after space returns.
//!
//! Mounting needs root (the tests run as root in CI); where it is refused the tests say so and
//! skip.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::{sha256, Api};
use common::oci::random_bytes;
use common::tmpfs::{free_bytes, Tmpfs};
use common::{free_port, poll, serve_with, start_registry, Proc};
use reqwest::Method;
use serde_json::Value;

/// Our registry with its data on `fs` and its log outside it (a log must not take the space).
fn start_on(fs: &Tmpfs, log_dir: &Path, args: &[&str]) -> Proc {
    let port = free_port();
    let log = log_dir.join(format!("serve-{port}.log"));
    serve_with(&fs.path().join("data"), port, args, &[], log)
}

/// The files under `dir` (recursively), for "nothing partial stays".
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

/// Checks a 507 answer: the spec's error body, class `local`, retryable, and a message with the
/// free space and `size`.
#[track_caller]
fn assert_no_space(r: &common::api::Resp, size: u64) -> String {
    assert_eq!(r.status, 507, "{}", r.text());
    let body = r.json();
    let error = &body["errors"][0];
    assert_eq!(error["code"], "UNKNOWN", "{body}");
    assert_eq!(error["detail"]["fault"], "local", "{body}");
    assert_eq!(error["detail"]["retryable"], true, "{body}");
    let message = error["message"].as_str().unwrap().to_owned();
    assert!(message.contains("bytes are free"), "{message}");
    assert!(message.contains(&format!("({size} bytes)")), "{message}");
    message
}

/// A PUT of `bytes` as a blob of `repo` in one request (POST, then PUT with the body).
fn put_blob(api: &Api, repo: &str, bytes: &[u8]) -> common::api::Resp {
    let location = api.start_upload(repo);
    api.send(
        api.req(Method::PUT, &Api::with_digest(&location, &sha256(bytes)))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec()),
    )
}

#[test]
fn a_push_that_does_not_fit_is_refused_whole_and_pushes_work_again_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount(8) else { return };
    let logs = tempfile::tempdir().unwrap();
    let registry = start_on(&fs, logs.path(), &["--min-free", "0"]);
    let api = Api::new(&registry.url());
    let (kept, _, _) = api.push_image("kept", "v1", 2, 50_000);
    let data = fs.path().join("data");

    // Monolithic (one POST with the digest): refused up front from its Content-Length, nothing
    // written, no session left.
    let big = random_bytes(12 << 20);
    let r = api.send(
        api.req(
            Method::POST,
            &format!("/v2/big/blobs/uploads/?digest={}", sha256(&big)),
        )
        .header("content-type", "application/octet-stream")
        .body(big.clone()),
    );
    let message = assert_no_space(&r, 12 << 20);
    assert!(message.contains("--min-free 0 bytes"), "{message}");
    assert!(files_under(&data.join("uploads")).is_empty());
    assert!(files_under(&data.join("tmp")).is_empty());
    // POST, then the PUT with the body: the session stays, empty, for the client to retry.
    assert_no_space(&put_blob(&api, "big", &big), 12 << 20);
    let sessions = files_under(&data.join("uploads"));
    assert!(
        sessions
            .iter()
            .all(|f| !f.ends_with("data") || f.metadata().unwrap().len() == 0),
        "{sessions:?}"
    );
    assert!(files_under(&data.join("tmp")).is_empty());
    api.head(&format!("/v2/big/blobs/{}", sha256(&big)))
        .expect(404);

    // Chunked: the chunk that does not fit is refused, the session keeps what it had (invisible,
    // resumable).
    let first = random_bytes(2 << 20);
    let location = api.start_upload("chunked");
    let r = api.patch_chunk(&location, &first, Some(&format!("0-{}", first.len() - 1)));
    let r = r.expect(202);
    let location = r.header("location").unwrap();
    let second = random_bytes(6 << 20);
    let range = format!("{}-{}", first.len(), first.len() + second.len() - 1);
    assert_no_space(&api.patch_chunk(&location, &second, Some(&range)), 6 << 20);
    let status = api.get(&location).expect(204);
    assert_eq!(
        status.header("range").as_deref(),
        Some(format!("0-{}", first.len() - 1).as_str())
    );

    // The disk filled by something else, to less than the database needs: a manifest and even a
    // tag deletion are refused (a failed commit would stop the database until a restart), reads
    // go on.
    let filler = fs.fill_leaving(512 << 10);
    let manifest = api.get_manifest("kept", "v1").expect(200);
    let r = api.put_manifest(
        "kept",
        "v2",
        &manifest.header("content-type").unwrap(),
        &manifest.body,
    );
    assert_no_space(&r, manifest.body.len() as u64);
    let r = api.delete("/v2/kept/manifests/v1");
    assert!(
        assert_no_space(&r, 0).contains("a metadata change"),
        "{}",
        r.text()
    );
    assert_eq!(api.tags("kept"), vec!["v1"]);
    assert_eq!(api.get_manifest("kept", "v1").expect(200).body, kept);

    // Space freed: the same registry takes the rest of the chunked upload and new pushes.
    std::fs::remove_file(filler).unwrap();
    let small = random_bytes(3 << 20);
    let range = format!("{}-{}", first.len(), first.len() + small.len() - 1);
    let r = api.patch_chunk(&location, &small, Some(&range)).expect(202);
    let whole = [first, small].concat();
    let done = Api::with_digest(&r.header("location").unwrap(), &sha256(&whole));
    api.send(api.req(Method::PUT, &done)).expect(201);
    assert_eq!(
        api.get(&format!("/v2/chunked/blobs/{}", sha256(&whole)))
            .expect(200)
            .body,
        whole
    );
    api.put_manifest(
        "kept",
        "v2",
        &manifest.header("content-type").unwrap(),
        &manifest.body,
    )
    .expect(201);
    api.push_image("after", "v1", 1, 100_000);
}

#[test]
fn the_reserve_refuses_writes_before_the_disk_is_full() {
    let Some(fs) = Tmpfs::mount(16) else { return };
    let logs = tempfile::tempdir().unwrap();
    // Half of 16 MiB stays free; the environment variable sets it like the flag.
    let registry = serve_with(
        &fs.path().join("data"),
        free_port(),
        &[],
        &[("CONNECTED_REGISTRY_MIN_FREE", "50%")],
        logs.path().join("serve.log"),
    );
    let api = Api::new(&registry.url());
    let fits = random_bytes(2 << 20);
    put_blob(&api, "r", &fits).expect(201);
    // 5 MiB would fit on the disk, but not above the 8 MiB reserve.
    let over = random_bytes(5 << 20);
    let message = assert_no_space(&put_blob(&api, "r", &over), 5 << 20);
    assert!(message.contains("reserve of 8388608 bytes"), "{message}");
    assert!(message.contains("--min-free 50%"), "{message}");
    assert!(free_bytes(fs.path()) > 8 << 20, "the reserve is untouched");

    // A body of unknown length (chunked transfer) is checked while it streams: cut at the
    // reserve, rolled back whole.
    let location = api.start_upload("r");
    let stream = std::io::Cursor::new(over.clone());
    let r = api.send(
        api.req(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .body(reqwest::blocking::Body::new(stream)),
    );
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(
        api.get(&location).expect(204).header("range").as_deref(),
        Some("0-0")
    );
    assert!(free_bytes(fs.path()) > 8 << 20, "the reserve is untouched");

    // A manifest when the disk is at the reserve: refused, reads go on.
    let config = common::api::config_bytes("amd64");
    let config_digest = api.push_blob("r", &config);
    let body = common::api::image_manifest(
        common::api::OCI_MANIFEST,
        &common::api::Desc::of(common::api::OCI_CONFIG, &config),
        &[common::api::Desc::of("application/octet-stream", &fits)],
    );
    let filler = fs.fill_leaving((8 << 20) + (512 << 10));
    let r = api.put_manifest("r", "v1", common::api::OCI_MANIFEST, &body);
    assert_no_space(&r, body.len() as u64);
    api.get(&format!("/v2/r/blobs/{config_digest}")).expect(200);
    std::fs::remove_file(filler).unwrap();
    api.put_manifest("r", "v1", common::api::OCI_MANIFEST, &body)
        .expect(201);
}

#[test]
fn a_sync_pass_that_runs_out_of_space_stops_reports_it_and_continues_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount(24) else { return };
    let logs = tempfile::tempdir().unwrap();
    let parent = start_registry(&logs.path().join("parent"), &[]);
    let (_, manifest, _) = Api::new(&parent.url()).push_image("demo/app", "v1", 2, 5 << 20);
    // Leave about 6 MiB: the first 5 MiB layer fits, the second does not.
    let filler = fs.fill_leaving(6 << 20);
    let child = start_on(
        &fs,
        logs.path(),
        &[
            "--min-free",
            "0",
            "--parent",
            &parent.url(),
            "--repo",
            "demo/app",
            "--sync-schedule",
            "0 * * * *",
            "--sync-window",
            "PT1H",
            "--sync-retry-max",
            "PT1S",
            // A miss must stay a miss here (no pull-through): the pass's own failure is tested.
            "--on-demand",
            "off",
        ],
    );
    let api = Api::new(&child.url());
    let status = |ready: &dyn Fn(&Value) -> bool| {
        poll(Duration::from_secs(90), Duration::from_millis(200), || {
            let r = api.get("/acr/v1/_sync/status");
            (r.status == 200).then(|| r.json()).filter(ready)
        })
        .unwrap_or_else(|| panic!("status never changed; child log:\n{}", child.log_text()))
    };
    let failed = status(&|s| s["lastResult"]["outcome"] == "Failed");
    let result = &failed["lastResult"];
    let errors = result["errors"].to_string();
    assert!(errors.contains("not enough disk space"), "{failed}");
    assert_eq!(result["errors"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(result["faults"]["local"], 1, "{failed}");
    assert_eq!(result["retryable"], true, "{failed}");
    api.get_manifest("demo/app", "v1").expect(404);

    std::fs::remove_file(filler).unwrap();
    status(&|s| s["lastResult"]["outcome"] == "Completed");
    let r = api.get_manifest("demo/app", "v1").expect(200);
    assert_eq!(r.header("docker-content-digest"), Some(manifest.digest));
}
