//! Writing to the parent (ReadWrite): blob existence and cross-repository mounts, monolithic
//! and chunked uploads (each chunk acknowledged, resumable from the parent's offset), manifests.

use super::*;
use crate::store::BlobBytes;

/// How a chunked upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    Done,
    /// Stopped between chunks at the end of the window; resumes from the saved location.
    Paused,
}

/// The URL that completes the upload at `location` (its query may carry the registry's state).
pub(super) fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// `len` bytes of `blob` from `offset`, gathered (one chunk of a chunked upload).
pub(super) async fn read_range(
    blob: &dyn BlobBytes,
    offset: u64,
    len: u64,
) -> std::io::Result<Bytes> {
    let mut stream = blob.read(offset, len);
    let mut buf = bytes::BytesMut::with_capacity(len as usize);
    while let Some(piece) = stream.next().await {
        buf.extend_from_slice(&piece?);
    }
    if (buf.len() as u64) < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf.freeze())
}

impl ParentClient {
    /// `body` with each chunk held back until the bandwidth cap lets it go.
    fn throttled<S, E>(&self, body: S) -> impl futures_util::Stream<Item = Result<Bytes, E>>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>>,
    {
        let throttle = self.throttle.clone();
        body.then(move |chunk| {
            let throttle = throttle.clone();
            async move {
                if let Ok(bytes) = &chunk {
                    throttle.pass(bytes.len()).await;
                }
                chunk
            }
        })
    }

    /// Whether the parent has a blob in `repo` (HEAD).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Method::HEAD, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// Tries a cross-repository mount; true when the parent mounted the blob.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, ClientError> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self
            .send(Method::POST, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Uploads a stored blob: POST for a session, then one monolithic PUT that streams the
    /// blob. A retry reads the blob again, so the body is never buffered whole.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        blob: &dyn BlobBytes,
        size: u64,
    ) -> Result<(), ClientError> {
        let scope = Scope::Push(repo.into());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .upload_blob_once(repo, digest, blob, size, &scope)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unreachable() && attempt < self.limits.retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn upload_blob_once(
        &self,
        repo: &str,
        digest: &Digest,
        blob: &dyn BlobBytes,
        size: u64,
        scope: &Scope,
    ) -> Result<(), ClientError> {
        let put_url = with_digest(&self.start_upload(repo, scope).await?, digest);
        // A local read that fails ends the body short of its Content-Length: the parent
        // refuses it, and the attempt fails as a transfer error.
        let body = reqwest::Body::wrap_stream(self.throttled(blob.read(0, size)));
        // Single attempt: the body stream cannot be replayed; the caller retries the whole upload.
        let rb = self
            .http
            .put(&put_url)
            .header(CONTENT_LENGTH, size)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(body);
        let (rb, _) = self.authorize(rb, scope);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| ClientError::Transport {
            url: put_url.clone(),
            message: error_chain(&e),
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &put_url, resp).await);
        }
        self.stats.bytes_up.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Opens an upload session at the parent; returns its absolute location.
    pub(super) async fn start_upload(
        &self,
        repo: &str,
        scope: &Scope,
    ) -> Result<String, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self
            .send(Method::POST, &url, scope, true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&Method::POST, &url, resp).await);
        }
        self.location(&url, &resp)
    }

    /// The absolute `Location` of an upload answer.
    pub(super) fn location(&self, url: &str, resp: &Response) -> Result<String, ClientError> {
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: url.to_owned(),
                message: "upload answered without a Location header".into(),
            })?;
        Ok(if location.starts_with('/') {
            self.url(location)
        } else {
            location.to_owned()
        })
    }

    /// How many bytes the parent holds of the upload at `location` (`GET`, `Range: 0-END`);
    /// `None` when the parent no longer knows it or refuses it (expired, cancelled, restarted:
    /// a 4xx), so the caller starts a new upload instead of asking again forever.
    pub(super) async fn upload_offset(
        &self,
        location: &str,
        scope: &Scope,
    ) -> Result<Option<u64>, ClientError> {
        let resp = match self
            .send_found(Method::GET, location, scope, &|rb| rb)
            .await
        {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(None),
            Err(ClientError::Status { status, .. }) if (400..500).contains(&status) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        // "0-END" covers END + 1 bytes; "0-0" is also what registries say for nothing yet, and
        // chunks are never a single byte, so it reads as nothing.
        let end = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("0-"))
            .and_then(|v| v.parse::<u64>().ok());
        Ok(Some(match end {
            Some(0) | None => 0,
            Some(end) => end + 1,
        }))
    }

    /// Uploads a blob in chunks of `chunk` bytes (`PATCH` with `Content-Range`), so that an
    /// upload cut by a dropped link, a closed window or a restart continues from the bytes the
    /// parent already holds instead of starting over. `resume` is a location saved by an
    /// earlier attempt; `saved` is called with the current location after every chunk the
    /// parent acknowledged (persist it to resume after a restart).
    ///
    /// `stop` (the end of the sync window, of the sync lease) is honoured between chunks: a chunk in flight is
    /// finished, because a registry that received part of a chunk may drop the whole upload
    /// (CNCF distribution cancels an upload whose size no longer matches its last answer).
    pub async fn upload_blob_chunked(
        &self,
        upload: ChunkedUpload<'_>,
    ) -> Result<Uploaded, ClientError> {
        let ChunkedUpload {
            repo,
            digest,
            blob,
            size,
            chunk,
            resume,
            saved,
            stop,
        } = upload;
        let scope = Scope::Push(repo.into());
        // A location saved for another parent (the settings changed) is of no use here.
        let resume = resume.filter(|loc| loc.starts_with(&self.base));
        let resumed = match resume {
            Some(loc) => self
                .upload_offset(&loc, &scope)
                .await?
                .map(|off| (loc, off)),
            None => None,
        };
        let (mut location, mut offset) = match resumed {
            Some(found) => found,
            None => (self.start_upload(repo, &scope).await?, 0),
        };
        saved(&location);
        let mut failures = 0u32;
        while offset < size {
            if stop.reached() {
                return Ok(Uploaded::Paused);
            }
            let len = chunk.min(size - offset);
            let bytes = read_range(blob, offset, len)
                .await
                .map_err(|e| ClientError::Protocol {
                    url: location.clone(),
                    message: format!("internal: cannot read local blob {digest}: {e}"),
                })?;
            match self.patch_chunk(&location, &scope, offset, bytes).await {
                Ok(next) => {
                    location = next;
                    offset += len;
                    self.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
                    saved(&location);
                    failures = 0;
                }
                Err(err) => {
                    failures += 1;
                    if failures >= self.limits.retries {
                        return Err(err);
                    }
                    tracing::debug!(%err, "chunk failed: asking the parent what it holds");
                    tokio::time::sleep(self.backoff(failures)).await;
                    // The parent may have kept part of the chunk, or none of it: it says.
                    match self.upload_offset(&location, &scope).await? {
                        Some(held) => offset = held.min(size),
                        None => {
                            location = self.start_upload(repo, &scope).await?;
                            offset = 0;
                            saved(&location);
                        }
                    }
                }
            }
        }
        let put_url = with_digest(&location, digest);
        let resp = self
            .send(Method::PUT, &put_url, &scope, true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &put_url, resp).await);
        }
        Ok(Uploaded::Done)
    }

    /// Sends one chunk; returns the location for the next. Fails when no byte moved for the
    /// progress timeout (a slow link only has to keep moving).
    pub(super) async fn patch_chunk(
        &self,
        location: &str,
        scope: &Scope,
        offset: u64,
        bytes: Bytes,
    ) -> Result<String, ClientError> {
        let len = bytes.len() as u64;
        let moved = Arc::new(Mutex::new(Instant::now()));
        let progress = moved.clone();
        let slices: Vec<Bytes> = (0..bytes.len())
            .step_by(64 * 1024)
            .map(|at| bytes.slice(at..(at + 64 * 1024).min(bytes.len())))
            .collect();
        let body = futures_util::stream::iter(slices).map(move |slice| {
            if let Ok(mut t) = progress.lock() {
                *t = Instant::now();
            }
            Ok::<_, std::io::Error>(slice)
        });
        let rb = self
            .http
            .patch(location)
            .header(CONTENT_LENGTH, len)
            .header(
                reqwest::header::CONTENT_RANGE,
                format!("{offset}-{}", offset + len - 1),
            )
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(reqwest::Body::wrap_stream(self.throttled(body)));
        let (rb, sent) = self.authorize(rb, scope);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let stall = self.limits.progress_timeout;
        let watchdog = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let last = moved.lock().map(|t| *t).unwrap_or_else(|_| Instant::now());
                if last.elapsed() >= stall {
                    return;
                }
            }
        };
        let resp = tokio::select! {
            r = rb.send() => r.map_err(|e| ClientError::Transport {
                url: location.to_owned(),
                message: error_chain(&e),
            })?,
            () = watchdog => {
                return Err(ClientError::Stalled { url: location.to_owned(), secs: stall.as_secs() });
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The token expired mid-upload: refresh it; the caller asks where to go on.
            self.refresh(location, resp.headers(), scope, &sent).await?;
            return Err(ClientError::Auth {
                url: location.to_owned(),
                message: "token refreshed during the upload".into(),
            });
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&Method::PATCH, location, resp).await);
        }
        self.location(location, &resp)
    }

    /// Puts a manifest by tag or digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let len = body.len() as u64;
        let resp = self
            .send(Method::PUT, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &url, resp).await);
        }
        self.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}
