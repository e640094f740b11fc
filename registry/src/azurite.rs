//! Azurite, Microsoft's Azure Storage emulator (the npm package `azurite`), started for a test:
//! the real Blob service protocol on a loopback port, so the Azure Blob Storage backend is
//! tested against the real thing rather than a mock. For tests only: the registry's own (`cfg
//! test`) and, through the `azurite` feature, the end-to-end tests (`tests/common/azurite.rs`).
//!
//! `test.sh` installs it into `~/.cache/connected-registry-azurite`; `AZURITE_BLOB` names
//! another `azurite-blob`. When it is missing, [`Azurite::start`] panics saying how to install
//! it: a test that needs it never passes by skipping.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::test_ports::free_port;

/// The development account every Azurite knows, and its published key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How `test.sh` installs it.
pub const INSTALL: &str =
    "npm install --prefix \"$HOME/.cache/connected-registry-azurite\" azurite@3 (./test.sh does)";

/// A running Azurite blob service; stopped (killed) when dropped.
pub struct Azurite {
    child: Child,
    addr: SocketAddr,
    /// Its storage (`--location`) and its log.
    dir: tempfile::TempDir,
}

/// Where `azurite-blob` is: `AZURITE_BLOB`, else where `test.sh` installs it, else on `PATH`.
pub fn program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AZURITE_BLOB") {
        return Some(PathBuf::from(path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let installed = PathBuf::from(home)
            .join(".cache/connected-registry-azurite/node_modules/.bin/azurite-blob");
        if installed.is_file() {
            return Some(installed);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("azurite-blob"))
            .find(|p| p.is_file())
    })
}

impl Azurite {
    /// Starts Azurite on a free loopback port with its storage in a temporary directory, and
    /// waits until it answers.
    #[track_caller]
    pub fn start() -> Azurite {
        let program = program().unwrap_or_else(|| {
            panic!("azurite-blob (Azure Storage emulator) is not installed: {INSTALL}, or set AZURITE_BLOB")
        });
        let dir = tempfile::tempdir().expect("a directory for Azurite");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("azurite.log")).expect("Azurite's log");
        let child = Command::new(&program)
            .args([
                "--loose",
                "--skipApiVersionCheck",
                "--silent",
                "--disableTelemetry",
            ])
            .arg("--location")
            .arg(dir.path())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("Azurite's log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} ({INSTALL})", program.display()));
        let mut azurite = Azurite {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        azurite.wait_ready();
        azurite
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Azurite exited ({status}) at start:\n{}", self.log_text());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Azurite did not listen on {} within 30 s:\n{}",
            self.addr,
            self.log_text()
        );
    }

    /// The standard connection string of its development account
    /// (`AZURE_STORAGE_CONNECTION_STRING`).
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint=http://{}/{ACCOUNT};",
            self.addr
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The emulator's process id (to read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged (start-up problems; `--silent` leaves out the access log).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
