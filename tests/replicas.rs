//! Several `serve` replicas on one PostgreSQL database (a real server, Debian's package) and one
//! Azure Blob Storage container (Azurite), with a parent (CNCF distribution behind a loopback
//! relay that slows the link and counts what it carries): the sync lease lets exactly one
//! replica run passes at a time; the holder killed with `kill -9` in the middle of a pass,
//! another takes the lease over and finishes, resuming the partial blob from the shared upload
//! session instead of fetching it again, and what it serves is byte-identical to the parent's;
//! a replica stopped cleanly hands the lease over.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::{sha256, Api};
use common::azurite::{serve_azblob, Azurite};
use common::distribution::start_distribution;
use common::postgres::server_with_database;
use common::relay::Relay;
use common::sync::{child_args, image, pull, push as seed, raw_manifest, wait_for_tag};
use common::{poll, Proc};
use serde_json::Value;

/// A replica: `serve` on `data` with the metadata at `metadata` and the blobs in Azurite's
/// container `shared`, syncing from `parent` with `extra` flags.
fn replica(data: &Path, azurite: &Azurite, metadata: &str, parent: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--metadata", metadata];
    args.extend_from_slice(extra);
    serve_azblob(data, azurite, "shared", &child_args(parent, &args))
}

/// The replica's sync status (`None` while it does not answer: killed, or not up).
fn status(replica: &Proc) -> Option<Value> {
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/acr/v1/_sync/status", replica.url()))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?;
    resp.json().ok()
}

/// Whether the replica's status says it holds the sync lease.
fn holds_lease(replica: &Proc) -> bool {
    status(replica).is_some_and(|s| s["lease"]["heldHere"] == true)
}

/// Watches the replicas' statuses until dropped: records every moment two of them ran a pass
/// at once, and how many passes each was seen starting.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default, Debug)]
struct Seen {
    /// Samples where more than one replica was running a pass.
    overlaps: Vec<String>,
    /// Per replica: the distinct `lastResult.started` seen (passes that ended), and whether a
    /// pass was seen running.
    passes: Vec<std::collections::BTreeSet<String>>,
    running_seen: Vec<bool>,
}

impl Watch {
    fn start(replicas: Vec<String>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            passes: vec![Default::default(); replicas.len()],
            running_seen: vec![false; replicas.len()],
            ..Seen::default()
        }));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            while !stop2.load(Ordering::Relaxed) {
                let statuses: Vec<Option<Value>> = replicas
                    .iter()
                    .map(|url| {
                        client
                            .get(format!("{url}/acr/v1/_sync/status"))
                            .timeout(Duration::from_secs(2))
                            .send()
                            .ok()?
                            .json()
                            .ok()
                    })
                    .collect();
                let mut seen = seen2.lock().unwrap();
                let running: Vec<usize> = (0..statuses.len())
                    .filter(|&i| statuses[i].as_ref().is_some_and(|s| s["running"] == true))
                    .collect();
                if running.len() > 1 {
                    seen.overlaps
                        .push(format!("replicas {running:?} both running"));
                }
                for (i, s) in statuses.iter().enumerate() {
                    let Some(s) = s else { continue };
                    if s["running"] == true {
                        seen.running_seen[i] = true;
                    }
                    if let Some(started) = s["lastResult"]["started"].as_str() {
                        seen.passes[i].insert(started.to_owned());
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// What `a` and `b` serve for `repo:tag`, pulled with skopeo, is the same bytes blob by blob.
fn assert_pulled_identical(dir: &Path, a: &str, b: &str, repo: &str, tag: &str) -> usize {
    let (from_a, from_b) = (dir.join("pulled-a"), dir.join("pulled-b"));
    pull(a, repo, tag, &from_a);
    pull(b, repo, tag, &from_b);
    let mut blobs = 0;
    for entry in std::fs::read_dir(from_a.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let theirs = std::fs::read(entry.path()).unwrap();
        let ours = std::fs::read(from_b.join("blobs/sha256").join(entry.file_name()))
            .unwrap_or_else(|e| panic!("blob {:?} not pulled from {b}: {e}", entry.file_name()));
        assert!(ours == theirs, "blob {:?} differs", entry.file_name());
        blobs += 1;
    }
    blobs
}

const LAYER: usize = 32 << 20;
/// Per connection, parent to child: the layer takes about 8 s.
const RATE: u64 = 4 << 20;
/// A download commits its bytes to the shared upload session every 8 MiB (sync's
/// `COMMIT_EVERY`): at most this much of a blob is fetched again after a takeover.
const COMMIT: u64 = 8 << 20;
/// Short, so the test waits seconds, not the default 15 s, for a takeover.
const LEASE: &str = "3s";

#[test]
fn one_replica_syncs_at_a_time_and_another_finishes_when_the_holder_is_killed() {
    let (_postgres, url) = server_with_database();
    let azurite = Azurite::start();
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.url().trim_start_matches("http://").to_owned();
    let (layout, img) = image(&tmp.path().join("img"), &[LAYER]);
    seed(&layout, &host, "big/app", "v1");
    let manifest = sha256(raw_manifest(&host, "big/app", "v1").as_bytes());
    let relay = Relay::start(parent.addr, None, Some(RATE));
    let dirs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("replica{i}")))
        .collect();
    let args = [
        "--repo",
        "big/*",
        "--sync-lease",
        LEASE,
        "--sync-poll-interval",
        "PT1S",
        "--gc-interval",
        "0s",
    ];
    let start = |data: &Path| replica(data, &azurite, &url, &relay.url(), &args);
    let mut replicas = vec![Some(start(&dirs[0])), Some(start(&dirs[1]))];
    let urls: Vec<String> = replicas.iter().flatten().map(|r| r.url()).collect();
    let watch = Watch::start(urls);

    // One replica takes the lease and pulls; the other stands by, naming it.
    let holder = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        (0..2).find(|&i| holds_lease(replicas[i].as_ref().unwrap()))
    })
    .expect("no replica took the sync lease");
    let standby = 1 - holder;
    // Once it has looked at the lease (its keeper's first attempt).
    let standby_status = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        status(replicas[standby].as_ref().unwrap()).filter(|s| !s["lease"]["holder"].is_null())
    })
    .expect("the standby never looked at the lease");
    let holder_name = status(replicas[holder].as_ref().unwrap()).unwrap()["lease"]["thisReplica"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        standby_status["lease"]["heldHere"], false,
        "{standby_status}"
    );
    assert_eq!(
        standby_status["lease"]["holder"].as_str(),
        Some(holder_name.as_str()),
        "the standby names the holder: {standby_status}"
    );

    // Killed in the middle of the pass, with part of the layer downloaded (two commits of it).
    let got_far = poll(Duration::from_secs(60), Duration::from_millis(20), || {
        (relay.down.load(Ordering::Relaxed) >= 2 * COMMIT + (2 << 20)).then_some(())
    });
    assert!(got_far.is_some(), "the holder never got far into the layer");
    replicas[holder].as_mut().unwrap().kill();
    replicas[holder] = None;
    let before_kill = relay.down.load(Ordering::Relaxed);
    eprintln!("holder {holder} killed after the relay carried {before_kill} bytes");

    // The other takes over, finishes, and resumed rather than starting over.
    let survivor = replicas[standby].as_ref().unwrap();
    wait_for_tag(survivor, "big/app", "v1", &manifest);
    let done = status(survivor).unwrap();
    assert_eq!(done["lease"]["heldHere"], true, "{done}");
    let result = &done["lastResult"];
    eprintln!("the survivor's pass: {result}");
    assert_eq!(result["outcome"], "Completed", "{result}");
    assert!(
        result["blobsResumed"].as_u64().unwrap() >= 1,
        "nothing resumed: {result}"
    );
    let total = LAYER as u64;
    let carried = relay.down.load(Ordering::Relaxed);
    eprintln!("the relay carried {carried} bytes in all for {total} bytes of layer");
    assert!(
        carried < total + COMMIT + (1 << 20),
        "{carried} bytes carried for {total}: more than the uncommitted part was fetched again"
    );
    let blobs = assert_pulled_identical(
        tmp.path(),
        &host,
        survivor.url().trim_start_matches("http://"),
        "big/app",
        "v1",
    );
    assert_eq!(
        blobs,
        2 + img.layers.len(),
        "manifest, config and the layers"
    );

    // Stopped cleanly, the holder gives the lease up: a new replica takes it.
    replicas.push(Some(start(&dirs[2])));
    let survivor = replicas[standby].as_mut().unwrap();
    survivor.sigterm();
    survivor.exit_within(Duration::from_secs(30));
    assert!(
        survivor.log_text().contains("sync lease given up"),
        "{}",
        survivor.log_text()
    );
    let newcomer = replicas[2].as_ref().unwrap();
    let took = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        holds_lease(newcomer).then_some(())
    });
    assert!(took.is_some(), "{}", newcomer.log_text());
    assert_eq!(
        Api::new(&newcomer.url())
            .get_manifest("big/app", "v1")
            .expect(200)
            .header("docker-content-digest")
            .as_deref(),
        Some(manifest.as_str())
    );

    let seen = watch.finish();
    eprintln!("seen: {seen:?}");
    assert!(
        seen.overlaps.is_empty(),
        "two passes at once: {:?}",
        seen.overlaps
    );
    assert!(
        seen.running_seen[holder],
        "the first holder never ran a pass"
    );
    assert!(
        !seen.passes[standby].is_empty(),
        "the survivor never finished a pass"
    );
}

/// Mounts the blob `bytes` into `repo` without naming a source (any blob stored may be
/// mounted), or uploads it when it cannot be (not stored, or collected meanwhile); whether it
/// was mounted.
fn mount_or_upload(api: &Api, repo: &str, bytes: &[u8]) -> bool {
    let digest = sha256(bytes);
    let resp = api.send(api.req(
        reqwest::Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?mount={digest}"),
    ));
    match resp.status {
        201 => true,
        202 => {
            let location = resp.header("location").expect("an upload location");
            let put = api.send(
                api.req(reqwest::Method::PUT, &Api::with_digest(&location, &digest))
                    .header("content-type", "application/octet-stream")
                    .body(bytes.to_vec()),
            );
            assert_eq!(put.status, 201, "upload of {digest}: {}", put.text());
            false
        }
        other => panic!("mount of {digest} into {repo}: {other} {}", resp.text()),
    }
}

/// GC on one replica, every 200 ms with a 1 s grace, while the other takes pushes of images
/// whose layers are old blobs nothing references any more (mounted where they are still
/// stored, uploaded again where GC took them): pushes may be refused and are tried again, but
/// every one acknowledged stays whole, its manifest and every blob it references, through
/// either replica, after GC ran on.
#[test]
fn gc_on_one_replica_never_takes_what_pushes_through_the_other_reuse() {
    let (_postgres, url) = server_with_database();
    let azurite = Azurite::start();
    let tmp = tempfile::tempdir().unwrap();
    let pusher = serve_azblob(
        &tmp.path().join("pusher"),
        &azurite,
        "shared",
        &["--metadata", url.as_str(), "--gc-interval", "0s"],
    );
    let collector = serve_azblob(
        &tmp.path().join("collector"),
        &azurite,
        "shared",
        &[
            "--metadata",
            url.as_str(),
            "--gc-interval",
            "200ms",
            "--gc-grace",
            "1s",
        ],
    );
    let api = Api::new(&pusher.url());

    // Old blobs: uploaded into a repository, referenced by nothing; GC takes them once they
    // are older than the grace period.
    let pool: Vec<Vec<u8>> = (0..48)
        .map(|i| common::oci::seeded_bytes(i, 2048 + 97 * i as usize))
        .collect();
    for blob in &pool {
        api.push_blob("pool/src", blob);
    }
    std::thread::sleep(Duration::from_millis(1200));

    let pushed: Mutex<Vec<(String, String, Vec<u8>)>> = Mutex::default();
    let (mounted, uploaded, refused) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        for worker in 0..4u64 {
            let (api, pool, pushed) = (&api, &pool, &pushed);
            let (mounted, uploaded, refused) = (&mounted, &uploaded, &refused);
            s.spawn(move || {
                let repo = format!("app/w{worker}");
                for n in 0..12u64 {
                    let config = common::api::config_bytes(&format!("w{worker}n{n}"));
                    let layers: Vec<&Vec<u8>> = (0..3)
                        .map(|k| {
                            &pool[((worker * 7 + n * 5 + k * 11) % pool.len() as u64) as usize]
                        })
                        .collect();
                    let manifest = common::api::image_manifest(
                        common::api::OCI_MANIFEST,
                        &common::api::Desc::of(common::api::OCI_CONFIG, &config),
                        &layers
                            .iter()
                            .map(|l| common::api::Desc::of(common::api::OCI_LAYER, l))
                            .collect::<Vec<_>>(),
                    );
                    let tag = format!("v{n}");
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        api.push_blob(&repo, &config);
                        for layer in &layers {
                            let counter = match mount_or_upload(api, &repo, layer) {
                                true => mounted,
                                false => uploaded,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        let put =
                            api.put_manifest(&repo, &tag, common::api::OCI_MANIFEST, &manifest);
                        if put.status == 201 {
                            break;
                        }
                        // A blob linked before GC removed its unreferenced link: pushed again.
                        assert_eq!(put.status, 400, "{repo}:{tag}: {}", put.text());
                        assert!(
                            put.text().contains("MANIFEST_BLOB_UNKNOWN"),
                            "{}",
                            put.text()
                        );
                        refused.fetch_add(1, Ordering::Relaxed);
                        assert!(tries < 10, "{repo}:{tag} refused {tries} times");
                    }
                    pushed.lock().unwrap().push((repo.clone(), tag, manifest));
                }
            });
        }
    });
    // GC runs on for a while over everything pushed.
    std::thread::sleep(Duration::from_millis(2500));
    let pushed = pushed.into_inner().unwrap();
    eprintln!(
        "{} images pushed: {} layers mounted, {} uploaded again (collected), {} manifests refused and pushed again",
        pushed.len(),
        mounted.load(Ordering::Relaxed),
        uploaded.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    let collected = collector.log_text();
    assert!(
        collected.contains("garbage collected"),
        "GC never ran on the collector: {collected}"
    );
    for replica in [&pusher, &collector] {
        let api = Api::new(&replica.url());
        for (repo, tag, manifest) in &pushed {
            common::checks::assert_push_intact(&api, repo, tag, manifest);
        }
    }
}
