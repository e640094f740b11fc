//! End-to-end tests of `connected-registry proxy` with real clients (skopeo, curl, openssl)
//! over real TLS, in front of a real registry (CNCF distribution until ours is on main).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::api::sha256;
use common::distribution::start_distribution;
use common::oci::{first_image_layers, seeded_bytes, Layout};
use common::proxy::{config_line, metrics, proxy_fixture, start_proxy};
use common::tls::{Leaf, TestCa};
use common::{bin, free_port, run_ok, slow_curl, start_registry, wait_until, Proc};

// ---------- helpers ----------

/// Like [`proxy_fixture`], for a parent proxy (`parent.test`) and a child (`child.test`).
fn nested_fixture() -> (tempfile::TempDir, TestCa, Leaf, Leaf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let parent = ca.server("parent", "parent.test");
    let child = ca.server("child", "child.test");
    (tmp, ca, parent, child)
}

/// A copy of `leaf` as `live.*` in `t`, for a test to replace the way a rotation does.
fn live_copy(t: &Path, leaf: &Leaf) -> Leaf {
    let live = Leaf {
        chain: t.join("live.chain.pem"),
        cert: t.join("live.crt"),
        key: t.join("live.key"),
    };
    std::fs::copy(&leaf.chain, &live.chain).unwrap();
    std::fs::copy(&leaf.cert, &live.cert).unwrap();
    std::fs::copy(&leaf.key, &live.key).unwrap();
    live
}

/// [`start_proxy`] with one route (`PREFIX=UPSTREAM`), then `extra` flags.
fn start_routed(t: &Path, name: &str, leaf: &Leaf, route: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--route", route];
    args.extend_from_slice(extra);
    start_proxy(t, name, leaf, &args, &[])
}

/// A child proxy whose default route is the parent proxy at `parent`, over TLS with SNI
/// `parent.test`, verified against `trust`; `extra` flags follow.
fn start_child(t: &Path, leaf: &Leaf, parent: SocketAddr, trust: &Path, extra: &[&str]) -> Proc {
    let default = format!("https://{parent}");
    let mut args = vec![
        "--default",
        &default,
        "--sni",
        "parent.test",
        "--trust",
        trust.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start_proxy(t, "child", leaf, &args, &[])
}

/// Whether `cond` holds within 10 s (checked every 50 ms): for what the proxy does on its own
/// (reloads, closing connections).
fn soon(cond: impl FnMut() -> bool) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(50), cond)
}

/// `curl` with only `root` trusted; returns (HTTP status, body, response headers).
fn curl(root: &Path, args: &[&str]) -> (u16, String, String) {
    common::curl(&[&["--cacert", root.to_str().unwrap()], args].concat())
}

fn skopeo(args: &[&str]) -> String {
    run_ok("skopeo", &[&["--insecure-policy"], args].concat())
}

/// Uploads a blob the way the distribution spec's two-step upload does it (POST, then PUT
/// with the body) to `base` (`http://registry` or `https://proxy`); returns the digest, the
/// POST's `Location` and the PUT's response headers.
fn upload_blob(
    root: &Path,
    base: &str,
    repo: &str,
    data_file: &Path,
    put_args: &[&str],
) -> (String, String, String) {
    let data = std::fs::read(data_file).unwrap();
    let digest = sha256(&data);
    let (status, body, headers) = curl(
        root,
        &["-X", "POST", &format!("{base}/v2/{repo}/blobs/uploads/")],
    );
    assert_eq!(status, 202, "start upload at {base}: {body}");
    let location = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("no Location: {headers}"))
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_owned();
    let put_url = if location.starts_with("http") {
        location.clone()
    } else {
        format!("{base}{location}")
    };
    let sep = if put_url.contains('?') { '&' } else { '?' };
    let put_url = format!("{put_url}{sep}digest={digest}");
    let file_arg = format!("@{}", data_file.display());
    let mut args = vec![
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &file_arg,
    ];
    args.extend_from_slice(put_args);
    args.push(&put_url);
    let (status, body, put_headers) = curl(root, &args);
    assert_eq!(
        status, 201,
        "finish upload at {base}: {body}\n{put_headers}"
    );
    (digest, location, put_headers)
}

/// Waits (bounded) for `child` to exit; returns whether it did.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(step);
        waited += step;
    }
    false
}

/// Runs `connected-registry proxy` in `dir` on a fresh loopback port with a `/v2` route and
/// `extra` flags; it must refuse to start: returns its stderr once it has exited with a
/// failure (a proxy that starts serving instead is killed, and the test fails rather than hangs).
fn refused_proxy_start(dir: &Path, extra: &[&str]) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        &[
            "proxy",
            "--listen",
            &listen,
            "--route",
            "/v2=http://127.0.0.1:1",
        ],
        extra,
    ]
    .concat();
    let log = dir.join("refused.log");
    let mut child = Command::new(bin())
        .current_dir(dir)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let exited = wait_exit(&mut child, Duration::from_secs(20));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let err = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(exited, "{args:?} started instead of refusing:\n{err}");
    assert!(!child.wait().unwrap().success(), "{args:?}: {err}");
    err
}

/// `openssl s_client` as a raw TLS pipe to `addr` (HTTP/1.1 by ALPN); stdin is ours to write,
/// stdout goes to `stdout`.
fn tls_pipe(addr: SocketAddr, root: &Path, stdout: Stdio) -> Child {
    Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            &addr.to_string(),
            "-CAfile",
            root.to_str().unwrap(),
            "-alpn",
            "http/1.1",
        ])
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client")
}

/// `openssl s_client -connect ADDR ARGS...` with nothing to send: one handshake, then exit.
fn s_client(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client")
}

/// The first PEM certificate in `text`.
fn first_cert_pem(text: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in: {text}"));
    let end = text.find(END).unwrap() + END.len();
    text[start..end].to_owned()
}

/// The leaf certificate (PEM) a TLS server at `addr` presents now.
fn served_leaf(addr: SocketAddr, root: &Path) -> String {
    let out = s_client(addr, &["-CAfile", root.to_str().unwrap()]);
    first_cert_pem(&String::from_utf8_lossy(&out.stdout))
}

fn pem_of(path: &Path) -> String {
    first_cert_pem(&std::fs::read_to_string(path).unwrap())
}

// ---------- tests ----------

/// skopeo pushes a multi-layer image through the proxy to `upstream` and pulls it back,
/// trusting only the root CA; the layer digests survive the round trip.
fn push_and_pull_through_proxy(t: &Path, upstream: &str, extra: &[&str]) {
    let ca = TestCa::new(&t.join("ca"));
    let leaf = ca.server("proxy", "proxy.test");
    let proxy = start_routed(t, "proxy", &leaf, &format!("/v2={upstream}"), extra);
    let certs = ca.skopeo_cert_dir();
    let (img, image) = Layout::with_image(&t.join("img"), "v1", &[3 << 20, 1 << 20, 300 << 10]);

    let src = img.reference("v1");
    let dst = format!("docker://{}/edge/app:v1", proxy.addr);
    skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs.to_str().unwrap(),
        "--dest-tls-verify=true",
        &src,
        &dst,
    ]);
    let pulled = t.join("pulled");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        "--src-tls-verify=true",
        &dst,
        &format!("oci:{}:v1", pulled.display()),
    ]);
    assert_eq!(first_image_layers(&pulled), image.layer_digests());
    let log = proxy.log_text();
    assert!(
        log.contains("PUT /v2/edge/app/manifests/v1 201"),
        "access log:\n{log}"
    );
    // Bytes really went through the proxy.
    assert!(log.contains(&format!("upstream={upstream}")), "{log}");
}

/// Through the proxy to our registry (`connected-registry serve`).
#[test]
fn skopeo_push_and_pull_through_tls_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("data"), &[]);
    push_and_pull_through_proxy(tmp.path(), &reg.url(), &[]);
}

/// The same against CNCF distribution (the proxy is not tied to our registry), with two
/// worker threads.
#[test]
fn skopeo_push_and_pull_through_tls_proxy_to_distribution() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_distribution(&tmp.path().join("reg"), "");
    push_and_pull_through_proxy(tmp.path(), &reg.url(), &["--workers", "2"]);
}

/// `openssl s_client` sees TLS 1.3 and the full chain (leaf + intermediate) verifying to the
/// root; TLS 1.0 and 1.1 handshakes are refused.
#[test]
fn tls_versions_and_full_chain() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let proxy = start_proxy(
        t,
        "proxy",
        &leaf,
        &["--route", "/v2=http://127.0.0.1:9"],
        &[],
    );
    let root = ca.root.to_str().unwrap();
    let out = s_client(proxy.addr, &["-showcerts", "-CAfile", root]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf and intermediate: {text}"
    );
    assert!(text.contains("test intermediate CA"), "{text}");
    // TLS 1.2 is still offered (older clients).
    let out = s_client(proxy.addr, &["-tls1_2", "-CAfile", root]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("TLSv1.2"));
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(proxy.addr, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || text.contains("Cipher is (NONE)"),
            "{old} was accepted: {text}"
        );
    }
}

/// child proxy -> parent proxy -> registry: the child's default route is the parent over TLS
/// verified against the root; skopeo pulls through both hops.
#[test]
fn nested_pull_through_two_tls_hops() {
    let (tmp, ca, parent_leaf, child_leaf) = nested_fixture();
    let t = tmp.path();
    let reg = start_registry(&t.join("data"), &[]);
    let (img, image) = Layout::with_image(&t.join("img"), "v1", &[2 << 20, 64 << 10]);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &img.reference("v1"),
        &format!("docker://{}/layer/app:v1", reg.addr),
    ]);

    let parent = start_routed(
        t,
        "parent",
        &parent_leaf,
        &format!("/v2={}", reg.url()),
        &[],
    );
    let child = start_child(t, &child_leaf, parent.addr, &ca.root, &[]);
    let certs = ca.skopeo_cert_dir();
    let pulled = t.join("pulled");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        "--src-tls-verify=true",
        &format!("docker://{}/layer/app:v1", child.addr),
        &format!("oci:{}:v1", pulled.display()),
    ]);
    assert_eq!(first_image_layers(&pulled), image.layer_digests());
    assert!(
        child
            .log_text()
            .contains(&format!("upstream=https://{}", parent.addr)),
        "{}",
        child.log_text()
    );
    assert!(
        parent
            .log_text()
            .contains("GET /v2/layer/app/manifests/v1 200"),
        "{}",
        parent.log_text()
    );
}

/// The server certificate is replaced on disk (rename into place) while a download runs:
/// the download completes intact and new connections get the new certificate.
#[test]
fn server_certificate_rotation_during_download() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ca = TestCa::new(&t.join("ca"));
    let old = ca.server("old", "proxy.test");
    let new = ca.server("new", "proxy.test");
    let live = live_copy(t, &old);
    let reg = start_registry(&t.join("data"), &[]);
    let blob = t.join("blob");
    let data = seeded_bytes(1, 8 << 20);
    std::fs::write(&blob, &data).unwrap();
    let (digest, _, _) = upload_blob(&ca.root, &reg.url(), "big/blob", &blob, &[]);
    let proxy = start_routed(
        t,
        "proxy",
        &live,
        &format!("/v2={}", reg.url()),
        &["--reload-interval", "100ms"],
    );
    assert_eq!(served_leaf(proxy.addr, &ca.root), pem_of(&old.cert));

    // A slow download (rate-limited client) that is still running during the rotation.
    let out = t.join("download");
    let url = format!("https://{}/v2/big/blob/blobs/{digest}", proxy.addr);
    let mut download = slow_curl(&ca.root, &url, &out, "512K").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Key first, then chain, each renamed into place (what a renewal tool does).
    std::fs::copy(&new.key, t.join("tmp.key")).unwrap();
    std::fs::rename(t.join("tmp.key"), &live.key).unwrap();
    std::fs::copy(&new.chain, t.join("tmp.pem")).unwrap();
    std::fs::rename(t.join("tmp.pem"), &live.chain).unwrap();
    let rotated = soon(|| served_leaf(proxy.addr, &ca.root) == pem_of(&new.cert));
    assert!(
        rotated,
        "new connections never got the new certificate:\n{}",
        proxy.log_text()
    );
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download ended before the rotation; make it slower"
    );
    let status = download.wait().unwrap();
    assert!(
        status.success(),
        "download failed across the rotation: {status}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// A CA certificate given as the server certificate is refused at start: clients would refuse
/// every handshake. The error names the file, says why, and how to get a server certificate.
#[test]
fn ca_certificate_as_server_certificate_is_refused_at_start() {
    let (tmp, ca, _) = proxy_fixture();
    let err = refused_proxy_start(
        tmp.path(),
        &[
            "--cert",
            ca.root.to_str().unwrap(),
            "--key",
            ca.dir.join("root.key").to_str().unwrap(),
        ],
    );
    assert!(
        err.contains(ca.root.to_str().unwrap())
            && err.contains("a CA certificate cannot be the server certificate")
            && err.contains("certs issue server"),
        "{err}"
    );
}

/// A rotation that puts a CA certificate (with its matching key) in place of the server
/// certificate is not taken: the proxy keeps serving the old leaf, logs why and counts a
/// failed reload.
#[test]
fn reload_to_a_ca_certificate_keeps_the_old_leaf() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let live = live_copy(t, &leaf);
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = start_routed(
        t,
        "proxy",
        &live,
        "/v2=http://127.0.0.1:1",
        &["--reload-interval", "100ms", "--admin", &admin],
    );
    assert_eq!(served_leaf(proxy.addr, &ca.root), pem_of(&leaf.cert));
    // Key first, then chain, each renamed into place: the root CA and its own key.
    std::fs::copy(ca.dir.join("root.key"), t.join("tmp.key")).unwrap();
    std::fs::rename(t.join("tmp.key"), &live.key).unwrap();
    std::fs::copy(&ca.root, t.join("tmp.pem")).unwrap();
    std::fs::rename(t.join("tmp.pem"), &live.chain).unwrap();
    let refused = soon(|| {
        proxy
            .log_text()
            .contains("a CA certificate cannot be the server certificate")
    });
    assert!(refused, "the log must say why:\n{}", proxy.log_text());
    assert!(
        proxy.log_text().contains("live.chain.pem"),
        "{}",
        proxy.log_text()
    );
    let failures: u64 = metrics(admin.parse().unwrap())
        .lines()
        .find_map(|l| l.strip_prefix("proxy_reload_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "the failed reload is counted");
    assert_eq!(
        served_leaf(proxy.addr, &ca.root),
        pem_of(&leaf.cert),
        "the old leaf stays in service"
    );
}

/// Asserts that an error body tells the client nothing of the layout behind the proxy: no
/// upstream address or port, no host name, no file path.
fn assert_reveals_nothing(body: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !body.contains(secret),
            "the error body shows {secret:?} to the client: {body}"
        );
    }
}

/// Upstream refusing connections: 502 with a JSON body naming the route and the reason, not
/// the upstream's address, and saying it is the upstream's fault and worth a retry (the words
/// every part uses); the access log has the address and the same fault.
#[test]
fn upstream_down_gives_502_naming_the_route_not_the_address() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let port = free_port().to_string();
    let dead = format!("http://127.0.0.1:{port}");
    let proxy = start_routed(t, "proxy", &leaf, &format!("/v2={dead}"), &[]);
    let (status, body, _) = curl(&ca.root, &[&format!("https://{}/v2/", proxy.addr)]);
    assert_eq!(status, 502, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["errors"][0]["code"], "UPSTREAM_UNREACHABLE");
    assert_eq!(json["errors"][0]["detail"]["route"], "route /v2");
    assert_eq!(json["errors"][0]["detail"]["fault"], "upstream");
    assert_eq!(json["errors"][0]["detail"]["retryable"], true);
    let message = json["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("route /v2") && message.contains("connection refused"),
        "{message}"
    );
    assert_reveals_nothing(&body, &["127.0.0.1", &port]);
    let log = proxy.log_text();
    assert!(
        log.contains("502") && log.contains("fault=upstream retryable=true") && log.contains(&dead),
        "the log keeps the upstream's address:\n{log}"
    );
}

/// An upstream that accepts and never answers: 504 after the (short) upstream timeout.
#[test]
fn upstream_silent_gives_504() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Accept and hold connections without answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/v2=http://{silent_addr}"),
        &["--upstream-timeout", "1s"],
    );
    let (status, body, _) = curl(&ca.root, &[&format!("https://{}/v2/", proxy.addr)]);
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("UPSTREAM_TIMEOUT") && body.contains("route /v2"),
        "{body}"
    );
    assert_reveals_nothing(&body, &["127.0.0.1", &silent_addr.port().to_string()]);
    assert!(
        proxy.log_text().contains(&silent_addr.to_string()),
        "the log keeps the upstream's address:\n{}",
        proxy.log_text()
    );
    // An upload the upstream never reads: 504 as well, not a hang.
    let file = t.join("upload");
    std::fs::write(&file, seeded_bytes(2, 32 << 20)).unwrap();
    let (status, body, _) = curl(
        &ca.root,
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("https://{}/v2/x/blobs/uploads/1", proxy.addr),
        ],
    );
    assert_eq!(status, 504, "{body}");
}

/// A client that sends a partial request head and then nothing is cut off; so is one that
/// opens TCP and never starts TLS.
#[test]
fn slowloris_client_is_cut_off() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let proxy = start_proxy(
        t,
        "proxy",
        &leaf,
        &[
            "--route",
            "/v2=http://127.0.0.1:9",
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "600s",
        ],
        &[],
    );
    let mut pipe = tls_pipe(proxy.addr, &ca.root, Stdio::null());
    let mut stdin = pipe.stdin.take().unwrap();
    stdin
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: ")
        .unwrap();
    stdin.flush().unwrap();
    // The proxy's default would be 30s; a guard below that shows our setting applied.
    assert!(
        wait_exit(&mut pipe, Duration::from_secs(20)),
        "slowloris connection still open"
    );
    drop(stdin);

    let mut raw = std::net::TcpStream::connect(proxy.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let n = raw
        .read(&mut buf)
        .expect("the proxy closes a silent TCP client");
    assert_eq!(n, 0);
}

/// A request head larger than `--max-header-bytes` gets 431, over HTTP/1.1 and HTTP/2.
#[test]
fn oversized_headers_get_431() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let reg = start_distribution(&t.join("reg"), "");
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/v2={}", reg.url()),
        &["--max-header-bytes", "16384"],
    );
    let url = format!("https://{}/v2/", proxy.addr);
    let big = format!("X-Big: {}", "a".repeat(20000));
    let (status, _, _) = curl(&ca.root, &["--http1.1", "-H", &big, &url]);
    assert_eq!(status, 431);
    let (status, _, _) = curl(&ca.root, &["--http2", "-H", &big, &url]);
    assert_eq!(status, 431, "over HTTP/2");
    // A normal request on the same proxy still works.
    let (status, _, _) = curl(&ca.root, &["--http1.1", "-H", "X-Small: a", &url]);
    assert_eq!(status, 200);
}

/// A client that disconnects mid-upload: the proxy closes its upstream connection too (the
/// upstream sees EOF) and the client connection is gone from the metrics.
#[test]
fn client_disconnect_mid_upload_closes_upstream() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<&'static str>();
    std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        let mut announced = false;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send("closed");
                    return;
                }
                Ok(n) => {
                    total += n;
                    if total > 100_000 && !announced {
                        announced = true;
                        let _ = tx.send("receiving");
                    }
                }
            }
        }
    });
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/v2=http://{up_addr}"),
        &["--admin", &admin],
    );
    let mut pipe = tls_pipe(proxy.addr, &ca.root, Stdio::null());
    let mut stdin = pipe.stdin.take().unwrap();
    stdin
        .write_all(b"PATCH /v2/x/blobs/uploads/1 HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    let chunk = vec![7u8; 64 << 10];
    for _ in 0..8 {
        stdin.write_all(&chunk).unwrap();
    }
    stdin.flush().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "receiving"
    );
    // The client vanishes mid-body.
    pipe.kill().unwrap();
    pipe.wait().unwrap();
    drop(stdin);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30))
            .expect("upstream connection still open after the client left"),
        "closed"
    );
    let admin: SocketAddr = admin.parse().unwrap();
    let closed = soon(|| metrics(admin).contains("proxy_connections_active 0"));
    assert!(closed, "client connection leaked:\n{}", metrics(admin));
}

/// What the upstream sees: Host preserved (from HTTP/2's `:authority` too), X-Forwarded-* set,
/// hop-by-hop headers gone, a client-supplied certificate header dropped.
#[test]
fn forwarded_headers_and_hop_by_hop_removal() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    // Answers every request with its own request head as the body, with hop-by-hop headers.
    let up_addr = echo_upstream_with(String::new(), "X-Hop: 1\r\nKeep-Alive: timeout=5\r\n");
    // The default route takes what no path matches: the asterisk form of `OPTIONS *`.
    let default = format!("http://{up_addr}");
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/=http://{up_addr}"),
        &["--default", &default],
    );
    let url = format!("https://proxy.test:{}/echo?x=1", proxy.addr.port());
    let resolve = format!("proxy.test:{}:127.0.0.1", proxy.addr.port());
    let (status, body, headers) = curl(
        &ca.root,
        &[
            "--http1.1",
            "--resolve",
            &resolve,
            "-H",
            "Connection: keep-alive, X-Hop-Secret",
            "-H",
            "X-Hop-Secret: 1",
            "-H",
            "X-Client-Cert: forged",
            "-H",
            "X-Forwarded-For: 10.0.0.9",
            &url,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(body.starts_with("GET /echo?x=1 HTTP/1.1"), "{body}");
    assert!(
        lower.contains(&format!("host: proxy.test:{}", proxy.addr.port())),
        "{body}"
    );
    assert!(lower.contains("x-forwarded-proto: https"), "{body}");
    assert!(
        lower.contains(&format!(
            "x-forwarded-host: proxy.test:{}",
            proxy.addr.port()
        )),
        "{body}"
    );
    assert!(
        lower.contains("x-forwarded-for: 10.0.0.9, 127.0.0.1"),
        "{body}"
    );
    assert!(!lower.contains("x-hop-secret"), "{body}");
    assert!(!lower.contains("x-client-cert"), "{body}");
    assert!(
        !headers.to_ascii_lowercase().contains("keep-alive: timeout"),
        "{headers}"
    );
    // Over HTTP/2 the name comes as `:authority`, with no Host header: the upstream still gets
    // it as Host, once.
    let h2 = start_routed(
        t,
        "proxy-h2",
        &leaf,
        &format!("/=http://{up_addr}"),
        &["--alpn", "h2,http/1.1"],
    );
    let h2_resolve = format!("proxy.test:{}:127.0.0.1", h2.addr.port());
    let h2_url = format!("https://proxy.test:{}/echo", h2.addr.port());
    let (status, body, headers) = curl(&ca.root, &["--http2", "--resolve", &h2_resolve, &h2_url]);
    assert!(headers.starts_with("HTTP/2 200"), "{headers}");
    assert_eq!(status, 200, "{body}");
    let hosts: Vec<&str> = body
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(
        hosts,
        [format!("host: proxy.test:{}", h2.addr.port())],
        "{body}"
    );
    // An asterisk-form target (`OPTIONS *`) goes upstream as it came.
    let (status, body, _) = curl(
        &ca.root,
        &[
            "--http1.1",
            "--resolve",
            &resolve,
            "-X",
            "OPTIONS",
            "--request-target",
            "*",
            &url,
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("OPTIONS * HTTP/1.1"), "{body}");
    // A first hop, and a chain that is not text (replaced, not extended): the client alone.
    for extra in [&[][..], &["-H", "X-Forwarded-For: café"][..]] {
        let args = [&["--http1.1", "--resolve", &resolve, &url][..], extra].concat();
        let (status, body, _) = curl(&ca.root, &args);
        assert_eq!(status, 200, "{body}");
        let lower = body.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{extra:?}: {body}"
        );
    }
}

/// With `--client-ca`, a client certificate is verified and forwarded (URL-escaped PEM).
#[test]
fn verified_client_certificate_is_forwarded() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let client = ca.client("device", "device-1");
    let up_addr = echo_upstream_with(String::new(), "");
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/=http://{up_addr}"),
        &["--client-ca", ca.root.to_str().unwrap()],
    );
    let url = format!("https://{}/who", proxy.addr);
    let (status, body, _) = curl(
        &ca.root,
        &[
            "--cert",
            client.chain.to_str().unwrap(),
            "--key",
            client.key.to_str().unwrap(),
            &url,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let line = body
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-client-cert:"))
        .unwrap_or_else(|| panic!("no client cert header: {body}"));
    let leaf_b64: String = pem_of(&client.cert)
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(40)
        .collect();
    assert!(line.contains("-----BEGIN%20CERTIFICATE-----"), "{line}");
    assert!(
        line.contains(&leaf_b64.replace('+', "%2B").replace('/', "%2F")),
        "{line}"
    );
    // Without a certificate the client is still served, with no header.
    let (status, body, _) = curl(&ca.root, &[&url]);
    assert_eq!(status, 200);
    assert!(
        !body.to_ascii_lowercase().contains("x-client-cert"),
        "{body}"
    );
}

/// `Expect: 100-continue` uploads work, and the registry's Location points back at the proxy
/// (Host and X-Forwarded-Proto preserved).
#[test]
fn expect_continue_upload_and_location_through_proxy() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let reg = start_distribution(&t.join("reg"), "");
    let proxy = start_routed(t, "proxy", &leaf, &format!("/v2={}", reg.url()), &[]);
    let data = seeded_bytes(3, 2 << 20);
    let file = t.join("blob");
    std::fs::write(&file, &data).unwrap();
    let base = format!("https://{}", proxy.addr);
    let (digest, location, put_headers) = upload_blob(
        &ca.root,
        &base,
        "up/load",
        &file,
        &["--http1.1", "-H", "Expect: 100-continue"],
    );
    assert!(
        put_headers.contains("HTTP/1.1 100"),
        "no interim 100 Continue: {put_headers}"
    );
    // The registry built its absolute upload URL from Host and X-Forwarded-Proto.
    assert!(
        location.starts_with(&format!("{base}/v2/up/load/blobs/uploads/")),
        "{location}"
    );
    let (status, _, _) = curl(
        &ca.root,
        &[
            "-I",
            &format!("https://{}/v2/up/load/blobs/{digest}", proxy.addr),
        ],
    );
    assert_eq!(status, 200);
}

/// The IoT Edge environment variables build the route table; `--print-config` shows each
/// entry's origin, and a flag overrides the environment.
#[test]
fn print_config_shows_env_routes_and_origins() {
    let out = Command::new(bin())
        .args([
            "proxy",
            "--print-config",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--trust",
            "root.pem",
            "--route",
            "/acr=http://10.0.0.5:8080",
        ])
        .env("NGINX_DEFAULT_PORT", "8443")
        .env("CONNECTED_ACR_ROUTE_ADDRESS", "connectedRegistry:8080")
        .env(
            "BLOB_UPLOAD_ROUTE_ADDRESS",
            "AzureBlobStorageonIoTEdge:11002",
        )
        .env("IOTEDGE_PARENTHOSTNAME", "parent.example")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| config_line(&text, key);
    assert!(
        line("listen ").contains("0.0.0.0:8443")
            && line("listen ").contains("env NGINX_DEFAULT_PORT")
    );
    let v2 = line("route /v2 ");
    assert!(
        v2.contains("http://connectedRegistry:8080")
            && v2.contains("env CONNECTED_ACR_ROUTE_ADDRESS"),
        "{v2}"
    );
    let acr = line("route /acr ");
    assert!(
        acr.contains("http://10.0.0.5:8080") && acr.contains("flag --route"),
        "{acr}"
    );
    assert!(line("route / [x-ms-version]").contains("AzureBlobStorageonIoTEdge:11002"));
    assert!(line("default ").contains("https://parent.example:443"));
}

/// A bad config file stops the start with the file, line and key named.
#[test]
fn bad_config_file_names_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("proxy.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8443\"\n\n[limits]\nidle_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "proxy",
            "--config",
            file.to_str().unwrap(),
            "--cert",
            "c",
            "--key",
            "k",
            "--route",
            "/v2=http://x:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:4", file.display())) && err.contains("idle_timeout"),
        "{err}"
    );
}

/// Routes from the config file are reloaded when the file changes; a broken edit keeps the
/// previous table.
#[test]
fn config_file_reload_switches_routes() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let reg = start_distribution(&t.join("reg"), "");
    let file = t.join("proxy.toml");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let write = |upstream: &str| {
        std::fs::write(
            &file,
            format!("[[routes]]\nprefix = \"/v2\"\nupstream = \"{upstream}\"\n"),
        )
        .unwrap();
    };
    write(&dead);
    let proxy = start_proxy(
        t,
        "proxy",
        &leaf,
        &[
            "--config",
            file.to_str().unwrap(),
            "--reload-interval",
            "100ms",
        ],
        &[],
    );
    let url = format!("https://{}/v2/", proxy.addr);
    assert_eq!(curl(&ca.root, &[&url]).0, 502);
    write(&reg.url());
    let ok = soon(|| curl(&ca.root, &[&url]).0 == 200);
    assert!(ok, "new route never applied:\n{}", proxy.log_text());
    std::fs::write(&file, "[[routes]]\nprefix = \"v2\"\n").unwrap();
    // Wait (bounded) until the proxy has seen the broken edit, then check it kept the table.
    let seen = soon(|| proxy.log_text().contains("config not reloaded"));
    assert!(
        seen,
        "the broken edit was never reported:\n{}",
        proxy.log_text()
    );
    assert_eq!(
        curl(&ca.root, &[&url]).0,
        200,
        "a broken edit replaced the working table"
    );
}

/// The admin port serves Prometheus text with per-upstream request counts and failures by
/// fault.
#[test]
fn metrics_on_admin_port() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let reg = start_distribution(&t.join("reg"), "");
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/v2={}", reg.url()),
        &["--admin", &admin],
    );
    assert_eq!(
        curl(&ca.root, &[&format!("https://{}/v2/", proxy.addr)]).0,
        200
    );
    // No route and no default route: the client's fault, and no retry helps.
    assert_eq!(
        curl(&ca.root, &[&format!("https://{}/nowhere", proxy.addr)]).0,
        404
    );
    let text = metrics(admin.parse().unwrap());
    assert!(
        text.contains(&format!(
            "proxy_requests_total{{upstream=\"{}\",status=\"200\"}} 1",
            reg.url()
        )),
        "{text}"
    );
    assert!(
        text.contains("proxy_failures_total{fault=\"client\",retryable=\"false\"} 1"),
        "{text}"
    );
}

/// New connections go to the worker serving the fewest, so both cores work even when one
/// client opens all the connections (workers that shared the listener took them unevenly).
#[test]
fn connections_are_spread_over_workers() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = start_proxy(
        t,
        "proxy",
        &leaf,
        &[
            "--route",
            "/v2=http://127.0.0.1:9",
            "--workers",
            "2",
            "--admin",
            &admin,
        ],
        &[],
    );
    let admin: SocketAddr = admin.parse().unwrap();
    let pipes: Vec<Child> = (0..6)
        .map(|_| tls_pipe(proxy.addr, &ca.root, Stdio::null()))
        .collect();
    let spread =
        "proxy_worker_connections{worker=\"0\"} 3\nproxy_worker_connections{worker=\"1\"} 3";
    assert!(
        soon(|| metrics(admin).contains(spread)),
        "six connections, three per worker: {}",
        metrics(admin)
    );
    for mut pipe in pipes {
        let _ = pipe.kill();
        let _ = pipe.wait();
    }
    assert!(
        soon(|| metrics(admin).contains("proxy_connections_active 0")),
        "closed connections are counted out: {}",
        metrics(admin)
    );
}

/// The trust bundle for the parent is replaced on disk (the nginx module missed this): a
/// child that could not verify its parent does so after the rename, without a restart.
#[test]
fn trust_bundle_rotation_applies_to_new_upstream_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let old_ca = TestCa::new(&t.join("old-ca"));
    let new_ca = TestCa::new(&t.join("new-ca"));
    let parent_leaf = new_ca.server("parent", "parent.test");
    let child_leaf = old_ca.server("child", "child.test");
    let reg = start_distribution(&t.join("reg"), "");
    let parent = start_routed(
        t,
        "parent",
        &parent_leaf,
        &format!("/v2={}", reg.url()),
        &[],
    );
    // The child still trusts only the old root: it cannot verify the parent.
    let trust = t.join("trust.pem");
    std::fs::copy(&old_ca.root, &trust).unwrap();
    let child = start_child(
        t,
        &child_leaf,
        parent.addr,
        &trust,
        &["--reload-interval", "100ms"],
    );
    let url = format!("https://{}/v2/", child.addr);
    let (status, body, _) = curl(&old_ca.root, &[&url]);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("TLS handshake") && body.contains("not signed by a CA"),
        "the client learns which route failed and why: {body}\n{}",
        child.log_text()
    );
    // ... but not where the parent is or which file the proxy trusts.
    assert_reveals_nothing(
        &body,
        &[
            "127.0.0.1",
            &parent.addr.port().to_string(),
            "parent.test",
            "trust.pem",
            t.to_str().unwrap(),
        ],
    );
    let log = child.log_text();
    assert!(
        log.contains("trust.pem") && log.contains(&parent.addr.to_string()),
        "the log keeps the upstream's address and trust bundle:\n{log}"
    );
    // The operator installs the new bundle (old and new roots), renamed into place.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&old_ca.root).unwrap(),
        std::fs::read_to_string(&new_ca.root).unwrap()
    );
    std::fs::write(t.join("trust.tmp"), both).unwrap();
    std::fs::rename(t.join("trust.tmp"), &trust).unwrap();
    let ok = soon(|| curl(&old_ca.root, &[&url]).0 == 200);
    assert!(
        ok,
        "the new trust bundle never applied:\n{}",
        child.log_text()
    );
    assert!(
        child.log_text().contains("trust bundle"),
        "{}",
        child.log_text()
    );
}

/// `Upgrade` (WebSocket-style) passes through: the upstream's 101 reaches the client and
/// then bytes flow both ways over the tunnel.
#[test]
fn upgrade_is_tunnelled() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    // Answers an upgrade request with 101, then echoes lines upper-cased.
    std::thread::spawn(move || {
        let (s, _) = upstream.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let mut s = s;
        if !(head.contains("upgrade: websocket") && head.contains("connection: upgrade")) {
            let _ = write!(s, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if s.write_all(line.to_ascii_uppercase().as_bytes()).is_err() {
                return;
            }
        }
    });
    let proxy = start_routed(t, "proxy", &leaf, &format!("/=http://{up_addr}"), &[]);
    let mut pipe = tls_pipe(proxy.addr, &ca.root, Stdio::piped());
    let mut stdin = pipe.stdin.take().unwrap();
    let stdout = pipe.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    stdin
        .write_all(b"GET /ws HTTP/1.1\r\nHost: proxy.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    stdin.flush().unwrap();
    let status = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a response");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    // Skip the rest of the head.
    while !rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .trim()
        .is_empty()
    {}
    stdin.write_all(b"hello through the tunnel\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "HELLO THROUGH THE TUNNEL"
    );
    let _ = pipe.kill();
    let _ = pipe.wait();
}

/// An upstream that answers every request with `name` and the request head it received.
fn echo_upstream(name: &'static str) -> SocketAddr {
    echo_upstream_with(format!("{name}\n"), "")
}

/// An upstream that answers every request with `body_prefix` then the request head it
/// received as the body, with `extra_headers` (whole `\r\n`-ended lines) in its response head.
fn echo_upstream_with(body_prefix: String, extra_headers: &'static str) -> SocketAddr {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in upstream.incoming().flatten() {
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let body = format!("{body_prefix}{head}");
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Longest prefix wins on segment boundaries, a header route wins over paths, everything
/// else goes to the default route.
#[test]
fn routing_by_prefix_header_and_default() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let registry = echo_upstream("registry");
    let acr = echo_upstream("acr-token");
    let blob = echo_upstream("blob");
    let parent = echo_upstream("parent");
    let routes = [
        format!("/v2=http://{registry}"),
        format!("/acr=http://{registry}"),
        format!("/acr/v1/token=http://{acr}"),
    ];
    let header = format!("x-ms-version=http://{blob}");
    let default = format!("http://{parent}");
    let proxy = start_proxy(
        t,
        "proxy",
        &leaf,
        &[
            "--route",
            &routes[0],
            "--route",
            &routes[1],
            "--route",
            &routes[2],
            "--header-route",
            &header,
            "--default",
            &default,
        ],
        &[],
    );
    let who = |path: &str, extra: &[&str]| {
        let url = format!("https://{}{path}", proxy.addr);
        let mut args: Vec<&str> = extra.to_vec();
        args.push(&url);
        let (status, body, _) = curl(&ca.root, &args);
        assert_eq!(status, 200, "{path}: {body}");
        body.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(who("/v2/", &[]), "registry");
    assert_eq!(who("/v2/library/app/manifests/v1", &[]), "registry");
    assert_eq!(who("/acr/v1/_catalog", &[]), "registry");
    assert_eq!(who("/acr/v1/token/x", &[]), "acr-token");
    assert_eq!(who("/v2x", &[]), "parent");
    assert_eq!(who("/devices/edge", &[]), "parent");
    assert_eq!(
        who("/container/blob", &["-H", "x-ms-version: 2017-04-17"]),
        "blob"
    );
    assert_eq!(who("/v2/", &["-H", "x-ms-version: 2017-04-17"]), "blob");
}

/// ALPN: HTTP/1.1 is preferred by default (less CPU per blob byte); `--alpn h2,http/1.1`
/// makes HTTP/2 the choice for clients offering both, and h2 is offered either way.
#[test]
fn alpn_preference_is_a_setting() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let upstream = echo_upstream("registry");
    let route = format!("/=http://{upstream}");
    let h2 = start_routed(t, "h2", &leaf, &route, &["--alpn", "h2,http/1.1"]);
    let h1 = start_routed(t, "h1", &leaf, &route, &[]);
    // A client that offers only h2 still gets it by default.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &h1.addr.to_string(), "-alpn", "h2"])
        .args(["-CAfile", ca.root.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ALPN protocol: h2"),
        "h2 stays offered by default: {text}"
    );
    let (_, _, headers) = curl(&ca.root, &["--http2", &format!("https://{}/", h2.addr)]);
    assert!(headers.starts_with("HTTP/2 200"), "{headers}");
    let (_, _, headers) = curl(&ca.root, &["--http2", &format!("https://{}/", h1.addr)]);
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
}

/// Through two hops (the second over HTTP/2), the upstream still sees the Host the client
/// used, so the URLs it builds point back at the child proxy.
#[test]
fn nested_hops_preserve_the_client_host() {
    let (tmp, ca, parent_leaf, child_leaf) = nested_fixture();
    let t = tmp.path();
    let upstream = echo_upstream("registry");
    let parent = start_routed(
        t,
        "parent",
        &parent_leaf,
        &format!("/v2=http://{upstream}"),
        &[],
    );
    let child = start_child(t, &child_leaf, parent.addr, &ca.root, &[]);
    let resolve = format!("child.test:{}:127.0.0.1", child.addr.port());
    let url = format!("https://child.test:{}/v2/", child.addr.port());
    let (status, body, _) = curl(&ca.root, &["--resolve", &resolve, &url]);
    assert_eq!(status, 200, "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("\nhost: child.test:{}", child.addr.port())),
        "{body}"
    );
    assert!(
        lower.contains(&format!(
            "x-forwarded-host: child.test:{}",
            child.addr.port()
        )),
        "{body}"
    );
    assert!(
        lower.contains("x-forwarded-for: 127.0.0.1, 127.0.0.1"),
        "{body}"
    );
}

/// `--print-config` shows the table even when the proxy could not start yet, and says why.
/// Without a certificate and without `--dev-certs`, the proxy refuses to start, says how to
/// fix it, and writes nothing (a bare `proxy` used to make `./data/certs` in the current
/// directory and serve a development certificate).
#[test]
fn proxy_without_certificate_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let err = refused_proxy_start(tmp.path(), &[]);
    assert!(
        err.contains("--cert") && err.contains("--key") && err.contains("--dev-certs"),
        "the error says how to fix it: {err}"
    );
    let written: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(written.is_empty(), "a refused proxy wrote {written:?}");
}

/// `--print-config` says where the certificate comes from: unset (and the proxy would not
/// start) without a certificate, `flag --dev-certs` with a development chain; it writes nothing.
#[test]
fn print_config_without_certificate_labels_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev-certs");
    let print = |extra: &[&str]| {
        let out = Command::new(bin())
            .current_dir(tmp.path())
            .args([&["proxy", "--print-config"], extra].concat())
            .env("CONNECTED_ACR_ROUTE_ADDRESS", "connectedRegistry:8080")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = print(&[]);
    assert_eq!(code, Some(2), "{text}{err}");
    assert!(
        text.contains("route /v2") && text.contains("connectedRegistry:8080"),
        "{text}"
    );
    let cert_line = text.lines().find(|l| l.starts_with("cert ")).unwrap();
    assert!(cert_line.contains("unset"), "{cert_line}");
    assert!(err.contains("--dev-certs"), "{err}");

    let (code, text, err) = print(&["--dev-certs", dev.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("DEVELOPMENT chain"), "{text}");
    let cert_line = text.lines().find(|l| l.starts_with("cert ")).unwrap();
    assert!(
        cert_line.contains(dev.to_str().unwrap()) && cert_line.contains("# flag --dev-certs"),
        "{cert_line}"
    );
    assert!(!dev.exists(), "--print-config must not create files");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// With `--dev-certs DIR` and no certificate the proxy generates a development chain in DIR,
/// says which root CA to trust, serves a chain a client trusting only that root accepts, and
/// reports its expiry.
#[test]
fn proxy_with_dev_certs_serves_a_dev_chain_clients_can_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let registry = start_registry(&t.join("data"), &[]);
    let dev = t.join("dev-certs");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let route = format!("/v2={}", registry.url());
    let proxy = Proc::start(
        &bin(),
        &[
            "proxy",
            "--listen",
            &listen,
            "--route",
            &route,
            "--admin",
            &admin.to_string(),
            "--dev-certs",
            dev.to_str().unwrap(),
        ],
        &[],
        listen.parse().unwrap(),
        t.join("proxy.log"),
    );
    let root = certs::dev::DevChain::in_dir(&dev).root_ca;
    let log = proxy.log_text();
    assert!(
        log.contains("DEVELOPMENT") && log.contains(root.to_str().unwrap()),
        "the proxy must say loudly that it serves a development certificate and which root to trust:\n{log}"
    );
    let (status, _, _) = curl(&root, &[&format!("https://127.0.0.1:{port}/v2/")]);
    assert_eq!(status, 200);
    let (status, _, _) = curl(&root, &[&format!("https://localhost:{port}/v2/")]);
    assert_eq!(status, 200, "the dev certificate covers localhost too");
    let text = metrics(admin);
    let expiry: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("connected_registry_server_cert_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry gauge in metrics:\n{text}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = (expiry - now) as f64 / 86_400.0;
    assert!(
        days > 80.0 && days <= 90.0,
        "a fresh dev certificate has ~90 days: {days}"
    );
}

/// `--max-connections`: past the limit, clients wait in the listen backlog and are served as
/// soon as a connection closes.
#[test]
fn max_connections_holds_extra_clients_in_the_backlog() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let upstream = echo_upstream("registry");
    let route = format!("/=http://{upstream}");
    let admin = format!("127.0.0.1:{}", free_port());
    let proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &route,
        &[
            "--admin",
            &admin,
            "--max-connections",
            "1",
            "--workers",
            "1",
        ],
    );
    let admin: SocketAddr = admin.parse().unwrap();
    let gauge = |name: &str| {
        metrics(admin)
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // One client holds the only slot.
    let mut holder = tls_pipe(proxy.addr, &ca.root, Stdio::null());
    let held = soon(|| gauge("proxy_connections_active ") == 1);
    assert!(held, "the first client was never accepted");
    // (The start-up port probe counts too: compare with the total from here on.)
    let accepted_before = gauge("proxy_connections_total ");
    // A second client is not accepted while the first stays.
    let mut waiting = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            ca.root.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{}/x", proxy.addr),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gauge("proxy_connections_total "),
        accepted_before,
        "a second connection was accepted past --max-connections 1"
    );
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the second client was turned away"
    );
    // The first leaves; the second is served.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// SIGTERM while a client downloads a blob slowly through the proxy: new connections are
/// refused at once, the download in flight still completes with every byte, and the proxy
/// then exits 0 by itself (`proxy --shutdown-grace`).
#[test]
fn a_download_in_flight_finishes_after_sigterm_and_new_connections_are_refused() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let reg = start_registry(&t.join("data"), &[]);
    let blob = t.join("blob");
    let data = seeded_bytes(2, 32 << 20);
    std::fs::write(&blob, &data).unwrap();
    let (digest, _, _) = upload_blob(&ca.root, &reg.url(), "big/blob", &blob, &[]);
    let mut proxy = start_routed(
        t,
        "proxy",
        &leaf,
        &format!("/v2={}", reg.url()),
        &["--shutdown-grace", "5m"],
    );

    // A slow client: about 8 s for the whole blob.
    let out = t.join("download");
    let url = format!("https://{}/v2/big/blob/blobs/{digest}", proxy.addr);
    let mut download = slow_curl(&ca.root, &url, &out, "4M").spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            std::fs::metadata(&out).is_ok_and(|m| m.len() >= 1 << 20)
        }),
        "the download did not start"
    );

    proxy.sigterm();
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            std::net::TcpStream::connect(proxy.addr).is_err()
        }),
        "still accepting connections after SIGTERM"
    );
    assert!(
        wait_exit(&mut download, Duration::from_secs(150)),
        "curl still downloading after 150 s"
    );
    let status = download.wait().unwrap();
    assert!(
        status.success(),
        "the download was cut ({status}); proxy log:\n{}",
        proxy.log_text()
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let exited = proxy.exit_within(Duration::from_secs(60));
    assert!(exited.success(), "exit status {exited}");
}
