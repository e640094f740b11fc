//! Real clients against a registry with access control on: `docker login` + push + pull on a
//! private Docker engine, `skopeo --creds`, `podman login` + pull, and containerd's `ctr content
//! fetch --user`. Allowed operations work; a token scoped to `team-a/*` cannot reach `team-b`
//! and cannot push without `content/write`; `docker pull` without a
//! login works only on the `--anonymous-pull` repositories.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::access::{create_token, create_token_on, rule, Made};
use common::api::Api;
use common::containerd::Containerd;
use common::docker::Dockerd;
use common::oci::Layout;
use common::{free_port, serve_with, skopeo, Proc};

/// The tokens every test here uses: `owner` (every action everywhere), `team-a` (pull, push and
/// list under `team-a/`) and `reader` (pull under `team-a/`).
struct Tokens {
    owner: Made,
    team_a: Made,
    reader: Made,
}

fn tokens(data: &Path) -> Tokens {
    Tokens {
        owner: create_token_on(data, "owner", "_repositories_admin"),
        team_a: create_token(
            data,
            "team-a",
            vec![rule(
                "team-a/*",
                &["content/read", "content/write", "metadata/read"],
            )],
            None,
        ),
        reader: create_token(
            data,
            "reader",
            vec![rule("team-a/*", &["content/read"])],
            None,
        ),
    }
}

fn serve(data: &Path, extra: &[&str]) -> Proc {
    let args = [&["--auth", "tokens"][..], extra].concat();
    serve_with(
        data,
        free_port(),
        &args,
        &[("RUST_LOG", "info")],
        data.with_extension("log"),
    )
}

/// Seeds `repo:v1` (and returns the layout's image) with skopeo as `owner`.
fn seed(dir: &Path, host: &str, owner: &Made, repos: &[&str]) -> common::oci::Image {
    let mut src = Layout::create(&dir.join("seed"));
    let image = src.add_image("amd64", &[100_000, 20_000]);
    src.tag("v1", &image.manifest);
    for repo in repos {
        skopeo::run(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &owner.creds(),
            &src.reference("v1"),
            &format!("docker://{host}/{repo}:v1"),
        ]);
    }
    image
}

fn failed_with(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn docker_login_push_and_pull_within_the_scope_map() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = tokens(&data);
    let registry = serve(&data, &[]);
    let host = registry.addr.to_string();
    seed(tmp.path(), &host, &t.owner, &["team-a/base", "team-b/app"]);

    let dk = Dockerd::start();
    // Not logged in: nothing.
    let out = dk.docker(&["pull", &format!("{host}/team-a/base:v1")]);
    let said = failed_with(&out, "docker pull without login");
    assert!(
        said.contains("unauthorized") || said.contains("no basic auth"),
        "{said}"
    );

    dk.docker_ok(&[
        "login",
        "-u",
        &t.team_a.name,
        "-p",
        &t.team_a.password1,
        &host,
    ]);
    dk.docker_ok(&["pull", &format!("{host}/team-a/base:v1")]);
    let pushed = format!("{host}/team-a/app:pushed");
    dk.docker_ok(&["tag", &format!("{host}/team-a/base:v1"), &pushed]);
    dk.docker_ok(&["push", &pushed]);
    dk.docker_ok(&["rmi", &pushed]);
    dk.docker_ok(&["pull", &pushed]);

    // team-b: neither pull nor push.
    let out = dk.docker(&["pull", &format!("{host}/team-b/app:v1")]);
    let said = failed_with(&out, "docker pull of team-b");
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );
    let other = format!("{host}/team-b/app:mine");
    dk.docker_ok(&["tag", &format!("{host}/team-a/base:v1"), &other]);
    let out = dk.docker(&["push", &other]);
    let said = failed_with(&out, "docker push to team-b");
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );

    // A pull-only token cannot push.
    dk.docker_ok(&["logout", &host]);
    dk.docker_ok(&[
        "login",
        "-u",
        &t.reader.name,
        "-p",
        &t.reader.password1,
        &host,
    ]);
    dk.docker_ok(&["pull", &format!("{host}/team-a/base:v1")]);
    let again = format!("{host}/team-a/app:by-reader");
    dk.docker_ok(&["tag", &format!("{host}/team-a/base:v1"), &again]);
    let out = dk.docker(&["push", &again]);
    let said = failed_with(&out, "docker push with a pull-only token");
    assert!(
        said.contains("denied") || said.contains("unauthorized"),
        "{said}"
    );

    // (The catalog as team-a sees it: access_control.rs, catalogs_show_only_what_the_caller_reads.)
    let api = Api::new(&registry.url());
    let tags = api
        .send(
            api.req(reqwest::Method::GET, "/v2/team-a/app/tags/list")
                .header("authorization", t.owner.basic()),
        )
        .expect(200)
        .json();
    assert_eq!(tags["tags"], serde_json::json!(["pushed"]));
    assert!(!std::fs::read_to_string(data.with_extension("log"))
        .unwrap()
        .contains(&t.team_a.password1));
}

#[test]
fn skopeo_with_creds_copies_within_the_scope_map_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = tokens(&data);
    let registry = serve(&data, &[]);
    let host = registry.addr.to_string();
    let image = seed(tmp.path(), &host, &t.owner, &["team-b/app"]);
    let seed_ref = format!("oci:{}:v1", tmp.path().join("seed").display());

    skopeo::run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &t.team_a.creds(),
        &seed_ref,
        &format!("docker://{host}/team-a/app:v1"),
    ]);
    let raw = skopeo::run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &t.reader.creds(),
        &format!("docker://{host}/team-a/app:v1"),
    ]);
    assert_eq!(common::api::sha256(raw.as_bytes()), image.manifest.digest);
    // Between repositories of the same registry with two tokens.
    skopeo::run(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &t.reader.creds(),
        "--dest-creds",
        &t.team_a.creds(),
        &format!("docker://{host}/team-a/app:v1"),
        &format!("docker://{host}/team-a/copy:v1"),
    ]);

    let skopeo_out = |args: &[&str]| Command::new("skopeo").args(args).output().unwrap();
    let out = skopeo_out(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &t.team_a.creds(),
        &format!("docker://{host}/team-b/app:v1"),
    ]);
    failed_with(&out, "skopeo inspect of team-b");
    let out = skopeo_out(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &t.reader.creds(),
        &seed_ref,
        &format!("docker://{host}/team-a/readers:v1"),
    ]);
    failed_with(&out, "skopeo push with a pull-only token");
    let out = skopeo_out(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("{}:wrong", t.team_a.name),
        &format!("docker://{host}/team-a/app:v1"),
    ]);
    failed_with(&out, "skopeo with a wrong password");
}

/// `podman` run rootful with a private storage root, so it touches nothing of the host's.
fn podman(dir: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ])
        .args(args)
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .output()
        .expect("run podman (./test.sh installs it)")
}

#[test]
fn podman_login_and_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = tokens(&data);
    let registry = serve(&data, &[]);
    let host = registry.addr.to_string();
    let image = seed(tmp.path(), &host, &t.owner, &["team-a/app", "team-b/app"]);
    let dir = tmp.path().join("podman");
    let ok = |args: &[&str]| {
        let out = podman(&dir, args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = podman(
        &dir,
        &[
            "pull",
            "--tls-verify=false",
            &format!("{host}/team-a/app:v1"),
        ],
    );
    failed_with(&out, "podman pull without login");
    ok(&[
        "login",
        "--tls-verify=false",
        "-u",
        &t.reader.name,
        "-p",
        &t.reader.password1,
        &host,
    ]);
    ok(&[
        "pull",
        "--tls-verify=false",
        &format!("{host}/team-a/app:v1"),
    ]);
    let digest = ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &format!("{host}/team-a/app:v1"),
    ]);
    assert_eq!(digest.trim(), image.manifest.digest);
    let out = podman(
        &dir,
        &[
            "pull",
            "--tls-verify=false",
            &format!("{host}/team-b/app:v1"),
        ],
    );
    failed_with(&out, "podman pull of team-b");
    let out = podman(
        &dir,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            &t.reader.name,
            "-p",
            "wrong",
            &host,
        ],
    );
    failed_with(&out, "podman login with a wrong password");
}

#[test]
fn ctr_pulls_with_user() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = tokens(&data);
    let registry = serve(&data, &[]);
    let host = registry.addr.to_string();
    let image = seed(tmp.path(), &host, &t.owner, &["team-a/app", "team-b/app"]);
    let containerd = Containerd::start();
    let reference = format!("{host}/team-a/app:v1");
    // `content fetch` takes the content without unpacking (no snapshotter needed).
    let fetch = |user: Option<&str>, reference: &str| {
        let mut args = vec!["content", "fetch", "--plain-http"];
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.push(reference);
        containerd.ctr(&args)
    };
    let out = fetch(Some(&t.reader.creds()), &reference);
    assert!(
        out.status.success(),
        "ctr content fetch --user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = containerd.ctr(&["content", "ls"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for blob in std::iter::once(&image.manifest)
        .chain([&image.config])
        .chain(&image.layers)
    {
        assert!(
            listed.contains(&blob.digest),
            "{} not fetched: {listed}",
            blob.digest
        );
    }
    failed_with(&fetch(None, &reference), "ctr fetch without --user");
    failed_with(
        &fetch(Some(&t.reader.creds()), &format!("{host}/team-b/app:v1")),
        "ctr fetch of team-b",
    );
}

#[test]
fn docker_pull_without_login_only_from_anonymous_pull_repositories() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = tokens(&data);
    let registry = serve(&data, &["--anonymous-pull", "public/*"]);
    let host = registry.addr.to_string();
    seed(tmp.path(), &host, &t.owner, &["public/app", "team-a/app"]);
    let dk = Dockerd::start();
    dk.docker_ok(&["pull", &format!("{host}/public/app:v1")]);
    let out = dk.docker(&["pull", &format!("{host}/team-a/app:v1")]);
    failed_with(&out, "anonymous docker pull outside --anonymous-pull");
    let pushed = format!("{host}/public/app:anon");
    dk.docker_ok(&["tag", &format!("{host}/public/app:v1"), &pushed]);
    let out = dk.docker(&["push", &pushed]);
    failed_with(&out, "anonymous docker push");
}
