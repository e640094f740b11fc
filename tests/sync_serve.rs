//! `serve` with sync settings: the schedule runs in the background, the synced image appears
//! in the child, and `GET /acr/v1/_sync/status` reports the last result and the next window.
//! Inside an open window sync stays active: it polls the parent, retries a failed pass with
//! backoff, and reconciles a synced tag a client deleted here at once. Invalid sync settings
//! stop `serve` at start with the valid range.

mod common;

use std::process::Command;
use std::time::Duration;

use common::api::Api;
use common::distribution::start_distribution;
use common::sync::{image, push, start_child, wait_for_tag};
use common::{bin, free_port, poll, start_registry, start_registry_on, Proc};
use serde_json::Value;

/// The child's `GET /acr/v1/_sync/status`, once it answers and `ready` holds (bounded wait).
#[track_caller]
fn status_when(child: &Proc, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let api = Api::new(&child.url());
    poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let r = api.get("/acr/v1/_sync/status");
        (r.status == 200).then(|| r.json()).filter(&ready)
    })
    .unwrap_or_else(|| {
        panic!(
            "status never showed {what}; child log:\n{}",
            child.log_text()
        )
    })
}

#[test]
fn serve_runs_the_sync_schedule_and_reports_status() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let host = parent.addr.to_string();
    let (layout, _) = image(&tmp.path().join("img"), &[4096]);
    push(&layout, &host, "srv/app", "v1");

    let child = start_registry(
        &tmp.path().join("child"),
        &[
            "--parent",
            &parent.url(),
            "--repo",
            "srv/app",
            "--sync-schedule",
            "* * * * * *",
        ],
    );
    let status_url = format!("{}/acr/v1/_sync/status", child.url());
    let status = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let out = Command::new("curl")
            .args(["-sf", &status_url])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (s["lastResult"]["outcome"] == "Completed").then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no completed pass reported; child log:\n{}",
            child.log_text()
        )
    });
    assert_eq!(status["parent"], parent.url());
    assert!(status["nextWindowStart"].is_string(), "{status}");
    assert_eq!(status["lastResult"]["tagsChecked"], 1, "{status}");
    let get = |base: String| {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("{base}/v2/srv/app/manifests/v1"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "no srv/app:v1 at {base}");
        out.stdout
    };
    // skopeo may recompress on push, so compare with what the parent serves.
    assert!(
        get(child.url()) == get(parent.url()),
        "served manifest differs from the parent's"
    );
}

#[test]
fn serve_refuses_invalid_sync_settings_at_start() {
    let parent = ["--parent", "http://127.0.0.1:9", "--repo", "a"];
    assert_refused_at_start(&[&parent[..], &["--message-ttl", "PT1H"]].concat());
}

/// A registry with no parent keeps its change log for children for messageTtl, so the setting
/// is checked at start there too.
#[test]
fn standalone_serve_refuses_an_invalid_message_ttl() {
    assert_refused_at_start(&["--message-ttl", "P91D"]);
}

/// `serve` with `args` exits with status 2 and names messageTtl's valid range.
fn assert_refused_at_start(args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data", data])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("messageTtl") && e.contains("P1D to P90D"), "{e}");
}

/// The parent is down when the window opens: the failed pass is retried with backoff while the
/// window is open (not at the next scheduled start, an hour away), and the status says when.
#[test]
fn serve_retries_a_failed_pass_while_the_window_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let parent_data = tmp.path().join("parent");
    let port = free_port();
    let digest = {
        let parent = start_registry_on(&parent_data, port, &[]);
        Api::new(&parent.url())
            .push_image("demo/app", "v1", 1, 4096)
            .1
            .digest
    };
    let parent_url = format!("http://127.0.0.1:{port}");
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &["--repo", "demo/app", "--sync-retry-max", "PT1S"],
    );
    let failed = status_when(&child, "a failed pass", |s| {
        s["lastResult"]["outcome"] == "Failed"
    });
    assert!(failed["currentWindowEnd"].is_string(), "{failed}");
    assert!(failed["nextAttempt"].is_string(), "{failed}");
    assert!(failed["failuresInARow"].as_u64().unwrap() >= 1, "{failed}");

    let _parent = start_registry_on(&parent_data, port, &[]);
    wait_for_tag(&child, "demo/app", "v1", &digest);
    let ok = status_when(&child, "a completed pass", |s| {
        s["lastResult"]["outcome"] == "Completed"
    });
    assert_eq!(ok["failuresInARow"], 0, "{ok}");
    assert!(ok["currentWindowEnd"].is_string(), "{ok}");
}

/// While the window is open the child keeps polling its parent: a tag pushed there after the
/// first pass comes down without a new scheduled start. A synced tag a client deletes here
/// comes back at once, though the poll interval is a day.
#[test]
fn serve_keeps_syncing_while_the_window_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let parent_url = parent.url();
    let up = Api::new(&parent_url);
    let v1 = up.push_image("demo/app", "v1", 1, 4096).1.digest;
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &["--repo", "demo/*", "--sync-poll-interval", "PT1S"],
    );
    wait_for_tag(&child, "demo/app", "v1", &v1);
    let v2 = up.push_image("demo/app", "v2", 1, 4096).1.digest;
    wait_for_tag(&child, "demo/app", "v2", &v2);
    drop(child);

    // ReadWrite, so a client may delete here (deletions stay local; the parent's tag comes back).
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &[
            "--repo",
            "demo/*",
            "--sync-poll-interval",
            "P1D",
            "--mode",
            "ReadWrite",
        ],
    );
    status_when(&child, "a completed pass", |s| {
        s["lastResult"]["outcome"] == "Completed"
    });
    Api::new(&child.url())
        .delete("/v2/demo/app/manifests/v1")
        .expect(202);
    wait_for_tag(&child, "demo/app", "v1", &v1);
}

/// A child of a parent of ours learns of a change through a long poll of the parent's change
/// feed, at once, not at its next poll: here the poll interval is a day, so only the long poll
/// brings the new tags; through two layers (a grandchild of the parent) too.
#[test]
fn a_change_reaches_children_at_once_through_the_feed_long_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    let v1 = up.push_image("demo/app", "v1", 1, 4096).1.digest;
    let once_a_day = ["--repo", "demo/*", "--sync-poll-interval", "P1D"];
    let child = start_child(&tmp.path().join("child"), &parent.url(), &once_a_day);
    wait_for_tag(&child, "demo/app", "v1", &v1);
    let grandchild = start_child(&tmp.path().join("grandchild"), &child.url(), &once_a_day);
    wait_for_tag(&grandchild, "demo/app", "v1", &v1);
    // Both have completed a pass and now wait a day, or for their parent's feed.
    for registry in [&child, &grandchild] {
        status_when(registry, "a completed pass", |s| {
            s["lastResult"]["outcome"] == "Completed"
        });
    }
    // A change outside the children's scope (a pass that brings nothing), then one inside.
    up.push_image("other/app", "v1", 1, 4096);
    let v2 = up.push_image("demo/app", "v2", 1, 4096).1.digest;
    wait_for_tag(&child, "demo/app", "v2", &v2);
    wait_for_tag(&grandchild, "demo/app", "v2", &v2);

    // A parent stopping answers its children's long polls at once: it is not held up for the
    // polls' 25 s (nor for its 30 s grace period).
    let mut parent = parent;
    let term = Command::new("kill")
        .args(["-TERM", &parent.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let stopped = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        parent.child.try_wait().ok().flatten()
    });
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the parent did not stop cleanly while its children long-polled: {stopped:?}\n{}",
        parent.log_text()
    );
}

/// ReadOnly (a child's default) refuses every client write with 405 `UNSUPPORTED`, whatever
/// the route, and leaves nothing behind, while sync in the same process still writes what it
/// brings down.
#[test]
fn serve_read_only_refuses_client_writes_while_sync_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let parent_url = parent.url();
    let up = Api::new(&parent_url);
    let (_, v1, blobs) = up.push_image("demo/app", "v1", 1, 2048);
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &["--repo", "demo/*", "--sync-poll-interval", "PT1S"],
    );
    wait_for_tag(&child, "demo/app", "v1", &v1.digest);
    let api = Api::new(&child.url());
    let manifest = api.get("/v2/demo/app/manifests/v1").expect(200).body;
    let layer = &blobs[1].digest;
    let refused = [
        api.send(api.req(reqwest::Method::POST, "/v2/demo/app/blobs/uploads/")),
        api.send(api.req(
            reqwest::Method::POST,
            &format!("/v2/other/app/blobs/uploads/?mount={layer}&from=demo/app"),
        )),
        api.put_manifest("demo/app", "v2", common::api::OCI_MANIFEST, &manifest),
        api.delete("/v2/demo/app/manifests/v1"),
        api.delete(&format!("/v2/demo/app/blobs/{layer}")),
        api.send(api.req(reqwest::Method::PATCH, "/v2/demo/app/blobs/uploads/x")),
    ];
    for r in refused {
        let text = r.text();
        r.expect_error(405, "UNSUPPORTED");
        assert!(
            text.contains("This operation is not allowed on this registry"),
            "{text}"
        );
    }
    assert_eq!(api.tags("demo/app"), vec!["v1".to_owned()]);
    assert!(api.tags("other/app").is_empty());
    api.get("/v2/demo/app/manifests/v1").expect(200);
    // Sync still writes: a new tag at the parent comes down at the next poll.
    let (_, v2, _) = up.push_image("demo/app", "v2", 1, 2048);
    wait_for_tag(&child, "demo/app", "v2", &v2.digest);
}

/// A repository the parent does not have is a warning in the status, not silence.
#[test]
fn serve_status_shows_scope_that_matches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let parent_url = parent.url();
    Api::new(&parent_url).push_image("demo/app", "v1", 1, 1024);
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &["--repo", "demo/app", "--repo", "demo/nonexistnt"],
    );
    let s = status_when(&child, "a completed pass", |s| {
        s["lastResult"]["outcome"] == "Completed"
    });
    assert!(
        s["warnings"]
            .to_string()
            .contains("demo/nonexistnt does not exist"),
        "{s}"
    );
}

/// A client asking a child for an image outside its sync scope is told so, not only that the
/// manifest is missing; a miss inside the scope says nothing of the kind. No parent address.
#[test]
fn serve_says_when_a_repository_is_outside_the_sync_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let parent_url = parent.url();
    let child = start_child(
        &tmp.path().join("child"),
        &parent_url,
        &["--repo", "demo/*"],
    );
    let api = Api::new(&child.url());
    let outside = api
        .get("/v2/other/multi/manifests/1.0")
        .expect_error(404, "MANIFEST_UNKNOWN")
        .text();
    assert!(
        outside.contains("other/multi is outside this registry's sync scope")
            && outside.contains("demo/*"),
        "{outside}"
    );
    assert!(!outside.contains(&parent.addr.to_string()), "{outside}");
    let inside = api
        .get("/v2/demo/app/manifests/1.0")
        .expect_error(404, "MANIFEST_UNKNOWN")
        .text();
    assert!(!inside.contains("sync scope"), "{inside}");
}
