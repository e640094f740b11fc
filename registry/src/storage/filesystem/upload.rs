//! An upload session's bytes on the local disk: `uploads/<id>/data`, appended in place, with
//! its repository in `uploads/<id>/repo`. A session that passes [`WRITEBACK_EVERY`] bytes gets
//! a helper thread that flushes the file while more arrive (see [`EarlyWriteback`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use oci::digest::{Algorithm, Hasher};

use crate::storage::blob_store::{hash_all, Resumed, UploadData};
use crate::storage::StorageError;

/// Every this many bytes appended, the session's data starts going to disk in the background.
pub const WRITEBACK_EVERY: u64 = 32 << 20;

/// A helper thread that flushes an upload's file (`fdatasync` on its own handle) while the
/// appender keeps writing, so that the fsync which makes a multi-GB blob durable at the end
/// only waits for the last few MiB: disk and network work at the same time instead of one
/// after the other. Started once a session passes [`WRITEBACK_EVERY`]; small uploads never
/// pay for a thread.
struct EarlyWriteback {
    /// Capacity one: a request while a flush runs is dropped, the next one covers it.
    wake: std::sync::mpsc::SyncSender<()>,
    /// Bytes appended when the last flush was asked for.
    asked_at: u64,
}

impl EarlyWriteback {
    fn start(file: &File) -> std::io::Result<EarlyWriteback> {
        let file = file.try_clone()?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("upload-writeback".into())
            .spawn(move || {
                // Ends when the session is dropped (the sender goes with it).
                while woken.recv().is_ok() {
                    // Best effort: the final fsync in `seal` reports any error.
                    let _ = file.sync_data();
                }
            })?;
        Ok(EarlyWriteback { wake, asked_at: 0 })
    }
}

/// One session's data file.
pub struct FsUpload {
    dir: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Writes the bytes to disk in the background while more arrive.
    writeback: Option<EarlyWriteback>,
}

impl FsUpload {
    /// Starts session directory `dir` for `repo`; `None` when its data file exists already (a
    /// concurrent first open of the same id is writing there: never truncate it).
    pub(super) fn create(dir: PathBuf, repo: &str) -> Result<Option<FsUpload>, StorageError> {
        fs::create_dir_all(&dir).map_err(StorageError::io(format!("create {}", dir.display())))?;
        // The owner first, by rename: whoever finds the data file finds its owner too.
        let owner = dir.join("repo");
        if !owner.is_file() {
            let temp = dir.join(format!("repo.{}", uuid::Uuid::new_v4()));
            fs::write(&temp, repo)
                .and_then(|_| fs::rename(&temp, &owner))
                .map_err(StorageError::io(format!("write {}", owner.display())))?;
        }
        let file = match OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(dir.join("data"))
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(err) => {
                return Err(StorageError::io(format!("create {}/data", dir.display()))(
                    err,
                ))
            }
        };
        Ok(Some(FsUpload {
            dir,
            file,
            len: 0,
            writeback: None,
        }))
    }

    /// Opens the data file of an existing session directory (created empty if a crash left
    /// none).
    pub(super) fn open(dir: PathBuf) -> Result<FsUpload, StorageError> {
        let path = dir.join("data");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StorageError::io(format!("open {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(StorageError::io(format!("stat {}", path.display())))?
            .len();
        Ok(FsUpload {
            dir,
            file,
            len,
            writeback: None,
        })
    }

    /// The data file, which becomes the blob file by rename.
    pub(super) fn data_path(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether the early-writeback helper runs (tests).
    pub fn flushes_early(&self) -> bool {
        self.writeback.is_some()
    }

    /// Asks the writeback helper to flush once another [`WRITEBACK_EVERY`] bytes arrived.
    fn flush_in_background(&mut self) {
        if self.len < WRITEBACK_EVERY {
            return;
        }
        if self.writeback.is_none() {
            // Without the helper, the fsync at the end does all the work: slower, not wrong.
            self.writeback = EarlyWriteback::start(&self.file).ok();
        }
        if let Some(wb) = &mut self.writeback {
            if self.len - wb.asked_at >= WRITEBACK_EVERY {
                wb.asked_at = self.len;
                let _ = wb.wake.try_send(());
            }
        }
    }

    fn hash_file(&mut self, algorithm: Algorithm) -> std::io::Result<(Hasher, u64)> {
        self.file.seek(SeekFrom::Start(0))?;
        let hashed = hash_all(&mut self.file, algorithm)?;
        self.file.seek(SeekFrom::End(0))?;
        Ok(hashed)
    }
}

impl UploadData for FsUpload {
    /// Hashes the bytes on disk once (after a restart, or a session another process left).
    fn resume(&mut self) -> Result<Resumed, StorageError> {
        let (hasher, len) =
            self.hash_file(Algorithm::Sha256)
                .map_err(StorageError::io(format!(
                    "read {}/data",
                    self.dir.display()
                )))?;
        self.len = len;
        Ok(Resumed {
            len,
            hasher: Some(hasher),
        })
    }

    fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file.write_all(data).map_err(StorageError::io(format!(
            "write {}/data",
            self.dir.display()
        )))?;
        self.len += data.len() as u64;
        self.flush_in_background();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        self.file
            .set_len(len)
            .and_then(|_| self.file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(StorageError::io(format!(
                "truncate {}/data",
                self.dir.display()
            )))?;
        self.len = len;
        if let Some(wb) = &mut self.writeback {
            // The next flush is due WRITEBACK_EVERY bytes after what is left.
            wb.asked_at = wb.asked_at.min(len);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn changed_since(&mut self, _known: u64) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }

    fn readable_len(&self) -> u64 {
        self.len
    }

    fn make_durable(&mut self) -> Result<(), StorageError> {
        self.file.sync_all().map_err(StorageError::io(format!(
            "fsync {}/data",
            self.dir.display()
        )))?;
        util::crash_point::crash_point("after_blob_fsync");
        Ok(())
    }

    fn hash(&mut self, algorithm: Algorithm) -> Result<(Hasher, u64), StorageError> {
        self.hash_file(algorithm).map_err(StorageError::io(format!(
            "read {}/data",
            self.dir.display()
        )))
    }

    fn describe(&self) -> String {
        format!("{}/data", self.dir.display())
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
