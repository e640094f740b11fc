//! The command line as an operator meets it: logs fit for files, an access log that can be
//! switched off, errors that say their cause once and name the setting to fix, refused commands
//! that leave nothing on disk, and host names as listen addresses.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::api::Api;
use common::{bin, free_port, wait_for_port, Proc};
use reqwest::Method;

/// Runs the binary to completion with `args` (and `envs`), stdin closed.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run connected-registry")
}

/// Runs the binary, expecting it to refuse; returns its stderr.
#[track_caller]
fn refused(args: &[&str]) -> String {
    let out = run(args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} should have been refused; stderr: {stderr}"
    );
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Stops `proc` as `docker stop` does (SIGTERM) and waits for it to exit; returns its log,
/// complete: everything it logged is written before it exits.
fn stop(proc: &mut Proc) -> String {
    proc.sigterm();
    proc.exit_within(Duration::from_secs(60));
    proc.log_text()
}

// ---- logs ----

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = common::start_registry(&dir.path().join("data"), &[]);
    Api::new(&registry.url()).get("/v2/").expect(200);
    let log = stop(&mut registry);
    assert!(log.contains("registry serving"), "{log}");
    assert!(log.contains("GET /v2/ 200"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// Runs, on a terminal (`script` gives it one), a command that logs a warning and exits:
/// `serve` whose built-in proxy cannot take its port.
fn log_on_a_terminal(dir: &Path, no_color: Option<&str>) -> String {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let command = format!(
        "{} serve --listen 127.0.0.1:{} --proxy-listen {} --data {}",
        bin().display(),
        free_port(),
        taken.local_addr().unwrap(),
        path(&dir.join("data")),
    );
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &command, "/dev/null"]);
    script.env_remove("NO_COLOR");
    if let Some(value) = no_color {
        script.env("NO_COLOR", value);
    }
    let out = script
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux, in every Debian)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("DEVELOPMENT certificate"), "{text}");
    text
}

#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // On a terminal logs are coloured: this is what the test below can see.
    let coloured = log_on_a_terminal(dir.path(), None);
    assert!(coloured.contains('\x1b'), "{coloured:?}");
    let coloured = log_on_a_terminal(dir.path(), Some(""));
    assert!(coloured.contains('\x1b'), "empty NO_COLOR: {coloured:?}");
    let plain = log_on_a_terminal(dir.path(), Some("1"));
    assert!(!plain.contains('\x1b'), "NO_COLOR=1: {plain:?}");
}

// ---- the registry's access log ----

#[test]
fn the_registry_logs_each_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = common::start_registry(&dir.path().join("data"), &[]);
    let api = Api::new(&registry.url());
    api.get("/v2/").expect(200);
    api.send(
        api.req(Method::GET, "/v2/app/manifests/v1?token=SECRET-IN-QUERY")
            .header("authorization", "Bearer SECRET-IN-HEADER"),
    )
    .expect(404);
    api.head("/v2/app/manifests/v1").expect(404);
    let log = stop(&mut registry);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" access:")).collect();
    assert_eq!(lines.len(), 3, "one line per request: {log}");
    assert!(lines[0].contains("GET /v2/ 200 out=2 "), "{}", lines[0]);
    assert!(
        lines[1].contains("GET /v2/app/manifests/v1 404 out="),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("HEAD /v2/app/manifests/v1 404 out=0 "));
    for line in &lines {
        assert!(line.contains("ms client=127.0.0.1:"), "{line}");
    }
    assert!(!log.contains("SECRET"), "a secret in the log: {log}");
}

#[test]
fn the_access_log_can_be_switched_off() {
    for (args, envs) in [
        (&["--access-log", "false"][..], &[][..]),
        (&[][..], &[("CONNECTED_REGISTRY_ACCESS_LOG", "off")][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut serve = vec![
            "serve",
            "--listen",
            &listen,
            "--data",
            path(&data),
            "--auth",
            "none",
        ];
        serve.extend_from_slice(args);
        let mut registry = Proc::start(
            &bin(),
            &serve,
            envs,
            listen.parse().unwrap(),
            dir.path().join("log"),
        );
        Api::new(&registry.url()).get("/v2/").expect(200);
        let log = stop(&mut registry);
        assert!(log.contains("registry stopped"), "{log}");
        assert!(!log.contains("GET /v2/"), "{args:?} {envs:?}: {log}");
    }
}

// ---- errors ----

#[test]
fn a_port_in_use_is_refused_naming_the_cause_once_and_leaving_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let in_use = "Address already in use";

    let data = dir.path().join("data");
    let stderr = refused(&["serve", "--listen", &taken, "--data", path(&data)]);
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
    assert_eq!(stderr.matches(in_use).count(), 1, "{stderr}");
    assert!(!data.exists(), "a refused serve created {}", data.display());

    // The built-in proxy's port: its error type says its cause and also holds it as source.
    let free = format!("127.0.0.1:{}", free_port());
    let args = ["serve", "--listen", &free, "--proxy-listen", &taken];
    let stderr = refused(&[&args[..], &["--data", path(&data)]].concat());
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
    assert_eq!(stderr.matches(in_use).count(), 1, "{stderr}");
}

// ---- the data directory ----

#[test]
fn a_data_directory_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    for args in [
        &["serve", "--listen", &listen, "--data", path(&file)][..],
        &["gc", "--data", path(&file)][..],
    ] {
        let command = args[0];
        let stderr = refused(args);
        assert!(
            stderr.contains(&format!("{} is not a directory", file.display())),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("--data"), "{command}: no hint: {stderr}");
        assert!(!stderr.contains("File exists"), "{command}: {stderr}");
    }
}

#[test]
fn gc_never_creates_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mistyped");
    let stderr = refused(&["gc", "--data", path(&missing)]);
    assert!(
        stderr.contains(&format!("no registry data at {}", missing.display())),
        "{stderr}"
    );
    assert!(!missing.exists(), "gc created {}", missing.display());

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let stderr = refused(&["gc", "--data", path(&empty)]);
    assert!(stderr.contains("no registry data at"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "gc wrote into {empty:?}"
    );
}

#[test]
fn refused_settings_leave_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 10] = [
        (&["serve", "--login-attempts", "0"], "--login-attempts 0"),
        (&["serve", "--quota", "5%"], "share of the disk"),
        (&["serve", "--quota", "0"], "is zero"),
        (
            &["serve", "--trusted-proxy", "10.0.0.0/33"],
            "the prefix must be 0 to 32",
        ),
        (&["serve", "--anonymous-pull", "Team/*"], "--anonymous-pull"),
        (&["serve", "--sync-window", "30m"], "syncWindow"),
        (
            &["serve", "--sync-schedule", "61 * * * *"],
            "minute 61 is out of range 0-59",
        ),
        (&["serve", "--trust", "/nonexistent/ca.pem"], "trust"),
        (&["sync", "--once", "--sync-window", "30m"], "syncWindow"),
        (&["sync", "--once", "--time-limit", "soon"], "--time-limit"),
    ];
    let parent = ["--parent", "http://127.0.0.1:9"];
    // Without a parent sync is off, and what was set for it is still checked.
    let with_and_without_parent = [&parent[..], &[]];
    for (args, says) in cases {
        for parent in with_and_without_parent {
            if args[0] == "sync" && parent.is_empty() {
                continue; // sync without a parent is refused for that alone
            }
            let mut full = [args, parent, &["--data", path(&data)]].concat();
            if args[0] == "serve" {
                full.extend_from_slice(&["--listen", &listen]);
            }
            let stderr = refused(&full);
            assert!(stderr.contains(says), "{full:?}: {stderr}");
            assert!(!data.exists(), "{full:?} created {}", data.display());
        }
    }
}

// ---- listen addresses ----

#[test]
fn host_names_are_accepted_as_listen_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let listen = format!("localhost:{port}");
    let proxy_listen = format!("localhost:{tls_port}");
    let data = dir.path().join("data");
    let mut registry = Proc::start(
        &bin(),
        &[
            "serve",
            "--listen",
            &listen,
            "--proxy-listen",
            &proxy_listen,
            "--data",
            path(&data),
            "--auth",
            "none",
        ],
        &[],
        SocketAddr::from(([127, 0, 0, 1], port)),
        dir.path().join("serve.log"),
    );
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        Duration::from_secs(20),
        &mut registry.child,
    );
    Api::new(&registry.url()).get("/v2/").expect(200);

    // The proxy subcommand's listen address too.
    let proxy_port = free_port();
    let route = format!("/v2=http://127.0.0.1:{port}");
    let proxy_listen = format!("localhost:{proxy_port}");
    let _proxy = Proc::start(
        &bin(),
        &[
            "proxy",
            "--listen",
            &proxy_listen,
            "--route",
            &route,
            "--dev-certs",
            path(&data.join("certs")),
        ],
        &[],
        SocketAddr::from(([127, 0, 0, 1], proxy_port)),
        dir.path().join("proxy.log"),
    );
}
