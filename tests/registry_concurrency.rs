//! Concurrency sanity for `connected-registry serve`: the same content pushed at the same time by
//! several clients is accepted by all of them and stored whole, once.

#![forbid(unsafe_code)]

mod common;

use std::sync::{Arc, Barrier};

use common::api::*;
use common::oci::random_bytes;
use common::target::Target;
use reqwest::Method;

#[test]
fn concurrent_pushes_of_the_same_blob_all_succeed_and_the_blob_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::start(&dir.path().join("reg"));
    let api = Arc::new(Api::new(&t.url()));
    let data = Arc::new(random_bytes(16 << 20));
    let digest = sha256(&data);
    let barrier = Arc::new(Barrier::new(3));
    let pushers: Vec<_> = (0..3)
        .map(|i| {
            let (api, data, barrier, digest) =
                (api.clone(), data.clone(), barrier.clone(), digest.clone());
            std::thread::spawn(move || {
                // Two in the same repository, one in another: all race for the same content.
                let repo = if i == 2 { "other" } else { "same" };
                let loc = api.start_upload(repo);
                barrier.wait();
                let r = api.send(
                    api.req(Method::PUT, &Api::with_digest(&loc, &digest))
                        .body(data.to_vec()),
                );
                (r.status, r.header("docker-content-digest"), r.text())
            })
        })
        .collect();
    for p in pushers {
        let (status, header, text) = p.join().unwrap();
        assert_eq!(status, 201, "every concurrent push succeeds: {text}");
        assert_eq!(header, Some(digest.clone()));
    }
    for repo in ["same", "other"] {
        let got = api.get(&format!("/v2/{repo}/blobs/{digest}")).expect(200);
        assert_eq!(got.body.len(), data.len());
        assert_eq!(sha256(&got.body), digest, "the blob is whole");
    }
    assert!(
        t.corrupt_blob_files().is_empty(),
        "torn blobs: {:?}",
        t.corrupt_blob_files()
    );
}

#[test]
fn concurrent_pushes_of_the_same_manifest_and_tag_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::start(&dir.path().join("reg"));
    let api = Arc::new(Api::new(&t.url()));
    let (manifest, mdesc, _) = api.push_image("race", "base", 2, 10_000);
    let barrier = Arc::new(Barrier::new(4));
    let pushers: Vec<_> = (0..4)
        .map(|_| {
            let (api, manifest, barrier) = (api.clone(), manifest.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                api.put_manifest("race", "latest", OCI_MANIFEST, &manifest)
                    .status
            })
        })
        .collect();
    for p in pushers {
        assert_eq!(p.join().unwrap(), 201);
    }
    let r = api.get_manifest("race", "latest").expect(200);
    assert_eq!(r.body, manifest);
    assert_eq!(r.header("docker-content-digest"), Some(mdesc.digest));
    assert_eq!(
        api.tags("race"),
        vec!["base".to_string(), "latest".to_string()]
    );
    drop(t);
}
