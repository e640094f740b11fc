//! What the store can fail with: one variant per way a storage operation goes wrong, each
//! saying where it came from and what to do. The HTTP layer maps them to OCI codes in one
//! place (`From<StorageError> for ApiError` in `api::error`); nothing here knows HTTP.

use oci::manifest::ManifestError;
use oci::{Class, Classify, Digest, Fault};

/// What the store can fail with. Each variant maps to one OCI code.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Db(String),
    /// The metadata database could not be reached, or asked for the transaction to be run
    /// again (a lost connection, a server restarting): worth retrying shortly.
    #[error("metadata store unavailable: {0}; retry shortly")]
    Unavailable(String),
    /// redb locks its file: another process has this store open.
    #[error("{} is open in another process (a running `connected-registry serve`, or another command on this data directory): stop it first, or ask the running registry", .0.display())]
    InUse(std::path::PathBuf),
    #[error("digest mismatch: the content's digest is {actual}, not the claimed {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error(
        "upload session {0:?} is unknown (finished, cancelled, expired, or of another repository)"
    )]
    UploadUnknown(String),
    #[error("{0}")]
    UploadInvalid(String),
    #[error("chunk starts at byte {start}, but the upload holds {len} bytes: send chunks in order, starting at {len}")]
    ChunkOutOfOrder { start: u64, len: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest too large: {size} bytes, over the limit of {limit} bytes (setting --max-manifest-size)")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error(
        "manifest references {0}, which this repository does not hold: push it before the manifest"
    )]
    ManifestBlobUnknown(Digest),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("repository unknown")]
    NameUnknown,
    #[error("{0}")]
    Denied(String),
    /// A `changeableAttributes` switch forbids it; the message names the switch and how to
    /// turn it back on.
    #[error("{0}")]
    Locked(String),
    /// A write made on the strength of a lease (sync's progress) while another replica holds
    /// it: nothing was written.
    #[error("the {lease} lease is held by {holder}, not by this replica: it stopped writing, the holder carries on")]
    LeaseLost { lease: String, holder: String },
    /// The data directory's blobs are elsewhere than the command was told (`--storage`).
    #[error("{0}")]
    WrongStorage(String),
    /// The object store that holds the blobs (Azure Blob Storage) failed or could not be
    /// reached; `retry` says whether trying again later can help.
    #[error("{store}: {action} failed: {message} ({})", if *.retry { "transient: retrying may help" } else { "retrying will not help until the storage account, its key or the container is fixed" })]
    Remote {
        store: String,
        action: String,
        message: String,
        retry: bool,
    },
    /// Refused before the disk is full (the reserve), or failed because it is.
    #[error(
        "not enough disk space for {what} ({size} bytes): {available} bytes are free, and writes stop at the \
         reserve of {reserve} bytes (--min-free {min_free}) plus {} bytes kept for the metadata database; \
         nothing was stored: free space (delete tags, then collect garbage) and retry",
        crate::storage::space::METADATA_ROOM
    )]
    NoSpace {
        what: String,
        size: u64,
        available: u64,
        reserve: u64,
        min_free: crate::storage::space::MinFree,
    },
}

impl Classify for StorageError {
    /// The disk and the database are this machine's; the object store behind the blobs is the
    /// next hop up; everything else is a request the store refused. A full disk is worth retrying once space is freed; other I/O and database
    /// failures need someone to look.
    fn class(&self) -> Class {
        match self {
            StorageError::Io { source, .. } => Class::new(
                Fault::Local,
                source.kind() == std::io::ErrorKind::StorageFull,
            ),
            StorageError::Db(_) | StorageError::InUse(_) | StorageError::WrongStorage(_) => {
                Class::new(Fault::Local, false)
            }
            StorageError::NoSpace { .. }
            | StorageError::Unavailable(_)
            | StorageError::LeaseLost { .. } => Class::new(Fault::Local, true),
            StorageError::Remote { retry, .. } => Class::new(Fault::Upstream, *retry),
            _ => Class::new(Fault::Client, false),
        }
    }
}

impl StorageError {
    /// A full disk: refused ahead by the reserve, or a write that failed with `ENOSPC`.
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::NoSpace { .. } => true,
            StorageError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }
}

/// A database error. A full disk under it stays a full disk (`Io` of kind `StorageFull`: a
/// 507, worth retrying once space is freed). After an I/O failure redb refuses everything
/// until the database is opened again, which the next transaction does (`kv::in_redb`).
fn db(storage: Option<&redb::StorageError>, err: &dyn std::fmt::Display) -> StorageError {
    if matches!(
        storage,
        Some(redb::StorageError::Io(_) | redb::StorageError::PreviousIo)
    ) {
        crate::storage::kv::in_redb::io_failed();
    }
    match storage {
        Some(redb::StorageError::Io(io)) if io.kind() == std::io::ErrorKind::StorageFull => {
            StorageError::Io {
                context: "metadata database (meta.redb)".into(),
                source: std::io::Error::new(std::io::ErrorKind::StorageFull, err.to_string()),
            }
        }
        Some(redb::StorageError::PreviousIo) => StorageError::Db(format!(
            "{err} (an earlier metadata write failed, e.g. on a full disk): the database is \
             opened again at the next request; retry"
        )),
        _ => StorageError::Db(err.to_string()),
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(err: $t) -> StorageError {
                db(<$t>::storage(&err), &err)
            }
        }
    )*};
}

/// Where each redb error type keeps its storage error.
trait Storage {
    fn storage(&self) -> Option<&redb::StorageError>;
}

impl Storage for redb::StorageError {
    fn storage(&self) -> Option<&redb::StorageError> {
        Some(self)
    }
}

impl Storage for redb::Error {
    fn storage(&self) -> Option<&redb::StorageError> {
        None
    }
}

macro_rules! storage_via_variant {
    ($($t:ident),*) => {$(
        impl Storage for redb::$t {
            fn storage(&self) -> Option<&redb::StorageError> {
                match self {
                    redb::$t::Storage(s) => Some(s),
                    _ => None,
                }
            }
        }
    )*};
}
storage_via_variant!(DatabaseError, TransactionError, TableError, CommitError);

db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<ManifestError> for StorageError {
    fn from(err: ManifestError) -> StorageError {
        StorageError::ManifestInvalid(err.0)
    }
}
