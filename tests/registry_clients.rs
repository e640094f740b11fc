//! Real clients against `connected-registry serve`: skopeo copies images and multi-arch indexes
//! in and out byte-identically, and a real Docker engine pulls, pushes, and pulls again.

#![forbid(unsafe_code)]

mod common;

use common::api::*;
use common::docker::Dockerd;
use common::oci::{Image, Layout};
use common::skopeo;
use common::target::setup;
use serde_json::Value;

/// Checks that `repo` serves `image` exactly: manifest bytes and digest, config and every layer.
#[track_caller]
fn assert_image_in_registry(
    api: &Api,
    repo: &str,
    reference: &str,
    layout: &Layout,
    image: &Image,
) {
    let want = std::fs::read(
        layout
            .dir
            .join("blobs/sha256")
            .join(image.manifest.digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let r = api
        .send(
            api.req(
                reqwest::Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header("accept", OCI_MANIFEST),
        )
        .expect(200);
    assert_eq!(r.body, want, "manifest bytes as in the layout");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest.digest.clone())
    );
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let b = api
            .get(&format!("/v2/{repo}/blobs/{}", blob.digest))
            .expect(200);
        assert_eq!(
            sha256(&b.body),
            blob.digest,
            "blob content matches its digest"
        );
        assert_eq!(b.body.len() as u64, blob.size);
    }
}

/// Every file of layout `a` is in layout `b` with the same bytes (blobs are named by digest).
#[track_caller]
fn assert_same_blobs(a: &Layout, b: &Layout) {
    for entry in std::fs::read_dir(a.dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let other = b.dir.join("blobs/sha256").join(entry.file_name());
        let got = std::fs::read(&other)
            .unwrap_or_else(|_| panic!("{} missing after the round trip", other.display()));
        assert_eq!(
            got,
            std::fs::read(entry.path()).unwrap(),
            "{} differs",
            other.display()
        );
    }
}

#[test]
fn skopeo_copies_a_multi_layer_image_in_and_out_byte_identical() {
    let (dir, t, api) = setup();
    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[1 << 20, 256 << 10, 3 << 20, 10_000, 0]);
    src.tag("v1", &image.manifest);
    let dst = format!("docker://{}/apps/web:v1", t.host());
    skopeo::copy(&src.reference("v1"), &dst, false);

    let raw = skopeo::inspect_raw(&dst);
    assert_eq!(
        sha256(&raw),
        image.manifest.digest,
        "skopeo inspect --raw: same manifest digest"
    );
    let info: Value =
        serde_json::from_str(&skopeo::run(&["inspect", "--tls-verify=false", &dst])).unwrap();
    assert_eq!(
        info["Digest"].as_str(),
        Some(image.manifest.digest.as_str())
    );
    let layers: Vec<String> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, want, "every layer digest as pushed");
    assert_image_in_registry(&api, "apps/web", "v1", &src, &image);
    assert_image_in_registry(&api, "apps/web", &image.manifest.digest, &src, &image);

    // And back out into a fresh layout, byte for byte.
    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("v1"), false);
    assert_eq!(skopeo::inspect_raw(&back.reference("v1")), raw);
    assert_same_blobs(&src, &back);

    // A second copy between repositories of the same registry keeps the digest too.
    let dst2 = format!("docker://{}/apps/web-copy:stable", t.host());
    skopeo::copy(&dst, &dst2, false);
    assert_eq!(sha256(&skopeo::inspect_raw(&dst2)), image.manifest.digest);
}

#[test]
fn skopeo_copy_all_of_a_multi_arch_index() {
    let (dir, t, api) = setup();
    let mut src = Layout::create(&dir.path().join("src"));
    let arches = ["amd64", "arm64", "s390x"];
    let (index, images) = src.add_index(&arches, &[200_000, 50_000]);
    src.tag("multi", &index);
    let dst = format!("docker://{}/multi/arch:1.0", t.host());
    skopeo::copy(&src.reference("multi"), &dst, true);

    let raw = skopeo::inspect_raw(&dst);
    assert_eq!(sha256(&raw), index.digest, "index digest unchanged");
    let r = api
        .send(
            api.req(reqwest::Method::GET, "/v2/multi/arch/manifests/1.0")
                .header("accept", OCI_INDEX),
        )
        .expect(200);
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(index.digest.clone())
    );
    for image in &images {
        assert_image_in_registry(&api, "multi/arch", &image.manifest.digest, &src, image);
    }

    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("multi"), true);
    assert_eq!(skopeo::inspect_raw(&back.reference("multi")), raw);
    assert_same_blobs(&src, &back);
}

#[test]
fn docker_pull_tag_push_rmi_and_pull_again() {
    let (dir, t, api) = setup();
    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[512 << 10, 64 << 10]);
    src.tag("v1", &image.manifest);
    let host = t.host();
    skopeo::copy(
        &src.reference("v1"),
        &format!("docker://{host}/seeded/img:v1"),
        false,
    );

    let dk = Dockerd::start();
    let seeded = format!("{host}/seeded/img:v1");
    dk.docker_ok(&["pull", &seeded]);
    let repo_digests = dk.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}} {{.Id}}",
        &seeded,
    ]);
    assert!(
        repo_digests.contains(&format!("{host}/seeded/img@{}", image.manifest.digest)),
        "docker pulled the manifest we pushed: {repo_digests}"
    );
    assert!(
        repo_digests.contains(&image.config.digest),
        "image id is the config digest: {repo_digests}"
    );

    let pushed = format!("{host}/pushed/img:copy");
    dk.docker_ok(&["tag", &seeded, &pushed]);
    dk.docker_ok(&["push", &pushed]);
    assert_eq!(api.tags("pushed/img"), vec!["copy".to_string()]);
    let m = api
        .send(
            api.req(reqwest::Method::GET, "/v2/pushed/img/manifests/copy")
                .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}")),
        )
        .expect(200);
    let manifest: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(m.header("docker-content-digest"), Some(sha256(&m.body)));
    let mut blobs: Vec<String> = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string()),
    );
    assert_eq!(blobs.len(), 3);
    assert_eq!(
        blobs[0], image.config.digest,
        "docker pushed the same config"
    );
    for d in &blobs {
        let b = api.get(&format!("/v2/pushed/img/blobs/{d}")).expect(200);
        assert_eq!(&sha256(&b.body), d, "pushed blob is whole");
    }

    dk.docker_ok(&["rmi", &seeded, &pushed]);
    let gone = dk.docker(&["image", "inspect", &pushed]);
    assert!(!gone.status.success(), "image removed locally");
    dk.docker_ok(&["pull", &pushed]);
    let id = dk.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &pushed]);
    assert_eq!(id.trim(), image.config.digest, "pulled back the same image");
}

#[test]
fn skopeo_pushes_docker_schema2_and_reads_it_back() {
    let (dir, t, api) = setup();
    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[300_000, 20_000]);
    src.tag("v1", &image.manifest);
    let dst = format!("docker://{}/docker/fmt:v1", t.host());
    skopeo::run(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &src.reference("v1"),
        &dst,
    ]);

    let raw = skopeo::inspect_raw(&dst);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"].as_str(), Some(DOCKER_MANIFEST));
    let r = api
        .send(
            api.req(reqwest::Method::GET, "/v2/docker/fmt/manifests/v1")
                .header("accept", DOCKER_MANIFEST),
        )
        .expect(200);
    assert_eq!(r.header("content-type").as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!(r.body, raw);
    assert_eq!(r.header("docker-content-digest"), Some(sha256(&raw)));
    let layers: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(
        layers, want,
        "conversion to schema 2 keeps the (already gzip) layers"
    );
    assert_eq!(
        m["config"]["digest"].as_str(),
        Some(image.config.digest.as_str())
    );

    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("v1"), false);
    for l in &image.layers {
        let hex = l.digest.trim_start_matches("sha256:");
        assert_eq!(
            std::fs::read(back.dir.join("blobs/sha256").join(hex)).unwrap(),
            std::fs::read(src.dir.join("blobs/sha256").join(hex)).unwrap()
        );
    }
}

#[test]
fn docker_pulls_the_host_platform_from_a_multi_arch_index() {
    let (dir, t, _api) = setup();
    let mut src = Layout::create(&dir.path().join("src"));
    let arches = ["arm64", "amd64", "ppc64le"];
    let (index, images) = src.add_index(&arches, &[100_000]);
    src.tag("multi", &index);
    let host = t.host();
    skopeo::copy(
        &src.reference("multi"),
        &format!("docker://{host}/multi/img:1"),
        true,
    );

    let dk = Dockerd::start();
    let arch = dk.docker_ok(&["version", "--format", "{{.Server.Arch}}"]);
    let Some(pos) = arches.iter().position(|a| *a == arch.trim()) else {
        panic!("this test needs a host of one of {arches:?}, the engine runs {arch}");
    };
    let reference = format!("{host}/multi/img:1");
    dk.docker_ok(&["pull", &reference]);
    let out = dk.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoDigests}}",
        &reference,
    ]);
    assert!(
        out.starts_with(&images[pos].config.digest),
        "pulled the {arch} image: {out}"
    );
    assert!(
        out.contains(&index.digest),
        "repo digest is the index digest: {out}"
    );
}
