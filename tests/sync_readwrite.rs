//! ReadWrite store-and-forward against a real CNCF distribution parent: an image pushed to the
//! child (skopeo) while the parent is down reaches the parent byte-identical within a schedule
//! tick after the parent comes up; the status endpoint reports it. The child runs in-process
//! (registry router + sync schedule + status router, as `serve` wires them) on a real socket.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, run_ok, Proc};
use sha2::Digest as _;
use sync::settings::{RawRepoRule, RawSettings};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A one-image OCI layout (tag `latest`) with one layer of `size` bytes.
fn make_layout(dir: &Path, seed: u64, size: usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write = |data: &[u8]| -> (String, usize) {
        let hex = hex::encode(sha2::Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let (layer, layer_size) = write(&noise(seed, size));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer]}
    }))
    .unwrap();
    let (config_digest, config_size) = write(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer, "size": layer_size}]
    }))
    .unwrap();
    let (md, ms) = write(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// CNCF distribution on a given port (the child is configured with it before it runs).
fn start_distribution_on(dir: &Path, port: u16) -> Proc {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config).unwrap();
    Proc::start(
        Path::new("/usr/bin/docker-registry"),
        &["serve", path.to_str().unwrap()],
        &[],
        format!("127.0.0.1:{port}").parse().unwrap(),
        dir.join("distribution.log"),
    )
}

fn raw_manifest(host: &str, repo: &str, tag: &str) -> Option<String> {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/{repo}:{tag}"),
        ])
        .output()
        .expect("run skopeo");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readwrite_push_while_parent_down_arrives_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let parent_port = free_port();
    let parent_url = format!("http://127.0.0.1:{parent_port}");

    // The child: registry + sync schedule (every second) + status, on one socket.
    let data = tmp.path().join("child");
    let store = registry::Store::open(&data, Default::default()).unwrap();
    let settings = RawSettings {
        parent: Some(parent_url.clone()),
        mode: Some("ReadWrite".into()),
        sync_schedule: Some("* * * * * *".into()),
        repos: vec![RawRepoRule {
            pattern: "rw/app".into(),
            ..Default::default()
        }],
        retries: Some(2),
        ..Default::default()
    }
    .validate()
    .unwrap()
    .unwrap();
    let client = sync::ParentClient::new(&parent_url, None, None, settings.limits.clone()).unwrap();
    let state = sync::StateFile::open(&data.join("sync")).unwrap();
    let engine = Arc::new(sync::Engine::new(
        Arc::new(client),
        Arc::new(store.clone()),
        settings,
        Arc::new(state),
        Arc::new(sync::NoProgress),
    ));
    let service = sync::SyncService::new(engine);
    service.spawn();
    let app = registry::api::router(store).merge(service.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Push to the child while the parent is down.
    let layout = tmp.path().join("img");
    make_layout(&layout, 5, 400_000);
    let (l, c) = (layout.clone(), child.clone());
    tokio::task::spawn_blocking(move || {
        run_ok(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", l.display()),
                &format!("docker://{c}/rw/app:v1"),
            ],
        )
    })
    .await
    .unwrap();
    let status_url = format!("http://{child}/acr/v1/_sync/status");
    let http = reqwest::Client::new();
    // Wait (bounded) until a pass has run and failed against the absent parent.
    let start = Instant::now();
    loop {
        let s: serde_json::Value = http
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let parent = start_distribution_on(&tmp.path().join("parent"), parent_port);
    let ph = format!("127.0.0.1:{parent_port}");
    let local = raw_manifest(&child, "rw/app", "v1").expect("image in the child");
    let start = Instant::now();
    let arrived = loop {
        let h = ph.clone();
        if let Some(m) = tokio::task::spawn_blocking(move || raw_manifest(&h, "rw/app", "v1"))
            .await
            .unwrap()
        {
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
    tokio::task::spawn_blocking(move || {
        run_ok(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{h}/rw/app:v1"),
                &format!("oci:{}:x", b.display()),
            ],
        )
    })
    .await
    .unwrap();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
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
        let s: serde_json::Value = http
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let parent = common::distribution::start_distribution(&tmp.path().join("parent"), "");
    let ph = parent.addr.to_string();
    let layouts: Vec<_> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("img{i}"));
            make_layout(&dir, 40 + i, 50_000);
            dir
        })
        .collect();
    let push = |layout: &Path, host: &str, tag: &str| {
        run_ok(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", layout.display()),
                &format!("docker://{host}/cf/app:{tag}"),
            ],
        );
    };
    let p0 = layouts[0].clone();
    let h = ph.clone();
    tokio::task::spawn_blocking(move || push(&p0, &h, "v1"))
        .await
        .unwrap();

    let data = tmp.path().join("child");
    let store = registry::Store::open(&data, Default::default()).unwrap();
    let settings = RawSettings {
        parent: Some(parent.url()),
        mode: Some("ReadWrite".into()),
        repos: vec![RawRepoRule {
            pattern: "cf/app".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
    .validate()
    .unwrap()
    .unwrap();
    let client =
        sync::ParentClient::new(&parent.url(), None, None, settings.limits.clone()).unwrap();
    let engine = sync::Engine::new(
        Arc::new(client),
        Arc::new(store.clone()),
        settings,
        Arc::new(sync::StateFile::open(&data.join("sync")).unwrap()),
        Arc::new(sync::NoProgress),
    );
    let first = engine.run_pass(None).await;
    assert_eq!(first.tags_updated, 1, "{first:?}");

    // The parent moves v1; meanwhile a client re-pushes v1 here with other content.
    let app = registry::api::router(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (p1, p2, h, c) = (
        layouts[1].clone(),
        layouts[2].clone(),
        ph.clone(),
        child.clone(),
    );
    tokio::task::spawn_blocking(move || {
        push(&p1, &h, "v1");
        push(&p2, &c, "v1");
    })
    .await
    .unwrap();
    let parent_v1 = tokio::task::spawn_blocking({
        let h = ph.clone();
        move || raw_manifest(&h, "cf/app", "v1").unwrap()
    })
    .await
    .unwrap();
    let local_v1 = tokio::task::spawn_blocking({
        let c = child.clone();
        move || raw_manifest(&c, "cf/app", "v1").unwrap()
    })
    .await
    .unwrap();
    assert_ne!(parent_v1, local_v1);

    let second = engine.run_pass(None).await;
    assert_eq!(second.conflicts.len(), 1, "{second:?}");
    assert!(second.conflicts[0].contains("cf/app:v1"), "{second:?}");
    // The parent's tag stayed.
    let h = ph.clone();
    let now = tokio::task::spawn_blocking(move || raw_manifest(&h, "cf/app", "v1").unwrap())
        .await
        .unwrap();
    assert_eq!(now, parent_v1, "the parent's tag was overwritten");
    // The local manifest is at the parent by digest.
    let local_digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(local_v1.as_bytes()))
    );
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
    let parent = common::distribution::start_distribution(&tmp.path().join("parent"), "");
    let ph = parent.addr.to_string();
    let layout = tmp.path().join("img");
    make_layout(&layout, 77, 600_000);
    let copy = |host: String, repo: &'static str| {
        let l = layout.clone();
        tokio::task::spawn_blocking(move || {
            run_ok(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &format!("oci:{}:latest", l.display()),
                    &format!("docker://{host}/{repo}:v1"),
                ],
            )
        })
    };
    copy(ph.clone(), "base/img").await.unwrap();

    let data = tmp.path().join("child");
    let store = registry::Store::open(&data, Default::default()).unwrap();
    let settings = RawSettings {
        parent: Some(parent.url()),
        mode: Some("ReadWrite".into()),
        repos: vec![RawRepoRule {
            pattern: "base/img".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
    .validate()
    .unwrap()
    .unwrap();
    let client =
        sync::ParentClient::new(&parent.url(), None, None, settings.limits.clone()).unwrap();
    let engine = sync::Engine::new(
        Arc::new(client),
        Arc::new(store.clone()),
        settings,
        Arc::new(sync::StateFile::open(&data.join("sync")).unwrap()),
        Arc::new(sync::NoProgress),
    );
    let first = engine.run_pass(None).await;
    assert_eq!(first.tags_updated, 1, "{first:?}");

    // A client pushes the same image to another repository here.
    let app = registry::api::router(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let child = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    copy(child.clone(), "site/app").await.unwrap();

    let second = engine.run_pass(None).await;
    assert!(second.errors.is_empty(), "{second:?}");
    assert!(second.manifests_pushed >= 1, "{second:?}");
    assert!(
        second.bytes_up < 100_000,
        "the 600 kB layer was uploaded instead of mounted: {second:?}"
    );
    let h = ph.clone();
    let at_parent = tokio::task::spawn_blocking(move || raw_manifest(&h, "site/app", "v1"))
        .await
        .unwrap();
    let c = child.clone();
    let here = tokio::task::spawn_blocking(move || raw_manifest(&c, "site/app", "v1"))
        .await
        .unwrap();
    assert!(
        at_parent.is_some() && at_parent == here,
        "site/app:v1 not at the parent"
    );
}
