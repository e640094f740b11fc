//! Damaged files: a blob or manifest file whose bytes no longer hash to the digest it is stored
//! under (a bad sector, a bit flip, a tool that wrote into `blobs/`) is never served as good.
//!
//! Reads check the digest ([`VerifyReads`] says how often); a file found damaged is moved to
//! `DATA/quarantine/` with a note of when and why, so the content is simply absent afterwards
//! (a pull fails cleanly with BLOB_UNKNOWN or MANIFEST_UNKNOWN, and a later push, sync or
//! `scrub --repair` brings it back), logged once at warn with its digest and counted for
//! `/metrics`. The file is kept, not deleted: an operator may want to look at it.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use oci::digest::Digest;

/// The directory of damaged files, in the data directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// How often a blob read checks the blob's digest (`serve --verify-reads`). Manifests are
/// always checked when read from disk: they are small, and cached in memory afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyReads {
    /// The first complete read of each blob after the process started (and `scrub`): later
    /// reads of a blob that hashed right are streamed without hashing. The default: hashing
    /// every read costs the throughput of the hottest path (see README, Performance).
    #[default]
    Once,
    /// Every complete read: damage that happens while serving is caught at the next pull.
    Always,
}

impl FromStr for VerifyReads {
    type Err = String;

    fn from_str(value: &str) -> Result<VerifyReads, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "once" => Ok(VerifyReads::Once),
            "always" => Ok(VerifyReads::Always),
            _ => Err(format!(
                "--verify-reads {value:?} is not a choice: use once (first read after start) or always (every read)"
            )),
        }
    }
}

/// What the store knows about the integrity of its files while it runs.
#[derive(Debug)]
pub struct Integrity {
    quarantine: PathBuf,
    mode: VerifyReads,
    /// Blobs whose file hashed right since start ([`VerifyReads::Once`]); forgotten when the
    /// file is quarantined.
    verified: RwLock<HashSet<Digest>>,
    quarantined: AtomicU64,
}

impl Integrity {
    pub fn new(root: &Path, mode: VerifyReads) -> Integrity {
        Integrity {
            quarantine: root.join(QUARANTINE_DIR),
            mode,
            verified: RwLock::default(),
            quarantined: AtomicU64::new(0),
        }
    }

    /// Whether a complete read of `digest` must hash it.
    pub fn needs_check(&self, digest: &Digest) -> bool {
        match self.mode {
            VerifyReads::Always => true,
            VerifyReads::Once => !self
                .verified
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(digest),
        }
    }

    /// Records that the file of `digest` hashed right.
    pub fn verified(&self, digest: &Digest) {
        if self.mode == VerifyReads::Once {
            self.verified
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest.clone());
        }
    }

    /// Files moved to quarantine since start.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Moves the damaged file `path` of `digest` to quarantine with a note saying `why`, logs it
    /// and counts it. A file already gone (another reader quarantined it first) is not counted
    /// again. Never fails: if the move itself fails the file is left and the error logged, and
    /// the read that found it fails all the same.
    pub fn quarantine(&self, path: &Path, digest: &Digest, why: &str) {
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        if let Err(err) = fs::create_dir_all(&self.quarantine) {
            tracing::error!(
                "cannot create {} for damaged file {}: {err}",
                self.quarantine.display(),
                path.display()
            );
            return;
        }
        let stamp = util::time::now_secs();
        let name = format!("{}-{}-{stamp}", digest.algorithm().name(), digest.hex());
        let dest = self.quarantine.join(&name);
        match fs::rename(path, &dest) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) => {
                tracing::error!(
                    %digest,
                    "damaged file {} could not be moved to {}: {err}; it stays, and is refused on every read",
                    path.display(),
                    dest.display()
                );
                return;
            }
        }
        if let Some(dir) = path.parent() {
            let _ = super::blobs::sync_dir(dir);
        }
        let note = format!(
            "digest: {digest}\nwas: {}\nquarantined_at_unix: {stamp}\nwhy: {why}\n",
            path.display()
        );
        let _ = fs::write(self.quarantine.join(format!("{name}.txt")), note);
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            %digest,
            moved_to = %dest.display(),
            "damaged file quarantined: {why}; the content is absent here until pushed, synced or repaired again (scrub --repair)"
        );
    }
}

impl super::Store {
    /// Damaged files moved to quarantine since the store was opened (for `/metrics`).
    pub fn quarantined_total(&self) -> u64 {
        self.inner.integrity.quarantined_total()
    }
}
