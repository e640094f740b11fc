//! Operations: the admin listener of `serve` (`/metrics`, `/healthz`, `/readyz`) and of the
//! proxy (`/readyz`), readiness failing when it should, metric names and the exposition format
//! (checked by `promtool` when installed), `X-Request-Id` followed through the built-in proxy
//! into the registry's access log, and `--log-format json`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::api::{Api, Desc};
use common::{bin, free_port, poll, start_registry, Proc};

/// GET `url` with curl: (status, body, headers). `root` is the CA to trust for https.
fn curl(url: &str, root: Option<&Path>, headers: &[&str]) -> (u16, String, String) {
    let mut args = Vec::new();
    if let Some(root) = root {
        args.extend(["--cacert", root.to_str().unwrap()]);
    }
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    common::curl(&args)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Checks the Prometheus text format line by line: comments are `# HELP name text` or
/// `# TYPE name kind`, samples `name{label="value",...} number`, every sample of a family
/// declared by a TYPE line before it. Returns the sample lines.
fn parse_exposition(text: &str) -> Vec<String> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name, what) = (words.next(), words.next(), words.next());
            assert!(name.is_some_and(name_ok), "bad comment line: {line}");
            match kind {
                Some("HELP") => {}
                Some("TYPE") => {
                    assert!(
                        matches!(what, Some("counter" | "gauge" | "histogram" | "summary")),
                        "{line}"
                    );
                    typed.insert(name.unwrap().to_owned());
                }
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok(),
            "{line}"
        );
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("{line}"));
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(name_ok(k) && !v.contains('\n'), "{line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line}");
        samples.push(line.to_owned());
    }
    samples
}

/// `promtool check metrics`, when installed (./test.sh installs the `prometheus` package).
/// No finding is allowed (the certificate's expiry is a timestamp in seconds, a base unit).
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the exposition was checked by the parser only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(findings.is_empty(), "promtool: {report}\n{text}");
}

fn admin_get(admin: &str, path: &str) -> (u16, String) {
    let (status, body, _) = curl(&format!("http://{admin}{path}"), None, &[]);
    (status, body)
}

/// `serve --admin`: health, readiness and metrics after a push and a few pulls; the metrics
/// have the expected names and labels and valid exposition; `--log-format json` lines are
/// JSON objects, the access log among them.
#[test]
fn registry_admin_listener_reports_requests_and_store() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let reg = start_registry(
        &tmp.path().join("data"),
        &["--admin", &admin, "--log-format", "json"],
    );
    let api = Api::new(&reg.url());
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"layer bytes for the metrics test";
    let cfg = Desc::of("application/vnd.oci.image.config.v1+json", config);
    let lay = Desc::of("application/vnd.oci.image.layer.v1.tar", layer);
    api.push_blob("ops/app", config);
    api.push_blob("ops/app", layer);
    let manifest = common::api::image_manifest(
        "application/vnd.oci.image.manifest.v1+json",
        &cfg,
        std::slice::from_ref(&lay),
    );
    api.put_manifest(
        "ops/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
    .expect(201);
    for _ in 0..3 {
        api.get_manifest("ops/app", "v1").expect(200);
    }
    api.get(&format!("/v2/ops/app/blobs/{}", lay.digest))
        .expect(200);
    api.get("/v2/ops/app/manifests/missing").expect(404);

    assert_eq!(admin_get(&admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(admin_get(&admin, "/readyz"), (200, "ready\n".into()));
    assert_eq!(admin_get(&admin, "/elsewhere").0, 404);
    let (status, text) = admin_get(&admin, "/metrics");
    assert_eq!(status, 200);
    let samples = parse_exposition(&text);
    for expected in [
        "connected_registry_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 3",
        "connected_registry_http_requests_total{route=\"manifest\",method=\"GET\",status=\"404\"} 1",
        "connected_registry_http_requests_total{route=\"manifest\",method=\"PUT\",status=\"201\"} 1",
        "connected_registry_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 1",
        "connected_registry_http_request_duration_seconds_count{route=\"manifest\"} 5",
        "connected_registry_blobs 3",
        "connected_registry_uploads_open 0",
        "connected_registry_gc_runs_total 0",
    ] {
        assert!(samples.iter().any(|s| s == expected), "{expected}\n{text}");
    }
    for name in [
        "connected_registry_http_request_duration_seconds_bucket{route=\"manifest\",le=\"+Inf\"} 5",
        "connected_registry_http_request_bytes_total{route=\"upload\"} ",
        "connected_registry_http_response_bytes_total{route=\"blob\"} ",
        "connected_registry_blob_bytes ",
        "connected_registry_disk_free_bytes ",
        "connected_registry_gc_freed_bytes_total ",
    ] {
        assert!(
            samples.iter().any(|s| s.starts_with(name)),
            "{name}\n{text}"
        );
    }
    let upload_in = samples
        .iter()
        .find_map(|s| {
            s.strip_prefix("connected_registry_http_request_bytes_total{route=\"upload\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(upload_in >= (config.len() + layer.len()) as u64, "{text}");
    assert!(!text.contains("sync_"), "no sync without a parent: {text}");
    promtool_check(&text);

    let log = reg.log_text();
    let mut access = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        if v["target"] == "access" {
            access += 1;
        }
    }
    assert!(access >= 8, "{log}");
}

/// `/readyz` fails, and says why, when the disk has less room than `--ready-min-free`.
#[test]
fn readyz_fails_below_the_free_disk_reserve() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let _reg = start_registry(
        &tmp.path().join("data"),
        // More than any disk holds (a share stops below 100%).
        &["--admin", &admin, "--ready-min-free", "1000000TiB"],
    );
    let (status, body) = admin_get(&admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--ready-min-free"), "{body}");
    assert_eq!(admin_get(&admin, "/healthz").0, 200);
}

/// With a parent that is down, `/readyz` turns 503 once sync has failed for longer than
/// `--ready-max-sync-failure`, and the failures are counted by fault.
#[test]
fn readyz_fails_while_sync_keeps_failing() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let dead_parent = format!("http://127.0.0.1:{}", free_port());
    let reg = start_registry(
        &tmp.path().join("data"),
        &[
            "--admin",
            &admin,
            "--parent",
            &dead_parent,
            "--repo",
            "a",
            "--sync-schedule",
            "0 * * * *",
            "--sync-window",
            "PT1H",
            "--ready-max-sync-failure",
            "1s",
        ],
    );
    let not_ready = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let (status, body) = admin_get(&admin, "/readyz");
        (status == 503).then_some(body)
    });
    let body = not_ready.unwrap_or_else(|| panic!("never unready; log:\n{}", reg.log_text()));
    assert!(body.contains("sync with the parent has failed"), "{body}");
    assert!(body.contains("--ready-max-sync-failure"), "{body}");
    let (_, text) = admin_get(&admin, "/metrics");
    parse_exposition(&text);
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("connected_registry_sync_passes_total{outcome=\"failed\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failed >= 1, "{text}");
    assert!(
        text.contains("connected_registry_sync_errors_total{fault=\"upstream\"}"),
        "{text}"
    );
    promtool_check(&text);
}

/// One pull through `serve --proxy-listen`: the proxy keeps the client's `X-Request-Id`, or
/// makes one, sends it to the registry in process and back, and the access log carries it: one
/// line per request (the registry is called in process, with no access log of its own).
#[test]
fn a_request_id_follows_a_pull_through_the_built_in_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tls = format!("127.0.0.1:{}", free_port());
    let reg = start_registry(&data, &["--proxy-listen", &tls]);
    let root = data.join("certs/root-ca.cert.pem");
    assert!(
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            std::net::TcpStream::connect(&tls).ok()
        })
        .is_some(),
        "{}",
        reg.log_text()
    );
    let api = Api::new(&reg.url());
    let digest = api.push_blob("ops/pull", b"one layer");
    let url = format!("https://{tls}/v2/ops/pull/blobs/{digest}");
    let (status, body, head) = curl(&url, Some(&root), &["X-Request-Id: pull-0042"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&head, "x-request-id"), Some("pull-0042"), "{head}");
    // Without an id, or with one unfit to log, the proxy makes a fresh one.
    let (_, _, head) = curl(&url, Some(&root), &["X-Request-Id: has\"quote"]);
    let fresh = header(&head, "x-request-id")
        .expect("a fresh id")
        .to_owned();
    assert!(
        fresh.len() == 32 && fresh.chars().all(|c| c.is_ascii_hexdigit()),
        "{fresh}"
    );

    let log = reg.log_text();
    for id in ["pull-0042", fresh.as_str()] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("rid={id}")))
            .collect();
        // The proxy's line, with the client's address and the upstream.
        assert_eq!(lines.len(), 1, "{id}:\n{log}");
        assert!(
            lines[0].contains(" client=127.0.0.1:") && lines[0].contains(" upstream=in-process"),
            "{log}"
        );
    }
    assert!(!log.contains("quote"), "{log}");
}

/// The `proxy` command's admin port answers `/readyz` once its configuration is loaded, its
/// certificate valid and its listener accepting.
#[test]
fn proxy_admin_listener_has_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = start_registry(&tmp.path().join("data"), &[]);
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let certs = tmp.path().join("certs");
    let route = format!("/v2={}", registry.url());
    let proxy = Proc::start(
        &bin(),
        &[
            "proxy",
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--dev-certs",
            certs.to_str().unwrap(),
            "--route",
            &route,
        ],
        &[],
        listen.parse().unwrap(),
        tmp.path().join("proxy.log"),
    );
    let ready = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let (status, body) = admin_get(&admin, "/readyz");
        (status == 200).then_some(body)
    });
    assert_eq!(ready.as_deref(), Some("ready\n"), "{}", proxy.log_text());
    assert_eq!(admin_get(&admin, "/healthz").0, 200);
}
