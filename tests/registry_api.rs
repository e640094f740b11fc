//! Protocol tests for every endpoint of the OCI Distribution API v1.1 served by
//! `connected-registry serve`, over real sockets with a plain HTTP client.

#![forbid(unsafe_code)]

mod common;

use common::api::*;
use common::oci::random_bytes;
use common::target::{setup, Kind, Target};
use reqwest::Method;
use serde_json::json;

/// The reference implementation lacks this feature: the test checks only our registry.
fn ours_only(t: &Target, what: &str) -> bool {
    if t.kind == Kind::Distribution {
        eprintln!("skipped against distribution: it does not implement {what}");
        return false;
    }
    true
}

#[test]
fn base_endpoint_answers_with_api_version_header() {
    let (_d, _t, api) = setup();
    let r = api.get("/v2/").expect(200);
    assert_eq!(
        r.header("docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
}

/// Checks a manifest GET/HEAD answer for `reference`: status, type, exact bytes, digest header.
#[track_caller]
fn assert_manifest_served(api: &Api, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let digest = sha256(body);
    let r = api
        .send(
            api.req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", media_type),
        )
        .expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some(media_type),
        "GET {reference} content type"
    );
    assert_eq!(
        r.body, body,
        "GET {reference} must serve the pushed bytes exactly"
    );
    assert_eq!(
        r.header("docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "GET {reference} digest header"
    );
    let h = api
        .send(
            api.req(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
                .header("accept", media_type),
        )
        .expect(200);
    assert_eq!(
        h.header("content-type").as_deref(),
        Some(media_type),
        "HEAD {reference} content type"
    );
    assert_eq!(
        h.header("content-length"),
        Some(body.len().to_string()),
        "HEAD {reference} length"
    );
    assert_eq!(
        h.header("docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "HEAD {reference} digest header"
    );
    assert!(h.body.is_empty(), "HEAD has no body");
}

#[test]
fn oci_manifest_get_head_put_delete_by_tag_and_digest() {
    let (_d, _t, api) = setup();
    let repo = "team/app";
    let (manifest, mdesc, blobs) = api.push_image(repo, "v1", 2, 4096);
    // The PUT answer itself carries the digest and a Location.
    let r = api
        .put_manifest(repo, "v1", OCI_MANIFEST, &manifest)
        .expect(201);
    assert_eq!(
        r.header("docker-content-digest").as_deref(),
        Some(mdesc.digest.as_str())
    );
    assert!(
        r.header("location").is_some(),
        "manifest PUT answers with a Location"
    );
    assert_manifest_served(&api, repo, "v1", OCI_MANIFEST, &manifest);
    assert_manifest_served(&api, repo, &mdesc.digest, OCI_MANIFEST, &manifest);
    // PUT by digest works too (no tag).
    for b in &blobs {
        api.send(api.req(
            Method::POST,
            &format!(
                "/v2/team/other/blobs/uploads/?mount={}&from={repo}",
                b.digest
            ),
        ))
        .expect(201);
    }
    api.put_manifest("team/other", &mdesc.digest, OCI_MANIFEST, &manifest)
        .expect(201);
    assert_manifest_served(&api, "team/other", &mdesc.digest, OCI_MANIFEST, &manifest);
    // DELETE by digest removes the manifest, and with it the tag.
    api.delete(&format!("/v2/{repo}/manifests/{}", mdesc.digest))
        .expect(202);
    api.get(&format!("/v2/{repo}/manifests/{}", mdesc.digest))
        .expect_error(404, "MANIFEST_UNKNOWN");
    api.get(&format!("/v2/{repo}/manifests/v1"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    api.head(&format!("/v2/{repo}/manifests/v1")).expect(404);
    // The other repository's copy is untouched.
    assert_manifest_served(&api, "team/other", &mdesc.digest, OCI_MANIFEST, &manifest);
}

#[test]
fn pushing_to_an_existing_tag_moves_it() {
    let (_d, _t, api) = setup();
    let (first, fdesc, _) = api.push_image("moving", "v1", 1, 500);
    let (second, sdesc, _) = api.push_image("moving", "v1", 1, 500);
    assert_ne!(fdesc.digest, sdesc.digest);
    assert_manifest_served(&api, "moving", "v1", OCI_MANIFEST, &second);
    // The old manifest stays reachable by digest.
    assert_manifest_served(&api, "moving", &fdesc.digest, OCI_MANIFEST, &first);
    assert_eq!(api.tags("moving"), vec!["v1".to_string()]);
}

#[test]
fn empty_blob_round_trips() {
    let (_d, _t, api) = setup();
    let digest = api.push_blob("empty", b"");
    assert_eq!(
        digest,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let g = api.get(&format!("/v2/empty/blobs/{digest}")).expect(200);
    assert!(g.body.is_empty());
    let h = api.head(&format!("/v2/empty/blobs/{digest}")).expect(200);
    assert_eq!(h.header("content-length").as_deref(), Some("0"));
    assert_eq!(h.header("docker-content-digest"), Some(digest));
}

#[test]
fn delete_by_tag_removes_only_the_tag() {
    let (_d, t, api) = setup();
    if !ours_only(&t, "tag deletion") {
        return;
    }
    let repo = "app";
    let (manifest, mdesc, _) = api.push_image(repo, "keep", 1, 1000);
    api.put_manifest(repo, "drop", OCI_MANIFEST, &manifest)
        .expect(201);
    api.delete(&format!("/v2/{repo}/manifests/drop"))
        .expect(202);
    api.get(&format!("/v2/{repo}/manifests/drop"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(api.tags(repo), vec!["keep".to_string()]);
    assert_manifest_served(&api, repo, "keep", OCI_MANIFEST, &manifest);
    assert_manifest_served(&api, repo, &mdesc.digest, OCI_MANIFEST, &manifest);
}

#[test]
fn oci_index_docker_manifest_and_manifest_list_are_served_with_their_types() {
    let (_d, _t, api) = setup();
    let repo = "multi";
    // OCI: two images and an index over them.
    let (_, amd, _) = api.push_image(repo, "amd64", 1, 2048);
    let (_, arm, _) = api.push_image(repo, "arm64", 1, 2048);
    let index = index_manifest(OCI_INDEX, &[(amd.clone(), "amd64"), (arm.clone(), "arm64")]);
    let r = api
        .put_manifest(repo, "latest", OCI_INDEX, &index)
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(sha256(&index)));
    assert_manifest_served(&api, repo, "latest", OCI_INDEX, &index);
    assert_manifest_served(&api, repo, &sha256(&index), OCI_INDEX, &index);

    // Docker schema 2: a manifest and a manifest list over it.
    let config = config_bytes("amd64");
    api.push_blob(repo, &config);
    let layer = random_bytes(3000);
    api.push_blob(repo, &layer);
    let dm = image_manifest(
        DOCKER_MANIFEST,
        &Desc::of(DOCKER_CONFIG, &config),
        &[Desc::of(DOCKER_LAYER, &layer)],
    );
    api.put_manifest(repo, "docker", DOCKER_MANIFEST, &dm)
        .expect(201);
    assert_manifest_served(&api, repo, "docker", DOCKER_MANIFEST, &dm);
    let list = index_manifest(DOCKER_LIST, &[(Desc::of(DOCKER_MANIFEST, &dm), "amd64")]);
    api.put_manifest(repo, "docker-list", DOCKER_LIST, &list)
        .expect(201);
    assert_manifest_served(&api, repo, "docker-list", DOCKER_LIST, &list);
    assert_manifest_served(&api, repo, &sha256(&list), DOCKER_LIST, &list);
}

#[test]
fn unknown_media_type_is_stored_and_served_byte_exact() {
    let (_d, t, api) = setup();
    if !ours_only(&t, "arbitrary manifest media types") {
        return;
    }
    let body = b"{ \"hello\" :  \"world\",\n  \"n\": [1, 2.50, 3e0] }\n".to_vec();
    let mt = "application/vnd.example+json";
    let r = api.put_manifest("odd", "x", mt, &body).expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(sha256(&body)));
    assert_manifest_served(&api, "odd", "x", mt, &body);
    assert_manifest_served(&api, "odd", &sha256(&body), mt, &body);
}

#[test]
fn blob_get_head_delete() {
    let (_d, _t, api) = setup();
    let data = random_bytes(100_000);
    let digest = api.push_blob("blobs", &data);
    let path = format!("/v2/blobs/blobs/{digest}");
    let g = api.get(&path).expect(200);
    assert_eq!(g.body, data);
    assert_eq!(g.header("docker-content-digest"), Some(digest.clone()));
    let h = api.head(&path).expect(200);
    assert_eq!(h.header("content-length"), Some(data.len().to_string()));
    assert_eq!(h.header("docker-content-digest"), Some(digest.clone()));
    assert!(h.body.is_empty());
    api.delete(&path).expect(202);
    api.get(&path).expect_error(404, "BLOB_UNKNOWN");
    api.head(&path).expect(404);
}

#[test]
fn blob_range_requests() {
    let (_d, _t, api) = setup();
    let data = random_bytes(10_000);
    let digest = api.push_blob("ranges", &data);
    let path = format!("/v2/ranges/blobs/{digest}");
    let r = api
        .send(api.req(Method::GET, &path).header("range", "bytes=100-199"))
        .expect(206);
    assert_eq!(r.body, &data[100..200]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 100-199/10000")
    );
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    let r = api
        .send(api.req(Method::GET, &path).header("range", "bytes=9000-"))
        .expect(206);
    assert_eq!(r.body, &data[9000..]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 9000-9999/10000")
    );
    let r = api.send(
        api.req(Method::GET, &path)
            .header("range", "bytes=20000-20010"),
    );
    assert_eq!(r.status, 416, "unsatisfiable range: {}", r.text());
}

#[test]
fn monolithic_upload_with_single_post() {
    let (_d, t, api) = setup();
    if !ours_only(&t, "single-POST monolithic upload") {
        return;
    }
    let data = random_bytes(50_000);
    let digest = sha256(&data);
    let r = api
        .send(
            api.req(
                Method::POST,
                &format!("/v2/mono/blobs/uploads/?digest={digest}"),
            )
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
        )
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    let loc = r.header("location").expect("201 has a Location");
    assert_eq!(api.get(&loc).expect(200).body, data);
}

#[test]
fn upload_with_post_then_put() {
    let (_d, _t, api) = setup();
    let data = random_bytes(70_000);
    let digest = sha256(&data);
    let loc = api.start_upload("pp");
    let r = api
        .send(
            api.req(Method::PUT, &Api::with_digest(&loc, &digest))
                .header("content-type", "application/octet-stream")
                .body(data.clone()),
        )
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    let blob_loc = r.header("location").expect("201 has a Location");
    assert_eq!(api.get(&blob_loc).expect(200).body, data);
}

/// `Range` of an upload session: `0-N` (inclusive end) for `N+1` bytes received.
fn upload_range(n: usize) -> String {
    format!("0-{}", n - 1)
}

#[test]
fn chunked_upload_with_status_and_out_of_order_chunk() {
    let (_d, _t, api) = setup();
    let data = random_bytes(300_000);
    let digest = sha256(&data);
    let (a, b) = data.split_at(120_000);
    let loc = api.start_upload("chunky");
    let patch = |loc: &str, chunk: &[u8], from: usize| {
        api.send(
            api.req(Method::PATCH, loc)
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{}-{}", from, from + chunk.len() - 1),
                )
                .header("content-length", chunk.len().to_string())
                .body(chunk.to_vec()),
        )
    };
    let r = patch(&loc, a, 0).expect(202);
    assert_eq!(r.header("range"), Some(upload_range(a.len())));
    let loc = r.header("location").expect("PATCH answers with a Location");
    let uuid = r
        .header("docker-upload-uuid")
        .expect("PATCH answers with Docker-Upload-UUID");

    let s = api.get(&loc).expect(204);
    assert_eq!(
        s.header("range"),
        Some(upload_range(a.len())),
        "upload status range"
    );
    assert_eq!(s.header("docker-upload-uuid"), Some(uuid.clone()));
    assert!(
        s.header("location").is_some(),
        "upload status has a Location"
    );

    // A chunk that does not start where the last one ended is refused with 416.
    let r = patch(&loc, b, a.len() + 10);
    assert_eq!(r.status, 416, "out-of-order chunk: {}", r.text());
    // The session is intact and still at the same offset.
    let s = api.get(&loc).expect(204);
    assert_eq!(s.header("range"), Some(upload_range(a.len())));

    let r = patch(&loc, b, a.len()).expect(202);
    assert_eq!(r.header("range"), Some(upload_range(data.len())));
    let loc = r.header("location").unwrap();
    let r = api
        .send(
            api.req(Method::PUT, &Api::with_digest(&loc, &digest))
                .header("content-length", "0"),
        )
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    assert_eq!(
        api.get(&format!("/v2/chunky/blobs/{digest}"))
            .expect(200)
            .body,
        data
    );
    // A finished session is gone.
    api.get(&loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn final_put_may_carry_the_last_chunk() {
    let (_d, _t, api) = setup();
    let data = random_bytes(40_000);
    let digest = sha256(&data);
    let loc = api.start_upload("tail");
    let r = api
        .patch_chunk(&loc, &data[..10_000], Some("0-9999"))
        .expect(202);
    let loc = r.header("location").unwrap();
    api.send(
        api.req(Method::PUT, &Api::with_digest(&loc, &digest))
            .header("content-type", "application/octet-stream")
            .body(data[10_000..].to_vec()),
    )
    .expect(201);
    assert_eq!(
        api.get(&format!("/v2/tail/blobs/{digest}"))
            .expect(200)
            .body,
        data
    );
}

#[test]
fn cancelled_upload_is_gone_and_stored_nothing() {
    let (_d, t, api) = setup();
    let before = t.blob_files();
    let data = random_bytes(20_000);
    let loc = api.start_upload("cancel");
    let r = api.patch_chunk(&loc, &data, None).expect(202);
    let loc = r.header("location").unwrap();
    api.delete(&loc).expect(204);
    api.get(&loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.send(api.req(Method::PATCH, &loc).body(data.clone()))
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.get(&format!("/v2/cancel/blobs/{}", sha256(&data)))
        .expect_error(404, "BLOB_UNKNOWN");
    assert_eq!(t.blob_files(), before, "a cancelled upload leaves no blob");
}

#[test]
fn cross_repository_mount() {
    let (_d, _t, api) = setup();
    let data = random_bytes(30_000);
    let digest = api.push_blob("src/repo", &data);
    let r = api
        .send(api.req(
            Method::POST,
            &format!("/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"),
        ))
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    let loc = r
        .header("location")
        .expect("mount answers with the blob's Location");
    assert_eq!(api.get(&loc).expect(200).body, data);
    assert_eq!(
        api.get(&format!("/v2/dst/repo/blobs/{digest}"))
            .expect(200)
            .body,
        data
    );

    // Mounting a blob the source does not have falls back to an upload session.
    let missing = sha256(b"never pushed");
    let r = api
        .send(api.req(
            Method::POST,
            &format!("/v2/dst/repo/blobs/uploads/?mount={missing}&from=src/repo"),
        ))
        .expect(202);
    let loc = r
        .header("location")
        .expect("fallback upload has a Location");
    let other = random_bytes(5000);
    api.send(
        api.req(Method::PUT, &Api::with_digest(&loc, &sha256(&other)))
            .body(other.clone()),
    )
    .expect(201);
    api.head(&format!("/v2/dst/repo/blobs/{missing}"))
        .expect(404);
}

#[test]
fn automatic_mount_without_from() {
    let (_d, t, api) = setup();
    if !ours_only(&t, "automatic mount (mount without from)") {
        return;
    }
    let data = random_bytes(10_000);
    let digest = api.push_blob("first", &data);
    let r = api
        .send(api.req(
            Method::POST,
            &format!("/v2/second/blobs/uploads/?mount={digest}"),
        ))
        .expect(201);
    assert_eq!(r.header("docker-content-digest"), Some(digest.clone()));
    assert_eq!(
        api.get(&format!("/v2/second/blobs/{digest}"))
            .expect(200)
            .body,
        data
    );
}

/// Reads one page: the listed names and the `Link` header's next URL, if any.
fn page(api: &Api, path: &str, key: &str) -> (Vec<String>, Option<String>) {
    let r = api.get(path).expect(200);
    let names = r.json()[key]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let next = r.header("link").map(|l| {
        assert!(
            l.contains("rel=\"next\""),
            "Link header names rel=\"next\": {l}"
        );
        let start = l.find('<').expect("Link <url>") + 1;
        let end = l.find('>').expect("Link <url>");
        l[start..end].to_string()
    });
    (names, next)
}

#[test]
fn tags_list_sorted_and_paginated_with_link_header() {
    let (_d, t, api) = setup();
    let repo = "tagged";
    let (manifest, _, _) = api.push_image(repo, "m", 1, 100);
    for tag in ["c", "a", "e", "b", "d"] {
        api.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .expect(201);
    }
    let (all, next) = page(&api, &format!("/v2/{repo}/tags/list"), "tags");
    assert_eq!(all, ["a", "b", "c", "d", "e", "m"]);
    assert!(next.is_none(), "no Link when everything fits");
    let r = api.get(&format!("/v2/{repo}/tags/list")).json();
    assert_eq!(r["name"], json!(repo));
    if !ours_only(&t, "tags list pagination") {
        return;
    }
    let (p1, next) = page(&api, &format!("/v2/{repo}/tags/list?n=2"), "tags");
    assert_eq!(p1, ["a", "b"]);
    let next = next.expect("Link header to the next page");
    assert!(
        next.contains("last=b") && next.contains("n=2"),
        "next link keeps n and last: {next}"
    );
    let (p2, next) = page(&api, &next, "tags");
    assert_eq!(p2, ["c", "d"]);
    let (p3, _) = page(&api, &next.expect("third page"), "tags");
    assert_eq!(p3, ["e", "m"]);
    let (after, _) = page(&api, &format!("/v2/{repo}/tags/list?last=c"), "tags");
    assert_eq!(after, ["d", "e", "m"]);
    api.get("/v2/nosuch/tags/list")
        .expect_error(404, "NAME_UNKNOWN");
}

#[test]
fn catalog_sorted_and_paginated_with_link_header() {
    let (_d, _t, api) = setup();
    let repos = ["zeta", "alpha", "mid/one", "beta", "mid/two"];
    for r in repos {
        api.push_image(r, "v", 1, 100);
    }
    let (all, _) = page(&api, "/v2/_catalog", "repositories");
    assert_eq!(all, ["alpha", "beta", "mid/one", "mid/two", "zeta"]);
    let (p1, next) = page(&api, "/v2/_catalog?n=2", "repositories");
    assert_eq!(p1, ["alpha", "beta"]);
    let next = next.expect("Link header to the next page");
    let (p2, next) = page(&api, &next, "repositories");
    assert_eq!(p2, ["mid/one", "mid/two"]);
    let (p3, next) = page(&api, &next.expect("third page"), "repositories");
    assert_eq!(p3, ["zeta"]);
    if let Some(n) = next {
        let (p4, _) = page(&api, &n, "repositories");
        assert!(p4.is_empty(), "nothing after the last page");
    }
    let (after, _) = page(&api, "/v2/_catalog?last=beta", "repositories");
    assert_eq!(after, ["mid/one", "mid/two", "zeta"]);
}

#[test]
fn referrers_api_lists_and_filters_by_artifact_type() {
    let (_d, t, api) = setup();
    if !ours_only(&t, "the referrers API") {
        return;
    }
    let repo = "signed";
    let (_, subject, _) = api.push_image(repo, "v1", 1, 1000);
    let empty = b"{}".to_vec();
    api.push_blob(repo, &empty);
    let empty_desc = Desc::of("application/vnd.oci.empty.v1+json", &empty);
    let mut referrers = Vec::new();
    for (kind, n) in [
        ("application/vnd.example.sbom", 1),
        ("application/vnd.example.sig", 2),
    ] {
        for i in 0..n {
            let payload = format!("{kind} #{i}").into_bytes();
            api.push_blob(repo, &payload);
            let m = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": kind,
                "config": empty_desc.json(),
                "layers": [Desc::of("application/octet-stream", &payload).json()],
                "subject": subject.json(),
                "annotations": {"n": i.to_string()},
            }))
            .unwrap();
            let r = api
                .put_manifest(repo, &sha256(&m), OCI_MANIFEST, &m)
                .expect(201);
            assert_eq!(
                r.header("oci-subject"),
                Some(subject.digest.clone()),
                "PUT with subject answers OCI-Subject"
            );
            referrers.push((kind, Desc::of(OCI_MANIFEST, &m)));
        }
    }
    // A manifest without subject is no referrer and gets no OCI-Subject header.
    let (plain, _, _) = api.push_image(repo, "v2", 1, 10);
    let r = api
        .put_manifest(repo, "v2", OCI_MANIFEST, &plain)
        .expect(201);
    assert!(r.header("oci-subject").is_none());

    let r = api
        .get(&format!("/v2/{repo}/referrers/{}", subject.digest))
        .expect(200);
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_INDEX));
    let idx = r.json();
    assert_eq!(idx["schemaVersion"], json!(2));
    assert_eq!(idx["mediaType"], json!(OCI_INDEX));
    let mut got: Vec<(String, String, u64)> = idx["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], json!(OCI_MANIFEST));
            (
                m["digest"].as_str().unwrap().into(),
                m["artifactType"].as_str().unwrap().into(),
                m["size"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, u64)> = referrers
        .iter()
        .map(|(k, d)| (d.digest.clone(), k.to_string(), d.size))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(
        r.header("oci-filters-applied").is_none(),
        "no filter, no OCI-Filters-Applied"
    );

    let r = api
        .get(&format!(
            "/v2/{repo}/referrers/{}?artifactType=application/vnd.example.sig",
            subject.digest
        ))
        .expect(200);
    assert_eq!(
        r.header("oci-filters-applied").as_deref(),
        Some("artifactType")
    );
    let sigs = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(sigs.len(), 2);
    assert!(sigs
        .iter()
        .all(|m| m["artifactType"] == json!("application/vnd.example.sig")));

    // A digest nothing refers to: an empty index, not an error.
    let none = sha256(b"nothing refers to this");
    let r = api.get(&format!("/v2/{repo}/referrers/{none}")).expect(200);
    assert_eq!(r.json()["manifests"], json!([]));
}

#[test]
fn data_directory_from_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    if common::target::kind() == Kind::Distribution {
        return;
    }
    let data = dir.path().join("envdata");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _p = common::Proc::start(
        &common::bin(),
        &["serve", "--listen", &listen],
        &[
            ("ACR_REGISTRY_DATA_VOLUME", data.to_str().unwrap()),
            ("CONNECTED_REGISTRY_AUTH", "none"),
        ],
        listen.parse().unwrap(),
        dir.path().join("env.log"),
    );
    let api = Api::new(&format!("http://{listen}"));
    let blob = random_bytes(1000);
    let digest = api.push_blob("env", &blob);
    let hex = digest.trim_start_matches("sha256:");
    let file = data.join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(
        std::fs::read(&file).unwrap_or_default(),
        blob,
        "blob stored under $ACR_REGISTRY_DATA_VOLUME at {}",
        file.display()
    );
    assert!(
        data.join("meta.redb").exists(),
        "metadata in $ACR_REGISTRY_DATA_VOLUME/meta.redb"
    );
}
