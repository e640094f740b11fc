//! The store: content-addressed blobs (on the local disk, or in Azure Blob Storage: see
//! [`blob_store`] and [`backends`]) plus the metadata (redb in the data directory, or
//! PostgreSQL), behind one `Store` handle that the HTTP API and the sync engine both write
//! through. The metadata's rules are written once (`meta`) over the key-value contract its
//! backends implement (`kv`).
//!
//! Methods block (file, database and network I/O); async callers run writes in `spawn_blocking`.

pub mod azure;
pub mod backends;
pub mod blob_store;
#[cfg(test)]
mod contract_tests;
pub mod error;
pub mod filesystem;
pub mod fill;
pub mod gc;
pub mod integrity;
pub(crate) mod kv;
pub mod kv_access;
pub mod lease;
pub mod meta;
mod props;
pub mod quota;
pub mod reader;
pub mod recover;
pub mod scrub;
pub mod space;
#[cfg(test)]
pub(crate) mod test_support;
pub mod uploads;
pub mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

pub use backends::{Backends, BlobBackend, MetadataBackend, PostgresSettings};
pub use blob_store::{BlobRead, BlobSource, BlobStore};
pub use error::StorageError;
pub use gc::{GcOptions, GcReport};
pub use integrity::VerifyReads;
/// A real PostgreSQL server for the end-to-end tests (`tests/common/postgres.rs`).
#[cfg(feature = "postgres-test-server")]
pub use kv::in_postgres::test_server as postgres_test_server;
pub use meta::{
    refusal, Attribute, ChangePage, EvictedTag, Lookup, ManifestMeta, ManifestProps, RepoProps,
    TagProps, Target,
};
use oci::digest::Digest;
use oci::name::RepoName;
use oci::reference::Reference;
use oci::{manifest, Descriptor};
use oci::{Change, Origin};
pub use reader::{BlobReader, OpenBlob};
pub use space::MinFree;
pub use uploads::{Checkpoint, Session, SessionRef};

/// Limits of the store, each a named setting of `serve`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest manifest accepted (`--max-manifest-size`). Manifests are read whole to be
    /// validated, so this bounds the memory a single PUT can take. Default 4 MiB, as distribution.
    pub max_manifest_size: u64,
    /// Memory for recently served manifests (`--manifest-cache-size`): manifests are read far
    /// more often than anything else, and are immutable by digest. Default 64 MiB.
    pub manifest_cache_bytes: usize,
    /// Free space kept on the data directory's filesystem (`--min-free`): uploads and manifests
    /// that would go below it are refused with 507. Default [`MinFree::DEFAULT`].
    pub min_free: MinFree,
    /// How often a blob read checks the digest (`--verify-reads`); see [`VerifyReads`].
    pub verify_reads: VerifyReads,
    /// Bytes of blob files above which synced images are evicted (`--quota`); none by default.
    /// See [`quota`].
    pub quota: Option<u64>,
    /// How long this replica serves what a manifest reference resolves to without reading the
    /// metadata again (`--metadata-cache-ttl`): a change made through another replica (shared
    /// metadata, PostgreSQL) is served stale for at most this long; this replica's own writes,
    /// and so on redb every write, show at once. Zero turns the cache off. Default 1 s.
    pub metadata_cache_ttl: std::time::Duration,
    /// Memory for those resolutions (`--metadata-cache-size`), estimated. Default 16 MiB.
    pub metadata_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_manifest_size: 4 << 20,
            manifest_cache_bytes: 64 << 20,
            min_free: MinFree::default(),
            verify_reads: VerifyReads::default(),
            quota: None,
            metadata_cache_ttl: std::time::Duration::from_secs(1),
            metadata_cache_bytes: 16 << 20,
        }
    }
}

/// A manifest as served: digest, media type and the exact bytes pushed.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    /// Children of an index that were left out on purpose (see [`Store::put_partial_index`]).
    pub skipped: Vec<Digest>,
    /// The first item the reference goes through (repository, tag, manifest) that has
    /// `readEnabled: false`: a client may not pull it (sync still reads it).
    pub unreadable: Option<Target>,
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Where blob bytes live (the blob contract).
    blobs: Arc<dyn BlobStore>,
    meta: meta::Meta,
    uploads: uploads::Uploads,
    limits: Limits,
    /// The data directory's filesystem (the metadata; and the blobs, when they are files).
    space: space::Space,
    cache: ManifestCache,
    /// Which blobs hashed right since start, and the quarantine for those that did not.
    integrity: Arc<integrity::Integrity>,
    /// Taken shared by everything that makes a blob file wanted (install, link) and exclusively
    /// by GC while it deletes a file, so GC never deletes a file someone just took.
    gc_lock: RwLock<()>,
    /// Woken after a client (not sync) changed a tag or a manifest: sync reconciles what it
    /// manages, and pushes up in ReadWrite mode, without waiting for its next poll.
    client_changed: Arc<tokio::sync::Notify>,
    /// Ticks after every change (a client's or sync's): what a child's long poll of the change
    /// feed waits on.
    changed: tokio::sync::watch::Sender<u64>,
    /// Set when the registry stops: long polls answer at once, so they do not hold up the
    /// graceful shutdown.
    stopping: std::sync::atomic::AtomicBool,
    /// Pull times and demand gathered in memory, and the eviction counters.
    quota: quota::QuotaState,
    /// The metadata is shared with other processes (see [`Store::metadata_is_shared`]).
    metadata_shared: bool,
}

/// Manifest bytes by digest. Content never changes under a digest, so entries never go stale;
/// when the budget is spent the cache simply starts over.
#[derive(Default)]
struct ManifestCache {
    map: RwLock<(HashMap<Digest, Bytes>, usize)>,
}

impl ManifestCache {
    fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.map.read().expect("cache lock").0.get(digest).cloned()
    }

    fn clear(&self) {
        let mut guard = self.map.write().expect("cache lock");
        guard.0.clear();
        guard.1 = 0;
    }

    fn put(&self, digest: &Digest, body: &Bytes, budget: usize) {
        if body.len() > budget / 4 {
            return;
        }
        let mut guard = self.map.write().expect("cache lock");
        let (map, used) = &mut *guard;
        if *used + body.len() > budget {
            map.clear();
            *used = 0;
        }
        if map.insert(digest.clone(), body.clone()).is_none() {
            *used += body.len();
        }
    }
}

/// The metadata database in a store's directory.
const META_FILE: &str = "meta.redb";

impl Store {
    /// Opens (or creates) the store in `dir` on the default backends: `blobs/`, `uploads/`,
    /// `tmp/` and `meta.redb`.
    pub fn open(dir: &Path, limits: Limits) -> Result<Store, StorageError> {
        Store::open_with(dir, limits, Backends::default())
    }

    /// Opens (or creates) the store in `dir` with its blobs and metadata where `backends` say:
    /// the metadata in `dir/meta.redb` or in PostgreSQL (created there on first use); blobs
    /// are files in `dir` or objects in an Azure Blob Storage container.
    pub fn open_with(
        dir: &Path,
        limits: Limits,
        backends: Backends,
    ) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(StorageError::io(format!("create {}", dir.display())))?;
        let space = space::Space::new(dir.to_owned(), limits.min_free);
        backends.blobs.claim(dir, dir.join(META_FILE).exists())?;
        let blobs: Arc<dyn BlobStore> = match backends.blobs {
            BlobBackend::Filesystem => Arc::new(filesystem::FsBlobs::open(dir, space.clone())?),
            BlobBackend::AzureBlob(config) => Arc::new(azure::AzureBlobs::open(config)?),
        };
        let metadata_shared = backends.metadata.is_shared();
        let metadata: Box<dyn kv::Backend> = match backends.metadata {
            MetadataBackend::Redb => Box::new(kv::in_redb::RedbBackend::open(
                &dir.join(META_FILE),
                space.clone(),
            )?),
            MetadataBackend::Postgres(settings) => {
                Box::new(kv::in_postgres::PostgresBackend::open(*settings)?)
            }
        };
        // The cache of resolutions on every backend (see `meta::resolved`): on shared metadata
        // it saves a round trip, on redb a read transaction.
        let cache = meta::CacheSettings {
            ttl: limits.metadata_cache_ttl,
            budget: limits.metadata_cache_bytes,
        };
        let inner = Inner {
            root: dir.to_owned(),
            meta: meta::Meta::open(kv::Kv::new(metadata), cache)?,
            uploads: uploads::Uploads::open(blobs.clone()),
            blobs,
            space,
            cache: ManifestCache::default(),
            integrity: Arc::new(integrity::Integrity::new(limits.verify_reads)),
            gc_lock: RwLock::new(()),
            client_changed: Arc::default(),
            changed: tokio::sync::watch::Sender::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            quota: quota::QuotaState::default(),
            metadata_shared,
            limits,
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Whether `dir` holds a store (its metadata file), for commands that must not create one.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(META_FILE).is_file()
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    // ---- blobs ----

    /// Where blob bytes live, for messages: "data directory DIR", "Azure Blob Storage ...".
    pub fn blob_location(&self) -> String {
        self.inner.blobs.location()
    }

    /// Whether the blob's bytes are stored (in any repository). A store that cannot be asked
    /// (an object store out of reach) counts as not holding it; the failure is logged.
    pub fn blob_exists(&self, digest: &Digest) -> bool {
        self.blob_size(digest).is_some()
    }

    /// The stored blob's size (see [`Store::blob_exists`] for failures; [`Store::stored_size`]
    /// returns them).
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.stored_size(digest).unwrap_or_else(|err| {
            tracing::warn!(%digest, "cannot tell whether a blob is stored: {err}");
            None
        })
    }

    /// The stored blob's size, or why the blob store could not say.
    pub fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        self.inner.blobs.size(digest)
    }

    /// The blob's size if `repo` holds it; a blob of another repository is not served here.
    pub fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, StorageError> {
        match self.inner.meta.repo_blob_size(repo.as_str(), digest)? {
            Some(size) if self.stored_size(digest)?.is_some() => Ok(Some(size)),
            _ => Ok(None),
        }
    }

    /// Opens a blob of `repo` for reading (`None`: `repo` does not hold it). Routes read blobs
    /// only through this, never through files.
    pub fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<OpenBlob>, StorageError> {
        let Some(size) = self.inner.meta.repo_blob_size(repo.as_str(), digest)? else {
            return Ok(None);
        };
        Ok(self.inner.blobs.open(digest)?.map(|source| OpenBlob {
            size,
            source,
            check: self.check(digest),
        }))
    }

    /// What a complete read of `digest` checks its bytes with.
    fn check(&self, digest: &Digest) -> reader::Check {
        reader::Check {
            digest: digest.clone(),
            blobs: self.inner.blobs.clone(),
            integrity: self.inner.integrity.clone(),
        }
    }

    /// Opens a stored blob whatever repository holds it (bundles, sync's push, scrub): its
    /// size and its bytes, read as they are (no digest check; the receiver checks them).
    pub fn read_blob(&self, digest: &Digest) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        self.inner.blobs.open(digest)
    }

    /// [`Store::read_blob`] for readers that speak `std::io` (a fill's readers, sync's push): a
    /// blob that is not stored is a `NotFound` error naming where blobs are.
    pub fn open_stored_blob(&self, digest: &Digest) -> std::io::Result<Box<dyn BlobSource>> {
        match self.read_blob(digest) {
            Ok(Some(source)) => Ok(source),
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("blob {digest} is not stored in {}", self.blob_location()),
            )),
            Err(err) => Err(std::io::Error::other(err.to_string())),
        }
    }

    /// The bytes of a small stored blob (a manifest, a config) of at most `limit` bytes, checked
    /// against the digest: `None` when it is not stored, is larger, or is damaged (then
    /// quarantined, as a read of it from a client would).
    pub fn read_small_blob(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Option<Bytes>, StorageError> {
        let Some(mut source) = self.inner.blobs.open(digest)? else {
            return Ok(None);
        };
        let size = source.size();
        if size > limit {
            return Ok(None);
        }
        let where_ = || format!("read blob {digest} from {}", self.inner.blobs.location());
        let body = match source.read_at(0, size) {
            Ok(body) => body,
            // Quarantined (or collected) since it was opened: absent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(where_())(e)),
        };
        let actual = digest.same_algorithm_of(&body);
        if &actual != digest {
            let why = format!("its bytes hash to {actual}");
            self.inner
                .integrity
                .quarantine(&*self.inner.blobs, digest, &why);
            return Ok(None);
        }
        Ok(Some(body))
    }

    /// Makes a blob that is on disk part of `repo` (cross-repository mount, or sync).
    pub fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, StorageError> {
        let _taking = self.inner.gc_lock.read().expect("gc lock");
        self.link_taken_blob(repo, digest)
    }

    /// [`Store::link_blob`] for a caller that holds the GC lock already.
    ///
    /// The touch comes first and is the check that the blob is there: a GC of another replica
    /// that decided to delete it before the touch then fails (its delete holds only for the
    /// version it looked at), and one that deleted it already makes this fail, before anything
    /// links it. So a link, and a manifest committed on it, never names a deleted blob.
    fn link_taken_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, StorageError> {
        let unknown = || StorageError::BlobUnknown(digest.clone());
        if !self.inner.blobs.touch(digest)? {
            return Err(unknown());
        }
        let size = self.stored_size(digest)?.ok_or_else(unknown)?;
        self.inner.meta.link_blob(repo.as_str(), digest, size)?;
        Ok(size)
    }

    /// Removes a blob from a repository (its bytes stay until GC); refused while referenced.
    pub fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), StorageError> {
        self.inner.meta.unlink_blob(repo.as_str(), digest)
    }

    // ---- uploads ----

    /// Starts a new upload session in `repo`.
    pub fn new_upload(&self, repo: &RepoName) -> Result<SessionRef, StorageError> {
        self.inner.uploads.new_session(repo)
    }

    /// An existing session (also after a restart); `BlobUploadUnknown` if there is none.
    pub fn upload(&self, repo: &RepoName, id: &str) -> Result<SessionRef, StorageError> {
        self.inner.uploads.get(repo, id, false)
    }

    /// Opens or creates session `id`: the sync engine picks a stable id per blob, so bytes
    /// already fetched survive a restart and the download resumes from `Session::len()`.
    pub fn open_upload(&self, repo: &RepoName, id: &str) -> Result<SessionRef, StorageError> {
        self.inner.uploads.get(repo, id, true)
    }

    /// Verifies the session's bytes against `expected`, installs them as a blob and links it to
    /// the session's repository. On a digest mismatch the bytes are discarded.
    pub fn finish_upload(
        &self,
        session: &mut Session,
        expected: &Digest,
    ) -> Result<u64, StorageError> {
        let result = session.seal(expected).and_then(|()| {
            // Installed and linked under one hold of the GC lock: a collection or an eviction
            // never deletes the blob between the two.
            let _taking = self.inner.gc_lock.read().expect("gc lock");
            self.inner.blobs.install_upload(session.data(), expected)?;
            self.link_taken_blob(&session.repo.clone(), expected)
        });
        // Whether it worked or not, the session is over: its bytes are a blob now, or unwanted.
        self.inner.uploads.remove(&session.id.clone());
        result
    }

    /// A reader of session `id`'s bytes that does not hold the session (readers of a blob being
    /// filled from elsewhere).
    pub fn upload_reader(&self, id: &str) -> Result<Box<dyn BlobSource>, StorageError> {
        self.inner
            .blobs
            .upload_reader(id)?
            .ok_or_else(|| StorageError::UploadUnknown(id.to_owned()))
    }

    /// Every stored blob (and the names where blobs live that name none).
    pub fn list_blobs(&self) -> Result<blob_store::BlobListing, StorageError> {
        self.inner.blobs.list()
    }

    /// Cancels a session and deletes its bytes.
    pub fn cancel_upload(&self, id: &str) {
        self.inner.uploads.remove(id);
    }

    // ---- manifests and tags ----

    /// Stores a manifest pushed as `reference` with `content_type`, after checking that every
    /// blob and child manifest it references is in the repository. Returns its digest and, for
    /// a manifest with a subject, the subject's digest (for the `OCI-Subject` header).
    pub fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        origin: Origin,
    ) -> Result<(Digest, Option<Digest>), StorageError> {
        self.put_partial_index(repo, reference, content_type, body, origin, Vec::new())
    }

    /// Stores a manifest like [`Store::put_manifest`], except that the index children in
    /// `skipped` may be absent: sync's platform filter keeps only some platforms of a
    /// multi-arch index, and the index itself must stay byte-exact (clients and deployments
    /// pin its digest). A client asking for a skipped platform gets MANIFEST_UNKNOWN.
    /// Storing the same index again with another `skipped` list updates it.
    pub fn put_partial_index(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        origin: Origin,
        skipped: Vec<Digest>,
    ) -> Result<(Digest, Option<Digest>), StorageError> {
        let limit = self.inner.limits.max_manifest_size;
        if body.len() as u64 > limit {
            return Err(StorageError::ManifestTooLarge {
                size: body.len() as u64,
                limit,
            });
        }
        let digest = match reference {
            Reference::Digest(claimed) => {
                let actual = claimed.same_algorithm_of(&body);
                if &actual != claimed {
                    return Err(StorageError::DigestMismatch {
                        expected: claimed.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let parsed = manifest::parse(content_type, &body)?;
        let blob_sizes: Vec<(Digest, u64)> = parsed
            .blobs()
            .filter(|d| !d.is_foreign())
            .map(|d| (d.digest.clone(), d.size))
            .collect();
        let mut refs: Vec<Digest> = blob_sizes.iter().map(|(d, _)| d.clone()).collect();
        refs.extend(parsed.children().iter().map(|d| d.digest.clone()));
        if let Some(stray) = skipped
            .iter()
            .find(|d| !parsed.children().iter().any(|c| &c.digest == *d))
        {
            return Err(StorageError::ManifestInvalid(format!(
                "{stray} is not a child of this index: only an index's children can be left out"
            )));
        }
        let meta = ManifestMeta {
            media_type: parsed.media_type.clone(),
            size: body.len() as u64,
            refs,
            subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
            skipped,
            pushed_at: util::time::now_secs(),
        };
        let referrer = parsed.subject.as_ref().map(|subject| {
            (
                subject.digest.clone(),
                Descriptor {
                    artifact_type: parsed.artifact_type.clone(),
                    annotations: parsed.annotations.clone(),
                    ..Descriptor::new(&parsed.media_type, digest.clone(), body.len() as u64)
                },
            )
        });
        // The bytes are staged now and installed only once the manifest is accepted. Only bytes
        // that go to the data directory's disk count against its reserve (the metadata always
        // does).
        let what = || format!("manifest {digest} in {repo}");
        let space = &self.inner.space;
        let local_bytes = match self.inner.blobs.local_space() {
            Some(_) => body.len() as u64,
            None => 0,
        };
        space.check_write(what, local_bytes)?;
        let mut staged = Some(
            self.inner
                .blobs
                .stage(body.clone())
                .map_err(|e| space.explain(e, what, local_bytes))?,
        );
        let _taking = self.inner.gc_lock.read().expect("gc lock");
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        self.inner.meta.put_manifest(
            meta::NewManifest {
                repo: repo.as_str(),
                digest: &digest,
                meta: &meta,
                blob_sizes: &blob_sizes,
                referrer: referrer.as_ref().map(|(s, d)| (s, d)),
                tag,
                origin,
            },
            // Once: a transaction run again (PostgreSQL was briefly unreachable) finds the
            // bytes in place already.
            || match staged.take() {
                Some(staged) => staged.install(&digest),
                None => Ok(()),
            },
        )?;
        self.inner
            .cache
            .put(&digest, &body, self.inner.limits.manifest_cache_bytes);
        self.changed_by(origin);
        Ok((digest, meta.subject))
    }

    /// Woken (one stored permit, so a change made while nobody waits is not lost) after a
    /// client changed a tag or a manifest; changes sync makes itself do not wake it.
    pub fn client_changes(&self) -> Arc<tokio::sync::Notify> {
        self.inner.client_changed.clone()
    }

    /// Ticks at every change from now on (a client's or sync's): the change feed's long poll
    /// subscribes before it reads the log, so a change between the two is not missed.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The registry is stopping: wakes every long poll for good.
    pub fn stop_waiters(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether [`Store::stop_waiters`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn changed_by(&self, origin: Origin) {
        if origin == Origin::Client {
            self.inner.client_changed.notify_one();
        }
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The manifest `reference` names in `repo`, as the metadata holds it now: for a caller
    /// that decides a write on what it finds (sync). Clients are served
    /// [`Store::get_manifest_cached`].
    pub fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StorageError> {
        self.manifest(repo, reference, Lookup::Current)
    }

    /// The manifest `reference` names in `repo`, resolved through this replica's cache: at most
    /// `--metadata-cache-ttl` behind a change made through another replica (shared metadata),
    /// never behind one made through this one. What a client's GET and HEAD are served.
    pub fn get_manifest_cached(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StorageError> {
        self.manifest(repo, reference, Lookup::Cached)
    }

    fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        lookup: Lookup,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let Some(resolution) = self.inner.meta.resolve(repo.as_str(), reference, lookup)? else {
            return Ok(None);
        };
        let digest = resolution.digest.clone();
        let body = match self.inner.cache.get(&digest) {
            Some(body) => body,
            None => {
                // Manifests are checked on every read from the blob store: small, and cached
                // after. Quarantined (or lost): absent, as the blob GET has it.
                let Some(body) = self.read_small_blob(&digest, u64::MAX)? else {
                    return Ok(None);
                };
                self.inner
                    .cache
                    .put(&digest, &body, self.inner.limits.manifest_cache_bytes);
                body
            }
        };
        Ok(Some(StoredManifest {
            digest,
            media_type: resolution.meta.media_type.clone(),
            body,
            skipped: resolution.meta.skipped.clone(),
            unreadable: resolution.unreadable.clone(),
        }))
    }

    pub fn delete_tag(
        &self,
        repo: &RepoName,
        tag: &str,
        origin: Origin,
    ) -> Result<bool, StorageError> {
        let removed = self.inner.meta.delete_tag(repo.as_str(), tag, origin)?;
        if removed {
            self.changed_by(origin);
        }
        Ok(removed)
    }

    pub fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        origin: Origin,
    ) -> Result<(), StorageError> {
        self.inner
            .meta
            .delete_manifest(repo.as_str(), digest, origin)?;
        self.changed_by(origin);
        Ok(())
    }

    /// Tags in lexical order after `last`, at most `limit`; `None` for an unknown repository.
    pub fn tags_page(
        &self,
        repo: &RepoName,
        last: &str,
        limit: usize,
    ) -> Result<Option<Vec<String>>, StorageError> {
        self.inner.meta.tags(repo.as_str(), last, limit)
    }

    /// All tags of a repository (empty if unknown).
    pub fn tags(&self, repo: &RepoName) -> Result<Vec<String>, StorageError> {
        Ok(self.tags_page(repo, "", usize::MAX)?.unwrap_or_default())
    }

    /// Repositories in lexical order after `last`, at most `limit`, leaving out those with
    /// `listEnabled: false`.
    pub fn repos_page(&self, last: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        self.repos_visible(last, limit, &|_| true, false)
    }

    /// [`Store::repos_page`] for a caller who may list only the repositories `may_list` allows:
    /// filtered while scanning, so a page still holds `limit` names when there are that many.
    /// `unlisted`: those with `listEnabled: false` too (`include=unlisted` for a child's sync).
    pub fn repos_visible(
        &self,
        last: &str,
        limit: usize,
        may_list: &dyn Fn(&str) -> bool,
        unlisted: bool,
    ) -> Result<Vec<String>, StorageError> {
        self.inner.meta.repos(last, limit, may_list, unlisted)
    }

    /// Every repository listings may name.
    pub fn repos(&self) -> Result<Vec<String>, StorageError> {
        self.repos_page("", usize::MAX)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StorageError> {
        self.inner.meta.referrers(repo.as_str(), subject)
    }

    // ---- change log ----

    pub fn changes(&self, after_seq: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
        self.inner.meta.changes(after_seq, limit)
    }

    /// Changes with `seq > after_seq` (at most `limit`) with the log's bounds, in one snapshot:
    /// the change feed children read.
    pub fn change_page(&self, after_seq: u64, limit: usize) -> Result<ChangePage, StorageError> {
        self.inner.meta.change_page(after_seq, limit)
    }

    pub fn prune_changes(&self, before_unix_secs: u64) -> Result<usize, StorageError> {
        self.inner.meta.prune_changes(before_unix_secs)
    }
}
