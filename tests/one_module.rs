//! The one-module deployment: `serve --proxy-listen` with no `--listen` serves the registry over
//! TLS only, through the API proxy in the same process, which calls the registry's router
//! directly. Real clients (skopeo, curl) over verified TLS; what the proxy does holds in process
//! (request ids and the access log, the client's address for the login limit), the process
//! opens no connection to itself, and on SIGTERM a TLS download in flight finishes within
//! `--shutdown-grace` (and is cut at its end).

#![forbid(unsafe_code)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::access::{basic, create_token, rule};
use common::oci::{first_image_layers, Layout};
use common::tls::{Leaf, TestCa};
use common::{bin, free_port, poll, run_ok, serve_one_module, Proc};

/// One module on a fresh port serving `leaf`, with `extra` flags; returns it and its port.
fn one_module(t: &Path, leaf: &Leaf, extra: &[&str], envs: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    let cert = leaf.chain.to_str().unwrap();
    let key = leaf.key.to_str().unwrap();
    let args = [&["--proxy-cert", cert, "--proxy-key", key][..], extra].concat();
    let data = t.join("data");
    let proc = serve_one_module(&data, port, &args, envs, t.join("one-module.log"));
    (proc, port)
}

/// `curl` over TLS trusting only `root`: (status, response headers, body).
fn curl_tls(root: &Path, url: &str, headers: &[&str]) -> (u16, String, String) {
    let mut args = vec!["--cacert", root.to_str().unwrap()];
    for h in headers {
        args.extend_from_slice(&["-H", h]);
    }
    args.push(url);
    let (status, body, head) = common::curl(&args);
    (status, head, body)
}

/// The local ports of every TCP socket `pid` holds (listening, accepted or connected), read
/// from /proc: a connection the process opened to itself shows up as a socket whose local port
/// is none of its listeners'.
fn tcp_sockets(pid: u32) -> Vec<(u16, u16, &'static str)> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the server's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let port = |addr: &str| {
                u16::from_str_radix(addr.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0)
            };
            let state = if f[3] == "0A" { "listen" } else { "connected" };
            out.push((port(f[1]), port(f[2]), state));
        }
    }
    out
}

/// skopeo pushes and pulls an image over verified TLS through one module, inspects it; the
/// request id a client sends comes back and is in the access log (one line, with the client's
/// address); and the process never opened a connection to itself: its only TCP sockets are
/// the TLS listener and connections accepted on it.
#[test]
fn skopeo_over_tls_through_one_module_with_no_loopback_hop() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ca = TestCa::new(&t.join("ca"));
    let leaf = ca.server("edge", "edge.test");
    let (server, port) = one_module(t, &leaf, &[], &[]);
    let certs = ca.skopeo_cert_dir();
    let certs = certs.to_str().unwrap();
    let (img, image) = Layout::with_image(&t.join("img"), "v1", &[2 << 20, 1 << 20, 200 << 10]);

    let dst = format!("docker://127.0.0.1:{port}/edge/app:v1");
    let skopeo = |args: &[&str]| run_ok("skopeo", &[&["--insecure-policy"], args].concat());
    skopeo(&["copy", "--dest-cert-dir", certs, &img.reference("v1"), &dst]);
    let inspected = skopeo(&["inspect", "--cert-dir", certs, &dst]);
    assert!(
        inspected.contains("\"Architecture\": \"amd64\""),
        "{inspected}"
    );
    let pulled = t.join("pulled");
    let pulled_ref = format!("oci:{}:v1", pulled.display());
    skopeo(&["copy", "--src-cert-dir", certs, &dst, &pulled_ref]);
    assert_eq!(first_image_layers(&pulled), image.layer_digests());

    let url = format!("https://127.0.0.1:{port}/v2/edge/app/manifests/v1");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let (status, head, body) = curl_tls(&ca.root, &url, &["X-Request-Id: one-module-7", accept]);
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-request-id: one-module-7"),
        "{head}"
    );

    let pid = server.child.id();
    let sockets = tcp_sockets(pid);
    assert!(
        sockets.contains(&(port, 0, "listen")),
        "the TLS listener: {sockets:?}"
    );
    let listeners: Vec<u16> = sockets
        .iter()
        .filter(|s| s.2 == "listen")
        .map(|s| s.0)
        .collect();
    assert_eq!(listeners, [port], "no plain listener without --listen");
    for (local, remote, _) in &sockets {
        assert_eq!(
            *local, port,
            "a socket not on the TLS port (local {local}, remote {remote}): the process \
             connected somewhere, to itself? {sockets:?}"
        );
    }

    let log = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let log = server.log_text();
        log.contains("rid=one-module-7").then_some(log)
    })
    .unwrap_or_else(|| panic!("no access line for the request id:\n{}", server.log_text()));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rid=one-module-7"))
        .collect();
    assert_eq!(lines.len(), 1, "one access line per request:\n{log}");
    assert!(
        lines[0].contains("GET /v2/edge/app/manifests/v1 200")
            && lines[0].contains(" client=127.0.0.1:")
            && lines[0].contains(" upstream=in-process"),
        "{}",
        lines[0]
    );
    assert!(log.contains("PUT /v2/edge/app/manifests/v1 201"), "{log}");
}

/// With access control, failed logins through one module count against the client's address
/// (the connection's, handed to the registry in process), not against whatever
/// `X-Forwarded-For` the client claims: three failures claiming three addresses lock the
/// client out, and the lockout is logged for 127.0.0.1.
#[test]
fn failed_logins_count_against_the_real_client_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let good = create_token(&data, "good", vec![rule("*", &["content/read"])], None);
    let ca = TestCa::new(&t.join("ca"));
    let leaf = ca.server("edge", "edge.test");
    let (server, port) = one_module(
        t,
        &leaf,
        &[
            "--auth",
            "tokens",
            "--login-attempts",
            "3",
            "--login-lockout",
            "10m",
        ],
        &[("RUST_LOG", "debug")],
    );
    let url = format!("https://127.0.0.1:{port}/v2/");
    let login = |claimed: &str, authorization: &str| {
        let (status, head, _) = curl_tls(
            &ca.root,
            &url,
            &[
                &format!("Authorization: {authorization}"),
                &format!("X-Forwarded-For: {claimed}"),
            ],
        );
        (status, head)
    };
    for i in 0..3 {
        let (status, head) = login(
            &format!("10.0.0.{}", i + 2),
            &basic(&format!("nobody{i}"), "x"),
        );
        assert_eq!(status, 401, "{head}");
        // The challenge names the proxy's address and https (X-Forwarded-Host/Proto).
        assert!(
            head.contains(&format!("realm=\"https://127.0.0.1:{port}/oauth2/token\"")),
            "{head}"
        );
    }
    let (status, head) = login("10.0.0.9", &good.basic());
    assert_eq!(
        status, 429,
        "the client is locked out, whatever it claims: {head}"
    );

    let log = server.log_text();
    let lockouts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too many failed logins"))
        .collect();
    assert!(
        lockouts.iter().any(|l| l.contains("127.0.0.1")),
        "the lockout names the client's address: {lockouts:#?}\n{log}"
    );
    assert!(
        !lockouts.iter().any(|l| l.contains("10.0.0.")),
        "not an address the client claimed: {lockouts:#?}"
    );
}

/// The `proxy` command has no registry in its process: a route to `in-process` is refused at
/// start with a message saying where it works.
#[test]
fn proxy_command_refuses_an_in_process_route() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin())
        .args(["proxy", "--listen", &listen, "--route", "/v2=in-process"])
        .arg("--dev-certs")
        .arg(tmp.path().join("certs"))
        .output()
        .expect("run the proxy");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in-process") && stderr.contains("serve --proxy-listen"),
        "{stderr}"
    );
}

/// `serve --print-config` with `--proxy-listen` also prints the proxy's table: the registry's
/// prefixes go in process, labelled as one module's, and no plain listener.
#[test]
fn print_config_shows_the_in_process_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = Command::new(bin())
        .args(["serve", "--print-config", "--auth", "none", "--data"])
        .arg(&data)
        .args(["--proxy-listen", "127.0.0.1:8443"])
        .args(["--proxy-default", "http://127.0.0.1:9"])
        .output()
        .expect("run serve --print-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for prefix in ["/v2", "/acr", "/oauth2"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("route {prefix} "))
                    && l.contains("in-process")
                    && l.contains("one module")),
            "{prefix}:\n{stdout}"
        );
    }
    assert!(stdout.contains("http://127.0.0.1:9"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("listen") && l.contains("TLS only")),
        "{stdout}"
    );
    assert!(!data.exists(), "--print-config wrote {}", data.display());
}

/// A one module started with `extra` flags holding a 32 MiB blob, and a slow client (curl at
/// 4 MB/s, about 8 s for the whole blob) that has received its first MiB over TLS.
struct SlowDownload {
    server: Proc,
    port: u16,
    curl: std::process::Child,
    curl_log: std::path::PathBuf,
    downloaded: std::path::PathBuf,
    blob: Vec<u8>,
}

impl SlowDownload {
    fn start(t: &Path, extra: &[&str]) -> SlowDownload {
        let ca = TestCa::new(&t.join("ca"));
        let leaf = ca.server("edge", "edge.test");
        let (server, port) = one_module(t, &leaf, extra, &[]);
        let root = ca.root.to_str().unwrap();
        let blob = common::oci::random_bytes(32 << 20);
        let digest = common::api::sha256(&blob);
        let blob_file = t.join("blob");
        std::fs::write(&blob_file, &blob).unwrap();
        let base = format!("https://127.0.0.1:{port}");

        let (status, body, head) = common::curl(&[
            "--cacert",
            root,
            "-X",
            "POST",
            &format!("{base}/v2/big/blobs/uploads/"),
        ]);
        assert_eq!(status, 202, "{body}");
        let location = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("location")
                    .then(|| value.trim().to_string())
            })
            .expect("a Location for the upload");
        let separator = if location.contains('?') { '&' } else { '?' };
        let (status, body, _) = common::curl(&[
            "--cacert",
            root,
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", blob_file.display()),
            &format!("{base}{location}{separator}digest={digest}"),
        ]);
        assert_eq!(status, 201, "{body}");

        let downloaded = t.join("downloaded");
        let curl_log = t.join("curl.log");
        let url = format!("{base}/v2/big/blobs/{digest}");
        let curl = common::spawn_logged(
            &mut common::slow_curl(Path::new(root), &url, &downloaded, "4M"),
            &curl_log,
        )
        .expect("run curl (./test.sh installs it)");
        assert!(
            common::wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
                std::fs::metadata(&downloaded).is_ok_and(|m| m.len() >= 1 << 20)
            }),
            "the download did not start"
        );
        SlowDownload {
            server,
            port,
            curl,
            curl_log,
            downloaded,
            blob,
        }
    }

    /// curl's exit status once it has ended (bounded), and its log.
    fn curl_outcome(&mut self) -> (std::process::ExitStatus, String) {
        let status = poll(Duration::from_secs(150), Duration::from_millis(50), || {
            self.curl.try_wait().unwrap()
        })
        .expect("curl still downloading after 150 s");
        let log = std::fs::read_to_string(&self.curl_log).unwrap_or_default();
        (status, log)
    }
}

/// SIGTERM while a client downloads a blob slowly over TLS: the TLS listener refuses new
/// connections at once, the download in flight still completes with every byte, and the
/// process then exits 0 by itself (`--shutdown-grace` covers the TLS listener too).
#[test]
fn a_tls_download_in_flight_finishes_after_sigterm_and_new_connections_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut slow = SlowDownload::start(tmp.path(), &["--shutdown-grace", "5m"]);

    slow.server.sigterm();
    let port = slow.port;
    assert!(
        common::wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        }),
        "still accepting TLS connections after SIGTERM"
    );

    let (curl_status, curl_log) = slow.curl_outcome();
    assert!(
        curl_status.success(),
        "the download was cut ({curl_status}): {curl_log}\nserver log:\n{}",
        slow.server.log_text()
    );
    let got = std::fs::read(&slow.downloaded).unwrap();
    assert_eq!(got.len(), slow.blob.len());
    assert_eq!(common::api::sha256(&got), common::api::sha256(&slow.blob));
    let exited = slow.server.exit_within(Duration::from_secs(60));
    assert!(exited.success(), "exit status {exited}");
}

/// A TLS download still running at the end of the grace period is cut, the process exits 0
/// and says so in its log.
#[test]
fn a_tls_download_still_running_at_the_deadline_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let mut slow = SlowDownload::start(tmp.path(), &["--shutdown-grace", "1s"]);

    slow.server.sigterm();
    let exited = slow.server.exit_within(Duration::from_secs(60));
    assert!(exited.success(), "exit status {exited}");
    let (curl_status, _) = slow.curl_outcome();
    assert!(
        !curl_status.success(),
        "a 32 MiB download at 4 MB/s finished within 1 s"
    );
    let log = slow.server.log_text();
    assert!(log.contains("cut (--shutdown-grace)"), "{log}");
}
