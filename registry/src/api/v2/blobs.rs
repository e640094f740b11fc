//! Blobs: GET/HEAD with `Range`, DELETE (unlink from the repository; bytes go at GC).

use std::io::SeekFrom;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::manifests::{accepted, internal};
use super::DIGEST_HEADER;
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode, StorageError};
use crate::name::RepoName;
use crate::storage::Store;

/// Read size when streaming a blob: large enough that a multi-GB pull costs few wake-ups,
/// small enough that many concurrent pulls stay cheap in memory.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the network per download.
const READ_AHEAD: usize = 2;

/// A byte range `start..=end` of a blob of known size, from a `Range: bytes=...` header.
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::RangeInvalid,
            format!("Range {value:?} cannot be satisfied for a blob of {size} bytes: use bytes=START-END within it"),
        )
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| bad())?;
            if n == 0 || size == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().map_err(|_| bad())?, size.saturating_sub(1)),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| bad())?;
            let end: u64 = end.parse().map_err(|_| bad())?;
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if start >= size || end < start {
        return Err(bad());
    }
    Ok((start, end))
}

pub async fn get(
    store: &Store,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    let size = store.repo_blob(repo, digest)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in repository {repo}"),
        )
    })?;
    let range = headers
        .get(header::RANGE)
        .map(|r| parse_range(r.to_str().unwrap_or(""), size))
        .transpose()?;
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let length = if size == 0 { 0 } else { end - start + 1 };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    builder = if range.is_some() {
        builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
    } else {
        builder.status(StatusCode::OK)
    };
    if head_only {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    let path = store.blob_path(digest);
    let file = std::fs::File::open(&path)
        .map_err(|e| ApiError::from(StorageError::io(format!("open {}", path.display()))(e)))?;
    Ok(builder
        .body(Body::from_stream(read_range(file, start, length)))
        .expect("valid response"))
}

/// Streams `length` bytes of `file` from `start`. A blocking thread reads straight into fresh
/// buffers and hands them over a small bounded channel: one copy from the page cache, the disk
/// and the network work in parallel, and a slow client holds at most `READ_AHEAD` chunks.
fn read_range(
    mut file: std::fs::File,
    start: u64,
    length: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        if let Err(err) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let mut left = length;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            // `read_to_end` reads into the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want);
            match (&mut file).take(want as u64).read_to_end(&mut buf) {
                Ok(0) => {
                    let eof = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than its size",
                    );
                    let _ = tx.blocking_send(Err(eof));
                    return;
                }
                Ok(n) => {
                    left -= n as u64;
                    if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
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
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub async fn delete(store: &Store, repo: RepoName, digest: Digest) -> Result<Response, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.unlink_blob(&repo, &digest))
        .await
        .map_err(internal)??;
    Ok(accepted())
}

#[cfg(test)]
mod tests {
    use super::{parse_range, read_range};
    use futures_util::StreamExt;

    /// A blob file shorter than its recorded size (damaged disk) ends the stream with an error,
    /// so the client sees a broken download, never a short body that looks complete.
    #[tokio::test]
    async fn a_short_file_ends_the_stream_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; 600 * 1024]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let items: Vec<_> = read_range(file, 100, 1 << 20).collect().await;
        let bytes: usize = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|b| b.len())
            .sum();
        assert_eq!(bytes, 600 * 1024 - 100, "everything that is there is sent");
        let last = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(last.kind(), std::io::ErrorKind::UnexpectedEof);
        let file = std::fs::File::open(&path).unwrap();
        let whole: Vec<_> = read_range(file, 10, 1000).collect().await;
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].as_ref().unwrap().len(), 1000);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=95-200", 100).unwrap(), (95, 99));
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "bytes=-0",
        ] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}
