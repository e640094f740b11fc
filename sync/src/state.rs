//! Sync's own persisted progress (`DATA/sync/state.json`): the last change-log sequence pushed
//! up, the position in the parent's change feed, the tags sync wrote (to reflect deletions at the parent), uploads in flight, conflicts,
//! and the last result. Written to a temp file, fsynced, renamed: a crash leaves the old or
//! the new state, never a torn one. Separate from the registry's database on purpose.

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

/// The state file with its in-memory copy.
pub struct StateFile {
    path: PathBuf,
    state: Mutex<SyncState>,
}

/// The state file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("internal: sync state {path}: {message}")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

impl StateFile {
    /// Opens `dir/state.json` (creating `dir`), starting empty when the file does not exist.
    pub fn open(dir: &Path) -> Result<StateFile, StateError> {
        let path = dir.join("state.json");
        let err = |message: String| StateError {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create the directory: {e}")))?;
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                err(format!(
                    "not valid JSON ({e}); move it away to start over (content is kept in the registry)"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SyncState::default(),
            Err(e) => return Err(err(format!("cannot read: {e}"))),
        };
        Ok(StateFile {
            path,
            state: Mutex::new(state),
        })
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

    /// Changes the state and writes it through atomically (temp file, fsync, rename, fsync of
    /// the directory), so a restart after a crash reads the old state or the new, never half.
    pub fn update<T>(&self, f: impl FnOnce(&mut SyncState) -> T) -> Result<T, StateError> {
        let mut guard = self.state.lock().map_err(|_| StateError {
            path: self.path.clone(),
            message: "lock poisoned".into(),
        })?;
        let out = f(&mut guard);
        let bytes = serde_json::to_vec_pretty(&*guard).map_err(|e| StateError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        util::atomic_file::write(&self.path, &bytes, None).map_err(|e| StateError {
            path: self.path.clone(),
            message: format!("cannot write: {e}"),
        })?;
        Ok(out)
    }
}
