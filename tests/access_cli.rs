//! The `scope-map`, `token` and `signing-key` commands against the real binary: their text and
//! `--output json` (the shapes `az acr` prints), with no registry running (straight on the
//! store) and with one running (through its admin socket, mode 0600, taking effect at once),
//! refusals that say what is wrong, seeding from `serve --access-config`, and no password in
//! the registry's log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `connected-registry ARGS... --data DATA`, stdin closed.
fn cli(data: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .args(["--data", data.to_str().expect("utf-8 temp path")])
        .stdin(Stdio::null())
        .output()
        .expect("run connected-registry")
}

/// Runs a command that must succeed; its stdout.
#[track_caller]
fn ok(data: &Path, args: &[&str]) -> String {
    let out = cli(data, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command with `--output json`; its answer.
#[track_caller]
fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let text = ok(data, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
}

/// Runs a command that must be refused; its stderr.
#[track_caller]
fn refused(data: &Path, args: &[&str]) -> String {
    let out = cli(data, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} should have been refused; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?}: a refusal prints nothing on stdout"
    );
    stderr
}

/// The passwords' values in `list` (an `az` passwords array).
fn values(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a passwords array")
        .iter()
        .map(|p| p["value"].as_str().expect("a password value").to_owned())
        .collect()
}

/// Every command, text and JSON, on a data directory no registry serves.
#[test]
fn commands_work_on_the_store_with_no_registry_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let text = ok(
        &data,
        &[
            "scope-map",
            "create",
            "team-a",
            "--repository",
            "team-a/*",
            "content/read",
            "content/write",
            "--repository",
            "shared",
            "metadata/read",
            "--description",
            "Team A",
        ],
    );
    assert!(text.contains("name:        team-a"), "{text}");
    assert!(
        text.contains("repositories/team-a/*/content/write"),
        "{text}"
    );
    let map = json(&data, &["scope-map", "show", "team-a"]);
    assert_eq!(map["type"], "UserDefined");
    assert_eq!(map["description"], "Team A");
    assert_eq!(
        map["actions"],
        serde_json::json!([
            "repositories/team-a/*/content/read",
            "repositories/team-a/*/content/write",
            "repositories/shared/metadata/read"
        ])
    );
    let map = json(
        &data,
        &[
            "scope-map",
            "update",
            "team-a",
            "--add-repository",
            "team-a/*",
            "content/delete",
            "--remove-repository",
            "shared",
            "metadata/read",
        ],
    );
    assert_eq!(map["actions"].as_array().unwrap().len(), 3, "{map}");
    let maps = json(&data, &["scope-map", "list"]);
    assert!(maps
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "_repositories_pull"));
    assert!(ok(&data, &["scope-map", "list"]).contains("_repositories_admin"));

    // token create: two passwords in credentials.passwords[].value, shown this once.
    let created = json(
        &data,
        &[
            "token",
            "create",
            "ci",
            "--scope-map",
            "team-a",
            "--expiration",
            "P30D",
        ],
    );
    assert_eq!(created["name"], "ci");
    assert_eq!(created["scopeMapId"], "team-a");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["credentials"]["username"], "ci");
    let first = values(&created["credentials"]["passwords"]);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|p| p.len() >= 32), "{first:?}");
    assert!(created["credentials"]["passwords"][0]["expiry"].is_string());

    // In one step, with its own scope map; text output says the passwords are shown only now.
    let text = ok(
        &data,
        &[
            "token",
            "create",
            "puller",
            "--repository",
            "team-a/app",
            "content/read",
            "--status",
            "disabled",
        ],
    );
    assert!(text.contains("scope map: puller-scope-map"), "{text}");
    assert!(text.contains("status:    disabled"), "{text}");
    assert!(
        text.contains("password1: ") && text.contains("password2: "),
        "{text}"
    );
    assert!(text.contains("shown only now"), "{text}");
    let nopw = json(
        &data,
        &[
            "token",
            "create",
            "later",
            "--scope-map",
            "team-a",
            "--no-passwords",
        ],
    );
    assert_eq!(nopw["credentials"]["passwords"], serde_json::json!([]));

    // Never a password in show or list, text or JSON.
    for args in [&["token", "show", "ci"][..], &["token", "list"][..]] {
        let mut all = args.to_vec();
        let text = ok(&data, &all);
        all.extend(["--output", "json"]);
        let json_text = ok(&data, &all);
        for pw in &first {
            assert!(!text.contains(pw.as_str()) && !json_text.contains(pw.as_str()));
        }
        assert!(!json_text.contains("\"value\""), "{json_text}");
    }
    let shown = json(&data, &["token", "show", "ci"]);
    assert_eq!(shown["credentials"]["passwords"][1]["name"], "password2");
    let list = json(&data, &["token", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "later", "puller"]);
    let table = ok(&data, &["token", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("puller") && l.contains("disabled")),
        "{table}"
    );

    // credential generate: passwords[].value, only the slot asked for.
    let generated = json(
        &data,
        &["token", "credential", "generate", "ci", "--password2"],
    );
    assert_eq!(generated["username"], "ci");
    let second = values(&generated["passwords"]);
    assert_eq!(second.len(), 1);
    assert_eq!(generated["passwords"][0]["name"], "password2");
    assert!(!first.contains(&second[0]));
    let text = ok(
        &data,
        &[
            "token",
            "credential",
            "generate",
            "later",
            "--password1",
            "--password2",
            "--expiration",
            "12h",
        ],
    );
    assert!(
        text.contains("password1: ") && text.contains("shown only now"),
        "{text}"
    );

    let after = json(
        &data,
        &["token", "credential", "delete", "ci", "--password1"],
    );
    assert_eq!(
        after["credentials"]["passwords"].as_array().unwrap().len(),
        1
    );
    let updated = json(
        &data,
        &[
            "token",
            "update",
            "puller",
            "--status",
            "enabled",
            "--scope-map",
            "team-a",
        ],
    );
    assert_eq!(updated["status"], "enabled");
    assert_eq!(updated["scopeMapId"], "team-a");
    let key = json(&data, &["signing-key", "rotate"]);
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()), "{key}");

    assert_eq!(
        ok(&data, &["token", "delete", "later"]).trim(),
        "token later deleted"
    );
    assert_eq!(json(&data, &["token", "delete", "puller"]), Value::Null);
    ok(&data, &["scope-map", "delete", "puller-scope-map"]);
    let list = json(&data, &["token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let mode = std::fs::metadata(data.join("access.redb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Wrong input is refused with a message that says what is wrong and how to fix it.
#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(
        &data,
        &[
            "scope-map",
            "create",
            "m",
            "--repository",
            "a/*",
            "content/read",
        ],
    );
    ok(
        &data,
        &["token", "create", "t", "--scope-map", "m", "--no-passwords"],
    );
    for (args, says) in [
        (
            &["token", "create", "x", "--repository", "a", "pull"][..],
            "\"pull\" is not an action: use one of content/read",
        ),
        (
            &[
                "scope-map",
                "create",
                "y",
                "--repository",
                "Team/*",
                "content/read",
            ],
            "repository pattern \"Team/*\"",
        ),
        (
            &[
                "scope-map",
                "create",
                "y",
                "--repository",
                "a*",
                "content/read",
            ],
            "use a repository name (team-a/app), a prefix (team-a/*)",
        ),
        (
            &["token", "show", "nobody"],
            "no token nobody: token list shows them",
        ),
        (
            &["token", "credential", "generate", "nobody", "--password1"],
            "no token nobody",
        ),
        (
            &[
                "token",
                "create",
                "x",
                "--scope-map",
                "m",
                "--repository",
                "a",
                "content/read",
            ],
            "either --scope-map or --repository, not both",
        ),
        (&["token", "create", "x"], "needs a scope map"),
        (
            &["token", "create", "x", "--scope-map", "nope"],
            "no scope map nope",
        ),
        (
            &["token", "create", "t", "--scope-map", "m"],
            "token t exists",
        ),
        (
            &[
                "token",
                "create",
                "x",
                "--scope-map",
                "m",
                "--expiration",
                "30",
            ],
            "not a duration",
        ),
        (
            &["token", "update", "t", "--status", "off"],
            "use enabled or disabled",
        ),
        (
            &["token", "credential", "generate", "t"],
            "--password1, --password2 or both",
        ),
        (
            &["token", "credential", "delete", "t", "--password1"],
            "token t has no password1",
        ),
        (&["scope-map", "delete", "m"], "used by token(s) t"),
        (
            &[
                "scope-map",
                "update",
                "_repositories_pull",
                "--description",
                "x",
            ],
            "built in",
        ),
        (
            &["scope-map", "create", "z"],
            "needs at least one --repository",
        ),
    ] {
        let stderr = refused(&data, args);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // A read never creates a data directory at a mistyped path.
    let missing = dir.path().join("typo");
    let stderr = refused(&missing, &["token", "list"]);
    assert!(
        stderr.contains("no data directory") && stderr.contains("--data"),
        "{stderr}"
    );
    assert!(!missing.exists());
    // hash-password refuses an empty stdin.
    let out = Command::new(common::bin())
        .args(["token", "hash-password"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no password on stdin"));
}

/// With a registry on the data directory, commands go through its admin socket (0600): the
/// server's live token set changes at once, and nothing of a password reaches its log.
#[test]
fn commands_reach_a_running_registry_through_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = common::start_registry(&data, &["--auth", "tokens"]);
    let socket = data.join("admin.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());

    // The server holds access.redb, so these can only have gone through the socket.
    let created = json(
        &data,
        &[
            "token",
            "create",
            "ci",
            "--repository",
            "team-a/*",
            "content/read",
            "content/write",
        ],
    );
    let passwords = values(&created["credentials"]["passwords"]);
    let list = json(&data, &["token", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ci"], "the first start made admin");
    // The registry takes the new token at once, and drops it at once when it is disabled.
    let v2 = format!("{}/v2/", server.url());
    let status_with = |password: &str| common::curl(&["-u", &format!("ci:{password}"), &v2]).0;
    assert_eq!(status_with(&passwords[0]), 200);
    let generated = json(
        &data,
        &["token", "credential", "generate", "ci", "--password1"],
    );
    let newer = values(&generated["passwords"]);
    assert_eq!(status_with(&newer[0]), 200);
    assert_eq!(
        status_with(&passwords[0]),
        401,
        "the replaced password1 is refused at once"
    );
    assert_eq!(status_with(&passwords[1]), 200);
    json(&data, &["token", "update", "ci", "--status", "disabled"]);
    assert_eq!(json(&data, &["token", "show", "ci"])["status"], "disabled");
    assert_eq!(
        status_with(&passwords[1]),
        401,
        "a disabled token is refused at once"
    );
    let stderr = refused(&data, &["token", "show", "nobody"]);
    assert!(stderr.contains("no token nobody"), "{stderr}");

    let log = server.log_text();
    assert!(
        log.contains("access changed through the admin socket"),
        "{log}"
    );
    assert!(log.contains("name=ci"), "{log}");
    for pw in passwords.iter().chain(&newer) {
        assert!(!log.contains(pw.as_str()), "a password in the server's log");
    }

    // Killed (the socket is left behind): the next command finds nobody behind it and works on
    // the store, which holds what the server was told.
    server.kill();
    assert!(socket.exists(), "a killed server leaves its socket");
    assert_eq!(json(&data, &["token", "show", "ci"])["status"], "disabled");
    // A new server replaces the stale socket and answers on it.
    let server = common::start_registry(&data, &["--auth", "tokens"]);
    json(&data, &["token", "delete", "ci"]);
    assert!(
        server.log_text().contains("command=token-delete"),
        "{}",
        server.log_text()
    );
    assert_eq!(json(&data, &["token", "list"]).as_array().unwrap().len(), 1);
}

/// `serve --access-config FILE` creates or updates what the file names at start, from argon2id
/// hashes, and keeps what it does not name.
#[test]
fn serve_seeds_scope_maps_and_tokens_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let password = "Seeded-password-0123456789";
    let mut child = Command::new(common::bin())
        .args(["token", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        hash.starts_with("$argon2id$") && !hash.contains(password),
        "{hash}"
    );

    // Made by hand before the first start: the file must leave it alone.
    ok(
        &data,
        &[
            "token",
            "create",
            "manual",
            "--scope-map",
            "_repositories_pull",
            "--no-passwords",
        ],
    );
    let config = dir.path().join("access.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[scopeMap]]
name = "team-a"
description = "seeded"
repositories = [{{ repository = "team-a/*", actions = ["content/read", "content/write"] }}]

[[token]]
name = "ci"
scopeMap = "team-a"
password1Hash = "{hash}"
password1Expiry = "2100-01-01T00:00:00Z"

[[token]]
name = "reader"
repositories = [{{ repository = "shared", actions = ["content/read"] }}]
status = "disabled"
"#
        ),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let server = common::start_registry(&data, &["--auth", "tokens", "--access-config", config_s]);
    let ci = json(&data, &["token", "show", "ci"]);
    assert_eq!(ci["scopeMapId"], "team-a");
    assert_eq!(ci["credentials"]["passwords"][0]["name"], "password1");
    assert_eq!(
        ci["credentials"]["passwords"][0]["expiry"],
        "2100-01-01T00:00:00Z"
    );
    assert_eq!(
        json(&data, &["token", "show", "reader"])["status"],
        "disabled"
    );
    assert_eq!(
        json(&data, &["scope-map", "show", "team-a"])["description"],
        "seeded"
    );
    let names: Vec<String> = json(&data, &["token", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ci", "manual", "reader"]);
    let log = server.log_text();
    assert!(log.contains("access config applied"), "{log}");
    assert!(!log.contains(password) && !log.contains(&hash), "{log}");
    // The seeded password works: the registry holds the hash the file gave.
    let v2 = format!("{}/v2/", server.url());
    let (status, _, _) = common::curl(&["-u", &format!("ci:{password}"), &v2]);
    assert_eq!(status, 200);
    assert!(
        !data.join("admin-password").exists(),
        "tokens existed: no admin was made"
    );
    drop(server);

    // The same file again, in JSON: updates, keeps the password's creation time.
    let created = ci["credentials"]["passwords"][0]["creationTime"].clone();
    let config = dir.path().join("access.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "token": [{ "name": "ci", "scopeMap": "team-a", "password1Hash": hash, "status": "disabled" }]
        })
        .to_string(),
    )
    .unwrap();
    let server = common::start_registry(
        &data,
        &[
            "--auth",
            "tokens",
            "--access-config",
            config.to_str().unwrap(),
        ],
    );
    let ci = json(&data, &["token", "show", "ci"]);
    assert_eq!(ci["status"], "disabled");
    assert_eq!(ci["credentials"]["passwords"][0]["creationTime"], created);
    assert_eq!(ci["credentials"]["passwords"][0]["expiry"], Value::Null);
    assert!(!server.log_text().contains(&hash));
}
