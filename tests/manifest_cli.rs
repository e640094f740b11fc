//! End-to-end tests of `connected-registry manifest check` and `manifest render`: the real
//! binary on the shipped manifests, the broken-manifest corpus and rendered templates.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy-manifests/manifests")
}

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy-manifests/tests/corpus")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("run connected-registry")
}

/// `manifest render TEMPLATE --env ENV [-o OUT]`.
fn render(template: &Path, env: &Path, out: Option<&Path>) -> Output {
    let mut args = vec![
        "manifest",
        "render",
        path_str(template),
        "--env",
        path_str(env),
    ];
    if let Some(out) = out {
        args.extend(["-o", path_str(out)]);
    }
    run(&args)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally, not by a signal")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn shipped_manifests_check_clean_with_exit_status_0() {
    for name in ["top-layer.json", "lower-layer.json", "single-layer.json"] {
        let file = manifests_dir().join(name);
        let out = run(&["manifest", "check", path_str(&file)]);
        let (stdout, stderr) = text(&out);
        assert_eq!(code(&out), 0, "{name}\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("0 error(s), 0 warning(s), 0 info(s)"),
            "{stdout}"
        );
        assert!(
            stdout.contains("% of the module-twin limit"),
            "size report missing: {stdout}"
        );
    }
}

#[test]
fn exit_status_follows_the_worst_severity() {
    for (file, want) in [
        ("privileged.json", 2),
        ("memory-limit.json", 1),
        ("optimize-for-performance.json", 0),
    ] {
        let out = run(&["manifest", "check", path_str(&corpus(file))]);
        assert_eq!(code(&out), want, "{file}: {}", text(&out).0);
    }
    // Several files: the worst one counts.
    let out = run(&[
        "manifest",
        "check",
        path_str(&corpus("memory-limit.json")),
        path_str(&corpus("port-conflict.json")),
    ]);
    assert_eq!(code(&out), 2);
}

#[test]
fn json_format_names_rule_path_and_fix() {
    let out = run(&[
        "manifest",
        "check",
        "--format",
        "json",
        path_str(&corpus("port-conflict.json")),
    ]);
    assert_eq!(code(&out), 2);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(v["exitCode"], 2);
    let file = &v["files"][0];
    assert_eq!(file["errors"], 1);
    let findings = file["findings"].as_array().expect("findings array");
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(f["severity"], "error");
    assert_eq!(f["rule"], "port-conflict");
    assert_eq!(
        f["path"],
        "/modulesContent/$edgeAgent/properties.desired/modules/IoTEdgeAPIProxy/settings/createOptions#/HostConfig/PortBindings/443~1tcp"
    );
    assert!(f["message"].as_str().unwrap().contains("edgeHub"), "{f}");
    assert!(!f["fix"].as_str().unwrap().is_empty());
    assert!(file["edgeAgentTwinSize"]["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn malformed_and_truncated_files_give_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"modulesContent\": {\n    \"$edgeAgent\": {,\n  }\n}\n",
    )
    .unwrap();
    let out = run(&["manifest", "check", path_str(&bad)]);
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), 2);
    assert!(
        stdout.contains(&format!("error[json-syntax] {}:3:20", bad.display())),
        "{stdout}"
    );

    let top = std::fs::read_to_string(manifests_dir().join("top-layer.json")).unwrap();
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, &top[..top.len() / 3]).unwrap();
    let out = run(&["manifest", "check", "--format", "json", path_str(&cut)]);
    assert_eq!(code(&out), 2);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["files"][0]["findings"][0];
    assert_eq!(f["rule"], "json-syntax");
    assert!(f["message"].as_str().unwrap().contains("truncated"), "{f}");
    let last_line = top[..top.len() / 3].lines().count() as u64;
    assert_eq!(f["line"], last_line, "{f}");
    assert!(f["column"].as_u64().unwrap() >= 1);
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let out = run(&["manifest", "check", "/nonexistent/dir/manifest.json"]);
    let (_, stderr) = text(&out);
    assert_eq!(code(&out), 2);
    assert!(
        stderr.contains("/nonexistent/dir/manifest.json"),
        "{stderr}"
    );
}

const SITE_ENV: &str = "\
# site values for the top layer
IOTEDGE_VERSION=1.5.0
REGISTRY_ADDRESS=myregistry.azurecr.io
REGISTRY_USERNAME=pull-token
REGISTRY_PASSWORD=\"pull \\\"secret\\\" pw\"
CLOUD_REGISTRY_ADDRESS=myregistry.westeurope.data.azurecr.io
CONNECTED_REGISTRY_NAME=factory1
SYNC_TOKEN_NAME=factory1-sync
SYNC_TOKEN_PASSWORD=Sync-Secret-7f3a9
EDGE_AGENT_STORAGE_DIR=/var/lib/iotedge-storage/edgeAgent
EDGE_HUB_STORAGE_DIR=/var/lib/iotedge-storage/edgeHub
REGISTRY_DATA_DIR=/var/lib/connected-registry
PROXY_CERT_DIR=/etc/connected-registry/certs
";

#[test]
fn rendered_top_layer_manifest_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("site.env");
    std::fs::write(&env, SITE_ENV).unwrap();
    let out_file = dir.path().join("top.json");
    let template = manifests_dir().join("top-layer.json");
    let out = render(&template, &env, Some(&out_file));
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let rendered = std::fs::read_to_string(&out_file).unwrap();
    assert!(!rendered.contains('<'), "a placeholder is left: {rendered}");
    let v: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let agent = &v["modulesContent"]["$edgeAgent"]["properties.desired"];
    assert_eq!(
        agent["systemModules"]["edgeHub"]["settings"]["image"],
        "mcr.microsoft.com/azureiotedge-hub:1.5.0"
    );
    assert_eq!(
        agent["runtime"]["settings"]["registryCredentials"]["registry"]["password"],
        "pull \\\"secret\\\" pw"
    );
    assert!(
        agent["modules"]["connectedRegistry"]["settings"]["createOptions"]
            .as_str()
            .unwrap()
            .contains("/var/lib/connected-registry:/var/acr/data")
    );

    let out = run(&["manifest", "check", path_str(&out_file)]);
    assert_eq!(code(&out), 0, "{}", text(&out).0);
}

#[test]
fn check_never_prints_the_sync_token_password() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("site.env");
    std::fs::write(&env, SITE_ENV).unwrap();
    let out_file = dir.path().join("top.json");
    let template = manifests_dir().join("top-layer.json");
    assert_eq!(code(&render(&template, &env, Some(&out_file))), 0);
    // Break the connection string (plain http to the cloud, and a duplicated field) so the
    // checker reports on it.
    let broken = std::fs::read_to_string(&out_file).unwrap().replace(
        "ParentEndpointProtocol=https",
        "ParentEndpointProtocol=http",
    );
    std::fs::write(&out_file, &broken).unwrap();
    let out = run(&["manifest", "check", "--format", "json", path_str(&out_file)]);
    assert_eq!(code(&out), 2);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("parent-protocol"), "{stdout}");
    assert!(
        !stdout.contains("Sync-Secret") && !stderr.contains("Sync-Secret"),
        "password leaked: {stdout}{stderr}"
    );

    let dup = broken.replace(
        "ParentEndpointProtocol=http",
        "ParentEndpointProtocol=https;SyncTokenPassword=Sync-Secret-again",
    );
    std::fs::write(&out_file, dup).unwrap();
    let out = run(&["manifest", "check", path_str(&out_file)]);
    let (stdout, stderr) = text(&out);
    assert_eq!(code(&out), 2);
    assert!(
        stdout.contains("connection-string") && stdout.contains("SyncTokenPassword"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("Sync-Secret") && !stderr.contains("Sync-Secret"),
        "password leaked: {stdout}{stderr}"
    );
}

#[test]
fn render_fails_on_unfilled_placeholders_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("partial.env");
    std::fs::write(
        &env,
        SITE_ENV
            .replace("SYNC_TOKEN_NAME=factory1-sync\n", "")
            .replace("IOTEDGE_VERSION=1.5.0\n", ""),
    )
    .unwrap();
    let out_file = dir.path().join("top.json");
    let template = manifests_dir().join("top-layer.json");
    let out = render(&template, &env, Some(&out_file));
    let (_, stderr) = text(&out);
    assert_eq!(code(&out), 2);
    assert!(
        stderr.contains("SYNC_TOKEN_NAME at line") && stderr.contains("IOTEDGE_VERSION at line"),
        "{stderr}"
    );
    assert!(!out_file.exists(), "a partial manifest was written");
}

#[test]
fn render_fills_dollar_brace_templates_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("deployment.template.json");
    std::fs::write(&template, "{\"image\": \"${REGISTRY}/connected-registry:${VERSION}\", \"ttl\": ${TTL}, \"keep\": \"$upstream\"}").unwrap();
    let env = dir.path().join(".env");
    std::fs::write(
        &env,
        "REGISTRY=myregistry.azurecr.io\nVERSION=0.1.0\nTTL=7200\n",
    )
    .unwrap();
    let out = render(&template, &env, None);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image"], "myregistry.azurecr.io/connected-registry:0.1.0");
    assert_eq!(v["ttl"], 7200);
    assert_eq!(v["keep"], "$upstream");

    std::fs::write(
        &env,
        "REGISTRY=myregistry.azurecr.io\nVERSION=0.1.0\nTTL=not-a-number\n",
    )
    .unwrap();
    let out = render(&template, &env, None);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out).1.contains("not valid JSON at line 1"),
        "{:?}",
        text(&out)
    );
}
