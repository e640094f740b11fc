//! Crash safety of `connected-registry serve`: SIGKILL in the middle of a large upload and of a
//! burst of manifest pushes, then a restart on the same data directory. Every push the client saw
//! acknowledged must be intact, no tag may point at missing content, no partial blob may show.

#![forbid(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::*;
use common::checks::{assert_push_intact, assert_references_whole, path_of};
use common::oci::random_bytes;
use common::target::{setup, Target};
use reqwest::Method;
use serde_json::json;

/// Total size of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill9_during_large_uploads_leaves_no_partial_blob() {
    let (_dir, mut t, api) = setup();
    let (before_manifest, _, _) = api.push_image("before", "v1", 2, 300_000);

    // A chunked upload with its first chunk acknowledged, never finished.
    let whole = random_bytes(3 << 20);
    let half = whole[..2 << 20].to_vec();
    let session = path_of(&api.start_upload("big"));
    let loc = session.clone();
    api.patch_chunk(&loc, &half, Some(&format!("0-{}", half.len() - 1)))
        .expect(202);

    // A monolithic PUT of 48 MiB, killed while the body is still arriving.
    let big = Arc::new(random_bytes(48 << 20));
    let big_digest = sha256(&big);
    let data_dir = t.data_dir();
    let baseline = dir_size(&data_dir);
    let upload = {
        let loc = api.start_upload("big");
        let url = api.url(&Api::with_digest(&loc, &big_digest));
        let big = big.clone();
        let http = api.http.clone();
        std::thread::spawn(move || {
            let len = big.len() as u64;
            let body = reqwest::blocking::Body::sized(Trickle::new(big, 16 << 20), len);
            http.put(url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    wait_until("the registry to have written 8 MiB of the upload to its data dir (bodies must stream to disk, not be buffered in memory)", || dir_size(&data_dir) >= baseline + (8 << 20));
    t.kill9();
    let outcome = upload.join().unwrap();
    assert!(
        !matches!(outcome, Ok(201)),
        "the upload cannot have completed: {outcome:?}"
    );

    t.restart();
    let api = Api::new(&t.url());
    api.get("/v2/").expect(200);
    assert!(
        t.corrupt_blob_files().is_empty(),
        "partial blobs visible: {:?}",
        t.corrupt_blob_files()
    );
    api.head(&format!("/v2/big/blobs/{big_digest}")).expect(404);
    api.head(&format!("/v2/big/blobs/{}", sha256(&half)))
        .expect(404);
    assert_push_intact(&api, "before", "v1", &before_manifest);

    // The unfinished chunked session is either gone or resumable from an offset no further
    // than what was acknowledged; resumed from there, it yields the whole blob.
    let status = api.get(&session);
    eprintln!(
        "unfinished upload session after the crash: {} {:?}",
        status.status,
        status.header("range")
    );
    if status.status == 204 {
        let range = status.header("range").expect("upload status has a Range");
        let end: usize = range.trim_start_matches("0-").parse().expect("Range 0-N");
        let n = end + 1;
        assert!(
            n <= half.len(),
            "session claims {n} bytes, only {} were acknowledged",
            half.len()
        );
        let loc = path_of(&status.header("location").unwrap_or(session.clone()));
        let r = api
            .patch_chunk(&loc, &whole[n..], Some(&format!("{n}-{}", whole.len() - 1)))
            .expect(202);
        let loc = path_of(&r.header("location").unwrap());
        api.send(api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&whole))))
            .expect(201);
        assert_eq!(
            api.get(&format!("/v2/big/blobs/{}", sha256(&whole)))
                .expect(200)
                .body,
            whole
        );
    } else {
        status.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }

    // The store takes the same blob again after the crash, whole.
    assert_eq!(api.push_blob("big", &big), big_digest);
    let got = api.get(&format!("/v2/big/blobs/{big_digest}")).expect(200);
    assert_eq!(sha256(&got.body), big_digest);
    assert!(t.corrupt_blob_files().is_empty());
}

/// A push the client saw acknowledged: the tag and the manifest bytes.
type Acked = (String, Vec<u8>);

#[test]
fn kill9_during_a_burst_of_manifest_pushes_keeps_every_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Target::start(&dir.path().join("reg"));
    let api = Arc::new(Api::new(&t.url()));
    let repo = "burst/app";
    let config = config_bytes("amd64");
    api.push_blob(repo, &config);
    let cdesc = Desc::of(OCI_CONFIG, &config);

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (api, acked, attempts, stop, cdesc) = (api.clone(), acked.clone(), attempts.clone(), stop.clone(), cdesc.clone());
            std::thread::spawn(move || {
                let mut previous: Option<Desc> = None;
                for i in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    // Each push: a fresh layer blob, then a manifest over it, tagged.
                    let layer = random_bytes(20_000 + i);
                    let started = api.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send();
                    let Some(loc) = started.ok().and_then(|r| r.headers().get("location")?.to_str().ok().map(String::from))
                    else {
                        return true;
                    };
                    let Ok(r) = api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&layer))).body(layer.clone()).send() else {
                        return true;
                    };
                    if r.status().as_u16() != 201 {
                        return true;
                    }
                    let m = serde_json::to_vec(&json!({
                        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.json(),
                        "layers": [Desc::of(OCI_LAYER, &layer).json()], "annotations": {"w": w.to_string(), "i": i.to_string()},
                    }))
                    .unwrap();
                    let tag = format!("w{w}-{i}");
                    let sent = api.req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}")).header("content-type", OCI_MANIFEST).body(m.clone()).send();
                    match sent {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().push((tag, m.clone())),
                        _ => return true,
                    }
                    // Every third push also tags an index over this manifest and the previous one.
                    let this = Desc::of(OCI_MANIFEST, &m);
                    if let (Some(prev), 0) = (&previous, i % 3) {
                        let idx = index_manifest(OCI_INDEX, &[(prev.clone(), "amd64"), (this.clone(), "arm64")]);
                        let tag = format!("w{w}-{i}-idx");
                        let sent = api.req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}")).header("content-type", OCI_INDEX).body(idx.clone()).send();
                        match sent {
                            Ok(r) if r.status().is_success() => acked.lock().unwrap().push((tag, idx)),
                            _ => return true,
                        }
                    }
                    previous = Some(this);
                }
                false
            })
        })
        .collect();
    wait_until("40 acknowledged manifest pushes", || {
        acked.lock().unwrap().len() >= 40
    });
    t.kill9();
    stop.store(true, Ordering::Relaxed);
    let cut_off = workers
        .into_iter()
        .map(|w| w.join().unwrap_or(false))
        .filter(|&c| c)
        .count();
    let acked = acked.lock().unwrap().clone();
    assert!(
        cut_off > 0,
        "the kill hit no push in flight ({} attempts)",
        attempts.load(Ordering::Relaxed)
    );

    t.restart();
    let api = Api::new(&t.url());
    for (tag, body) in &acked {
        assert_push_intact(&api, repo, tag, body);
    }
    // No tag points at missing content, including pushes that were in flight.
    let tags = api.tags(repo);
    assert!(
        tags.len() >= acked.len(),
        "tags lost: {} listed, {} acknowledged",
        tags.len(),
        acked.len()
    );
    for tag in &tags {
        let r = api.get_manifest(repo, tag);
        assert_eq!(
            r.status,
            200,
            "tag {tag} is listed but its manifest is missing: {}",
            r.text()
        );
        assert_eq!(r.header("docker-content-digest"), Some(sha256(&r.body)));
        assert_references_whole(&api, repo, &r.json());
    }
    assert!(
        t.corrupt_blob_files().is_empty(),
        "torn blobs: {:?}",
        t.corrupt_blob_files()
    );
    // And the store keeps working.
    api.push_image(repo, "after", 1, 1000);
}

#[test]
fn sigterm_stops_cleanly_and_the_data_survives_a_restart() {
    let (_dir, mut t, api) = setup();
    let (manifest, _, _) = api.push_image("kept", "v1", 2, 50_000);
    t.proc.sigterm();
    let status = t.proc.exit_within(Duration::from_secs(60));
    assert!(
        status.success(),
        "SIGTERM is a clean stop, exit status 0: {status}"
    );
    t.restart();
    let api = Api::new(&t.url());
    assert_push_intact(&api, "kept", "v1", &manifest);
}
