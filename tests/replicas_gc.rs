//! GC with several `serve` replicas on shared services (metadata in PostgreSQL, blobs in one
//! Azure Blob Storage container on Azurite; `tests/common/replicas.rs`): GC on one replica, in
//! a tight loop with a short grace period, while the other takes pushes of images whose layers
//! are old blobs nothing references any more; every push acknowledged stays whole.

#![forbid(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::api::{sha256, Api};
use common::replicas::Services;

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
    let services = Services::start();
    let tmp = tempfile::tempdir().unwrap();
    let pusher = services.serve(&tmp.path().join("pusher"), &["--gc-interval", "0s"]);
    let collector = services.serve(
        &tmp.path().join("collector"),
        &["--gc-interval", "200ms", "--gc-grace", "1s"],
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
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
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
    // It took blobs meanwhile (pool blobs it found unreferenced), so pushes raced real deletes.
    let blobs_deleted: usize = collected
        .lines()
        .filter_map(|l| {
            l.split("blobs_deleted: ")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        blobs_deleted > 0,
        "GC on the collector never deleted a blob: {collected}"
    );
    for replica in [&pusher, &collector] {
        let api = Api::new(&replica.url());
        for (repo, tag, manifest) in &pushed {
            common::checks::assert_push_intact(&api, repo, tag, manifest);
        }
    }
}
