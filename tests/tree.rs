//! Status flows up a tree of our registries, end to end with the real binary: a chain parent ←
//! child ← grandchild, each child started with only its connection string; after their passes
//! the parent's `GET /acr/v1/_gateway/_tree` and `status --tree` show the child `Online` with a
//! fresh report, its last sync, the tags it synced and its lag, and the grandchild beneath it;
//! a stopped child turns `Offline` at the parent after `--child-offline-after`. The report
//! route answers the child's own sync token only.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::Api;
use common::{cli_ok, curl, free_port, poll, serve_with, start_registry_on, wait_until, Proc};
use serde_json::Value;

/// Defines ReadOnly child `name` on `apps/*` at the registry whose data is `data`, reached on
/// `port`; its connection string.
#[track_caller]
fn create_child(data: &Path, port: u16, name: &str) -> String {
    let endpoint = format!("127.0.0.1:{port}");
    let out = cli_ok(&[
        "child",
        "create",
        name,
        "--mode",
        "ReadOnly",
        "--repository",
        "apps/*",
        "--parent-endpoint",
        &endpoint,
        "--protocol",
        "http",
        "--data",
        data.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let answer: Value = serde_json::from_str(&out).unwrap();
    answer["connectionString"].as_str().unwrap().to_owned()
}

/// A token `name` at `data` that may read the tree (`message/read`); its password.
fn tree_reader(data: &Path, name: &str) -> String {
    let out = cli_ok(&[
        "token",
        "create",
        name,
        "--repository",
        "*",
        "metadata/read",
        "message/read",
        "--data",
        data.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let answer: Value = serde_json::from_str(&out).unwrap();
    answer["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A registry with access control started with `connection_string` on `port`.
fn start_child(data: &Path, port: u16, connection_string: &str) -> Proc {
    serve_with(
        data,
        port,
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

/// `GET /acr/v1/_gateway/_tree` at `base` as `user:password`; the JSON, if 200.
fn tree(base: &str, user: &str, password: &str) -> Option<Value> {
    let creds = format!("{user}:{password}");
    let (status, body, _) = curl(&["-u", &creds, &format!("{base}/acr/v1/_gateway/_tree")]);
    (status == 200).then(|| serde_json::from_str(&body).expect("the tree is JSON"))
}

fn child<'a>(tree: &'a Value, name: &str) -> Option<&'a Value> {
    tree["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn status_flows_up_a_three_level_chain_and_a_silent_child_turns_offline() {
    let dir = tempfile::tempdir().unwrap();
    let parent_data = dir.path().join("parent");
    let parent_port = free_port();
    {
        let open = start_registry_on(&parent_data, parent_port, &[]);
        Api::new(&open.url()).push_image("apps/a", "v1", 1, 1024);
    }
    let edge_cs = create_child(&parent_data, parent_port, "edge");
    let reader_pw = tree_reader(&parent_data, "ops");
    let parent = start_registry_on(
        &parent_data,
        parent_port,
        &["--auth", "tokens", "--child-offline-after", "4s"],
    );

    // The child defines its own child before it starts (on its store).
    let edge_data = dir.path().join("edge");
    let edge_port = free_port();
    let leaf_cs = create_child(&edge_data, edge_port, "leaf");
    let mut edge = start_child(&edge_data, edge_port, &edge_cs);
    let leaf = start_child(&dir.path().join("leaf"), free_port(), &leaf_cs);

    // The grandchild's report reaches the top through the child's.
    let seen = poll(Duration::from_secs(60), Duration::from_millis(300), || {
        let t = tree(&parent.url(), "ops", &reader_pw)?;
        let e = child(&t, "edge")?;
        let l = child(&e["report"], "leaf")?;
        (e["state"] == "Online"
            && e["report"]["tagsSynced"].as_u64()? >= 1
            && l["state"] == "Online"
            && l["report"]["tagsSynced"].as_u64()? >= 1)
            .then(|| t.clone())
    });
    let t = seen.unwrap_or_else(|| {
        panic!(
            "the parent's tree never showed edge and leaf Online with a synced tag: {:?}\nedge log:\n{}\nleaf log:\n{}",
            tree(&parent.url(), "ops", &reader_pw),
            edge.log_text(),
            leaf.log_text()
        )
    });
    let e = child(&t, "edge").unwrap();
    assert!(e["reportAgeSeconds"].as_u64().unwrap() < 4, "{e}");
    assert!(e["report"]["lastSuccessfulSync"].is_string(), "{e}");
    assert_eq!(e["report"]["mode"], "ReadOnly");
    assert!(e["lag"].is_u64(), "a child of ours reads the feed: {e}");
    assert!(e["report"]["diskFreeBytes"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(t["connectionState"], "Online");

    // `status --tree` through the running parent's admin socket: the same tree, readable.
    let parent_d = parent_data.to_str().unwrap();
    let shown = cli_ok(&["status", "--tree", "--data", parent_d]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("edge") && l.contains("Online")),
        "{shown}"
    );
    assert!(shown.lines().any(|l| l.contains("leaf")), "{shown}");
    let json: Value = serde_json::from_str(&cli_ok(&[
        "status", "--tree", "--data", parent_d, "--output", "json",
    ]))
    .unwrap();
    assert!(child(&json, "edge").is_some(), "{json}");

    // The report route answers the child's own sync token only; the tree needs message/read.
    let ops = format!("ops:{reader_pw}");
    let (status, _, _) = curl(&[
        "-u",
        &ops,
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &format!("{}/acr/v1/_gateway/edge/status", parent.url()),
    ]);
    assert_eq!(status, 403, "another token may not report for edge");
    let (status, _, _) = curl(&[&format!("{}/acr/v1/_gateway/_tree", parent.url())]);
    assert_eq!(status, 401, "the tree needs credentials");

    // The child stops reporting: Offline at the parent after --child-offline-after (4s),
    // its child with it.
    edge.kill();
    let offline = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        tree(&parent.url(), "ops", &reader_pw).is_some_and(|t| {
            child(&t, "edge").is_some_and(|e| {
                e["state"] == "Offline"
                    && child(&e["report"], "leaf").is_some_and(|l| l["state"] == "Offline")
            })
        })
    });
    assert!(
        offline,
        "a silent child never turned Offline: {:?}",
        tree(&parent.url(), "ops", &reader_pw)
    );
    drop(leaf);

    // With no registry running, `status --tree` reads the kept reports (DATA/child-reports).
    drop(parent);
    let shown = cli_ok(&[
        "status",
        "--tree",
        "--data",
        parent_d,
        "--child-offline-after",
        "4s",
    ]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("edge") && l.contains("Offline")),
        "{shown}"
    );
}
