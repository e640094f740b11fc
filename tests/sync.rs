//! End-to-end tests of sync from a parent: a real CNCF distribution seeded with skopeo, the real
//! binary (`sync --once`, `serve`), a TCP relay on loopback that cuts or slows the link, and a
//! tiny lying parent that serves wrong bytes for a digest.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::api::sha256;
use common::distribution::start_distribution;
use common::oci::{seeded_bytes, Layout};
use common::relay::Relay;
use common::sync::{image, pull, push as seed, raw_manifest};
use common::tls::TestCa;
use common::{bin, run_ok, start_registry, Proc};

/// The digest the parent serves for `repo:tag` (skopeo may rewrite a manifest on push).
fn parent_digest(host: &str, repo: &str, tag: &str) -> String {
    sha256(raw_manifest(host, repo, tag).as_bytes())
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn sync_once(data: &Path, parent: &str, extra: &[&str]) -> Output {
    common::sync::sync_once(data, parent, extra, &[("RUST_LOG", "warn")])
}

/// [`sync_once`] that must succeed; returns its JSON summary.
#[track_caller]
fn sync_ok(data: &Path, parent: &str, extra: &[&str]) -> serde_json::Value {
    let out = sync_once(data, parent, extra);
    assert!(
        out.status.success(),
        "sync {extra:?} failed: {}",
        stderr(&out)
    );
    summary(&out)
}

fn summary(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); status {}, stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn open_store(data: &Path) -> registry::Store {
    registry::Store::open(data, Default::default()).expect("open the child's store")
}

fn tag_digest(store: &registry::Store, repo: &str, tag: &str) -> Option<String> {
    store
        .get_manifest(
            &repo.parse().unwrap(),
            &registry::Reference::Tag(tag.to_owned()),
        )
        .unwrap()
        .map(|m| m.digest.to_string())
}

/// Asserts that the child's `store` has `repo:tag` pointing at `digest`.
#[track_caller]
fn assert_tag(store: &registry::Store, repo: &str, tag: &str, digest: &str) {
    assert_eq!(
        tag_digest(store, repo, tag).as_deref(),
        Some(digest),
        "{repo}:{tag} in the child"
    );
}

fn upload_dirs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("uploads"))
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A parent (CNCF distribution, under `dir/parent`) holding `repo:v1`, an image with one layer
/// of `layer_size` bytes; returns the parent, the layer digest and the manifest digest it serves.
fn parent_with_one_layer(dir: &Path, repo: &str, layer_size: usize) -> (Proc, String, String) {
    let parent = start_distribution(&dir.join("parent"), "");
    let (layout, img) = image(&dir.join("img"), &[layer_size]);
    let host = host_of(&parent.url());
    seed(&layout, &host, repo, "v1");
    let manifest = parent_digest(&host, repo, "v1");
    (parent, img.layers[0].digest.clone(), manifest)
}

/// After an interrupted pass, nothing of `repo:v1` is visible in the child at `data`: no tag,
/// no finished `layer` blob.
fn assert_nothing_half_done(data: &Path, repo: &str, layer: &str) {
    let store = open_store(data);
    assert_eq!(
        tag_digest(&store, repo, "v1"),
        None,
        "tag visible half-done"
    );
    assert!(!store.blob_exists(&layer.parse().unwrap()));
}

/// After the pass that completes the transfer, `repo:v1` is `manifest` in the child at `data`,
/// and the relay carried less than 1.2 times the `size` of the image's layer in all.
fn assert_completed_cheaply(data: &Path, repo: &str, manifest: &str, relay: &Relay, size: usize) {
    let store = open_store(data);
    assert_tag(&store, repo, "v1", manifest);
    assert_moved_cheaply(relay.down.load(Ordering::Relaxed), size, "fetched");
}

/// The issue's bound for a transfer that was cut and resumed: under 1.2 times the size in all.
#[track_caller]
fn assert_moved_cheaply(total: u64, size: usize, what: &str) {
    assert!(
        (total as f64) < 1.2 * size as f64,
        "{what} {total} bytes for {size} bytes: more than 1.2x, so it started over"
    );
}

// ---------- tests ----------

/// A child with a filter syncs exactly the matching repos and tags, and what skopeo pulls from
/// the child is byte-identical to the parent's. A second sync with nothing new fetches nothing
/// and costs about one request per tag.
#[test]
fn sync_filters_and_images_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let ph = host_of(&parent.url());
    let l1 = image(&tmp.path().join("l1"), &[300_000, 50_000]).0;
    let l2 = image(&tmp.path().join("l2"), &[200_000]).0;
    let l3 = image(&tmp.path().join("l3"), &[10_000]).0;
    seed(&l1, &ph, "apps/web", "v1.0.0");
    seed(&l2, &ph, "apps/web", "v1.1.0");
    seed(&l3, &ph, "apps/web", "dev");
    seed(&l2, &ph, "apps/db", "v2.0.0");
    seed(&l3, &ph, "other/tool", "v1.0.0");
    let m1 = parent_digest(&ph, "apps/web", "v1.0.0");
    let m2 = parent_digest(&ph, "apps/web", "v1.1.0");

    let data = tmp.path().join("child");
    let s = sync_ok(
        &data,
        &parent.url(),
        &["--repo", "apps/*", "--tag-include", "^v"],
    );
    assert_eq!(s["outcome"], "Completed");
    assert_eq!(s["tagsUpdated"], 3, "{s}");

    let store = open_store(&data);
    assert_tag(&store, "apps/web", "v1.0.0", &m1);
    assert_tag(&store, "apps/web", "v1.1.0", &m2);
    assert_tag(&store, "apps/db", "v2.0.0", &m2);
    assert_eq!(
        tag_digest(&store, "apps/web", "dev"),
        None,
        "tag filter ignored"
    );
    assert!(
        store
            .repos()
            .unwrap()
            .iter()
            .all(|r| r.starts_with("apps/")),
        "repo filter ignored"
    );
    drop(store);

    // Pull from the child with skopeo: same manifest bytes, same blob bytes.
    let child = start_registry(&data, &[]);
    let ch = host_of(&child.url());
    for (repo, tag) in [
        ("apps/web", "v1.0.0"),
        ("apps/web", "v1.1.0"),
        ("apps/db", "v2.0.0"),
    ] {
        assert_eq!(
            raw_manifest(&ch, repo, tag),
            raw_manifest(&ph, repo, tag),
            "{repo}:{tag}"
        );
    }
    let (from_child, from_parent) = (tmp.path().join("pc"), tmp.path().join("pp"));
    pull(&ch, "apps/web", "v1.0.0", &from_child);
    pull(&ph, "apps/web", "v1.0.0", &from_parent);
    let mut n = 0;
    for entry in std::fs::read_dir(from_parent.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let theirs = std::fs::read(entry.path()).unwrap();
        let ours = std::fs::read(from_child.join("blobs/sha256").join(entry.file_name()))
            .expect("blob pulled from the child");
        assert!(ours == theirs, "blob {:?} differs", entry.file_name());
        n += 1;
    }
    assert_eq!(n, 4, "manifest, config and two layers");
    drop(child);

    // Nothing new: nothing fetched, at most one request per tag plus the listings.
    let s = sync_ok(
        &data,
        &parent.url(),
        &["--repo", "apps/*", "--tag-include", "^v"],
    );
    assert_eq!(s["tagsUpdated"], 0, "{s}");
    assert_eq!(s["blobsFetched"], 0, "{s}");
    // 3 tags (HEAD each) + 2 tag lists + 1 catalog.
    assert!(s["requests"].as_u64().unwrap() <= 6, "{s}");
}

/// The link drops in the middle of a large blob: the first run fails with partial bytes kept,
/// the next resumes with Range, and the bytes fetched in total stay under 1.2x the image.
#[test]
fn sync_resumes_a_blob_after_the_link_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 24 << 20;
    let (parent, layer, m) = parent_with_one_layer(tmp.path(), "big/image", size);

    // The link goes down after 10 MiB and stays down until the test brings it back.
    let relay = Relay::start(parent.addr, Some(10 << 20), None);
    let data = tmp.path().join("child");
    let args = ["--repo", "big/image", "--sync-retries", "1"];
    let out = sync_once(&data, &relay.url(), &args);
    assert!(
        !out.status.success(),
        "the cut should have failed the first run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let s = summary(&out);
    assert_eq!(s["outcome"], "Failed", "{s}");
    assert_nothing_half_done(&data, "big/image", &layer);
    assert_eq!(upload_dirs(&data).len(), 1, "partial bytes not kept");
    relay.down_flag.store(false, Ordering::SeqCst);

    let s = sync_ok(&data, &relay.url(), &args);
    assert_eq!(s["blobsResumed"], 1, "{s}");
    assert_completed_cheaply(&data, "big/image", &m, &relay, size);
}

/// A pass stopped mid-transfer (the window closes) leaves nothing visible half-done, and the
/// next pass completes it from where it stopped.
#[test]
fn sync_window_closing_mid_transfer_then_next_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 12 << 20;
    let (parent, layer, m) = parent_with_one_layer(tmp.path(), "slow/image", size);
    // 2 MiB/s: the blob needs about 6 s, the window gives 2 s.
    let relay = Relay::start(parent.addr, None, Some(2 << 20));
    let data = tmp.path().join("child");
    let out = sync_once(
        &data,
        &relay.url(),
        &["--repo", "slow/image", "--time-limit", "PT2S"],
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(summary(&out)["outcome"], "Paused");
    assert_nothing_half_done(&data, "slow/image", &layer);
    assert_eq!(
        sync_ok(&data, &relay.url(), &["--repo", "slow/image"])["blobsResumed"],
        1
    );
    assert_completed_cheaply(&data, "slow/image", &m, &relay, size);
}

/// ReadWrite: a large upward upload cut by the end of the window continues in the next window
/// from the last chunk the parent (a real CNCF distribution) acknowledged, instead of starting
/// over; nothing is visible at the parent until the manifest goes up whole.
#[test]
fn readwrite_upload_cut_by_the_window_resumes_in_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    upload_resumes_in_the_next_window(tmp.path(), &parent);
}

/// The same with a connected registry of ours as the parent.
#[test]
fn readwrite_upload_to_a_parent_of_ours_resumes_in_the_next_window() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    upload_resumes_in_the_next_window(tmp.path(), &parent);
}

fn upload_resumes_in_the_next_window(tmp: &Path, parent: &Proc) {
    let cut = cut_upload(tmp, parent);
    let done = sync_ok(&cut.data, &cut.relay.url(), &UPLOAD_ARGS);
    assert_eq!(done["manifestsPushed"], 1, "{done}");
    cut.assert_at_parent(parent);
    assert_moved_cheaply(cut.relay.up.load(Ordering::Relaxed), cut.size, "sent up");
}

/// An upload the parent no longer knows (expired or cancelled there between two windows) is
/// started anew instead of failing every pass.
#[test]
fn readwrite_upload_the_parent_forgot_starts_anew() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let cut = cut_upload(tmp.path(), &parent);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cut.data.join("sync/state.json")).expect("the sync state file"),
    )
    .unwrap();
    let location = state["uploadsUp"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("an upload position is kept: {state}"))
        .to_owned();
    common::api::Api::new(&parent.url())
        .delete(&location)
        .expect(204);
    let done = sync_ok(&cut.data, &cut.relay.url(), &UPLOAD_ARGS);
    assert_eq!(done["manifestsPushed"], 1, "{done}");
    cut.assert_at_parent(&parent);
}

const UPLOAD_ARGS: [&str; 6] = [
    "--repo",
    "site/app",
    "--mode",
    "ReadWrite",
    "--sync-upload-chunk",
    "1048576",
];

/// A child (under `tmp/child`) whose local push of `site/app:v1` (a 12 MiB layer) was cut by
/// the end of a 2 s window while going up to `parent` through a relay at 2 MiB/s.
struct CutUpload {
    data: PathBuf,
    relay: Relay,
    local: String,
    size: usize,
}

impl CutUpload {
    #[track_caller]
    fn assert_at_parent(&self, parent: &Proc) {
        assert_eq!(
            parent_digest(&host_of(&parent.url()), "site/app", "v1"),
            self.local
        );
    }
}

fn cut_upload(tmp: &Path, parent: &Proc) -> CutUpload {
    let size = 12 << 20;
    let data = tmp.join("child");
    let (layout, _) = image(&tmp.join("img"), &[size]);
    {
        let child = start_registry(&data, &[]);
        seed(&layout, &host_of(&child.url()), "site/app", "v1");
    }
    let local = {
        let store = open_store(&data);
        tag_digest(&store, "site/app", "v1").expect("pushed locally")
    };
    // 2 MiB/s up: the layer needs about 6 s, the window gives 2 s.
    let relay = Relay::start_with(parent.addr, None, None, Some(2 << 20));
    let mut first = UPLOAD_ARGS.to_vec();
    first.extend(["--time-limit", "PT2S"]);
    let out = sync_once(&data, &relay.url(), &first);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert_eq!(summary(&out)["outcome"], "Paused");
    assert!(
        common::sync::try_raw_manifest(&host_of(&parent.url()), "site/app", "v1").is_none(),
        "nothing half-done at the parent"
    );
    // Let bytes still in flight through the relay land before asking the parent.
    let mut seen = u64::MAX;
    while relay.up.load(Ordering::Relaxed) != seen {
        seen = relay.up.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        seen >= 1 << 20,
        "the first window moved a chunk at least: {seen} bytes"
    );
    CutUpload {
        data,
        relay,
        local,
        size,
    }
}

/// A tag moved at the parent is re-pointed locally; a tag deleted at the parent is untagged.
#[test]
fn sync_reflects_moved_and_deleted_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let ph = host_of(&parent.url());
    let l1 = image(&tmp.path().join("l1"), &[20_000]).0;
    let l2 = image(&tmp.path().join("l2"), &[20_000]).0;
    let l3 = image(&tmp.path().join("l3"), &[20_000]).0;
    seed(&l1, &ph, "mv/app", "stable");
    seed(&l3, &ph, "mv/app", "old");
    let m1 = parent_digest(&ph, "mv/app", "stable");
    let m3 = parent_digest(&ph, "mv/app", "old");
    let data = tmp.path().join("child");
    sync_ok(&data, &parent.url(), &["--repo", "mv/app"]);
    {
        let store = open_store(&data);
        assert_tag(&store, "mv/app", "stable", &m1);
        assert_tag(&store, "mv/app", "old", &m3);
    }
    // Move `stable`, delete `old` (distribution deletes by digest).
    seed(&l2, &ph, "mv/app", "stable");
    let m2 = parent_digest(&ph, "mv/app", "stable");
    let del = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "DELETE",
            &format!("{}/v2/mv/app/manifests/{m3}", parent.url()),
        ])
        .status()
        .unwrap();
    assert!(del.success(), "delete at the parent");
    let s = sync_ok(&data, &parent.url(), &["--repo", "mv/app"]);
    assert_eq!(s["tagsDeleted"], 1, "{s}");
    let store = open_store(&data);
    assert_tag(&store, "mv/app", "stable", &m2);
    assert_eq!(tag_digest(&store, "mv/app", "old"), None);
}

// ---------- a parent that lies ----------

/// Serves one image whose layer bytes do not match the layer digest.
fn start_lying_parent(
    manifest: Vec<u8>,
    manifest_digest: String,
    config: (String, Vec<u8>),
    layer: String,
    layer_size: usize,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let mut parts = text.split_whitespace();
            let method = parts.next().unwrap_or("").to_owned();
            let path = parts.next().unwrap_or("").to_owned();
            let (status, ctype, body, extra): (&str, &str, Vec<u8>, String) = if path == "/v2/" {
                ("200 OK", "application/json", b"{}".to_vec(), String::new())
            } else if path.starts_with("/v2/lie/tags/list") {
                (
                    "200 OK",
                    "application/json",
                    br#"{"name":"lie","tags":["v1"]}"#.to_vec(),
                    String::new(),
                )
            } else if path == "/v2/lie/manifests/v1"
                || path == format!("/v2/lie/manifests/{manifest_digest}")
            {
                (
                    "200 OK",
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone(),
                    format!("Docker-Content-Digest: {manifest_digest}\r\n"),
                )
            } else if path == format!("/v2/lie/blobs/{}", config.0) {
                (
                    "200 OK",
                    "application/octet-stream",
                    config.1.clone(),
                    String::new(),
                )
            } else if path == format!("/v2/lie/blobs/{layer}") {
                (
                    "200 OK",
                    "application/octet-stream",
                    seeded_bytes(999, layer_size),
                    String::new(),
                )
            } else {
                (
                    "404 Not Found",
                    "application/json",
                    br#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#.to_vec(),
                    String::new(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = conn.write_all(&body);
            }
        }
    });
    port
}

/// A parent that serves a blob whose bytes do not match its digest is refused: the error is
/// reported, the bad bytes are not kept, and the tag does not appear.
#[test]
fn sync_refuses_a_parent_that_lies() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("img");
    let (layout, img) = image(&layout, &[100_000]);
    let layers = img.layer_digests();
    let m = img.manifest.digest.clone();
    let config_digest = img.config.digest.clone();
    // The lie has the layer's exact size, so only the digest check can catch it.
    let port = start_lying_parent(
        layout.read_blob(&m),
        m.clone(),
        (config_digest.clone(), layout.read_blob(&config_digest)),
        layers[0].clone(),
        img.layers[0].size as usize,
    );
    let data = tmp.path().join("child");
    let out = sync_once(
        &data,
        &format!("http://127.0.0.1:{port}"),
        &["--repo", "lie", "--sync-retries", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = summary(&out);
    let errors = s["errors"].to_string();
    assert!(
        errors.contains(&layers[0]) && errors.contains("refused"),
        "{errors}"
    );
    assert!(stderr(&out).contains(&layers[0]), "error not reported");
    let store = open_store(&data);
    assert!(
        !store.blob_exists(&layers[0].parse().unwrap()),
        "bad bytes kept"
    );
    assert_eq!(tag_digest(&store, "lie", "v1"), None);
    // (A sibling blob cut short when the pass gave up on this image may stay, to resume.)
    let layer_hex = layers[0].trim_start_matches("sha256:");
    assert!(
        !upload_dirs(&data)
            .iter()
            .any(|d| d.to_string_lossy().contains(layer_hex)),
        "bad bytes kept in an upload session: {:?}",
        upload_dirs(&data)
    );
}

/// A repository name that the parent does not have, a pattern that matches nothing in its
/// catalog and a tag filter that keeps no tag are warnings in the summary (the rest syncs);
/// with `--strict` they fail the pass.
#[test]
fn sync_reports_scope_that_matches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (parent, _, _) = parent_with_one_layer(tmp.path(), "demo/app", 4096);
    let scope = [
        "--repo",
        "demo/nonexistnt",
        "--repo",
        "demo/app",
        "--repo",
        "nomatch/*",
    ];
    let data = tmp.path().join("child");
    let out = sync_once(&data, &parent.url(), &scope);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["outcome"], "Completed", "{s}");
    assert_eq!(s["tagsUpdated"], 1, "the rest still syncs: {s}");
    let w = s["warnings"].to_string();
    assert!(
        w.contains("demo/nonexistnt does not exist at the parent"),
        "{w}"
    );
    assert!(w.contains("nomatch/* matches no repository"), "{w}");
    assert!(
        stderr(&out).contains("warning: repository demo/nonexistnt"),
        "{}",
        stderr(&out)
    );

    let filtered = [&["--repo", "demo/app", "--tag-include", "^v9"][..]].concat();
    let s = sync_ok(&tmp.path().join("filtered"), &parent.url(), &filtered);
    assert!(
        s["warnings"].to_string().contains("passes the tag filter"),
        "{s}"
    );

    let strict = [&scope[..], &["--strict"]].concat();
    let out = sync_once(&tmp.path().join("strict"), &parent.url(), &strict);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = summary(&out)["errors"].to_string();
    assert!(
        e.contains("demo/nonexistnt") && e.contains("--strict"),
        "{e}"
    );
}

/// Invalid settings are refused at start with the valid range; a bad connection string names
/// the bad field and never prints the password.
#[test]
fn sync_refuses_bad_settings_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let refused = |flags: &[&str]| {
        let args = [&["--repo", "a"][..], flags].concat();
        sync_once(&data, "http://127.0.0.1:9", &args)
    };
    let out = refused(&["--sync-window", "PT10M"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("syncWindow") && e.contains("PT1H to P7D"), "{e}");
    let out = refused(&["--message-ttl", "P100D"]);
    let e = stderr(&out);
    assert!(e.contains("messageTtl") && e.contains("P1D to P90D"), "{e}");
    let out = refused(&["--sync-schedule", "* * *"]);
    assert!(stderr(&out).contains("syncSchedule"), "{}", stderr(&out));

    let out = Command::new(bin())
        .args(["sync", "--once", "--data", data.to_str().unwrap(), "--repo", "a"])
        .env(
            "ACR_REGISTRY_CONNECTION_STRING",
            "ConnectedRegistryName=edge01;SyncTokenName=tok;SyncTokenPassword=Sup3rSecret;ParentGatewayEndpoint=parent:443;ParentEndpointProtocol=gopher",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("ParentEndpointProtocol"), "{all}");
    assert!(!all.contains("Sup3rSecret"), "password printed: {all}");
}

/// Pushes a signature-like artifact whose subject is `subject` (by plain HTTP, as skopeo 1.9
/// cannot push referrers). Returns its digest.
fn push_referrer(base: &str, repo: &str, subject: &str, subject_size: usize) -> String {
    let put_blob = |data: &[u8]| -> String {
        let d = sha256(data);
        let status = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &String::from_utf8_lossy(data),
                &format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "push blob {d}");
        d
    };
    let empty = put_blob(b"{}");
    let sig = put_blob(b"signature-bytes");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.signature", "digest": sig, "size": 15}],
        "subject": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": subject, "size": subject_size}
    }))
    .unwrap();
    let d = sha256(&manifest);
    let path = std::env::temp_dir().join(format!("referrer-{}.json", &d[7..19]));
    std::fs::write(&path, &manifest).unwrap();
    let status = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("{base}/v2/{repo}/manifests/{d}"),
        ])
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "push referrer manifest");
    d
}

/// A parent of ours (under `dir/parent`) holding `multi/app:v1`, an index of an amd64 and an
/// arm64 image (digests preserved); returns the parent, the index and the images.
fn multi_arch_parent(dir: &Path) -> (Proc, common::api::Desc, Vec<common::oci::Image>) {
    let parent = start_registry(&dir.join("parent"), &[]);
    let ph = host_of(&parent.url());
    let mut layout = Layout::create(&dir.join("multi"));
    let (index_desc, images) = layout.add_index(&["amd64", "arm64"], &[30_000]);
    layout.tag("latest", &index_desc);
    run_ok(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &layout.reference("latest"),
            &format!("docker://{ph}/multi/app:v1"),
        ],
    );
    (parent, index_desc, images)
}

/// A multi-arch index arrives with every platform, bottom-up, and so do its referrers, from a
/// parent that is a connected registry of ours (which has the OCI 1.1 referrers API).
#[test]
fn sync_copies_multi_arch_indexes_and_referrers() {
    let tmp = tempfile::tempdir().unwrap();
    let (parent, index_desc, images) = multi_arch_parent(tmp.path());
    let index = index_desc.digest.clone();
    let children: Vec<String> = images.iter().map(|i| i.manifest.digest.clone()).collect();
    let index_size = index_desc.size as usize;
    let referrer = push_referrer(&parent.url(), "multi/app", &index, index_size);

    let data = tmp.path().join("child");
    sync_ok(&data, &parent.url(), &["--repo", "multi/app"]);
    let store = open_store(&data);
    let repo: registry::RepoName = "multi/app".parse().unwrap();
    assert_tag(&store, "multi/app", "v1", &index);
    for child in &children {
        let found = store
            .get_manifest(&repo, &registry::Reference::Digest(child.parse().unwrap()))
            .unwrap();
        assert!(found.is_some(), "platform manifest {child} missing");
    }
    let refs = store.referrers(&repo, &index.parse().unwrap()).unwrap();
    assert!(
        refs.iter().any(|d| d.digest.to_string() == referrer),
        "referrer {referrer} not synced: {refs:?}"
    );
}

/// An index with no manifests (some artifact tools push one) is synced like any other; only
/// a platform filter that leaves out everything an index holds is an error.
#[test]
fn sync_copies_an_empty_index() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let empty = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": common::api::OCI_INDEX,
        "manifests": [],
    }))
    .unwrap();
    common::api::Api::new(&parent.url())
        .put_manifest("art/empty", "v1", common::api::OCI_INDEX, &empty)
        .expect(201);
    let data = tmp.path().join("child");
    sync_ok(&data, &parent.url(), &["--repo", "art/empty"]);
    assert_tag(&open_store(&data), "art/empty", "v1", &sha256(&empty));
}

/// A signature pushed at the parent after its image was synced comes down with a later full
/// comparison (what every pass is with a parent that has no change feed): tags already in step
/// are asked for new referrers once per `--sync-referrers-recheck` (default PT1H).
#[test]
fn sync_fetches_referrers_added_later_on_a_full_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let (parent, index_desc, _) = multi_arch_parent(tmp.path());
    let index = index_desc.digest.clone();
    let data = tmp.path().join("child");
    sync_ok(&data, &parent.url(), &["--repo", "multi/app"]);
    let referrer = push_referrer(&parent.url(), "multi/app", &index, index_desc.size as usize);
    let has_referrer = || {
        let store = open_store(&data);
        let repo: registry::RepoName = "multi/app".parse().unwrap();
        let refs = store.referrers(&repo, &index.parse().unwrap()).unwrap();
        refs.iter().any(|d| d.digest.to_string() == referrer)
    };
    // A changed tag filter makes the pass compare in full, like a parent without a feed.
    let within = sync_ok(
        &data,
        &parent.url(),
        &["--repo", "multi/app", "--tag-include", "^v"],
    );
    assert_eq!(within["pull"], "full", "{within}");
    assert!(
        !has_referrer(),
        "within the interval, tags in step are not asked again"
    );
    let due = sync_ok(
        &data,
        &parent.url(),
        &[
            "--repo",
            "multi/app",
            "--tag-include",
            "^v1",
            "--sync-referrers-recheck",
            "PT0S",
        ],
    );
    assert_eq!(due["pull"], "full", "{due}");
    assert!(has_referrer(), "the referrer added later came down: {due}");
}

/// With `--platform`, only that platform of a multi-arch index comes down: the index stays
/// byte-exact (its digest is what deployments pin), the other platform's manifest and layers
/// are not fetched, and pulling it from the child says it is unknown. Widening the filter
/// later fills the index in; a filter that keeps nothing of an index is refused clearly.
#[test]
fn sync_platform_filter_keeps_the_index_and_only_chosen_platforms() {
    let tmp = tempfile::tempdir().unwrap();
    let (parent, index_desc, images) = multi_arch_parent(tmp.path());
    let index = index_desc.digest.clone();
    let (amd64, arm64) = (&images[0], &images[1]);

    let data = tmp.path().join("child");
    sync_ok(
        &data,
        &parent.url(),
        &["--repo", "multi/app", "--platform", "linux/arm64"],
    );
    {
        let store = open_store(&data);
        let repo: registry::RepoName = "multi/app".parse().unwrap();
        assert_tag(&store, "multi/app", "v1", &index);
        let has_manifest = |d: &str| {
            store
                .get_manifest(&repo, &registry::Reference::Digest(d.parse().unwrap()))
                .unwrap()
                .is_some()
        };
        assert!(has_manifest(&arm64.manifest.digest), "arm64 kept");
        assert!(!has_manifest(&amd64.manifest.digest), "amd64 left out");
        let layer = |i: &common::oci::Image| store.blob_size(&i.layers[0].digest.parse().unwrap());
        assert!(layer(arm64).is_some(), "arm64 layer fetched");
        assert!(layer(amd64).is_none(), "amd64 layer not fetched");
    }
    // Served by the child: the index byte-exact, the left-out platform unknown.
    let child = start_registry(&data, &[]);
    let ch = host_of(&child.url());
    assert_eq!(
        sha256(raw_manifest(&ch, "multi/app", "v1").as_bytes()),
        index
    );
    let api = common::api::Api::new(&child.url());
    api.get_manifest("multi/app", &amd64.manifest.digest)
        .expect_error(404, "MANIFEST_UNKNOWN");
    // A client re-tagging the partial index on the child is not refused for what it left out.
    let body = raw_manifest(&ch, "multi/app", "v1");
    api.put_manifest(
        "multi/app",
        "v1-local",
        common::api::OCI_INDEX,
        body.as_bytes(),
    )
    .expect(201);
    drop(child);

    // No filter any more: the index is filled in.
    sync_ok(&data, &parent.url(), &["--repo", "multi/app"]);
    let store = open_store(&data);
    let repo: registry::RepoName = "multi/app".parse().unwrap();
    assert!(store
        .get_manifest(
            &repo,
            &registry::Reference::Digest(amd64.manifest.digest.parse().unwrap())
        )
        .unwrap()
        .is_some());
    drop(store);

    // A filter that keeps nothing of the index: refused, naming what the index offers.
    let other = tmp.path().join("other");
    let out = sync_once(
        &other,
        &parent.url(),
        &["--repo", "multi/app", "--platform", "windows/amd64"],
    );
    assert!(
        !out.status.success(),
        "a filter that keeps nothing is an error"
    );
    let text = stderr(&out);
    assert!(
        text.contains("linux/amd64") && text.contains("windows/amd64"),
        "the error names the offered and the wanted platforms: {text}"
    );
    assert_eq!(tag_digest(&open_store(&other), "multi/app", "v1"), None);
}

/// Over TLS the parent is verified against the trust bundle given with `--trust`; without
/// it (public roots only) the parent's private CA is refused with a certificate error.
#[test]
fn sync_verifies_the_parent_against_the_trust_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("certs"));
    let leaf = ca.server("parent", "parent.test");
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        leaf.chain.display(),
        leaf.key.display()
    );
    let parent = start_distribution(&tmp.path().join("parent"), &tls);
    let host = parent.addr.to_string();
    let layout = tmp.path().join("img");
    let (layout, _) = image(&layout, &[20_000]);
    seed(&layout, &host, "tls/app", "v1");
    let url = format!("https://{host}");

    // Five attempts allowed, but a certificate error is not a network error: retrying cannot
    // help, so each request is sent once, and the error says what to do.
    let out = sync_once(
        &tmp.path().join("untrusting"),
        &url,
        &["--repo", "tls/app", "--sync-retries", "5"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = summary(&out);
    let e = s["errors"].to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert!(
        e.contains("--trust") && e.contains("certs doctor"),
        "the error says how to fix it: {e}"
    );
    assert!(
        s["requests"].as_u64().unwrap() <= 2,
        "a certificate error was retried: {s}"
    );
    assert_eq!(s["retryable"], false, "{s}");
    assert!(s["faults"]["local"].as_u64().unwrap() >= 1, "{s}");
    assert!(e.contains("no trust bundle is configured"), "{e}");

    // A trust bundle of another CA: the error says the bundle lacks the parent's CA.
    let other = TestCa::new(&tmp.path().join("other-ca"));
    let out = sync_once(
        &tmp.path().join("mistrusting"),
        &url,
        &["--repo", "tls/app", "--trust", other.root.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = summary(&out)["errors"].to_string();
    assert!(
        e.contains("does not hold the CA that issued it") && e.contains("certs doctor"),
        "{e}"
    );

    let data = tmp.path().join("trusting");
    sync_ok(
        &data,
        &url,
        &["--repo", "tls/app", "--trust", ca.root.to_str().unwrap()],
    );
    let store = open_store(&data);
    assert_eq!(
        tag_digest(&store, "tls/app", "v1"),
        Some(sha256(raw_manifest(&host, "tls/app", "v1").as_bytes()))
    );
}
