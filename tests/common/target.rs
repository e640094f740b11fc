//! The registry under test: our `connected-registry serve` by default, or CNCF distribution when
//! `REGISTRY_UNDER_TEST=distribution` (used only while developing the tests, to check their logic
//! against a reference implementation; distribution lacks the referrers API and differs in details).
//! `REGISTRY_UNDER_TEST=ours-postgres` runs ours with its metadata in PostgreSQL (`--metadata`,
//! a database of each target's own on one test server per test process), so the protocol, crash
//! and torture tests check that backend too. `REGISTRY_UNDER_TEST=ours-replica` runs ours as a
//! replica of issue 17 does: metadata in PostgreSQL and blobs in an Azure Blob Storage container
//! (an Azurite of each target's own; `replicas.rs`'s [`Services`]); [`Target::start_replica`]
//! chooses that backend whatever the variable says. Tests that watch files in the data directory
//! (blobs, upload sessions) do not apply to it: those live in the container there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::api::Api;
use super::replicas::Services;
use super::{distribution, free_port, serve_with, Proc};

/// Which implementation answers the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ours,
    Distribution,
}

/// Reads `REGISTRY_UNDER_TEST` (`ours`, the default, `ours-postgres`, `ours-replica`, or
/// `distribution`).
pub fn kind() -> Kind {
    match std::env::var("REGISTRY_UNDER_TEST").as_deref() {
        Err(_) | Ok("") | Ok("ours") | Ok("ours-postgres") | Ok("ours-replica") => Kind::Ours,
        Ok("distribution") => Kind::Distribution,
        Ok(other) => panic!(
            "REGISTRY_UNDER_TEST={other:?}: expected `ours`, `ours-postgres`, `ours-replica` or \
             `distribution`"
        ),
    }
}

/// `--metadata URL` for ours under `REGISTRY_UNDER_TEST=ours-postgres`: a new database on the
/// test process's PostgreSQL server; none otherwise (redb in the data directory).
fn metadata_args() -> Vec<String> {
    match std::env::var("REGISTRY_UNDER_TEST").as_deref() {
        Ok("ours-postgres") => {
            let url = super::postgres::TestServer::shared().create_database();
            vec!["--metadata".to_owned(), url]
        }
        _ => Vec::new(),
    }
}

/// A temporary directory, the registry under test started in it (extra `serve` flags `args`)
/// and a client for it: what each protocol test starts from. Keep the directory alive.
pub fn setup_with(args: &[&str]) -> (tempfile::TempDir, Target, Api) {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = Target::start_with(&dir.path().join("reg"), args);
    let api = Api::new(&target.url());
    (dir, target, api)
}

/// [`setup_with`] without extra flags.
pub fn setup() -> (tempfile::TempDir, Target, Api) {
    setup_with(&[])
}

/// A running registry with its own data directory, which survives restarts.
pub struct Target {
    pub proc: Proc,
    pub kind: Kind,
    /// The test's private directory; the registry's data lives inside it.
    pub dir: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables of the next start (ours only), e.g. a crash point to arm.
    pub envs: Vec<(String, String)>,
    restarts: u32,
    /// The shared services ours runs on as a replica (see [`Target::start_replica`]).
    services: Option<Arc<Services>>,
}

impl Target {
    /// Starts the registry under test with its data in `dir/data`.
    pub fn start(dir: &Path) -> Target {
        Target::start_with(dir, &[])
    }

    /// Like [`Target::start`], with extra `serve` flags (ignored by the reference implementation).
    pub fn start_with(dir: &Path, extra_args: &[&str]) -> Target {
        if std::env::var("REGISTRY_UNDER_TEST").as_deref() == Ok("ours-replica") {
            return Target::start_replica(dir, extra_args);
        }
        let kind = kind();
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        // Kept for restarts: the same metadata.
        extra_args.extend(metadata_args());
        Target::launched(kind, dir, extra_args, None)
    }

    /// Ours as a replica of issue 17: metadata in PostgreSQL, blobs in Azure Blob Storage
    /// (Azurite), both started for this target and kept across its restarts; extra `serve`
    /// flags `extra_args`.
    pub fn start_replica(dir: &Path, extra_args: &[&str]) -> Target {
        let services = Arc::new(Services::start());
        let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        args.extend(services.serve_args());
        Target::launched(Kind::Ours, dir, args, Some(services))
    }

    fn launched(
        kind: Kind,
        dir: &Path,
        extra_args: Vec<String>,
        services: Option<Arc<Services>>,
    ) -> Target {
        let proc = launch(kind, dir, &extra_args, &start_envs(&services, &[]));
        Target {
            proc,
            kind,
            dir: dir.to_path_buf(),
            extra_args,
            envs: Vec::new(),
            restarts: 0,
            services,
        }
    }

    /// Whether blobs are in the local data directory (else in the services' container, where
    /// [`Target::blob_files`] does not look: GETs check those).
    pub fn blobs_on_disk(&self) -> bool {
        self.services.is_none()
    }

    pub fn url(&self) -> String {
        self.proc.url()
    }

    /// `127.0.0.1:PORT`, the registry host part of an image reference.
    pub fn host(&self) -> String {
        self.proc.addr.to_string()
    }

    /// The registry's data directory (for distribution: its storage root).
    pub fn data_dir(&self) -> PathBuf {
        match self.kind {
            Kind::Ours => self.dir.join("data"),
            Kind::Distribution => self.dir.join("storage"),
        }
    }

    /// The backends ours runs on (its `--metadata`), to open its store in the test process
    /// while it is down.
    pub fn backends(&self) -> registry::storage::Backends {
        if let Some(services) = &self.services {
            return services.backends();
        }
        let metadata = self
            .extra_args
            .iter()
            .position(|a| a == "--metadata")
            .and_then(|i| self.extra_args.get(i + 1))
            .map(|url| url.parse().expect("the test's --metadata parses"))
            .unwrap_or_default();
        registry::storage::Backends {
            metadata,
            ..Default::default()
        }
    }

    /// Directory that holds the content-addressed blob files.
    pub fn blobs_dir(&self) -> PathBuf {
        match self.kind {
            Kind::Ours => self.data_dir().join("blobs"),
            Kind::Distribution => self.data_dir().join("docker/registry/v2/blobs"),
        }
    }

    /// Every file under the blob store, relative to it, with its size: used to prove that a
    /// refused request stored nothing.
    pub fn blob_files(&self) -> BTreeSet<(String, u64)> {
        let mut out = BTreeSet::new();
        walk(&self.blobs_dir(), &self.blobs_dir(), &mut out);
        out
    }

    /// Content-addressed files whose bytes do not hash to the digest in their path: a partial or
    /// torn blob that became visible. Empty when the store is sound.
    pub fn corrupt_blob_files(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for (rel, _) in self.blob_files() {
            let hex = rel
                .split('/')
                .rev()
                .find(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
            let Some(hex) = hex else { continue };
            if !rel.contains("sha256") {
                continue;
            }
            // A file GC removed since the listing is gone, not torn.
            let bytes = match std::fs::read(self.blobs_dir().join(&rel)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                read => read.unwrap_or_default(),
            };
            if super::api::sha256(&bytes) != format!("sha256:{hex}") {
                bad.push(rel);
            }
        }
        bad
    }

    /// The registry's log so far (stdout and stderr), to print when a test fails.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Kills the registry with SIGKILL, as a power loss or `docker kill` would.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// Starts the registry again on the same data directory (new port), keeping the old log.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.restarts += 1;
        let old = self.proc.log.clone();
        let kept = old.with_extension(format!("log.{}", self.restarts));
        let _ = std::fs::rename(&old, &kept);
        let envs = start_envs(&self.services, &self.envs);
        self.proc = launch(self.kind, &self.dir, &self.extra_args, &envs);
    }
}

/// The environment of a start: the services' (their credentials), then `envs`.
fn start_envs(
    services: &Option<Arc<Services>>,
    envs: &[(String, String)],
) -> Vec<(String, String)> {
    let mut all = services.as_ref().map(|s| s.envs()).unwrap_or_default();
    all.extend(envs.iter().cloned());
    all
}

fn launch(kind: Kind, dir: &Path, extra_args: &[String], envs: &[(String, String)]) -> Proc {
    std::fs::create_dir_all(dir).expect("create test dir");
    match kind {
        Kind::Ours => {
            let extra: Vec<&str> = extra_args.iter().map(String::as_str).collect();
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let data = dir.join("data");
            serve_with(
                &data,
                free_port(),
                &extra,
                &envs,
                data.with_extension("log"),
            )
        }
        Kind::Distribution => distribution::start_distribution(dir, ""),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<(String, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.insert((rel, meta.len()));
        }
    }
}

impl Drop for Target {
    /// A failing test shows the end of the registry's log: the registry's side of the story.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- registry log ({}), last lines ---\n{tail}",
                self.proc.log.display()
            );
        }
    }
}
