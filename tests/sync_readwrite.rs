//! ReadWrite store-and-forward against a real CNCF distribution parent: an image pushed to the
//! child (skopeo) while the parent is down reaches the parent byte-identical within a schedule
//! tick after the parent comes up; the status endpoint reports it. The child runs in-process
//! (registry router + sync schedule + status router, as `serve` wires them) on a real socket.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::sha256;
use common::distribution::{start_distribution, start_distribution_on};
use common::free_port;
use common::oci::Layout;
use common::sync::{image, try_raw_manifest};
use sync::settings::{RawRepoRule, RawSettings};

/// A ReadWrite child syncing `repo` with `parent_url`, its store in `data`: the store and the
/// sync engine over it, wired as `serve` wires them. `extra` adds settings (schedule, retries).
fn readwrite_child(
    data: &Path,
    parent_url: &str,
    repo: &str,
    extra: RawSettings,
) -> (registry::Store, sync::Engine) {
    let store = registry::Store::open(data, Default::default()).unwrap();
    let settings = RawSettings {
        parent: Some(parent_url.to_owned()),
        mode: Some("ReadWrite".into()),
        repos: vec![RawRepoRule {
            pattern: repo.into(),
            ..Default::default()
        }],
        ..extra
    }
    .validate()
    .unwrap()
    .unwrap();
    let client = sync::ParentClient::new(parent_url, None, None, settings.limits.clone()).unwrap();
    let engine = sync::Engine::new(
        Arc::new(client),
        Arc::new(store.clone()),
        settings,
        Arc::new(sync::StateFile::open(&data.join("sync")).unwrap()),
        Arc::new(sync::NoProgress),
    );
    (store, engine)
}

/// Serves `app` on a fresh loopback port in the background; returns `127.0.0.1:PORT`.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// [`common::sync::push`] on a blocking thread: skopeo blocks, and the child may be serving
/// on this runtime.
async fn push(layout: &Layout, host: &str, repo: &str, tag: &str) {
    let (l, h, r, t) = (
        layout.clone(),
        host.to_owned(),
        repo.to_owned(),
        tag.to_owned(),
    );
    tokio::task::spawn_blocking(move || common::sync::push(&l, &h, &r, &t))
        .await
        .unwrap();
}

/// [`common::sync::try_raw_manifest`] on a blocking thread.
async fn raw_manifest(host: &str, repo: &str, tag: &str) -> Option<String> {
    let (h, r, t) = (host.to_owned(), repo.to_owned(), tag.to_owned());
    tokio::task::spawn_blocking(move || try_raw_manifest(&h, &r, &t))
        .await
        .unwrap()
}

/// The child's sync status (`GET /acr/v1/_sync/status`).
async fn status(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readwrite_push_while_parent_down_arrives_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let parent_port = free_port();
    let parent_url = format!("http://127.0.0.1:{parent_port}");

    // The child: registry + sync schedule (every second) + status, on one socket.
    let data = tmp.path().join("child");
    let (store, engine) = readwrite_child(
        &data,
        &parent_url,
        "rw/app",
        RawSettings {
            sync_schedule: Some("* * * * * *".into()),
            sync_retry_max: Some("PT1S".into()),
            retries: Some(2),
            ..Default::default()
        },
    );
    let service = sync::SyncService::new(Arc::new(engine));
    service.spawn();
    let child = serve(registry::api::router(store).merge(service.router())).await;

    // Push to the child while the parent is down.
    let (layout, _) = image(&tmp.path().join("img"), &[400_000]);
    push(&layout, &child, "rw/app", "v1").await;
    let status_url = format!("http://{child}/acr/v1/_sync/status");
    let http = reqwest::Client::new();
    // Wait (bounded) until a pass has run and failed against the absent parent.
    let start = Instant::now();
    loop {
        let s = status(&http, &status_url).await;
        if s["lastResult"]["outcome"] == "Failed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no failed pass reported: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The parent comes up: the image must arrive, byte-identical.
    let parent = start_distribution_on(&tmp.path().join("parent"), parent_port, "");
    let ph = format!("127.0.0.1:{parent_port}");
    let local = raw_manifest(&child, "rw/app", "v1")
        .await
        .expect("image in the child");
    let start = Instant::now();
    let arrived = loop {
        if let Some(m) = raw_manifest(&ph, "rw/app", "v1").await {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "image never reached the parent; parent log:\n{}",
            parent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        arrived, local,
        "the parent's manifest differs from the child's"
    );
    // Blobs byte-identical: pull back from the parent and compare with what was pushed.
    let back = tmp.path().join("back");
    let (h, b) = (ph.clone(), back.clone());
    tokio::task::spawn_blocking(move || common::sync::pull(&h, "rw/app", "v1", &b))
        .await
        .unwrap();
    for entry in std::fs::read_dir(layout.dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let mine = std::fs::read(entry.path()).unwrap();
        if let Ok(theirs) = std::fs::read(back.join("blobs/sha256").join(&name)) {
            assert!(mine == theirs, "blob {name:?} differs at the parent");
        }
    }
    let parsed: serde_json::Value = serde_json::from_str(&arrived).unwrap();
    let layer = parsed["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert!(
        back.join("blobs/sha256").join(layer).exists(),
        "layer missing at the parent"
    );

    // The status endpoint reports the push.
    let start = Instant::now();
    loop {
        let s = status(&http, &status_url).await;
        assert_eq!(s["mode"], "ReadWrite");
        if s["pushedSeq"].as_u64().unwrap_or(0) > 0 && s["lastResult"]["outcome"] == "Completed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "status never showed the push: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tag moved at the parent while it was re-pushed here: the parent's tag stays, the local
/// manifest reaches the parent by digest (both kept), and the conflict is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readwrite_conflict_keeps_both_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let ph = parent.addr.to_string();
    let layouts: Vec<Layout> = (0..3)
        .map(|i| image(&tmp.path().join(format!("img{i}")), &[50_000]).0)
        .collect();
    push(&layouts[0], &ph, "cf/app", "v1").await;

    let data = tmp.path().join("child");
    let (store, engine) = readwrite_child(&data, &parent.url(), "cf/app", Default::default());
    let first = engine.run_pass(None).await;
    assert_eq!(first.tags_updated, 1, "{first:?}");

    // The parent moves v1; meanwhile a client re-pushes v1 here with other content.
    let child = serve(registry::api::router(store.clone())).await;
    push(&layouts[1], &ph, "cf/app", "v1").await;
    push(&layouts[2], &child, "cf/app", "v1").await;
    let parent_v1 = raw_manifest(&ph, "cf/app", "v1").await.unwrap();
    let local_v1 = raw_manifest(&child, "cf/app", "v1").await.unwrap();
    assert_ne!(parent_v1, local_v1);

    let second = engine.run_pass(None).await;
    assert_eq!(second.conflicts.len(), 1, "{second:?}");
    assert!(second.conflicts[0].contains("cf/app:v1"), "{second:?}");
    // The parent's tag stayed.
    let now = raw_manifest(&ph, "cf/app", "v1").await.unwrap();
    assert_eq!(now, parent_v1, "the parent's tag was overwritten");
    // The local manifest is at the parent by digest.
    let local_digest = sha256(local_v1.as_bytes());
    let resp = reqwest::Client::new()
        .head(format!(
            "{}/v2/cf/app/manifests/{local_digest}",
            parent.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "local manifest not pushed by digest"
    );
}

/// Pushing up an image whose layers came down from another parent repository mounts them at
/// the parent (cross-repository mount) instead of uploading the bytes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readwrite_push_mounts_blobs_the_parent_already_has() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let ph = parent.addr.to_string();
    let (layout, _) = image(&tmp.path().join("img"), &[600_000]);
    push(&layout, &ph, "base/img", "v1").await;

    let data = tmp.path().join("child");
    let (store, engine) = readwrite_child(&data, &parent.url(), "base/img", Default::default());
    let first = engine.run_pass(None).await;
    assert_eq!(first.tags_updated, 1, "{first:?}");

    // A client pushes the same image to another repository here.
    let child = serve(registry::api::router(store.clone())).await;
    push(&layout, &child, "site/app", "v1").await;

    let second = engine.run_pass(None).await;
    assert!(second.errors.is_empty(), "{second:?}");
    assert!(second.manifests_pushed >= 1, "{second:?}");
    assert!(
        second.bytes_up < 100_000,
        "the 600 kB layer was uploaded instead of mounted: {second:?}"
    );
    let at_parent = raw_manifest(&ph, "site/app", "v1").await;
    let here = raw_manifest(&child, "site/app", "v1").await;
    assert!(
        at_parent.is_some() && at_parent == here,
        "site/app:v1 not at the parent"
    );
}
