//! Reading a stored blob's bytes as a stream, for the blob GET: the blob is opened here
//! (through the blob contract), and the handler only maps the stream to an HTTP body.
//!
//! From a file, a blocking thread reads straight into fresh buffers and hands them over a small bounded
//! channel: one copy from the page cache, the disk and the network work in parallel, and a
//! slow client holds at most `READ_AHEAD` chunks.
//!
//! A complete read that must be checked (see `integrity::VerifyReads`) hashes each chunk as it
//! goes and decides before the last chunk is sent: on a mismatch the stream ends with an error
//! instead of that chunk, so the body is short of its Content-Length and no client accepts it,
//! and the blob is quarantined. An object store's reads follow the same rules
//! (`azure::read`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use oci::digest::{Digest, Hasher};

use super::blob_store::{BlobSource, BlobStore};
use super::integrity::Integrity;

/// Read size when streaming a blob: large enough that a multi-GB pull costs few wake-ups,
/// small enough that many concurrent pulls stay cheap in memory.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the network per download.
pub(crate) const READ_AHEAD: usize = 2;

/// A blob of a repository, opened: its size, and its bytes on demand.
#[derive(Debug)]
pub struct OpenBlob {
    pub(super) size: u64,
    pub(super) source: Box<dyn BlobSource>,
    pub(super) check: Check,
}

/// What a complete read needs to check the bytes against their digest.
#[derive(Debug, Clone)]
pub struct Check {
    pub(super) digest: Digest,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) integrity: Arc<Integrity>,
}

impl Check {
    /// A hasher for the bytes of a complete read.
    pub(crate) fn hasher(&self) -> Hasher {
        Hasher::new(self.digest.algorithm())
    }

    /// Takes the blob out of service because of `why` (see [`Integrity::quarantine`]).
    pub(crate) fn quarantine(&self, why: &str) {
        self.integrity.quarantine(&*self.blobs, &self.digest, why);
    }

    /// Compares the hash of a complete read with the digest: remembers a match, quarantines a
    /// mismatch and returns the error that ends the stream before its last chunk.
    pub(crate) fn finish(&self, hasher: Hasher) -> std::io::Result<()> {
        let actual = hasher.finish();
        if actual == self.digest {
            self.integrity.verified(&self.digest);
            return Ok(());
        }
        self.quarantine(&format!("its bytes hash to {actual}"));
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "blob {} is damaged in {} (its bytes hash to {actual}): quarantined",
                self.digest,
                self.blobs.location()
            ),
        ))
    }

    /// The error that ends a stream whose source holds fewer bytes than the blob's size; the
    /// blob is quarantined.
    pub(crate) fn short(&self) -> std::io::Error {
        self.quarantine("the stored bytes are fewer than the blob's recorded size");
        short_error()
    }
}

/// The error of a source shorter than the range read.
pub(crate) fn short_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "blob shorter than its size",
    )
}

impl OpenBlob {
    /// The blob's size as recorded when it was linked to the repository.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Streams the bytes of `range`. A stored blob shorter than the range (a damaged disk)
    /// ends the stream with `UnexpectedEof`, so a client sees a broken download, never a short
    /// body that looks complete. A complete read is checked against the digest when the
    /// store's `VerifyReads` asks for it; a range is never checked (its bytes alone cannot be).
    /// Call inside a tokio runtime.
    pub fn read(self, range: Range<u64>) -> BlobReader {
        let whole = range.start == 0 && range.end == self.size && self.size > 0;
        let check =
            (whole && self.check.integrity.needs_check(&self.check.digest)).then_some(self.check);
        self.source.stream(range, check)
    }
}

/// The bytes of a blob range, chunk by chunk; an I/O error ends it.
pub struct BlobReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl BlobReader {
    /// A reader fed through `rx` (by a thread or a task that streams the bytes).
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> BlobReader {
        BlobReader { rx }
    }
}

impl futures_util::Stream for BlobReader {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Streams `length` bytes of `file` from `start` from a blocking thread; with `check`, the
/// bytes are the whole blob and are hashed on the way.
pub(crate) fn read_file_range(
    mut file: File,
    start: u64,
    length: u64,
    check: Option<Check>,
) -> BlobReader {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(err) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let mut left = length;
        let mut hasher = check.as_ref().map(Check::hasher);
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            // `read_to_end` reads into the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want);
            match (&mut file).take(want as u64).read_to_end(&mut buf) {
                Ok(0) => {
                    let eof = match &check {
                        Some(check) => check.short(),
                        None => short_error(),
                    };
                    let _ = tx.blocking_send(Err(eof));
                    return;
                }
                Ok(n) => {
                    left -= n as u64;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf);
                    }
                    if left == 0 {
                        if let (Some(h), Some(check)) = (hasher.take(), &check) {
                            if let Err(damaged) = check.finish(h) {
                                let _ = tx.blocking_send(Err(damaged));
                                return;
                            }
                        }
                    }
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    BlobReader { rx }
}

#[cfg(test)]
mod tests {
    use super::{read_file_range, Check, Integrity};
    use crate::storage::blob_store::BlobStore;
    use crate::storage::filesystem::FsBlobs;
    use crate::storage::space::Space;
    use crate::storage::{MinFree, VerifyReads};
    use futures_util::StreamExt;
    use oci::digest::Digest;
    use std::sync::Arc;

    fn blobs(dir: &std::path::Path) -> Arc<FsBlobs> {
        let space = Space::new(dir.to_owned(), MinFree::Bytes(0));
        Arc::new(FsBlobs::open(dir, space).unwrap())
    }

    /// Writes `bytes` as the file of `digest`, whatever they hash to.
    fn put_file(blobs: &FsBlobs, digest: &Digest, bytes: &[u8]) -> std::path::PathBuf {
        let path = blobs.path(digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A complete read of a file that does not hash to its digest sends everything but the
    /// last chunk, then an error; the file is quarantined. A sound one is remembered (`once`).
    #[tokio::test]
    async fn a_damaged_blob_ends_before_its_last_chunk_and_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = blobs(dir.path());
        let integrity = Arc::new(Integrity::new(VerifyReads::Once));
        let good = vec![3u8; 700 * 1024];
        let digest = Digest::sha256_of(&good);
        let mut bad = good.clone();
        bad[1000] ^= 1;
        let path = put_file(&blobs, &digest, &bad);
        let check = Check {
            digest: digest.clone(),
            blobs: blobs.clone() as Arc<dyn BlobStore>,
            integrity: integrity.clone(),
        };
        let file = std::fs::File::open(&path).unwrap();
        let items: Vec<_> = read_file_range(file, 0, good.len() as u64, Some(check.clone()))
            .collect()
            .await;
        let sent: usize = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|b| b.len())
            .sum();
        assert!(sent < good.len(), "{sent}");
        assert_eq!(
            items.last().unwrap().as_ref().unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        assert!(!path.exists());
        assert_eq!(integrity.quarantined_total(), 1);
        assert!(integrity.needs_check(&digest));

        put_file(&blobs, &digest, &good);
        let file = std::fs::File::open(&path).unwrap();
        let items: Vec<_> = read_file_range(file, 0, good.len() as u64, Some(check))
            .collect()
            .await;
        assert!(items.iter().all(|i| i.is_ok()));
        assert!(!integrity.needs_check(&digest), "verified once is enough");
    }

    /// A blob file shorter than its recorded size (damaged disk) ends the stream with an error,
    /// so the client sees a broken download, never a short body that looks complete.
    #[tokio::test]
    async fn a_short_file_ends_the_stream_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; 600 * 1024]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let items: Vec<_> = read_file_range(file, 100, 1 << 20, None).collect().await;
        let bytes: usize = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|b| b.len())
            .sum();
        assert_eq!(bytes, 600 * 1024 - 100, "everything that is there is sent");
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(last.kind(), std::io::ErrorKind::UnexpectedEof);
        let file = std::fs::File::open(&path).unwrap();
        let whole: Vec<_> = read_file_range(file, 10, 1000, None).collect().await;
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].as_ref().unwrap().len(), 1000);
    }
}
