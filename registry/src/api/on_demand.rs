//! Pull-through: a pull of a manifest or blob this registry does not hold, in a repository its
//! [`Source`] serves, is fetched from the parent on demand and streamed to the client while it
//! is written and verified.
//!
//! The registry only knows the small [`Source`] contract; sync implements it over its parent
//! client (auth, TLS, retries, the bandwidth cap), and decides in one place which parent serves
//! a repository. What is held here is always answered from the store without asking the parent:
//! only misses come here, and each waits on the parent at most [`OnDemand`]'s timeout.
//!
//! Coalescing: concurrent requests for one manifest share one fetch (kept in memory until the
//! manifest is stored), and for one blob one download (`storage::fill`). A fetched manifest is
//! answered at once; its blobs are fetched in the background, and the manifest is stored (as
//! sync stores, so it is evictable under `--quota` and appears in the change feed for this
//! registry's own children) once everything it references is here, and marked as fetched on
//! demand, so the quota evicts it first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::api::error::ApiError;
use crate::storage::fill::{Fill, FillError, Fills, Incoming, OpenIncoming};
use crate::storage::Store;
use oci::digest::Digest;
use oci::name::RepoName;
use oci::reference::Reference;
use oci::{ErrorCode, Origin};

/// A manifest fetched from the parent, its body verified against its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// Why the source could not answer.
#[derive(Debug, Clone)]
pub enum SourceError {
    /// The parent could not be reached (connection refused, timed out, stalled).
    Unreachable(String),
    /// The parent answered, but not with something usable (refused, broken, unverifiable).
    Refused(String),
}

/// Where content missing here comes from: the parent, as sync reaches it. `None` answers mean
/// "the parent has no such thing".
pub trait Source: Send + Sync + 'static {
    /// Whether pulls of `repo` that miss here are fetched on demand (the on-demand scope).
    fn serves(&self, repo: &RepoName) -> bool;
    /// How long a tag held here may go unconfirmed with the parent before a pull of it checks
    /// it (in the background); `None`: never (sync keeps tags current).
    fn revalidate_after(&self) -> Option<Duration> {
        None
    }
    /// A manifest by tag or digest.
    fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> BoxFuture<'static, Result<Option<FetchedManifest>, SourceError>>;
    /// A blob's bytes from the first, and its size when the parent says.
    fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> BoxFuture<'static, Result<Option<Incoming>, SourceError>>;
}

type SharedManifest = Shared<BoxFuture<'static, Result<Arc<FetchedManifest>, ApiError>>>;

/// Pull-through for the routes: the source, the wait allowed, and what is in flight.
#[derive(Clone)]
pub struct OnDemand {
    source: Arc<dyn Source>,
    /// The longest a miss waits for the parent to answer (`--on-demand-timeout`).
    timeout: Duration,
    fills: Fills,
    /// Manifests fetched and not stored yet, by (repository, reference as asked).
    manifests: Arc<Mutex<HashMap<(String, String), SharedManifest>>>,
    /// When each held tag was last checked with the parent (or a check started), by
    /// (repository, tag).
    checked: Arc<Mutex<HashMap<(String, String), std::time::Instant>>>,
}

impl OnDemand {
    pub fn new(source: Arc<dyn Source>, timeout: Duration) -> OnDemand {
        OnDemand {
            source,
            timeout,
            fills: Fills::default(),
            manifests: Arc::default(),
            checked: Arc::default(),
        }
    }

    /// After a pull of the held tag `reference` (as `held`): when tags are revalidated and this
    /// one was not checked with the parent for that long, checks it in the background (the
    /// pull was answered already); a tag moved at the parent is fetched and stored as a miss
    /// would be. At most one check per tag per period, whatever its outcome.
    pub fn revalidate(&self, store: &Store, repo: &RepoName, reference: &Reference, held: &Digest) {
        let Reference::Tag(tag) = reference else {
            return;
        };
        let Some(period) = self.source.revalidate_after() else {
            return;
        };
        if !self.source.serves(repo) {
            return;
        }
        let key = (repo.as_str().to_owned(), tag.as_str().to_owned());
        let now = std::time::Instant::now();
        {
            let mut checked = lock(&self.checked);
            if checked
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < period)
            {
                return;
            }
            checked.insert(key, now);
        }
        let this = self.clone();
        let (store, repo, reference, held) =
            (store.clone(), repo.clone(), reference.clone(), held.clone());
        tokio::spawn(async move {
            let asked = this.source.manifest(&repo, &reference);
            let fetched = match tokio::time::timeout(this.timeout, asked).await {
                Ok(Ok(Some(fetched))) => fetched,
                Ok(Ok(None)) => return, // gone at the parent: sync's to delete
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(%repo, %reference, "revalidating a tag: the parent did not answer; the held copy stays");
                    return;
                }
            };
            if fetched.digest == held {
                return;
            }
            tracing::info!(%repo, %reference, from = %held, to = %fetched.digest, "a held tag moved at the parent: fetching the new manifest");
            this.keep(&store, &repo, &reference, &fetched).await;
            lock(&this.manifests).remove(&(repo.as_str().to_owned(), fetched.digest.to_string()));
        });
    }

    /// The blobs being filled (for tests and metrics).
    pub fn fills(&self) -> &Fills {
        &self.fills
    }

    /// The manifest `reference` of `repo` from the parent (`None`: the repository is not
    /// served on demand). Concurrent calls share one fetch.
    pub async fn manifest(
        &self,
        store: &Store,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Arc<FetchedManifest>>, ApiError> {
        if !self.source.serves(repo) {
            return Ok(None);
        }
        let key = (repo.as_str().to_owned(), reference.to_string());
        let shared = {
            let mut manifests = lock(&self.manifests);
            // Stored between the caller's miss and now: no second fetch.
            if !manifests.contains_key(&key) {
                if let Ok(Some(stored)) = store.get_manifest(repo, reference) {
                    if stored.unreadable.is_some() {
                        return Ok(None); // locked here: the route's own answer applies
                    }
                    return Ok(Some(Arc::new(FetchedManifest {
                        digest: stored.digest,
                        media_type: stored.media_type,
                        body: stored.body,
                    })));
                }
            }
            match manifests.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = self.start_manifest(store, repo, reference, key.clone());
                    manifests.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await.map(Some)
    }

    /// Spawns the fetch of a manifest (a client going away does not stop it for the others);
    /// on success, the task that stores it once its content is here.
    fn start_manifest(
        &self,
        store: &Store,
        repo: &RepoName,
        reference: &Reference,
        key: (String, String),
    ) -> SharedManifest {
        let this = self.clone();
        let (store, repo, reference) = (store.clone(), repo.clone(), reference.clone());
        let task = tokio::spawn(async move {
            let asked = this.source.manifest(&repo, &reference);
            let fetched = match tokio::time::timeout(this.timeout, asked).await {
                Err(_) => Err(this.too_slow()),
                Ok(Err(err)) => Err(source_error(err)),
                Ok(Ok(None)) => Err(ApiError::new(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "manifest {reference} is not in repository {repo}, here or at the parent"
                    ),
                )),
                Ok(Ok(Some(fetched))) => Ok(Arc::new(fetched)),
            };
            match &fetched {
                Ok(manifest) => {
                    let manifest = manifest.clone();
                    tokio::spawn(async move {
                        this.keep(&store, &repo, &reference, &manifest).await;
                        let mut manifests = lock(&this.manifests);
                        manifests.remove(&key);
                        manifests.remove(&(key.0.clone(), manifest.digest.to_string()));
                    });
                }
                Err(_) => {
                    lock(&this.manifests).remove(&key);
                }
            }
            fetched
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(ApiError::new(
                    ErrorCode::Unknown,
                    format!("the on-demand manifest fetch failed: {e}"),
                ))
            })
        }
        .boxed()
        .shared()
    }

    /// Brings what `manifest` references down (its blobs; an index's children come when asked
    /// for) and stores it as sync would, under `reference`. Failures are logged: the manifest
    /// is then not kept, and the next pull fetches it again.
    async fn keep(
        &self,
        store: &Store,
        repo: &RepoName,
        reference: &Reference,
        manifest: &FetchedManifest,
    ) {
        // Until it is stored (and marked as fetched on demand, so evicted first), its blobs
        // must not make the quota evict something else.
        let _deferral = store.defer_evictions();
        // Requests by digest share this fetch too while the blobs come down.
        if let Reference::Tag(_) = reference {
            let by_digest = (repo.as_str().to_owned(), manifest.digest.to_string());
            let ready: SharedManifest = futures_util::future::ready(Ok(Arc::new(manifest.clone())))
                .boxed()
                .shared();
            lock(&self.manifests).entry(by_digest).or_insert(ready);
        }
        let parsed = match oci::manifest::parse(Some(&manifest.media_type), &manifest.body) {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!(%repo, digest = %manifest.digest, %err, "a manifest fetched on demand does not parse: served, not kept");
                return;
            }
        };
        let mut fills = Vec::new();
        for blob in parsed.blobs().filter(|b| !b.is_foreign()) {
            if matches!(store.repo_blob(repo, &blob.digest), Ok(Some(_))) {
                continue;
            }
            fills.push(self.fill(store, repo, &blob.digest));
        }
        for fill in fills {
            if let Err(err) = fill.finished().await {
                tracing::warn!(%repo, digest = %manifest.digest, blob = %fill.digest, %err, "a blob of a manifest fetched on demand could not be fetched: the manifest is not kept");
                return;
            }
        }
        let skipped: Vec<Digest> = parsed
            .children()
            .iter()
            .filter(|child| {
                !matches!(
                    store.get_manifest(repo, &Reference::Digest(child.digest.clone())),
                    Ok(Some(_))
                )
            })
            .map(|child| child.digest.clone())
            .collect();
        let (store, repo, reference) = (store.clone(), repo.clone(), reference.clone());
        let manifest = manifest.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store.put_partial_index(
                &repo,
                &reference,
                Some(&manifest.media_type),
                manifest.body.clone(),
                Origin::Sync,
                skipped,
            )?;
            if let Reference::Tag(tag) = &reference {
                store.mark_on_demand(&repo, tag.as_str())?;
            }
            Ok::<_, crate::storage::StorageError>((repo, manifest.digest))
        })
        .await;
        match stored {
            Ok(Ok((repo, digest))) => {
                tracing::info!(%repo, %digest, "stored a manifest fetched on demand")
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "a manifest fetched on demand could not be stored")
            }
            Err(err) => tracing::warn!(%err, "storing a manifest fetched on demand failed"),
        }
    }

    /// The blob `digest` of `repo` from the parent, with its size when known (`None`: the
    /// repository is not served on demand). Concurrent calls share one download.
    pub async fn blob(
        &self,
        store: &Store,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(Arc<Fill>, Option<u64>)>, ApiError> {
        if !self.source.serves(repo) {
            return Ok(None);
        }
        let fill = self.fill(store, repo, digest);
        let size = match tokio::time::timeout(self.timeout, fill.opened()).await {
            Err(_) => return Err(self.too_slow()),
            Ok(Err(FillError::Missing)) => {
                return Err(ApiError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in repository {repo}, here or at the parent"),
                ))
            }
            Ok(Err(FillError::Unreachable(why))) => {
                return Err(unreachable(why));
            }
            Ok(Err(FillError::Failed(why))) => {
                return Err(
                    ApiError::new(ErrorCode::Unknown, why).with_status(StatusCode::BAD_GATEWAY)
                )
            }
            Ok(Ok(size)) => size,
        };
        Ok(Some((fill, size)))
    }

    fn fill(&self, store: &Store, repo: &RepoName, digest: &Digest) -> Arc<Fill> {
        self.fills
            .fill(store, repo, digest, self.open_blob(repo, digest))
    }

    fn open_blob(&self, repo: &RepoName, digest: &Digest) -> OpenIncoming {
        let asked = self.source.blob(repo, digest);
        let timeout = self.timeout;
        async move {
            match tokio::time::timeout(timeout, asked).await {
                Err(_) => Err(FillError::Unreachable(too_slow_message(timeout))),
                Ok(Err(SourceError::Unreachable(why))) => {
                    Err(FillError::Unreachable(format!("parent unreachable: {why}")))
                }
                Ok(Err(SourceError::Refused(why))) => Err(FillError::Failed(why)),
                Ok(Ok(None)) => Err(FillError::Missing),
                Ok(Ok(Some(incoming))) => Ok(incoming),
            }
        }
        .boxed()
    }

    fn too_slow(&self) -> ApiError {
        ApiError::new(ErrorCode::Unknown, too_slow_message(self.timeout))
            .with_status(StatusCode::GATEWAY_TIMEOUT)
    }
}

fn too_slow_message(timeout: Duration) -> String {
    format!(
        "parent unreachable: it did not answer within {} s (--on-demand-timeout); content held \
         here is still served, this pull needs the parent",
        timeout.as_secs_f64()
    )
}

fn unreachable(why: String) -> ApiError {
    let message = if why.starts_with("parent unreachable") {
        why
    } else {
        format!("parent unreachable: {why}")
    };
    ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::BAD_GATEWAY)
}

fn source_error(err: SourceError) -> ApiError {
    match err {
        SourceError::Unreachable(why) => unreachable(why),
        SourceError::Refused(why) => {
            ApiError::new(ErrorCode::Unknown, why).with_status(StatusCode::BAD_GATEWAY)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::on_every_backend;
    use crate::storage::Limits;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A parent holding one image, counting what it is asked for.
    struct FakeParent {
        manifest: FetchedManifest,
        blobs: HashMap<Digest, Bytes>,
        manifest_gets: AtomicUsize,
        blob_gets: AtomicUsize,
    }

    impl Source for Arc<FakeParent> {
        fn serves(&self, repo: &RepoName) -> bool {
            repo.as_str().starts_with("lib/")
        }
        fn manifest(
            &self,
            _repo: &RepoName,
            _reference: &Reference,
        ) -> BoxFuture<'static, Result<Option<FetchedManifest>, SourceError>> {
            self.manifest_gets.fetch_add(1, Ordering::SeqCst);
            let manifest = self.manifest.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Some(manifest))
            }
            .boxed()
        }
        fn blob(
            &self,
            _repo: &RepoName,
            digest: &Digest,
        ) -> BoxFuture<'static, Result<Option<Incoming>, SourceError>> {
            self.blob_gets.fetch_add(1, Ordering::SeqCst);
            let bytes = self.blobs.get(digest).cloned();
            async move {
                Ok(bytes.map(|b| Incoming {
                    size: Some(b.len() as u64),
                    chunks: futures_util::stream::iter([Ok(b)]).boxed(),
                }))
            }
            .boxed()
        }
    }

    on_every_backend! {
        /// Twenty concurrent asks for one tag make one fetch, and the manifest is stored (tagged,
        /// marked as fetched on demand) once its blobs came down; a repository outside the scope
        /// is not asked about.
        async fn concurrent_asks_share_one_fetch_and_the_manifest_is_kept(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = backend.open(dir.path(), Limits::default());
            let config = Bytes::from_static(b"{}");
            let layer = Bytes::from(vec![5u8; 300_000]);
            let (cd, ld) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":300000}}]}}"#,
                oci::media_type::OCI_MANIFEST
            );
            let body = Bytes::from(body);
            let parent = Arc::new(FakeParent {
                manifest: FetchedManifest {
                    digest: Digest::sha256_of(&body),
                    media_type: oci::media_type::OCI_MANIFEST.into(),
                    body,
                },
                blobs: HashMap::from([(cd, config), (ld, layer)]),
                manifest_gets: AtomicUsize::new(0),
                blob_gets: AtomicUsize::new(0),
            });
            let on_demand = OnDemand::new(Arc::new(parent.clone()), Duration::from_secs(5));
            let repo: RepoName = "lib/app".parse().unwrap();
            let tag = Reference::Tag("v1".parse().unwrap());
            let asks: Vec<_> = (0..20)
                .map(|_| {
                    let (on_demand, store, repo, tag) =
                        (on_demand.clone(), store.clone(), repo.clone(), tag.clone());
                    tokio::spawn(async move { on_demand.manifest(&store, &repo, &tag).await })
                })
                .collect();
            for ask in asks {
                let got = ask.await.unwrap().unwrap().unwrap();
                assert_eq!(got.digest, parent.manifest.digest);
            }
            assert_eq!(parent.manifest_gets.load(Ordering::SeqCst), 1);
            // Stored, then marked: wait for both.
            for _ in 0..200 {
                if store.is_on_demand(&repo, "v1").unwrap() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(store.is_on_demand(&repo, "v1").unwrap());
            let stored = store.get_manifest(&repo, &tag).unwrap().unwrap();
            assert_eq!(stored.digest, parent.manifest.digest);
            assert_eq!(parent.blob_gets.load(Ordering::SeqCst), 2, "each blob once");
            let outside: RepoName = "other/app".parse().unwrap();
            assert!(on_demand
                .manifest(&store, &outside, &tag)
                .await
                .unwrap()
                .is_none());
            assert_eq!(parent.manifest_gets.load(Ordering::SeqCst), 1);
        }
    }
}
