//! The storage quota (`serve --quota`) on a child of a parent of ours: synced images least
//! recently pulled are evicted until the blob files fit, the evicted tag stays listed and its
//! pull says why, sync does not fetch it again until a client asks (no churn), then brings it
//! back byte-identical; a child of the child keeps its copy; content pushed here is never
//! evicted; no tag ever points at missing content.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::Api;
use common::checks::assert_references_whole;
use common::sync::{start_child, wait_for_tag, ALWAYS_OPEN};
use common::{free_port, poll, serve_with, start_registry, start_registry_on, wait_until};

/// Each image's one layer: random, so no two images share bytes.
const LAYER: usize = 100 * 1024;

/// How this project's sync client introduces itself: a request with it comparing tags is not a
/// client asking for an evicted tag, so the checks below look without bringing anything back.
const SYNC_AGENT: &str = "connected-registry-sync/test";

/// GET `repo:tag` as a child's sync would (no demand recorded).
fn peek_manifest(api: &Api, repo: &str, tag: &str) -> common::api::Resp {
    api.send(
        api.req(reqwest::Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json, */*")
            .header("user-agent", SYNC_AGENT),
    )
}

/// Whether `repo:tag` is still listed but answers that it was evicted.
fn is_evicted(api: &Api, repo: &str, tag: &str) -> bool {
    let r = peek_manifest(api, repo, tag);
    r.status == 404 && r.text().contains("was evicted") && api.tags(repo).iter().any(|t| t == tag)
}

/// Sum of the blob files' sizes in a data directory.
fn blob_bytes(data: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&data.join("blobs"))
}

/// A sample of `/metrics` on `admin`: the sum over the lines of `name` (with any labels).
fn metric(admin: &str, name: &str) -> u64 {
    let text = Api::new(&format!("http://{admin}")).get("/metrics").text();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every tag `api` lists in `repo` serves whole content, or answers that it was evicted.
#[track_caller]
fn no_dangling_tag(api: &Api, repo: &str) {
    for tag in api.tags(repo) {
        let r = peek_manifest(api, repo, &tag);
        match r.status {
            200 => assert_references_whole(api, repo, &r.json()),
            404 => assert!(
                r.text().contains("was evicted"),
                "{repo}:{tag}: {}",
                r.text()
            ),
            s => panic!("{repo}:{tag}: {s} {}", r.text()),
        }
    }
}

#[test]
fn quota_evicts_the_least_recently_pulled_and_brings_an_image_back_on_demand() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    let a = up.push_image("q/app", "a", 1, LAYER).1.digest;
    let b = up.push_image("q/app", "b", 1, LAYER).1.digest;

    let admin = format!("127.0.0.1:{}", free_port());
    let child_data = tmp.path().join("child");
    let quota: u64 = 250 * 1024;
    let child = start_child(
        &child_data,
        &parent.url(),
        &[
            "--repo",
            "q/*",
            "--sync-poll-interval",
            "PT1S",
            "--quota",
            "250KiB",
            "--admin",
            &admin,
        ],
    );
    wait_for_tag(&child, "q/app", "a", &a);
    wait_for_tag(&child, "q/app", "b", &b);
    // A child of the child compares every tag with it on each pass.
    let grandchild = start_child(
        &tmp.path().join("grandchild"),
        &child.url(),
        &[
            "--repo",
            "q/*",
            "--sync-poll-interval",
            "PT1S",
            "--sync-reconcile-interval",
            "PT1S",
        ],
    );
    wait_for_tag(&grandchild, "q/app", "a", &a);
    wait_for_tag(&grandchild, "q/app", "b", &b);

    // `a` is pulled after both were synced (pull times have 1 s resolution): `b` becomes the
    // least recently pulled.
    std::thread::sleep(Duration::from_millis(1100));
    let api = Api::new(&child.url());
    assert_references_whole(
        &api,
        "q/app",
        &api.get_manifest("q/app", "a").expect(200).json(),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let c = up.push_image("q/app", "c", 1, LAYER).1.digest;
    wait_for_tag(&child, "q/app", "c", &c);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            is_evicted(&api, "q/app", "b")
        }),
        "b was not evicted; child log:\n{}",
        child.log_text()
    );
    let used = blob_bytes(&child_data);
    assert!(used <= quota, "{used} bytes stored, over the quota {quota}");
    eprintln!("after the first eviction: {used} bytes of blob files, quota {quota}");
    assert_eq!(metric(&admin, "connected_registry_evictions_total"), 1);
    let evicted_bytes = metric(&admin, "connected_registry_evicted_bytes_total");
    assert!(evicted_bytes >= LAYER as u64, "{evicted_bytes}");
    let log = child.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("evicted a synced image"))
        .unwrap_or_else(|| panic!("no eviction logged:\n{log}"));
    for part in ["q/app", "tag=\"b\"", &b, "over quota"] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    assert_eq!(api.tags("q/app"), ["a", "b", "c"]);
    no_dangling_tag(&api, "q/app");

    // No churn: passes without a client asking for `b` fetch nothing (the grandchild's HEADs
    // of `b` are a sync comparing, not a client asking).
    // (The passes' bytes down include feed pages; tags written and blob files are the measure.)
    let passes = metric(&admin, "connected_registry_sync_passes_total");
    let updated = metric(&admin, "connected_registry_sync_tags_total");
    let stored = blob_bytes(&child_data);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
            metric(&admin, "connected_registry_sync_passes_total") >= passes + 3
        }),
        "no further passes; child log:\n{}",
        child.log_text()
    );
    assert_eq!(
        metric(&admin, "connected_registry_sync_tags_total"),
        updated
    );
    assert_eq!(blob_bytes(&child_data), stored);
    assert_eq!(metric(&admin, "connected_registry_evictions_total"), 1);
    assert!(is_evicted(&api, "q/app", "b"));
    // The grandchild keeps its copy of a tag its parent lists but evicted.
    let gapi = Api::new(&grandchild.url());
    let kept = gapi.get_manifest("q/app", "b").expect(200);
    assert_references_whole(&gapi, "q/app", &kept.json());

    // A client asks: the clear 404, then the next pass brings it back byte-identical.
    let asked = api.get_manifest("q/app", "b");
    assert_eq!(asked.status, 404);
    let text = asked.text();
    assert!(text.contains("MANIFEST_UNKNOWN"), "{text}");
    assert!(
        text.contains(
            "q/app:b was evicted to keep storage under the quota (--quota); the next sync pass brings it back"
        ),
        "{text}"
    );
    wait_for_tag(&child, "q/app", "b", &b);
    let back = api.get_manifest("q/app", "b").expect(200);
    assert_eq!(back.body, up.get_manifest("q/app", "b").expect(200).body);
    assert_references_whole(&api, "q/app", &back.json());
    // Back over the quota: the least recently pulled now (`a`, pulled before `c` came) goes.
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            is_evicted(&api, "q/app", "a")
        }),
        "a was not evicted; child log:\n{}",
        child.log_text()
    );
    assert_eq!(metric(&admin, "connected_registry_evictions_total"), 2);
    assert!(blob_bytes(&child_data) <= quota);
    no_dangling_tag(&api, "q/app");
    no_dangling_tag(&gapi, "q/app");
}

#[test]
fn content_pushed_here_is_never_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    up.push_image("q/app", "synced", 1, LAYER);
    let child = start_child(
        &tmp.path().join("child"),
        &parent.url(),
        &[
            "--repo",
            "q/*",
            "--sync-poll-interval",
            "PT1S",
            "--mode",
            "ReadWrite",
            "--quota",
            "50KiB",
        ],
    );
    let api = Api::new(&child.url());
    // Synced, then evicted at once: it alone is over the quota.
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            is_evicted(&api, "q/app", "synced")
        }),
        "the synced image was not evicted; child log:\n{}",
        child.log_text()
    );
    // A client's image (outside the sync scope: it stays here) alone exceeds the quota.
    let (manifest, _, _) = api.push_image("mine/app", "v1", 1, 2 * LAYER);
    let warned = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let log = child.log_text();
        log.contains("still over the quota").then_some(log)
    });
    assert!(
        warned.is_some(),
        "no warning; child log:\n{}",
        child.log_text()
    );
    let r = api.get_manifest("mine/app", "v1").expect(200);
    assert_eq!(r.body, manifest);
    assert_references_whole(&api, "mine/app", &r.json());
    no_dangling_tag(&api, "q/app");
}

/// `kill -9` (an abort at the named crash point) after an eviction's metadata committed and
/// before its files went: the store opens as it is, the tag is still evicted, no tag points at
/// missing content, and the files left behind are garbage that `gc` collects.
#[test]
fn a_crash_between_evicting_and_deleting_leaves_only_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    up.push_image("q/app", "a", 1, LAYER);
    up.push_image("q/app", "b", 1, LAYER);
    let data = tmp.path().join("child");
    let port = free_port();
    let parent_url = parent.url();
    let args = [
        &ALWAYS_OPEN[..],
        &[
            "--parent",
            &parent_url,
            "--repo",
            "q/*",
            "--quota",
            "150KiB",
        ],
    ]
    .concat();
    let mut child = serve_with(
        &data,
        port,
        &args,
        &[("CONNECTED_REGISTRY_CRASH_AT", "after_eviction_commit")],
        tmp.path().join("child.log"),
    );
    let aborted = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        child.child.try_wait().unwrap()
    });
    assert!(
        aborted.is_some(),
        "the child never reached the crash point:\n{}",
        child.log_text()
    );
    let before = blob_bytes(&data);

    // Open again without a parent: nothing is repaired, one tag is evicted, the other whole.
    let again = start_registry_on(&data, port, &[]);
    let api = Api::new(&again.url());
    assert_eq!(api.tags("q/app"), ["a", "b"]);
    let evicted: Vec<&str> = ["a", "b"]
        .into_iter()
        .filter(|t| is_evicted(&api, "q/app", t))
        .collect();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    no_dangling_tag(&api, "q/app");
    drop(again);

    let out = common::run_ok(
        common::bin().to_str().unwrap(),
        &["gc", "--data", data.to_str().unwrap(), "--gc-grace", "0s"],
    );
    let after = blob_bytes(&data);
    assert!(
        after + LAYER as u64 <= before,
        "gc freed {} bytes of {before}: {out}",
        before - after
    );
    let again = start_registry_on(&data, port, &[]);
    no_dangling_tag(&Api::new(&again.url()), "q/app");
}
