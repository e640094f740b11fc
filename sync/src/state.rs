//! Sync's own persisted progress: the last change-log sequence pushed up, the position in the
//! parent's change feed, the tags sync wrote (to reflect deletions at the parent), uploads in
//! flight, conflicts, and the last result. One document per engine, in one of two places:
//! - `DATA/sync/state.json` (each upstream's in `DATA/sync/upstreams/NAME/`) when the metadata
//!   is this process's own (redb): written to a temp file, fsynced, renamed, so a crash leaves
//!   the old or the new state, never a torn one; separate from the registry's database on
//!   purpose (it lists what sync wrote, which `recover` rebuilds the database from).
//! - a row of the shared metadata (PostgreSQL) when several replicas share it, written whole in
//!   one transaction and only while this replica holds the sync lease (a fence checked in that
//!   transaction), so the replica that takes over continues from where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use oci::Digest;

/// How a pass ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[default]
    Running,
    /// Everything in scope is in step.
    Completed,
    /// The window closed (or the time limit passed): transfers stopped, to resume next time.
    Paused,
    /// Some repositories or tags failed; see `errors`.
    Failed,
}

/// The result of one pass: what `sync --once` prints and the status endpoint shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    pub seconds: f64,
    pub repos: usize,
    pub tags_checked: u64,
    pub tags_updated: u64,
    pub tags_deleted: u64,
    pub manifests_fetched: u64,
    pub blobs_fetched: u64,
    pub blobs_resumed: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub requests: u64,
    pub manifests_pushed: u64,
    /// How the pass compared with the parent: through its change feed, or in full.
    #[serde(default)]
    pub pull: Pull,
    pub conflicts: Vec<String>,
    /// Repository rules that selected nothing at the parent (errors instead with `--strict`).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Tags (`repo:tag`) the parent holds with `readEnabled: false`: not pulled (a copy held
    /// here stays, locked the same way). Not an error: the parent's owner decided it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_locked: Vec<String>,
    pub errors: Vec<String>,
    /// The errors by fault (`client`, `upstream`, `local`, `internal`), as every part says it.
    #[serde(default)]
    pub faults: std::collections::BTreeMap<String, u64>,
    /// Every error may pass by itself (a dropped link, a busy parent); false when one needs a
    /// change first (a certificate the trust bundle does not hold, a refusal, a setting).
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

/// How a pass found what changed at the parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pull {
    /// Every repository and tag in scope compared (a parent without a change feed, the first
    /// pass, a changed scope, or a feed that failed).
    #[default]
    Full,
    /// Only what the parent's change feed named was compared.
    Feed,
    /// The feed could not continue from where this child left it (the parent pruned its log
    /// past `messageTtl`, or was set up again): everything compared once, the feed resumes after.
    Reset,
}

/// Where this child stands in its parent's change feed (`/acr/v1/_changes`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentFeed {
    /// The parent this is about: another parent starts over.
    pub parent: String,
    /// Fingerprint of the repository rules in force when `seq` was reached: the feed only covers
    /// what was in scope, so changed rules start over with a full comparison.
    pub scope: String,
    /// The last sequence of the parent's change log reflected here; `None` when the parent
    /// answered that it has no feed (asked again after a day).
    pub seq: Option<u64>,
    /// When `seq` was set, or the parent said it has no feed.
    pub checked: DateTime<Utc>,
}

/// A tag both sides changed: the parent's tag was left in place, the local manifest was
/// pushed by digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub repo: String,
    pub tag: String,
    pub local: Digest,
    pub parent: Digest,
    pub time: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SyncState {
    /// Highest local change-log sequence handled by the upward push.
    pub pushed_seq: u64,
    /// repo -> tag -> digest that sync wrote locally (or pushed up).
    pub synced_tags: BTreeMap<String, BTreeMap<String, Digest>>,
    /// Upload session ids of blob downloads not finished yet.
    pub uploads_in_flight: BTreeSet<String>,
    /// `repo@digest` -> the parent's location of an upward upload not finished yet (resumed
    /// from there).
    pub uploads_up: BTreeMap<String, String>,
    pub conflicts: Vec<Conflict>,
    pub last_result: Option<Summary>,
    /// Position in the parent's change feed, when the parent is a connected registry of ours.
    pub parent_feed: Option<ParentFeed>,
    /// When a full comparison last asked for new referrers of tags already in step.
    pub referrers_checked: Option<DateTime<Utc>>,
    /// When a full comparison last completed (the reconcile interval counts from it).
    pub compared_all: Option<DateTime<Utc>>,
    /// What the last full comparison found selecting nothing at the parent (the status shows it
    /// between full comparisons, which feed passes do not repeat).
    pub scope_warnings: Vec<String>,
    /// The local change log up to here has been looked at for client changes to what sync
    /// manages (see `feed.rs`, reconcile).
    pub reconciled_seq: u64,
}

/// One engine's state document, in its place, with its in-memory copy.
pub struct StateFile {
    place: Place,
    state: Mutex<SyncState>,
}

/// Where a state document lives (see the module doc).
enum Place {
    File(PathBuf),
    Metadata {
        store: registry::Store,
        /// The engine's row.
        name: String,
        /// The sync lease this replica must hold to write it.
        fence: registry::storage::lease::Fence,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::File(path) => write!(f, "{}", path.display()),
            Place::Metadata { name, .. } => write!(f, "{name:?} in the shared metadata"),
        }
    }
}

/// The state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("internal: sync state {place}: {message}")]
    Failed { place: String, message: String },
    /// Another replica holds the sync lease now: this one stops, nothing was written.
    #[error("sync state {place}: {message}")]
    LeaseLost { place: String, message: String },
}

impl StateFile {
    /// Opens `dir/state.json` (creating `dir`), starting empty when the file does not exist.
    pub fn open(dir: &Path) -> Result<StateFile, StateError> {
        let place = Place::File(dir.join("state.json"));
        std::fs::create_dir_all(dir)
            .map_err(|e| place.failed(format!("cannot create the directory: {e}")))?;
        let state = place.load()?;
        Ok(StateFile {
            place,
            state: Mutex::new(state),
        })
    }

    /// Engine `name`'s document in the shared metadata of `store`, written only while `fence`
    /// holds (the sync lease, this replica as its holder); empty when never written.
    pub fn in_metadata(
        store: registry::Store,
        name: &str,
        fence: registry::storage::lease::Fence,
    ) -> Result<StateFile, StateError> {
        let place = Place::Metadata {
            store,
            name: name.to_owned(),
            fence,
        };
        let state = place.load()?;
        Ok(StateFile {
            place,
            state: Mutex::new(state),
        })
    }

    /// Reads the document again from its place: in the shared metadata another replica may
    /// have written it since (it held the lease); a file is this process's alone.
    pub fn reload(&self) -> Result<(), StateError> {
        if let Place::File(_) = self.place {
            return Ok(());
        }
        let state = self.place.load()?;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    pub fn snapshot(&self) -> SyncState {
        self.read(SyncState::clone)
    }

    /// Reads part of the state without copying the rest (the tags sync wrote grow with
    /// every repository).
    pub fn read<T>(&self, f: impl FnOnce(&SyncState) -> T) -> T {
        match self.state.lock() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Changes the state and writes it through atomically (a file: temp file, fsync, rename,
    /// fsync of the directory; the metadata: one transaction), so a restart after a crash reads
    /// the old state or the new, never half. In the metadata, a replica that lost the sync
    /// lease writes nothing ([`StateError::LeaseLost`]).
    pub fn update<T>(&self, f: impl FnOnce(&mut SyncState) -> T) -> Result<T, StateError> {
        let mut guard = self
            .state
            .lock()
            .map_err(|_| self.place.failed("lock poisoned".into()))?;
        let out = f(&mut guard);
        let bytes =
            serde_json::to_vec_pretty(&*guard).map_err(|e| self.place.failed(e.to_string()))?;
        self.place.store(&bytes)?;
        Ok(out)
    }
}

impl Place {
    fn failed(&self, message: String) -> StateError {
        StateError::Failed {
            place: self.to_string(),
            message,
        }
    }

    /// The document as stored; empty when there is none yet.
    fn load(&self) -> Result<SyncState, StateError> {
        let bytes = match self {
            Place::File(path) => match std::fs::read(path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(self.failed(format!("cannot read: {e}"))),
            },
            Place::Metadata { store, name, .. } => store
                .sync_state(name)
                .map_err(|e| self.failed(format!("cannot read: {e}")))?,
        };
        let Some(bytes) = bytes else {
            return Ok(SyncState::default());
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            let start_over = match self {
                Place::File(_) => "move it away to start over",
                Place::Metadata { .. } => {
                    "delete its row (table registry_kv, tbl 'sync_state') to start over"
                }
            };
            self.failed(format!(
                "not valid JSON ({e}); {start_over} (content is kept in the registry)"
            ))
        })
    }

    fn store(&self, bytes: &[u8]) -> Result<(), StateError> {
        match self {
            Place::File(path) => util::atomic_file::write(path, bytes, None)
                .map_err(|e| self.failed(format!("cannot write: {e}"))),
            Place::Metadata { store, name, fence } => store
                .put_sync_state(name, bytes, fence)
                .map_err(|e| match e {
                    registry::StorageError::LeaseLost { .. } => StateError::LeaseLost {
                        place: self.to_string(),
                        message: e.to_string(),
                    },
                    e => self.failed(format!("cannot write: {e}")),
                }),
        }
    }
}
