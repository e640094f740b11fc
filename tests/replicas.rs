//! Two `serve` replicas on shared services (metadata in PostgreSQL, blobs and upload sessions
//! in one Azure Blob Storage container on Azurite) behind our TLS proxy, end to end with real
//! clients (`tests/common/replicas.rs` starts the set):
//!
//! - what is pushed through one replica directly is pulled through the other, byte-identical;
//!   `skopeo` and a private `dockerd` push and pull through the proxy, both verifying its
//!   certificate against the test CA, their requests spread over both replicas, so an upload
//!   started on one continues on the other. dockerd runs in a network namespace of its own and
//!   reaches the proxy at `proxy.test`, the far end of a veth pair (outside 127.0.0.0/8, which
//!   dockerd would treat as an insecure registry, unverified), relayed by the test process to
//!   the proxy byte for byte (`Replicas::reach_from_namespace`); it trusts the CA through
//!   `/etc/docker/certs.d/proxy.test:PORT/ca.crt`, and before that it refuses the proxy (x509
//!   error), so the check is real. Needs root (namespaces, `/etc/docker/certs.d`) for that part;
//! - a replica killed with `kill -9` in the middle of a chunked upload (a PATCH through the
//!   proxy in flight to it): the client asks where the upload stands, the proxy sends it to the
//!   other replica, every acknowledged chunk is there, the rest goes there too and the blob is
//!   whole;
//! - a replica killed in the middle of a pull (a large blob GET streaming from it): the client's
//!   retry, a GET with `Range` from where it stopped, completes through the other replica and
//!   the bytes are the blob's;
//! - after each kill, every tag's manifest and blobs are whole through both replicas
//!   (`common::checks`), the killed one restarted.
//!
//! The kill -9 torture on this backend is `torture.rs`'s
//! `a_replica_on_postgresql_and_azure_blob_storage_survives_crashes`.

#![forbid(unsafe_code)]

mod common;

use std::io::Read;
use std::time::Duration;

use common::api::*;
use common::checks::assert_push_intact;
use common::docker::Dockerd;
use common::oci::{first_image_layers, seeded_bytes, Layout};
use common::replicas::Replicas;
use common::{skopeo, wait_until};
use reqwest::Method;

/// Pushes an image of one layer `layer` (and a small config) through `api`, tagged `repo:tag`;
/// the manifest's bytes.
fn push_with_layer(api: &Api, repo: &str, tag: &str, layer: &[u8]) -> Vec<u8> {
    api.push_blob(repo, layer);
    tag_image_of(api, repo, tag, layer)
}

/// [`push_with_layer`] for a layer pushed already: the config and the manifest.
fn tag_image_of(api: &Api, repo: &str, tag: &str, layer: &[u8]) -> Vec<u8> {
    let config = config_bytes("amd64");
    api.push_blob(repo, &config);
    let manifest = image_manifest(
        OCI_MANIFEST,
        &Desc::of(OCI_CONFIG, &config),
        &[Desc::of(OCI_LAYER, layer)],
    );
    api.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
        .expect(201);
    manifest
}

#[test]
fn a_push_through_one_replica_is_pulled_through_the_other_and_through_the_proxy() {
    let set = Replicas::start(2, &[]);
    let (a, b) = (set.replicas[0].api(), set.replicas[1].api());

    // Direct: pushed through A, read through B byte for byte.
    let layer = seeded_bytes(1, 3 << 20);
    let manifest = push_with_layer(&a, "direct/app", "v1", &layer);
    assert_push_intact(&b, "direct/app", "v1", &manifest);
    let got = b
        .get(&format!("/v2/direct/app/blobs/{}", sha256(&layer)))
        .expect(200);
    assert!(got.body == layer, "B serves A's layer byte for byte");

    // skopeo through the proxy, verifying its certificate: push, then pull back.
    let t = set.dir.path();
    let (src, image) = Layout::with_image(&t.join("src"), "v1", &[2 << 20, 300_000, 20_000]);
    let back = Layout::create(&t.join("back"));
    set.skopeo_push_and_pull(
        &src.reference("v1"),
        "proxied/app:v1",
        &back.reference("v1"),
        None,
    );
    assert_eq!(
        skopeo::inspect_raw(&back.reference("v1")),
        skopeo::inspect_raw(&src.reference("v1")),
        "the manifest pulled through the proxy is the one pushed"
    );
    assert_eq!(first_image_layers(&t.join("back")), image.layer_digests());
    for l in &image.layers {
        assert!(back.read_blob(&l.digest) == src.read_blob(&l.digest));
    }
    // The push went through both replicas (sequential requests take turns), and each serves
    // all of it.
    for r in &set.replicas {
        assert!(
            r.served("/v2/proxied/app/") > 0,
            "replica {} took none of the push's requests",
            r.url()
        );
        let manifest = r.api().get_manifest("proxied/app", "v1").body;
        assert_push_intact(&r.api(), "proxied/app", "v1", &manifest);
    }

    // A private dockerd in a network namespace of its own, reaching the proxy at
    // proxy.test:PORT, outside 127.0.0.0/8, so it verifies the proxy's certificate: without
    // the test CA it refuses the proxy, which it would not if it skipped the check.
    let mut reach = set.reach_from_namespace();
    let dk = Dockerd::start_in(Some(&reach.ns));
    let host = reach.host.clone();
    let pulled = format!("{host}/proxied/app:v1");
    let refused = dk.docker(&["pull", &pulled]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("x509: certificate signed by unknown authority"),
        "dockerd without the test CA refuses the proxy's certificate: {}\nstderr: {stderr}",
        refused.status
    );

    // Given the CA: pull what skopeo pushed, push it under a new name, remove it locally and
    // pull that back.
    reach.trust_for_docker(&set.ca);
    dk.docker_ok(&["pull", &pulled]);
    let id = dk.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pulled]);
    assert_eq!(id.trim(), image.config.digest, "docker pulled the image");
    let pushed = format!("{host}/docker/app:v2");
    dk.docker_ok(&["tag", &pulled, &pushed]);
    dk.docker_ok(&["push", &pushed]);
    for r in &set.replicas {
        let m = r.api().get_manifest("docker/app", "v2").expect(200);
        assert_push_intact(&r.api(), "docker/app", "v2", &m.body);
    }
    dk.docker_ok(&["rmi", &pulled, &pushed]);
    dk.docker_ok(&["pull", &pushed]);
    let id = dk.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pushed]);
    assert_eq!(
        id.trim(),
        image.config.digest,
        "pulled back what docker pushed"
    );
    // dockerd's only way to the proxy was the namespace's link: it carried the image twice
    // down (pull, pull back).
    let down = reach.relay.down.load(std::sync::atomic::Ordering::Relaxed);
    let image_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    assert!(
        down > 2 * image_bytes,
        "the link to the proxy carried {down} bytes down; the image is {image_bytes}"
    );
}

/// Bytes per chunk of the chunked upload.
const CHUNK: usize = 4 << 20;

#[test]
fn a_replica_killed_in_the_middle_of_a_chunked_upload_loses_no_acknowledged_chunk() {
    let mut set = Replicas::start(2, &[]);
    let api = set.proxy_api();
    let blob = seeded_bytes(2, 5 * CHUNK);
    let repo = "chunked/app";

    // Two chunks acknowledged (each on whichever replica the proxy chose).
    let mut location = api.start_upload(repo);
    for i in 0..2 {
        let range = format!("{}-{}", i * CHUNK, (i + 1) * CHUNK - 1);
        let r = api
            .patch_chunk(&location, &blob[i * CHUNK..(i + 1) * CHUNK], Some(&range))
            .expect(202);
        location = r.header("location").expect("a PATCH answer's Location");
    }

    // The third trickles; the replica receiving it is killed halfway.
    let third = std::sync::Arc::new(blob[2 * CHUNK..3 * CHUNK].to_vec());
    let trickle = Trickle::new(third, CHUNK / 4);
    let sent = trickle.sent.clone();
    let patch = api
        .req(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", 2 * CHUNK, 3 * CHUNK - 1))
        .body(reqwest::blocking::Body::sized(trickle, CHUNK as u64));
    let in_flight = std::thread::spawn(move || patch.send().map(|r| r.status().as_u16()));
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(10),
        || sent.load(std::sync::atomic::Ordering::Relaxed) > CHUNK / 2
    ));
    let victim = set.busy_replica();
    set.kill9(victim);
    let answer = in_flight.join().unwrap();
    assert!(
        !matches!(answer, Ok(202)),
        "the PATCH whose replica died was not acknowledged: {answer:?}"
    );
    let other = 1 - victim;

    // The client asks where the upload stands: the other replica answers, with every
    // acknowledged byte (and perhaps some of the broken chunk), never more than was sent.
    let status = api.get(&location).expect(204);
    let held: usize = status
        .header("range")
        .and_then(|r| r.strip_prefix("0-")?.parse::<usize>().ok())
        .map_or(0, |end| end + 1);
    assert!(
        (2 * CHUNK..=3 * CHUNK).contains(&held),
        "the session holds {held} bytes after the kill; 2 chunks ({}) were acknowledged",
        2 * CHUNK
    );
    let location = status.header("location").unwrap_or(location);
    // The rest goes to the other replica (the dead one is out of the route), then the PUT.
    let r = api
        .patch_chunk(
            &location,
            &blob[held..4 * CHUNK],
            Some(&format!("{held}-{}", 4 * CHUNK - 1)),
        )
        .expect(202);
    let location = r.header("location").unwrap();
    let digest = sha256(&blob);
    let r = api.send(
        api.req(Method::PUT, &Api::with_digest(&location, &digest))
            .header("content-type", "application/octet-stream")
            .body(blob[4 * CHUNK..].to_vec()),
    );
    r.expect(201);
    assert!(
        set.replicas[other].served("/v2/chunked/app/blobs/uploads/") > 0,
        "the surviving replica took the upload over"
    );
    let manifest = tag_image_of(&api, repo, "v1", &blob);

    // Nothing lost or half-written: through the proxy, the survivor and the restarted victim.
    set.restart(victim);
    for api in [api, set.replicas[0].api(), set.replicas[1].api()] {
        assert_push_intact(&api, repo, "v1", &manifest);
    }
}

/// Size of the blob pulled while its replica dies: far more than the buffers between.
const LARGE: usize = 96 << 20;

#[test]
fn a_replica_killed_in_the_middle_of_a_pull_the_range_retry_completes_through_the_other() {
    let mut set = Replicas::start(2, &[]);
    let blob = seeded_bytes(3, LARGE);
    let digest = sha256(&blob);
    let manifest = push_with_layer(&set.replicas[0].api(), "pull/app", "v1", &blob);

    let http = set.https_client();
    let url = format!("{}/v2/pull/app/blobs/{digest}", set.proxy_url());
    let mut got = Vec::with_capacity(LARGE);
    let mut response = http
        .get(&url)
        .send()
        .expect("GET the blob")
        .error_for_status()
        .unwrap();
    // Read slowly at first, so the kill lands in the middle of the stream.
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < 4 << 20 {
        let n = response.read(&mut buf).expect("the first bytes");
        assert!(n > 0, "the blob ended early");
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let victim = set.busy_replica();
    set.kill9(victim);
    let broke = loop {
        match response.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e),
        }
    };
    assert!(
        broke.is_some() && got.len() < LARGE,
        "the download broke with its replica ({} of {LARGE} bytes)",
        got.len()
    );

    // The client's retry: from where it stopped, as clients resume.
    let rest = http
        .get(&url)
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .expect("the retried GET");
    assert_eq!(rest.status().as_u16(), 206, "a Range GET answers 206");
    let expected_range = format!("bytes {}-{}/{LARGE}", got.len(), LARGE - 1);
    assert_eq!(
        rest.headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok()),
        Some(expected_range.as_str())
    );
    got.extend_from_slice(&rest.bytes().expect("the rest of the blob"));
    assert_eq!(got.len(), LARGE);
    assert!(
        sha256(&got) == digest,
        "the bytes pulled in two parts are the blob's"
    );
    assert!(
        !set.in_service(victim),
        "the proxy took the killed replica out"
    );

    set.restart(victim);
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || set.in_service(victim)
    ));
    for r in &set.replicas {
        assert_push_intact(&r.api(), "pull/app", "v1", &manifest);
    }
}
