//! Offline bundles (`connected-registry bundle export | import | state`) against the real
//! binary: a registry filled by pushes is exported, imported into an empty data directory and
//! served byte-identical; an import reaches a running registry through its admin socket; a
//! delta from a site's state is small; truncated and altered files are refused with nothing
//! of them visible; an import stopped by a crash resumes; skopeo reads a bundle.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::Command;

use common::api::*;
use common::oci::Layout;
use common::{bin, cli, cli_ok, skopeo, start_registry};
use serde_json::{json, Value};

/// Pushes into a fresh registry at `data`: `apps/web:v1` (three layers) with a signature as
/// its referrer, `apps/api:v1` (sharing the config), and a multi-arch `apps/multi:latest`.
/// Returns the web manifest's digest and the referrer's.
fn fill(data: &Path, scratch: &Path) -> (String, String) {
    let registry = start_registry(data, &[]);
    let api = Api::new(&registry.url());
    let (_, web, _) = api.push_image("apps/web", "v1", 3, 300_000);
    api.push_image("apps/api", "v1", 1, 100_000);
    let mut layout = Layout::create(&scratch.join("multi"));
    let (index, _) = layout.add_index(&["amd64", "arm64"], &[50_000]);
    layout.tag("latest", &index);
    skopeo::copy(
        &layout.reference("latest"),
        &format!("docker://{}/apps/multi:latest", registry.addr),
        true,
    );
    let empty = api.push_blob("apps/web", b"{}");
    let signature = api.push_blob("apps/web", b"a signature");
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": signature, "size": 11}],
        "subject": web.json(),
    }))
    .unwrap();
    let referrer_digest = sha256(&referrer);
    api.put_manifest("apps/web", &referrer_digest, OCI_MANIFEST, &referrer)
        .expect(201);
    (web.digest, referrer_digest)
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}"))
}

/// `bundle export --data DATA --repository PATTERNS... MORE... -o OUT`: its report.
fn export(data: &str, patterns: &[&str], out: &str, more: &[&str]) -> Value {
    let args = [
        &["bundle", "export", "--data", data, "--repository"],
        patterns,
        more,
        &["-o", out],
    ]
    .concat();
    report(&cli_ok(&args))
}

/// `bundle import FILE --data DATA`: its report.
fn import(file: &str, data: &str) -> Value {
    report(&cli_ok(&["bundle", "import", file, "--data", data]))
}

/// `bundle import FILE --data DATA`, stopped (as kill -9 would) at the crash point `point`.
#[track_caller]
fn import_crashing_at(file: &str, data: &str, point: &str) {
    let crashed = Command::new(bin())
        .args(["bundle", "import", file, "--data", data])
        .env(util::crash_point::ENV, point)
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the crash point {point} fired");
}

/// Every tag of `repos` in `a` is served by `b` with the same manifest bytes, and every blob
/// those manifests reference too.
#[track_caller]
fn assert_same_images(a: &Api, b: &Api, repos: &[&str]) {
    for repo in repos {
        let tags = a.tags(repo);
        assert!(!tags.is_empty(), "{repo} has tags");
        assert_eq!(b.tags(repo), tags, "{repo}: the same tags");
        for tag in tags {
            let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}");
            let get = |api: &Api, reference: &str| {
                api.send(
                    api.req(
                        reqwest::Method::GET,
                        &format!("/v2/{repo}/manifests/{reference}"),
                    )
                    .header("accept", &accept),
                )
                .expect(200)
                .body
            };
            let want = get(a, &tag);
            assert_eq!(get(b, &tag), want, "{repo}:{tag} byte-identical");
            let manifest: Value = serde_json::from_slice(&want).unwrap();
            let mut blobs: Vec<String> = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(manifest.get("config"))
                .map(|d| d["digest"].as_str().unwrap().to_owned())
                .collect();
            for child in manifest["manifests"].as_array().into_iter().flatten() {
                let child = child["digest"].as_str().unwrap();
                assert_eq!(get(b, child), get(a, child), "{repo}@{child}");
                let m: Value = serde_json::from_slice(&get(a, child)).unwrap();
                blobs.push(m["config"]["digest"].as_str().unwrap().to_owned());
                for l in m["layers"].as_array().unwrap() {
                    blobs.push(l["digest"].as_str().unwrap().to_owned());
                }
            }
            for blob in blobs {
                let got = b.get(&format!("/v2/{repo}/blobs/{blob}")).expect(200).body;
                assert_eq!(sha256(&got), blob, "{repo} blob {blob}");
            }
        }
    }
}

/// (name, content offset, size) of each entry of a tar file: enough of the format to find an
/// entry's bytes and damage them.
fn tar_entries(file: &[u8]) -> Vec<(String, usize, usize)> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 512 <= file.len() && file[at] != 0 {
        let header = &file[at..at + 512];
        let name = String::from_utf8_lossy(&header[..100])
            .trim_end_matches('\0')
            .to_owned();
        let size = std::str::from_utf8(&header[124..136])
            .unwrap()
            .trim_matches(|c: char| c == '\0' || c == ' ');
        let size = usize::from_str_radix(size, 8).unwrap();
        entries.push((name, at + 512, size));
        at += 512 + size.div_ceil(512) * 512;
    }
    entries
}

const REPOS: [&str; 3] = ["apps/api", "apps/multi", "apps/web"];

#[test]
fn export_import_serve_pull_byte_identical_with_referrers_and_skopeo_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    let (web, referrer) = fill(&shore, dir.path());
    let file = dir.path().join("bundle.tar");
    let file = file.to_str().unwrap();
    // The shore's registry is stopped: the export opens the store itself.
    let out = export(shore.to_str().unwrap(), &["apps/*"], file, &[]);
    assert_eq!(out["repositories"], 3, "{out}");
    assert_eq!(out["tags"], 3, "{out}");
    assert_eq!(out["referrers"], 1, "{out}");

    let site = dir.path().join("site");
    let out = import(file, site.to_str().unwrap());
    assert_eq!(out["tags_set"], 3, "{out}");
    assert_eq!(out["blobs_present"], 0, "{out}");

    let shore_registry = start_registry(&shore, &[]);
    let site_registry = start_registry(&site, &[]);
    let (a, b) = (
        Api::new(&shore_registry.url()),
        Api::new(&site_registry.url()),
    );
    assert_same_images(&a, &b, &REPOS);
    let referrers = b
        .get(&format!("/v2/apps/web/referrers/{web}"))
        .expect(200)
        .json();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        referrer.as_str(),
        "{referrers}"
    );

    // skopeo reads the bundle by REPO:TAG: the manifest is the one pushed, and a copy out of
    // it (which reads and checks every blob) succeeds.
    let archived = format!("oci-archive:{file}:apps/web:v1");
    assert_eq!(sha256(&skopeo::inspect_raw(&archived)), web);
    let copied = dir.path().join("copied");
    skopeo::copy(&archived, &format!("oci:{}:v1", copied.display()), false);
    // And so does a real client after untar, as an OCI layout.
    let untarred = dir.path().join("untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    common::run_ok("tar", &["-xf", file, "-C", untarred.to_str().unwrap()]);
    let raw = skopeo::inspect_raw(&format!("oci:{}:apps/multi:latest", untarred.display()));
    assert_eq!(raw, a.get_manifest("apps/multi", "latest").body);
}

#[test]
fn import_while_serve_runs_goes_through_the_socket_and_is_pullable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    fill(&shore, dir.path());
    let file = dir.path().join("bundle.tar");
    let file = file.to_str().unwrap();
    let shore_registry = start_registry(&shore, &[]);
    // Export while the shore serves: its registry writes the file.
    export(
        shore.to_str().unwrap(),
        &["apps/web", "apps/api"],
        file,
        &[],
    );

    let site = dir.path().join("site");
    let site_registry = start_registry(&site, &[]);
    let b = Api::new(&site_registry.url());
    assert!(b.tags("apps/web").is_empty());
    let out = import(file, site.to_str().unwrap());
    assert_eq!(out["tags_set"], 2, "{out}");
    assert_same_images(
        &Api::new(&shore_registry.url()),
        &b,
        &["apps/api", "apps/web"],
    );
    assert!(
        site_registry.log_text().contains("bundle imported"),
        "the running registry did the import"
    );
    // Importing again changes nothing and reads no blob.
    let out = import(file, site.to_str().unwrap());
    assert_eq!(
        (out["tags_set"].as_u64(), out["bytes_read"].as_u64()),
        (Some(0), Some(0)),
        "{out}"
    );
}

#[test]
fn a_delta_from_the_sites_state_is_small_and_imports_onto_the_site() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    fill(&shore, dir.path());
    let site = dir.path().join("site");
    let first = dir.path().join("first.tar");
    export(
        shore.to_str().unwrap(),
        &["apps/*"],
        first.to_str().unwrap(),
        &[],
    );
    import(first.to_str().unwrap(), site.to_str().unwrap());

    // The shore gets a new image sharing the old layers, with one new 1 MiB layer.
    let shore_registry = start_registry(&shore, &[]);
    let a = Api::new(&shore_registry.url());
    let old: Value = a.get_manifest("apps/web", "v1").json();
    let layer = common::oci::random_bytes(1 << 20);
    let new_layer = a.push_blob("apps/web", &layer);
    let mut layers = old["layers"].as_array().unwrap().clone();
    layers.push(json!({"mediaType": OCI_LAYER, "digest": new_layer, "size": layer.len()}));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": old["config"], "layers": layers,
    }))
    .unwrap();
    a.put_manifest("apps/web", "v2", OCI_MANIFEST, &manifest)
        .expect(201);
    let changed = (layer.len() + manifest.len()) as f64;

    // The site says what it holds while it serves (through its socket).
    let site_registry = start_registry(&site, &[]);
    let state = dir.path().join("have.json");
    cli_ok(&[
        "bundle",
        "state",
        "--data",
        site.to_str().unwrap(),
        "-o",
        state.to_str().unwrap(),
    ]);
    let delta = dir.path().join("delta.tar");
    let out = export(
        shore.to_str().unwrap(),
        &["apps/*"],
        delta.to_str().unwrap(),
        &["--since-state", state.to_str().unwrap()],
    );
    assert_eq!(
        (out["blobs"].as_u64(), out["manifests"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    let size = std::fs::metadata(&delta).unwrap().len() as f64;
    assert!(
        size < changed * 1.05,
        "delta {size} bytes for {changed} changed bytes"
    );

    let out = import(delta.to_str().unwrap(), site.to_str().unwrap());
    assert_eq!(
        (out["tags_set"].as_u64(), out["blobs_written"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    assert_same_images(&a, &Api::new(&site_registry.url()), &REPOS);

    // The delta alone on an empty site is refused: it says what is missing and what to do.
    let (ok, _, err) = cli(&[
        "bundle",
        "import",
        delta.to_str().unwrap(),
        "--data",
        dir.path().join("empty").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--since-state"), "{err}");
}

#[test]
fn truncated_and_altered_bundles_are_refused_with_nothing_of_them_visible() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    fill(&shore, dir.path());
    let file = dir.path().join("bundle.tar");
    export(
        shore.to_str().unwrap(),
        &["apps/web"],
        file.to_str().unwrap(),
        &[],
    );
    let bytes = std::fs::read(&file).unwrap();
    let entries = tar_entries(&bytes);
    let (name, offset, size) = entries.iter().max_by_key(|e| e.2).unwrap().clone();

    // Cut inside the largest blob.
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..offset + size / 2]).unwrap();
    let site = dir.path().join("site");
    let (ok, _, err) = cli(&[
        "bundle",
        "import",
        truncated.to_str().unwrap(),
        "--data",
        site.to_str().unwrap(),
    ]);
    assert!(!ok, "a truncated bundle is refused");
    assert!(err.contains("is truncated") && err.contains(&name), "{err}");

    // One byte changed inside the largest blob.
    let mut altered = bytes.clone();
    altered[offset + size / 2] ^= 0xff;
    let altered_file = dir.path().join("altered.tar");
    std::fs::write(&altered_file, &altered).unwrap();
    let (ok, _, err) = cli(&[
        "bundle",
        "import",
        altered_file.to_str().unwrap(),
        "--data",
        site.to_str().unwrap(),
    ]);
    assert!(!ok, "an altered bundle is refused");
    assert!(err.contains("is altered") && err.contains(&name), "{err}");

    let site_registry = start_registry(&site, &[]);
    let b = Api::new(&site_registry.url());
    assert!(
        b.tags("apps/web").is_empty(),
        "no tag from a refused bundle"
    );
    let digest = name.replace("blobs/sha256/", "sha256:");
    b.get(&format!("/v2/apps/web/blobs/{digest}")).expect(404);
    drop(site_registry);

    // The good file still imports over what the refusals left.
    let out = import(file.to_str().unwrap(), site.to_str().unwrap());
    assert_eq!(out["tags_set"], 1, "{out}");
}

#[test]
fn an_import_stopped_by_a_crash_resumes_without_reading_again_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    fill(&shore, dir.path());
    let file = dir.path().join("bundle.tar");
    let file = file.to_str().unwrap();
    export(shore.to_str().unwrap(), &["apps/*"], file, &[]);
    let site = dir.path().join("site");
    let site_arg = site.to_str().unwrap();

    // The process aborts (as kill -9 would) once its second blob is stored.
    import_crashing_at(file, site_arg, "bundle_blob_stored:2");
    {
        let site_registry = start_registry(&site, &[]);
        let b = Api::new(&site_registry.url());
        for repo in REPOS {
            assert!(
                b.tags(repo).is_empty(),
                "{repo}: no tag before its content is whole"
            );
        }
    }
    let out = import(file, site_arg);
    // Blobs are written a few at a time: others may have been stored before the abort.
    let present = out["blobs_present"].as_u64().unwrap();
    assert!(present >= 2, "the stored blobs are not read again: {out}");
    assert_eq!(out["tags_set"], 3, "{out}");
    let full = import(file, dir.path().join("fresh").to_str().unwrap());
    assert!(
        out["bytes_read"].as_u64() < full["bytes_read"].as_u64(),
        "resumed {out} vs whole {full}"
    );
    let shore_registry = start_registry(&shore, &[]);
    let site_registry = start_registry(&site, &[]);
    assert_same_images(
        &Api::new(&shore_registry.url()),
        &Api::new(&site_registry.url()),
        &REPOS,
    );
}

#[test]
fn an_import_stopped_inside_a_blob_continues_it_from_the_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let shore = dir.path().join("shore");
    fill(&shore, dir.path());
    let file = dir.path().join("bundle.tar");
    let file = file.to_str().unwrap();
    export(shore.to_str().unwrap(), &["apps/web"], file, &[]);
    let site = dir.path().join("site");
    let site_arg = site.to_str().unwrap();
    // Aborts after the first chunk of the first blob reached its upload session.
    import_crashing_at(file, site_arg, "bundle_blob_chunk");
    let out = import(file, site_arg);
    assert!(out["bytes_resumed"].as_u64() > Some(0), "{out}");
    assert_eq!(out["tags_set"], 1, "{out}");
    let shore_registry = start_registry(&shore, &[]);
    let site_registry = start_registry(&site, &[]);
    assert_same_images(
        &Api::new(&shore_registry.url()),
        &Api::new(&site_registry.url()),
        &["apps/web"],
    );
}
