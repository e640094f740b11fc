//! Upload sessions: the bytes of a blob being pushed, kept where the blob store keeps them
//! ([`UploadData`]: `uploads/<id>/data` on the local disk, a staging blob in an object store) so
//! a chunked or interrupted upload can continue, even after a restart or on another replica.
//!
//! A session is hashed as it grows. When some of its bytes were not appended through this
//! session (a restart; another replica took some chunks), they are hashed again: on the local
//! disk on first use, in an object store at the seal. Chunks that fail halfway are rolled
//! back, so a session never holds half a chunk that was refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::storage::blob_store::{BlobStore, UploadData};
use crate::storage::space::{Space, CHECK_EVERY};
use crate::storage::StorageError;
use oci::digest::{Algorithm, Digest, Hasher};
use oci::name::RepoName;

/// The state of one session. Held behind an async mutex: one writer at a time.
pub struct Session {
    pub(crate) id: String,
    pub(crate) repo: RepoName,
    data: Box<dyn UploadData>,
    /// The SHA-256 of the bytes so far, when every one of them passed through `append` (or was
    /// hashed on reopening); `None` once some were not, and the seal hashes them all.
    hasher: Option<Hasher>,
    len: u64,
    /// The local filesystem the bytes fill, checked against `--min-free` (none for an object
    /// store).
    space: Option<Space>,
    /// Free space was last confirmed for the session to grow up to this many bytes.
    space_checked_to: u64,
}

/// A point to roll a session back to (see [`Session::checkpoint`]).
#[derive(Clone)]
pub struct Checkpoint {
    hasher: Option<Hasher>,
    len: u64,
}

pub type SessionRef = Arc<tokio::sync::Mutex<Session>>;

pub struct Uploads {
    blobs: Arc<dyn BlobStore>,
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
    pub fn open(blobs: Arc<dyn BlobStore>) -> Uploads {
        Uploads {
            blobs,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Finds session `id` of `repo`: in memory, or in the blob store after a restart (or when
    /// another replica started it). With `create`, a missing session is started under that id.
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
        // Load without holding the map: re-hashing a large partial blob after a restart takes
        // a while, and other uploads must not wait for it.
        let session = match self.load(repo, id)? {
            Some(session) => session,
            None if create => match self.blobs.create_upload(id, repo.as_str())? {
                Some(data) => self.session(id, repo, data, 0, Some(Hasher::new(Algorithm::Sha256))),
                // Started by someone else a moment ago: that one.
                None => self
                    .load(repo, id)?
                    .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))?,
            },
            None => return Err(StorageError::UploadUnknown(id.to_owned())),
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

    /// Session `id` as the blob store holds it, if it is there and `repo`'s.
    fn load(&self, repo: &RepoName, id: &str) -> Result<Option<Session>, StorageError> {
        match self.blobs.open_upload(id)? {
            Some((owner, mut data)) if owner == repo.as_str() => {
                let resumed = data.resume()?;
                Ok(Some(self.session(
                    id,
                    repo,
                    data,
                    resumed.len,
                    resumed.hasher,
                )))
            }
            Some(_) => Err(StorageError::UploadUnknown(id.to_owned())),
            None => Ok(None),
        }
    }

    fn session(
        &self,
        id: &str,
        repo: &RepoName,
        data: Box<dyn UploadData>,
        len: u64,
        hasher: Option<Hasher>,
    ) -> Session {
        Session {
            id: id.to_owned(),
            repo: repo.clone(),
            data,
            hasher,
            len,
            space: self.blobs.local_space().cloned(),
            space_checked_to: 0,
        }
    }

    pub fn new_session(&self, repo: &RepoName) -> Result<SessionRef, StorageError> {
        self.get(repo, &uuid::Uuid::new_v4().to_string(), true)
    }

    /// Deletes sessions idle for longer than `ttl` that nobody here is writing to; returns how
    /// many.
    pub fn expire(&self, ttl: std::time::Duration) -> usize {
        let sessions = match self.blobs.list_uploads() {
            Ok(sessions) => sessions,
            Err(err) => {
                tracing::warn!("cannot list upload sessions to expire idle ones: {err}");
                return 0;
            }
        };
        let mut expired = 0;
        for (id, modified) in sessions {
            let idle = modified.elapsed().is_ok_and(|age| age > ttl);
            if !idle {
                continue;
            }
            let mut live = self.live.lock().expect("uploads lock");
            let busy = live.get(&id).is_some_and(|(_, s)| s.try_lock().is_err());
            if !busy {
                live.remove(&id);
                self.blobs.remove_upload(&id);
                expired += 1;
            }
        }
        expired
    }

    /// Forgets a session and deletes its bytes.
    pub fn remove(&self, id: &str) {
        self.live.lock().expect("uploads lock").remove(id);
        self.blobs.remove_upload(id);
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    /// Bytes held so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Catches up with what another replica did to the session since this one last saw it (it
    /// took the chunks in between): its length from the store, its bytes hashed at the seal.
    /// Nothing on the local disk, where no one else writes a session. Blocking.
    pub fn refresh(&mut self) -> Result<(), StorageError> {
        if let Some(len) = self.data.changed_since(self.len)? {
            self.len = len;
            self.hasher = None;
            self.space_checked_to = 0;
        }
        Ok(())
    }

    /// Refuses `size` more bytes (a request body of known length) up front when they would
    /// leave less free space than the reserve; with room for them, `append` need not look again
    /// until the session grows past them.
    pub fn make_room(&mut self, size: u64) -> Result<(), StorageError> {
        if let Some(space) = &self.space {
            space.check_write(
                || {
                    format!(
                        "{size} more bytes of upload {} holding {}",
                        self.id, self.len
                    )
                },
                size,
            )?;
        }
        self.space_checked_to = self.len + size;
        Ok(())
    }

    /// Appends bytes (blocking I/O): all of them or, on an error, none. Refused when the free
    /// space would go below the reserve, checked every [`CHECK_EVERY`] bytes.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let size = data.len() as u64;
        let what = || format!("upload {} holding {} bytes", self.id, self.len);
        if let Some(space) = &self.space {
            if self.len + size > self.space_checked_to {
                let window = CHECK_EVERY.max(size);
                space.check_write(what, window)?;
                self.space_checked_to = self.len + window;
            }
        }
        if let Err(err) = self.data.append(data) {
            let err = match &self.space {
                Some(space) => space.explain(err, what, size),
                None => err,
            };
            // A write that failed halfway leaves part of `data`: cut it off again.
            self.data.truncate(self.len)?;
            return Err(err);
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(data);
        }
        self.len += size;
        Ok(())
    }

    /// Makes the bytes appended so far part of the session for every other reader and replica:
    /// call at the end of each chunk the client is told was stored.
    pub fn commit(&mut self) -> Result<(), StorageError> {
        self.data.commit()
    }

    /// Bytes that readers of the session ([`super::Store::upload_reader`]) can see: all of
    /// them on the local disk; the committed ones in an object store.
    pub fn readable_len(&self) -> u64 {
        self.data.readable_len()
    }

    /// A point to roll back to if the next chunk fails halfway.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            hasher: self.hasher.clone(),
            len: self.len,
        }
    }

    /// Drops whatever was appended since `checkpoint`.
    pub fn rollback(&mut self, checkpoint: Checkpoint) -> Result<(), StorageError> {
        self.data.truncate(checkpoint.len)?;
        self.hasher = checkpoint.hasher;
        self.len = checkpoint.len;
        Ok(())
    }

    /// Verifies the bytes against `expected` and makes them durable, ready to install. On
    /// mismatch the caller drops the session (the bytes are not kept).
    pub(crate) fn seal(&mut self, expected: &Digest) -> Result<(), StorageError> {
        self.data.commit()?;
        let actual = match &self.hasher {
            Some(hasher) if expected.algorithm() == Algorithm::Sha256 => hasher.clone().finish(),
            _ => {
                let (hasher, len) = self.data.hash(expected.algorithm())?;
                if len != self.len {
                    return Err(StorageError::UploadInvalid(format!(
                        "upload {} holds {len} bytes in {}, not the {} it was given: push it again",
                        self.id,
                        self.data.describe(),
                        self.len
                    )));
                }
                hasher.finish()
            }
        };
        if &actual != expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.data.make_durable()
    }

    /// The bytes, for the blob store to install once sealed.
    pub(crate) fn data(&mut self) -> &mut dyn UploadData {
        &mut *self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::filesystem::{FsBlobs, FsUpload, WRITEBACK_EVERY};
    use crate::storage::MinFree;

    fn uploads(dir: &std::path::Path) -> Uploads {
        let space = Space::new(dir.to_owned(), MinFree::Bytes(0));
        Uploads::open(Arc::new(FsBlobs::open(dir, space).unwrap()))
    }

    fn flushes_early(session: &mut Session) -> bool {
        let data = session.data.as_any().downcast_mut::<FsUpload>().unwrap();
        data.flushes_early()
    }

    fn data_file_len(dir: &std::path::Path, session: &Session) -> u64 {
        std::fs::metadata(dir.join("uploads").join(session.id()).join("data"))
            .unwrap()
            .len()
    }

    #[test]
    fn large_uploads_flush_early_and_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path());
        let repo: RepoName = "r".parse().unwrap();
        let session = uploads.get(&repo, "big", true).unwrap();
        let mut session = session.blocking_lock();
        let chunk = vec![7u8; 1 << 20];
        let mut whole = Hasher::new(Algorithm::Sha256);
        for i in 0..(WRITEBACK_EVERY >> 20) + 8 {
            session.append(&chunk).unwrap();
            whole.update(&chunk);
            let past = session.len() >= WRITEBACK_EVERY;
            assert_eq!(flushes_early(&mut session), past, "after {} MiB", i + 1);
        }
        let digest = whole.finish();
        session.seal(&digest).unwrap();
        assert_eq!(data_file_len(dir.path(), &session), session.len());
    }

    #[test]
    fn a_rollback_below_the_last_early_flush_keeps_the_session_usable() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = uploads(dir.path());
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
        session.seal(&whole.finish()).unwrap();
        assert_eq!(data_file_len(dir.path(), &session), session.len());
    }

    #[test]
    fn concurrent_first_opens_of_one_id_share_one_session_and_lose_no_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Arc::new(uploads(dir.path()));
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
            let uploads = uploads(dir.path());
            let s = uploads.get(&repo, "resume-me", true).unwrap();
            s.blocking_lock().append(b"hello ").unwrap();
        }
        let uploads = uploads(dir.path());
        let s = uploads.get(&repo, "resume-me", false).unwrap();
        let mut s = s.blocking_lock();
        assert_eq!(s.len(), 6);
        s.append(b"world").unwrap();
        let expected = Digest::sha256_of(b"hello world");
        assert!(s.seal(&expected).is_ok());
    }
}
