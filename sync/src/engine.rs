//! The sync engine for one parent and one local store: what it holds (the parent, the store,
//! the settings, the state file) and the errors its work ends with. Its work lives beside it:
//! `pass.rs` runs a pass (what to compare, in what order, the summary), `feed.rs` and
//! `reconcile.rs` decide what a pass compares, `copy.rs` copies (bottom-up, verified,
//! resumable), `push.rs` pushes up (ReadWrite).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use oci::{Class, Classify, Fault};

use crate::client::ClientError;
use crate::parent::Parent;
use crate::settings::Settings;
use crate::state::{StateError, StateFile};
use crate::store::{LocalStore, StoreError, StoredManifest};
use oci::Digest;
use oci::Reference;

/// Why a piece of work stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The window closed or the time limit passed; partial blobs stay for the next pass.
    #[error("paused: the sync window closed")]
    Paused,
    /// An earlier error ended the pass (the local disk is full): the rest waits for the next.
    #[error("stopped: the local disk is full")]
    Halted,
    /// The parent sent something that must not be kept.
    #[error("upstream {0}")]
    Refused(String),
    /// A repository rule selects nothing at the parent (`--strict`).
    #[error("{0} (--strict)")]
    Scope(String),
    /// The parent refuses to resolve the tag (405): `readEnabled: false` there. Not recorded as
    /// an error: the pass notes it in `read_locked` and keeps a copy held here.
    #[error("read-locked at the parent (readEnabled: false)")]
    ReadLocked,
    #[error("internal: {0}")]
    Internal(String),
}

impl Classify for SyncError {
    fn class(&self) -> Class {
        match self {
            SyncError::Client(e) => e.class(),
            // A blob that did not hash to its digest was the parent's bytes; a manifest missing
            // what it references here is a bug in the order of copying.
            SyncError::Store(StoreError::DigestMismatch { .. }) => {
                Class::new(Fault::Upstream, true)
            }
            SyncError::Store(StoreError::MissingReference(_)) => Class::new(Fault::Internal, false),
            SyncError::State(StateError::LeaseLost { .. }) => Class::new(Fault::Local, true),
            SyncError::Store(StoreError::Other(_)) | SyncError::State(_) => {
                Class::new(Fault::Local, false)
            }
            SyncError::Paused | SyncError::Halted => Class::new(Fault::Local, true),
            // Worth retrying once space is freed, like the registry's 507.
            SyncError::Store(StoreError::Full(_)) => Class::new(Fault::Local, true),
            SyncError::Refused(_) => Class::new(Fault::Upstream, false),
            SyncError::Scope(_) => Class::new(Fault::Client, false),
            SyncError::ReadLocked => Class::new(Fault::Upstream, false),
            SyncError::Internal(_) => Class::new(Fault::Internal, false),
        }
    }
}

/// Per-blob progress for `sync --once`'s progress bars.
pub trait Progress: Send + Sync {
    fn blob_started(&self, _repo: &str, _digest: &Digest, _size: u64, _from: u64) {}
    fn blob_progress(&self, _digest: &Digest, _done: u64) {}
    fn blob_finished(&self, _digest: &Digest, _ok: bool) {}
}

/// No progress output (the background schedule).
pub struct NoProgress;
impl Progress for NoProgress {}

/// The sync engine for one parent and one local store.
pub struct Engine {
    pub client: Arc<dyn Parent>,
    pub store: Arc<dyn LocalStore>,
    pub settings: Settings,
    pub state: Arc<StateFile>,
    pub(crate) progress: Arc<dyn Progress>,
    pub(crate) blob_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) blob_slots: Semaphore,
    /// The tags sync recorded were checked against the local store since this process started
    /// (see `reconcile.rs`).
    pub(crate) audited: AtomicBool,
}

/// Deterministic upload id for a blob download into `repo`, so a restart finds the partial
/// bytes (upload sessions belong to one repository, hence the repository's hash in the id).
pub fn upload_id(repo: &str, digest: &Digest) -> String {
    let repo_hash = Digest::sha256_of(repo.as_bytes());
    let hex = digest.hex();
    format!(
        "sync-{}-{}-{}",
        digest.algorithm().name(),
        &hex[..hex.len().min(64)],
        &repo_hash.hex()[..12]
    )
}

/// Runs a blocking store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn LocalStore>,
    f: impl FnOnce(&dyn LocalStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SyncError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&*s))
        .await
        .map_err(|e| SyncError::Internal(format!("store task failed: {e}")))?
        .map_err(SyncError::Store)
}

impl Engine {
    /// The manifest stored locally in `repo` under `digest`, if any.
    pub(crate) async fn local_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, SyncError> {
        let (r, d) = (repo.to_owned(), digest.clone());
        blocking(&self.store, move |s| {
            s.get_manifest(&r, &Reference::Digest(d))
        })
        .await
    }

    pub fn new(
        client: Arc<dyn Parent>,
        store: Arc<dyn LocalStore>,
        settings: Settings,
        state: Arc<StateFile>,
        progress: Arc<dyn Progress>,
    ) -> Engine {
        let slots = settings.limits.concurrency;
        Engine {
            client,
            store,
            settings,
            state,
            progress,
            blob_locks: Mutex::new(HashMap::new()),
            blob_slots: Semaphore::new(slots),
            audited: AtomicBool::new(false),
        }
    }
}
