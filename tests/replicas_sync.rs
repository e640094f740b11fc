//! Sync with several `serve` replicas on shared services (metadata in PostgreSQL, blobs and
//! upload sessions in one Azure Blob Storage container on Azurite; `tests/common/replicas.rs`),
//! from a parent (CNCF distribution behind a loopback relay that slows the link and counts what
//! it carries): the sync lease lets exactly one replica run passes at a time, and the standbys'
//! status names the holder; the holder killed with `kill -9` in the middle of a pass, another
//! takes the lease over and finishes, resuming the partial blob from the shared upload session
//! instead of fetching it again, and what it serves is byte-identical to the parent's; the
//! holder stopped cleanly (SIGTERM) gives the lease up and the last replica takes it.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::{sha256, Api};
use common::distribution::start_distribution;
use common::relay::Relay;
use common::replicas::Services;
use common::sync::{child_args, image, pull, push as seed, raw_manifest, wait_for_tag};
use common::{poll, Proc};
use serde_json::Value;

/// The replica's sync status (`None` while it does not answer: killed, or not up).
fn status(replica: &Proc) -> Option<Value> {
    status_at(&replica.url())
}

/// The sync status of the replica at `url` (`None` while it does not answer).
fn status_at(url: &str) -> Option<Value> {
    reqwest::blocking::Client::new()
        .get(format!("{url}/acr/v1/_sync/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?
        .json()
        .ok()
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
            while !stop2.load(Ordering::Relaxed) {
                let statuses: Vec<Option<Value>> =
                    replicas.iter().map(|url| status_at(url)).collect();
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

/// The replicas among `replicas` (those still running) whose status says they hold the lease.
fn holders(replicas: &[Option<Proc>]) -> Vec<usize> {
    (0..replicas.len())
        .filter(|&i| replicas[i].as_ref().is_some_and(holds_lease))
        .collect()
}

/// The one replica holding the lease, once one does (waiting up to 30 s); panics when two do.
#[track_caller]
fn the_holder(replicas: &[Option<Proc>]) -> usize {
    poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let held = holders(replicas);
        assert!(held.len() < 2, "replicas {held:?} all hold the lease");
        held.first().copied()
    })
    .expect("no replica holds the sync lease")
}

#[test]
fn one_replica_syncs_at_a_time_and_another_finishes_when_the_holder_is_killed() {
    let services = Services::start();
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.url().trim_start_matches("http://").to_owned();
    let (layout, img) = image(&tmp.path().join("img"), &[LAYER]);
    seed(&layout, &host, "big/app", "v1");
    let manifest = sha256(raw_manifest(&host, "big/app", "v1").as_bytes());
    let relay = Relay::start(parent.addr, None, Some(RATE));
    let relay_url = relay.url();
    let args = child_args(
        &relay_url,
        &[
            "--repo",
            "big/*",
            "--sync-lease",
            LEASE,
            "--sync-poll-interval",
            "PT1S",
            "--gc-interval",
            "0s",
        ],
    );
    let start = |i: usize| services.serve(&tmp.path().join(format!("replica{i}")), &args);
    let mut replicas: Vec<Option<Proc>> = (0..3).map(|i| Some(start(i))).collect();
    let urls: Vec<String> = replicas.iter().flatten().map(|r| r.url()).collect();
    let watch = Watch::start(urls);

    // One replica takes the lease and pulls; the others stand by, naming it.
    let holder = the_holder(&replicas);
    let holder_name = status(replicas[holder].as_ref().unwrap()).unwrap()["lease"]["thisReplica"]
        .as_str()
        .unwrap()
        .to_owned();
    for standby in (0..3).filter(|&i| i != holder) {
        // Once it has looked at the lease (its keeper's first attempt).
        let seen = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            status(replicas[standby].as_ref().unwrap()).filter(|s| !s["lease"]["holder"].is_null())
        })
        .expect("a standby never looked at the lease");
        assert_eq!(seen["lease"]["heldHere"], false, "{seen}");
        assert_eq!(seen["running"], false, "{seen}");
        assert_eq!(
            seen["lease"]["holder"].as_str(),
            Some(holder_name.as_str()),
            "the standby names the holder: {seen}"
        );
    }

    // Killed in the middle of the pass, with part of the layer downloaded (two commits of it).
    let got_far = poll(Duration::from_secs(60), Duration::from_millis(20), || {
        (relay.down.load(Ordering::Relaxed) >= 2 * COMMIT + (2 << 20)).then_some(())
    });
    assert!(got_far.is_some(), "the holder never got far into the layer");
    replicas[holder].as_mut().unwrap().kill();
    replicas[holder] = None;
    let before_kill = relay.down.load(Ordering::Relaxed);
    eprintln!("holder {holder} killed after the relay carried {before_kill} bytes");

    // Another takes over, finishes, and resumed rather than starting over.
    let survivor = the_holder(&replicas);
    let proc = replicas[survivor].as_ref().unwrap();
    wait_for_tag(proc, "big/app", "v1", &manifest);
    let done = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        status(proc).filter(|s| s["lastResult"]["outcome"] == "Completed")
    })
    .expect("the survivor's pass never completed");
    assert_eq!(done["lease"]["heldHere"], true, "{done}");
    let result = &done["lastResult"];
    eprintln!("the survivor's pass: {result}");
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
        proc.url().trim_start_matches("http://"),
        "big/app",
        "v1",
    );
    assert_eq!(
        blobs,
        2 + img.layers.len(),
        "manifest, config and the layers"
    );

    // Stopped cleanly, the holder gives the lease up: the last replica takes it.
    let proc = replicas[survivor].as_mut().unwrap();
    proc.sigterm();
    proc.exit_within(Duration::from_secs(30));
    assert!(
        proc.log_text().contains("sync lease given up"),
        "{}",
        proc.log_text()
    );
    replicas[survivor] = None;
    let last = the_holder(&replicas);
    assert_eq!(
        Api::new(&replicas[last].as_ref().unwrap().url())
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
        !seen.passes[survivor].is_empty(),
        "the survivor never finished a pass"
    );
}

/// `sync --once` on the replicas' shared metadata runs its pass only with the sync lease: beside
/// a replica that holds it, it gives up after the longest a takeover takes and says which
/// replica holds it; once that replica stopped cleanly (the lease given up), it takes the
/// lease, runs its pass over the shared store (nothing to fetch: the replica's copy is the
/// shared one) and gives the lease up again.
#[test]
fn sync_once_on_shared_metadata_runs_only_with_the_lease() {
    let services = Services::start();
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.url().trim_start_matches("http://").to_owned();
    let (layout, _) = image(&tmp.path().join("img"), &[64 << 10]);
    seed(&layout, &host, "small/app", "v1");
    let manifest = sha256(raw_manifest(&host, "small/app", "v1").as_bytes());
    let parent_url = parent.url();
    let args = child_args(
        &parent_url,
        &[
            "--repo",
            "small/*",
            "--sync-lease",
            LEASE,
            "--gc-interval",
            "0s",
        ],
    );
    let mut replica = services.serve(&tmp.path().join("replica"), &args);
    wait_for_tag(&replica, "small/app", "v1", &manifest);
    let holder = status(&replica).unwrap()["lease"]["thisReplica"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut once_args = services.serve_args();
    once_args.extend(["--repo", "small/*", "--sync-lease", "1s"].map(String::from));
    let once_args: Vec<&str> = once_args.iter().map(String::as_str).collect();
    let envs = services.envs();
    let mut envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    envs.push(("RUST_LOG", "info"));
    let once = || common::sync::sync_once(&tmp.path().join("once"), &parent_url, &once_args, &envs);

    // Beside the holder: refused, naming it.
    let out = once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran beside the holder: {stderr}");
    assert!(
        stderr.contains(&format!("the sync lease is held by {holder}")),
        "{stderr}"
    );
    assert!(holds_lease(&replica), "the holder kept the lease");

    // The holder stopped cleanly: the lease is free, and the one pass takes it.
    replica.sigterm();
    replica.exit_within(Duration::from_secs(30));
    let out = once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("this replica took the sync lease"),
        "{stderr}"
    );
    assert!(stderr.contains("sync lease given up"), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["outcome"], "Completed", "{summary}");
    assert_eq!(summary["blobsFetched"], 0, "{summary}");
}
