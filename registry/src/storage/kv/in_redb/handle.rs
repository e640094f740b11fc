//! The redb database behind the metadata, opened again by itself after a write failed on I/O.
//!
//! After a commit fails on I/O (a disk that filled inside it), redb refuses every later
//! operation with `PreviousIo` until the file is opened again. A registry on an unattended
//! device must not wait for somebody to restart it: every redb I/O failure is counted
//! ([`io_failed`], called where redb errors become `StorageError`), and the next transaction
//! after one opens the file again first: redb rolls back to the last good commit, and the
//! operation proceeds (or meets the full disk again, with the same clear error).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadTransaction, WriteTransaction};

use crate::storage::StorageError;

/// How long a reopen waits for the transactions still running on the failed handle (each
/// holds the file's lock until it ends; they are short).
const REOPEN_WAIT: Duration = Duration::from_secs(10);

/// redb I/O failures in this process. Process-wide because an error is converted where no
/// handle is at hand; a process with two stores (tests) may reopen a healthy one once, which
/// costs only the reopen.
static IO_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Records that redb met an I/O error (or refused for an earlier one): the next transaction
/// opens the database again first.
pub(crate) fn io_failed() {
    IO_FAILURES.fetch_add(1, Ordering::AcqRel);
}

pub(crate) struct Handle {
    path: PathBuf,
    /// None between dropping a failed handle and opening the file again.
    current: RwLock<Option<Arc<Database>>>,
    /// `IO_FAILURES` as of the last open.
    opened_at: AtomicU64,
}

impl Handle {
    pub(crate) fn open(path: &Path) -> Result<Handle, StorageError> {
        let opened_at = AtomicU64::new(IO_FAILURES.load(Ordering::Acquire));
        Ok(Handle {
            path: path.to_owned(),
            current: RwLock::new(Some(Arc::new(open(path)?))),
            opened_at,
        })
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        Ok(self.database()?.begin_read()?)
    }

    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, StorageError> {
        Ok(self.database()?.begin_write()?)
    }

    fn database(&self) -> Result<Arc<Database>, StorageError> {
        let failures = IO_FAILURES.load(Ordering::Acquire);
        if failures == self.opened_at.load(Ordering::Acquire) {
            if let Some(db) = self
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                return Ok(db.clone());
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if failures != self.opened_at.swap(failures, Ordering::AcqRel) && current.is_some() {
            tracing::warn!(
                path = %self.path.display(),
                "a metadata read or write failed on I/O (e.g. on a full disk): opening the \
                 database again"
            );
            *current = None;
        }
        self.open_into(&mut current)
    }

    /// The open handle, opening the file when there is none. The file opens only once every
    /// transaction on a dropped handle has ended (each holds the file's lock; they are short).
    fn open_into(
        &self,
        current: &mut Option<Arc<Database>>,
    ) -> Result<Arc<Database>, StorageError> {
        if let Some(db) = current {
            return Ok(db.clone());
        }
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match open(&self.path) {
                Ok(db) => return Ok(current.insert(Arc::new(db)).clone()),
                Err(StorageError::InUse(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Opens (or creates) the file; redb rolls back to the last good commit, repairing its
/// allocator state when the file was not closed cleanly (a crash, a kill).
fn open(path: &Path) -> Result<Database, StorageError> {
    let started = Instant::now();
    let mut builder = Database::builder();
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
    let db = builder.create(path).map_err(|err| match err {
        // redb locks the file: another process (a running `serve`) has the store open.
        DatabaseError::DatabaseAlreadyOpen => StorageError::InUse(path.to_owned()),
        err => err.into(),
    })?;
    if repaired.load(Ordering::Relaxed) {
        tracing::info!(
            path = %path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metadata database was not closed cleanly (a crash or kill): redb checked it and \
             rebuilt its free-space map; every committed write is kept"
        );
    }
    Ok(db)
}
