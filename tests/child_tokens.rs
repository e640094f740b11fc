//! Tokens flow down, end to end with the real binary: a client token made at a parent for a
//! child (`token create NAME --for-child CHILD`) is not valid at the parent, reaches the child
//! within one sync as password hashes only, works there for Basic auth and the token service,
//! also with the parent stopped and the child restarted (the child verifies the hashes
//! itself); disabled at the parent it is refused at the child after its next sync, deleted it
//! is gone.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::Api;
use common::{cli, curl, free_port, serve_with, start_registry_on, wait_until, Proc};
use serde_json::Value;

#[track_caller]
fn cli_json(args: &[&str], data: &Path) -> Value {
    let all = [
        args,
        &["--data", data.to_str().unwrap(), "--output", "json"],
    ]
    .concat();
    let (ok, out, err) = cli(&all);
    assert!(ok, "{all:?} failed:\n{out}\n{err}");
    if out.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&out).expect("--output json prints JSON")
}

fn start_child(data: &Path, connection_string: &str) -> Proc {
    serve_with(
        data,
        free_port(),
        // Pull-through off: these tests read a HEAD 200 as "synced".
        &[
            "--auth",
            "tokens",
            "--sync-poll-interval",
            "PT1S",
            "--on-demand",
            "off",
        ],
        &[("ACR_REGISTRY_CONNECTION_STRING", connection_string)],
        data.with_extension("log"),
    )
}

/// The status of `GET /v2/apps/a/manifests/v1` at `base` as `user:password`.
fn pull_status(base: &str, user: &str, password: &str) -> u16 {
    let creds = format!("{user}:{password}");
    curl(&[
        "-u",
        &creds,
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{base}/v2/apps/a/manifests/v1"),
    ])
    .0
}

#[test]
fn a_token_made_for_a_child_works_there_offline_and_follows_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let parent_data = dir.path().join("parent");
    let port = free_port();
    {
        let open = start_registry_on(&parent_data, port, &[]);
        Api::new(&open.url()).push_image("apps/a", "v1", 1, 1024);
    }
    let made = cli_json(
        &[
            "child",
            "create",
            "edge",
            "--repository",
            "apps/*",
            "--parent-endpoint",
            &format!("127.0.0.1:{port}"),
            "--protocol",
            "http",
        ],
        &parent_data,
    );
    let cs = made["connectionString"].as_str().unwrap().to_owned();
    // Not for a child that does not exist.
    let (ok, _, err) = cli(&[
        "token",
        "create",
        "x",
        "--for-child",
        "nowhere",
        "--repository",
        "apps/*",
        "content/read",
        "--data",
        parent_data.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no child registry nowhere"), "{err}");
    let token = cli_json(
        &[
            "token",
            "create",
            "puller",
            "--for-child",
            "edge",
            "--repository",
            "apps/*",
            "content/read",
            "metadata/read",
        ],
        &parent_data,
    );
    let password = token["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(token["forChild"], "edge");
    let mut parent = start_registry_on(&parent_data, port, &["--auth", "tokens"]);

    // The parent never shows the password, and does not take the token itself.
    let shown = cli_json(&["token", "show", "puller"], &parent_data);
    assert!(!shown.to_string().contains(&password), "{shown}");
    assert_eq!(
        pull_status(&parent.url(), "puller", &password),
        401,
        "a child's client token is the child's, not the parent's"
    );

    // One sync later the child takes it, for Basic auth and the token service.
    let child_data = dir.path().join("child");
    let child = start_child(&child_data, &cs);
    let works = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        pull_status(&child.url(), "puller", &password) == 200
    });
    assert!(
        works,
        "the token never worked at the child:\n{}",
        child.log_text()
    );
    let creds = format!("puller:{password}");
    let (status, body, _) = curl(&[
        "-u",
        &creds,
        &format!(
            "{}/oauth2/token?service=x&scope=repository:apps/a:pull",
            child.url()
        ),
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("access_token") || body.contains("\"token\""),
        "{body}"
    );
    let listed = cli_json(&["token", "show", "puller"], &child_data);
    assert_eq!(listed["managedBy"], "parent", "{listed}");
    let (ok, _, err) = cli(&[
        "token",
        "update",
        "puller",
        "--status",
        "disabled",
        "--data",
        child_data.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("managed by this registry's parent"),
        "{err}"
    );
    // The child keeps hashes only.
    let kept = std::fs::read(child_data.join("access.redb")).unwrap();
    let kept = String::from_utf8_lossy(&kept);
    assert!(
        !kept.contains(&password),
        "the child's store holds a password"
    );
    assert!(
        kept.contains("$argon2id$"),
        "the child's store holds the hash"
    );
    let config = std::fs::read_to_string(child_data.join("sync/parent-config.json")).unwrap();
    assert!(
        !config.contains("argon2"),
        "no hash in the kept settings: {config}"
    );

    // The parent away, the child restarted: it checks the hash itself.
    parent.kill();
    drop(child);
    let child = start_child(&child_data, &cs);
    assert_eq!(pull_status(&child.url(), "puller", &password), 200);
    assert_eq!(pull_status(&child.url(), "puller", "wrong"), 401);

    // Disabled at the parent: refused at the child after its next sync.
    let parent = start_registry_on(&parent_data, port, &["--auth", "tokens"]);
    cli_json(
        &["token", "update", "puller", "--status", "disabled"],
        &parent_data,
    );
    let refused = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        pull_status(&child.url(), "puller", &password) == 401
    });
    assert!(
        refused,
        "a token disabled at the parent still worked at the child:\n{}",
        child.log_text()
    );

    // Deleted at the parent: gone at the child.
    cli_json(&["token", "delete", "puller"], &parent_data);
    let gone = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let list = cli_json(&["token", "list"], &child_data);
        !list.to_string().contains("\"puller\"")
    });
    assert!(gone, "a token deleted at the parent stayed at the child");
    drop(parent);
}
