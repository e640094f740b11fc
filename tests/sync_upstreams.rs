//! Several upstreams by namespace: a top registry of ours whose sync config names a parent (a
//! CNCF distribution) and two upstreams besides it: `mcr/` from a second distribution standing
//! in for mcr.microsoft.com (prefix stripped: `mcr/agent` here is `agent` there), and `library/`
//! from a registry of ours with `--auth tokens` standing in for Docker Hub (names kept, as
//! Docker's `registry-mirrors` asks for them; reached through the bearer-token flow). Each
//! prefix comes from its own upstream, byte-identical; the parent's own `mcr/agent` is not
//! taken; containerd's `?ns=` requests (curl, and `ctr` with a `hosts.toml`) and a Docker
//! engine with `--registry-mirror` get the right content; bad configs are refused naming the
//! entry and the field; the upstream's password shows in no log nor in `--print-config`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::access::{create_token, create_token_on, rule};
use common::containerd::Containerd;
use common::distribution::start_distribution;
use common::docker::Dockerd;
use common::oci::{Image, Layout};
use common::sync::ALWAYS_OPEN;
use common::{cli, curl, free_port, serve_with, skopeo, start_registry, wait_until};

const PASSWORD_MARK: &str = "upstream-pw";

/// A layout in `dir` with one image (distinct random layers) tagged `tag`.
fn layout(dir: &Path, tag: &str, sizes: &[usize]) -> (Layout, Image) {
    let mut layout = Layout::create(dir);
    let image = layout.add_image("amd64", sizes);
    layout.tag(tag, &image.manifest);
    (layout, image)
}

/// `Docker-Content-Digest` of `GET url` (with the manifest media types accepted), or the
/// status and body when it is not 200.
fn manifest_digest(url: &str) -> Result<String, (u16, String)> {
    let (status, body, headers) = curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        url,
    ]);
    if status != 200 {
        return Err((status, body));
    }
    Ok(headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default())
}

/// The top's sync config: parent `parent`, `mcr/` from `mcr`, `library/` from `hub` with the
/// password in `password_file`.
fn top_config(parent: &str, mcr: &str, hub: &str, password_file: &Path) -> String {
    serde_json::json!({
        "parent": parent,
        "upstreams": [
            {
                "prefix": "mcr/",
                "url": mcr,
                "registry": "mcr.microsoft.com",
                "repos": [{"pattern": "mcr/*"}]
            },
            {
                "prefix": "library/",
                "url": hub,
                "registry": "docker.io",
                "stripPrefix": false,
                "username": "top-sync",
                "passwordFile": password_file,
                "repos": [{"pattern": "library/alpine"}]
            }
        ]
    })
    .to_string()
}

#[test]
fn each_prefix_comes_from_its_upstream_and_mirror_requests_map_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The parent holds its own apps/web, and an mcr/agent that is not the top's.
    let parent = start_distribution(&t.join("parent"), "");
    let (web, web_image) = layout(&t.join("web"), "v1", &[30_000]);
    skopeo::copy(
        &web.reference("v1"),
        &format!("docker://{}/apps/web:v1", parent.addr),
        false,
    );
    let (impostor, impostor_image) = layout(&t.join("impostor"), "1.0", &[10_000]);
    skopeo::copy(
        &impostor.reference("1.0"),
        &format!("docker://{}/mcr/agent:1.0", parent.addr),
        false,
    );
    // mcr's stand-in knows the agent as `agent`.
    let mcr = start_distribution(&t.join("mcr"), "");
    let (agent, agent_image) = layout(&t.join("agent"), "1.0", &[40_000, 5_000]);
    skopeo::copy(
        &agent.reference("1.0"),
        &format!("docker://{}/agent:1.0", mcr.addr),
        false,
    );
    // Docker Hub's stand-in: ours, with access control (the bearer-token flow).
    let hub_data = t.join("hub");
    let owner = create_token_on(&hub_data, "owner", "_repositories_admin");
    let puller = create_token(
        &hub_data,
        "top-sync",
        vec![rule("library/*", &["content/read", "metadata/read"])],
        None,
    );
    let hub = start_registry(&hub_data, &["--auth", "tokens"]);
    let (alpine, alpine_image) = layout(&t.join("alpine"), "latest", &[50_000]);
    skopeo::run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &owner.creds(),
        &alpine.reference("latest"),
        &format!("docker://{}/library/alpine:latest", hub.addr),
    ]);

    let password_file = t.join("hub-password");
    std::fs::write(&password_file, format!("{}\n", puller.password1)).unwrap();
    let config = t.join("sync.json");
    std::fs::write(
        &config,
        top_config(&parent.url(), &mcr.url(), &hub.url(), &password_file),
    )
    .unwrap();
    let config_s = config.to_str().unwrap();
    let top_data = t.join("top");
    let args = [
        &ALWAYS_OPEN[..],
        &["--sync-config", config_s, "--sync-poll-interval", "PT1S"],
    ]
    .concat();
    let top = serve_with(
        &top_data,
        free_port(),
        &args,
        &[("RUST_LOG", "info")],
        t.join("top.log"),
    );
    let base = top.url();
    let expected = [
        ("apps/web", "v1", &web_image),
        ("mcr/agent", "1.0", &agent_image),
        ("library/alpine", "latest", &alpine_image),
    ];
    let clock = std::time::Instant::now();
    let all_there = wait_until(Duration::from_secs(90), Duration::from_millis(250), || {
        expected.iter().all(|(repo, tag, _)| {
            manifest_digest(&format!("{base}/v2/{repo}/manifests/{tag}")).is_ok()
        })
    });
    assert!(
        all_there,
        "the top did not sync every prefix; its log:\n{}",
        top.log_text()
    );
    eprintln!(
        "the top held every prefix {:.2} s after it answered",
        clock.elapsed().as_secs_f64()
    );
    // Byte-identical: the digest each upstream was given, from the upstream of its prefix.
    for (repo, tag, image) in expected {
        let digest = manifest_digest(&format!("{base}/v2/{repo}/manifests/{tag}")).unwrap();
        assert_eq!(digest, image.manifest.digest, "{repo}:{tag}");
    }
    assert_ne!(agent_image.manifest.digest, impostor_image.manifest.digest);
    // The status shows each upstream's schedule under its prefix.
    let (_, status, _) = curl(&[&format!("{base}/acr/v1/_sync/status")]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    for (prefix, url) in [("mcr/", mcr.url()), ("library/", hub.url())] {
        assert_eq!(
            status["upstreams"][prefix]["parent"],
            url.as_str(),
            "{status}"
        );
    }
    // `sync --once` runs the parent's pass and each upstream's, one summary each.
    let once = common::sync::sync_once(
        &t.join("once"),
        &parent.url(),
        &["--sync-config", config_s],
        &[],
    );
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&once.stdout).unwrap();
    assert_eq!(summary["outcome"], "Completed", "{summary}");
    for url in [mcr.url(), hub.url()] {
        assert_eq!(
            summary["upstreams"][&url]["outcome"], "Completed",
            "{summary}"
        );
        assert_eq!(summary["upstreams"][&url]["tagsUpdated"], 1, "{summary}");
    }
    // The parent's catalog lists mcr/agent, but the prefix is mcr's: the top has only mcr's.
    let (_, catalog, _) = curl(&[&format!("{base}/v2/_catalog")]);
    assert!(
        catalog.contains("mcr/agent") && !catalog.contains("\"agent\""),
        "{catalog}"
    );

    // containerd's mirror requests, as curl sends them.
    let by_ns = |ns: &str, repo: &str, tag: &str| {
        manifest_digest(&format!("{base}/v2/{repo}/manifests/{tag}?ns={ns}"))
    };
    assert_eq!(
        by_ns("mcr.microsoft.com", "agent", "1.0").unwrap(),
        agent_image.manifest.digest
    );
    assert_eq!(
        by_ns("docker.io", "library/alpine", "latest").unwrap(),
        alpine_image.manifest.digest
    );
    // The parent's own host, and this registry's, name the names as they are.
    assert_eq!(
        by_ns(&parent.addr.to_string(), "apps/web", "v1").unwrap(),
        web_image.manifest.digest
    );
    assert_eq!(
        by_ns(&top.addr.to_string(), "apps/web", "v1").unwrap(),
        web_image.manifest.digest
    );
    let (status, body) = by_ns("ghcr.io", "some/app", "v1").unwrap_err();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("NAME_UNKNOWN")
            && body.contains("ghcr.io")
            && body.contains("not configured"),
        "{body}"
    );
    // Blobs map too.
    let layer = &agent_image.layers[0].digest;
    let (status, _, _) = curl(&[
        "-o",
        "/dev/null",
        &format!("{base}/v2/agent/blobs/{layer}?ns=mcr.microsoft.com"),
    ]);
    assert_eq!(status, 200);

    // containerd itself, with a hosts.toml per registry pointing at the top.
    let hosts = t.join("certs.d");
    for (registry, server) in [
        ("docker.io", "https://registry-1.docker.io"),
        ("mcr.microsoft.com", "https://mcr.microsoft.com"),
    ] {
        std::fs::create_dir_all(hosts.join(registry)).unwrap();
        std::fs::write(
            hosts.join(registry).join("hosts.toml"),
            format!(
                "server = \"{server}\"\n\n[host.\"{base}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }
    let containerd = Containerd::start();
    let hosts_s = hosts.to_str().unwrap();
    for (reference, image) in [
        ("mcr.microsoft.com/agent:1.0", &agent_image),
        ("docker.io/library/alpine:latest", &alpine_image),
    ] {
        let out = containerd.ctr(&["content", "fetch", "--hosts-dir", hosts_s, reference]);
        assert!(
            out.status.success(),
            "ctr content fetch {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = containerd.ctr(&["content", "ls"]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        for digest in std::iter::once(&image.manifest.digest).chain(&image.layer_digests()) {
            assert!(
                listed.contains(digest.as_str()),
                "{reference}: {digest} not fetched: {listed}"
            );
        }
    }

    // Docker's registry-mirrors: Docker Hub's names, no ns.
    let dockerd = Dockerd::start_with(None, &["--registry-mirror", &base]);
    dockerd.docker_ok(&["pull", "alpine:latest"]);
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "alpine:latest"]);
    assert_eq!(id.trim(), alpine_image.config.digest);

    // The upstream's password is in no log and not in --print-config.
    let log = top.log_text();
    assert!(!log.contains(&puller.password1), "password in the log");
    let shown = common::cli_ok(&[
        "serve",
        "--data",
        top_data.to_str().unwrap(),
        "--sync-config",
        config_s,
        "--print-config",
    ]);
    assert!(
        shown.contains("mcr/ -> ") && shown.contains("top-sync:"),
        "{shown}"
    );
    assert!(
        !shown.contains(&puller.password1),
        "password in print-config: {shown}"
    );
}

#[test]
fn bad_upstream_configs_are_refused_naming_the_entry_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let upstream = |prefix: &str, url: &str| serde_json::json!({"prefix": prefix, "url": url});
    let cases = [
        (
            vec![
                upstream("mcr/", "https://a.example"),
                upstream("mcr/x/", "https://b.example"),
            ],
            "upstreams[1] (mcr/x/): prefix: overlaps upstreams[0]",
        ),
        (
            vec![upstream("mcr/", "mcr.microsoft.com")],
            "upstreams[0] (mcr/): url: \"mcr.microsoft.com\" must be http(s)://host[:port]",
        ),
        (
            vec![
                serde_json::json!({"prefix": "mcr/", "url": "https://m.example", "trust": "/nonexistent/ca.pem"}),
            ],
            "upstreams[0] (mcr/): trust: /nonexistent/ca.pem is not a readable PEM file",
        ),
        (
            vec![
                serde_json::json!({"prefix": "mcr/", "url": "https://m.example", "username": "u", "password": PASSWORD_MARK, "passwordEnv": "X"}),
            ],
            "upstreams[0] (mcr/): password: give one of",
        ),
    ];
    for (i, (upstreams, says)) in cases.into_iter().enumerate() {
        let path = t.join(format!("bad{i}.json"));
        std::fs::write(
            &path,
            serde_json::json!({"parent": "https://cloud.example", "upstreams": upstreams})
                .to_string(),
        )
        .unwrap();
        let data = t.join(format!("data{i}"));
        let (ok, stdout, stderr) = cli(&[
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--sync-config",
            path.to_str().unwrap(),
            "--print-config",
        ]);
        assert!(!ok, "case {i} accepted: {stdout}");
        assert!(
            stderr.contains(says),
            "case {i}: {stderr}\nexpected: {says}"
        );
        assert!(!stderr.contains(PASSWORD_MARK), "password shown: {stderr}");
        assert!(!data.exists(), "a refused start left {}", data.display());
    }
}

/// Access control judges the local name a `?ns=` request maps to: a token for `mcr/*` reads
/// `agent` of mcr.microsoft.com, one for the bare name `agent` does not, and the challenge to
/// an anonymous client names the local repository.
#[test]
fn access_control_judges_the_mapped_name() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("top");
    let owner = create_token_on(&data, "owner", "_repositories_admin");
    let mcr_reader = create_token(
        &data,
        "mcr-reader",
        vec![rule("mcr/*", &["content/read", "metadata/read"])],
        None,
    );
    let bare_reader = create_token(
        &data,
        "bare-reader",
        vec![rule("agent", &["content/read", "metadata/read"])],
        None,
    );
    // Neither the parent nor the upstream is ever reached: the content is pushed here.
    let config = t.join("sync.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "parent": "http://127.0.0.1:9",
            "upstreams": [{"prefix": "mcr/", "url": "http://127.0.0.1:9", "registry": "mcr.microsoft.com"}]
        })
        .to_string(),
    )
    .unwrap();
    let top = start_registry(
        &data,
        &[
            "--auth",
            "tokens",
            "--mode",
            "ReadWrite",
            "--sync-config",
            config.to_str().unwrap(),
        ],
    );
    let (agent, image) = layout(&t.join("agent"), "v1", &[10_000]);
    skopeo::run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &owner.creds(),
        &agent.reference("v1"),
        &format!("docker://{}/mcr/agent:v1", top.addr),
    ]);
    let url = format!("{}/v2/agent/manifests/v1?ns=mcr.microsoft.com", top.url());
    let get = |creds: Option<String>| {
        let mut args = vec![
            "-H".to_owned(),
            "Accept: application/vnd.oci.image.manifest.v1+json".to_owned(),
        ];
        if let Some(creds) = creds {
            args.extend(["-u".to_owned(), creds]);
        }
        args.push(url.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    };
    let (status, body, headers) = get(Some(mcr_reader.creds()));
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains(&image.manifest.digest), "{headers}");
    let (status, body, _) = get(Some(bare_reader.creds()));
    assert!(matches!(status, 401 | 403), "{status} {body}");
    let (status, _, headers) = get(None);
    assert_eq!(status, 401);
    assert!(
        headers.contains("repository:mcr/agent:pull"),
        "the challenge names the local repository: {headers}"
    );
}
