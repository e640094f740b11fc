//! A private Docker engine (Debian's `docker.io`) for a test: its own data root, exec root, pid
//! file and socket, no iptables and no bridge, so it touches nothing of the host's Docker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A running `dockerd`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Dockerd {
    child: Child,
    /// `unix:///tmp/.../d.sock` for `docker -H`.
    pub host: String,
    dir: tempfile::TempDir,
    pub log: PathBuf,
}

fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: ./test.sh installs Debian's docker.io"
    );
}

impl Dockerd {
    /// Starts a private dockerd and waits until it answers; panics with its log if it cannot start.
    pub fn start() -> Dockerd {
        Dockerd::start_in(None)
    }

    /// [`Dockerd::start`] with the engine in network namespace `netns` (through `nsenter
    /// --net`, which changes only the network namespace): its pulls and pushes go out from
    /// there, while the client still reaches it through its socket file.
    pub fn start_in(netns: Option<&super::netns::Netns>) -> Dockerd {
        Dockerd::start_with(netns, &[])
    }

    /// [`Dockerd::start_in`] with extra daemon flags (e.g. `--registry-mirror URL`, what
    /// `daemon.json`'s `registry-mirrors` sets).
    pub fn start_with(netns: Option<&super::netns::Netns>, extra: &[&str]) -> Dockerd {
        require("/usr/sbin/dockerd");
        require("/usr/bin/docker");
        // A short path: unix socket paths are limited to about 100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .expect("temp dir for dockerd");
        let d = dir.path();
        let sock = d.join("d.sock");
        let host = format!("unix://{}", sock.display());
        let log = d.join("dockerd.log");
        let mut command = match netns {
            Some(ns) => ns.command("/usr/sbin/dockerd"),
            None => Command::new("/usr/sbin/dockerd"),
        };
        command
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--host", &host])
            .args(extra);
        let child = super::spawn_logged(&mut command, &log).expect("spawn dockerd");
        let mut dk = Dockerd {
            child,
            host,
            dir,
            log,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = dk.child.try_wait() {
                panic!(
                    "dockerd exited ({status}) before answering; its log:\n{}",
                    dk.log_text()
                );
            }
            if sock.exists() && dk.docker(&["version"]).status.success() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "dockerd did not answer within 60s; its log:\n{}",
                    dk.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dk
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `docker -H <this engine> ARGS` with a private client config dir.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/docker")
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .args(["-H", &self.host])
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Like [`Dockerd::docker`], panicking with both logs on failure; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed: {}\nstdout: {}\nstderr: {}\ndockerd log tail:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        // The shell's `kill` builtin: procps may be absent, and no unsafe libc call is allowed.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
