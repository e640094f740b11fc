//! Filling a blob from elsewhere (pull-through: the parent) while clients stream it: one
//! download per blob, however many clients ask at once.
//!
//! The first request for a `(repository, digest)` starts a download task that writes into an
//! upload session and hashes as it goes; every request, the first included, reads the
//! session's file up to the bytes written so far and waits for more. The task is spawned, so a
//! client that goes away does not stop the others' download. A reader never sends the last
//! byte of the blob before the task has verified the digest and installed the blob: on a
//! mismatch the bytes are dropped and every reader's stream ends with an error short of its
//! Content-Length, so no client accepts unverified content. Whatever the outcome, the entry
//! leaves the map, so the next request after a failure starts a fresh download.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::sync::watch;

use super::blob_store::BlobSource;
use super::{StorageError, Store};
use oci::digest::Digest;
use oci::name::RepoName;

/// Bytes read per step when streaming a blob being filled.
const READ_CHUNK: u64 = 256 * 1024;
/// Bytes a fill appends before it makes them readable to its readers where a session's bytes
/// are readable only once committed (an object store; on the local disk they always are).
const PUBLISH_EVERY: u64 = 4 << 20;

/// A blob's bytes as they arrive from elsewhere.
pub struct Incoming {
    /// The blob's size, when the other side said (a `Content-Length`).
    pub size: Option<u64>,
    /// The bytes from the first; an error ends the download.
    pub chunks: BoxStream<'static, Result<Bytes, String>>,
}

/// Opens the download of a blob; its error is the sentence a client gets.
pub type OpenIncoming = BoxFuture<'static, Result<Incoming, FillError>>;

/// Why a fill failed, as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillError {
    /// The other side has no such blob.
    Missing,
    /// The other side could not be reached or answered late; the message says which.
    Unreachable(String),
    /// Anything else: a refusal, bytes that do not match the digest, a local disk error.
    Failed(String),
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::Missing => write!(f, "the parent has no such blob"),
            FillError::Unreachable(why) | FillError::Failed(why) => write!(f, "{why}"),
        }
    }
}

/// Where one fill stands; readers watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillState {
    /// The download is being opened.
    Opening,
    /// `written` bytes are readable in upload session `upload` (the size, when known).
    Running {
        upload: String,
        written: u64,
        size: Option<u64>,
    },
    /// Verified and installed: the store serves it from now on (readers that opened the
    /// session before carry on from the installed blob).
    Done {
        size: u64,
    },
    Failed(FillError),
}

/// One blob being filled.
pub struct Fill {
    pub digest: Digest,
    state: watch::Receiver<FillState>,
}

/// A fill's key: repository and digest (a blob is fetched for the repository that asks, as the
/// parent's access control is per repository).
type FillKey = (String, Digest);

/// The fills in flight, by repository and digest: what makes concurrent requests share one
/// download. Cheap to clone.
#[derive(Clone, Default)]
pub struct Fills {
    inflight: Arc<Mutex<HashMap<FillKey, Arc<Fill>>>>,
}

impl Fills {
    /// The fill of `digest` into `repo`: the one in flight, or a new one whose download
    /// `open` starts (`open` is dropped unused when a fill is in flight already).
    pub fn fill(
        &self,
        store: &Store,
        repo: &RepoName,
        digest: &Digest,
        open: OpenIncoming,
    ) -> Arc<Fill> {
        let key = (repo.as_str().to_owned(), digest.clone());
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fill) = inflight.get(&key) {
            return fill.clone();
        }
        // A fill that ended between the caller's miss and now left the blob here: no second
        // download.
        if let Ok(Some(size)) = store.repo_blob(repo, digest) {
            return Arc::new(Fill {
                digest: digest.clone(),
                state: watch::channel(FillState::Done { size }).1,
            });
        }
        let (tx, rx) = watch::channel(FillState::Opening);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            state: rx,
        });
        inflight.insert(key.clone(), fill.clone());
        drop(inflight);
        let (store, repo, digest, map) =
            (store.clone(), repo.clone(), digest.clone(), self.clone());
        tokio::spawn(async move {
            let outcome = download(&store, &repo, &digest, open, &tx).await;
            // Out of the map first: a request from now on finds the blob installed, or starts
            // afresh after a failure.
            map.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            let end = match outcome {
                Ok(size) => FillState::Done { size },
                Err(err) => {
                    tracing::warn!(repo = %repo, %digest, error = %err, "on-demand blob download failed; nothing was kept");
                    FillState::Failed(err)
                }
            };
            tx.send_replace(end);
        });
        fill
    }

    /// How many fills are in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// The download task: writes into an upload session, verifies, installs, links.
async fn download(
    store: &Store,
    repo: &RepoName,
    digest: &Digest,
    open: OpenIncoming,
    tx: &watch::Sender<FillState>,
) -> Result<u64, FillError> {
    let local =
        |e: StorageError| FillError::Failed(format!("storing blob {digest} here failed: {e}"));
    let id = fill_id(repo, digest);
    // A session left by an earlier attempt (or a restart) starts over: its bytes are unverified.
    store.cancel_upload(&id);
    let session = store.open_upload(repo, &id).map_err(local)?;
    let mut session = session.lock_owned().await;
    let result = async {
        let mut incoming = open.await?;
        if let Some(size) = incoming.size {
            session.make_room(size).map_err(local)?;
        }
        tx.send_replace(FillState::Running {
            upload: id.clone(),
            written: 0,
            size: incoming.size,
        });
        while let Some(chunk) = incoming.chunks.next().await {
            let chunk = chunk.map_err(FillError::Unreachable)?;
            session.append(&chunk).map_err(local)?;
            if session.len() - session.readable_len() >= PUBLISH_EVERY {
                session.commit().map_err(local)?;
            }
            let written = session.readable_len();
            if incoming.size.is_some_and(|size| session.len() > size) {
                return Err(FillError::Failed(format!(
                    "the parent sent more than the {} bytes it announced for blob {digest}: refused",
                    incoming.size.unwrap_or(0)
                )));
            }
            tx.send_modify(|state| {
                if let FillState::Running { written: w, .. } = state {
                    *w = written;
                }
            });
        }
        if let Some(size) = incoming.size.filter(|size| *size != session.len()) {
            return Err(FillError::Failed(format!(
                "the parent announced {size} bytes for blob {digest} and sent {}: refused",
                session.len()
            )));
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        store.cancel_upload(&id);
        return Err(err);
    }
    let store = store.clone();
    let expected = digest.clone();
    tokio::task::spawn_blocking(move || store.finish_upload(&mut session, &expected))
        .await
        .map_err(|e| FillError::Failed(format!("storing blob {digest} failed: {e}")))?
        .map_err(|e| match e {
            StorageError::DigestMismatch { .. } => FillError::Failed(format!(
                "the parent's bytes for blob {digest} do not match its digest: dropped ({e})"
            )),
            other => local(other),
        })
}

/// The upload session a fill writes into: stable per repository and digest, so a restart
/// finds (and drops) what an interrupted fill left.
fn fill_id(repo: &RepoName, digest: &Digest) -> String {
    let repo_hash = Digest::sha256_of(repo.as_str().as_bytes());
    let hex = digest.hex();
    format!(
        "ondemand-{}-{}-{}",
        digest.algorithm().name(),
        &hex[..hex.len().min(64)],
        &repo_hash.hex()[..12]
    )
}

impl Fill {
    /// Waits until the size is known (the download answered) or the fill ended.
    pub async fn opened(&self) -> Result<Option<u64>, FillError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                FillState::Opening => {}
                FillState::Running { size, .. } => return Ok(*size),
                FillState::Done { size } => return Ok(Some(*size)),
                FillState::Failed(err) => return Err(err.clone()),
            }
            if state.changed().await.is_err() {
                return Err(FillError::Failed("the download task ended".into()));
            }
        }
    }

    /// Waits until the fill ended: the size of the blob verified and installed, or why not.
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                FillState::Done { size } => return Ok(*size),
                FillState::Failed(err) => return Err(err.clone()),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(FillError::Failed("the download task ended".into()));
            }
        }
    }

    /// Streams `range` of the blob (`None`: all of it) as it arrives. The last byte of the
    /// blob is held back until the digest is verified; a failed fill ends the stream with an
    /// error. Call after [`Fill::opened`].
    pub fn read(
        &self,
        store: &Store,
        range: Option<Range<u64>>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let reader = Reader {
            state: self.state.clone(),
            store: store.clone(),
            digest: self.digest.clone(),
            source: None,
            pos: range.as_ref().map_or(0, |r| r.start),
            end: range.map(|r| r.end),
        };
        futures_util::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
                Ok(None) => None,
                Err(err) => Some((Err(err), None)),
            }
        })
        .boxed()
    }
}

/// One client's read of a fill.
struct Reader {
    state: watch::Receiver<FillState>,
    store: Store,
    digest: Digest,
    /// The session's bytes, or the installed blob's.
    source: Option<Box<dyn BlobSource>>,
    pos: u64,
    /// Where the read stops (exclusive); `None`: the end of the blob.
    end: Option<u64>,
}

impl Reader {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            // What may be sent now: everything once verified; before, all that was written
            // but the blob's last byte.
            let (upload, readable, size) = match &*self.state.borrow_and_update() {
                FillState::Opening => (None, 0, None),
                FillState::Running {
                    upload,
                    written,
                    size,
                } => {
                    let held_back = match size {
                        Some(size) if *written < *size => *written,
                        _ => written.saturating_sub(1),
                    };
                    (Some(Some(upload.clone())), held_back, *size)
                }
                FillState::Done { size } => (Some(None), *size, Some(*size)),
                FillState::Failed(err) => {
                    return Err(std::io::Error::other(format!(
                        "the on-demand download failed: {err}"
                    )))
                }
            };
            let end = self.end.or(size);
            if end.is_some_and(|end| self.pos >= end) {
                return Ok(None);
            }
            let upto = end.map_or(readable, |end| end.min(readable));
            if self.pos < upto {
                let Some(upload) = upload else { continue };
                let mut source = match self.source.take() {
                    Some(source) => source,
                    None => open_source(self.store.clone(), self.digest.clone(), upload).await?,
                };
                let want = (upto - self.pos).min(READ_CHUNK);
                let pos = self.pos;
                let (source, read) = tokio::task::spawn_blocking(move || {
                    let read = read_at(&mut *source, pos, want);
                    (source, read)
                })
                .await
                .map_err(std::io::Error::other)?;
                let chunk = match read {
                    Ok(chunk) => chunk,
                    // The session became the blob under this reader (an object store deletes
                    // the staging blob once installed): read on from the blob.
                    Err(err)
                        if err.kind() == std::io::ErrorKind::NotFound
                            && matches!(&*self.state.borrow(), FillState::Done { .. }) =>
                    {
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                self.source = Some(source);
                self.pos += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            if matches!(&*self.state.borrow(), FillState::Done { .. }) {
                // Done, and nothing left below `upto`: the blob is shorter than asked.
                return Ok(None);
            }
            if self.state.changed().await.is_err() {
                return Err(std::io::Error::other("the on-demand download task ended"));
            }
        }
    }
}

/// Opens the session's bytes, or the installed blob when the fill just finished (or there is
/// no session to read any more).
async fn open_source(
    store: Store,
    digest: Digest,
    upload: Option<String>,
) -> std::io::Result<Box<dyn BlobSource>> {
    tokio::task::spawn_blocking(move || {
        if let Some(id) = upload {
            if let Ok(source) = store.upload_reader(&id) {
                return Ok(source);
            }
        }
        store.open_stored_blob(&digest)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn read_at(source: &mut dyn BlobSource, pos: u64, want: u64) -> std::io::Result<Bytes> {
    let buf = source.read_at(pos, want)?;
    if buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the blob being filled is shorter than the bytes written",
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Limits;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Limits::default()).unwrap();
        (dir, store)
    }

    /// A download of `data` in 64 KiB chunks, counted in `opened`, announcing `size`.
    fn source(data: Vec<u8>, size: Option<u64>, opened: Arc<AtomicUsize>) -> OpenIncoming {
        async move {
            opened.fetch_add(1, Ordering::SeqCst);
            let chunks: Vec<Result<Bytes, String>> = data
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let chunks = futures_util::stream::iter(chunks)
                .then(|c| async move {
                    tokio::task::yield_now().await;
                    c
                })
                .boxed();
            Ok(Incoming { size, chunks })
        }
        .boxed()
    }

    async fn collect(stream: BoxStream<'static, std::io::Result<Bytes>>) -> (Vec<u8>, bool) {
        let items: Vec<_> = stream.collect().await;
        let failed = items.iter().any(|i| i.is_err());
        let bytes = items
            .into_iter()
            .filter_map(|i| i.ok())
            .flat_map(|b| b.to_vec())
            .collect();
        (bytes, failed)
    }

    /// Twenty readers of one blob share one download, and each gets every byte; a range
    /// reads from what arrived; afterwards the blob is installed and linked, and the entry gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_readers_share_one_download() {
        let (_dir, store) = store();
        let fills = Fills::default();
        let repo: RepoName = "lib/app".parse().unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let opened = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        for i in 0..20 {
            let fill = fills.fill(
                &store,
                &repo,
                &digest,
                source(data.clone(), Some(data.len() as u64), opened.clone()),
            );
            let store = store.clone();
            readers.push(tokio::spawn(async move {
                assert_eq!(fill.opened().await.unwrap(), Some(3 << 20));
                let range = (i == 7).then_some(1000..5000);
                collect(fill.read(&store, range)).await
            }));
        }
        for (i, reader) in readers.into_iter().enumerate() {
            let (bytes, failed) = reader.await.unwrap();
            assert!(!failed);
            if i == 7 {
                assert_eq!(bytes, data[1000..5000]);
            } else {
                assert!(bytes == data, "reader {i} got {} bytes", bytes.len());
            }
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1, "one download");
        for _ in 0..100 {
            if fills.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(fills.in_flight(), 0);
        assert_eq!(store.repo_blob(&repo, &digest).unwrap(), Some(3 << 20));
    }

    /// Bytes that do not match the digest: every reader's stream errors before the last byte,
    /// nothing is kept, and the next request downloads again (and then succeeds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mismatch_cuts_every_reader_and_the_next_request_retries() {
        let (_dir, store) = store();
        let fills = Fills::default();
        let repo: RepoName = "lib/app".parse().unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 13) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let mut bad = data.clone();
        bad[500_000] ^= 1;
        let opened = Arc::new(AtomicUsize::new(0));
        let size = Some(data.len() as u64);
        let mut readers = Vec::new();
        for _ in 0..5 {
            let fill = fills.fill(
                &store,
                &repo,
                &digest,
                source(bad.clone(), size, opened.clone()),
            );
            let store = store.clone();
            readers.push(tokio::spawn(async move {
                fill.opened().await.ok();
                collect(fill.read(&store, None)).await
            }));
        }
        for reader in readers {
            let (bytes, failed) = reader.await.unwrap();
            assert!(failed);
            assert!(bytes.len() < data.len());
        }
        assert_eq!(store.repo_blob(&repo, &digest).unwrap(), None);
        for _ in 0..100 {
            if fills.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // (A reader that came after a failed download already started another one.)
        let before = opened.load(Ordering::SeqCst);
        let fill = fills.fill(
            &store,
            &repo,
            &digest,
            source(data.clone(), size, opened.clone()),
        );
        fill.opened().await.unwrap();
        let (bytes, failed) = collect(fill.read(&store, None)).await;
        assert!(!failed);
        assert!(bytes == data);
        assert_eq!(opened.load(Ordering::SeqCst), before + 1);
    }

    /// A client that goes away mid-download does not stop it: the blob is still installed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_goes_away_does_not_stop_the_download() {
        let (_dir, store) = store();
        let fills = Fills::default();
        let repo: RepoName = "lib/app".parse().unwrap();
        let data: Vec<u8> = (0..2 << 20).map(|i| (i % 7) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let opened = Arc::new(AtomicUsize::new(0));
        let size = Some(data.len() as u64);
        let fill = fills.fill(&store, &repo, &digest, source(data.clone(), size, opened));
        fill.opened().await.unwrap();
        let mut stream = fill.read(&store, None);
        assert!(stream.next().await.unwrap().is_ok());
        drop(stream);
        assert_eq!(fill.finished().await, Ok(2 << 20));
        assert_eq!(store.repo_blob(&repo, &digest).unwrap(), Some(2 << 20));
    }

    /// A failure to open (the parent unreachable) reaches every reader, and releases the entry.
    #[tokio::test]
    async fn an_unreachable_source_fails_every_reader() {
        let (_dir, store) = store();
        let fills = Fills::default();
        let repo: RepoName = "lib/app".parse().unwrap();
        let digest = Digest::sha256_of(b"x");
        let open = async { Err(FillError::Unreachable("parent unreachable".into())) }.boxed();
        let fill = fills.fill(&store, &repo, &digest, open);
        assert_eq!(
            fill.opened().await,
            Err(FillError::Unreachable("parent unreachable".into()))
        );
        for _ in 0..100 {
            if fills.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(fills.in_flight(), 0);
    }
}
