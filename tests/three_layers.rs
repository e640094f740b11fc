//! The three-layer test: the real nested-edge topology, each layer in its own network namespace
//! made by the test and joined by veth pairs (cloud — top — lower), so the lower layer, whose
//! only route is to the top layer's link, cannot reach the cloud even by mistake.
//!
//! - cloud: CNCF distribution (`docker-registry`), or in the second variant a registry of ours
//!   in ReadWrite;
//! - top layer: `serve --proxy-listen` (registry and TLS proxy in one process, its own chain from
//!   `connected-registry certs`), ReadWrite, syncing from the cloud, with the lower layer defined
//!   here by `child create`;
//! - lower layer: `serve --proxy-listen` with its own chain, configured only with the connection
//!   string `child create` printed (plus `--trust` for the top layer's root CA), reaching only the
//!   top layer's proxy;
//! - a private dockerd inside the lower namespace (started with `nsenter --net`, which changes
//!   only the network namespace), trusting the lower layer's root CA through
//!   `/etc/docker/certs.d/IP:PORT/ca.crt`.
//!
//! Names: every server is addressed by IP, and the certificates carry the IP as a SAN, so no
//! hosts file is needed in any namespace (dockerd and our processes would otherwise read the
//! host's `/etc/hosts`).
//!
//! Then: an image pushed to the cloud is pulled by skopeo and `docker pull` from the lower
//! layer's proxy, byte-identical; an image pushed with `docker push` on the lower layer reaches
//! the cloud through the top layer; with the cloud stopped both layers keep serving and a push at
//! the lower layer goes as far as the top layer, and when the cloud returns it reaches the cloud
//! and new cloud content reaches the lower layer, with no manual step.
//!
//! Needs root (namespaces, `/etc/docker/certs.d`), iproute2, util-linux, skopeo, curl,
//! docker-registry and docker.io (./test.sh installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::distribution::start_distribution_in;
use common::docker::Dockerd;
use common::netns::{serve_in, Netns, Network};
use common::oci::{tar_file, Image, Layout};
use common::{bin, free_port, poll, Proc};

/// Bound on every wait for content to travel between layers. The layers poll every second
/// and retry a failed pass after at most 2 s (see [`SYNC_FAST`]), so content normally arrives
/// within a few seconds; this leaves room for a loaded machine.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(90);

/// Sync settings of both edge layers: a pass every second while the (always open) window is
/// open, a failed pass retried after at most 2 s.
const SYNC_FAST: [&str; 4] = ["--sync-poll-interval", "PT1S", "--sync-retry-max", "PT2S"];

/// Which registry plays the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cloud {
    /// CNCF distribution.
    Distribution,
    /// A registry of ours in ReadWrite.
    Ours,
}

/// The running topology. Fields drop in order: the processes first, the namespaces last.
struct ThreeLayers {
    cloud: Option<Proc>,
    top: Proc,
    lower: Proc,
    kind: Cloud,
    dir: PathBuf,
    cloud_ns: Netns,
    top_ns: Netns,
    lower_ns: Netns,
    /// `IP:PORT` of the cloud registry (plain HTTP).
    cloud_addr: String,
    /// `IP:PORT` of the top layer's TLS proxy.
    top_proxy: String,
    /// `IP:PORT` of the lower layer's TLS proxy.
    lower_proxy: String,
    /// A directory holding only `ca.crt`: the top layer's root CA (skopeo's `--cert-dir`).
    top_trust: PathBuf,
    /// The same for the lower layer's root CA.
    lower_trust: PathBuf,
    /// `tester:PASSWORD` of the top layer (which controls access: its child logs in).
    top_creds: String,
    /// `edge-client:PASSWORD`: a client token of the lower layer, created at the top layer
    /// (`token create --for-child lower`) and handed down at the lower layer's sync.
    lower_creds: String,
    net: Network,
}

/// `connected-registry ARGS...` on the host (certificates, child definitions); stdout.
#[track_caller]
fn cli_ok(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run connected-registry");
    assert!(
        out.status.success(),
        "connected-registry {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A chain for one layer made with our `certs` command (root CA → intermediate → edge CA →
/// server certificate for `hostname` and `ip`): (full chain, key, skopeo cert dir with the
/// root as `ca.crt`).
fn layer_chain(dir: &Path, layer: &str, hostname: &str, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    let pki = dir.join(format!("{layer}-pki"));
    let tls = dir.join(format!("{layer}-tls"));
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    cli_ok(&[
        "certs",
        "new-chain",
        "--out",
        &s(&pki),
        "--name",
        &format!("{layer} layer"),
    ]);
    cli_ok(&[
        "certs",
        "issue",
        "server",
        "--ca",
        &s(&pki),
        "--hostname",
        hostname,
        "--san",
        ip,
        "--out",
        &s(&tls),
    ]);
    let trust = dir.join(format!("{layer}-trust"));
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(pki.join("root-ca.cert.pem"), trust.join("ca.crt")).unwrap();
    (
        tls.join(format!("{hostname}-full-chain.cert.pem")),
        tls.join(format!("{hostname}.key.pem")),
        trust,
    )
}

impl ThreeLayers {
    /// Builds the namespaces, the chains, and starts the cloud, the top layer (with the lower
    /// layer defined as its ReadWrite child on every repository) and the lower layer.
    fn start(dir: &Path, kind: Cloud) -> ThreeLayers {
        let mut net = Network::new();
        let cloud_ns = net.namespace("cloud");
        let top_ns = net.namespace("top");
        let lower_ns = net.namespace("lower");
        let (cloud_ip, _top_up_ip) = net.link(&cloud_ns, &top_ns);
        let (top_ip, lower_ip) = net.link(&top_ns, &lower_ns);
        // One port for every server: each listens in its own namespace. Unique in this test
        // process, so the global certs.d directory named after it is this test's own.
        let port = free_port();
        let cloud_addr = format!("{cloud_ip}:5000");
        let top_proxy = format!("{top_ip}:{port}");
        let lower_proxy = format!("{lower_ip}:{port}");

        let (top_chain, top_key, top_trust) = layer_chain(dir, "top", "top.edge.test", &top_ip);
        let (lower_chain, lower_key, lower_trust) =
            layer_chain(dir, "lower", "lower.edge.test", &lower_ip);

        let cloud = start_cloud(kind, &cloud_ns, dir, &cloud_addr);

        // The lower layer defined at the top layer, before the top layer starts (on its store).
        let top_data = dir.join("top");
        let answer = cli_ok(&[
            "child",
            "create",
            "lower",
            "--mode",
            "ReadWrite",
            "--repository",
            "*",
            "--parent-endpoint",
            &top_proxy,
            "--protocol",
            "https",
            "--data",
            top_data.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let connection_string = answer["connectionString"]
            .as_str()
            .expect("child create prints connectionString")
            .to_owned();

        // A token at the top layer for the test to read it with (a child's sync token exists
        // already, so the first start makes no `admin`).
        let reader = cli_ok(&[
            "token",
            "create",
            "tester",
            "--scope-map",
            "_repositories_admin",
            "--data",
            top_data.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let reader: serde_json::Value = serde_json::from_str(&reader).unwrap();
        let password = reader["credentials"]["passwords"][0]["value"]
            .as_str()
            .expect("token create prints the password once");
        let top_creds = format!("tester:{password}");

        // The lower layer's client token, defined at the top: the lower layer controls access
        // too, and knows this token only from its sync.
        let client = cli_ok(&[
            "token",
            "create",
            "edge-client",
            "--for-child",
            "lower",
            "--repository",
            "*",
            "content/read",
            "content/write",
            "content/delete",
            "metadata/read",
            "--data",
            top_data.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let client: serde_json::Value = serde_json::from_str(&client).unwrap();
        let client_password = client["credentials"]["passwords"][0]["value"]
            .as_str()
            .expect("token create prints the password once");
        let lower_creds = format!("edge-client:{client_password}");

        let parent = format!("http://{cloud_addr}");
        let top = serve_in(
            &top_ns,
            &top_data,
            "127.0.0.1:8080",
            &[
                &[
                    "--auth",
                    "tokens",
                    "--proxy-listen",
                    &format!("0.0.0.0:{port}"),
                    "--proxy-cert",
                    top_chain.to_str().unwrap(),
                    "--proxy-key",
                    top_key.to_str().unwrap(),
                    "--parent",
                    &parent,
                    "--mode",
                    "ReadWrite",
                    "--repo",
                    "*",
                ][..],
                &SYNC_FAST,
            ]
            .concat(),
            &[],
            &format!("https://{top_proxy}/v2/"),
        );
        // The lower layer: only the connection string, its own certificate, and the root CA
        // to trust the top layer's proxy with.
        let lower_data = dir.join("lower");
        let lower = serve_in(
            &lower_ns,
            &lower_data,
            "127.0.0.1:8080",
            &[
                &[
                    "--auth",
                    "tokens",
                    "--proxy-listen",
                    &format!("0.0.0.0:{port}"),
                    "--proxy-cert",
                    lower_chain.to_str().unwrap(),
                    "--proxy-key",
                    lower_key.to_str().unwrap(),
                    "--trust",
                    top_trust.join("ca.crt").to_str().unwrap(),
                ][..],
                &SYNC_FAST,
            ]
            .concat(),
            &[("ACR_REGISTRY_CONNECTION_STRING", &connection_string)],
            &format!("https://{lower_proxy}/v2/"),
        );

        ThreeLayers {
            cloud: Some(cloud),
            top,
            lower,
            kind,
            dir: dir.to_owned(),
            cloud_ns,
            top_ns,
            lower_ns,
            cloud_addr,
            top_proxy,
            lower_proxy,
            top_trust,
            lower_trust,
            top_creds,
            lower_creds,
            net,
        }
    }

    /// Every log, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        if let Some(cloud) = &self.cloud {
            all += &format!(
                "--- cloud ({:?}):\n{}\n",
                self.kind,
                tail(&cloud.log_text())
            );
        }
        all += &format!("--- top:\n{}\n", tail(&self.top.log_text()));
        all += &format!("--- lower:\n{}\n", tail(&self.lower.log_text()));
        all
    }

    /// Pushes `layout`'s image to the cloud as `repo:tag` (skopeo in the cloud's namespace).
    fn push_to_cloud(&self, layout: &Layout, repo: &str, tag: &str) {
        self.cloud_ns.run_ok(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &layout.reference(common::sync::LAYOUT_TAG),
                &format!("docker://{}/{repo}:{tag}", self.cloud_addr),
            ],
        );
    }

    /// The manifest the cloud serves for `repo:tag`, if any (from the cloud's namespace).
    fn cloud_manifest(&self, repo: &str, tag: &str) -> Option<Vec<u8>> {
        inspect_raw(
            &self.cloud_ns,
            &format!("docker://{}/{repo}:{tag}", self.cloud_addr),
            &["--tls-verify=false"],
        )
    }

    /// The manifest the lower layer's proxy serves for `repo:tag`, if any, as a client in the
    /// lower namespace sees it (TLS, trusting the lower layer's root CA).
    fn lower_manifest(&self, repo: &str, tag: &str) -> Option<Vec<u8>> {
        inspect_raw(
            &self.lower_ns,
            &format!("docker://{}/{repo}:{tag}", self.lower_proxy),
            &[
                "--cert-dir",
                self.lower_trust.to_str().unwrap(),
                "--creds",
                &self.lower_creds,
            ],
        )
    }

    /// The manifest the top layer's proxy serves for `repo:tag`, if any (TLS, as admin).
    fn top_manifest(&self, repo: &str, tag: &str) -> Option<Vec<u8>> {
        inspect_raw(
            &self.top_ns,
            &format!("docker://{}/{repo}:{tag}", self.top_proxy),
            &[
                "--cert-dir",
                self.top_trust.to_str().unwrap(),
                "--creds",
                &self.top_creds,
            ],
        )
    }

    /// Waits (bounded) until `fetch` returns a manifest whose digest is `digest`; the time it
    /// took, or a panic with every log.
    #[track_caller]
    fn wait_for(&self, what: &str, digest: &str, fetch: impl Fn() -> Option<Vec<u8>>) -> Duration {
        let start = Instant::now();
        let arrived = poll(ARRIVAL_LIMIT, Duration::from_millis(250), || {
            fetch().filter(|m| common::api::sha256(m) == digest)
        });
        assert!(
            arrived.is_some(),
            "{what} did not arrive as {digest} within {ARRIVAL_LIMIT:?}\n{}",
            self.logs()
        );
        start.elapsed()
    }

    /// `connected-registry status --tree --output json` at the top layer (through the admin
    /// socket in its data directory): the top layer's own state and that of its child `lower`.
    fn tree_states(&self) -> (String, Option<String>) {
        let data = self.dir.join("top");
        let tree: serde_json::Value = serde_json::from_str(&cli_ok(&[
            "status",
            "--tree",
            "--data",
            data.to_str().unwrap(),
            "--output",
            "json",
        ]))
        .expect("status --tree --output json prints JSON");
        let own = tree["connectionState"].as_str().unwrap_or("").to_owned();
        let lower = tree["children"]
            .as_array()
            .and_then(|c| c.iter().find(|n| n["name"] == "lower"))
            .and_then(|n| n["state"].as_str())
            .map(str::to_owned);
        (own, lower)
    }

    /// Waits (bounded) until the top layer's tree shows it `top` and its child `lower`.
    #[track_caller]
    fn wait_for_states(&self, when: &str, top: &str, lower: &str) {
        let mut seen = (String::new(), None);
        let shown = poll(Duration::from_secs(90), Duration::from_millis(500), || {
            seen = self.tree_states();
            (seen.0 == top && seen.1.as_deref() == Some(lower)).then_some(())
        });
        assert!(
            shown.is_some(),
            "status --tree {when}: wanted top {top} and lower {lower}, last saw {seen:?}\n{}",
            self.logs()
        );
    }

    /// Stops the cloud (the top layer's uplink is cut).
    fn cut_uplink(&mut self) {
        if let Some(mut cloud) = self.cloud.take() {
            cloud.kill();
        }
    }

    /// Starts the cloud again on its address and storage.
    fn restore_uplink(&mut self) {
        self.cloud = Some(start_cloud(
            self.kind,
            &self.cloud_ns,
            &self.dir,
            &self.cloud_addr,
        ));
    }
}

/// The cloud registry in `ns` on `addr`, its storage under `dir` (the same on a restart).
fn start_cloud(kind: Cloud, ns: &Netns, dir: &Path, addr: &str) -> Proc {
    match kind {
        Cloud::Distribution => {
            let home = dir.join("cloud");
            std::fs::create_dir_all(&home).unwrap();
            start_distribution_in(ns, &home, addr)
        }
        Cloud::Ours => serve_in(
            ns,
            &dir.join("cloud"),
            addr,
            &["--mode", "ReadWrite"],
            &[],
            &format!("http://{addr}/v2/"),
        ),
    }
}

/// `skopeo inspect --raw FLAGS... REFERENCE` in `ns`: the manifest bytes, or `None` when
/// skopeo fails (not there yet, or the registry unreachable).
fn inspect_raw(ns: &Netns, reference: &str, flags: &[&str]) -> Option<Vec<u8>> {
    let args = [&["inspect", "--raw"][..], flags, &[reference]].concat();
    let out = ns.output("skopeo", &args);
    out.status.success().then_some(out.stdout)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A new OCI layout under `dir/NAME` with one image of two random layers.
fn new_image(dir: &Path, name: &str) -> (Layout, Image) {
    common::sync::image(&dir.join(name), &[96 << 10, 8 << 10])
}

/// Checks that the lower namespace cannot reach the cloud: it has no route there.
#[track_caller]
fn assert_isolated(layers: &ThreeLayers) {
    let url = format!("http://{}/v2/", layers.cloud_addr);
    assert_eq!(
        layers.lower_ns.http_code(&url),
        "000",
        "the lower layer reached the cloud at {url}"
    );
    let routes = layers.lower_ns.run_ok("ip", &["route"]);
    assert!(
        !routes.contains("default") && routes.lines().count() == 1,
        "the lower namespace has a route beyond its link to the top layer:\n{routes}"
    );
}

/// Pulls `repo:tag` from the lower proxy with skopeo (in the lower namespace) into an OCI
/// layout, and checks the blobs are those of `image` byte for byte.
#[track_caller]
fn skopeo_pull_from_lower(layers: &ThreeLayers, repo: &str, tag: &str, image: &Image) {
    let dest = layers
        .dir
        .join(format!("pulled-{}", repo.replace('/', "-")));
    layers.lower_ns.run_ok(
        "skopeo",
        &[
            "copy",
            "--src-cert-dir",
            layers.lower_trust.to_str().unwrap(),
            "--src-creds",
            &layers.lower_creds,
            &format!("docker://{}/{repo}:{tag}", layers.lower_proxy),
            &format!("oci:{}:x", dest.display()),
        ],
    );
    assert_eq!(
        common::oci::first_image_layers(&dest),
        image.layer_digests(),
        "the pulled image has the cloud image's layers"
    );
    for digest in image.layer_digests() {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = std::fs::read(dest.join("blobs/sha256").join(hex)).expect("pulled layer");
        assert_eq!(
            common::api::sha256(&bytes),
            digest,
            "layer {digest} pulled through two layers differs"
        );
    }
}

/// The end-to-end flows on a running topology; `docker` adds the Docker engine's part.
fn exercise(layers: &mut ThreeLayers, docker: bool) {
    let dir = layers.dir.clone();
    assert_isolated(layers);

    // Down: an image pushed to the cloud reaches the lower layer's proxy, byte-identical.
    let (layout, image) = new_image(&dir, "down");
    let pushed_at = Instant::now();
    layers.push_to_cloud(&layout, "apps/hello", "v1");
    let cloud_bytes = layers
        .cloud_manifest("apps/hello", "v1")
        .expect("the cloud serves what was pushed");
    let digest = image.manifest.digest.clone();
    assert_eq!(common::api::sha256(&cloud_bytes), digest);
    layers.wait_for("apps/hello:v1 at the lower layer", &digest, || {
        layers.lower_manifest("apps/hello", "v1")
    });
    let down = pushed_at.elapsed();
    eprintln!("figure: cloud -> lower layer (two hops, skopeo-visible) in {down:?}");
    assert_eq!(
        layers.lower_manifest("apps/hello", "v1").unwrap(),
        cloud_bytes,
        "the lower layer serves the manifest byte for byte"
    );
    skopeo_pull_from_lower(layers, "apps/hello", "v1", &image);

    // The Docker engine in the lower namespace, trusting the lower layer's root CA.
    let dockerd = docker.then(|| {
        let certs_d = PathBuf::from("/etc/docker/certs.d").join(&layers.lower_proxy);
        std::fs::create_dir_all(&certs_d).expect("create /etc/docker/certs.d/IP:PORT (root)");
        layers.net.remove_on_drop(certs_d.clone());
        std::fs::copy(layers.lower_trust.join("ca.crt"), certs_d.join("ca.crt")).unwrap();
        Dockerd::start_in(Some(&layers.lower_ns))
    });
    if let Some(dk) = &dockerd {
        // `docker login` at the lower layer with the token made for it at the top.
        let (user, password) = layers.lower_creds.split_once(':').unwrap();
        dk.docker_ok(&["login", &layers.lower_proxy, "-u", user, "-p", password]);
        let reference = format!("{}/apps/hello:v1", layers.lower_proxy);
        dk.docker_ok(&["pull", &reference]);
        let digests = dk.docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}} {{.Id}}",
            &reference,
        ]);
        assert!(
            digests.contains(&digest) && digests.contains(&image.config.digest),
            "docker pulled the cloud's image: {digests}"
        );

        // Up: an image made and pushed with docker at the lower layer reaches the cloud.
        let tar = dir.join("made-here.tar");
        std::fs::write(
            &tar,
            tar_file("made-here.txt", &common::oci::random_bytes(4096)),
        )
        .unwrap();
        let made = format!("{}/edge/made-here:v1", layers.lower_proxy);
        dk.docker_ok(&["import", tar.to_str().unwrap(), &made]);
        let pushed_at = Instant::now();
        let out = dk.docker_ok(&["push", &made]);
        let made_digest = out
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("docker push names the digest: {out}"))
            .to_owned();
        layers.wait_for("edge/made-here:v1 at the cloud", &made_digest, || {
            layers.cloud_manifest("edge/made-here", "v1")
        });
        eprintln!(
            "figure: docker push at the lower layer -> cloud (two hops) in {:?}",
            pushed_at.elapsed()
        );
    } else {
        // Up without docker: skopeo pushes at the lower layer.
        let (layout, image) = new_image(&dir, "up");
        let pushed_at = Instant::now();
        push_to_lower(layers, &layout, "edge/made-here", "v1");
        layers.wait_for(
            "edge/made-here:v1 at the cloud",
            &image.manifest.digest,
            || layers.cloud_manifest("edge/made-here", "v1"),
        );
        eprintln!(
            "figure: skopeo push at the lower layer -> cloud (two hops) in {:?}",
            pushed_at.elapsed()
        );
    }

    // The uplink is cut: both layers keep serving, the lower layer's push gets as far as the
    // top layer and waits there.
    layers.cut_uplink();
    // `status --tree` at the top (through its admin socket) shows the top layer `Offline`
    // (its uplink) and the lower layer still `Online` (it reports to the top as before).
    layers.wait_for_states("while the uplink is cut", "Offline", "Online");
    assert!(layers.lower_manifest("apps/hello", "v1").is_some());
    assert!(layers.top_manifest("apps/hello", "v1").is_some());
    skopeo_pull_from_lower(layers, "apps/hello", "v1", &image);
    if let Some(dk) = &dockerd {
        let reference = format!("{}/apps/hello:v1", layers.lower_proxy);
        dk.docker_ok(&["rmi", &reference]);
        dk.docker_ok(&["pull", &reference]);
    }
    let (layout, queued) = new_image(&dir, "while-cut");
    push_to_lower(layers, &layout, "edge/while-cut", "v1");
    let queued_digest = queued.manifest.digest.clone();
    layers.wait_for(
        "edge/while-cut:v1 at the top layer (uplink cut)",
        &queued_digest,
        || layers.top_manifest("edge/while-cut", "v1"),
    );

    // The uplink returns: the queued push reaches the cloud, and new cloud content the lower
    // layer, with no manual step.
    layers.restore_uplink();
    let restored_at = Instant::now();
    layers.wait_for(
        "edge/while-cut:v1 at the cloud after the uplink returned",
        &queued_digest,
        || layers.cloud_manifest("edge/while-cut", "v1"),
    );
    eprintln!(
        "figure: queued push reached the cloud {:?} after the uplink returned",
        restored_at.elapsed()
    );
    layers.wait_for_states("after the uplink returned", "Online", "Online");
    let (layout, after) = new_image(&dir, "after");
    layers.push_to_cloud(&layout, "apps/hello", "v2");
    let pushed_at = Instant::now();
    layers.wait_for(
        "apps/hello:v2 at the lower layer after the uplink returned",
        &after.manifest.digest,
        || layers.lower_manifest("apps/hello", "v2"),
    );
    eprintln!(
        "figure: cloud -> lower layer after the restore in {:?}",
        pushed_at.elapsed()
    );

    // The lower layer's client token, disabled at the top, stops working at the lower layer
    // at its next sync (it worked for everything above: skopeo, docker login, pull, push).
    let top_data = layers.dir.join("top");
    cli_ok(&[
        "token",
        "update",
        "edge-client",
        "--status",
        "disabled",
        "--data",
        top_data.to_str().unwrap(),
    ]);
    let refused = poll(ARRIVAL_LIMIT, Duration::from_millis(250), || {
        layers
            .lower_manifest("apps/hello", "v1")
            .is_none()
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "the token disabled at the top still works at the lower layer\n{}",
        layers.logs()
    );
    drop(dockerd);
}

/// `skopeo copy` of `layout`'s image to the lower layer's proxy as `repo:tag`, from the lower
/// namespace over TLS.
fn push_to_lower(layers: &ThreeLayers, layout: &Layout, repo: &str, tag: &str) {
    layers.lower_ns.run_ok(
        "skopeo",
        &[
            "copy",
            "--dest-cert-dir",
            layers.lower_trust.to_str().unwrap(),
            "--dest-creds",
            &layers.lower_creds,
            &layout.reference(common::sync::LAYOUT_TAG),
            &format!("docker://{}/{repo}:{tag}", layers.lower_proxy),
        ],
    );
}

#[test]
fn three_layers_with_a_distribution_cloud_docker_in_the_lower_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = ThreeLayers::start(dir.path(), Cloud::Distribution);
    exercise(&mut layers, true);
}

#[test]
fn three_layers_with_a_cloud_of_ours_in_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = ThreeLayers::start(dir.path(), Cloud::Ours);
    exercise(&mut layers, false);
}

/// `connected-registry demo` on loopback ports (forced with `CONNECTED_REGISTRY_DEMO_LOOPBACK`,
/// as a user who is not root gets): it prints its three layers and the command to pull from
/// the lower one, that command works with skopeo, and SIGTERM stops it cleanly (exit 0, the
/// layers stopped).
#[test]
fn demo_on_loopback_prints_a_pull_command_that_works_and_stops_cleanly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut demo = Command::new(bin())
        .args(["demo", "--dir", demo_dir.to_str().unwrap()])
        .env("CONNECTED_REGISTRY_DEMO_LOOPBACK", "true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start connected-registry demo");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = demo.stdout.take().unwrap();
    let mut demo = KillOnDrop(demo);
    // Read what it prints on a thread, so a demo that hangs fails the test in bounded time.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!(
                "the demo did not finish starting; it printed:\n{}",
                printed.join("\n")
            ),
        }
    }
    let all = printed.join("\n");
    for layer in ["cloud", "top", "lower"] {
        assert!(
            printed
                .iter()
                .any(|l| l.trim_start().starts_with(layer) && l.contains(" pid ")),
            "the demo names the {layer} process:\n{all}"
        );
    }
    assert!(
        all.contains("came down from the cloud to the lower layer"),
        "{all}"
    );
    let pull = printed
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("lower: "))
        .unwrap_or_else(|| panic!("no pull command for the lower layer:\n{all}"));
    let words: Vec<&str> = pull.split_whitespace().collect();
    assert_eq!(
        words[0], "skopeo",
        "on loopback the command runs as is: {pull}"
    );
    let pulled = common::wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        Command::new(words[0])
            .args(&words[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(pulled, "the printed command failed: {pull}\n{all}");
    assert!(demo_dir.join("pulled-from-lower/index.json").exists());

    let pid = demo.0.id();
    Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    let exited = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        demo.0.try_wait().ok().flatten()
    })
    .expect("the demo stops on SIGTERM");
    assert!(exited.success(), "the demo exits 0 when stopped: {exited}");
    // The rest of what it printed, up to the end of its output (bounded).
    let mut rest = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    for layer in ["cloud", "top", "lower"] {
        assert!(
            rest.iter().any(|l| l == &format!("stopped {layer}")),
            "the demo stopped {layer}: {rest:?}"
        );
    }
}
