//! Reading a blob (or a session's committed bytes) from Azure Blob Storage: one ranged `GET`
//! per read, streamed as it arrives, never buffered whole. Chunks are regrouped to
//! `READ_CHUNK` and at most `READ_AHEAD` wait for the consumer, as reads from a file do; a
//! complete read that must be checked hashes on the way and holds the last chunk back until
//! the digest matched (see `storage::reader`).

use std::io::Read;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::blob::BlobClient;
use super::Remote;
use crate::storage::blob_store::{BlobRead, BlobSource};
use crate::storage::reader::{short_error, BlobReader, Check, READ_AHEAD, READ_CHUNK};

/// A blob in the container, opened: its size and version when it was looked up.
pub(crate) struct AzureSource {
    client: BlobClient,
    remote: Remote,
    size: u64,
    /// The version read (`If-Match`): a blob rewritten meanwhile fails the read instead of
    /// mixing two versions. `None` for a session's staging blob, which grows while read.
    etag: Option<String>,
}

impl std::fmt::Debug for AzureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSource")
            .field("blob", &self.client.name())
            .field("size", &self.size)
            .finish()
    }
}

impl AzureSource {
    pub(crate) fn new(
        client: BlobClient,
        remote: Remote,
        size: u64,
        etag: Option<String>,
    ) -> AzureSource {
        AzureSource {
            client,
            remote,
            size,
            etag,
        }
    }

    /// Sends the bytes of `range` to `send`, regrouped to `READ_CHUNK`; with `check`, hashed,
    /// the last chunk held back until they matched. Returns when done, on the first error (sent
    /// as the last item), or when `send` says the consumer went away.
    async fn produce<S, Fut>(
        client: BlobClient,
        location: String,
        etag: Option<String>,
        range: Range<u64>,
        check: Option<Check>,
        mut send: S,
    ) where
        S: FnMut(std::io::Result<Bytes>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let length = range.end.saturating_sub(range.start);
        if length == 0 {
            return;
        }
        let fail = |err: &dyn std::fmt::Display, not_found: bool| {
            let kind = if not_found {
                std::io::ErrorKind::NotFound
            } else {
                std::io::ErrorKind::Other
            };
            std::io::Error::new(kind, format!("{location}: read {}: {err}", client.name()))
        };
        // One request for the whole range, its body streamed.
        let response = match client.get(range.clone(), etag.as_deref()).await {
            Ok(response) => response,
            Err(err) => {
                // Absent, or rewritten since it was opened (`If-Match`).
                let gone = err.not_found() || err.conflict();
                send(Err(fail(&err, gone))).await;
                return;
            }
        };
        let mut body = response.bytes_stream();
        let mut hasher = check.as_ref().map(Check::hasher);
        let mut left = length;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            let piece = match body.next().await {
                Some(Ok(piece)) => piece,
                Some(Err(err)) => {
                    let err = super::client::describe(err);
                    send(Err(fail(&err, false))).await;
                    return;
                }
                None => break,
            };
            let piece = piece.slice(..(piece.len() as u64).min(left) as usize);
            left -= piece.len() as u64;
            buf.extend_from_slice(&piece);
            if buf.len() >= READ_CHUNK && left > 0 {
                let chunk = buf.split().freeze();
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                if !send(Ok(chunk)).await {
                    return; // the client went away
                }
            }
            if left == 0 {
                break;
            }
        }
        if left > 0 {
            let eof = match &check {
                Some(check) => check.short(),
                None => short_error(),
            };
            if !buf.is_empty() {
                send(Ok(buf.split().freeze())).await;
            }
            send(Err(eof)).await;
            return;
        }
        let last = buf.split().freeze();
        if let (Some(mut h), Some(check)) = (hasher, &check) {
            h.update(&last);
            if let Err(damaged) = check.finish(h) {
                send(Err(damaged)).await;
                return;
            }
        }
        if !last.is_empty() {
            send(Ok(last)).await;
        }
    }
}

impl BlobSource for AzureSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn stream(self: Box<Self>, range: Range<u64>, check: Option<Check>) -> BlobReader {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let AzureSource {
            client,
            remote,
            etag,
            ..
        } = *self;
        remote.bridge.spawn(AzureSource::produce(
            client,
            remote.location.clone(),
            etag,
            range,
            check,
            move |item| {
                let tx = tx.clone();
                async move { tx.send(item).await.is_ok() }
            },
        ));
        BlobReader::new(rx)
    }

    fn read_at(&mut self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        // A blob ends at its size; a session's staging blob (no version) may have grown since.
        let end = match self.etag {
            Some(_) => (offset + len).min(self.size),
            None => offset + len,
        };
        if end <= offset {
            return Ok(Bytes::new());
        }
        let (client, location, etag) = (
            self.client.clone(),
            self.remote.location.clone(),
            self.etag.clone(),
        );
        let read = self.remote.bridge.run(async move {
            let mut out = BytesMut::with_capacity((end - offset) as usize);
            let mut failed = None;
            AzureSource::produce(client, location, etag, offset..end, None, |item| {
                match item {
                    Ok(bytes) => out.extend_from_slice(&bytes),
                    Err(err) => failed = Some(err),
                }
                std::future::ready(true)
            })
            .await;
            match failed {
                Some(err) => Err(err),
                None => Ok(out.freeze()),
            }
        });
        read.unwrap_or_else(|| Err(std::io::Error::other("the Azure client stopped")))
    }

    fn into_read(self: Box<Self>) -> BlobRead {
        let size = self.size;
        BlobRead::Stream(Box::new(StreamRead {
            stream: Some(self.stream(0..size, None)),
            pending: Bytes::new(),
        }))
    }
}

/// A blob's stream read from blocking code (scrub, bundle export, hashing a session): each
/// chunk is waited for as it comes from the client's runtime.
struct StreamRead {
    /// `None` once the stream ended or failed.
    stream: Option<BlobReader>,
    /// What the last chunk still holds.
    pending: Bytes,
}

impl Read for StreamRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(0);
            };
            match super::bridge::wait(stream.next()) {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(err)) => {
                    self.stream = None;
                    return Err(err);
                }
                None => self.stream = None,
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}
