//! Pull-through (`serve --on-demand`): a pull of something a child does not hold, in its
//! on-demand scope, is fetched from the parent while it streams to the client, written and
//! verified; concurrent pulls share one upstream request per blob; tampered bytes reach no
//! client and are not kept; with the parent gone, what is held is still served and a miss fails
//! in time saying the parent is unreachable; layers of ours under CNCF distribution each keep a
//! copy; on-demand content is in the change feed and is evicted first under `--quota`.
//!
//! The children sync a scope that matches nothing at the parent (`--repo none/nothing`), so
//! what they hold came on demand, not by a sync pass.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::access::{create_token, rule};
use common::api::{sha256, Api, Resp, OCI_MANIFEST};
use common::distribution::start_distribution;
use common::sync::{start_child, wait_for_tag, ALWAYS_OPEN};
use common::{start_registry, start_registry_on, wait_until, Proc};

/// A child's flags: on-demand for `lib/*`, sync of nothing, a short wait for the parent.
const CHILD: [&str; 8] = [
    "--repo",
    "none/nothing",
    "--on-demand",
    "lib/*",
    "--on-demand-timeout",
    "3s",
    "--sync-poll-interval",
    "PT1S",
];

/// Bound on waiting for a background step (a manifest stored once its blobs are here).
const SETTLE: Duration = Duration::from_secs(60);

/// The manifest and blob digests of `repo:tag` as `api` serves them, each blob checked
/// against its digest; panics on any mismatch.
fn pull_checked(api: &Api, repo: &str, tag: &str) -> (String, Vec<String>) {
    let manifest = api.get_manifest(repo, tag).expect(200);
    let digest = sha256(&manifest.body);
    let blobs = blob_digests(&manifest);
    for blob in &blobs {
        let got = api.get(&format!("/v2/{repo}/blobs/{blob}")).expect(200);
        assert_eq!(&sha256(&got.body), blob, "blob bytes");
    }
    (digest, blobs)
}

fn blob_digests(manifest: &Resp) -> Vec<String> {
    let m = manifest.json();
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in m["layers"].as_array().unwrap() {
        out.push(layer["digest"].as_str().unwrap().to_owned());
    }
    out
}

/// Requests in `registry`'s access log whose line starts `METHOD PATH ` (status any).
fn requests(registry: &Proc, method: &str, path: &str) -> usize {
    let needle = format!("{method} {path} ");
    registry
        .log_text()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Waits until `child` stored `repo:tag` (its log says so).
#[track_caller]
fn wait_stored(child: &Proc, repo: &str) {
    let stored = wait_until(SETTLE, Duration::from_millis(100), || {
        child
            .log_text()
            .lines()
            .any(|l| l.contains("stored a manifest fetched on demand") && l.contains(repo))
    });
    assert!(stored, "{repo} never stored; log:\n{}", child.log_text());
}

/// The file a store keeps a blob in.
fn blob_file(data: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// A miss is fetched and served byte-identical; twenty clients pulling one 32 MiB image at
/// once through the empty child cause one GET per blob at the parent, and one of the
/// manifest; the image is then held by the child (served with the parent gone), and skopeo
/// pulls it byte-identical.
#[test]
fn twenty_clients_through_an_empty_child_cost_one_parent_request_per_blob() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = start_registry(&dir.path().join("parent"), &[]);
    let (manifest, _, _) = Api::new(&parent.url()).push_image("lib/app", "v1", 4, 8 << 20);
    let child = start_child(&dir.path().join("child"), &parent.url(), &CHILD);
    let base = child.url();
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || pull_checked(&Api::new(&base), "lib/app", "v1"))
        })
        .collect();
    let results: Vec<_> = pulls.into_iter().map(|p| p.join().unwrap()).collect();
    let (digest, blobs) = results[0].clone();
    assert_eq!(digest, sha256(&manifest));
    assert!(results.iter().all(|r| r.0 == digest));
    for blob in &blobs {
        let path = format!("/v2/lib/app/blobs/{blob}");
        assert_eq!(
            requests(&parent, "GET", &path),
            1,
            "GETs of {blob} at the parent"
        );
    }
    assert_eq!(
        requests(&parent, "GET", "/v2/lib/app/manifests/v1"),
        1,
        "one manifest fetch"
    );
    // A Range from a client, and skopeo, read the stored copy; then with the parent gone.
    wait_stored(&child, "lib/app");
    let api = Api::new(&base);
    let part = api
        .send(
            api.req(
                reqwest::Method::GET,
                &format!("/v2/lib/app/blobs/{}", blobs[1]),
            )
            .header("range", "bytes=100-199"),
        )
        .expect(206);
    assert_eq!(part.body.len(), 100);
    let host = base.trim_start_matches("http://");
    let served = common::sync::raw_manifest(host, "lib/app", "v1");
    assert_eq!(served.as_bytes(), &manifest[..]);
    parent.kill();
    pull_checked(&api, "lib/app", "v1");
}

/// A parent that serves a blob whose bytes do not match its digest (CNCF distribution with a
/// byte flipped on its disk): the client's download is cut short, the child keeps nothing, and
/// once the parent's copy is right again the next pull works.
#[test]
fn tampered_bytes_reach_no_client_and_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    let cloud = start_distribution(&cloud_dir, "");
    let (_, _, blobs) = Api::new(&cloud.url()).push_image("lib/app", "v1", 1, 3 << 20);
    let layer = &blobs[1].digest;
    let hex = layer.strip_prefix("sha256:").unwrap();
    let on_disk = cloud_dir
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let good = std::fs::read(&on_disk).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&on_disk, &bad).unwrap();

    let child_data = dir.path().join("child");
    let child = start_child(&child_data, &cloud.url(), &CHILD);
    let api = Api::new(&child.url());
    let path = format!("/v2/lib/app/blobs/{layer}");
    // The download may fail before the answer's first byte (hyper then closes the connection
    // with no status line) or after it (the body ends short of its length): either way no
    // client gets the whole blob.
    let whole = api
        .req(reqwest::Method::GET, &path)
        .send()
        .and_then(|answer| answer.bytes())
        .is_ok_and(|body| body.len() == good.len());
    assert!(!whole, "a tampered blob must be cut short");
    assert!(!blob_file(&child_data, layer).exists(), "nothing kept");

    std::fs::write(&on_disk, &good).unwrap();
    let fixed = api.get(&path).expect(200);
    assert_eq!(&sha256(&fixed.body), layer);
    assert!(blob_file(&child_data, layer).exists());
}

/// With the parent gone (killed, then its port held by something that never answers): what
/// the child holds is served, a miss fails within the timeout saying the parent is
/// unreachable, and a push (ReadWrite) still works.
#[test]
fn with_the_parent_unreachable_held_content_is_served_and_a_miss_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let parent_data = dir.path().join("parent");
    let mut parent = start_registry(&parent_data, &[]);
    let parent_api = Api::new(&parent.url());
    parent_api.push_image("lib/held", "v1", 2, 1 << 20);
    parent_api.push_image("lib/missed", "v1", 1, 1 << 20);
    let extra = [&CHILD[..], &["--mode", "ReadWrite"]].concat();
    let child = start_child(&dir.path().join("child"), &parent.url(), &extra);
    let api = Api::new(&child.url());
    pull_checked(&api, "lib/held", "v1");
    wait_stored(&child, "lib/held");

    let port = parent.addr.port();
    parent.kill();
    // Accepts connections (the backlog) and never answers: a parent that hangs.
    let _silent = TcpListener::bind(("127.0.0.1", port)).unwrap();
    pull_checked(&api, "lib/held", "v1");
    let miss = api.get_manifest("lib/missed", "v1");
    assert!(
        miss.status == 502 || miss.status == 504,
        "status {}: {}",
        miss.status,
        miss.text()
    );
    assert!(
        miss.text().contains("parent unreachable"),
        "{}",
        miss.text()
    );
    let blob_miss = api.get(&format!("/v2/lib/missed/blobs/sha256:{}", "0".repeat(64)));
    assert!(
        blob_miss.text().contains("parent unreachable"),
        "{}",
        blob_miss.text()
    );
    // A push HEADs blobs before uploading them: never asked of the parent.
    let head = api.head(&format!("/v2/lib/missed/blobs/sha256:{}", "1".repeat(64)));
    assert_eq!(head.status, 404);
    api.push_image("local/pushed", "v1", 1, 1 << 20);
    assert_eq!(api.get_manifest("local/pushed", "v1").status, 200);
}

/// A ReadWrite child pushes up what its clients pushed. Its sync first asks (HEAD) what the
/// layer above holds, and that is answered from the layer's store even while the layer's own
/// parent is down: a push up never waits on, or fails with, the parent of the registry it
/// goes to.
#[test]
fn a_childs_push_up_reaches_a_layer_whose_parent_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = start_registry(&dir.path().join("cloud"), &[]);
    let read_write = [&CHILD[..], &["--mode", "ReadWrite"]].concat();
    let top = start_child(&dir.path().join("top"), &cloud.url(), &read_write);
    let lower = start_child(&dir.path().join("lower"), &top.url(), &read_write);
    cloud.kill();
    let (manifest, _, _) = Api::new(&lower.url()).push_image("lib/made-here", "v1", 1, 1 << 20);
    wait_for_tag(&top, "lib/made-here", "v1", &sha256(&manifest));
}

/// With access control on, a miss is fetched only for a caller who may pull it: the guard
/// judges the token before the route asks the parent, so a token for `lib/allowed` gets
/// `lib/allowed` pulled through and is refused `lib/other` with no request to the parent.
#[test]
fn a_miss_is_fetched_only_for_a_caller_whose_token_may_pull_it() {
    let dir = tempfile::tempdir().unwrap();
    let parent = start_registry(&dir.path().join("parent"), &[]);
    let parent_api = Api::new(&parent.url());
    parent_api.push_image("lib/allowed", "v1", 1, 1 << 20);
    parent_api.push_image("lib/other", "v1", 1, 1 << 20);
    let child_data = dir.path().join("child");
    let reader = create_token(
        &child_data,
        "reader",
        vec![rule("lib/allowed", &["content/read"])],
        None,
    );
    let with_tokens = [&CHILD[..], &["--auth", "tokens"]].concat();
    let child = start_child(&child_data, &parent.url(), &with_tokens);
    let api = Api::new(&child.url());
    let pull = |repo: &str| {
        api.send(
            api.req(reqwest::Method::GET, &format!("/v2/{repo}/manifests/v1"))
                .header("accept", OCI_MANIFEST)
                .header("authorization", reader.basic()),
        )
    };
    pull("lib/allowed").expect(200);
    let refused = pull("lib/other");
    assert!(
        [401, 403].contains(&refused.status),
        "status {}: {}",
        refused.status,
        refused.text()
    );
    assert_eq!(requests(&parent, "GET", "/v2/lib/allowed/manifests/v1"), 1);
    assert_eq!(requests(&parent, "GET", "/v2/lib/other/manifests/v1"), 0);
}

/// Two layers of ours under CNCF distribution: a miss at the lower layer is a miss at the top
/// layer, fetched from the cloud; both layers keep a copy (each serves it with the layers
/// above gone).
#[test]
fn a_miss_at_the_lower_layer_fills_both_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = start_distribution(&dir.path().join("cloud"), "");
    let (manifest, _, _) = Api::new(&cloud.url()).push_image("lib/app", "v1", 2, 2 << 20);
    let top = start_child(&dir.path().join("top"), &cloud.url(), &CHILD);
    let top_port = top.addr.port();
    let lower = start_child(&dir.path().join("lower"), &top.url(), &CHILD);
    let (digest, _) = pull_checked(&Api::new(&lower.url()), "lib/app", "v1");
    assert_eq!(digest, sha256(&manifest));
    wait_stored(&top, "lib/app");
    wait_stored(&lower, "lib/app");
    cloud.kill();
    pull_checked(&Api::new(&top.url()), "lib/app", "v1");
    drop(top);
    let _gone = TcpListener::bind(("127.0.0.1", top_port)).unwrap();
    pull_checked(&Api::new(&lower.url()), "lib/app", "v1");
}

/// On-demand content appears in the child's change feed (for its own children) and, over the
/// quota, is evicted before the synced image, although it was pulled more recently.
#[test]
fn on_demand_content_is_in_the_feed_and_evicted_first() {
    let dir = tempfile::tempdir().unwrap();
    let parent = start_registry(&dir.path().join("parent"), &[]);
    let parent_api = Api::new(&parent.url());
    parent_api.push_image("lib/synced", "v1", 1, 2 << 20);
    parent_api.push_image("lib/fetched", "v1", 1, 2 << 20);
    let parent_url = parent.url();
    let args = [
        &ALWAYS_OPEN[..],
        &[
            "--parent",
            &parent_url,
            "--repo",
            "lib/synced",
            "--on-demand",
            "lib/fetched",
            "--sync-poll-interval",
            "PT1S",
            "--quota",
            "3MiB",
        ],
    ]
    .concat();
    let child = start_registry_on(&dir.path().join("child"), common::free_port(), &args);
    let api = Api::new(&child.url());
    common::sync::wait_for_tag(
        &child,
        "lib/synced",
        "v1",
        &parent_api
            .head("/v2/lib/synced/manifests/v1")
            .header("docker-content-digest")
            .unwrap(),
    );
    pull_checked(&api, "lib/fetched", "v1");
    wait_stored(&child, "lib/fetched");
    let feed = api.get("/acr/v1/_changes?after=0&n=100").expect(200).json();
    let tagged = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["repo"] == "lib/fetched" && c["type"] == "tag_set" && c["tag"] == "v1");
    assert!(tagged, "the feed names the on-demand tag: {feed}");
    // The next sync pass enforces the quota: the on-demand image goes first.
    let evicted = wait_until(SETTLE, Duration::from_millis(200), || {
        child
            .log_text()
            .lines()
            .any(|l| l.contains("evicted a synced image") && l.contains("lib/fetched"))
    });
    assert!(evicted, "log:\n{}", child.log_text());
    assert!(
        !child
            .log_text()
            .lines()
            .any(|l| l.contains("evicted a synced image") && l.contains("lib/synced")),
        "the synced image stays"
    );
}

/// With `--on-demand-revalidate`, a held tag that moved at the parent is answered as held at
/// once (the pull never waits on the parent), checked in the background, and served as moved
/// from then on.
#[test]
fn a_held_tag_moved_at_the_parent_is_revalidated_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let parent = start_registry(&dir.path().join("parent"), &[]);
    let parent_api = Api::new(&parent.url());
    let (first, _, _) = parent_api.push_image("lib/app", "v1", 1, 1 << 20);
    let extra = [&CHILD[..], &["--on-demand-revalidate", "1h"]].concat();
    let child = start_child(&dir.path().join("child"), &parent.url(), &extra);
    let api = Api::new(&child.url());
    let (held, _) = pull_checked(&api, "lib/app", "v1");
    assert_eq!(held, sha256(&first));
    wait_stored(&child, "lib/app");

    let (moved, _, _) = parent_api.push_image("lib/app", "v1", 1, 1 << 20);
    let answered = api.get_manifest("lib/app", "v1").expect(200);
    assert_eq!(sha256(&answered.body), held, "answered as held");
    let arrived = wait_until(SETTLE, Duration::from_millis(100), || {
        sha256(&api.get_manifest("lib/app", "v1").expect(200).body) == sha256(&moved)
    });
    assert!(
        arrived,
        "the moved tag never arrived; log:\n{}",
        child.log_text()
    );
    pull_checked(&api, "lib/app", "v1");
}

/// A name under an upstream's prefix (`upstreams` of the sync config) is pulled through from
/// that upstream, under its name there; any other name from the parent.
#[test]
fn a_miss_under_an_upstream_prefix_comes_from_that_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let parent = start_registry(&dir.path().join("parent"), &[]);
    let mcr = start_distribution(&dir.path().join("mcr"), "");
    let (from_mcr, _, _) = Api::new(&mcr.url()).push_image("agent", "v1", 1, 1 << 20);
    let (from_parent, _, _) = Api::new(&parent.url()).push_image("lib/app", "v1", 1, 1 << 20);
    let config = dir.path().join("sync.json");
    let body = serde_json::json!({
        "upstreams": [{"prefix": "mcr/", "url": mcr.url(), "registry": "mcr.microsoft.com"}]
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let extra = [&CHILD[..], &["--sync-config", config.to_str().unwrap()]].concat();
    let child = start_child(&dir.path().join("child"), &parent.url(), &extra);
    let api = Api::new(&child.url());
    let (digest, _) = pull_checked(&api, "mcr/agent", "v1");
    assert_eq!(digest, sha256(&from_mcr));
    let (digest, _) = pull_checked(&api, "lib/app", "v1");
    assert_eq!(digest, sha256(&from_parent));
    assert_eq!(requests(&parent, "GET", "/v2/mcr/agent/manifests/v1"), 0);
}
