//! The one-command local setup: `serve --proxy-listen` runs the built-in API proxy with a
//! generated development chain, and a real client that trusts only the development root pushes
//! and pulls over verified TLS.

#![forbid(unsafe_code)]

mod common;

use common::oci::Layout;
use common::{bin, free_port, run_ok, Proc};

#[test]
fn serve_with_proxy_listen_pushes_and_pulls_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = format!("127.0.0.1:{}", free_port());
    let tls = format!("127.0.0.1:{}", free_port());
    let _registry = Proc::start(
        &bin(),
        &[
            "serve",
            "--listen",
            &http,
            "--data",
            data.to_str().unwrap(),
            "--proxy-listen",
            &tls,
        ],
        &[],
        tls.parse().unwrap(),
        dir.path().join("serve.log"),
    );
    // skopeo trusts exactly the CA files in --cert-dir.
    let cert_dir = dir.path().join("trust");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let root = certs::dev::DevChain::in_dir(&data.join("certs")).root_ca;
    std::fs::copy(&root, cert_dir.join("ca.crt")).unwrap();
    let cert_dir = cert_dir.to_str().unwrap();

    let mut src = Layout::create(&dir.path().join("src"));
    let image = src.add_image("amd64", &[300_000, 20_000]);
    src.tag("v1", &image.manifest);
    let remote = format!("docker://{tls}/dev/app:v1");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=true",
            "--dest-cert-dir",
            cert_dir,
            &src.reference("v1"),
            &remote,
        ],
    );
    let back = dir.path().join("back");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=true",
            "--src-cert-dir",
            cert_dir,
            &remote,
            &format!("oci:{}:v1", back.display()),
        ],
    );
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=true",
            "--cert-dir",
            cert_dir,
            &remote,
        ],
    );
    assert_eq!(common::api::sha256(raw.as_bytes()), image.manifest.digest);

    // Without the development root, verification fails: TLS really is verified.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=true",
            "--cert-dir",
            empty.to_str().unwrap(),
            &remote,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client that does not trust the dev root must refuse"
    );
}
