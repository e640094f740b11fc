//! `serve --storage azblob://CONTAINER`: blobs in Azure Blob Storage, here a real Azurite
//! started by each test. Real clients push and pull byte-identical; a chunked upload started
//! on one `serve` is finished on a second sharing the container; `kill -9` during an upload
//! leaves nothing under a digest and the upload continues or starts again; `--print-config`
//! and refused settings never show the account key.

#![forbid(unsafe_code)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::azurite::{container_digests, serve_azblob, serve_azblob_on, Azurite};
use common::oci::{random_bytes, Layout};
use common::skopeo;
use reqwest::Method;

/// The path of an upload location (absolute or not), for `Api`.
fn path_of(location: &str) -> String {
    common::checks::path_of(location)
}

/// Files under `dir`'s `blobs/` and `uploads/`: none when the blobs are in the container.
fn local_blob_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("blobs"), &mut out);
    walk(&dir.join("uploads"), &mut out);
    out
}

#[test]
fn skopeo_pushes_and_pulls_byte_identical_through_azure_blob_storage() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let reg = serve_azblob(&data, &azurite, "images", &[]);
    let (src, image) = Layout::with_image(
        &dir.path().join("src"),
        "v1",
        &[3 << 20, 256 << 10, 9 << 20, 0],
    );
    let dst = format!("docker://{}/apps/web:v1", reg.addr);
    skopeo::copy(&src.reference("v1"), &dst, false);
    assert_eq!(sha256(&skopeo::inspect_raw(&dst)), image.manifest.digest);

    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("v1"), false);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        assert!(
            back.read_blob(&blob.digest) == src.read_blob(&blob.digest),
            "{} differs after the round trip",
            blob.digest
        );
    }
    assert_eq!(
        back.read_blob(&image.manifest.digest),
        src.read_blob(&image.manifest.digest)
    );
    // The bytes went to the container, not to the data directory.
    assert!(
        local_blob_files(&data).is_empty(),
        "{:?}",
        local_blob_files(&data)
    );
    let listed = container_digests(&azurite, "images", &dir.path().join("probe"));
    for blob in [&image.manifest, &image.config]
        .into_iter()
        .chain(&image.layers)
    {
        assert!(
            listed.contains(&blob.digest),
            "{} not in the container",
            blob.digest
        );
    }
    // A Range read is served from the object store.
    let api = Api::new(&reg.url());
    let layer = &image.layers[2];
    let part = api
        .send(
            api.req(Method::GET, &format!("/v2/apps/web/blobs/{}", layer.digest))
                .header("range", "bytes=1000-2999999"),
        )
        .expect(206);
    assert!(part.body == src.read_blob(&layer.digest)[1000..3_000_000]);
}

#[test]
fn a_chunked_upload_started_on_one_serve_is_finished_on_another_sharing_the_container() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let a = serve_azblob(&dir.path().join("a"), &azurite, "shared", &[]);
    let b = serve_azblob(&dir.path().join("b"), &azurite, "shared", &[]);
    let (api_a, api_b) = (Api::new(&a.url()), Api::new(&b.url()));
    let whole = random_bytes((20 << 20) + 4321);
    let digest = sha256(&whole);
    let cuts = [0, 5 << 20, (13 << 20) + 1, whole.len()];

    // Chunk 1 on A, chunk 2 on B, chunk 3 on A again: each replica takes over where the
    // session stands, whoever took the chunk before.
    let mut loc = path_of(&api_a.start_upload("edge/app"));
    for (n, window) in cuts.windows(2).enumerate() {
        let api = if n == 1 { &api_b } else { &api_a };
        let (start, end) = (window[0], window[1]);
        let r = api
            .patch_chunk(
                &loc,
                &whole[start..end],
                Some(&format!("{start}-{}", end - 1)),
            )
            .expect(202);
        assert_eq!(r.header("range"), Some(format!("0-{}", end - 1)));
        loc = path_of(&r.header("location").unwrap());
    }
    // A chunk out of order is refused on either, saying where the session stands.
    let stale = api_b.patch_chunk(&loc, b"late", Some("0-3"));
    assert_eq!(stale.status, 416);
    assert_eq!(
        stale.header("range"),
        Some(format!("0-{}", whole.len() - 1))
    );
    // Status on B, finish on B.
    let status = api_b.get(&loc).expect(204);
    assert_eq!(
        status.header("range"),
        Some(format!("0-{}", whole.len() - 1))
    );
    api_b
        .send(api_b.req(Method::PUT, &Api::with_digest(&loc, &digest)))
        .expect(201);
    api_b.assert_serves_blob("edge/app", &whole);
    // A's blob contract sees the blob B committed: a mount without a source repository
    // (content discovery) links it there, and A serves it.
    api_a
        .send(api_a.req(
            Method::POST,
            &format!("/v2/edge/app/blobs/uploads/?mount={digest}"),
        ))
        .expect(201);
    api_a.assert_serves_blob("edge/app", &whole);
    // The session is over on both.
    api_a.get(&loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn kill9_during_an_upload_leaves_nothing_under_a_digest_and_the_upload_goes_on() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let mut reg = serve_azblob_on(&data, port, &azurite, "crash", &[]);
    let api = Api::new(&reg.url());

    // A chunked upload with its first chunk acknowledged.
    let whole = random_bytes(12 << 20);
    let acked = 9 << 20;
    let session = path_of(&api.start_upload("big"));
    api.patch_chunk(&session, &whole[..acked], Some(&format!("0-{}", acked - 1)))
        .expect(202);

    // A monolithic PUT of 96 MiB, killed while its body still arrives (past a commit of the
    // staging blob, so part of it is stored in the container).
    let big = Arc::new(random_bytes(96 << 20));
    let big_digest = sha256(&big);
    let trickle = Trickle::new(big.clone(), 80 << 20);
    let sent = trickle.sent.clone();
    let upload = {
        let loc = api.start_upload("big");
        let url = api.url(&Api::with_digest(&loc, &big_digest));
        let http = api.http.clone();
        let len = big.len() as u64;
        std::thread::spawn(move || {
            http.put(url)
                .header("content-type", "application/octet-stream")
                .body(reqwest::blocking::Body::sized(trickle, len))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    let start = Instant::now();
    while sent.load(Ordering::Relaxed) < (82 << 20) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the upload did not progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.kill();
    let outcome = upload.join().unwrap();
    assert!(!matches!(outcome, Ok(201)), "{outcome:?}");

    // Nothing under the digest, nothing under a digest of the bytes that did arrive.
    let listed = container_digests(&azurite, "crash", &dir.path().join("probe"));
    assert!(!listed.contains(&big_digest), "{listed:?}");
    assert!(!listed.contains(&sha256(&whole[..acked])), "{listed:?}");
    assert!(listed.is_empty(), "no blob was ever finished: {listed:?}");

    let reg = serve_azblob_on(&data, port, &azurite, "crash", &[]);
    let api = Api::new(&reg.url());
    api.head(&format!("/v2/big/blobs/{big_digest}")).expect(404);

    // The chunked session continues from what was acknowledged.
    let status = api.get(&session).expect(204);
    assert_eq!(status.header("range"), Some(format!("0-{}", acked - 1)));
    let r = api
        .patch_chunk(
            &session,
            &whole[acked..],
            Some(&format!("{acked}-{}", whole.len() - 1)),
        )
        .expect(202);
    let loc = path_of(&r.header("location").unwrap());
    api.send(api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&whole))))
        .expect(201);
    api.assert_serves_blob("big", &whole);

    // The monolithic one, started again, is whole.
    assert_eq!(api.push_blob("big", &big), big_digest);
    let got = api.get(&format!("/v2/big/blobs/{big_digest}")).expect(200);
    assert_eq!(sha256(&got.body), big_digest);
}

#[test]
fn settings_name_what_is_wrong_and_never_show_the_key() {
    let azurite = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let cs = azurite.connection_string();
    let key = registry::azurite::KEY;
    let run = |args: &[&str], cs: Option<&str>| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(args).env_remove("AZURE_STORAGE_CONNECTION_STRING");
        if let Some(cs) = cs {
            cmd.env("AZURE_STORAGE_CONNECTION_STRING", cs);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(key), "the key was shown:\n{text}");
        (out.status.success(), text)
    };
    let (ok, text) = run(
        &[
            "serve",
            "--data",
            data_s,
            "--storage",
            "azblob://images",
            "--print-config",
        ],
        Some(&cs),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("azblob://images") && text.contains("devstoreaccount1"),
        "{text}"
    );
    let (ok, text) = run(
        &["serve", "--data", data_s, "--storage", "azblob://images"],
        None,
    );
    assert!(
        !ok && text.contains("AZURE_STORAGE_CONNECTION_STRING"),
        "{text}"
    );
    let (ok, text) = run(
        &["serve", "--data", data_s, "--storage", "s3://bucket"],
        Some(&cs),
    );
    assert!(!ok && text.contains("azblob://CONTAINER"), "{text}");
    let wrong_key = cs.replace(key, "d3Jvbmcta2V5LXdyb25nLWtleQ==");
    let (ok, text) = run(
        &[
            "serve",
            "--data",
            data_s,
            "--storage",
            "azblob://images",
            "--listen",
            "127.0.0.1:0",
        ],
        Some(&wrong_key),
    );
    assert!(!ok && text.contains("Azure Blob Storage"), "{text}");
    assert!(!text.contains("d3Jvbmcta2V5LXdyb25nLWtleQ=="), "{text}");

    // A data directory remembers where its blobs are: a command told otherwise is refused.
    let reg = serve_azblob(&data, &azurite, "images", &[]);
    drop(reg);
    let (ok, text) = run(&["gc", "--data", data_s], Some(&cs));
    assert!(!ok && text.contains("--storage azblob://images"), "{text}");
    let (ok, text) = run(
        &["gc", "--data", data_s, "--storage", "azblob://images"],
        Some(&cs),
    );
    assert!(ok, "{text}");
}
