//! A private containerd for `ctr`: its own root, state and socket, so a test pulls with the
//! real containerd resolver (its `hosts.toml` mirrors included) without the machine's daemon.

use std::process::{Command, Output};
use std::time::Duration;

/// A private containerd for `ctr`: its own root, state and socket.
pub struct Containerd {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let address = d.join("c.sock").display().to_string();
        // No configuration file: the defaults, with this directory's root, state and socket.
        let config = d.join("config.toml");
        std::fs::write(&config, "version = 2\n").unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .args(["--address", &address])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd (./test.sh installs docker.io, which brings it)");
        let up = super::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            Command::new("ctr")
                .args(["--address", &address, "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            up,
            "containerd did not answer: {}",
            std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
        );
        Containerd {
            child,
            address,
            _dir: dir,
        }
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .args(["--address", &self.address])
            .args(args)
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
