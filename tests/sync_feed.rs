//! End-to-end tests of the change feed: `/acr/v1/_changes` on a real `connected-registry serve`
//! (paging, bounds, reset), and a child (`connected-registry sync --once`) syncing from it
//! through a loopback relay that records every HTTP request the child sends, so "a second sync
//! with nothing new costs one request" is counted on the wire, not taken from the child's word.
//! The feed's version is pinned both ways: a parent answers a child a version ahead in its own,
//! and a child meets a parent a version ahead (an HTTP front that answers the feed with a newer
//! page and forwards everything else to a real parent) by comparing tag by tag.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::api::{sha256, Api};
use common::oci::seeded_bytes;
use common::{bin, free_port, start_registry_on, Proc};
use serde_json::Value;

// ---------- the parent, and pushing to it ----------

/// `connected-registry serve` on `port` with its data in `data` (restartable on the same port).
fn serve(data: &Path, port: u16) -> Proc {
    start_registry_on(data, port, &[])
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Pushes a small one-layer image (content from `seed`) as `repo:tag`; returns its digest.
fn push_image(base: &str, repo: &str, tag: &str, seed: u64) -> String {
    let layer = seeded_bytes(seed, 4096);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"seed": seed.to_string()}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}
    }))
    .unwrap();
    let api = Api::new(base);
    let (cd, ld) = (api.push_blob(repo, &config), api.push_blob(repo, &layer));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let r = http()
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "push {repo}:{tag}: {}", r.text().unwrap());
    sha256(&manifest)
}

fn delete_tag(base: &str, repo: &str, tag: &str) {
    let r = http()
        .delete(format!("{base}/v2/{repo}/manifests/{tag}"))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "delete {repo}:{tag}: {}",
        r.text().unwrap()
    );
}

fn feed(base: &str, query: &str) -> (u16, Value) {
    let r = http()
        .get(format!("{base}/acr/v1/_changes{query}"))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content type {ct:?}");
    (status, r.json().unwrap())
}

fn seqs(page: &Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes array: {page}"))
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

/// Stops the parent and prunes its change log down to the newest entry, with the same store
/// call `messageTtl` uses (only the clock is skipped): a child away longer than the TTL.
fn prune_parent_log(parent: &mut Proc, data: &Path) -> Proc {
    parent.kill();
    let port = parent.addr.port();
    {
        let store = registry::Store::open(data, Default::default()).expect("open parent store");
        let pruned = store.prune_changes(u64::MAX).expect("prune");
        assert!(pruned > 0, "nothing pruned");
    }
    serve(data, port)
}

// ---------- a relay that records the child's requests ----------

struct Relay {
    port: u16,
    /// "METHOD /path?query" of every request the child sent through the relay.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
                let reqs = reqs.clone();
                std::thread::spawn(move || relay_requests(client, server, &reqs));
            }
        });
        Relay {
            port,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies child -> parent, noting each HTTP/1.1 request line (bodies skipped by Content-Length).
fn relay_requests(mut from: TcpStream, mut to: TcpStream, reqs: &Mutex<Vec<String>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        loop {
            if body_left > 0 {
                let k = body_left.min(pending.len());
                pending.drain(..k);
                body_left -= k;
                if body_left > 0 {
                    break;
                }
            }
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or_default();
            let mut parts = first.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            reqs.lock().unwrap().push(format!("{method} {path}"));
            body_left = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------- the child ----------

fn sync_once(data: &Path, parent: &str, repos: &[&str], extra: &[&str]) -> Output {
    let mut args = vec![
        "sync",
        "--once",
        "--quiet",
        "--json",
        "--data",
        data.to_str().unwrap(),
        "--parent",
        parent,
    ];
    for r in repos {
        args.extend_from_slice(&["--repo", r]);
    }
    args.extend_from_slice(extra);
    Command::new(bin())
        .args(&args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run connected-registry sync")
}

/// Runs one pass, asserts it completed, returns its JSON summary.
#[track_caller]
fn pass(data: &Path, parent: &str, repos: &[&str]) -> Value {
    pass_with(data, parent, repos, &[])
}

#[track_caller]
fn pass_with(data: &Path, parent: &str, repos: &[&str], extra: &[&str]) -> Value {
    let out = sync_once(data, parent, repos, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sync failed: {}\n{stderr}",
        out.status
    );
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr:\n{stderr}"));
    assert_eq!(s["outcome"], "Completed", "{s}\n{stderr}");
    s
}

/// Tag -> digest of every tag of `repo` in the child's store (the child process has exited).
fn child_tags(data: &Path, repo: &str) -> Vec<(String, String)> {
    let store = registry::Store::open(data, Default::default()).expect("open child store");
    let name: registry::RepoName = repo.parse().unwrap();
    store
        .tags(&name)
        .unwrap()
        .into_iter()
        .map(|t| {
            let d = store
                .get_manifest(&name, &registry::Reference::Tag(t.clone()))
                .unwrap()
                .expect("tag points at a stored manifest")
                .digest
                .to_string();
            (t, d)
        })
        .collect()
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(t, d)| (t.to_string(), d.to_string()))
        .collect()
}

// ---------- a parent one feed version ahead ----------

/// An HTTP front on loopback for a real parent: it answers the change feed with a page of the
/// next feed version (a shape this build does not know) and forwards every other request.
struct NewerFeedFront {
    url: String,
    feed_requests: Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl NewerFeedFront {
    fn start(upstream: String) -> NewerFeedFront {
        use axum::routing::get;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let feed_requests: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counter = feed_requests.clone();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let app = axum::Router::new()
            .route(
                "/acr/v1/_changes",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        axum::Json(serde_json::json!({
                            "version": oci::FEED_VERSION + 1,
                            "cursor": "a shape only the next version knows",
                        }))
                    }
                }),
            )
            .fallback(move |req: axum::extract::Request| {
                forward(client.clone(), upstream.clone(), req)
            });
        runtime.spawn(async move { axum::serve(listener, app).await });
        NewerFeedFront {
            url,
            feed_requests,
            _runtime: runtime,
        }
    }
}

/// Sends `req` on to `upstream` and its answer back (hop-by-hop headers left out).
async fn forward(
    client: reqwest::Client,
    upstream: String,
    req: axum::extract::Request,
) -> axum::response::Response {
    let hop = |name: &str| matches!(name, "host" | "connection" | "transfer-encoding");
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = client
        .request(parts.method, format!("{upstream}{path}"))
        .body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop(n.as_str())) {
        out = out.header(name, value);
    }
    let answer = out.send().await.unwrap();
    let mut back = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers().iter().filter(|(n, _)| !hop(n.as_str())) {
        back = back.header(name, value);
    }
    back.body(axum::body::Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

// ---------- tests ----------

/// A child one feed version ahead of its parent asks for that version; the parent answers in
/// its own newest, which such a child reads. A child that names no version (children in the
/// field before versions) gets version 1, and this child names the version it reads.
#[test]
fn feed_answers_a_child_a_version_ahead_in_its_own_version() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let base = parent.url();
    let a1 = push_image(&base, "apps/a", "1", 1);

    let ahead = format!("?after=0&v={}", oci::FEED_VERSION + 1);
    let (status, page) = feed(&base, &ahead);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["version"], oci::FEED_VERSION, "{page}");
    let page = oci::FeedPage::from_json(page.to_string().as_bytes()).expect("a page it reads");
    assert!(
        page.changes
            .iter()
            .any(|c| matches!(&c.kind, oci::ChangeKind::TagSet { tag, .. } if tag == "1")),
        "{page:?}"
    );
    let (_, unversioned) = feed(&base, "?after=0");
    assert_eq!(unversioned["version"], 1, "{unversioned}");

    let relay = Relay::start(parent.addr);
    let child = tmp.path().join("child");
    pass(&child, &relay.url(), &["apps/a"]);
    let reqs = relay.take();
    let asked = format!("v={}", oci::FEED_VERSION);
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("GET /acr/v1/_changes") && r.contains(&asked)),
        "{reqs:?}"
    );
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));
}

/// A parent one feed version ahead of its child: the child does not fail, says so in one log
/// line, compares tag by tag (the tags arrive), and does not ask for the feed again soon.
#[test]
fn feed_of_a_parent_a_version_ahead_falls_back_to_tag_by_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let base = parent.url();
    let a1 = push_image(&base, "apps/a", "1", 1);
    let front = NewerFeedFront::start(base.clone());
    let child = tmp.path().join("child");

    let out = sync_once(&child, &front.url, &["apps/a"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "Completed", "{summary}\n{stderr}");
    assert_eq!(summary["pull"], "full", "{summary}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("newer than this child reads"))
        .count();
    assert_eq!(said, 1, "one log line says why:\n{stderr}");
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));
    assert_eq!(front.feed_requests.load(Ordering::SeqCst), 1);

    let a1_new = push_image(&base, "apps/a", "1", 2);
    let second = pass(&child, &front.url, &["apps/a"]);
    assert_eq!(second["pull"], "full", "{second}");
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1_new.as_str())])
    );
    assert_eq!(
        front.feed_requests.load(Ordering::SeqCst),
        1,
        "remembered like a parent without a feed"
    );
}

/// The registry's feed: bounds, paging with `after` and `n`, a reset for a position that was
/// pruned or that the log never reached, and clear errors for bad parameters.
#[test]
fn feed_pages_with_after_and_n_and_says_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("parent");
    let mut parent = serve(&data, free_port());
    let base = parent.url();

    let (status, empty) = feed(&base, "");
    assert_eq!(status, 200);
    assert_eq!(empty["head"], 0, "{empty}");
    assert_eq!(empty["reset"], false, "{empty}");
    assert_eq!(seqs(&empty), Vec::<u64>::new());

    let d1 = push_image(&base, "feed/a", "one", 1);
    push_image(&base, "feed/a", "two", 2);
    push_image(&base, "feed/b", "one", 3);
    delete_tag(&base, "feed/a", "two");

    let (_, all) = feed(&base, "?after=0");
    let head = all["head"].as_u64().unwrap();
    let all_seqs = seqs(&all);
    // Each push logs the manifest and the tag; the delete logs the tag.
    assert_eq!(all_seqs, (1..=7).collect::<Vec<u64>>(), "{all}");
    assert_eq!(head, 7);
    assert_eq!(all["oldest"], 1);
    let first = &all["changes"][0];
    assert_eq!(first["repo"], "feed/a");
    assert_eq!(first["type"], "manifest_put");
    assert_eq!(first["digest"], d1.as_str());
    assert_eq!(all["changes"][1]["type"], "tag_set");
    assert_eq!(all["changes"][1]["tag"], "one");
    assert_eq!(all["changes"][6]["type"], "tag_deleted");
    assert_eq!(all["changes"][6]["tag"], "two");

    // Paging: n at a time, continuing after the last seq seen.
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let (_, page) = feed(&base, &format!("?after={after}&n=3"));
        let s = seqs(&page);
        if s.is_empty() {
            break;
        }
        assert!(s.len() <= 3, "{page}");
        after = *s.last().unwrap();
        pages.push(s);
    }
    assert_eq!(pages, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let (_, mid) = feed(&base, "?after=5&n=1");
    assert_eq!(seqs(&mid), vec![6]);
    // n=0: only the bounds (the probe a child sends first).
    let (_, probe) = feed(&base, "?after=0&n=0");
    assert_eq!((probe["head"].as_u64(), seqs(&probe).len()), (Some(7), 0));
    // Caught up: nothing, no reset.
    let (_, caught) = feed(&base, "?after=7");
    assert_eq!(
        (seqs(&caught).len(), &caught["reset"]),
        (0, &Value::Bool(false))
    );
    // A position this log never reached (the registry was set up again): reset.
    let (_, ahead) = feed(&base, "?after=99");
    assert_eq!(ahead["reset"], true, "{ahead}");
    assert_eq!(seqs(&ahead).len(), 0);

    // Bad parameters: the OCI error format, naming the parameter.
    for q in ["?n=lots", "?after=-1"] {
        let (status, err) = feed(&base, q);
        assert_eq!(status, 400, "{q}: {err}");
        let msg = err["errors"][0]["message"].as_str().unwrap_or_default();
        let name = if q.contains("n=") { "n=" } else { "after=" };
        assert!(msg.contains(name), "{q}: {err}");
    }

    // After pruning (messageTtl), only the newest entry is kept: older positions reset.
    parent = prune_parent_log(&mut parent, &data);
    let base = parent.url();
    let (_, pruned) = feed(&base, "?after=0");
    assert_eq!(pruned["oldest"], 7, "{pruned}");
    assert_eq!(pruned["head"], 7, "{pruned}");
    assert_eq!(pruned["reset"], true, "{pruned}");
    let (_, edge) = feed(&base, "?after=6");
    assert_eq!(edge["reset"], false, "{edge}");
    assert_eq!(seqs(&edge), vec![7]);
    // New changes continue the numbering.
    push_image(&base, "feed/b", "two", 4);
    let (_, more) = feed(&base, "?after=7");
    assert_eq!(seqs(&more), vec![8, 9], "{more}");
}

/// A child of a parent of ours: the first sync compares everything; a second with nothing new
/// sends exactly one request (the feed); a tag moved and a tag deleted at the parent are
/// reflected through the feed without listing tags or the catalog; changes out of scope cost
/// no comparison.
#[test]
fn feed_second_sync_is_one_request_and_moves_and_deletes_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let base = parent.url();
    let a1 = push_image(&base, "apps/a", "1", 1);
    let a2 = push_image(&base, "apps/a", "2", 2);
    let b1 = push_image(&base, "apps/b", "1", 3);
    push_image(&base, "other/c", "1", 4);
    let relay = Relay::start(parent.addr);
    let child = tmp.path().join("child");
    let scope = ["apps/*"];

    let first = pass(&child, &relay.url(), &scope);
    assert_eq!(first["pull"], "full", "{first}");
    assert_eq!(first["tagsUpdated"], 3, "{first}");
    let reqs = relay.take();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /acr/v1/_changes")),
        "the first pass asks for the feed's head: {reqs:?}"
    );
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1.as_str()), ("2", a2.as_str())])
    );
    assert_eq!(child_tags(&child, "apps/b"), tags(&[("1", b1.as_str())]));
    assert!(child_tags(&child, "other/c").is_empty());

    // Nothing new: one request.
    let second = pass(&child, &relay.url(), &scope);
    let reqs = relay.take();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0].starts_with("GET /acr/v1/_changes?after="),
        "{reqs:?}"
    );
    assert_eq!(second["requests"], 1, "{second}");
    assert_eq!(second["pull"], "feed", "{second}");
    assert_eq!(second["tagsUpdated"], 0, "{second}");

    // Move apps/a:1, delete apps/b:1, and change something out of scope.
    let a1_new = push_image(&base, "apps/a", "1", 5);
    delete_tag(&base, "apps/b", "1");
    push_image(&base, "other/c", "2", 6);
    let third = pass(&child, &relay.url(), &scope);
    let reqs = relay.take();
    assert_eq!(third["pull"], "feed", "{third}");
    assert_eq!(third["tagsUpdated"], 1, "{third}");
    assert_eq!(third["tagsDeleted"], 1, "{third}");
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains("/tags/list") || r.contains("_catalog") || r.contains("other/c")),
        "the feed names what to compare; nothing else is listed: {reqs:?}"
    );
    assert!(
        reqs.contains(&"HEAD /v2/apps/a/manifests/1".to_owned()),
        "the moved tag is compared by HEAD: {reqs:?}"
    );
    assert!(
        !reqs.iter().any(|r| r.contains("/v2/apps/a/manifests/2")),
        "an unchanged tag is not compared: {reqs:?}"
    );
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1_new.as_str()), ("2", a2.as_str())])
    );
    assert!(child_tags(&child, "apps/b").is_empty());
    assert!(child_tags(&child, "other/c").is_empty());

    // In step again: one request.
    let fourth = pass(&child, &relay.url(), &scope);
    assert_eq!(relay.take().len(), 1);
    assert_eq!(fourth["requests"], 1, "{fourth}");
}

/// A child away longer than the parent keeps its change log (pruned past `messageTtl`) gets a
/// reset, compares everything once, ends in step, and then continues through the feed.
#[test]
fn feed_reset_after_prune_falls_back_to_full_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let pdata = tmp.path().join("parent");
    let mut parent = serve(&pdata, free_port());
    let base = parent.url();
    push_image(&base, "apps/a", "1", 1);
    push_image(&base, "apps/a", "2", 2);
    let child = tmp.path().join("child");
    let scope = ["apps/*"];
    let first = pass(&child, &base, &scope);
    assert_eq!(first["tagsUpdated"], 2, "{first}");

    // While the child is away: move a tag, delete one, add one; then the log is pruned.
    let a1_new = push_image(&base, "apps/a", "1", 3);
    delete_tag(&base, "apps/a", "2");
    let b1 = push_image(&base, "apps/b", "1", 4);
    parent = prune_parent_log(&mut parent, &pdata);
    let base = parent.url();

    let back = pass(&child, &base, &scope);
    assert_eq!(back["pull"], "reset", "{back}");
    assert_eq!(back["tagsUpdated"], 2, "{back}");
    assert_eq!(back["tagsDeleted"], 1, "{back}");
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1_new.as_str())])
    );
    assert_eq!(child_tags(&child, "apps/b"), tags(&[("1", b1.as_str())]));

    // The feed continues from the head read before the full comparison.
    let next = pass(&child, &base, &scope);
    assert_eq!(next["pull"], "feed", "{next}");
    assert_eq!(next["requests"], 1, "{next}");
    let a3 = push_image(&base, "apps/a", "3", 5);
    let more = pass(&child, &base, &scope);
    assert_eq!(more["pull"], "feed", "{more}");
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1_new.as_str()), ("3", a3.as_str())])
    );
    drop(parent);
}

/// A parent that is not ours (CNCF distribution) has no feed: the child asks once, remembers,
/// and keeps comparing tag by tag without asking again.
#[test]
fn feed_absent_at_distribution_keeps_tag_by_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = common::distribution::start_distribution(&tmp.path().join("dist"), "");
    let base = parent.url();
    let a1 = push_image(&base, "apps/a", "1", 1);
    let relay = Relay::start(parent.addr);
    let child = tmp.path().join("child");
    let scope = ["apps/a"];

    let first = pass(&child, &relay.url(), &scope);
    assert_eq!(first["pull"], "full", "{first}");
    let reqs = relay.take();
    assert_eq!(
        reqs.iter().filter(|r| r.contains("/acr/")).count(),
        1,
        "asked once: {reqs:?}"
    );
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));

    let a1_new = push_image(&base, "apps/a", "1", 2);
    let second = pass(&child, &relay.url(), &scope);
    let reqs = relay.take();
    assert_eq!(second["pull"], "full", "{second}");
    assert!(
        !reqs.iter().any(|r| r.contains("/acr/")),
        "remembered that the parent has no feed: {reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.contains("/tags/list")), "{reqs:?}");
    assert_eq!(
        child_tags(&child, "apps/a"),
        tags(&[("1", a1_new.as_str())])
    );
}

/// Pushes a signature-like artifact for `subject` by digest; returns its digest.
fn push_referrer(base: &str, repo: &str, subject: &str) -> String {
    let subject_size = http()
        .get(format!("{base}/v2/{repo}/manifests/{subject}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .len();
    let empty = Api::new(base).push_blob(repo, b"{}");
    let empty_desc = serde_json::json!({
        "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2
    });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": empty_desc,
        "layers": [empty_desc],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": subject, "size": subject_size}
    }))
    .unwrap();
    let digest = sha256(&manifest);
    let r = http()
        .put(format!("{base}/v2/{repo}/manifests/{digest}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "push referrer: {}", r.text().unwrap());
    digest
}

/// A signature pushed at the parent after its image was synced comes down through the feed
/// (the full comparison would not notice it: the tag did not change); a manifest stored by
/// digest that is no referrer of anything held here is left at the parent.
#[test]
fn feed_brings_referrers_pushed_after_their_subject() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let base = parent.url();
    let a1 = push_image(&base, "apps/a", "1", 1);
    let child = tmp.path().join("child");
    let scope = ["apps/a"];
    pass(&child, &base, &scope);

    let sig = push_referrer(&base, "apps/a", &a1);
    // An image pushed by digest only, no subject: not wanted here.
    let loose = push_image(&base, "apps/a", "tmp", 2);
    delete_tag(&base, "apps/a", "tmp");
    let s = pass(&child, &base, &scope);
    assert_eq!(s["pull"], "feed", "{s}");
    let store = registry::Store::open(&child, Default::default()).unwrap();
    let repo: registry::RepoName = "apps/a".parse().unwrap();
    let refs = store.referrers(&repo, &a1.parse().unwrap()).unwrap();
    assert!(
        refs.iter().any(|d| d.digest.to_string() == sig),
        "referrer {sig} not synced: {refs:?}"
    );
    let loose = registry::Reference::Digest(loose.parse().unwrap());
    assert!(store.get_manifest(&repo, &loose).unwrap().is_none());
}

/// A tag sync brought down that a client then deleted here comes back at the next pass, though
/// the parent's feed names nothing new: the child reads its own change log for client changes
/// to what it manages.
#[test]
fn feed_child_restores_a_synced_tag_deleted_here() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let a1 = push_image(&parent.url(), "apps/a", "1", 1);
    let child = tmp.path().join("child");
    pass(&child, &parent.url(), &["apps/*"]);
    {
        let registry = serve(&child, free_port());
        delete_tag(&registry.url(), "apps/a", "1");
    }
    assert!(child_tags(&child, "apps/a").is_empty());

    let s = pass(&child, &parent.url(), &["apps/*"]);
    assert_eq!(s["pull"], "feed", "{s}");
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));
}

/// The child's store restored from a backup older than sync's record of it: the next pass
/// compares everything and brings back what the backup lacks.
#[test]
fn feed_child_restored_from_a_backup_compares_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    let a1 = push_image(&parent.url(), "apps/a", "1", 1);
    let child = tmp.path().join("child");
    drop(registry::Store::open(&child, Default::default()).expect("create the child store"));
    let backup = tmp.path().join("meta.redb.backup");
    std::fs::copy(child.join("meta.redb"), &backup).unwrap();
    pass(&child, &parent.url(), &["apps/*"]);
    assert_eq!(pass(&child, &parent.url(), &["apps/*"])["pull"], "feed");
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));

    std::fs::copy(&backup, child.join("meta.redb")).unwrap();
    assert!(child_tags(&child, "apps/a").is_empty());
    let s = pass(&child, &parent.url(), &["apps/*"]);
    assert_eq!(s["pull"], "full", "{s}");
    assert_eq!(child_tags(&child, "apps/a"), tags(&[("1", a1.as_str())]));
}

/// However quiet the feed, a full comparison runs once per `--sync-reconcile-interval`.
#[test]
fn feed_child_compares_everything_each_reconcile_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = serve(&tmp.path().join("parent"), free_port());
    push_image(&parent.url(), "apps/a", "1", 1);
    let child = tmp.path().join("child");
    let scope = ["apps/*"];
    assert_eq!(pass(&child, &parent.url(), &scope)["pull"], "full");
    let daily = ["--sync-reconcile-interval", "P1D"];
    assert_eq!(
        pass_with(&child, &parent.url(), &scope, &daily)["pull"],
        "feed"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let each_second = ["--sync-reconcile-interval", "PT1S"];
    let s = pass_with(&child, &parent.url(), &scope, &each_second);
    assert_eq!(s["pull"], "full", "{s}");
    assert_eq!(
        pass_with(&child, &parent.url(), &scope, &daily)["pull"],
        "feed"
    );
}
