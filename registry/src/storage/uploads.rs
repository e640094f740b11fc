//! Upload sessions: bytes of a blob being pushed, kept on disk (`uploads/<id>/data`) so a
//! chunked or interrupted upload can continue, even after a restart.
//!
//! A session is hashed as it grows; after a restart the bytes on disk are hashed once again on
//! first use. Chunks that fail halfway are rolled back, so a session never holds half a chunk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::storage::space::{Space, CHECK_EVERY};
use crate::storage::StorageError;
use oci::digest::{Algorithm, Digest, Hasher};
use oci::name::RepoName;

/// The state of one session. Held behind an async mutex: one writer at a time.
pub struct Session {
    pub(crate) id: String,
    pub(crate) repo: RepoName,
    pub(crate) dir: PathBuf,
    file: File,
    hasher: Hasher,
    len: u64,
    /// Writes the bytes to disk in the background while more arrive (see [`EarlyWriteback`]).
    writeback: Option<EarlyWriteback>,
    space: Space,
    /// Free space was last confirmed for the session to grow up to this many bytes.
    space_checked_to: u64,
}

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

pub type SessionRef = Arc<tokio::sync::Mutex<Session>>;

pub struct Uploads {
    root: PathBuf,
    space: Space,
    live: Mutex<HashMap<String, (RepoName, SessionRef)>>,
}

/// Upload ids are chosen by us (UUIDs) or by the sync engine; keep them path-safe.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}

impl Uploads {
    pub fn open(root: PathBuf, space: Space) -> Result<Uploads, StorageError> {
        fs::create_dir_all(&root)
            .map_err(StorageError::io(format!("create {}", root.display())))?;
        Ok(Uploads {
            root,
            space,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Finds session `id` of `repo`: in memory, or on disk after a restart. With `create`, a
    /// missing session is started under that id.
    pub fn get(&self, repo: &RepoName, id: &str, create: bool) -> Result<SessionRef, StorageError> {
        if !valid_id(id) {
            return Err(StorageError::UploadUnknown(id.chars().take(130).collect()));
        }
        if let Some((owner, session)) = self.live.lock().expect("uploads lock").get(id) {
            return if owner == repo {
                Ok(session.clone())
            } else {
                Err(StorageError::UploadUnknown(id.to_owned()))
            };
        }
        // Load from disk without holding the map: re-hashing a large partial blob after a
        // restart takes a while, and other uploads must not wait for it.
        let dir = self.root.join(id);
        let session = match fs::read_to_string(dir.join("repo")) {
            Ok(owner) if owner == repo.as_str() => reopen(id, repo, dir, &self.space)?,
            Ok(_) => return Err(StorageError::UploadUnknown(id.to_owned())),
            Err(_) if create => start(id, repo, dir, &self.space)?,
            Err(_) => return Err(StorageError::UploadUnknown(id.to_owned())),
        };
        let mut live = self.live.lock().expect("uploads lock");
        // A concurrent caller may have loaded it meanwhile: everyone shares the first.
        let (owner, session) = live
            .entry(id.to_owned())
            .or_insert_with(|| (repo.clone(), Arc::new(tokio::sync::Mutex::new(session))));
        if owner != repo {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        Ok(session.clone())
    }

    pub fn new_session(&self, repo: &RepoName) -> Result<SessionRef, StorageError> {
        self.get(repo, &uuid::Uuid::new_v4().to_string(), true)
    }

    /// Deletes sessions idle for longer than `ttl` that nobody is writing to; returns how many.
    pub fn expire(&self, ttl: std::time::Duration) -> usize {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return 0;
        };
        let mut expired = 0;
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let idle = fs::metadata(entry.path().join("data"))
                .or_else(|_| entry.metadata())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > ttl);
            if !idle {
                continue;
            }
            let mut live = self.live.lock().expect("uploads lock");
            let busy = live.get(&id).is_some_and(|(_, s)| s.try_lock().is_err());
            if !busy {
                live.remove(&id);
                let _ = fs::remove_dir_all(entry.path());
                expired += 1;
            }
        }
        expired
    }

    /// Forgets a session and deletes its bytes.
    pub fn remove(&self, id: &str) {
        self.live.lock().expect("uploads lock").remove(id);
        let _ = fs::remove_dir_all(self.root.join(id));
    }
}

fn start(id: &str, repo: &RepoName, dir: PathBuf, space: &Space) -> Result<Session, StorageError> {
    fs::create_dir_all(&dir).map_err(StorageError::io(format!("create {}", dir.display())))?;
    // Never truncate: a concurrent first open of the same id may already be writing here.
    let file = match OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(dir.join("data"))
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return reopen(id, repo, dir, space)
        }
        Err(err) => {
            return Err(StorageError::io(format!("create {}/data", dir.display()))(
                err,
            ))
        }
    };
    fs::write(dir.join("repo"), repo.as_str())
        .map_err(StorageError::io(format!("write {}/repo", dir.display())))?;
    Ok(Session {
        id: id.to_owned(),
        repo: repo.clone(),
        dir,
        file,
        hasher: Hasher::new(Algorithm::Sha256),
        len: 0,
        writeback: None,
        space: space.clone(),
        space_checked_to: 0,
    })
}

fn reopen(id: &str, repo: &RepoName, dir: PathBuf, space: &Space) -> Result<Session, StorageError> {
    let path = dir.join("data");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StorageError::io(format!("open {}", path.display())))?;
    let (hasher, len) = hash_file(&mut file, Algorithm::Sha256)
        .map_err(StorageError::io(format!("read {}", path.display())))?;
    Ok(Session {
        id: id.to_owned(),
        repo: repo.clone(),
        dir,
        file,
        hasher,
        len,
        writeback: None,
        space: space.clone(),
        space_checked_to: 0,
    })
}

fn hash_file(file: &mut File, algorithm: Algorithm) -> std::io::Result<(Hasher, u64)> {
    let mut hasher = Hasher::new(algorithm);
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((hasher, len))
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// Bytes held so far (all of them hashed).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Refuses `size` more bytes (a request body of known length) up front when they would
    /// leave less free space than the reserve; with room for them, `append` need not look again
    /// until the session grows past them.
    pub fn make_room(&mut self, size: u64) -> Result<(), StorageError> {
        self.space.check_write(
            || {
                format!(
                    "{size} more bytes of upload {} holding {}",
                    self.id, self.len
                )
            },
            size,
        )?;
        self.space_checked_to = self.len + size;
        Ok(())
    }

    /// Appends bytes (blocking I/O): all of them or, on an error, none. Refused when the free
    /// space would go below the reserve, checked every [`CHECK_EVERY`] bytes.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let size = data.len() as u64;
        let what = || format!("upload {} holding {} bytes", self.id, self.len);
        if self.len + size > self.space_checked_to {
            let window = CHECK_EVERY.max(size);
            self.space.check_write(what, window)?;
            self.space_checked_to = self.len + window;
        }
        if let Err(err) = self.file.write_all(data) {
            let err = StorageError::io(format!("write {}/data", self.dir.display()))(err);
            let err = self.space.explain(err, what, size);
            // A write that failed halfway leaves part of `data`: cut it off again.
            let len = self.len;
            self.rollback((self.hasher.clone(), len))?;
            return Err(err);
        }
        self.hasher.update(data);
        self.len += data.len() as u64;
        self.flush_in_background();
        Ok(())
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

    /// A point to roll back to if the next chunk fails halfway.
    pub fn checkpoint(&self) -> (Hasher, u64) {
        (self.hasher.clone(), self.len)
    }

    /// Drops whatever was appended since `checkpoint`.
    pub fn rollback(&mut self, (hasher, len): (Hasher, u64)) -> Result<(), StorageError> {
        self.file
            .set_len(len)
            .and_then(|_| self.file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(StorageError::io(format!(
                "truncate {}/data",
                self.dir.display()
            )))?;
        self.hasher = hasher;
        self.len = len;
        if let Some(wb) = &mut self.writeback {
            // The next flush is due WRITEBACK_EVERY bytes after what is left.
            wb.asked_at = wb.asked_at.min(len);
        }
        Ok(())
    }

    /// Verifies the bytes against `expected` and makes them durable; returns the data file to
    /// install. On mismatch the caller drops the session (the bytes are not kept).
    pub(crate) fn seal(&mut self, expected: &Digest) -> Result<PathBuf, StorageError> {
        let actual = if expected.algorithm() == Algorithm::Sha256 {
            self.hasher.clone().finish()
        } else {
            hash_file(&mut self.file, expected.algorithm())
                .map_err(StorageError::io(format!(
                    "read {}/data",
                    self.dir.display()
                )))?
                .0
                .finish()
        };
        if &actual != expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.file.sync_all().map_err(StorageError::io(format!(
            "fsync {}/data",
            self.dir.display()
        )))?;
        util::crash_point::crash_point("after_blob_fsync");
        Ok(self.dir.join("data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MinFree;

    fn no_reserve(dir: &std::path::Path) -> Space {
        Space::new(dir.to_owned(), MinFree::Bytes(0))
    }

    #[test]
    fn large_uploads_flush_early_and_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(dir.path().join("uploads"), no_reserve(dir.path())).unwrap();
        let repo: RepoName = "r".parse().unwrap();
        let session = uploads.get(&repo, "big", true).unwrap();
        let mut session = session.blocking_lock();
        let chunk = vec![7u8; 1 << 20];
        let mut whole = Hasher::new(Algorithm::Sha256);
        for i in 0..(WRITEBACK_EVERY >> 20) + 8 {
            session.append(&chunk).unwrap();
            whole.update(&chunk);
            let past = session.len() >= WRITEBACK_EVERY;
            assert_eq!(session.writeback.is_some(), past, "after {} MiB", i + 1);
        }
        let digest = whole.finish();
        let path = session.seal(&digest).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), session.len());
    }

    #[test]
    fn a_rollback_below_the_last_early_flush_keeps_the_session_usable() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::open(dir.path().join("uploads"), no_reserve(dir.path())).unwrap();
        let repo: RepoName = "r".parse().unwrap();
        let session = uploads.get(&repo, "cut", true).unwrap();
        let mut session = session.blocking_lock();
        let chunk = vec![1u8; 1 << 20];
        // Past the first flush, and two MiB short of the second.
        let below = 2 * (WRITEBACK_EVERY >> 20) - 2;
        for _ in 0..below {
            session.append(&chunk).unwrap();
        }
        let checkpoint = session.checkpoint();
        // A chunk that passes the flush point, then breaks off and is rolled back.
        for _ in 0..4 {
            session.append(&chunk).unwrap();
        }
        session.rollback(checkpoint).unwrap();
        let mut whole = Hasher::new(Algorithm::Sha256);
        for _ in 0..below + 40 {
            whole.update(&chunk);
        }
        for _ in 0..40 {
            session.append(&chunk).unwrap();
        }
        let path = session.seal(&whole.finish()).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), session.len());
    }

    #[test]
    fn concurrent_first_opens_of_one_id_share_one_session_and_lose_no_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uploads =
            Arc::new(Uploads::open(dir.path().join("uploads"), no_reserve(dir.path())).unwrap());
        let repo: RepoName = "r".parse().unwrap();
        let first = uploads.get(&repo, "sync-blob-1", true).unwrap();
        first.blocking_lock().append(b"already fetched").unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let uploads = uploads.clone();
                let repo = repo.clone();
                std::thread::spawn(move || uploads.get(&repo, "sync-blob-1", true).unwrap())
            })
            .collect();
        for handle in handles {
            assert!(Arc::ptr_eq(&first, &handle.join().unwrap()));
        }
        assert_eq!(first.blocking_lock().len(), 15);
        let other: RepoName = "other".parse().unwrap();
        assert!(
            uploads.get(&other, "sync-blob-1", true).is_err(),
            "an id belongs to one repository"
        );
    }

    #[test]
    fn a_session_survives_a_restart_with_its_bytes_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let repo: RepoName = "r".parse().unwrap();
        {
            let uploads =
                Uploads::open(dir.path().join("uploads"), no_reserve(dir.path())).unwrap();
            let s = uploads.get(&repo, "resume-me", true).unwrap();
            s.blocking_lock().append(b"hello ").unwrap();
        }
        let uploads = Uploads::open(dir.path().join("uploads"), no_reserve(dir.path())).unwrap();
        let s = uploads.get(&repo, "resume-me", false).unwrap();
        let mut s = s.blocking_lock();
        assert_eq!(s.len(), 6);
        s.append(b"world").unwrap();
        let expected = Digest::sha256_of(b"hello world");
        assert!(s.seal(&expected).is_ok());
    }
}
