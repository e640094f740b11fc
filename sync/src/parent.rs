//! What sync needs from a parent registry: the contract the copy engine, the change-feed reader
//! and the upward push are written against. [`ParentClient`] is the real one (the OCI `/v2` API
//! over HTTP, and a parent of ours' `/acr` listings and change feed); the tests' in-memory
//! fake lets the engine's rules (verify before keep, bottom-up, resume, conflicts) be checked
//! without a network.

use crate::store::BlobBytes;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::FutureExt;

use crate::client::{
    AcrAnswer, ClientError, ClientStats, FeedAnswer, FetchedManifest, ParentClient, ParentManifest,
    TagListing, Uploaded,
};
use oci::{ChangeableAttributes, Digest};

/// A blob coming down from the parent.
pub struct BlobDownload<'a> {
    /// Bytes at the start of `chunks` to drop: the parent ignored `Range` and sent the blob
    /// from byte 0.
    pub skip: u64,
    /// Where it comes from, for messages.
    pub source: String,
    /// The whole blob's size, when the parent said.
    pub size: Option<u64>,
    /// The bytes; an error ends the download (the bytes so far stay, to resume).
    pub chunks: BoxStream<'a, Result<Bytes, ClientError>>,
}

/// A parent registry as sync uses it. Every call is one logical request (retries, auth and
/// timeouts are the implementation's business); `None` means "the parent has no such thing".
pub trait Parent: Send + Sync + 'static {
    /// The parent's base URL, for messages and logs (never for a client of this registry).
    fn base(&self) -> &str;
    /// Whether what clients push to `repo` here goes up to this parent (ReadWrite): not to a
    /// foreign upstream, nor to the parent under a prefix an upstream claims.
    fn accepts_push(&self, _repo: &str) -> bool {
        true
    }
    /// Requests and bytes so far, for the pass summary.
    fn stats(&self) -> &ClientStats;
    /// Every repository in the catalog; `None` when the parent offers no catalog.
    fn catalog(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, ClientError>>;
    /// The tags of `repo`; `None` when the repository is unknown.
    fn tags<'a>(&'a self, repo: &'a str)
        -> BoxFuture<'a, Result<Option<Vec<String>>, ClientError>>;
    /// The tags of `repo` with their digests and `changeableAttributes`, those hidden from
    /// listings included (a parent of ours' `/acr` tag listing, paged);
    /// [`AcrAnswer::NoAcr`] when the parent has no such API.
    fn acr_tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<TagListing, ClientError>>;
    /// The manifests of `repo` with their `changeableAttributes`, hidden ones included (paged).
    fn acr_manifests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<Vec<ParentManifest>>, ClientError>>;
    /// The repository's own `changeableAttributes` (`GET /acr/v1/{repo}`).
    fn acr_repository<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<ChangeableAttributes>, ClientError>>;
    /// Every repository, those hidden from `/v2/_catalog` included (`/acr/v1/_catalog`).
    fn acr_catalog(&self) -> BoxFuture<'_, Result<AcrAnswer<Vec<String>>, ClientError>>;
    /// The digest `reference` (a tag or digest) resolves to.
    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, ClientError>>;
    /// A manifest; when `reference` is a digest its body hashes to it.
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<FetchedManifest>, ClientError>>;
    /// The referrers (signatures, SBOMs) of a manifest; empty without a referrers API.
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Digest>, ClientError>>;
    /// Starts a blob download at byte `offset`.
    /// The download borrows only the parent, not the names it was asked with.
    fn get_blob<'a, 'b>(
        &'a self,
        repo: &'b str,
        digest: &'b Digest,
        offset: u64,
    ) -> BoxFuture<'b, Result<BlobDownload<'a>, ClientError>>
    where
        'a: 'b;
    /// Whether the parent holds a blob in `repo`.
    fn blob_exists<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, ClientError>>;
    /// A cross-repository mount from `from`; true when the parent mounted it.
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from: &'a str,
    ) -> BoxFuture<'a, Result<bool, ClientError>>;
    /// Uploads a stored blob in one request.
    fn upload_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        blob: &'a dyn BlobBytes,
        size: u64,
    ) -> BoxFuture<'a, Result<(), ClientError>>;
    /// Uploads a blob in acknowledged chunks, from `resume` (a location saved by `saved` after
    /// an earlier chunk) when the parent still holds it; stops between chunks at `until`.
    fn upload_blob_chunked<'a>(
        &'a self,
        upload: ChunkedUpload<'a>,
    ) -> BoxFuture<'a, Result<Uploaded, ClientError>>;
    /// Puts a manifest by tag or digest.
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        media_type: &'a str,
        body: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>>;
    /// One page of the parent's change feed after `after`, if it has a feed this build reads.
    fn changes(&self, after: u64, n: usize) -> BoxFuture<'_, Result<FeedAnswer, ClientError>>;
    /// The feed's bounds without changes (one cheap probe for its head).
    fn feed_head(&self) -> BoxFuture<'_, Result<FeedAnswer, ClientError>>;
    /// Waits (at most `wait`) until the feed has a change after `after` for this reader:
    /// whether one came. A parent that cannot wait answers `false` at once, or never: the
    /// caller races this against its poll timer.
    fn wait_for_changes(
        &self,
        _after: u64,
        _wait: std::time::Duration,
    ) -> BoxFuture<'_, Result<bool, ClientError>> {
        futures_util::future::pending().boxed()
    }
}

/// The arguments of [`Parent::upload_blob_chunked`].
pub struct ChunkedUpload<'a> {
    pub repo: &'a str,
    pub digest: &'a Digest,
    pub blob: &'a dyn BlobBytes,
    pub size: u64,
    /// Bytes per chunk.
    pub chunk: u64,
    pub resume: Option<String>,
    /// Called with the upload's location after every acknowledged chunk (to persist it).
    pub saved: &'a (dyn Fn(&str) + Sync),
    /// Checked between chunks: the window's end, the sync lease's.
    pub stop: &'a crate::stop::Stop,
}

impl Parent for ParentClient {
    fn base(&self) -> &str {
        ParentClient::base(self)
    }
    fn stats(&self) -> &ClientStats {
        &self.stats
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, ClientError>> {
        ParentClient::catalog(self).boxed()
    }
    fn tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ClientError>> {
        ParentClient::tags(self, repo).boxed()
    }
    fn acr_tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<TagListing, ClientError>> {
        ParentClient::acr_tags(self, repo).boxed()
    }
    fn acr_manifests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<Vec<ParentManifest>>, ClientError>> {
        ParentClient::acr_manifests(self, repo).boxed()
    }
    fn acr_repository<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<ChangeableAttributes>, ClientError>> {
        ParentClient::acr_repository(self, repo).boxed()
    }
    fn acr_catalog(&self) -> BoxFuture<'_, Result<AcrAnswer<Vec<String>>, ClientError>> {
        ParentClient::acr_catalog(self).boxed()
    }
    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, ClientError>> {
        ParentClient::head_manifest(self, repo, reference).boxed()
    }
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<FetchedManifest>, ClientError>> {
        ParentClient::get_manifest(self, repo, reference).boxed()
    }
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Digest>, ClientError>> {
        ParentClient::referrers(self, repo, digest).boxed()
    }
    fn get_blob<'a, 'b>(
        &'a self,
        repo: &'b str,
        digest: &'b Digest,
        offset: u64,
    ) -> BoxFuture<'b, Result<BlobDownload<'a>, ClientError>>
    where
        'a: 'b,
    {
        async move {
            let blob = ParentClient::get_blob(self, repo, digest, offset).await?;
            let (skip, source, size) = (blob.skip, blob.url.clone(), blob.size);
            let chunks = futures_util::stream::unfold(Some(blob), move |blob| async move {
                let mut blob = blob?;
                match self.next_chunk(&mut blob).await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(blob))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            });
            Ok(BlobDownload {
                skip,
                source,
                size,
                chunks: Box::pin(chunks),
            })
        }
        .boxed()
    }
    fn blob_exists<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        ParentClient::blob_exists(self, repo, digest).boxed()
    }
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from: &'a str,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        ParentClient::mount_blob(self, repo, digest, from).boxed()
    }
    fn upload_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        blob: &'a dyn BlobBytes,
        size: u64,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        ParentClient::upload_blob(self, repo, digest, blob, size).boxed()
    }
    fn upload_blob_chunked<'a>(
        &'a self,
        u: ChunkedUpload<'a>,
    ) -> BoxFuture<'a, Result<Uploaded, ClientError>> {
        ParentClient::upload_blob_chunked(self, u).boxed()
    }
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        media_type: &'a str,
        body: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        ParentClient::put_manifest(self, repo, reference, media_type, body).boxed()
    }
    fn changes(&self, after: u64, n: usize) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        ParentClient::changes(self, after, n).boxed()
    }
    fn feed_head(&self) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        ParentClient::feed_head(self).boxed()
    }
    fn wait_for_changes(
        &self,
        after: u64,
        wait: std::time::Duration,
    ) -> BoxFuture<'_, Result<bool, ClientError>> {
        ParentClient::wait_for_changes(self, after, wait).boxed()
    }
}
