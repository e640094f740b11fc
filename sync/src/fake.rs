//! In-memory fakes of the two contracts sync works against, for unit tests of the copy engine
//! and the upward push: a [`FakeParent`] that can serve corrupt bytes or cut a blob download
//! short, and a [`FakeStore`] that keeps the local store's rules (content-addressed blobs,
//! a manifest only when everything it references is here, a change log with origins).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::client::{
    AcrAnswer, ClientError, ClientStats, FeedAnswer, FetchedManifest, ParentManifest, ParentTag,
    TagListing, Uploaded,
};
use crate::parent::{BlobDownload, ChunkedUpload, Parent};
use crate::store::{BlobBytes, BlobWriter, LocalStore, StoreError, StoredManifest};
use oci::manifest::Content;
use oci::Digest;
use oci::{Change, ChangeKind, Origin, Reference};

pub use oci::media_type::{OCI_INDEX as INDEX, OCI_MANIFEST as IMAGE};

/// An image manifest over `config` and `layers` (each given by its bytes).
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Bytes {
    let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": Digest::sha256_of(b).to_string(), "size": b.len()});
    let layers: Vec<_> = layers
        .iter()
        .map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l))
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": IMAGE,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers,
    });
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

/// An index over image manifests (by their bodies), each for linux/amd64.
pub fn index_manifest(children: &[&[u8]]) -> Bytes {
    let manifests: Vec<_> = children
        .iter()
        .map(|c| {
            serde_json::json!({"mediaType": IMAGE, "digest": Digest::sha256_of(c).to_string(),
                "size": c.len(), "platform": {"os": "linux", "architecture": "amd64"}})
        })
        .collect();
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

// ---------- the parent ----------

#[derive(Default)]
struct ParentState {
    /// What the parent serves for a digest (tests may put bytes that do not hash to it).
    blobs: HashMap<Digest, Bytes>,
    manifests: HashMap<Digest, FetchedManifest>,
    /// repo -> manifests it holds.
    repo_manifests: BTreeMap<String, BTreeSet<Digest>>,
    tags: BTreeMap<(String, String), Digest>,
    /// The next download of a blob ends with a dropped connection after this many bytes.
    cut_next_download: HashMap<Digest, usize>,
    /// The offsets of every download of a blob asked for, in order.
    download_offsets: HashMap<Digest, Vec<u64>>,
    /// What every change-feed request is answered with (`None`: no feed).
    feed: Option<FeedAnswer>,
    /// Change-feed requests (pages and probes) asked for.
    feed_requests: usize,
    /// What a long poll of the feed answers at once (`None`: it waits for ever), and how many
    /// were asked.
    long_poll: Option<bool>,
    long_polls: usize,
    /// Whether it answers the `/acr` tag listing (a parent of ours).
    acr: bool,
    /// (repo, tag) -> the tag's attributes, when not all enabled: `/v2` leaves a tag with
    /// `listEnabled: false` out of its list and refuses to resolve one with `readEnabled: false`.
    tag_attributes: BTreeMap<(String, String), oci::ChangeableAttributes>,
    /// repo -> the repository's attributes, when not all enabled: `/v2/_catalog` leaves out a
    /// repository with `listEnabled: false`, and its tag list names none of its tags.
    repo_attributes: BTreeMap<String, oci::ChangeableAttributes>,
    /// (repo, digest) -> the manifest's attributes, when not all enabled.
    manifest_attributes: BTreeMap<(String, Digest), oci::ChangeableAttributes>,
    /// `/acr` requests asked for (listings and repository reads).
    acr_requests: usize,
}

impl ParentState {
    /// Whether `/v2` listings name the repository.
    fn repo_listed(&self, repo: &str) -> bool {
        self.repo_attributes
            .get(repo)
            .is_none_or(|a| a.list_enabled)
    }

    /// Counts one `/acr` request; `false` when this parent has no `/acr`.
    fn acr_request(&mut self) -> bool {
        self.acr_requests += 1;
        self.acr
    }
}

/// A parent registry in memory, with no referrers, and no feed unless a test gives it one.
#[derive(Default)]
pub struct FakeParent {
    stats: ClientStats,
    state: Mutex<ParentState>,
}

impl FakeParent {
    fn with<T>(&self, f: impl FnOnce(&mut ParentState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Serves `bytes` as the blob `digest` (pass a digest of other bytes for a corrupt blob).
    pub fn put_blob_as(&self, digest: Digest, bytes: &[u8]) {
        self.with(|s| s.blobs.insert(digest, Bytes::copy_from_slice(bytes)));
    }

    /// Answers every change-feed request (page or probe) with `answer`.
    pub fn answer_feed_with(&self, answer: FeedAnswer) {
        self.with(|s| s.feed = Some(answer));
    }

    /// Answers every long poll of the feed at once with `changes` (whether one came).
    pub fn answer_long_polls_with(&self, changes: bool) {
        self.with(|s| s.long_poll = Some(changes));
    }

    /// Long polls of the feed asked for.
    pub fn long_polls(&self) -> usize {
        self.with(|s| s.long_polls)
    }

    /// Answers the `/acr` tag listing, as a parent of ours does.
    pub fn serve_acr(&self) {
        self.with(|s| s.acr = true);
    }

    /// Answers `/acr` with 404 again, as a registry that is not ours (with a feed) would.
    pub fn stop_serving_acr(&self) {
        self.with(|s| s.acr = false);
    }

    /// Sets a tag's attributes, as `PATCH /acr/v1/REPO/_tags/TAG` does at a parent of ours.
    pub fn lock_tag(&self, repo: &str, tag: &str, attributes: oci::ChangeableAttributes) {
        self.with(|s| {
            s.tag_attributes
                .insert((repo.to_owned(), tag.to_owned()), attributes)
        });
    }

    /// Sets a repository's attributes, as `PATCH /acr/v1/REPO` does at a parent of ours.
    pub fn lock_repo(&self, repo: &str, attributes: oci::ChangeableAttributes) {
        self.with(|s| s.repo_attributes.insert(repo.to_owned(), attributes));
    }

    /// Sets a manifest's attributes, as `PATCH /acr/v1/REPO/_manifests/DIGEST` does.
    pub fn lock_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        attributes: oci::ChangeableAttributes,
    ) {
        self.with(|s| {
            s.manifest_attributes
                .insert((repo.to_owned(), digest.clone()), attributes)
        });
    }

    /// How many `/acr` requests (listings and repository reads) were asked for.
    pub fn acr_requests(&self) -> usize {
        self.with(|s| s.acr_requests)
    }

    /// How many change-feed requests were asked for.
    pub fn feed_requests(&self) -> usize {
        self.with(|s| s.feed_requests)
    }

    fn feed(&self) -> FeedAnswer {
        self.with(|s| {
            s.feed_requests += 1;
            s.feed.clone().unwrap_or(FeedAnswer::Absent)
        })
    }

    pub fn put_blob(&self, bytes: &[u8]) {
        self.put_blob_as(Digest::sha256_of(bytes), bytes);
    }

    /// Stores a manifest in `repo`, tagged `tag` when given; returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: &Bytes,
    ) -> Digest {
        let digest = Digest::sha256_of(body);
        self.with(|s| {
            s.manifests.insert(
                digest.clone(),
                FetchedManifest {
                    digest: digest.clone(),
                    media_type: media_type.to_owned(),
                    body: body.clone(),
                },
            );
            s.repo_manifests
                .entry(repo.to_owned())
                .or_default()
                .insert(digest.clone());
            if let Some(t) = tag {
                s.tags
                    .insert((repo.to_owned(), t.to_owned()), digest.clone());
            }
        });
        digest
    }

    /// Stops serving the manifest `repo:tag` points at while still listing the tag, as a parent
    /// of ours does after evicting it to stay under its quota.
    pub fn evict(&self, repo: &str, tag: &str) {
        self.with(|s| {
            let digest = s.tags[&(repo.to_owned(), tag.to_owned())].clone();
            s.repo_manifests
                .entry(repo.to_owned())
                .or_default()
                .remove(&digest);
        });
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.with(|s| s.tags.get(&(repo.to_owned(), tag.to_owned())).cloned())
    }

    pub fn has_manifest(&self, digest: &Digest) -> bool {
        self.with(|s| s.manifests.contains_key(digest))
    }

    /// The next download of `digest` drops after `bytes` bytes.
    pub fn cut_next_download(&self, digest: &Digest, bytes: usize) {
        self.with(|s| s.cut_next_download.insert(digest.clone(), bytes));
    }

    /// The offsets every download of `digest` started at.
    pub fn download_offsets(&self, digest: &Digest) -> Vec<u64> {
        self.with(|s| s.download_offsets.get(digest).cloned().unwrap_or_default())
    }

    /// A manifest by tag or digest; a tag with `readEnabled: false` is refused (405), as a
    /// parent of ours refuses it.
    fn resolve(&self, repo: &str, reference: &str) -> Result<Option<FetchedManifest>, ClientError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.with(|s| {
            let digest = match reference.parse::<Digest>() {
                Ok(d) => d,
                Err(_) => {
                    let key = (repo.to_owned(), reference.to_owned());
                    if s.tag_attributes.get(&key).is_some_and(|a| !a.read_enabled) {
                        return Err(ClientError::Status {
                            method: "GET".into(),
                            url: format!("http://fake-parent/v2/{repo}/manifests/{reference}"),
                            status: 405,
                            body: "DENIED: readEnabled is false".into(),
                        });
                    }
                    match s.tags.get(&key) {
                        Some(d) => d.clone(),
                        None => return Ok(None),
                    }
                }
            };
            if s.repo_manifests
                .get(repo)
                .is_none_or(|m| !m.contains(&digest))
            {
                return Ok(None);
            }
            Ok(s.manifests.get(&digest).cloned())
        })
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    futures_util::future::ready(value).boxed()
}

impl Parent for FakeParent {
    fn base(&self) -> &str {
        "http://fake-parent"
    }
    fn stats(&self) -> &ClientStats {
        &self.stats
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let listed = self.with(|s| {
            s.repo_manifests
                .keys()
                .filter(|r| s.repo_listed(r))
                .cloned()
                .collect()
        });
        ready(Ok(Some(listed)))
    }
    fn tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (known, tags): (bool, Vec<String>) = self.with(|s| {
            let all: Vec<&(String, String)> = s.tags.keys().filter(|(r, _)| r == repo).collect();
            let listed = all
                .iter()
                .filter(|_| s.repo_listed(repo))
                .filter(|key| s.tag_attributes.get(**key).is_none_or(|a| a.list_enabled))
                .map(|(_, t)| t.clone())
                .collect();
            (!all.is_empty(), listed)
        });
        ready(Ok(known.then_some(tags)))
    }
    fn acr_tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<TagListing, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let listing = self.with(|s| {
            if !s.acr_request() {
                return TagListing::NoAcr;
            }
            let tags: Vec<ParentTag> = s
                .tags
                .iter()
                .filter(|((r, _), _)| r == repo)
                .map(|(key, digest)| ParentTag {
                    name: key.1.clone(),
                    digest: digest.clone(),
                    attributes: s.tag_attributes.get(key).copied().unwrap_or_default(),
                })
                .collect();
            if tags.is_empty() {
                TagListing::UnknownRepo
            } else {
                TagListing::Found(tags)
            }
        });
        ready(Ok(listing))
    }
    fn acr_manifests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<Vec<ParentManifest>>, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let listing = self.with(|s| {
            if !s.acr_request() {
                return AcrAnswer::NoAcr;
            }
            let Some(digests) = s.repo_manifests.get(repo) else {
                return AcrAnswer::UnknownRepo;
            };
            let key = |d: &Digest| (repo.to_owned(), d.clone());
            AcrAnswer::Found(
                digests
                    .iter()
                    .map(|d| ParentManifest {
                        digest: d.clone(),
                        attributes: s
                            .manifest_attributes
                            .get(&key(d))
                            .copied()
                            .unwrap_or_default(),
                    })
                    .collect(),
            )
        });
        ready(Ok(listing))
    }
    fn acr_repository<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<oci::ChangeableAttributes>, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.with(|s| {
            if !s.acr_request() {
                return AcrAnswer::NoAcr;
            }
            if !s.repo_manifests.contains_key(repo) {
                return AcrAnswer::UnknownRepo;
            }
            AcrAnswer::Found(s.repo_attributes.get(repo).copied().unwrap_or_default())
        });
        ready(Ok(answer))
    }
    fn acr_catalog(&self) -> BoxFuture<'_, Result<AcrAnswer<Vec<String>>, ClientError>> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.with(|s| {
            if !s.acr_request() {
                return AcrAnswer::NoAcr;
            }
            AcrAnswer::Found(s.repo_manifests.keys().cloned().collect())
        });
        ready(Ok(answer))
    }
    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, ClientError>> {
        ready(self.resolve(repo, reference).map(|m| m.map(|m| m.digest)))
    }
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<FetchedManifest>, ClientError>> {
        ready(self.resolve(repo, reference))
    }
    fn referrers<'a>(
        &'a self,
        _: &'a str,
        _: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Digest>, ClientError>> {
        ready(Ok(Vec::new()))
    }
    fn get_blob<'a, 'b>(
        &'a self,
        _repo: &'b str,
        digest: &'b Digest,
        offset: u64,
    ) -> BoxFuture<'b, Result<BlobDownload<'a>, ClientError>>
    where
        'a: 'b,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let source = format!("{}/blobs/{digest}", self.base());
        let found = self.with(|s| {
            s.download_offsets
                .entry(digest.clone())
                .or_default()
                .push(offset);
            let cut = s.cut_next_download.remove(digest);
            s.blobs.get(digest).cloned().map(|b| (b, cut))
        });
        let Some((bytes, cut)) = found else {
            return ready(Err(ClientError::Status {
                method: "GET".into(),
                url: source,
                status: 404,
                body: "blob unknown".into(),
            }));
        };
        let rest = bytes.slice((offset as usize).min(bytes.len())..);
        let mut chunks: Vec<Result<Bytes, ClientError>> = Vec::new();
        let end = cut.map_or(rest.len(), |c| c.min(rest.len()));
        for start in (0..end).step_by(1024) {
            chunks.push(Ok(rest.slice(start..(start + 1024).min(end))));
        }
        if cut.is_some() {
            chunks.push(Err(ClientError::Transport {
                url: source.clone(),
                message: "connection reset".into(),
            }));
        }
        self.stats
            .bytes_down
            .fetch_add(end as u64, Ordering::Relaxed);
        ready(Ok(BlobDownload {
            skip: 0,
            source,
            size: None,
            chunks: Box::pin(futures_util::stream::iter(chunks)),
        }))
    }
    fn blob_exists<'a>(
        &'a self,
        _: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        ready(Ok(self.with(|s| s.blobs.contains_key(digest))))
    }
    fn mount_blob<'a>(
        &'a self,
        _: &'a str,
        _: &'a Digest,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        ready(Ok(false))
    }
    fn upload_blob<'a>(
        &'a self,
        _: &'a str,
        digest: &'a Digest,
        blob: &'a dyn BlobBytes,
        size: u64,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        async move {
            let mut bytes = Vec::new();
            let mut stream = blob.read(0, size);
            while let Some(piece) = stream.next().await {
                bytes.extend_from_slice(&piece.unwrap());
            }
            assert_eq!(&Digest::sha256_of(&bytes), digest, "uploaded bytes match");
            self.put_blob(&bytes);
            Ok(())
        }
        .boxed()
    }
    fn upload_blob_chunked<'a>(
        &'a self,
        u: ChunkedUpload<'a>,
    ) -> BoxFuture<'a, Result<Uploaded, ClientError>> {
        let done = self.upload_blob(u.repo, u.digest, u.blob, u.size);
        async move { done.await.map(|_| Uploaded::Done) }.boxed()
    }
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        media_type: &'a str,
        body: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        let tag = reference.parse::<Digest>().is_err().then_some(reference);
        self.put_manifest(repo, tag, media_type, &body);
        ready(Ok(()))
    }
    fn changes(&self, _: u64, _: usize) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        ready(Ok(self.feed()))
    }
    fn feed_head(&self) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        ready(Ok(self.feed()))
    }
    fn wait_for_changes(
        &self,
        _after: u64,
        _wait: std::time::Duration,
    ) -> BoxFuture<'_, Result<bool, ClientError>> {
        match self.with(|s| {
            s.long_polls += 1;
            s.long_poll
        }) {
            Some(changes) => ready(Ok(changes)),
            None => futures_util::future::pending().boxed(),
        }
    }
}

// ---------- the local store ----------

#[derive(Default)]
struct StoreState {
    /// Blob files are real (under `root`): the upward push streams them from their paths.
    blobs: BTreeSet<Digest>,
    links: BTreeSet<(String, Digest)>,
    uploads: HashMap<String, (String, Vec<u8>)>,
    manifests: BTreeMap<(String, Digest), StoredManifest>,
    tags: BTreeMap<(String, String), Digest>,
    /// (repo, tag) -> the tag's own attributes, when not all enabled.
    tag_attributes: BTreeMap<(String, String), oci::ChangeableAttributes>,
    /// repo -> the repository's own attributes, when not all enabled.
    repo_attributes: BTreeMap<String, oci::ChangeableAttributes>,
    /// (repo, digest) -> the manifest's own attributes, when not all enabled.
    manifest_attributes: BTreeMap<(String, Digest), oci::ChangeableAttributes>,
    changes: Vec<Change>,
}

impl StoreState {
    /// Appends to the change log (sequence numbers from 1, without gaps).
    fn log(&mut self, repo: &str, from_client: bool, kind: ChangeKind) {
        let seq = self.changes.len() as u64 + 1;
        self.changes.push(Change {
            seq,
            time: 0,
            repo: repo.to_owned(),
            origin: if from_client {
                Origin::Client
            } else {
                Origin::Sync
            },
            kind,
        });
    }
}

/// The local store in memory (blob bytes in files under a temp directory).
pub struct FakeStore {
    root: PathBuf,
    state: Arc<Mutex<StoreState>>,
}

impl FakeStore {
    pub fn new(root: &Path) -> FakeStore {
        FakeStore {
            root: root.to_owned(),
            state: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut StoreState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.with(|s| s.tags.get(&(repo.to_owned(), tag.to_owned())).cloned())
    }

    /// How many entries the change log holds (each a write sync made).
    pub fn changes_logged(&self) -> usize {
        self.with(|s| s.changes.len())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.with(|s| s.blobs.contains(digest))
    }

    pub fn has_manifest(&self, repo: &str, digest: &Digest) -> bool {
        self.with(|s| s.manifests.contains_key(&(repo.to_owned(), digest.clone())))
    }

    /// What a client push does here: the blob, linked to `repo`.
    pub fn client_blob(&self, repo: &str, bytes: &[u8]) {
        let d = Digest::sha256_of(bytes);
        std::fs::write(self.blob_path(&d), bytes).unwrap();
        self.with(|s| {
            s.blobs.insert(d.clone());
            s.links.insert((repo.to_owned(), d));
        });
    }

    /// What a client push of a tagged manifest does here (origin: client).
    pub fn client_manifest(&self, repo: &str, tag: &str, media_type: &str, body: Bytes) -> Digest {
        self.store(
            repo,
            &Reference::Tag(tag.to_owned()),
            media_type,
            body,
            &[],
            true,
        )
        .unwrap()
    }

    fn store(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        body: Bytes,
        skipped: &[Digest],
        from_client: bool,
    ) -> Result<Digest, StoreError> {
        let digest = Digest::sha256_of(&body);
        let mut s = self.state.lock().unwrap();
        let parsed = oci::manifest::parse(Some(media_type), &body)
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let missing = match parsed.content {
            Content::Opaque => None,
            Content::Image { config, layers } => std::iter::once(config.as_ref())
                .chain(layers.iter().filter(|l| !l.is_foreign()))
                .find(|b| !s.links.contains(&(repo.to_owned(), b.digest.clone())))
                .map(|b| b.digest.clone()),
            Content::Index { manifests } => manifests
                .iter()
                .filter(|c| !skipped.contains(&c.digest))
                .find(|c| {
                    !s.manifests
                        .contains_key(&(repo.to_owned(), c.digest.clone()))
                })
                .map(|c| c.digest.clone()),
        };
        if let Some(m) = missing {
            return Err(StoreError::MissingReference(m.to_string()));
        }
        let stored = StoredManifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            body,
            skipped: skipped.to_vec(),
        };
        s.manifests
            .insert((repo.to_owned(), digest.clone()), stored);
        let mut log = vec![ChangeKind::ManifestPut {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
        }];
        if let Reference::Tag(t) = reference {
            s.tags.insert((repo.to_owned(), t.clone()), digest.clone());
            log.push(ChangeKind::TagSet {
                tag: t.clone(),
                digest: digest.clone(),
            });
        }
        for kind in log {
            s.log(repo, from_client, kind);
        }
        Ok(digest)
    }
}

struct FakeWriter {
    id: String,
    root: PathBuf,
    state: Arc<Mutex<StoreState>>,
}

impl BlobWriter for FakeWriter {
    fn len(&self) -> u64 {
        self.state
            .lock()
            .unwrap()
            .uploads
            .get(&self.id)
            .map_or(0, |u| u.1.len() as u64)
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let upload = s
            .uploads
            .get_mut(&self.id)
            .ok_or_else(|| StoreError::Other("upload gone".into()))?;
        upload.1.extend_from_slice(bytes);
        Ok(())
    }
    fn finish(self: Box<Self>, expected: &Digest) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let (repo, bytes) = s
            .uploads
            .remove(&self.id)
            .ok_or_else(|| StoreError::Other("upload gone".into()))?;
        let actual = Digest::sha256_of(&bytes);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: actual.to_string(),
            });
        }
        std::fs::write(self.root.join(actual.hex()), &bytes).unwrap();
        s.blobs.insert(actual.clone());
        s.links.insert((repo, actual));
        Ok(())
    }
}

impl FakeStore {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }
}

/// A blob of the fake store: its file, read whole per read.
struct FileBytes(PathBuf);

impl BlobBytes for FileBytes {
    fn read(
        &self,
        offset: u64,
        len: u64,
    ) -> futures_util::stream::BoxStream<'static, std::io::Result<Bytes>> {
        let read = std::fs::read(&self.0).map(|all| {
            let end = (offset + len).min(all.len() as u64) as usize;
            Bytes::copy_from_slice(&all[(offset as usize).min(end)..end])
        });
        futures_util::stream::once(async move { read }).boxed()
    }
}

impl LocalStore for FakeStore {
    fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.has_blob(digest)
            .then(|| std::fs::metadata(self.blob_path(digest)).unwrap().len())
    }
    fn blob_bytes(&self, digest: &Digest) -> std::sync::Arc<dyn BlobBytes> {
        std::sync::Arc::new(FileBytes(self.blob_path(digest)))
    }
    fn repo_has_blob(&self, repo: &str, digest: &Digest) -> bool {
        self.with(|s| s.links.contains(&(repo.to_owned(), digest.clone())))
    }
    fn link_blob(&self, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        self.with(|s| s.links.insert((repo.to_owned(), digest.clone())));
        Ok(())
    }
    fn open_upload(&self, repo: &str, id: &str) -> Result<Box<dyn BlobWriter>, StoreError> {
        self.with(|s| {
            s.uploads
                .entry(id.to_owned())
                .or_insert_with(|| (repo.to_owned(), Vec::new()))
                .0 = repo.to_owned()
        });
        Ok(Box::new(FakeWriter {
            id: id.to_owned(),
            root: self.root.clone(),
            state: self.state.clone(),
        }))
    }
    fn cancel_upload(&self, id: &str) -> Result<(), StoreError> {
        self.with(|s| s.uploads.remove(id));
        Ok(())
    }
    fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        body: Bytes,
        skipped: &[Digest],
    ) -> Result<Digest, StoreError> {
        self.store(repo, reference, media_type, body, skipped, false)
    }
    fn get_manifest(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, StoreError> {
        Ok(self.with(|s| {
            let digest = match reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => s.tags.get(&(repo.to_owned(), t.clone()))?.clone(),
            };
            s.manifests.get(&(repo.to_owned(), digest)).cloned()
        }))
    }
    fn tags(&self, repo: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|s| {
            s.tags
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|(_, t)| t.clone())
                .collect()
        }))
    }
    fn set_attributes(
        &self,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
        attributes: oci::ChangeableAttributes,
    ) -> Result<bool, StoreError> {
        Ok(self.with(|s| {
            let known = match (tag, digest) {
                (Some(tag), _) => s.tags.contains_key(&(repo.to_owned(), tag.to_owned())),
                (None, Some(d)) => s.manifests.contains_key(&(repo.to_owned(), d.clone())),
                (None, None) => s.manifests.keys().any(|(r, _)| r == repo),
            };
            if known {
                let repo = repo.to_owned();
                match (tag, digest) {
                    (Some(tag), _) => s.tag_attributes.insert((repo, tag.to_owned()), attributes),
                    (None, Some(d)) => s.manifest_attributes.insert((repo, d.clone()), attributes),
                    (None, None) => s.repo_attributes.insert(repo, attributes),
                };
            }
            if known {
                let kind = ChangeKind::AttributesSet {
                    tag: tag.map(str::to_owned),
                    digest: digest.cloned(),
                    attributes,
                };
                s.log(repo, false, kind);
            }
            known
        }))
    }
    fn tag_attributes(
        &self,
        repo: &str,
    ) -> Result<BTreeMap<String, oci::ChangeableAttributes>, StoreError> {
        Ok(self.with(|s| {
            s.tags
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|key| {
                    let own = s.tag_attributes.get(key).copied().unwrap_or_default();
                    (key.1.clone(), own)
                })
                .collect()
        }))
    }
    fn repository_attributes(
        &self,
        repo: &str,
    ) -> Result<Option<oci::ChangeableAttributes>, StoreError> {
        Ok(self.with(|s| {
            let known = s.manifests.keys().any(|(r, _)| r == repo);
            known.then(|| s.repo_attributes.get(repo).copied().unwrap_or_default())
        }))
    }
    fn manifest_attributes(
        &self,
        repo: &str,
    ) -> Result<BTreeMap<Digest, oci::ChangeableAttributes>, StoreError> {
        Ok(self.with(|s| {
            s.manifests
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|key| {
                    let own = s.manifest_attributes.get(key).copied().unwrap_or_default();
                    (key.1.clone(), own)
                })
                .collect()
        }))
    }
    fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.tag_attributes.remove(&(repo.to_owned(), tag.to_owned()));
            if s.tags.remove(&(repo.to_owned(), tag.to_owned())).is_some() {
                let kind = ChangeKind::TagDeleted {
                    tag: tag.to_owned(),
                };
                s.log(repo, false, kind);
            }
        });
        Ok(())
    }
    fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        Ok(self.with(|s| {
            s.changes
                .iter()
                .filter(|c| c.seq > after)
                .take(limit)
                .cloned()
                .collect()
        }))
    }
    fn change_bounds(&self) -> Result<(u64, u64), StoreError> {
        let head = self.with(|s| s.changes.len() as u64);
        Ok((1, head))
    }
    fn prune_changes(&self, _: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
}

// ---------- an engine over both ----------

/// An engine syncing from a [`FakeParent`] into a [`FakeStore`].
pub struct Rig {
    pub parent: Arc<FakeParent>,
    pub store: Arc<FakeStore>,
    pub engine: crate::Engine,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub fn new(mode: &str) -> Rig {
        Rig::with_repos(mode, &["app"])
    }

    /// An engine syncing the repositories `patterns` select (all tags).
    pub fn with_repos(mode: &str, patterns: &[&str]) -> Rig {
        Rig::with_raw(mode, patterns, crate::RawSettings::default())
    }

    /// An engine syncing `patterns` with other settings from `raw` (parent, mode and
    /// repositories are set here).
    pub fn with_raw(mode: &str, patterns: &[&str], raw: crate::RawSettings) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let settings = crate::RawSettings {
            parent: Some("http://fake-parent".into()),
            mode: Some(mode.into()),
            repos: patterns
                .iter()
                .map(|p| crate::settings::RawRepoRule {
                    pattern: (*p).into(),
                    ..Default::default()
                })
                .collect(),
            ..raw
        }
        .validate()
        .unwrap()
        .unwrap();
        let parent = Arc::new(FakeParent::default());
        let store = Arc::new(FakeStore::new(&blobs));
        let state = Arc::new(crate::StateFile::open(&dir.path().join("sync")).unwrap());
        let engine = crate::Engine::new(
            parent.clone(),
            store.clone(),
            settings,
            state,
            Arc::new(crate::NoProgress),
        );
        Rig {
            parent,
            store,
            engine,
            _dir: dir,
        }
    }
}
