//! Starts `connected-registry proxy` for the tests that drive it (`proxy.rs`,
//! `proxy_balance.rs`, the replicas' set-up): a test CA with the proxy's server certificate,
//! the proxy on a fresh loopback port (alone, or balancing one route over several upstreams),
//! its admin port's metrics, and the lines of `--print-config`.

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

/// The proxy `name` with `/v2` balanced over `upstreams` (URLs), an admin port (returned), and
/// `extra` flags (e.g. `--health-interval`).
pub fn balanced_proxy(
    dir: &Path,
    name: &str,
    leaf: &Leaf,
    upstreams: &[String],
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let route = format!("/v2={}", upstreams.join(","));
    let admin_s = admin.to_string();
    let mut args = vec!["--route", &route, "--admin", &admin_s];
    args.extend_from_slice(extra);
    (start_proxy(dir, name, leaf, &args, &[]), admin)
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

/// One value of the proxy's metrics, e.g. `proxy_upstream_healthy{upstream="http://..."}`;
/// `None` when the series is missing.
pub fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    metrics(admin)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether the proxy has `upstream` in service (`proxy_upstream_healthy` 1, 0 when taken
/// out); `None` when no route with several upstreams lists it.
pub fn healthy(admin: SocketAddr, upstream: &str) -> Option<f64> {
    metric(
        admin,
        &format!("proxy_upstream_healthy{{upstream=\"{upstream}\"}}"),
    )
}

/// The line of `--print-config` output `text` that starts with `key` (e.g. `"route /v2 "`);
/// panics showing the whole output when there is none.
#[track_caller]
pub fn config_line(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
        .to_owned()
}
