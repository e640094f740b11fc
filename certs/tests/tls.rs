//! The certs library against real peers over loopback sockets: a rustls server serving a
//! generated chain is accepted by a rustls client and by `openssl s_client`; files that
//! cannot be served get errors naming them; renewal replaces a due certificate and a running
//! server (the proxy's `certs::reload::ReloadingServer`) presents the new one without restart; the development chain is made once and reused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use certs::gen::{self, ChainFiles, ChainOptions, KeyType, ServerOptions};
use certs::renew::{self, RenewPolicy};
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A rustls TLS server on loopback that answers each connection with "hello\n". It takes
/// its config from `config()` at every accept, so a reloading config is observable.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(config: impl Fn() -> Arc<rustls::ServerConfig> + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut tcp) = stream else { continue };
                let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let Ok(mut conn) = rustls::ServerConnection::new(config()) else {
                    continue;
                };
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let _ = tls.write_all(b"hello\n");
                let _ = tls.flush();
                let mut buf = [0u8; 64];
                let _ = tls.read(&mut buf);
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects with a rustls client trusting `root`, checks the greeting, returns the leaf.
fn rustls_fetch(
    addr: SocketAddr,
    root: &Path,
    host: &str,
) -> Result<CertificateDer<'static>, String> {
    let config = Arc::new(certs::tls::client_config(root).map_err(|e| e.to_string())?);
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut buf = [0u8; 6];
    tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"hello\n");
    let _ = tls.write_all(b"bye\n");
    let leaf = conn.peer_certificates().ok_or("no peer certificate")?[0].clone();
    Ok(leaf.into_owned())
}

fn s_client(addr: SocketAddr, root: &Path, host: &str) -> (bool, String) {
    let connect = addr.to_string();
    let mut args = vec![
        "s_client",
        "-connect",
        connect.as_str(),
        "-CAfile",
        s(root),
        "-verify_return_error",
    ];
    if host.parse::<std::net::IpAddr>().is_ok() {
        args.extend(["-verify_ip", host]);
    } else {
        args.extend(["-verify_hostname", host, "-servername", host]);
    }
    let out = Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client (./test.sh installs openssl)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `openssl ARGS...` and asserts it succeeded, showing its stderr if not.
fn openssl_ok(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (./test.sh installs openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    certs::tls::load_certs(path).unwrap()[0].clone()
}

fn chain_in(dir: &Path, name: &str, key_type: KeyType) -> ChainFiles {
    let opts = ChainOptions {
        key_type,
        name: name.into(),
        ..ChainOptions::default()
    };
    gen::new_chain(dir, &opts, false).unwrap()
}

#[test]
fn rustls_server_with_generated_chain_is_accepted_by_rustls_and_s_client() {
    let tmp = tempfile::tempdir().unwrap();
    for key_type in [KeyType::EcdsaP256, KeyType::Ed25519, KeyType::Rsa2048] {
        let dir = tmp.path().join(key_type.to_string());
        let chain = chain_in(&dir, &format!("T {key_type}"), key_type);
        let issued = gen::issue_server(
            &chain.edge_ca().unwrap(),
            &ServerOptions {
                hostname: "edge.test".into(),
                sans: vec!["127.0.0.1".into()],
                days: 90,
                key_type,
            },
        )
        .unwrap();
        let f = issued.write(&dir, "edge.test").unwrap();
        let config =
            Arc::new(certs::tls::server_config(&f.full_chain, &f.key, &[b"http/1.1"]).unwrap());
        let server = Server::start(move || config.clone());

        let leaf = rustls_fetch(server.addr, &chain.root_ca_cert, "edge.test").unwrap();
        assert_eq!(
            leaf,
            first_cert(&f.cert),
            "{key_type}: the server must present the issued certificate"
        );
        let (ok, text) = s_client(server.addr, &chain.root_ca_cert, "edge.test");
        assert!(
            ok && text.contains("Verify return code: 0 (ok)"),
            "{key_type}: s_client refused:\n{text}"
        );

        // Negative controls: another root, or another name, is refused by both.
        let other = chain_in(
            &tmp.path().join(format!("other-{key_type}")),
            "Other",
            KeyType::EcdsaP256,
        );
        let err = rustls_fetch(server.addr, &other.root_ca_cert, "edge.test").unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{key_type}: {err}");
        assert!(!s_client(server.addr, &other.root_ca_cert, "edge.test").0);
        assert!(rustls_fetch(server.addr, &chain.root_ca_cert, "wrong.test").is_err());
        assert!(!s_client(server.addr, &chain.root_ca_cert, "wrong.test").0);
    }
}

#[test]
fn unusable_files_get_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = chain_in(tmp.path(), "Err", KeyType::EcdsaP256);
    let ca = chain.edge_ca().unwrap();
    let opts = ServerOptions {
        hostname: "e.test".into(),
        sans: vec![],
        days: 90,
        key_type: KeyType::EcdsaP256,
    };
    let a = gen::issue_server(&ca, &opts)
        .unwrap()
        .write(tmp.path(), "a")
        .unwrap();
    let b = gen::issue_server(&ca, &opts)
        .unwrap()
        .write(tmp.path(), "b")
        .unwrap();

    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "hello, not PEM\n").unwrap();
    let err = certs::tls::server_config(&junk, &a.key, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains(s(&junk)) && err.contains("not PEM"), "{err}");
    let err = certs::tls::server_config(&a.full_chain, &junk, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(s(&junk)) && err.contains("no private key"),
        "{err}"
    );

    let err = certs::tls::server_config(&a.full_chain, &b.key, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(s(&a.full_chain)) && err.contains(s(&b.key)) && err.contains("does not fit"),
        "{err}"
    );

    let enc = tmp.path().join("enc.key.pem");
    openssl_ok(&[
        "pkcs8",
        "-topk8",
        "-in",
        s(&a.key),
        "-out",
        s(&enc),
        "-passout",
        "pass:pw",
        "-v2",
        "aes256",
    ]);
    let err = certs::tls::server_config(&a.full_chain, &enc, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains(s(&enc)) && err.contains("encrypted"), "{err}");

    let err = certs::tls::server_config(&chain.edge_ca_chain, &chain.edge_ca_key, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(s(&chain.edge_ca_chain)) && err.contains("is a CA certificate"),
        "{err}"
    );

    let missing = tmp.path().join("missing.pem");
    let err = certs::tls::server_config(&missing, &a.key, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(s(&missing)) && err.contains("cannot read"),
        "{err}"
    );
}

/// Keys made by OpenSSL in each format (PKCS#8, SEC1, PKCS#1 RSA) load into a server config.
#[test]
fn openssl_keys_in_every_format_load() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, genargs, convert) in [
        (
            "pkcs8-ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            None,
        ),
        (
            "sec1-ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Some("ec"),
        ),
        (
            "pkcs1-rsa",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Some("rsa"),
        ),
    ] {
        let key = tmp.path().join(format!("{name}.key"));
        let cert = tmp.path().join(format!("{name}.crt"));
        let mut args = vec!["genpkey"];
        args.extend(genargs);
        args.extend(["-out", s(&key)]);
        openssl_ok(&args);
        if let Some(tool) = convert {
            let mut a = vec![tool, "-in", s(&key), "-out", s(&key)];
            if tool == "rsa" {
                a.push("-traditional");
            }
            openssl_ok(&a);
        }
        openssl_ok(&[
            "req",
            "-x509",
            "-new",
            "-key",
            s(&key),
            "-out",
            s(&cert),
            "-subj",
            "/CN=k.test",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "subjectAltName=DNS:k.test",
        ]);
        let text = std::fs::read_to_string(&key).unwrap();
        let expected = match name {
            "sec1-ec" => "BEGIN EC PRIVATE KEY",
            "pkcs1-rsa" => "BEGIN RSA PRIVATE KEY",
            _ => "BEGIN PRIVATE KEY",
        };
        assert!(
            text.contains(expected),
            "{name}: openssl wrote another format:\n{text}"
        );
        certs::tls::server_config(&cert, &key, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Issues a server certificate whose life is 90% over (due for renewal at 80%).
fn nearly_expired(chain: &ChainFiles, dir: &Path, name: &str) -> gen::IssuedFiles {
    let now = OffsetDateTime::now_utc();
    let params = gen::server_params(
        "renew.test",
        &["127.0.0.1".into()],
        now - Duration::days(9),
        now + Duration::days(1),
    )
    .unwrap();
    let key = gen::generate_key(KeyType::EcdsaP256).unwrap();
    gen::issue_with(&chain.edge_ca().unwrap(), &params, key)
        .unwrap()
        .write(dir, name)
        .unwrap()
}

#[test]
fn renewal_replaces_a_due_certificate_and_a_running_server_presents_it() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = chain_in(tmp.path(), "Renew", KeyType::EcdsaP256);
    let f = nearly_expired(&chain, tmp.path(), "srv");
    let policy = RenewPolicy::default();

    let before = renew::status(&f.full_chain, &policy).unwrap();
    assert!(before.due(OffsetDateTime::now_utc()));
    assert!(
        before.days_to_expiry > 0.0 && before.days_to_expiry <= 1.0,
        "{}",
        before.days_to_expiry
    );

    // A running server with one config for its whole life (the proxy's ReloadingServer).
    let reloading = Arc::new(
        certs::reload::ReloadingServer::new(f.full_chain.clone(), f.key.clone(), vec![]).unwrap(),
    );
    let config = reloading.config();
    let server = Server::start(move || config.clone());
    let old_leaf = rustls_fetch(server.addr, &chain.root_ca_cert, "renew.test").unwrap();
    assert_eq!(
        fingerprint(&old_leaf),
        fingerprint(&first_cert(&f.full_chain))
    );

    let renewed = renew::renew_if_due(
        &f.full_chain,
        &f.key,
        &chain.edge_ca_cert,
        &chain.edge_ca_key,
        &policy,
    )
    .unwrap()
    .expect("a certificate 90% through its life is due");
    assert!(renewed.status.not_after > before.not_after);
    assert!(renewed.status.days_to_expiry > before.days_to_expiry);
    assert!(!renewed.status.due(OffsetDateTime::now_utc()));
    assert_eq!(
        renew::days_to_expiry(&f.full_chain).unwrap().round(),
        renewed.status.days_to_expiry.round()
    );

    // OpenSSL accepts the renewed chain, names kept.
    openssl_ok(&[
        "verify",
        "-CAfile",
        s(&chain.root_ca_cert),
        "-untrusted",
        s(&f.full_chain),
        "-verify_hostname",
        "renew.test",
        s(&f.full_chain),
    ]);

    // The running server now presents the new certificate: the watcher sees the renamed file.
    assert!(
        reloading.reload_if_changed().unwrap(),
        "the renewed files must be picked up"
    );
    let new_leaf = rustls_fetch(server.addr, &chain.root_ca_cert, "renew.test").unwrap();
    assert_ne!(fingerprint(&new_leaf), fingerprint(&old_leaf));
    assert_eq!(
        fingerprint(&new_leaf),
        fingerprint(&first_cert(&f.full_chain))
    );
    let (ok, text) = s_client(server.addr, &chain.root_ca_cert, "127.0.0.1");
    assert!(ok, "{text}");

    // Fresh now: nothing to do, file untouched.
    let bytes = std::fs::read(&f.full_chain).unwrap();
    assert!(renew::renew_if_due(
        &f.full_chain,
        &f.key,
        &chain.edge_ca_cert,
        &chain.edge_ca_key,
        &policy
    )
    .unwrap()
    .is_none());
    assert_eq!(std::fs::read(&f.full_chain).unwrap(), bytes);
    let wait = renew::next_check_in(&renewed.status, &policy);
    assert!(wait <= policy.max_check_interval && wait >= renew::MIN_CHECK_INTERVAL);

    // The timer's one call: nothing due now, next check within bounds.
    let target = renew::RenewTarget {
        server_chain: f.full_chain.clone(),
        server_key: f.key.clone(),
        ca_cert: chain.edge_ca_cert.clone(),
        ca_key: chain.edge_ca_key.clone(),
    };
    let check = target.check(&policy).unwrap();
    assert!(!check.renewed);
    assert!(check.next_check_in <= policy.max_check_interval);
    let h = nearly_expired(&chain, tmp.path(), "timer");
    let target = renew::RenewTarget {
        server_chain: h.full_chain.clone(),
        server_key: h.key.clone(),
        ..target
    };
    let check = target.check(&policy).unwrap();
    assert!(check.renewed && check.status.days_to_expiry > 1.0);

    // With key rotation, the key changes and still matches the chain.
    let g = nearly_expired(&chain, tmp.path(), "rot");
    let old_key = std::fs::read(&g.key).unwrap();
    let rotate = RenewPolicy {
        rotate_key: true,
        ..RenewPolicy::default()
    };
    renew::renew_if_due(
        &g.full_chain,
        &g.key,
        &chain.edge_ca_cert,
        &chain.edge_ca_key,
        &rotate,
    )
    .unwrap()
    .unwrap();
    assert_ne!(std::fs::read(&g.key).unwrap(), old_key);
    certs::tls::server_config(&g.full_chain, &g.key, &[]).unwrap();

    // A bad policy is refused with the setting's name.
    let bad = RenewPolicy {
        renew_at_fraction: 1.5,
        ..RenewPolicy::default()
    };
    let err = renew::renew_if_due(
        &g.full_chain,
        &g.key,
        &chain.edge_ca_cert,
        &chain.edge_ca_key,
        &bad,
    )
    .unwrap_err();
    assert!(err.to_string().contains("renew_at_fraction"), "{err}");
}

fn openssl_verify_name(root: &Path, chain: &Path, name: &str) -> bool {
    let flag = if name.parse::<std::net::IpAddr>().is_ok() {
        "-verify_ip"
    } else {
        "-verify_hostname"
    };
    Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            s(root),
            "-untrusted",
            s(chain),
            flag,
            name,
            s(chain),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn dev_chain_is_made_once_reused_reissued_and_renewed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("data/certs");
    let dev = certs::dev::ensure_dev_chain(&dir, &["Reg.Local".into()]).unwrap();
    for name in ["reg.local", "localhost", "127.0.0.1"] {
        assert!(
            openssl_verify_name(&dev.root_ca, &dev.server_chain, name),
            "dev chain must cover {name}"
        );
    }
    assert!(!openssl_verify_name(
        &dev.root_ca,
        &dev.server_chain,
        "other.local"
    ));
    certs::tls::server_config(&dev.server_chain, &dev.server_key, &[]).unwrap();
    let days = renew::days_to_expiry(&dev.server_chain).unwrap();
    assert!(
        days > 89.0 && days <= 90.0,
        "dev server certificate lives 90 days, got {days}"
    );

    // Second start: everything reused as is.
    let root = std::fs::read(&dev.root_ca).unwrap();
    let server = std::fs::read(&dev.server_chain).unwrap();
    let again = certs::dev::ensure_dev_chain(&dir, &["reg.local".into()]).unwrap();
    assert_eq!(std::fs::read(&again.root_ca).unwrap(), root);
    assert_eq!(std::fs::read(&again.server_chain).unwrap(), server);

    // A new name: same root, new server certificate covering it.
    certs::dev::ensure_dev_chain(&dir, &["reg.local".into(), "other.local".into()]).unwrap();
    assert_eq!(std::fs::read(&dev.root_ca).unwrap(), root);
    assert_ne!(std::fs::read(&dev.server_chain).unwrap(), server);
    assert!(openssl_verify_name(
        &dev.root_ca,
        &dev.server_chain,
        "other.local"
    ));

    // Due for renewal: renewed in place, same root.
    let chain = ChainFiles::in_dir(&dir);
    let now = OffsetDateTime::now_utc();
    let params = gen::server_params(
        "reg.local",
        &["other.local".into(), "localhost".into(), "127.0.0.1".into()],
        now - Duration::days(80),
        now + Duration::days(5),
    )
    .unwrap();
    gen::issue_with(
        &chain.edge_ca().unwrap(),
        &params,
        gen::generate_key(KeyType::EcdsaP256).unwrap(),
    )
    .unwrap()
    .write(&dir, certs::dev::DEV_SERVER_NAME)
    .unwrap();
    assert!(renew::days_to_expiry(&dev.server_chain).unwrap() < 6.0);
    certs::dev::ensure_dev_chain(&dir, &["reg.local".into(), "other.local".into()]).unwrap();
    assert!(renew::days_to_expiry(&dev.server_chain).unwrap() > 80.0);
    assert_eq!(std::fs::read(&dev.root_ca).unwrap(), root);

    // A broken root: a new chain is made, and it works.
    std::fs::write(&dev.root_ca, "garbage").unwrap();
    let fresh = certs::dev::ensure_dev_chain(&dir, &["reg.local".into()]).unwrap();
    assert_ne!(std::fs::read(&fresh.root_ca).unwrap(), root);
    assert!(openssl_verify_name(
        &fresh.root_ca,
        &fresh.server_chain,
        "reg.local"
    ));

    // A bad hostname is refused by name.
    let err = certs::dev::ensure_dev_chain(&dir, &["bad name".into()]).unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
}
