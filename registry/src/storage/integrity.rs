//! Damaged blobs: a blob or manifest whose bytes no longer hash to the digest it is stored
//! under (a bad sector, a bit flip, a tool that wrote into `blobs/`) is never served as good.
//!
//! Reads check the digest ([`VerifyReads`] says how often); a blob found damaged is taken out of
//! service by the blob store ([`BlobStore::quarantine`]: on the local disk moved to
//! `DATA/quarantine/` with a note of when and why), so the content is simply absent afterwards
//! (a pull fails cleanly with BLOB_UNKNOWN or MANIFEST_UNKNOWN, and a later push, sync or
//! `scrub --repair` brings it back), logged once at warn with its digest and counted for
//! `/metrics`. The file is kept, not deleted: an operator may want to look at it.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use oci::digest::Digest;

use super::blob_store::BlobStore;
pub use super::filesystem::QUARANTINE_DIR;

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
    mode: VerifyReads,
    /// Blobs whose file hashed right since start ([`VerifyReads::Once`]); forgotten when the
    /// file is quarantined.
    verified: RwLock<HashSet<Digest>>,
    quarantined: AtomicU64,
}

impl Integrity {
    pub fn new(mode: VerifyReads) -> Integrity {
        Integrity {
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

    /// Takes the damaged blob `digest` out of `blobs` with a note saying `why`, logs it and
    /// counts it. A blob already gone (another reader quarantined it first) is not counted
    /// again. Never fails: if the move itself fails the blob is left and the error logged, and
    /// the read that found it fails all the same.
    pub fn quarantine(&self, blobs: &dyn BlobStore, digest: &Digest, why: &str) {
        self.verified
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        match blobs.quarantine(digest, why) {
            Ok(Some(moved_to)) => {
                self.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    %digest,
                    %moved_to,
                    "damaged file quarantined: {why}; the content is absent here until pushed, synced or repaired again (scrub --repair)"
                );
            }
            Ok(None) => {}
            Err(err) => tracing::error!(
                %digest,
                "damaged blob in {} could not be quarantined: {err}; it stays, and is refused on every read",
                blobs.location()
            ),
        }
    }
}

impl super::Store {
    /// Damaged files moved to quarantine since the store was opened (for `/metrics`).
    pub fn quarantined_total(&self) -> u64 {
        self.inner.integrity.quarantined_total()
    }
}
