//! `serve --metadata postgres://...` against a real PostgreSQL server (Debian's package, started
//! by the test): skopeo pushes and pulls, and the image is still there after a restart; two
//! `serve` replicas on one database see each other's tags at once without the cache of
//! resolutions, and within `--metadata-cache-ttl` with it (their own writes at once), and keep
//! one change log without gaps or duplicates under concurrent pushes; a `kill -9` in the middle of a manifest
//! PUT leaves the manifest, its tag and its change-log entry all present or all absent; a
//! server that cannot be reached, or a wrong password, fails the start naming PostgreSQL and
//! the host, never the password.
//!
//! TLS to the server, in libpq's `sslmode` and `sslrootcert`: verify-full with the right root
//! carries skopeo's push and pull over connections the server reports encrypted; a wrong root
//! or a host name the certificate does not hold fails the start with what to change; require
//! against a server without TLS is refused; disable and prefer against one with TLS connect.
//!
//! Most tests keep each replica's blobs in its own data directory; where one reads through a
//! replica what another stored, the second's `blobs/` is a link to the first's. The last test
//! runs the replicas as deployed: metadata in PostgreSQL, blobs in one Azure Blob Storage
//! container (Azurite).

#![forbid(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::api::*;
use common::checks::assert_push_intact;
use common::oci::Layout;
use common::postgres::{
    database_of, registry_connections_tls, server_with_database, tls_server_with_database,
    with_query, TestServer, PASSWORD, TLS_SERVER_NAME,
};
use common::{cli, free_port, skopeo, start_registry, start_registry_on, Proc};
use reqwest::Method;
use serde_json::Value;

/// `serve` on `data` with its metadata in the database at `url`.
fn serve_on(data: &Path, url: &str) -> Proc {
    start_registry(data, &["--metadata", url, "--gc-interval", "0s"])
}

/// [`serve_on`] with the cache of resolutions kept `ttl` (`0s`: off).
fn serve_caching(data: &Path, url: &str, ttl: &str) -> Proc {
    let args = ["--metadata", url, "--gc-interval", "0s"];
    start_registry(data, &[&args[..], &["--metadata-cache-ttl", ttl]].concat())
}

/// Two data directories whose `blobs/` is one (standing in for the shared blob store).
fn replica_dirs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(data_a.join("blobs")).unwrap();
    std::fs::create_dir_all(&data_b).unwrap();
    std::os::unix::fs::symlink(data_a.join("blobs"), data_b.join("blobs")).unwrap();
    (data_a, data_b)
}

/// Every change in the registry's feed, oldest first (all pages).
fn all_changes(api: &Api) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get(&format!("/acr/v1/_changes?after={after}&n=500"))
            .expect(200)
            .json();
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        let Some(last) = changes.last() else {
            return out;
        };
        after = last["seq"].as_u64().unwrap();
        out.extend(changes);
    }
}

/// The sequence numbers of `changes` are 1, 2, 3, ... with no gap and no duplicate.
#[track_caller]
fn assert_gapless(changes: &[Value]) {
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the change log has gaps or duplicates");
}

/// How many rows the backend's table holds in `tbl` (read with psql, not through the registry).
fn rows(server: &TestServer, url: &str, tbl: &str) -> usize {
    server
        .sql(
            database_of(url),
            &format!("SELECT count(*) FROM registry_kv WHERE tbl = '{tbl}'"),
        )
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn skopeo_pushes_and_pulls_and_the_image_survives_a_restart() {
    let (server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut serve = start_registry_on(&data, port, &["--metadata", url.as_str()]);
    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[300_000, 20_000]);
    src.tag("v1", &image.manifest);
    let dst = format!("docker://127.0.0.1:{port}/pg/app:v1");
    skopeo::copy(&src.reference("v1"), &dst, false);
    let raw = skopeo::inspect_raw(&dst);
    assert_eq!(sha256(&raw), image.manifest.digest);
    assert!(
        !data.join("meta.redb").exists(),
        "the metadata is in PostgreSQL, not in the data directory"
    );
    assert_eq!(rows(&server, &url, "tags"), 1);
    assert!(
        rows(&server, &url, "changes") >= 2,
        "manifest and tag logged"
    );

    serve.kill();
    let serve = start_registry_on(&data, port, &["--metadata", url.as_str()]);
    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("v1"), false);
    assert_eq!(skopeo::inspect_raw(&back.reference("v1")), raw);
    let api = Api::new(&serve.url());
    assert_eq!(api.tags("pg/app"), ["v1"]);
    assert_push_intact(&api, "pg/app", "v1", &raw);
}

#[test]
fn without_the_cache_a_tag_pushed_through_one_replica_is_resolved_by_the_other_at_once() {
    let (_server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = replica_dirs(dir.path());
    let a = serve_caching(&data_a, &url, "0s");
    let b = serve_caching(&data_b, &url, "0s");
    let (api_a, api_b) = (Api::new(&a.url()), Api::new(&b.url()));

    let (manifest, _, _) = api_a.push_image("shared/app", "v1", 2, 10_000);
    // No cache between: the other replica answers from the shared metadata right away.
    assert_eq!(api_b.tags("shared/app"), ["v1"]);
    assert_push_intact(&api_b, "shared/app", "v1", &manifest);
    let tag = api_b.get("/acr/v1/shared/app/_tags/v1").expect(200).json();
    assert_eq!(
        tag["tag"]["digest"].as_str(),
        Some(sha256(&manifest).as_str())
    );

    // Moved and deleted through B: A sees both at once.
    let (moved, _, _) = api_b.push_image("shared/app", "v1", 1, 5_000);
    assert_push_intact(&api_a, "shared/app", "v1", &moved);
    api_b.delete("/v2/shared/app/manifests/v1").expect(202);
    api_a.get_manifest("shared/app", "v1").expect(404);
    let changes = all_changes(&api_a);
    assert_gapless(&changes);
    assert_eq!(changes, all_changes(&api_b), "one change log");
}

/// The digest a manifest GET of `repo:tag` answers with (`None`: 404).
fn served_digest(api: &Api, repo: &str, tag: &str) -> Option<String> {
    let resp = api.get_manifest(repo, tag);
    match resp.status {
        200 => resp.header("docker-content-digest"),
        404 => None,
        other => panic!("GET {repo}:{tag}: {other} {}", resp.text()),
    }
}

#[test]
fn with_the_cache_a_tag_moved_through_one_replica_is_served_by_the_other_within_the_bound() {
    let (_server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = replica_dirs(dir.path());
    // The default bound, 1 s.
    let bound = Duration::from_secs(1);
    let a = start_registry(&data_a, &["--metadata", url.as_str()]);
    let b = start_registry(&data_b, &["--metadata", url.as_str()]);
    let (api_a, api_b) = (Api::new(&a.url()), Api::new(&b.url()));
    let repo = "cached/app";
    let (first, _, _) = api_a.push_image(repo, "v1", 1, 3_000);
    let (second, _, _) = api_a.push_image(repo, "v2", 1, 4_000);
    let images = [(sha256(&first), first), (sha256(&second), second)];
    for round in 0..4 {
        let ((old, _), (new, body)) = (&images[round % 2], &images[(round + 1) % 2]);
        // B caches v1 pointing at the old image.
        assert_eq!(served_digest(&api_b, repo, "v1").as_ref(), Some(old));
        api_a
            .put_manifest(repo, "v1", OCI_MANIFEST, body)
            .expect(201);
        let moved = std::time::Instant::now();
        // The replica it was moved through serves it at once.
        assert_eq!(served_digest(&api_a, repo, "v1").as_ref(), Some(new));
        // The other within the bound: polled, and never stale after bound + margin.
        loop {
            let seen = served_digest(&api_b, repo, "v1");
            let elapsed = moved.elapsed();
            if seen.as_ref() == Some(new) {
                eprintln!("round {round}: B served the move after {elapsed:?}");
                break;
            }
            assert_eq!(seen.as_ref(), Some(old), "round {round}: neither digest");
            assert!(
                elapsed < bound + Duration::from_millis(500),
                "round {round}: B still served the old digest {elapsed:?} after the move"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A delete through B: B answers 404 at once, A within the bound.
    assert!(served_digest(&api_a, repo, "v2").is_some());
    api_b
        .delete(&format!("/v2/{repo}/manifests/v2"))
        .expect(202);
    assert_eq!(served_digest(&api_b, repo, "v2"), None);
    let deleted = std::time::Instant::now();
    while served_digest(&api_a, repo, "v2").is_some() {
        assert!(deleted.elapsed() < bound + Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_pushes_through_both_replicas_keep_one_gapless_change_log() {
    let (_server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let a = serve_on(&dir.path().join("a"), &url);
    let b = serve_on(&dir.path().join("b"), &url);
    let apis = [Arc::new(Api::new(&a.url())), Arc::new(Api::new(&b.url()))];
    let per_thread = 6;
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let api = apis[t % 2].clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    // Every push a new manifest and a new tag, some into one shared repository.
                    let repo = if i % 2 == 0 {
                        "race/shared".to_owned()
                    } else {
                        format!("race/own{t}")
                    };
                    api.push_image(&repo, &format!("t{t}-{i}"), 1, 1_000 + t * 100 + i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let changes = all_changes(&apis[0]);
    assert_gapless(&changes);
    let tags_set: BTreeSet<String> = changes
        .iter()
        .filter(|c| c["type"] == "tag_set")
        .map(|c| {
            format!(
                "{}:{}",
                c["repo"].as_str().unwrap(),
                c["tag"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(tags_set.len(), 6 * per_thread, "one tag_set per push");
    let puts = changes
        .iter()
        .filter(|c| c["type"] == "manifest_put")
        .count();
    assert_eq!(puts, 6 * per_thread, "one manifest_put per push");
    assert_eq!(changes.len(), 2 * 6 * per_thread, "nothing else logged");
    assert_eq!(
        apis[1].tags("race/shared").len(),
        6 * per_thread.div_ceil(2)
    );
}

/// One manifest PUT with a fresh tag and a fresh manifest (a config blob made unique by `n`),
/// its blobs pushed first; the answer's status, or `None` when the connection broke.
fn try_push(api: &Api, repo: &str, n: usize) -> (String, String, Option<u16>) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{n}}}").into_bytes();
    let config_digest = sha256(&config);
    let loc = match api
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
    {
        Ok(r) if r.status() == 202 => r.headers()["location"].to_str().unwrap().to_owned(),
        _ => return (String::new(), String::new(), None),
    };
    let put = api
        .req(Method::PUT, &Api::with_digest(&loc, &config_digest))
        .header("content-type", "application/octet-stream")
        .body(config.clone())
        .send();
    if !matches!(&put, Ok(r) if r.status() == 201) {
        return (String::new(), String::new(), None);
    }
    let manifest = image_manifest(OCI_MANIFEST, &Desc::of(OCI_CONFIG, &config), &[]);
    let tag = format!("n{n}");
    let status = api
        .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .ok()
        .map(|r| r.status().as_u16());
    (tag, sha256(&manifest), status)
}

/// After a crash: each attempted push is whole (tag, manifest, and both change entries) or
/// absent (none of them); every acknowledged one is whole.
#[track_caller]
fn assert_all_or_nothing(api: &Api, repo: &str, attempts: &[(String, String, Option<u16>)]) {
    let changes = all_changes(api);
    assert_gapless(&changes);
    let logged: BTreeMap<(String, String), Value> = changes
        .iter()
        .filter_map(|c| {
            let key = match c["type"].as_str()? {
                "tag_set" => c["tag"].as_str()?.to_owned(),
                "manifest_put" => c["digest"].as_str()?.to_owned(),
                _ => return None,
            };
            Some(((c["type"].as_str()?.to_owned(), key), c.clone()))
        })
        .collect();
    let mut whole = 0;
    for (tag, digest, status) in attempts.iter().filter(|(t, _, _)| !t.is_empty()) {
        let tagged = api.get_manifest(repo, tag).status == 200;
        let stored = api.get_manifest(repo, digest).status == 200;
        let tag_logged = logged.contains_key(&("tag_set".to_owned(), tag.clone()));
        let put_logged = logged.contains_key(&("manifest_put".to_owned(), digest.clone()));
        assert!(
            [tagged, stored, tag_logged, put_logged]
                .iter()
                .all(|x| *x == tagged),
            "{repo}:{tag} ({digest}) half there after the kill: tag {tagged}, manifest {stored}, \
             tag logged {tag_logged}, manifest logged {put_logged} (answer {status:?})"
        );
        if *status == Some(201) {
            assert!(tagged, "acknowledged push {repo}:{tag} lost");
        }
        whole += usize::from(tagged);
    }
    assert_eq!(api.tags(repo).len(), whole, "no tag without its push");
}

#[test]
fn kill9_in_the_middle_of_a_manifest_put_leaves_all_of_it_or_nothing() {
    let (_server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let args = ["--metadata", url.as_str(), "--gc-interval", "0s"];

    // The process aborts inside the transaction, after every write of the third manifest PUT
    // and before its commit (the crash point; each push passes it twice, at its blob's link
    // and at its manifest): PostgreSQL keeps none of it.
    let crash = (util_crash_env(), "in_meta_transaction:6");
    let mut serve = common::serve_with(&data, port, &args, &[crash], data.with_extension("log"));
    let api = Api::new(&serve.url());
    let attempts: Vec<_> = (0..3).map(|n| try_push(&api, "crash/app", n)).collect();
    assert_eq!(attempts[2].2, None, "the third PUT died with the server");
    serve.exit_within(Duration::from_secs(10));
    let serve = start_registry_on(&data, port, &args);
    let api = Api::new(&serve.url());
    assert_all_or_nothing(&api, "crash/app", &attempts);
    assert_eq!(api.tags("crash/app").len(), 2);
    drop(serve);

    // A real kill -9 while manifest PUTs from several clients are in flight.
    let mut serve = start_registry_on(&data, port, &args);
    let api = Arc::new(Api::new(&serve.url()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(100));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (api, stop, next) = (api.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                let mut attempts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let attempt = try_push(&api, "kill/app", next.fetch_add(1, Ordering::Relaxed));
                    let broke = attempt.2.is_none();
                    attempts.push(attempt);
                    if broke {
                        break;
                    }
                }
                attempts
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    serve.kill();
    stop.store(true, Ordering::Relaxed);
    let attempts: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        attempts.iter().filter(|a| a.2 == Some(201)).count() > 0,
        "some pushes were acknowledged before the kill"
    );
    let serve = start_registry_on(&data, port, &args);
    assert_all_or_nothing(&Api::new(&serve.url()), "kill/app", &attempts);
}

/// The crash point's environment variable (see `util::crash_point`).
fn util_crash_env() -> &'static str {
    "CONNECTED_REGISTRY_CRASH_AT"
}

#[test]
fn an_unreachable_server_or_a_wrong_password_fails_the_start_naming_postgresql_and_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let closed = free_port();
    let unreachable = format!("postgres://registry:{PASSWORD}@127.0.0.1:{closed}/meta");
    let (ok, _, err) = cli(&[
        "serve",
        "--listen",
        &listen,
        "--data",
        data_s,
        "--auth",
        "none",
        "--metadata",
        &unreachable,
        "--metadata-retries",
        "1",
    ]);
    assert!(!ok, "a start without its metadata fails");
    assert!(
        err.contains(&format!("PostgreSQL at 127.0.0.1:{closed}/meta")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");

    let (_server, url) = server_with_database();
    let wrong = url.replace(PASSWORD, "not-the-password");
    let (ok, _, err) = cli(&[
        "serve",
        "--listen",
        &listen,
        "--data",
        data_s,
        "--auth",
        "none",
        "--metadata",
        &wrong,
    ]);
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        err.contains(&format!("PostgreSQL at 127.0.0.1:{}", server_port(&url))),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password leaked: {err}"
    );

    // Given through the environment and shown by --print-config: redacted there too.
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--data", data_s, "--print-config"])
        .env("CONNECTED_REGISTRY_METADATA", &url)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("registry:***@127.0.0.1:{}", server_port(&url))),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");
}

/// The port of a test server's URL.
fn server_port(url: &str) -> u16 {
    url.split("@127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_other_commands_take_the_metadata_flag_or_refuse_it() {
    let (_server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    {
        let serve = serve_on(&data, &url);
        Api::new(&serve.url()).push_image("cmd/app", "v1", 1, 1_000);
    }
    // gc runs against the shared metadata (nothing to collect: all of it is young).
    let (ok, out, err) = cli(&["gc", "--data", data_s, "--metadata", &url]);
    assert!(ok, "gc: {err}");
    assert!(out.contains("\"blobs_deleted\": 0"), "{out}");
    // recover rebuilds a meta.redb: refused for metadata in PostgreSQL, with what to do.
    let (ok, _, err) = cli(&["recover", "--data", data_s, "--metadata", &url]);
    assert!(!ok);
    assert!(
        err.contains("restore it from PostgreSQL's own backups"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    // A data directory that holds no meta.redb is still one with the metadata elsewhere.
    let (ok, _, err) = cli(&["gc", "--data", data_s]);
    assert!(!ok && err.contains("it holds no meta.redb"), "{err}");
}

/// The two shared services together, as the replicas of issue 17 run: metadata in PostgreSQL,
/// blobs in one Azure Blob Storage container (Azurite). An image `skopeo` pushes through one
/// replica is pulled byte-identical through the other, each with a data directory of its own;
/// a tag deleted through the second is gone from the first at once.
#[test]
fn two_replicas_on_postgresql_and_azure_blob_storage_serve_each_others_pushes() {
    let (_server, url) = server_with_database();
    let azurite = common::azurite::Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--metadata", url.as_str(), "--gc-interval", "0s"];
    let a = common::azurite::serve_azblob(&dir.path().join("a"), &azurite, "shared", &args);
    let b = common::azurite::serve_azblob(&dir.path().join("b"), &azurite, "shared", &args);

    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[200_000, 30_000]);
    src.tag("v1", &image.manifest);
    let through_a = format!("docker://{}/both/app:v1", a.addr);
    skopeo::copy(&src.reference("v1"), &through_a, false);
    let through_b = format!("docker://{}/both/app:v1", b.addr);
    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&through_b, &back.reference("v1"), false);
    assert_eq!(
        skopeo::inspect_raw(&back.reference("v1")),
        skopeo::inspect_raw(&src.reference("v1")),
        "pulled through the other replica, byte for byte"
    );
    for layer in &image.layers {
        assert_eq!(back.read_blob(&layer.digest), src.read_blob(&layer.digest));
    }

    let (api_a, api_b) = (Api::new(&a.url()), Api::new(&b.url()));
    api_b.delete("/v2/both/app/manifests/v1").expect(202);
    // At once through B; through A within the cache's bound (--metadata-cache-ttl, 1 s).
    api_b.get_manifest("both/app", "v1").expect(404);
    let deleted = std::time::Instant::now();
    while api_a.get_manifest("both/app", "v1").status != 404 {
        assert!(
            deleted.elapsed() < Duration::from_millis(1500),
            "A serves a deleted tag"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_gapless(&all_changes(&api_a));
}

/// Connections PostgreSQL closes under a running `serve` (an administrator's
/// `pg_terminate_backend`, a server restart, a network cut) are made again: the transaction
/// that met the closed connection runs again on a new one, and the client never sees it.
#[test]
fn connections_closed_by_the_server_are_made_again_without_the_client_noticing() {
    let (server, url) = server_with_database();
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_on(&dir.path().join("data"), &url);
    let api = Api::new(&serve.url());
    let (manifest, _, _) = api.push_image("lost/app", "v1", 1, 2_000);
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    for round in 0..3 {
        let closed = server.sql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND application_name = 'connected-registry'"
            ),
        );
        assert_ne!(
            closed.trim(),
            "0",
            "round {round}: the registry's connections were open"
        );
        assert_push_intact(&api, "lost/app", "v1", &manifest);
        api.push_image("lost/app", &format!("r{round}"), 1, 1_000 + round);
    }
    assert_eq!(api.tags("lost/app").len(), 4);
    assert_gapless(&all_changes(&api));
    assert!(
        serve.log_text().contains("connecting again"),
        "the new connections are logged: {}",
        serve.log_text()
    );
}

/// `serve --metadata URL` expected to fail at start: its standard error.
fn start_fails(data: &Path, url: &str) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let data = data.to_str().unwrap();
    let args = [
        "serve", "--listen", &listen, "--data", data, "--auth", "none",
    ];
    let (ok, _, err) = cli(&[&args[..], &["--metadata", url]].concat());
    assert!(!ok, "the start with {url} failed");
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// TLS to PostgreSQL as Azure Database for PostgreSQL requires it: `sslmode=verify-full` with
/// the CA that issued the server's certificate. skopeo pushes and pulls through it, every
/// connection is encrypted by the server's own account (`pg_stat_ssl`), and with
/// `channel_binding=require` the password exchange was SCRAM-SHA-256-PLUS, bound to the TLS
/// session (the client refuses to authenticate otherwise).
#[test]
fn verify_full_with_the_right_root_pushes_and_pulls_over_encrypted_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, url) = tls_server_with_database(&dir.path().join("ca"));
    let query = format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        ca.root.display()
    );
    let url = with_query(&url, &query);
    let data = dir.path().join("data");
    let serve = serve_on(&data, &url);
    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[200_000, 10_000]);
    src.tag("v1", &image.manifest);
    let dst = format!("docker://{}/tls/app:v1", serve.addr);
    skopeo::copy(&src.reference("v1"), &dst, false);
    let back = Layout::create(&dir.path().join("back"));
    skopeo::copy(&dst, &back.reference("v1"), false);
    let raw = skopeo::inspect_raw(&back.reference("v1"));
    assert_eq!(sha256(&raw), image.manifest.digest);
    assert_eq!(rows(&server, &url, "tags"), 1, "the tag is in PostgreSQL");

    let connections = registry_connections_tls(&server, database_of(&url));
    assert!(!connections.is_empty(), "the registry holds connections");
    for connection in &connections {
        let (version, cipher) = connection.as_ref().expect("every connection is encrypted");
        assert!(version.starts_with("TLSv1."), "{version} {cipher}");
    }
    assert!(
        serve.log_text().contains("sslmode=verify-full"),
        "{}",
        serve.log_text()
    );
    assert!(!serve.log_text().contains(PASSWORD), "the password leaked");
}

/// A certificate that fails the checks of `sslmode` fails the start, naming the host, why, and
/// the setting to change: a root that did not issue it, and (under verify-full) a host name it
/// does not hold, which verify-ca accepts. Bad TLS parameters fail it too. Never the password.
#[test]
fn certificates_that_fail_verification_and_bad_tls_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, ca, url) = tls_server_with_database(&dir.path().join("ca"));
    let stranger = common::tls::TestCa::new(&dir.path().join("stranger"));
    let data = dir.path().join("data");
    let host = format!("127.0.0.1:{}", server_port(&url));

    let wrong_root = format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger.root.display()
    );
    let err = start_fails(&data, &with_query(&url, &wrong_root));
    assert!(err.contains(&format!("PostgreSQL at {host}/")), "{err}");
    // The stranger's CAs bear the same names as the issuers: found, but their signatures do
    // not match (a CA of another name: `tls_stream`'s unit test).
    assert!(
        err.contains(&format!(
            "the TLS certificate of 127.0.0.1 was refused under sslmode=verify-full: it was not \
             issued by a CA of sslrootcert={} (a CA of the same name is there, but it did not \
             sign it)",
            stranger.root.display()
        )),
        "{err}"
    );
    assert!(err.contains("point sslrootcert at"), "{err}");

    // Reached by its address, named by a name its certificate does not hold.
    let other_name = url.replace(&host, &format!("other.example:{}", server_port(&url)));
    let root = ca.root.display();
    let mismatch = format!("hostaddr=127.0.0.1&sslrootcert={root}");
    let err = start_fails(
        &data,
        &with_query(&other_name, &format!("{mismatch}&sslmode=verify-full")),
    );
    assert!(err.contains("PostgreSQL at other.example:"), "{err}");
    assert!(
        err.contains("it is not valid for the name \"other.example\""),
        "{err}"
    );
    assert!(err.contains("use sslmode=verify-ca"), "{err}");
    // verify-ca checks the issuer only; verify-full under a name the certificate holds passes.
    let by_name = url.replace(&host, &format!("{TLS_SERVER_NAME}:{}", server_port(&url)));
    for url in [
        with_query(&other_name, &format!("{mismatch}&sslmode=verify-ca")),
        with_query(&by_name, &format!("{mismatch}&sslmode=verify-full")),
    ] {
        let serve = serve_on(&data, &url);
        Api::new(&serve.url()).push_image("tls/names", "v1", 1, 1_000);
    }

    let missing = "sslmode=verify-full&sslrootcert=/nonexistent/root.pem";
    let err = start_fails(&data, &with_query(&url, missing));
    assert!(
        err.contains("sslrootcert: /nonexistent/root.pem: cannot read"),
        "{err}"
    );
    let err = start_fails(&data, &with_query(&url, "sslmode=verify"));
    assert!(
        err.contains(
            "sslmode=\"verify\" is not one of disable, prefer, require, verify-ca, verify-full"
        ),
        "{err}"
    );
    let err = start_fails(&data, &with_query(&url, "sslmode=verify-ca"));
    assert!(err.contains("add sslrootcert=PATH"), "{err}");
}

/// `require` against a server without TLS is refused (with what to change); against a server
/// with TLS, `disable` connects in the clear and `prefer` (the default) encrypts without
/// checking the certificate, as libpq does. The default also still reaches a server without
/// TLS.
#[test]
fn require_against_a_plain_server_is_refused_and_disable_or_prefer_against_a_tls_server_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (plain, plain_url) = server_with_database();
    let err = start_fails(&data, &with_query(&plain_url, "sslmode=require"));
    assert!(
        err.contains(&format!(
            "PostgreSQL at 127.0.0.1:{}/",
            server_port(&plain_url)
        )),
        "{err}"
    );
    assert!(err.contains("server does not support TLS"), "{err}");
    assert!(err.contains("`ssl = on`"), "{err}");
    {
        let url = with_query(&plain_url, "");
        let serve = serve_on(&data, &url);
        Api::new(&serve.url()).push_image("tls/plain", "v1", 1, 1_000);
        let connections = registry_connections_tls(&plain, database_of(&url));
        assert!(!connections.is_empty() && connections.iter().all(Option::is_none));
    }

    let (server, _ca, _url) = tls_server_with_database(&dir.path().join("ca"));
    for (query, encrypted) in [
        ("sslmode=disable", false),
        ("", true),
        ("sslmode=prefer", true),
    ] {
        let url = with_query(&server.create_database(), query);
        let serve = serve_on(&dir.path().join(format!("data-{query}")), &url);
        Api::new(&serve.url()).push_image("tls/modes", "v1", 1, 1_000);
        let connections = registry_connections_tls(&server, database_of(&url));
        assert!(
            !connections.is_empty(),
            "{query}: the registry holds connections"
        );
        assert!(
            connections.iter().all(|c| c.is_some() == encrypted),
            "{query}: {connections:?}"
        );
    }
}
