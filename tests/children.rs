//! Child registries defined at their parent, end to end with the real binary: `child create`
//! prints a connection string; a registry started with only that string (and its data
//! directory) takes its settings from the parent (`GET /acr/v1/_gateway/{name}/config`),
//! syncs its repositories and nothing else, in the parent's mode; a change at the parent
//! reaches it at its next pass; with the parent unreachable it runs on the settings it last
//! received. The config route answers the child's own sync token only, and the change feed
//! names only what the caller may read. `child credential generate` rotates the connection
//! string with an overlap.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::api::Api;
use common::{bin, cli, cli_ok, curl, free_port, start_registry_on, wait_until, Proc};
use serde_json::Value;

/// `child ARGS... --data DATA --output json`, parsed.
#[track_caller]
fn child_json(data: &Path, args: &[&str]) -> Value {
    let data = data.to_str().unwrap();
    let all = [&["child"], args, &["--data", data, "--output", "json"]].concat();
    serde_json::from_str(&cli_ok(&all)).expect("child --output json prints JSON")
}

/// Creates child `name` on `repos` at the parent whose data is `data`, reached at `port`.
#[track_caller]
fn create_child(data: &Path, port: u16, name: &str, mode: &str, repos: &[&str]) -> String {
    let endpoint = format!("127.0.0.1:{port}");
    let mut args = vec![
        "create",
        name,
        "--mode",
        mode,
        "--parent-endpoint",
        &endpoint,
    ];
    args.extend(["--protocol", "http"]);
    for repo in repos {
        args.extend(["--repository", repo]);
    }
    let answer = child_json(data, &args);
    answer["connectionString"]
        .as_str()
        .expect("connectionString in the answer")
        .to_owned()
}

fn password_of(connection_string: &str) -> String {
    connection_string
        .split(';')
        .find_map(|p| p.strip_prefix("SyncTokenPassword="))
        .expect("SyncTokenPassword")
        .to_owned()
}

/// GET `path` at `base` as `user:password`; (status, body).
fn get_as(base: &str, path: &str, user: &str, password: &str) -> (u16, String) {
    let creds = format!("{user}:{password}");
    let (status, body, _) = curl(&["-u", &creds, &format!("{base}{path}")]);
    (status, body)
}

/// A parent holding `apps/a:v1`, `other/b:v1` and `third/c:v1` (pushed before access control
/// is on), its data directory, and the port it serves on once started again with tokens.
fn seeded_parent(dir: &Path) -> (std::path::PathBuf, u16) {
    let data = dir.join("parent");
    let port = free_port();
    let open = start_registry_on(&data, port, &[]);
    let api = Api::new(&open.url());
    for repo in ["apps/a", "other/b", "third/c"] {
        api.push_image(repo, "v1", 1, 1024);
    }
    drop(open);
    (data, port)
}

fn parent_with_tokens(data: &Path, port: u16) -> Proc {
    start_registry_on(data, port, &["--auth", "tokens"])
}

/// A child started with only its connection string (the environment) and its data directory.
/// A child from its connection string; pull-through off (these tests read a HEAD 200 as
/// "synced").
fn start_child(data: &Path, connection_string: &str, extra: &[&str]) -> Proc {
    let args = [extra, &["--on-demand", "off"]].concat();
    common::serve_with(
        data,
        free_port(),
        &args,
        &[("ACR_REGISTRY_CONNECTION_STRING", connection_string)],
        data.with_extension("log"),
    )
}

fn has_tag(child: &Proc, repo: &str) -> bool {
    Api::new(&child.url())
        .head(&format!("/v2/{repo}/manifests/v1"))
        .status
        == 200
}

#[track_caller]
fn wait_for(child: &Proc, repo: &str) {
    let arrived = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        has_tag(child, repo)
    });
    assert!(
        arrived,
        "{repo}:v1 never arrived; log:\n{}",
        child.log_text()
    );
}

#[test]
fn a_child_started_with_its_connection_string_syncs_its_scope_in_the_parents_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (parent_data, port) = seeded_parent(dir.path());
    let cs = create_child(&parent_data, port, "edge1", "ReadOnly", &["apps/*"]);
    assert!(
        cs.starts_with(
            "ConnectedRegistryName=edge1;SyncTokenName=edge1-sync-token;SyncTokenPassword="
        ),
        "{cs}"
    );
    assert!(cs.ends_with(&format!(
        ";ParentGatewayEndpoint=127.0.0.1:{port};ParentEndpointProtocol=http"
    )));
    let parent = parent_with_tokens(&parent_data, port);

    let child_data = dir.path().join("child");
    let child = start_child(&child_data, &cs, &[]);
    wait_for(&child, "apps/a");
    let api = Api::new(&child.url());
    let catalog = api.get("/v2/_catalog").json();
    assert_eq!(catalog["repositories"], serde_json::json!(["apps/a"]));
    assert!(!has_tag(&child, "other/b"));
    // ReadOnly, as the parent defined it: clients cannot push here.
    let push = api.send(api.req(reqwest::Method::POST, "/v2/apps/x/blobs/uploads/"));
    assert!(
        push.status >= 400,
        "a ReadOnly child took a push: {}",
        push.status
    );

    // `serve --print-config` says the settings came from the parent.
    let (ok, shown, err) = {
        let out = Command::new(bin())
            .args(["serve", "--print-config", "--auth", "none", "--data"])
            .arg(&child_data)
            .env("ACR_REGISTRY_CONNECTION_STRING", &cs)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{err}");
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("mode ").contains("ReadOnly") && line("mode ").contains("from parent"),
        "{shown}"
    );
    assert!(
        line("repo ").contains("apps/*") && line("repo ").contains("from parent"),
        "{shown}"
    );
    assert!(
        !shown.contains(&password_of(&cs)),
        "the password is never shown"
    );
    drop(child);

    // The parent unreachable at start: the child runs on the settings it last received.
    drop(parent);
    let out = Command::new(bin())
        .args(["serve", "--print-config", "--auth", "none", "--data"])
        .arg(&child_data)
        .env("ACR_REGISTRY_CONNECTION_STRING", &cs)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        shown.lines().any(|l| l.starts_with("repo ")
            && l.contains("apps/*")
            && l.contains("parent (cached)")),
        "{shown}"
    );
    let child = start_child(&child_data, &cs, &[]);
    assert!(has_tag(&child, "apps/a"), "serves what it had");
    assert!(
        child
            .log_text()
            .contains("running on the ones it last received"),
        "{}",
        child.log_text()
    );
}

#[test]
fn child_commands_and_the_config_route() {
    let dir = tempfile::tempdir().unwrap();
    let (parent_data, port) = seeded_parent(dir.path());
    let cs1 = create_child(&parent_data, port, "edge1", "ReadOnly", &["apps/*"]);
    let cs2 = create_child(&parent_data, port, "edge2", "ReadWrite", &["other/b"]);
    let data = parent_data.to_str().unwrap();
    let reader = cli_ok(&[
        "token",
        "create",
        "reader2",
        "--repository",
        "apps/a",
        "content/read",
        "message/read",
        "--data",
        data,
        "--output",
        "json",
    ]);
    let reader: Value = serde_json::from_str(&reader).unwrap();
    let reader_pw = reader["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let parent = parent_with_tokens(&parent_data, port);
    let base = parent.url();

    // list, show (through the running registry's admin socket).
    let list = child_json(&parent_data, &["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edge1", "edge2"]);
    let shown = child_json(&parent_data, &["show", "edge2"]);
    assert_eq!(shown["mode"], "ReadWrite");
    assert!(shown.get("connectionString").is_none(), "shown once only");

    // The config route: the child's own sync token only.
    let (status, body) = get_as(
        &base,
        "/acr/v1/_gateway/edge1/config",
        "edge1-sync-token",
        &password_of(&cs1),
    );
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["mode"], "ReadOnly");
    assert_eq!(config["repositories"], serde_json::json!(["apps/*"]));
    let (status, body) = get_as(
        &base,
        "/acr/v1/_gateway/edge2/config",
        "edge1-sync-token",
        &password_of(&cs1),
    );
    assert_eq!(status, 403, "another child's settings: {body}");
    assert!(body.contains("DENIED"), "{body}");
    let (status, _) = get_as(
        &base,
        "/acr/v1/_gateway/edge2/config",
        "edge2-sync-token",
        &password_of(&cs2),
    );
    assert_eq!(status, 200);
    let (status, _) = get_as(
        &base,
        "/acr/v1/_gateway/edge1/config",
        "reader2",
        &reader_pw,
    );
    assert_eq!(status, 403, "a token without config/read");
    let (status, _, _) = curl(&[&format!("{base}/acr/v1/_gateway/edge1/config")]);
    assert_eq!(status, 401, "no credentials");

    // The change feed names only what the caller may read.
    let (status, feed) = get_as(
        &base,
        "/acr/v1/_changes?after=0",
        "edge1-sync-token",
        &password_of(&cs1),
    );
    assert_eq!(status, 200, "{feed}");
    assert!(feed.contains("apps/a"), "{feed}");
    assert!(
        !feed.contains("other/b") && !feed.contains("third/c"),
        "{feed}"
    );
    let (status, feed) = get_as(&base, "/acr/v1/_changes?after=0", "reader2", &reader_pw);
    assert_eq!(status, 200, "{feed}");
    assert!(
        feed.contains("apps/a") && !feed.contains("other/b"),
        "{feed}"
    );
    // A page reads on past what the caller may not see: other/b's changes come after apps/a's.
    let (status, feed) = get_as(
        &base,
        "/acr/v1/_changes?after=0&n=1",
        "edge2-sync-token",
        &password_of(&cs2),
    );
    assert_eq!(status, 200, "{feed}");
    let page: Value = serde_json::from_str(&feed).unwrap();
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1), "{feed}");
    assert_eq!(page["changes"][0]["repo"], "other/b", "{feed}");

    // A new connection string: the old one works until the overlap ends, then not.
    let rotated = child_json(
        &parent_data,
        &["credential", "generate", "edge1", "--overlap", "3s"],
    );
    let new_cs = rotated["connectionString"].as_str().unwrap().to_owned();
    assert_ne!(password_of(&new_cs), password_of(&cs1));
    let config_as = |cs: &str| {
        get_as(
            &base,
            "/acr/v1/_gateway/edge1/config",
            "edge1-sync-token",
            &password_of(cs),
        )
        .0
    };
    assert_eq!(config_as(&new_cs), 200);
    assert_eq!(config_as(&cs1), 200, "the old one works during the overlap");
    let retired = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        config_as(&cs1) == 401
    });
    assert!(
        retired,
        "the old connection string kept working after the overlap"
    );
    assert_eq!(config_as(&new_cs), 200);

    // delete: the sync token goes with the child.
    cli_ok(&["child", "delete", "edge2", "--data", data]);
    let (status, _) = get_as(
        &base,
        "/acr/v1/_gateway/edge2/config",
        "edge2-sync-token",
        &password_of(&cs2),
    );
    assert_eq!(status, 401);
    let (ok, _, err) = cli(&["child", "show", "edge2", "--data", data]);
    assert!(!ok && err.contains("no child registry edge2"), "{err}");
    drop(parent);
}

#[test]
fn a_read_only_registry_refuses_a_read_write_child() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ro");
    let ro = common::start_registry(&data, &["--mode", "ReadOnly", "--auth", "tokens"]);
    let d = data.to_str().unwrap();
    let (ok, _, err) = cli(&[
        "child",
        "create",
        "c",
        "--mode",
        "ReadWrite",
        "--repository",
        "*",
        "--parent-endpoint",
        "ro.local",
        "--data",
        d,
    ]);
    assert!(!ok);
    assert!(
        err.contains("ReadOnly") && err.contains("--mode ReadOnly"),
        "{err}"
    );
    cli_ok(&[
        "child",
        "create",
        "c",
        "--mode",
        "ReadOnly",
        "--repository",
        "*",
        "--parent-endpoint",
        "ro.local",
        "--data",
        d,
    ]);
    // No endpoint: said how to give one.
    let (ok, _, err) = cli(&["child", "create", "d", "--repository", "*", "--data", d]);
    assert!(!ok && err.contains("--parent-endpoint"), "{err}");
    drop(ro);
}

#[test]
fn a_change_at_the_parent_reaches_the_running_child_at_its_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (parent_data, port) = seeded_parent(dir.path());
    let cs = create_child(&parent_data, port, "edge1", "ReadOnly", &["apps/*"]);
    let _parent = parent_with_tokens(&parent_data, port);
    let child = start_child(
        &dir.path().join("child"),
        &cs,
        &["--sync-poll-interval", "PT1S"],
    );
    wait_for(&child, "apps/a");
    assert!(!has_tag(&child, "third/c"));
    cli_ok(&[
        "child",
        "update",
        "edge1",
        "--repository",
        "apps/*",
        "--repository",
        "third/*",
        "--data",
        parent_data.to_str().unwrap(),
    ]);
    wait_for(&child, "third/c");
    assert!(!has_tag(&child, "other/b"));

    // The mode too: the ReadOnly child refuses a push, and takes one once its parent made it
    // ReadWrite (no restart).
    let api = Api::new(&child.url());
    let refused = api.send(api.req(reqwest::Method::POST, "/v2/local/app/blobs/uploads/"));
    assert_eq!(refused.status, 405, "a ReadOnly child refuses a push");
    cli_ok(&[
        "child",
        "update",
        "edge1",
        "--mode",
        "ReadWrite",
        "--data",
        parent_data.to_str().unwrap(),
    ]);
    let takes_pushes = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        api.send(api.req(reqwest::Method::POST, "/v2/local/app/blobs/uploads/"))
            .status
            == 202
    });
    assert!(
        takes_pushes,
        "the child never took pushes after its parent made it ReadWrite; log:\n{}",
        child.log_text()
    );
    api.push_image("apps/made-here", "v1", 1, 1000);
}
