//! Starts `connected-registry proxy` for the tests that drive it (`proxy.rs`,
//! `proxy_balance.rs`): a test CA with the proxy's server certificate, the proxy on a fresh
//! loopback port, and its admin port's metrics.

use std::net::SocketAddr;
use std::path::Path;

use super::tls::{Leaf, TestCa};
use super::{bin, free_port, run_ok, Proc};

/// Starts the proxy on a fresh port with `args` after `--listen` / `--cert` / `--key`; its
/// log is `DIR/NAME.log`.
pub fn start_proxy(
    dir: &Path,
    name: &str,
    leaf: &Leaf,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Proc {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        "proxy",
        "--listen",
        &listen,
        "--cert",
        leaf.chain.to_str().unwrap(),
        "--key",
        leaf.key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    Proc::start(
        &bin(),
        &all,
        envs,
        listen.parse().unwrap(),
        dir.join(format!("{name}.log")),
    )
}

/// A temporary directory with a test CA in `ca/` and the proxy's server certificate
/// (`proxy.test`) issued by it: what most proxy tests start from.
pub fn proxy_fixture() -> (tempfile::TempDir, TestCa, Leaf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let leaf = ca.server("proxy", "proxy.test");
    (tmp, ca, leaf)
}

/// The proxy's Prometheus text from its admin port.
pub fn metrics(admin: SocketAddr) -> String {
    run_ok(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            &format!("http://{admin}/metrics"),
        ],
    )
}
