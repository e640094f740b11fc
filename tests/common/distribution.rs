//! CNCF distribution (`docker-registry`, Debian's package) as a real foreign registry:
//! the parent in sync tests, an upstream in proxy tests.

use std::path::{Path, PathBuf};

use super::netns::Netns;
use super::{free_port, Proc};

/// Starts `docker-registry serve` on a fresh loopback port with its storage under `dir`.
/// Extra YAML (e.g. an `auth:` section) is appended to the config as is.
pub fn start_distribution(dir: &Path, extra_yaml: &str) -> Proc {
    start_distribution_on(dir, free_port(), extra_yaml)
}

/// [`start_distribution`] on a given loopback port, for a test that must name the address
/// before the registry runs (e.g. a child configured with a parent that is down).
pub fn start_distribution_on(dir: &Path, port: u16, extra_yaml: &str) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    let config_path = write_config(dir, &addr, extra_yaml);
    Proc::start(
        program(),
        &["serve", config_path.to_str().expect("utf-8 path")],
        &[],
        addr.parse().unwrap(),
        dir.join("distribution.log"),
    )
}

/// [`start_distribution`] in network namespace `ns`, listening on `addr` (an address of that
/// namespace, `IP:PORT`): the cloud of a layered network.
pub fn start_distribution_in(ns: &Netns, dir: &Path, addr: &str) -> Proc {
    let config_path = write_config(dir, addr, "");
    ns.spawn(
        program(),
        &["serve", config_path.to_str().expect("utf-8 path")],
        &[],
        &format!("http://{addr}/v2/"),
        dir.join("distribution.log"),
    )
}

/// Writes `dir/config.yml`: storage under `dir/storage`, listening on `addr`, then `extra_yaml`.
fn write_config(dir: &Path, addr: &str, extra_yaml: &str) -> PathBuf {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).expect("create distribution storage dir");
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n\
         {extra_yaml}\n",
        storage.display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).expect("write distribution config");
    config_path
}

fn program() -> &'static Path {
    let program = Path::new("/usr/bin/docker-registry");
    assert!(
        program.exists(),
        "/usr/bin/docker-registry is missing: ./test.sh installs Debian's docker-registry"
    );
    program
}
