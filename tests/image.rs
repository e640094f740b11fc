//! The module image (`connected-registry image export|push|index`) with real peers: skopeo
//! reads the OCI archive and copies it into our registry, the image is pushed into ours and into
//! CNCF distribution, a version tag refuses to move, and a real Docker engine loads the
//! docker-archive and runs the module from it: `--version`, then `serve` on its data volume,
//! and the image pushing itself from inside a container.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::docker::Dockerd;
use common::static_build::static_binary;
use common::{skopeo, start_registry, wait_until};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs `connected-registry image ARGS --binary <static build>`.
fn image(args: &[&str]) -> Output {
    let binary = static_binary();
    Command::new(common::bin())
        .arg("image")
        .args(args)
        .arg("--binary")
        .arg(&binary)
        .output()
        .expect("run connected-registry image")
}

fn image_ok(args: &[&str]) -> String {
    let out = image(args);
    assert!(
        out.status.success(),
        "image {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The manifest digest `image export` printed (`FILE PLATFORM DIGEST (...)`).
fn printed_digest(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {stdout:?}"))
        .to_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// What the config of the image at `reference` says (skopeo inspect --config).
fn config_of(reference: &str) -> Value {
    json(&skopeo::run(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        reference,
    ]))
}

fn assert_module_config(config: &Value) {
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{config}");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/connected-registry"]));
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert!(c["ExposedPorts"]["443/tcp"].is_object(), "{config}");
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], VERSION);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
}

#[test]
fn an_oci_archive_is_read_by_skopeo_and_copied_into_our_registry() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("module.oci.tar");
    let archive_s = archive.to_str().unwrap();
    let printed = image_ok(&[
        "export",
        "-o",
        archive_s,
        "--format",
        "oci",
        "--revision",
        "abc123",
    ]);
    let digest = printed_digest(&printed);

    let reference = format!("oci-archive:{archive_s}");
    let config = config_of(&reference);
    assert_module_config(&config);
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.revision"],
        "abc123"
    );

    let registry = start_registry(&dir.path().join("reg"), &[]);
    let dest = format!("docker://{}/connected-registry:{VERSION}", registry.addr);
    skopeo::copy(&reference, &dest, false);
    let copied = skopeo::inspect_raw(&dest);
    assert_eq!(
        common::api::sha256(&copied),
        digest,
        "skopeo keeps the manifest byte for byte"
    );
    assert_module_config(&config_of(&dest));

    // The same binary gives the same image: a docker archive of it names the same manifest.
    let again = dir.path().join("module.docker.tar");
    let printed = image_ok(&[
        "export",
        "-o",
        again.to_str().unwrap(),
        "--format",
        "docker-archive",
        "--revision",
        "abc123",
    ]);
    assert_eq!(printed_digest(&printed), digest);
}

#[test]
fn push_reaches_our_registry_and_distribution_and_a_version_tag_never_moves() {
    let dir = tempfile::tempdir().unwrap();
    let ours = start_registry(&dir.path().join("reg"), &[]);
    let distribution = common::distribution::start_distribution(&dir.path().join("dist"), "");

    for registry in [ours.addr, distribution.addr] {
        let target = format!("{registry}/connected-registry:{VERSION}");
        image_ok(&["push", &target, "--plain-http", "--also-tag", "latest"]);
        assert_module_config(&config_of(&format!("docker://{target}")));
        let latest = format!("docker://{registry}/connected-registry:latest");
        assert_eq!(
            skopeo::inspect_raw(&latest),
            skopeo::inspect_raw(&format!("docker://{target}"))
        );
    }

    // Pushing the same image again is fine; another image under the version is refused.
    let target = format!("{}/connected-registry:{VERSION}", ours.addr);
    image_ok(&["push", &target, "--plain-http"]);
    let moved = image(&["push", &target, "--plain-http", "--revision", "other"]);
    assert!(!moved.status.success(), "a version tag moved");
    let stderr = String::from_utf8_lossy(&moved.stderr);
    assert!(
        stderr.contains("never moves") && stderr.contains("--force"),
        "{stderr}"
    );
    image_ok(&[
        "push",
        &target,
        "--plain-http",
        "--revision",
        "other",
        "--force",
    ]);
    let config = config_of(&format!("docker://{target}"));
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.revision"],
        "other"
    );

    // CI pushes each platform under its own tag, then one index over them.
    let registry = distribution.addr;
    image_ok(&[
        "push",
        &format!("{registry}/connected-registry:{VERSION}-amd64"),
        "--plain-http",
    ]);
    let index_ref = format!("{registry}/connected-registry:{VERSION}-multi");
    let out = Command::new(common::bin())
        .args([
            "image",
            "index",
            &index_ref,
            "--from",
            &format!("{VERSION}-amd64"),
            "--plain-http",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = json(&String::from_utf8_lossy(&skopeo::inspect_raw(&format!(
        "docker://{index_ref}"
    ))));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    assert_module_config(&config_of(&format!("docker://{index_ref}")));
}

#[test]
fn a_docker_engine_loads_the_archive_and_runs_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("module.docker.tar");
    image_ok(&[
        "export",
        "-o",
        archive.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    let docker = Dockerd::start();
    let loaded = docker.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let name = format!("connected-registry:{VERSION}");
    assert!(loaded.contains(&name), "{loaded}");

    let version = docker.docker_ok(&["run", "--rm", "--network", "none", &name, "--version"]);
    assert_eq!(version.trim(), format!("connected-registry {VERSION}"));
    let inspect = json(&docker.docker_ok(&["image", "inspect", &name]));
    assert_eq!(inspect[0]["Config"]["User"], "65532:65532");

    // The module as the IoT Edge agent starts it: its data volume at /var/acr/data (a named
    // volume takes the image directory's owner, the non-root user), serving on the host network.
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let container = docker
        .docker_ok(&[
            "run",
            "-d",
            "--network",
            "host",
            "-v",
            "crdata:/var/acr/data",
            &name,
            "serve",
            "--listen",
            &listen,
            "--auth",
            "none",
        ])
        .trim()
        .to_owned();
    let answers = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    let logs =
        || String::from_utf8_lossy(&docker.docker(&["logs", &container]).stderr).into_owned();
    assert!(
        answers,
        "the module did not listen on {listen}; its log:\n{}",
        logs()
    );
    let (status, _, _) = common::curl(&[&format!("http://{listen}/v2/")]);
    assert_eq!(status, 200, "its log:\n{}", logs());

    // The image pushes itself from inside a container: its own tooling, its CA bundle, a name
    // resolved without any NSS module, as the non-root user.
    docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &name,
        "image",
        "push",
        &format!("localhost:{port}/self/connected-registry:{VERSION}"),
        "--plain-http",
    ]);
    assert_module_config(&config_of(&format!(
        "docker://{listen}/self/connected-registry:{VERSION}"
    )));
    // What it stored is on the volume, written as the non-root user.
    let volume = json(&docker.docker_ok(&["volume", "inspect", "crdata"]));
    let mountpoint = Path::new(volume[0]["Mountpoint"].as_str().expect("a mountpoint"));
    let meta = std::fs::metadata(mountpoint.join("meta.redb")).expect("the store is on the volume");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65532);
    docker.docker_ok(&["rm", "-f", &container]);
}

/// The static binary the image carries stays position-independent (its addresses randomised)
/// with its relative relocations packed (DT_RELR, `build.rs`): 6 KB where 550 KB were read whole
/// at every start and kept resident. The container test above runs it, so glibc's static
/// start-up applies them.
#[test]
fn the_static_binary_is_position_independent_with_packed_relocations() {
    let out = Command::new("readelf")
        .args(["--file-header", "--dynamic"])
        .arg(static_binary())
        .output()
        .expect("run readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "readelf: {out:?}");
    assert!(
        text.contains("DYN (Position-Independent Executable file)"),
        "{text}"
    );
    assert!(text.contains("(RELR)"), "no packed relocations:\n{text}");
}

/// The shipped deployment manifests run this version of the image, from the registry of their
/// layer, with the data directory and port the image is made for.
#[test]
fn the_shipped_manifests_run_this_version_of_the_image() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy-manifests/manifests");
    for (file, registry) in [
        ("top-layer.json", "<REGISTRY_ADDRESS>"),
        ("single-layer.json", "<REGISTRY_ADDRESS>"),
        ("lower-layer.json", "$upstream:443"),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let manifest = json(&text);
        let modules = &manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
        let registry_module = &modules["connectedRegistry"];
        assert_eq!(
            registry_module["settings"]["image"],
            format!("{registry}/connected-registry:{VERSION}"),
            "{file}"
        );
        assert_eq!(
            registry_module["env"]["ACR_REGISTRY_DATA_VOLUME"]["value"], "/var/acr/data",
            "{file}"
        );
        let create = registry_module["settings"]["createOptions"]
            .as_str()
            .unwrap();
        assert!(create.contains(":/var/acr/data\""), "{file}: {create}");
        assert!(create.contains("0.0.0.0:8080"), "{file}: {create}");
        if let Some(proxy) = modules.get("IoTEdgeAPIProxy") {
            assert_eq!(
                proxy["settings"]["image"],
                registry_module["settings"]["image"]
            );
        }
        let out = Command::new(common::bin())
            .args(["manifest", "check"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "manifest check {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
