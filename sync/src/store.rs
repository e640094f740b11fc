//! What the sync engine needs from the local registry's storage: a narrow, blocking interface,
//! implemented for `registry::Store` at the end of this file (and by the tests' fake store). Keeping it a trait keeps `sync`
//! independent of how the registry stores things, and lets the engine's rules (bottom-up,
//! verify before keep) be tested against any store.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use oci::{Change, ChangeableAttributes, Digest, Reference};

/// A manifest as stored locally.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    /// Children of an index left out by the platform filter.
    pub skipped: Vec<Digest>,
}

impl From<StoredManifest> for crate::client::FetchedManifest {
    fn from(m: StoredManifest) -> Self {
        crate::client::FetchedManifest {
            digest: m.digest,
            media_type: m.media_type,
            body: m.body,
        }
    }
}

/// A tag the local store evicted to stay under its storage quota (`serve --quota`): still
/// known there, and brought back by sync only once a client asked for it (else every pass
/// would fetch it and the next eviction drop it again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictedTag {
    /// What it pointed at when it was evicted.
    pub digest: Digest,
    /// A client asked for it since it was evicted.
    pub demanded: bool,
}

/// A storage failure, as the engine needs to tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes written do not hash to the digest claimed; they were deleted.
    #[error("digest mismatch: expected {expected}, the bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: String },
    /// A manifest references content that is not stored yet.
    #[error("manifest references missing content: {0}")]
    MissingReference(String),
    /// The local disk is full, or down to its free-space reserve: nothing more can be
    /// stored until space is freed.
    #[error("local storage: {0}")]
    Full(String),
    #[error("local storage: {0}")]
    Other(String),
}

/// An upload session that persists on disk, so an interrupted blob resumes after a restart.
pub trait BlobWriter: Send {
    /// Bytes already on disk (verified by hashing them on reopen).
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
    /// Makes the bytes appended so far part of the session for another replica sharing the
    /// store (it resumes from them if this one dies): an object store keeps appended bytes to
    /// the appender until then; the local disk needs nothing (the default).
    fn commit(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Verifies, makes durable, and links the blob to the upload's repository. On a mismatch
    /// the partial bytes are gone and `StoreError::DigestMismatch` is returned.
    fn finish(self: Box<Self>, expected: &Digest) -> Result<(), StoreError>;
}

/// The bytes of a stored blob, read to send them up to the parent: through the local store's
/// blob contract, wherever it keeps them (files, an object store), never by file path.
pub trait BlobBytes: Send + Sync {
    /// `len` bytes from `offset` as a stream of chunks; an error ends it. Call inside a tokio
    /// runtime.
    fn read(&self, offset: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>>;
}

/// Bytes held in memory, uploaded as a blob (`image push`'s freshly built blobs).
pub struct InMemory(pub Bytes);

impl BlobBytes for InMemory {
    fn read(&self, offset: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        let end = (offset + len).min(self.0.len() as u64) as usize;
        let piece = self.0.slice((offset as usize).min(end)..end);
        Box::pin(futures_util::stream::once(async move { Ok(piece) }))
    }
}

/// The local registry as the sync engine writes and reads it. Blocking: call from
/// `spawn_blocking` or a dedicated thread.
pub trait LocalStore: Send + Sync + 'static {
    fn blob_size(&self, digest: &Digest) -> Option<u64>;
    /// A stored blob's bytes, to stream them up to the parent (opened at each read).
    fn blob_bytes(&self, digest: &Digest) -> Arc<dyn BlobBytes>;
    /// Whether `repo` holds the blob (to pick a source for a cross-repository mount).
    fn repo_has_blob(&self, repo: &str, digest: &Digest) -> bool;
    /// Makes an existing blob part of `repo`.
    fn link_blob(&self, repo: &str, digest: &Digest) -> Result<(), StoreError>;
    /// Opens (or creates) the upload session `id` for `repo`.
    fn open_upload(&self, repo: &str, id: &str) -> Result<Box<dyn BlobWriter>, StoreError>;
    fn cancel_upload(&self, id: &str) -> Result<(), StoreError>;
    /// Stores a manifest written by sync (origin: sync, never pushed back up). Refuses when a
    /// referenced blob or child manifest is missing, except the index children in `skipped`
    /// (left out by the platform filter).
    fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        body: Bytes,
        skipped: &[Digest],
    ) -> Result<Digest, StoreError>;
    fn get_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StoreError>;
    fn tags(&self, repo: &str) -> Result<Vec<String>, StoreError>;
    /// The own `changeableAttributes` of every tag of `repo` (empty when it is unknown): what a
    /// full comparison compares with the parent's before setting any.
    fn tag_attributes(
        &self,
        repo: &str,
    ) -> Result<std::collections::BTreeMap<String, ChangeableAttributes>, StoreError>;
    /// The repository's own `changeableAttributes`; `None` when it is not here.
    fn repository_attributes(&self, repo: &str)
        -> Result<Option<ChangeableAttributes>, StoreError>;
    /// The own `changeableAttributes` of every manifest of `repo` (empty when it is unknown).
    fn manifest_attributes(
        &self,
        repo: &str,
    ) -> Result<std::collections::BTreeMap<Digest, ChangeableAttributes>, StoreError>;
    fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), StoreError>;
    /// Sets the `changeableAttributes` of the repository (no `tag`, no `digest`), a tag or a
    /// manifest to what the parent logged (origin: sync; the child's own locks do not hold
    /// against it). `false` when the item is not here (outside the platform filter, or gone).
    fn set_attributes(
        &self,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
        attributes: ChangeableAttributes,
    ) -> Result<bool, StoreError>;
    /// Change-log entries with `seq > after`, oldest first, at most `limit`.
    fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The oldest kept and the newest sequence number of the change log (`(head + 1, head)`
    /// when it is empty): a reader past `head` is reading a store older than it remembers (a
    /// disk restored from backup), one before `oldest - 1` missed pruned entries.
    fn change_bounds(&self) -> Result<(u64, u64), StoreError>;
    /// Drops change-log entries older than `before_unix_secs` (the `messageTtl` rule).
    fn prune_changes(&self, before_unix_secs: u64) -> Result<usize, StoreError>;
    /// `repo:tag` if the store evicted it to stay under its quota; the default evicts nothing.
    fn evicted(&self, _repo: &str, _tag: &str) -> Result<Option<EvictedTag>, StoreError> {
        Ok(None)
    }
    /// Evicted tags (repo, tag) a client asked for since: the next pass brings them back.
    fn demanded_evictions(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }
    /// Runs after each pass (the store's own housekeeping: evicting down to its quota). Logs
    /// its own failures: the pass's outcome is about the parent.
    fn after_pass(&self) {}
    /// Woken after a client (not sync) changed a tag or a manifest; the default is never woken.
    fn client_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::default()
    }
}

/// The registry's store as the sync engine's target: everything sync writes carries
/// `Origin::Sync`, so it is never pushed back up.
mod registry_store {
    use super::*;
    use oci::Origin;
    use registry::storage::Session;
    use registry::{RepoName, StorageError, Store};

    fn repo_name(repo: &str) -> Result<RepoName, StoreError> {
        repo.parse::<RepoName>()
            .map_err(|e| StoreError::Other(format!("repository {repo:?}: {e}")))
    }

    fn map(e: StorageError) -> StoreError {
        match e {
            StorageError::DigestMismatch { expected, actual } => StoreError::DigestMismatch {
                expected,
                actual: actual.to_string(),
            },
            StorageError::ManifestBlobUnknown(d) => StoreError::MissingReference(d.to_string()),
            e if e.is_no_space() => StoreError::Full(e.to_string()),
            e => StoreError::Other(e.to_string()),
        }
    }

    /// A blob of the registry's store, read through its blob contract.
    struct StoredBlob {
        store: Store,
        digest: Digest,
    }

    impl BlobBytes for StoredBlob {
        fn read(&self, offset: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
            use futures_util::{FutureExt, StreamExt};
            let (store, digest) = (self.store.clone(), self.digest.clone());
            // Opening may ask an object store: off the async threads.
            let opened = tokio::task::spawn_blocking(move || store.open_stored_blob(&digest));
            opened
                .map(move |opened| match opened.map_err(std::io::Error::other) {
                    Ok(Ok(source)) => source.stream(offset..offset + len, None).boxed(),
                    Ok(Err(err)) | Err(err) => {
                        futures_util::stream::once(async { Err(err) }).boxed()
                    }
                })
                .flatten_stream()
                .boxed()
        }
    }

    struct Writer {
        store: Store,
        session: tokio::sync::OwnedMutexGuard<Session>,
    }

    /// Bytes a download appends between commits: at most this much is fetched again by the
    /// replica that takes over from one killed in the middle of a blob (an object store's
    /// block, so a commit costs one request per block).
    const COMMIT_EVERY: u64 = 8 << 20;

    impl BlobWriter for Writer {
        fn len(&self) -> u64 {
            self.session.len()
        }
        fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
            self.session.append(bytes).map_err(map)?;
            // What readers and other replicas cannot see yet: nothing on the local disk.
            if self.session.len() - self.session.readable_len() >= COMMIT_EVERY {
                self.commit()?;
            }
            Ok(())
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            self.session.commit().map_err(map)
        }
        fn finish(mut self: Box<Self>, expected: &Digest) -> Result<(), StoreError> {
            self.store
                .finish_upload(&mut self.session, expected)
                .map(|_| ())
                .map_err(map)
        }
    }

    impl LocalStore for Store {
        fn blob_size(&self, digest: &Digest) -> Option<u64> {
            Store::blob_size(self, digest)
        }
        fn blob_bytes(&self, digest: &Digest) -> Arc<dyn BlobBytes> {
            Arc::new(StoredBlob {
                store: self.clone(),
                digest: digest.clone(),
            })
        }
        fn repo_has_blob(&self, repo: &str, digest: &Digest) -> bool {
            repo_name(repo)
                .ok()
                .and_then(|r| Store::repo_blob(self, &r, digest).ok().flatten())
                .is_some()
        }
        fn link_blob(&self, repo: &str, digest: &Digest) -> Result<(), StoreError> {
            Store::link_blob(self, &repo_name(repo)?, digest)
                .map(|_| ())
                .map_err(map)
        }
        fn open_upload(&self, repo: &str, id: &str) -> Result<Box<dyn BlobWriter>, StoreError> {
            let session = Store::open_upload(self, &repo_name(repo)?, id).map_err(map)?;
            Ok(Box::new(Writer {
                store: self.clone(),
                session: session.blocking_lock_owned(),
            }))
        }
        fn cancel_upload(&self, id: &str) -> Result<(), StoreError> {
            Store::cancel_upload(self, id);
            Ok(())
        }
        fn put_manifest(
            &self,
            repo: &str,
            r: &Reference,
            media_type: &str,
            body: Bytes,
            skipped: &[Digest],
        ) -> Result<Digest, StoreError> {
            Store::put_partial_index(
                self,
                &repo_name(repo)?,
                r,
                Some(media_type),
                body,
                Origin::Sync,
                skipped.to_vec(),
            )
            .map(|(d, _)| d)
            .map_err(map)
        }
        fn get_manifest(
            &self,
            repo: &str,
            r: &Reference,
        ) -> Result<Option<StoredManifest>, StoreError> {
            Ok(Store::get_manifest(self, &repo_name(repo)?, r)
                .map_err(map)?
                .map(|m| StoredManifest {
                    digest: m.digest,
                    media_type: m.media_type,
                    body: m.body,
                    skipped: m.skipped,
                }))
        }
        fn tags(&self, repo: &str) -> Result<Vec<String>, StoreError> {
            Store::tags(self, &repo_name(repo)?).map_err(map)
        }
        fn tag_attributes(
            &self,
            repo: &str,
        ) -> Result<std::collections::BTreeMap<String, ChangeableAttributes>, StoreError> {
            let tags = Store::tag_props(self, &repo_name(repo)?).map_err(map)?;
            Ok(tags
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.name, t.attributes))
                .collect())
        }
        fn repository_attributes(
            &self,
            repo: &str,
        ) -> Result<Option<ChangeableAttributes>, StoreError> {
            let props = Store::repository(self, &repo_name(repo)?).map_err(map)?;
            Ok(props.map(|p| p.attributes))
        }
        fn manifest_attributes(
            &self,
            repo: &str,
        ) -> Result<std::collections::BTreeMap<Digest, ChangeableAttributes>, StoreError> {
            let manifests = Store::manifest_props(self, &repo_name(repo)?).map_err(map)?;
            Ok(manifests
                .unwrap_or_default()
                .into_iter()
                .map(|m| (m.digest, m.attributes))
                .collect())
        }
        fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
            Store::delete_tag(self, &repo_name(repo)?, tag, Origin::Sync)
                .map(|_| ())
                .map_err(map)
        }
        fn set_attributes(
            &self,
            repo: &str,
            tag: Option<&str>,
            digest: Option<&Digest>,
            attributes: ChangeableAttributes,
        ) -> Result<bool, StoreError> {
            use registry::storage::Target;
            let target = match (tag, digest) {
                (Some(tag), _) => Target::Tag(tag.to_owned()),
                (None, Some(digest)) => Target::Manifest(digest.clone()),
                (None, None) => Target::Repository,
            };
            Store::set_attributes(
                self,
                &repo_name(repo)?,
                &target,
                &attributes.into(),
                Origin::Sync,
            )
            .map(|set| set.is_some())
            .map_err(map)
        }
        fn prune_changes(&self, before_unix_secs: u64) -> Result<usize, StoreError> {
            Store::prune_changes(self, before_unix_secs).map_err(map)
        }
        fn change_bounds(&self) -> Result<(u64, u64), StoreError> {
            let page = Store::change_page(self, 0, 0).map_err(map)?;
            Ok((page.oldest, page.head))
        }
        fn client_changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
            Store::client_changes(self)
        }
        fn evicted(&self, repo: &str, tag: &str) -> Result<Option<EvictedTag>, StoreError> {
            Ok(Store::evicted_tag(self, &repo_name(repo)?, tag)
                .map_err(map)?
                .map(|row| EvictedTag {
                    digest: row.digest,
                    demanded: row.demanded_at.is_some(),
                }))
        }
        fn demanded_evictions(&self) -> Result<Vec<(String, String)>, StoreError> {
            Store::demanded_evictions(self).map_err(map)
        }
        fn after_pass(&self) {
            if let Err(err) = Store::enforce_quota(self) {
                tracing::error!("evicting synced images down to the quota (--quota) failed: {err}");
            }
        }
        fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
            Store::changes(self, after, limit).map_err(map)
        }
    }
}
