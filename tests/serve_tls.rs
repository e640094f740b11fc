//! The one-command local setup: `serve --proxy-listen` runs the built-in API proxy with a
//! generated development chain, and a real client that trusts only the development root pushes
//! and pulls over verified TLS. On every address the development certificate names the machine
//! and `--proxy-name`s; `--proxy-cert`/`--proxy-key` serve a real chain instead.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;

use common::oci::Layout;
use common::tls::TestCa;
use common::{bin, free_port, run_ok, Proc};

/// `serve --proxy-listen IP:PORT` on a fresh port, with data in `dir/data` and `extra` flags;
/// waits for the TLS port on loopback (whatever address `ip` is) and returns it.
fn serve_tls(dir: &Path, name: &str, ip: &str, extra: &[&str]) -> (Proc, String) {
    let data = dir.join("data");
    let http = format!("127.0.0.1:{}", free_port());
    let port = free_port().to_string();
    let tls = format!("{ip}:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &http,
        "--data",
        data.to_str().unwrap(),
        "--proxy-listen",
        &tls,
    ];
    args.extend_from_slice(extra);
    // No names from the environment: what the certificate holds comes from the flags and
    // the machine.
    let proc = Proc::start(
        &bin(),
        &args,
        &[
            ("HOSTNAME", ""),
            ("IOTEDGE_GATEWAYHOSTNAME", ""),
            ("CONNECTED_REGISTRY_AUTH", "none"),
        ],
        format!("127.0.0.1:{port}").parse().unwrap(),
        dir.join(format!("{name}.log")),
    );
    (proc, port)
}

/// The names in the subjectAltName extension of a PEM certificate file, as `openssl x509`
/// prints them (`DNS:localhost`, `IP Address:127.0.0.1`).
fn sans(cert: &Path) -> Vec<String> {
    let text = run_ok(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            cert.to_str().unwrap(),
        ],
    );
    text.lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The leaf certificate a TLS server on 127.0.0.1:`port` presents, PEM.
fn served_leaf(port: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl (./test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from 127.0.0.1:{port}: {text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].to_string()
}

/// On 127.0.0.1 the development certificate names only loopback; restarted on 0.0.0.0 with
/// `--proxy-name`s, the server certificate is issued again for this machine's hostname and the
/// extra names, under the same root (clients that trust it keep trusting).
#[test]
fn dev_certificate_on_every_address_names_the_machine_and_extra_names() {
    let dir = tempfile::tempdir().unwrap();
    let chain = certs::dev::DevChain::in_dir(&dir.path().join("data/certs"));
    let (mut first, _) = serve_tls(dir.path(), "loopback", "127.0.0.1", &[]);
    let before = sans(&chain.server_chain);
    let root = std::fs::read(&chain.root_ca).unwrap();
    first.kill();
    let hostname = certs::host::hostname().expect("this machine has a hostname");
    assert_eq!(
        before,
        ["DNS:localhost", "IP Address:127.0.0.1"],
        "on loopback the certificate names loopback only"
    );

    let (_all, port) = serve_tls(
        dir.path(),
        "all",
        "0.0.0.0",
        &[
            "--proxy-name",
            "registry.plant.test",
            "--proxy-name",
            "192.0.2.77",
        ],
    );
    let after = sans(&chain.server_chain);
    let mut expected = vec![
        format!("DNS:{hostname}"),
        "DNS:registry.plant.test".into(),
        "IP Address:192.0.2.77".into(),
        "DNS:localhost".into(),
        "IP Address:127.0.0.1".into(),
    ];
    // Every IPv4 address of the machine (openssl spells IPv6 in its own long form).
    expected.extend(
        certs::host::addresses()
            .iter()
            .filter(|a| a.is_ipv4())
            .map(|a| format!("IP Address:{a}")),
    );
    for name in expected {
        assert!(after.contains(&name), "{name} missing: {after:?}");
    }
    assert_eq!(
        std::fs::read(&chain.root_ca).unwrap(),
        root,
        "the root CA must stay when the server certificate is issued again"
    );
    assert_eq!(
        served_leaf(&port),
        std::fs::read_to_string(&chain.server_chain)
            .unwrap()
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap(),
        "the proxy serves the re-issued certificate"
    );
}

/// `--proxy-cert`/`--proxy-key`: the built-in proxy serves the operator's chain, and no
/// development chain is made.
#[test]
fn proxy_cert_and_key_serve_the_given_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let leaf = ca.server("real", "registry.plant.test");
    let (_serve, port) = serve_tls(
        dir.path(),
        "serve",
        "127.0.0.1",
        &[
            "--proxy-cert",
            leaf.chain.to_str().unwrap(),
            "--proxy-key",
            leaf.key.to_str().unwrap(),
        ],
    );
    let served = served_leaf(&port);
    let given = std::fs::read_to_string(&leaf.cert).unwrap();
    assert!(
        given.starts_with(&served),
        "the proxy must serve the given certificate"
    );
    let out = run_ok(
        "curl",
        &[
            "-sS",
            "--fail",
            "--cacert",
            ca.root.to_str().unwrap(),
            &format!("https://127.0.0.1:{port}/v2/"),
        ],
    );
    assert!(out.contains('{'), "{out}");
    assert!(
        !dir.path().join("data/certs").exists(),
        "no development chain when a certificate is given"
    );
}

#[test]
fn serve_with_proxy_listen_pushes_and_pulls_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_registry, port) = serve_tls(dir.path(), "serve", "127.0.0.1", &[]);
    let tls = format!("127.0.0.1:{port}");
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
