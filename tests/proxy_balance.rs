//! End-to-end tests of a proxy route with several upstreams: registry replicas (`connected-
//! registry serve`, each on its own disk, each holding the same image) behind
//! `connected-registry proxy --route /v2=A,B`. Requests are spread over them; a replica killed
//! with `kill -9` costs no client request (the GET or HEAD that finds it dead goes to the other
//! one) and `skopeo` pulls right after; the health check takes it out and, once it runs again
//! on its port, puts it back; a PUT, PATCH, POST or DELETE is never sent twice. With
//! `--health-path /v2/` the same holds for CNCF distribution replicas, which have no `/readyz`.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::api::OCI_MANIFEST;
use common::distribution::start_distribution_on;
use common::oci::{first_image_layers, Image, Layout};
use common::proxy::{balanced_proxy, config_line, healthy, metric, metrics, proxy_fixture};
use common::tls::TestCa;
use common::{free_port, start_registry_on, wait_until, Proc};

/// The image every replica holds.
const REPO: &str = "edge/app";

/// One registry replica: restartable on its port with its data.
struct Replica {
    proc: Proc,
    data: PathBuf,
    port: u16,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on its port and data (after [`Proc::kill`]).
    fn restart(&mut self) {
        self.proc = start_registry_on(&self.data, self.port, &[]);
    }

    /// Requests for `what` (e.g. `GET /v2/edge/app/manifests/v1 200`) in its access log since
    /// it last started.
    fn served(&self, what: &str) -> usize {
        self.proc.log_text().matches(what).count()
    }
}

/// `n` registries, each with the same image (`edge/app:v1`, a 1 MiB and a 256 KiB layer)
/// pushed straight to it, and the image.
fn replicas(t: &Path, n: usize) -> (Vec<Replica>, Layout, Image) {
    let (layout, image) = Layout::with_image(&t.join("img"), "v1", &[1 << 20, 256 << 10]);
    let replicas = (0..n)
        .map(|i| {
            let data = t.join(format!("replica{i}"));
            let port = free_port();
            let proc = start_registry_on(&data, port, &[]);
            let replica = Replica { proc, data, port };
            common::skopeo::copy(
                &layout.reference("v1"),
                &format!("docker://127.0.0.1:{port}/{REPO}:v1"),
                false,
            );
            replica
        })
        .collect();
    (replicas, layout, image)
}

/// Whether `cond` holds within 10 s, checked every 50 ms: many health intervals of the tests.
fn soon(cond: impl FnMut() -> bool) -> bool {
    wait_until(Duration::from_secs(10), Duration::from_millis(50), cond)
}

/// `GET` or `HEAD` of `url`: the status, or what failed.
fn fetch(http: &reqwest::blocking::Client, head: bool, url: &str) -> Result<u16, String> {
    let req = if head { http.head(url) } else { http.get(url) };
    let resp = req
        .header("accept", OCI_MANIFEST)
        .send()
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    // The whole body: a download cut short would be a failure too.
    resp.bytes().map_err(|e| format!("body: {e:?}"))?;
    Ok(status)
}

/// Pulls the image through the proxy with skopeo, trusting only the test CA; returns the
/// layer digests pulled.
fn skopeo_pull(ca: &TestCa, proxy: &Proc, out: &Path) -> Vec<String> {
    let certs = ca.skopeo_cert_dir();
    common::skopeo::run(&[
        "--insecure-policy",
        "copy",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        &format!("docker://{}/{REPO}:v1", proxy.addr),
        &format!("oci:{}:v1", out.display()),
    ]);
    first_image_layers(out)
}

/// The requests of two replicas are spread over both; one killed with `kill -9` in the middle
/// of a stream of manifest and blob GETs and HEADs fails none of them (the first that finds it
/// dead is sent again to the other, counted in `proxy_retries_total`), and skopeo pulls through
/// the proxy right after. The health check is made too slow to matter (1 h): what keeps the
/// stream whole is the retry and the passive take-out. With both dead a client gets the OCI
/// 502 naming the route and no address, and `/readyz` says why; the first replica back on its
/// port serves the very next request although both are still marked out (they are tried
/// anyway).
#[test]
fn a_replica_killed_mid_stream_costs_no_request() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let (mut reps, _layout, image) = replicas(t, 2);
    let urls: Vec<String> = reps.iter().map(Replica::url).collect();
    let (proxy, admin) = balanced_proxy(t, "proxy", &leaf, &urls, &["--health-interval", "1h"]);
    let http = ca.https_client();
    let base = format!("https://{}/v2/{REPO}", proxy.addr);
    let manifest_url = format!("{base}/manifests/v1");

    // Spread: sequential requests alternate (nothing in flight, ties go round-robin).
    for _ in 0..20 {
        assert_eq!(fetch(&http, false, &manifest_url), Ok(200));
    }
    let line = format!("GET /v2/{REPO}/manifests/v1 200");
    let counts: Vec<usize> = reps.iter().map(|r| r.served(&line)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 20, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n >= 5),
        "requests not spread over both replicas: {counts:?}"
    );

    // A stream of GETs and HEADs of the manifest and of a layer, while one replica dies.
    let urls_streamed = [
        (false, manifest_url.clone()),
        (true, manifest_url.clone()),
        (false, format!("{base}/blobs/{}", image.layers[1].digest)),
        (true, format!("{base}/blobs/{}", image.layers[0].digest)),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stream = {
        let (stop, done, failures, http) =
            (stop.clone(), done.clone(), failures.clone(), http.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (head, url) = &urls_streamed[i % urls_streamed.len()];
                match fetch(&http, *head, url) {
                    Ok(200) => {}
                    other => failures.lock().unwrap().push(format!(
                        "{} {url}: {other:?}",
                        if *head { "HEAD" } else { "GET" }
                    )),
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    assert!(
        soon(|| done.load(Ordering::Relaxed) >= 20),
        "the stream did not start"
    );
    reps[0].proc.kill();
    let at_kill = done.load(Ordering::Relaxed);
    // skopeo right after the kill, while the stream goes on.
    let pulled = skopeo_pull(&ca, &proxy, &t.join("pulled"));
    assert_eq!(pulled, image.layer_digests());
    assert!(
        soon(|| done.load(Ordering::Relaxed) >= at_kill + 40),
        "the stream stalled after the kill"
    );
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed after the kill:\n{}\nproxy log:\n{}",
        failures.len(),
        done.load(Ordering::Relaxed),
        failures.join("\n"),
        proxy.log_text()
    );
    let dead = &urls[0];
    assert!(
        metric(admin, "proxy_retries_total").unwrap_or(0.0) >= 1.0,
        "no request was sent again, so none found the dead replica: the test proved nothing\n{}",
        metrics(admin)
    );
    assert_eq!(healthy(admin, dead), Some(0.0), "{}", metrics(admin));
    assert_eq!(healthy(admin, &urls[1]), Some(1.0));
    let log = proxy.log_text();
    assert!(
        log.contains(&format!(
            "upstream {dead} taken out of service: it failed before answering"
        )),
        "{log}"
    );

    // Both dead: the client's error names the route, not an address.
    reps[1].proc.kill();
    let (status, body) = {
        let resp = http.get(&manifest_url).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("UPSTREAM_UNREACHABLE") && body.contains("route /v2"),
        "{body}"
    );
    for r in &reps {
        assert!(!body.contains(&r.port.to_string()), "{body}");
    }
    assert!(!body.contains("127.0.0.1"), "{body}");
    let ready = common::curl(&[&format!("http://{admin}/readyz")]);
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(
        ready.1.contains("route /v2") && !ready.1.contains(&reps[0].port.to_string()),
        "{ready:?}"
    );

    // One back: tried although marked out (no health check for an hour), it answers.
    reps[0].restart();
    assert_eq!(fetch(&http, false, &manifest_url), Ok(200));
    assert_eq!(fetch(&http, true, &manifest_url), Ok(200));
}

/// The health check (`GET /readyz` every `--health-interval`) takes a killed replica out with
/// no request needed, counts and logs it, and while it is out no request goes to it (none is
/// retried); the proxy stays ready. Started again on its port, it is put back and gets
/// requests again. With every replica dead the proxy's `/readyz` answers 503 naming the route,
/// and ready again once one is back.
#[test]
fn health_checks_take_a_dead_replica_out_and_put_it_back() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let (mut reps, _layout, _image) = replicas(t, 2);
    let urls: Vec<String> = reps.iter().map(Replica::url).collect();
    let (proxy, admin) = balanced_proxy(
        t,
        "proxy",
        &leaf,
        &urls,
        &["--health-interval", "200ms", "--health-timeout", "500ms"],
    );
    let http = ca.https_client();
    let manifest_url = format!("https://{}/v2/{REPO}/manifests/v1", proxy.addr);
    let line = format!("GET /v2/{REPO}/manifests/v1 200");
    for u in &urls {
        assert_eq!(healthy(admin, u), Some(1.0), "{}", metrics(admin));
    }

    reps[0].proc.kill();
    assert!(
        soon(|| healthy(admin, &urls[0]) == Some(0.0)),
        "the dead replica is still reported in service:\n{}",
        metrics(admin)
    );
    let out = format!(
        "proxy_upstream_health_changes_total{{upstream=\"{}\",to=\"out\"}}",
        urls[0]
    );
    assert_eq!(metric(admin, &out), Some(1.0));
    let log = proxy.log_text();
    assert!(
        log.contains(&format!(
            "upstream {} taken out of service: its health check failed",
            urls[0]
        )),
        "{log}"
    );
    let ready = common::curl(&[&format!("http://{admin}/readyz")]);
    assert_eq!(ready.0, 200, "one replica left is enough: {ready:?}");
    let before = reps[1].served(&line);
    for _ in 0..10 {
        assert_eq!(fetch(&http, false, &manifest_url), Ok(200));
    }
    assert_eq!(reps[1].served(&line), before + 10);
    assert_eq!(metric(admin, "proxy_retries_total"), Some(0.0));

    reps[0].restart();
    assert!(
        soon(|| healthy(admin, &urls[0]) == Some(1.0)),
        "the restarted replica was not put back:\n{}",
        metrics(admin)
    );
    let back = format!(
        "proxy_upstream_health_changes_total{{upstream=\"{}\",to=\"in\"}}",
        urls[0]
    );
    assert_eq!(metric(admin, &back), Some(1.0));
    assert!(proxy
        .log_text()
        .contains(&format!("upstream {} back in service", urls[0])));
    for _ in 0..10 {
        assert_eq!(fetch(&http, false, &manifest_url), Ok(200));
    }
    assert!(
        reps[0].served(&line) >= 3,
        "the replica put back gets no requests: {} of 10",
        reps[0].served(&line)
    );

    for r in reps.iter_mut() {
        r.proc.kill();
    }
    assert!(
        soon(|| common::curl(&[&format!("http://{admin}/readyz")]).0 == 503),
        "still ready with every replica dead"
    );
    let ready = common::curl(&[&format!("http://{admin}/readyz")]);
    assert!(
        ready
            .1
            .contains("route /v2: none of its 2 upstreams is in service"),
        "{ready:?}"
    );
    reps[1].restart();
    assert!(
        soon(|| common::curl(&[&format!("http://{admin}/readyz")]).0 == 200),
        "not ready again with a replica back"
    );
}

/// `--health-path` lets the proxy balance registries that are not ours: two CNCF distribution
/// replicas (`docker-registry`, which answers `GET /v2/` and has no `/readyz`) checked at
/// `/v2/` are both in service; one killed is taken out by its check (logged with the path),
/// requests keep reaching the other, and started again on its port it is put back. The same
/// replicas checked at the default `/readyz` are reported out (distribution answers 404 there),
/// which is what the setting is for.
#[test]
fn health_path_checks_distribution_replicas() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let ports = [free_port(), free_port()];
    let dirs: Vec<PathBuf> = (0..2).map(|i| t.join(format!("distribution{i}"))).collect();
    let mut regs: Vec<Proc> = (0..2)
        .map(|i| start_distribution_on(&dirs[i], ports[i], ""))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let checks = ["--health-interval", "200ms", "--health-timeout", "500ms"];
    let (proxy, admin) = balanced_proxy(
        t,
        "proxy",
        &leaf,
        &urls,
        &[&checks[..], &["--health-path", "/v2/"]].concat(),
    );
    let (_default, default_admin) = balanced_proxy(t, "default", &leaf, &urls, &checks);
    let http = ca.https_client();
    let base = format!("https://{}/v2/", proxy.addr);

    assert!(
        soon(|| urls.iter().all(|u| healthy(default_admin, u) == Some(0.0))),
        "checked at /readyz, distribution should fail its checks:\n{}",
        metrics(default_admin)
    );
    // Checks ran on both proxies by now (they started together); a few more rounds, and not
    // one check at /v2/ may have failed.
    std::thread::sleep(Duration::from_millis(600));
    for u in &urls {
        assert_eq!(healthy(admin, u), Some(1.0), "{}", metrics(admin));
        let out = format!("proxy_upstream_health_changes_total{{upstream=\"{u}\",to=\"out\"}}");
        assert_eq!(metric(admin, &out), Some(0.0), "{}", metrics(admin));
    }
    assert_eq!(common::curl(&[&format!("http://{admin}/readyz")]).0, 200);
    for _ in 0..4 {
        assert_eq!(fetch(&http, false, &base), Ok(200));
    }

    regs[0].kill();
    assert!(
        soon(|| healthy(admin, &urls[0]) == Some(0.0)),
        "the killed distribution is still reported in service:\n{}",
        metrics(admin)
    );
    assert_eq!(healthy(admin, &urls[1]), Some(1.0), "{}", metrics(admin));
    let log = proxy.log_text();
    assert!(
        log.contains(&format!(
            "upstream {} taken out of service: its health check failed: GET /v2/",
            urls[0]
        )),
        "{log}"
    );
    for _ in 0..6 {
        assert_eq!(fetch(&http, false, &base), Ok(200));
    }
    assert_eq!(
        metric(admin, "proxy_retries_total"),
        Some(0.0),
        "a request went to the replica taken out"
    );

    regs[0] = start_distribution_on(&dirs[0], ports[0], "");
    assert!(
        soon(|| healthy(admin, &urls[0]) == Some(1.0)),
        "the distribution started again was not put back:\n{}",
        metrics(admin)
    );
    assert!(
        proxy.log_text().contains(&format!(
            "upstream {} back in service: its health check (GET /v2/) passed",
            urls[0]
        )),
        "{}",
        proxy.log_text()
    );
    let back = format!(
        "proxy_upstream_health_changes_total{{upstream=\"{}\",to=\"in\"}}",
        urls[0]
    );
    assert_eq!(metric(admin, &back), Some(1.0));
    assert_eq!(fetch(&http, false, &base), Ok(200));
}

/// An upstream that reads a request's head and closes the connection without answering;
/// records each request line it read (the health checks' included).
fn closing_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            if let Some(line) = text.lines().next() {
                record.lock().unwrap().push(line.to_owned());
            }
            drop(conn);
        }
    });
    (addr, seen)
}

/// Only GET and HEAD go to a second upstream when the first fails before answering: against
/// two upstreams that close every connection unanswered, a GET and a HEAD reach both (then
/// 502), a PUT, PATCH, POST and DELETE reach one, once. `--retries 0` sends a GET once too.
#[test]
fn only_get_and_head_are_sent_again() {
    let (tmp, ca, leaf) = proxy_fixture();
    let t = tmp.path();
    let (a, seen_a) = closing_upstream();
    let (b, seen_b) = closing_upstream();
    let urls = [format!("http://{a}"), format!("http://{b}")];
    // The health checks fail at once and then wait an hour: both upstreams are marked out,
    // and are tried anyway.
    let (proxy, _) = balanced_proxy(t, "proxy", &leaf, &urls, &["--health-interval", "1h"]);
    let (lean, _) = balanced_proxy(
        t,
        "lean",
        &leaf,
        &urls,
        &["--health-interval", "1h", "--retries", "0"],
    );
    // The request lines each upstream saw, the health checks left out.
    let requests = || -> [Vec<String>; 2] {
        [&seen_a, &seen_b].map(|s| {
            s.lock()
                .unwrap()
                .iter()
                .filter(|l| !l.starts_with("GET /readyz "))
                .cloned()
                .collect()
        })
    };
    let count = |r: &[Vec<String>; 2]| r[0].len() + r[1].len();
    let body = t.join("body");
    std::fs::write(&body, b"0123456789").unwrap();
    let data = format!("@{}", body.display());
    let root = ca.root.to_str().unwrap();
    let cases: [(&Proc, &str, usize); 7] = [
        (&proxy, "GET", 2),
        (&proxy, "HEAD", 2),
        (&proxy, "PUT", 1),
        (&proxy, "PATCH", 1),
        (&proxy, "POST", 1),
        (&proxy, "DELETE", 1),
        (&lean, "GET", 1),
    ];
    for (p, method, attempts) in cases {
        let before = requests();
        let url = format!("https://{}/v2/{REPO}/blobs/uploads/x", p.addr);
        let mut args = vec!["--cacert", root, "-X", method];
        match method {
            "HEAD" => args = vec!["--cacert", root, "--head"],
            "PUT" | "PATCH" | "POST" => args.extend(["--data-binary", &data]),
            _ => {}
        }
        args.push(&url);
        let (status, body, _) = common::curl(&args);
        assert_eq!(status, 502, "{method}: {body}");
        let sent = soon(|| count(&requests()) >= count(&before) + attempts);
        // Anything sent more often would show by now: each attempt is one connection.
        std::thread::sleep(Duration::from_millis(200));
        let now = requests();
        let new: Vec<&String> = (0..2).flat_map(|i| &now[i][before[i].len()..]).collect();
        assert!(
            sent && new.len() == attempts,
            "{method} via {}: expected {attempts} attempt(s), the upstreams saw {new:?}",
            p.log.display()
        );
        assert!(new.iter().all(|l| l.starts_with(method)), "{new:?}");
        if attempts == 2 {
            // One each: a request is never sent twice to one upstream.
            assert!(
                (0..2).all(|i| now[i].len() == before[i].len() + 1),
                "{new:?}"
            );
        }
    }
}

/// `--print-config` lists every upstream of a route, from the `proxy` flag and from `serve`'s
/// variable (whose comma-separated list of routes keeps a route's upstreams together), with
/// the balancing settings (the health path from `serve`'s variable too); a duplicate is
/// refused naming the flag.
#[test]
fn print_config_lists_every_upstream() {
    let (ok, out, err) = common::cli(&[
        "proxy",
        "--print-config",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--route",
        "/v2=http://10.0.0.4:8080,10.0.0.5:8080",
        "--retries",
        "2",
    ]);
    assert!(ok, "{out}{err}");
    let v2 = config_line(&out, "route /v2 ");
    assert!(
        v2.contains("http://10.0.0.4:8080, http://10.0.0.5:8080") && v2.contains("flag --route"),
        "{v2}"
    );
    assert!(config_line(&out, "retries ").contains('2'));
    assert!(config_line(&out, "health_interval ").contains("2s"));
    assert!(config_line(&out, "health_path ").contains("/readyz"));

    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--data"])
        .arg(data.path().join("data"))
        .args(["--proxy-listen", "127.0.0.1:1", "--print-config"])
        .env(
            "CONNECTED_REGISTRY_PROXY_ROUTE",
            "/blob=http://blob1:11002,http://blob2:11002,/x=http://c:1",
        )
        .env("CONNECTED_REGISTRY_PROXY_HEALTH_PATH", "/v2/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(config_line(&text, "route /blob ").contains("http://blob1:11002, http://blob2:11002"));
    assert!(config_line(&text, "route /x ").contains("http://c:1"));
    assert!(
        config_line(&text, "health_path ").contains("/v2/"),
        "{text}"
    );

    let (ok, _, err) = common::cli(&[
        "proxy",
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--route",
        "/v2=http://a:1,in-process",
    ]);
    assert!(!ok);
    assert!(
        err.contains("flag --route") && err.contains("in-process cannot share a route"),
        "{err}"
    );
}
