//! Bad input against `connected-registry serve`: every refusal is the spec's JSON error with the
//! spec's status and code, and after every refused request the store holds nothing new.

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::api::*;
use common::oci::random_bytes;
use common::target::{setup, setup_with, Kind, Target};
use reqwest::Method;
use serde_json::json;

/// What the store holds: blob files on disk, the catalog, and the tags of `repos`.
#[derive(Debug, PartialEq)]
struct Snapshot {
    blobs: BTreeSet<(String, u64)>,
    catalog: String,
    tags: Vec<Vec<String>>,
}

fn snapshot(t: &Target, api: &Api, repos: &[&str]) -> Snapshot {
    let catalog = api.get("/v2/_catalog").text();
    Snapshot {
        blobs: t.blob_files(),
        catalog,
        tags: repos.iter().map(|r| api.tags(r)).collect(),
    }
}

/// Runs `refused` (which must assert its own refusal) and checks that the store is unchanged.
#[track_caller]
fn refused_stores_nothing(
    t: &Target,
    api: &Api,
    repos: &[&str],
    what: &str,
    refused: impl FnOnce(),
) {
    let before = snapshot(t, api, repos);
    refused();
    let after = snapshot(t, api, repos);
    let added: Vec<_> = after.blobs.difference(&before.blobs).collect();
    let removed: Vec<_> = before.blobs.difference(&after.blobs).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{what}: a refused request changed the blob store: added {added:?}, removed {removed:?}"
    );
    assert_eq!(before, after, "{what}: a refused request changed the store");
}

#[test]
fn invalid_repository_names_are_refused() {
    let (_d, t, api) = setup();
    let manifest_body = image_manifest(OCI_MANIFEST, &Desc::of(OCI_CONFIG, b"{}"), &[]);
    let too_long = format!("{}/{}", "a".repeat(200), "b".repeat(60));
    let names = [
        "Upper/case",
        "a//b",
        "-leading",
        "trailing-",
        "a..b",
        "a___b",
        "UPPER",
        "a/",
        too_long.as_str(),
    ];
    for name in names {
        refused_stores_nothing(&t, &api, &[], name, || {
            api.send(api.req(Method::POST, &format!("/v2/{name}/blobs/uploads/")))
                .expect_error(400, "NAME_INVALID");
            let data = b"named blob".to_vec();
            api.send(
                api.req(
                    Method::POST,
                    &format!("/v2/{name}/blobs/uploads/?digest={}", sha256(&data)),
                )
                .body(data),
            )
            .expect_error(400, "NAME_INVALID");
            api.put_manifest(name, "v1", OCI_MANIFEST, &manifest_body)
                .expect_error(400, "NAME_INVALID");
        });
    }
}

#[test]
fn valid_names_with_every_separator_are_accepted() {
    let (_d, _t, api) = setup();
    let long = format!("{}/{}", "a".repeat(200), "b".repeat(54));
    for name in ["a.b_c__d-e---f/g0/h", "x/y/z/w", "0", long.as_str()] {
        let (manifest, _, _) = api.push_image(name, "v1", 1, 10);
        assert_eq!(
            api.get_manifest(name, "v1").expect(200).body,
            manifest,
            "{name}"
        );
    }
}

/// Pushes a config to `repo`; returns a maker of OCI manifests over it padded (by an
/// annotation) with `pad` bytes, to probe the manifest size limit.
fn padded_manifests(api: &Api, repo: &str) -> impl Fn(usize) -> Vec<u8> {
    let config = config_bytes("amd64");
    api.push_blob(repo, &config);
    let cdesc = Desc::of(OCI_CONFIG, &config);
    move |pad| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.json(), "layers": [],
            "annotations": {"pad": "x".repeat(pad)},
        }))
        .unwrap()
    }
}

#[test]
fn default_manifest_limit_is_4_mib() {
    let (_d, t, api) = setup();
    let make = padded_manifests(&api, "big");
    let limit = 4 << 20;
    let base = make(0).len();
    api.put_manifest("big", "fits", OCI_MANIFEST, &make(limit - base))
        .expect(201);
    refused_stores_nothing(&t, &api, &["big"], "manifest of 4 MiB + 1", || {
        let r = api.put_manifest("big", "toolarge", OCI_MANIFEST, &make(limit - base + 1));
        assert!(
            r.status == 413 || error_codes(&r.text()).contains(&"MANIFEST_INVALID".to_string()),
            "{} {}",
            r.status,
            r.text()
        );
        if t.kind == Kind::Ours {
            assert!(
                r.text().contains("4194304"),
                "the error names the default limit: {}",
                r.text()
            );
        }
    });
}

#[test]
fn invalid_digests_are_refused() {
    let (_d, t, api) = setup();
    let data = random_bytes(1000);
    let good = sha256(&data);
    let hex = good.trim_start_matches("sha256:").to_string();
    let bad = [
        format!("md5:{}", &hex[..32]),
        format!("sha256:{}", &hex[..40]),
        format!("sha256:{}zz", &hex[..62]),
        format!("sha256:{}", hex.to_uppercase()),
        hex.clone(),
    ];
    for digest in &bad {
        refused_stores_nothing(&t, &api, &["dig"], digest, || {
            let loc = api.start_upload("dig");
            api.send(
                api.req(Method::PUT, &Api::with_digest(&loc, digest))
                    .body(data.clone()),
            )
            .expect_error(400, "DIGEST_INVALID");
        });
    }
    // Digest that does not match the uploaded bytes, monolithic and chunked.
    let other = sha256(b"something else");
    refused_stores_nothing(&t, &api, &["dig"], "mismatch", || {
        let loc = api.start_upload("dig");
        api.send(
            api.req(Method::PUT, &Api::with_digest(&loc, &other))
                .body(data.clone()),
        )
        .expect_error(400, "DIGEST_INVALID");
        let loc = api.start_upload("dig");
        let r = api.patch_chunk(&loc, &data, None).expect(202);
        let loc = r.header("location").unwrap();
        api.send(api.req(Method::PUT, &Api::with_digest(&loc, &other)))
            .expect_error(400, "DIGEST_INVALID");
        api.head(&format!("/v2/dig/blobs/{other}")).expect(404);
        api.head(&format!("/v2/dig/blobs/{good}")).expect(404);
    });
    // Reading with a malformed digest is refused as such, not answered as "unknown".
    api.get("/v2/dig/blobs/sha256:nothex")
        .expect_error(400, "DIGEST_INVALID");
}

#[test]
fn sha512_digests_are_accepted() {
    let (_d, t, api) = setup();
    if t.kind == Kind::Distribution {
        return;
    }
    use sha2::{Digest, Sha512};
    let data = random_bytes(5000);
    let digest = format!("sha512:{}", hex::encode(Sha512::digest(&data)));
    let loc = api.start_upload("long");
    let r = api
        .send(
            api.req(Method::PUT, &Api::with_digest(&loc, &digest))
                .body(data.clone()),
        )
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    assert_eq!(
        api.get(&format!("/v2/long/blobs/{digest}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn invalid_manifests_are_refused() {
    let (_d, t, api) = setup();
    let config = config_bytes("amd64");
    api.push_blob("bad", &config);
    let cdesc = Desc::of(OCI_CONFIG, &config);
    let valid = image_manifest(OCI_MANIFEST, &cdesc, &[]);
    api.put_manifest("bad", "ok", OCI_MANIFEST, &valid)
        .expect(201);
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("not JSON", Some(OCI_MANIFEST), b"this is not json".to_vec()),
        ("truncated JSON", Some(OCI_MANIFEST), valid[..valid.len() / 2].to_vec()),
        (
            "no schemaVersion",
            Some(OCI_MANIFEST),
            serde_json::to_vec(&json!({"mediaType": OCI_MANIFEST, "config": cdesc.json(), "layers": []})).unwrap(),
        ),
        (
            "schemaVersion 1 with an OCI type",
            Some(OCI_MANIFEST),
            serde_json::to_vec(&json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": cdesc.json(), "layers": []}))
                .unwrap(),
        ),
        (
            "image manifest without config",
            Some(OCI_MANIFEST),
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})).unwrap(),
        ),
        (
            "mediaType contradicts Content-Type",
            Some(OCI_MANIFEST),
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})).unwrap(),
        ),
        (
            // (With config/layers or manifests the registry may infer the type from the shape.)
            "no mediaType, no Content-Type, no recognizable shape",
            None,
            serde_json::to_vec(&json!({"schemaVersion": 2, "annotations": {"a": "b"}})).unwrap(),
        ),
        (
            "descriptor with a malformed digest",
            Some(OCI_MANIFEST),
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:xyz", "size": 2}, "layers": []}))
            .unwrap(),
        ),
    ];
    // PUT by a digest that is not the body's digest.
    refused_stores_nothing(&t, &api, &["bad"], "manifest digest mismatch", || {
        let wrong = sha256(b"other bytes");
        api.put_manifest("bad", &wrong, OCI_MANIFEST, &valid)
            .expect_error(400, "DIGEST_INVALID");
        api.get(&format!("/v2/bad/manifests/{wrong}"))
            .expect_error(404, "MANIFEST_UNKNOWN");
    });
    for (what, ct, body) in cases {
        refused_stores_nothing(&t, &api, &["bad"], what, || {
            let mut rb = api
                .req(Method::PUT, "/v2/bad/manifests/new")
                .body(body.clone());
            if let Some(ct) = ct {
                rb = rb.header("content-type", ct);
            }
            let r = api.send(rb);
            assert_eq!(
                r.status,
                400,
                "{what}: expected 400 MANIFEST_INVALID, got: {}",
                r.text()
            );
            let codes = error_codes(&r.text());
            assert!(
                codes.iter().any(|c| c == "MANIFEST_INVALID"
                    || (what.contains("digest") && c == "DIGEST_INVALID")),
                "{what}: expected MANIFEST_INVALID, got {codes:?}"
            );
            api.get("/v2/bad/manifests/new")
                .expect_error(404, "MANIFEST_UNKNOWN");
            api.get(&format!("/v2/bad/manifests/{}", sha256(&body)))
                .expect_error(404, "MANIFEST_UNKNOWN");
        });
    }
}

#[test]
fn manifests_referencing_missing_content_are_refused() {
    let (_d, t, api) = setup();
    let config = config_bytes("amd64");
    api.push_blob("refs", &config);
    let cdesc = Desc::of(OCI_CONFIG, &config);
    let missing_layer = Desc::of(OCI_LAYER, b"layer never pushed");
    let missing_config = Desc::of(OCI_CONFIG, b"{\"config never pushed\":1}");
    let (_, present, _) = api.push_image("refs", "base", 1, 100);
    let absent_child = Desc::of(
        OCI_MANIFEST,
        &image_manifest(OCI_MANIFEST, &cdesc, std::slice::from_ref(&missing_layer)),
    );
    let cases = vec![
        (
            "missing layer",
            OCI_MANIFEST,
            image_manifest(OCI_MANIFEST, &cdesc, std::slice::from_ref(&missing_layer)),
        ),
        (
            "missing config",
            OCI_MANIFEST,
            image_manifest(OCI_MANIFEST, &missing_config, &[]),
        ),
        (
            "docker manifest with missing layer",
            DOCKER_MANIFEST,
            image_manifest(
                DOCKER_MANIFEST,
                &Desc::of(DOCKER_CONFIG, &config),
                &[Desc::of(DOCKER_LAYER, b"nope")],
            ),
        ),
        (
            "index with a missing child",
            OCI_INDEX,
            index_manifest(
                OCI_INDEX,
                &[(present.clone(), "amd64"), (absent_child, "arm64")],
            ),
        ),
    ];
    for (what, mt, body) in cases {
        refused_stores_nothing(&t, &api, &["refs"], what, || {
            api.put_manifest("refs", "broken", mt, &body)
                .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
            api.get("/v2/refs/manifests/broken")
                .expect_error(404, "MANIFEST_UNKNOWN");
        });
    }
}

#[test]
fn unknown_manifests_blobs_and_uploads() {
    let (_d, t, api) = setup();
    api.push_image("known", "v1", 1, 100);
    let nothing = sha256(b"nothing");
    api.get("/v2/known/manifests/nosuchtag")
        .expect_error(404, "MANIFEST_UNKNOWN");
    api.get(&format!("/v2/known/manifests/{nothing}"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    api.head("/v2/known/manifests/nosuchtag").expect(404);
    api.get(&format!("/v2/known/blobs/{nothing}"))
        .expect_error(404, "BLOB_UNKNOWN");
    api.head(&format!("/v2/known/blobs/{nothing}")).expect(404);
    refused_stores_nothing(&t, &api, &["known"], "deletes of unknown things", || {
        let r = api.delete(&format!("/v2/known/manifests/{nothing}"));
        assert_eq!(r.status, 404, "{}", r.text());
        let r = api.delete(&format!("/v2/known/blobs/{nothing}"));
        assert_eq!(r.status, 404, "{}", r.text());
    });
    let uuid = "3f0e4b7c-1111-4222-8333-944445555666";
    let loc = format!("/v2/known/blobs/uploads/{uuid}");
    refused_stores_nothing(&t, &api, &["known"], "unknown upload session", || {
        api.get(&loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.send(api.req(Method::PATCH, &loc).body(b"abc".to_vec()))
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.send(
            api.req(Method::PUT, &Api::with_digest(&loc, &sha256(b"abc")))
                .body(b"abc".to_vec()),
        )
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.delete(&loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    });
    // A session belongs to its repository.
    let real = api.start_upload("known");
    let uuid = real
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    api.get(&format!("/v2/other/blobs/uploads/{uuid}"))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn malformed_references_are_unknown_manifests_except_to_put() {
    let (_d, t, api) = setup();
    let (manifest, _, _) = api.push_image("known", "v1", 1, 100);
    // The OCI v1.1 conformance suite reads `.INVALID_MANIFEST_NAME` and expects 404: nothing can
    // be stored under a reference that is not one.
    let long_tag = "t".repeat(129);
    let malformed = [
        ".INVALID_MANIFEST_NAME",
        "-leading-dash",
        long_tag.as_str(),
        "sha256:nothex",
    ];
    refused_stores_nothing(
        &t,
        &api,
        &["known"],
        "reads of malformed references",
        || {
            for reference in malformed {
                let path = format!("/v2/known/manifests/{reference}");
                api.get(&path).expect_error(404, "MANIFEST_UNKNOWN");
                api.head(&path).expect(404);
                let r = api.delete(&path);
                assert_eq!(r.status, 404, "DELETE {reference}: {}", r.text());
            }
        },
    );
    if t.kind == Kind::Distribution {
        return; // its router answers a PUT to an unroutable reference 404 as well
    }
    // A PUT names what it would create: a malformed name is the client's to fix.
    refused_stores_nothing(&t, &api, &["known"], "PUT to malformed references", || {
        api.put_manifest("known", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, &manifest)
            .expect_error(400, "MANIFEST_INVALID");
        api.put_manifest("known", "sha256:nothex", OCI_MANIFEST, &manifest)
            .expect_error(400, "DIGEST_INVALID");
    });
}

/// PATCHes `data` to a new upload in `repo` with `Content-Range: content_range` and asserts
/// the refusal: 416, or 400 with SIZE_INVALID or BLOB_UPLOAD_INVALID. `what` names the case.
fn patch_is_refused(api: &Api, repo: &str, content_range: &str, data: &[u8], what: &str) {
    let loc = api.start_upload(repo);
    let r = api.patch_chunk(&loc, data, Some(content_range));
    let codes = error_codes(&r.text());
    assert!(
        r.status == 416
            || (r.status == 400
                && codes
                    .iter()
                    .any(|c| c == "SIZE_INVALID" || c == "BLOB_UPLOAD_INVALID")),
        "{what}: got {} {}",
        r.status,
        r.text()
    );
}

#[test]
fn malformed_content_range_and_size_mismatch_are_refused() {
    let (_d, t, api) = setup();
    let data = random_bytes(1000);
    refused_stores_nothing(
        &t,
        &api,
        &["sz"],
        "Content-Range larger than the body",
        || {
            patch_is_refused(
                &api,
                "sz",
                "0-1999",
                &data,
                "Content-Range 0-1999 with a 1000-byte body",
            );
            api.head(&format!("/v2/sz/blobs/{}", sha256(&data)))
                .expect(404);
        },
    );
    refused_stores_nothing(&t, &api, &["sz"], "garbage Content-Range", || {
        patch_is_refused(&api, "sz", "bytes=lots", &data, "garbage Content-Range");
    });
    // The body ends before its Content-Length: nothing may be stored.
    refused_stores_nothing(&t, &api, &["sz"], "short body", || {
        let loc = api.start_upload("sz");
        let url = api.url(&Api::with_digest(&loc, &sha256(&data)));
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let mut s = TcpStream::connect(t.proc.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            t.host(),
            data.len() * 2
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.starts_with("HTTP/1.1 201"),
            "a short body must not complete an upload: {answer}"
        );
        api.head(&format!("/v2/sz/blobs/{}", sha256(&data)))
            .expect(404);
    });
    // The final PUT's body is longer than its claimed range: SIZE_INVALID-class refusal.
    refused_stores_nothing(&t, &api, &["sz"], "digest of more than was sent", || {
        let loc = api.start_upload("sz");
        let mut whole = data.clone();
        whole.extend_from_slice(b"tail");
        let r = api.send(
            api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&whole)))
                .body(data.clone()),
        );
        assert_eq!(r.status, 400, "{}", r.text());
    });
}

#[test]
fn oversized_manifest_is_refused_naming_the_limit() {
    let limit: usize = 2048;
    let limit_s = limit.to_string();
    let (_d, t, api) = setup_with(&["--max-manifest-size", &limit_s]);
    let limit = if t.kind == Kind::Distribution {
        4 << 20
    } else {
        limit
    };
    let make = padded_manifests(&api, "big");
    // Exactly at the limit is fine.
    let base = make(0).len();
    let at_limit = make(limit - base);
    assert_eq!(at_limit.len(), limit);
    api.put_manifest("big", "fits", OCI_MANIFEST, &at_limit)
        .expect(201);
    let over = make(limit - base + 1);
    refused_stores_nothing(&t, &api, &["big"], "oversized manifest", || {
        let r = api.put_manifest("big", "toolarge", OCI_MANIFEST, &over);
        let codes = error_codes(&r.text());
        assert!(
            r.status == 413 || (r.status == 400 && codes.iter().any(|c| c == "MANIFEST_INVALID")),
            "oversized manifest: got {} {}",
            r.status,
            r.text()
        );
        if t.kind == Kind::Ours {
            let text = r.text();
            assert!(
                text.contains(&limit.to_string()) && text.contains("max-manifest-size"),
                "the error names the limit ({limit}) and the setting (--max-manifest-size): {text}"
            );
        }
        api.get("/v2/big/manifests/toolarge")
            .expect_error(404, "MANIFEST_UNKNOWN");
    });
}

/// A client still sending a refused body reads the error, not a broken pipe or a reset: the
/// server reads and drops the rest of the body before answering.
#[test]
fn a_client_sending_a_refused_body_reads_the_error() {
    let (_d, t, api) = setup_with(&["--max-manifest-size", "2048"]);
    if t.kind != Kind::Ours {
        return;
    }
    let make = padded_manifests(&api, "big");
    let over = make(12 << 20);
    let chunk = random_bytes(12 << 20);
    let location = api.start_upload("big");
    for attempt in 0..10 {
        let r = api.put_manifest("big", "toolarge", OCI_MANIFEST, &over);
        assert_eq!(r.status, 413, "manifest, attempt {attempt}: {}", r.text());
        assert!(r.text().contains("max-manifest-size"), "{}", r.text());
        let range = format!("5-{}", 5 + chunk.len() - 1);
        let r = api.patch_chunk(&location, &chunk, Some(&range));
        assert_eq!(
            r.status,
            416,
            "chunk out of order, attempt {attempt}: {}",
            r.text()
        );
    }
}

/// The rest of a refused body is read only up to the drain budget (64 MiB): a client that goes
/// on sending a huge refused body is cut off, not read to the end.
#[test]
fn a_refused_body_is_drained_only_up_to_its_budget() {
    let (_d, t, _api) = setup_with(&["--max-manifest-size", "2048"]);
    if t.kind != Kind::Ours {
        return;
    }
    let declared: u64 = 1 << 30;
    let mut conn = TcpStream::connect(t.proc.addr).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        conn,
        "PUT /v2/big/manifests/huge HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {declared}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0u64;
    while sent < declared && conn.write_all(&chunk).is_ok() {
        sent += chunk.len() as u64;
    }
    assert!(
        sent < 256 << 20,
        "the server read {sent} bytes of a refused 1 GiB body"
    );
}

/// A client that asks `Expect: 100-continue` and is refused on its headers alone (a declared
/// size over the limit) gets the error without being invited to send the body.
#[test]
fn a_refused_expect_continue_client_never_sends_the_body() {
    let (d, t, api) = setup_with(&["--max-manifest-size", "2048"]);
    if t.kind != Kind::Ours {
        return;
    }
    let body = d.path().join("big-manifest.json");
    std::fs::write(&body, padded_manifests(&api, "big")(4 << 20)).unwrap();
    let out = common::run_ok(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_upload}",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {OCI_MANIFEST}"),
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{}/v2/big/manifests/toolarge", api.base),
        ],
    );
    assert_eq!(out.trim(), "413 0", "status and bytes uploaded");
}

#[test]
fn unsatisfiable_range_is_416_and_changes_nothing() {
    let (_d, t, api) = setup();
    let data = random_bytes(1000);
    let digest = api.push_blob("rg", &data);
    refused_stores_nothing(&t, &api, &["rg"], "bad range", || {
        for range in ["bytes=1000-", "bytes=5000-6000"] {
            let r = api.send(
                api.req(Method::GET, &format!("/v2/rg/blobs/{digest}"))
                    .header("range", range),
            );
            assert_eq!(r.status, 416, "Range {range}: {}", r.text());
            let cr = r.header("content-range").unwrap_or_default();
            assert!(
                cr.is_empty() || cr == "bytes */1000",
                "416 Content-Range names the size: {cr}"
            );
        }
    });
}

/// A chunk whose body breaks off halfway is refused and rolled back: the session holds what it
/// held before, and the upload can go on from there.
#[test]
fn a_chunk_that_breaks_off_is_rolled_back() {
    let (_d, t, api) = setup();
    let data = random_bytes(100_000);
    let loc = api.start_upload("broken");
    let mut conn = TcpStream::connect(t.host()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        conn,
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        t.host(),
        data.len()
    )
    .unwrap();
    conn.write_all(&data[..30_000]).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    // The answer to the broken chunk comes after the handler has finished with the session.
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("BLOB_UPLOAD_INVALID"),
        "a broken-off body is refused: {answer}"
    );
    let status = api.get(&loc).expect(204);
    assert_eq!(
        status.header("range").as_deref(),
        Some("0-0"),
        "nothing kept"
    );
    let r = api
        .patch_chunk(&loc, &data, Some(&format!("0-{}", data.len() - 1)))
        .expect(202);
    let loc = r.header("location").unwrap();
    api.send(api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&data))))
        .expect(201);
}

/// Every error says whose fault it is and whether a retry can help, in the words the proxy and
/// sync use: a bad request is the client's and not worth repeating as it is.
#[test]
fn errors_say_whose_fault_and_whether_to_retry() {
    let (_d, t, api) = setup();
    if t.kind != Kind::Ours {
        return;
    }
    let body = api
        .get("/v2/Bad_Name/tags/list")
        .expect_error(400, "NAME_INVALID")
        .json();
    assert_eq!(body["errors"][0]["detail"]["fault"], "client", "{body}");
    assert_eq!(body["errors"][0]["detail"]["retryable"], false, "{body}");
    let body = api
        .get("/v2/nothing/manifests/v1")
        .expect_error(404, "MANIFEST_UNKNOWN")
        .json();
    assert_eq!(body["errors"][0]["detail"]["fault"], "client", "{body}");
}
