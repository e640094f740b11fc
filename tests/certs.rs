//! End-to-end tests of `connected-registry certs`: the real binary, checked by OpenSSL (a
//! real, independent verifier) and diagnosing deliberately broken chains, offline (`verify`)
//! and over real TLS connections to `openssl s_server` (`doctor`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use certs::gen::{self, Ca, KeyType};
use certs::rcgen::{IsCa, KeyUsagePurpose};
use certs::time::{Duration, OffsetDateTime};
use common::{bin, free_port, run_ok, Proc};

/// Runs the binary; returns (exit code, stdout, stderr).
fn cr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run connected-registry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cr_ok(args: &[&str]) -> String {
    let (code, out, err) = cr(args);
    assert_eq!(
        code, 0,
        "connected-registry {args:?} failed\nstdout: {out}\nstderr: {err}"
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `openssl verify`; returns whether it accepted and its output.
fn openssl_verify(root: &Path, untrusted: Option<&Path>, leaf: &Path) -> (bool, String) {
    let mut args = vec!["verify", "-CAfile", s(root)];
    if let Some(u) = untrusted {
        args.extend(["-untrusted", s(u)]);
    }
    args.push(s(leaf));
    let out = Command::new("openssl")
        .args(&args)
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `certs issue server --ca CA --hostname HOSTNAME --out OUT EXTRA...`, the arguments.
fn issue_server<'a>(
    ca: &'a str,
    hostname: &'a str,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "certs",
        "issue",
        "server",
        "--ca",
        ca,
        "--hostname",
        hostname,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// `certs issue client --ca CA --name NAME --out OUT`, the arguments.
fn issue_client<'a>(ca: &'a str, name: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "certs",
        "issue",
        "client",
        "--ca",
        ca,
        "--name",
        name,
        "--out",
        s(out),
    ]
}

/// `openssl x509 -noout -text` of the certificate file `cert`: OpenSSL's reading of it.
fn x509_text(cert: &Path) -> String {
    run_ok("openssl", &["x509", "-noout", "-text", "-in", s(cert)])
}

fn new_chain(dir: &Path, name: &str, key_type: &str) -> PathBuf {
    let out = dir.join(name.replace(' ', "-"));
    cr_ok(&[
        "certs",
        "new-chain",
        "--out",
        s(&out),
        "--name",
        name,
        "--key-type",
        key_type,
    ]);
    out
}

#[test]
fn every_key_type_makes_a_chain_openssl_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    for key_type in ["ecdsa-p256", "ed25519", "rsa2048"] {
        let ca = new_chain(tmp.path(), &format!("KT {key_type}"), key_type);
        let srv = tmp.path().join(format!("srv-{key_type}"));
        cr_ok(&issue_server(
            s(&ca),
            "Edge-Gw.Local",
            &srv,
            &["--san", "127.0.0.1", "--key-type", key_type],
        ));
        let root = ca.join("root-ca.cert.pem");
        let untrusted = ca.join("edge-ca-chain.cert.pem");
        let (ok, text) =
            openssl_verify(&root, Some(&untrusted), &srv.join("edge-gw.local.cert.pem"));
        assert!(
            ok,
            "{key_type}: openssl verify refused the server certificate: {text}"
        );
        let (ok, text) = openssl_verify(&root, Some(&untrusted), &ca.join("edge-ca.cert.pem"));
        assert!(ok, "{key_type}: openssl verify refused the edge CA: {text}");
        // Keys are private to the owner.
        for key in [
            ca.join("root-ca.key.pem"),
            ca.join("intermediate-ca.key.pem"),
            ca.join("edge-ca.key.pem"),
            srv.join("edge-gw.local.key.pem"),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
        }
        let text = x509_text(&srv.join("edge-gw.local.cert.pem"));
        let expected_alg = match key_type {
            "ecdsa-p256" => "id-ecPublicKey",
            "ed25519" => "ED25519",
            _ => "rsaEncryption",
        };
        assert!(
            text.contains(expected_alg),
            "{key_type}: key algorithm missing in\n{text}"
        );
    }
    // RSA 4096 (one key: generating it is slow): a server key under an ECDSA chain.
    let ca = tmp.path().join("KT-ecdsa-p256");
    let srv = tmp.path().join("srv-rsa4096");
    cr_ok(&issue_server(
        s(&ca),
        "big.local",
        &srv,
        &["--key-type", "rsa4096"],
    ));
    let leaf = srv.join("big.local.cert.pem");
    let (ok, text) = openssl_verify(
        &ca.join("root-ca.cert.pem"),
        Some(&ca.join("edge-ca-chain.cert.pem")),
        &leaf,
    );
    assert!(ok, "rsa4096: {text}");
    let text = x509_text(&leaf);
    assert!(text.contains("Public-Key: (4096 bit)"), "{text}");
}

#[test]
fn openssl_shows_expected_names_usages_and_constraints() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_chain(tmp.path(), "Layer One", "ecdsa-p256");
    let srv = tmp.path().join("srv");
    cr_ok(&issue_server(
        &format!("{}/edge-ca", s(&ca)),
        "GW.Example.Org",
        &srv,
        &["--san", "gw-alt.example.org,10.1.2.3"],
    ));
    let leaf = x509_text(&srv.join("gw.example.org.cert.pem"));
    assert!(
        leaf.contains("Subject: CN = gw.example.org"),
        "CN must be the hostname in lower case:\n{leaf}"
    );
    assert!(leaf.contains("Issuer: CN = Layer One Edge CA"), "{leaf}");
    assert!(leaf.contains("DNS:gw.example.org"), "{leaf}");
    assert!(leaf.contains("DNS:gw-alt.example.org"), "{leaf}");
    assert!(leaf.contains("IP Address:10.1.2.3"), "{leaf}");
    assert!(leaf.contains("CA:FALSE"), "{leaf}");
    assert!(leaf.contains("Digital Signature"), "{leaf}");
    assert!(leaf.contains("TLS Web Server Authentication"), "{leaf}");

    for (file, cn, pathlen) in [
        ("root-ca.cert.pem", "Layer One Root CA", None),
        (
            "intermediate-ca.cert.pem",
            "Layer One Intermediate CA",
            Some("pathlen:1"),
        ),
        ("edge-ca.cert.pem", "Layer One Edge CA", Some("pathlen:0")),
    ] {
        let text = x509_text(&ca.join(file));
        assert!(
            text.contains(&format!("Subject: CN = {cn}")),
            "{file}:\n{text}"
        );
        assert!(text.contains("CA:TRUE"), "{file} must be a CA:\n{text}");
        assert!(
            text.contains("Certificate Sign"),
            "{file} must have keyCertSign:\n{text}"
        );
        if let Some(p) = pathlen {
            assert!(text.contains(p), "{file} must have {p}:\n{text}");
        }
    }

    // The full chain is leaf, edge CA, intermediate: openssl verifies it as served.
    let full = srv.join("gw.example.org-full-chain.cert.pem");
    let (ok, text) = openssl_verify(&ca.join("root-ca.cert.pem"), Some(&full), &full);
    assert!(ok, "{text}");

    let client = tmp.path().join("client");
    cr_ok(&issue_client(s(&ca), "child-device-1", &client));
    let text = x509_text(&client.join("child-device-1.cert.pem"));
    assert!(text.contains("Subject: CN = child-device-1"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    let (ok, text) = openssl_verify(
        &ca.join("root-ca.cert.pem"),
        Some(&ca.join("edge-ca-chain.cert.pem")),
        &client.join("child-device-1.cert.pem"),
    );
    assert!(ok, "{text}");
}

#[test]
fn inspect_describes_each_certificate_and_the_order() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_chain(tmp.path(), "Insp", "ecdsa-p256");
    let srv = tmp.path().join("srv");
    cr_ok(&issue_server(
        s(&ca),
        "insp.local",
        &srv,
        &["--san", "127.0.0.1"],
    ));
    let full = srv.join("insp.local-full-chain.cert.pem");
    let out = cr_ok(&["certs", "inspect", s(&full)]);
    let fp = run_ok(
        "openssl",
        &["x509", "-noout", "-fingerprint", "-sha256", "-in", s(&full)],
    );
    let fp = fp.trim().rsplit('=').next().unwrap().to_string();
    assert!(
        out.contains(&fp),
        "inspect must show the SHA-256 fingerprint {fp}:\n{out}"
    );
    for needle in [
        "Certificate 1 of 3: server certificate",
        "subject:      CN=insp.local",
        "issuer:       CN=Insp Edge CA",
        "DNS:insp.local, IP:127.0.0.1",
        "ECDSA P-256",
        "valid now",
        "Chain order: right",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // Leaf last: inspect says the order is wrong.
    let wrong = tmp.path().join("wrong.pem");
    let edge_chain = std::fs::read_to_string(ca.join("edge-ca-chain.cert.pem")).unwrap();
    let leaf = std::fs::read_to_string(srv.join("insp.local.cert.pem")).unwrap();
    std::fs::write(&wrong, format!("{edge_chain}{leaf}")).unwrap();
    let out = cr_ok(&["certs", "inspect", s(&wrong)]);
    assert!(out.contains("Chain order: WRONG"), "{out}");
}

/// Writes PEM text to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// A complete test chain built with the library, so individual parts can be broken.
struct Lab {
    dir: PathBuf,
    intermediate: Ca,
    edge: Ca,
    root_pem: PathBuf,
}

impl Lab {
    fn new(dir: &Path, name: &str) -> Lab {
        let (nb, na) = gen::validity(365).unwrap();
        let key = || gen::generate_key(KeyType::EcdsaP256).unwrap();
        let root = Ca::new_root(
            gen::ca_params(&format!("{name} Root CA"), None, nb, na, None),
            key(),
        )
        .unwrap();
        let intermediate = root
            .new_sub_ca(
                gen::ca_params(&format!("{name} Intermediate CA"), None, nb, na, Some(1)),
                key(),
            )
            .unwrap();
        let edge = intermediate
            .new_sub_ca(
                gen::ca_params(&format!("{name} Edge CA"), None, nb, na, Some(0)),
                key(),
            )
            .unwrap();
        let root_pem = write(dir, &format!("{name}-root.pem"), &root.cert_pem);
        Lab {
            dir: dir.to_owned(),
            intermediate,
            edge,
            root_pem,
        }
    }

    /// A server certificate for `host` from `ca`, valid from `nb` to `na`: (leaf, full chain, key) files.
    fn server(
        &self,
        ca: &Ca,
        file: &str,
        host: &str,
        nb: OffsetDateTime,
        na: OffsetDateTime,
    ) -> (PathBuf, PathBuf, PathBuf) {
        let params = gen::server_params(host, &["127.0.0.1".into()], nb, na).unwrap();
        let issued =
            gen::issue_with(ca, &params, gen::generate_key(KeyType::EcdsaP256).unwrap()).unwrap();
        let f = issued.write(&self.dir, file).unwrap();
        (f.cert, f.full_chain, f.key)
    }

    /// A client certificate named `edge.test` from the edge CA: the right name, the wrong usage
    /// for a server.
    fn client_for_edge_test(&self) -> gen::Issued {
        gen::issue_client(
            &self.edge,
            &gen::ClientOptions {
                name: "edge.test".into(),
                days: 30,
                key_type: KeyType::EcdsaP256,
            },
        )
        .unwrap()
    }

    fn good_server(&self, file: &str) -> (PathBuf, PathBuf, PathBuf) {
        let now = OffsetDateTime::now_utc();
        self.server(
            &self.edge,
            file,
            "edge.test",
            now - Duration::hours(1),
            now + Duration::days(30),
        )
    }
}

/// `certs verify` on a chain file; returns (exit code, stdout).
fn verify(chain: &Path, trust: &Path, host: Option<&str>) -> (i32, String) {
    let mut args = vec!["certs", "verify", "--chain", s(chain), "--trust", s(trust)];
    if let Some(h) = host {
        args.extend(["--hostname", h]);
    }
    let (code, out, err) = cr(&args);
    (code, format!("{out}{err}"))
}

fn assert_rejected(case: &str, (code, out): (i32, String), needle: &str) {
    assert_eq!(code, 1, "{case}: expected exit status 1 (refused):\n{out}");
    assert!(
        out.contains("REJECTED"),
        "{case}: expected REJECTED:\n{out}"
    );
    assert!(
        out.contains(needle),
        "{case}: expected the diagnosis {needle:?}:\n{out}"
    );
}

#[test]
fn verify_explains_each_broken_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::new(tmp.path(), "Lab");
    let now = OffsetDateTime::now_utc();
    let root = &lab.root_pem;

    // Good: accepted by us and by openssl.
    let (leaf, full, _) = lab.good_server("good");
    let (code, out) = verify(&full, root, Some("edge.test"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ACCEPTED"), "{out}");
    assert!(openssl_verify(root, Some(&full), &full).0);

    // Missing intermediate: only the leaf is served.
    assert_rejected(
        "missing intermediate",
        verify(&leaf, root, Some("edge.test")),
        "missing intermediate",
    );
    assert!(
        !openssl_verify(root, None, &leaf).0,
        "openssl must refuse it too"
    );

    // Wrong order: leaf last.
    let chain_pem = lab.edge.chain_pem.clone();
    let leaf_pem = std::fs::read_to_string(&leaf).unwrap();
    let wrong = write(
        tmp.path(),
        "wrong-order.pem",
        &format!("{chain_pem}{leaf_pem}"),
    );
    assert_rejected(
        "leaf last",
        verify(&wrong, root, Some("edge.test")),
        "wrong order",
    );

    // Intermediates swapped: rustls accepts, but it is reported.
    let swapped = write(
        tmp.path(),
        "swapped.pem",
        &format!(
            "{leaf_pem}{}{}",
            lab.intermediate.cert_pem, lab.edge.cert_pem
        ),
    );
    let (code, out) = verify(&swapped, root, Some("edge.test"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Warnings") && out.contains("wrong order"),
        "{out}"
    );

    // Expired.
    let (_, expired, _) = lab.server(
        &lab.edge,
        "expired",
        "edge.test",
        now - Duration::days(10),
        now - Duration::days(1),
    );
    assert_rejected(
        "expired",
        verify(&expired, root, Some("edge.test")),
        "expired: 'CN=edge.test'",
    );
    assert!(!openssl_verify(root, Some(&expired), &expired).0);

    // Not yet valid.
    let (_, future, _) = lab.server(
        &lab.edge,
        "future",
        "edge.test",
        now + Duration::days(1),
        now + Duration::days(10),
    );
    assert_rejected(
        "not yet valid",
        verify(&future, root, Some("edge.test")),
        "not yet valid: 'CN=edge.test'",
    );
    assert!(!openssl_verify(root, Some(&future), &future).0);

    // Hostname not in SAN.
    assert_rejected(
        "hostname",
        verify(&full, root, Some("other.test")),
        "hostname not in SAN: other.test",
    );
    assert_rejected(
        "ip",
        verify(&full, root, Some("10.9.9.9")),
        "hostname not in SAN: 10.9.9.9",
    );

    // CA flag missing: the "edge CA" that signed the leaf is not a CA.
    let (nb, na) = gen::validity(30).unwrap();
    let mut not_ca = gen::ca_params("Lab Not-A-CA", None, nb, na, None);
    not_ca.is_ca = IsCa::ExplicitNoCa;
    let not_ca = lab
        .intermediate
        .new_sub_ca(not_ca, gen::generate_key(KeyType::EcdsaP256).unwrap())
        .unwrap();
    let (_, no_ca_flag, _) = lab.server(&not_ca, "no-ca-flag", "edge.test", nb, na);
    assert_rejected(
        "CA flag",
        verify(&no_ca_flag, root, Some("edge.test")),
        "is not a CA (basicConstraints CA:TRUE is missing)",
    );
    assert!(!openssl_verify(root, Some(&no_ca_flag), &no_ca_flag).0);

    // Key usage wrong on a CA: no keyCertSign.
    let mut no_sign = gen::ca_params("Lab No-Sign CA", None, nb, na, Some(0));
    no_sign.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let no_sign = lab
        .intermediate
        .new_sub_ca(no_sign, gen::generate_key(KeyType::EcdsaP256).unwrap())
        .unwrap();
    let (_, bad_ku, _) = lab.server(&no_sign, "bad-ku", "edge.test", nb, na);
    let (code, out) = verify(&bad_ku, root, Some("edge.test"));
    assert!(out.contains("rustls alone would accept it"), "{out}");
    assert_rejected("CA key usage", (code, out), "lacks keyCertSign");
    assert!(!openssl_verify(root, Some(&bad_ku), &bad_ku).0);

    // Key usage wrong on the leaf: a client certificate served as a server certificate.
    let client = lab.client_for_edge_test();
    let client = write(tmp.path(), "client-chain.pem", &client.full_chain_pem);
    let (code, out) = verify(&client, root, None);
    assert_rejected(
        "client as server",
        (code, out.clone()),
        "but not serverAuth",
    );
    assert!(out.contains("it is a client certificate"), "{out}");

    // A CA certificate served as the leaf.
    let ca_leaf = write(tmp.path(), "ca-leaf.pem", &lab.edge.chain_pem);
    assert_rejected(
        "CA as leaf",
        verify(&ca_leaf, root, None),
        "is a CA certificate (CA:TRUE), not a server certificate",
    );

    // Another layer's root: the chain is fine, the trust bundle lacks its root.
    let other = Lab::new(tmp.path(), "Other");
    let (code, out) = verify(&full, &other.root_pem, Some("edge.test"));
    assert_rejected(
        "untrusted root",
        (code, out.clone()),
        "does not contain 'CN=Lab Root CA'",
    );
    assert!(
        out.contains("CN=Other Root CA"),
        "must list what the bundle holds:\n{out}"
    );
    assert!(!openssl_verify(&other.root_pem, Some(&full), &full).0);

    // Same names, different keys (a regenerated chain): signature does not verify.
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let regenerated = Lab::new(&again, "Lab");
    let (code, out) = verify(&full, &regenerated.root_pem, Some("edge.test"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no certificate of that name") && out.contains("signed it"),
        "{out}"
    );
}

/// `openssl s_server` presenting `cert` (leaf) + `chain` (the rest, as given) with `key`.
fn s_server(dir: &Path, cert: &Path, key: &Path, chain: Option<&Path>) -> Proc {
    let port = free_port();
    let accept = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_server",
        "-quiet",
        "-accept",
        accept.as_str(),
        "-cert",
        s(cert),
        "-key",
        s(key),
    ];
    if let Some(c) = chain {
        args.extend(["-cert_chain", s(c)]);
    }
    let log = dir.join(format!("s_server-{port}.log"));
    Proc::start(
        Path::new("openssl"),
        &args,
        &[],
        accept.parse().unwrap(),
        log,
    )
}

fn doctor(proc: &Proc, trust: &Path, host: Option<&str>) -> (i32, String) {
    let url = format!("https://{}", proc.addr);
    let mut args = vec!["certs", "doctor", url.as_str(), "--trust", s(trust)];
    if let Some(h) = host {
        args.extend(["--hostname", h]);
    }
    let (code, out, err) = cr(&args);
    (code, format!("{out}{err}"))
}

#[test]
fn doctor_diagnoses_live_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::new(tmp.path(), "Parent");
    let now = OffsetDateTime::now_utc();
    let (leaf, _full, key) = lab.good_server("srv");
    let rest = write(tmp.path(), "rest.pem", &lab.edge.chain_pem);

    // Good server, checked by IP (127.0.0.1 is a SAN) and by name.
    let good = s_server(tmp.path(), &leaf, &key, Some(&rest));
    let (code, out) = doctor(&good, &lab.root_pem, None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("presented 3 certificate(s)") && out.contains("ACCEPTED"),
        "{out}"
    );
    let (code, out) = doctor(&good, &lab.root_pem, Some("edge.test"));
    assert_eq!(code, 0, "{out}");
    // ... and openssl s_client agrees, trusting only the root.
    let sc = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &good.addr.to_string(),
            "-CAfile",
            s(&lab.root_pem),
            "-verify_return_error",
            "-verify_hostname",
            "edge.test",
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        sc.status.success(),
        "s_client: {}",
        String::from_utf8_lossy(&sc.stderr)
    );

    // Wrong name.
    let (code, out) = doctor(&good, &lab.root_pem, Some("wrong.test"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hostname not in SAN: wrong.test"), "{out}");

    // Nested edge: the child's bundle has only its own layer's root.
    let child = Lab::new(tmp.path(), "Child");
    let (code, out) = doctor(&good, &child.root_pem, None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("does not contain 'CN=Parent Root CA'"),
        "{out}"
    );
    assert!(
        out.contains("Nested edge: the server at")
            && out.contains("chains up to the root CA 'CN=Parent Root CA'")
            && out.contains(&format!("trust bundle {}", s(&child.root_pem))),
        "{out}"
    );
    drop(good);

    // Missing intermediate: the server sends only its own certificate.
    let bare = s_server(tmp.path(), &leaf, &key, None);
    let (code, out) = doctor(&bare, &lab.root_pem, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing intermediate"), "{out}");
    drop(bare);

    // Expired.
    let (exp_leaf, _, exp_key) = lab.server(
        &lab.edge,
        "exp",
        "edge.test",
        now - Duration::days(10),
        now - Duration::days(1),
    );
    let expired = s_server(tmp.path(), &exp_leaf, &exp_key, Some(&rest));
    let (code, out) = doctor(&expired, &lab.root_pem, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expired: 'CN=edge.test'"), "{out}");
    drop(expired);

    // The edge CA itself served as the server's certificate.
    let ca_cert = write(tmp.path(), "edge-ca.pem", &lab.edge.cert_pem);
    let ca_key = write(tmp.path(), "edge-ca.key.pem", &lab.edge.key_pem());
    let ca_srv = s_server(tmp.path(), &ca_cert, &ca_key, None);
    let (code, out) = doctor(&ca_srv, &lab.root_pem, None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is a CA certificate (CA:TRUE), not a server certificate"),
        "{out}"
    );
    drop(ca_srv);

    // CAs after the leaf out of order: accepted, with a warning.
    let swapped = write(
        tmp.path(),
        "swapped-rest.pem",
        &format!("{}{}", lab.intermediate.cert_pem, lab.edge.cert_pem),
    );
    let sw = s_server(tmp.path(), &leaf, &key, Some(&swapped));
    let (code, out) = doctor(&sw, &lab.root_pem, None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Warnings") && out.contains("wrong order"),
        "{out}"
    );
    drop(sw);

    // A client certificate served as the server's.
    let client = lab.client_for_edge_test();
    let cf = client.write(tmp.path(), "cl").unwrap();
    let cl = s_server(tmp.path(), &cf.cert, &cf.key, Some(&rest));
    let (code, out) = doctor(&cl, &lab.root_pem, Some("edge.test"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("but not serverAuth"), "{out}");
    drop(cl);

    // Nothing listening: a clear error naming the target, exit 2.
    let port = free_port();
    let (code, out, err) = cr(&[
        "certs",
        "doctor",
        &format!("https://127.0.0.1:{port}"),
        "--trust",
        s(&lab.root_pem),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("cannot connect"),
        "{err}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_chain(tmp.path(), "Bad", "ecdsa-p256");
    let junk = write(tmp.path(), "junk.txt", "this is not a certificate\n");

    let (code, _, err) = cr(&["certs", "inspect", s(&junk)]);
    assert_eq!(code, 2);
    assert!(err.contains(s(&junk)) && err.contains("not PEM"), "{err}");
    // A key where a certificate belongs.
    let key = ca.join("root-ca.key.pem");
    let (code, out, err) = cr(&["certs", "inspect", s(&key)]);
    assert_eq!(code, 2);
    assert!(
        err.contains(s(&key)) && err.contains("private key, not a certificate"),
        "{err}"
    );
    assert!(
        !out.contains("PRIVATE") && !err.contains("PRIVATE KEY-----"),
        "never print key material"
    );
    let (code, _, err) = cr(&[
        "certs",
        "verify",
        "--chain",
        s(&junk),
        "--trust",
        s(&ca.join("root-ca.cert.pem")),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains(s(&junk)), "{err}");

    // A key that does not belong to the CA certificate.
    let other = new_chain(tmp.path(), "Other", "ecdsa-p256");
    let (code, _, err) = cr(&issue_server(
        s(&ca.join("edge-ca.cert.pem")),
        "h.test",
        tmp.path(),
        &["--ca-key", s(&other.join("edge-ca.key.pem"))],
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains(s(&other.join("edge-ca.key.pem"))) && err.contains("does not belong"),
        "{err}"
    );

    // An encrypted key without a passphrase.
    let enc = tmp.path().join("enc.key.pem");
    run_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            s(&enc),
        ],
    );
    let (code, _, err) = cr(&issue_server(
        s(&ca.join("edge-ca.cert.pem")),
        "h.test",
        tmp.path(),
        &["--ca-key", s(&enc)],
    ));
    assert_eq!(code, 2);
    assert!(err.contains(s(&enc)) && err.contains("encrypted"), "{err}");
    assert!(!err.contains("secret"));

    // A server certificate used as the issuing CA.
    cr_ok(&issue_server(s(&ca), "leaf.test", tmp.path(), &[]));
    let (code, _, err) = cr(&issue_server(
        s(&tmp.path().join("leaf.test.cert.pem")),
        "h.test",
        tmp.path(),
        &[],
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("leaf.test.cert.pem") && err.contains("is not a CA certificate"),
        "{err}"
    );

    // Bad hostname, bad key type: name the flag.
    let (code, _, err) = cr(&issue_server(s(&ca), "bad host", tmp.path(), &[]));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad host") && err.contains("DNS name"),
        "{err}"
    );
    let (code, _, err) = cr(&[
        "certs",
        "new-chain",
        "--out",
        s(&tmp.path().join("x")),
        "--key-type",
        "dsa",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ecdsa-p256, rsa2048, rsa4096, ed25519"),
        "{err}"
    );

    // new-chain refuses to overwrite a root.
    let (code, _, err) = cr(&["certs", "new-chain", "--out", s(&ca)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("root-ca.cert.pem") && err.contains("--force"),
        "{err}"
    );
}

/// `issue server` and `issue client` never replace an existing key and certificate silently:
/// without `--force` they refuse, name the files and the flag, and leave them as they were;
/// with `--force` they replace them. (`new-chain` follows the same rule, above.)
#[test]
fn issue_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_chain(tmp.path(), "Overwrite", "ecdsa-p256");
    let out = tmp.path().join("out");
    let cases: [(&str, Vec<&str>, &str); 2] = [
        (
            "server",
            issue_server(s(&ca), "edge.test", &out, &[]),
            "edge.test",
        ),
        ("client", issue_client(s(&ca), "device-1", &out), "device-1"),
    ];
    for (what, args, stem) in cases {
        cr_ok(&args);
        let key = out.join(format!("{stem}.key.pem"));
        let cert = out.join(format!("{stem}.cert.pem"));
        let before = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
        let (code, _, err) = cr(&args);
        assert_eq!(code, 2, "issue {what} again must be refused: {err}");
        assert!(
            err.contains(s(&key)) && err.contains(s(&cert)) && err.contains("--force"),
            "issue {what}: the error names the existing files and --force: {err}"
        );
        let after = (std::fs::read(&key).unwrap(), std::fs::read(&cert).unwrap());
        assert_eq!(
            before, after,
            "issue {what}: a refused issue changed the files"
        );
        cr_ok(&[&args[..], &["--force"]].concat());
        assert_ne!(
            before.0,
            std::fs::read(&key).unwrap(),
            "issue {what} --force writes a new key"
        );
    }
}
