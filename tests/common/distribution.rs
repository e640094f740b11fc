//! CNCF distribution (`docker-registry`, Debian's package) as a real foreign registry:
//! the parent in sync tests, an upstream in proxy tests.

use std::path::Path;

use super::{free_port, Proc};

/// Starts `docker-registry serve` on a fresh loopback port with its storage under `dir`.
/// Extra YAML (e.g. an `auth:` section) is appended to the config as is.
pub fn start_distribution(dir: &Path, extra_yaml: &str) -> Proc {
    start_distribution_on(dir, free_port(), extra_yaml)
}

/// [`start_distribution`] on a given loopback port, for a test that must name the address
/// before the registry runs (e.g. a child configured with a parent that is down).
pub fn start_distribution_on(dir: &Path, port: u16, extra_yaml: &str) -> Proc {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).expect("create distribution storage dir");
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n\
         {extra_yaml}\n",
        storage.display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).expect("write distribution config");
    let program = Path::new("/usr/bin/docker-registry");
    assert!(
        program.exists(),
        "/usr/bin/docker-registry is missing: ./test.sh installs Debian's docker-registry"
    );
    Proc::start(
        program,
        &["serve", config_path.to_str().expect("utf-8 path")],
        &[],
        format!("127.0.0.1:{port}").parse().unwrap(),
        dir.join("distribution.log"),
    )
}
