//! The copy engine, downward: for each tag in scope (all of them, or those the parent's change
//! feed names: see `feed.rs`) compare the parent's digest (one HEAD)
//! with the local one, fetch what is missing bottom-up (blobs, then image manifests, then
//! indexes) so a tag never points at missing content, verify every digest, and write through
//! the local store. Interrupted blobs resume with `Range` from the bytes already on disk.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{ClientError, FetchedManifest};
use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Parsed};
use crate::parent::Parent;
use crate::settings::{RepoRule, Settings};
use crate::state::{Outcome, Pull, StateError, StateFile, Summary};
use crate::store::{BlobWriter, LocalStore, Reference, StoreError, StoredManifest};

/// Why a piece of work stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The window closed or the time limit passed; partial blobs stay for the next pass.
    #[error("paused: the sync window closed")]
    Paused,
    /// The parent sent something that must not be kept.
    #[error("upstream {0}")]
    Refused(String),
    /// A repository rule selects nothing at the parent (`--strict`).
    #[error("{0} (--strict)")]
    Scope(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// Per-blob progress for `sync --once`'s progress bars.
pub trait Progress: Send + Sync {
    fn blob_started(&self, _repo: &str, _digest: &Digest, _size: u64, _from: u64) {}
    fn blob_progress(&self, _digest: &Digest, _done: u64) {}
    fn blob_finished(&self, _digest: &Digest, _ok: bool) {}
}

/// No progress output (the background schedule).
pub struct NoProgress;
impl Progress for NoProgress {}

/// Counters of one pass.
#[derive(Default)]
pub(crate) struct Pass {
    pub(crate) deadline: Option<Instant>,
    pub(crate) paused: AtomicBool,
    /// This full comparison also asks for new referrers of tags already in step.
    pub(crate) recheck_referrers: AtomicBool,
    pub(crate) repos: AtomicUsize,
    pub(crate) tags_checked: AtomicU64,
    pub(crate) tags_updated: AtomicU64,
    pub(crate) tags_deleted: AtomicU64,
    pub(crate) manifests_fetched: AtomicU64,
    pub(crate) blobs_fetched: AtomicU64,
    pub(crate) blobs_resumed: AtomicU64,
    pub(crate) manifests_pushed: AtomicU64,
    pub(crate) errors: Mutex<Vec<String>>,
    /// Scope that matched nothing at the parent (errors instead under `strict`).
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) conflicts: Mutex<Vec<String>>,
    pub(crate) pull: Mutex<Pull>,
}

impl Pass {
    pub(crate) fn check(&self) -> Result<(), SyncError> {
        if self.paused.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return Err(self.pause());
        }
        Ok(())
    }

    /// Marks the pass as stopped by its window; returns the error to stop with.
    pub(crate) fn pause(&self) -> SyncError {
        self.paused.store(true, Ordering::Relaxed);
        SyncError::Paused
    }

    /// How many errors were recorded so far.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.lock().map(|v| v.len()).unwrap_or(usize::MAX)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Notes a repository rule that selects nothing at the parent: a warning, or with
    /// `strict` an error that fails the pass.
    pub(crate) fn nothing_matched(&self, strict: bool, msg: String) {
        if strict {
            return self.record("scope", SyncError::Scope(msg));
        }
        tracing::warn!("{msg}");
        if let Ok(mut v) = self.warnings.lock() {
            v.push(msg);
        }
    }

    pub(crate) fn record(&self, what: &str, err: SyncError) {
        match err {
            SyncError::Paused => self.paused.store(true, Ordering::Relaxed),
            e => {
                let msg = format!("{what}: {e}");
                tracing::warn!("{msg}");
                if let Ok(mut v) = self.errors.lock() {
                    v.push(msg);
                }
            }
        }
    }
}

/// A manifest whose content is all present locally, ready to be stored.
struct Ready {
    manifest: FetchedManifest,
    /// Stored locally as it is already: nothing to write.
    stored: bool,
    /// Index children the platform filter left out.
    skipped: Vec<Digest>,
}

/// The sync engine for one parent and one local store.
pub struct Engine {
    pub client: Arc<dyn Parent>,
    pub store: Arc<dyn LocalStore>,
    pub settings: Settings,
    pub state: Arc<StateFile>,
    progress: Arc<dyn Progress>,
    blob_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    blob_slots: Semaphore,
    /// The tags sync recorded were checked against the local store since this process started
    /// (see `reconcile.rs`).
    pub(crate) audited: AtomicBool,
}

/// Network chunks are gathered into writes of about this size.
const WRITE_BATCH: usize = 1 << 20;

/// Blobs from this size on are listed in the state file while they download.
const RECORD_UPLOADS_FROM: u64 = 4 << 20;

/// Deterministic upload id for a blob download into `repo`, so a restart finds the partial
/// bytes (upload sessions belong to one repository, hence the repository's hash in the id).
pub fn upload_id(repo: &str, digest: &Digest) -> String {
    let repo_hash = Digest::sha256_of(repo.as_bytes());
    let hex = digest.hex();
    format!(
        "sync-{}-{}-{}",
        digest.algorithm().name(),
        &hex[..hex.len().min(64)],
        &repo_hash.hex()[..12]
    )
}

/// Runs a blocking store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn LocalStore>,
    f: impl FnOnce(&dyn LocalStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SyncError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&*s))
        .await
        .map_err(|e| SyncError::Internal(format!("store task failed: {e}")))?
        .map_err(SyncError::Store)
}

impl Engine {
    /// The manifest stored locally in `repo` under `digest`, if any.
    pub(crate) async fn local_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, SyncError> {
        let (r, d) = (repo.to_owned(), digest.clone());
        blocking(&self.store, move |s| {
            s.get_manifest(&r, &Reference::Digest(d))
        })
        .await
    }

    pub fn new(
        client: Arc<dyn Parent>,
        store: Arc<dyn LocalStore>,
        settings: Settings,
        state: Arc<StateFile>,
        progress: Arc<dyn Progress>,
    ) -> Engine {
        let slots = settings.limits.concurrency;
        Engine {
            client,
            store,
            settings,
            state,
            progress,
            blob_locks: Mutex::new(HashMap::new()),
            blob_slots: Semaphore::new(slots),
            audited: AtomicBool::new(false),
        }
    }

    /// One pass: push up (ReadWrite), then pull down every repository in scope. Stops
    /// transfers at `deadline` (the end of the window), leaving partial blobs to resume.
    pub async fn run_pass(&self, deadline: Option<Instant>) -> Summary {
        let started = chrono::Utc::now();
        let clock = std::time::Instant::now();
        let stats = self.client.stats();
        let (req0, down0, up0) = (
            stats.requests.load(Ordering::Relaxed),
            stats.bytes_down.load(Ordering::Relaxed),
            stats.bytes_up.load(Ordering::Relaxed),
        );
        let pass = Pass {
            deadline,
            ..Default::default()
        };
        if self.settings.mode == crate::settings::Mode::ReadWrite {
            if let Err(e) = crate::push::push_up(self, &pass).await {
                pass.record("push up", e);
            }
        }
        crate::feed::pull_down(self, &pass).await;
        let errors = pass.errors.lock().map(|v| v.clone()).unwrap_or_default();
        let outcome = if pass.paused.load(Ordering::Relaxed) {
            Outcome::Paused
        } else if errors.is_empty() {
            Outcome::Completed
        } else {
            Outcome::Failed
        };
        let summary = Summary {
            started: Some(started),
            finished: Some(chrono::Utc::now()),
            outcome,
            seconds: clock.elapsed().as_secs_f64(),
            repos: pass.repos.load(Ordering::Relaxed),
            tags_checked: pass.tags_checked.load(Ordering::Relaxed),
            tags_updated: pass.tags_updated.load(Ordering::Relaxed),
            tags_deleted: pass.tags_deleted.load(Ordering::Relaxed),
            manifests_fetched: pass.manifests_fetched.load(Ordering::Relaxed),
            blobs_fetched: pass.blobs_fetched.load(Ordering::Relaxed),
            blobs_resumed: pass.blobs_resumed.load(Ordering::Relaxed),
            bytes_down: stats.bytes_down.load(Ordering::Relaxed) - down0,
            bytes_up: stats.bytes_up.load(Ordering::Relaxed) - up0,
            requests: stats.requests.load(Ordering::Relaxed) - req0,
            manifests_pushed: pass.manifests_pushed.load(Ordering::Relaxed),
            pull: pass.pull.lock().map(|p| *p).unwrap_or_default(),
            conflicts: pass.conflicts.lock().map(|v| v.clone()).unwrap_or_default(),
            warnings: pass.warnings.lock().map(|v| v.clone()).unwrap_or_default(),
            errors,
        };
        let saved = summary.clone();
        if let Err(e) = self.state.update(|s| s.last_result = Some(saved)) {
            tracing::error!("{e}");
        }
        summary
    }

    /// Repositories in scope: explicit names as given, wildcard patterns expanded from the
    /// parent's catalog when it offers one.
    async fn expand_repos(&self, pass: &Pass) -> Result<Vec<(String, RepoRule)>, SyncError> {
        let mut out: Vec<(String, RepoRule)> = Vec::new();
        let mut seen = BTreeSet::new();
        let needs_catalog = self.settings.repos.iter().any(|r| !r.is_explicit());
        let catalog = if needs_catalog {
            self.client.catalog().await?
        } else {
            None
        };
        let strict = self.settings.strict;
        for rule in &self.settings.repos {
            if rule.is_explicit() {
                if seen.insert(rule.pattern.clone()) {
                    out.push((rule.pattern.clone(), rule.clone()));
                }
                continue;
            }
            let Some(cat) = &catalog else {
                pass.nothing_matched(
                    strict,
                    format!(
                        "pattern {} matches nothing: the parent offers no catalog to expand it \
                         from; list repositories by name",
                        rule.pattern
                    ),
                );
                continue;
            };
            let mut matched = false;
            for repo in cat.iter().filter(|r| rule.matches_repo(r)) {
                matched = true;
                if seen.insert(repo.clone()) {
                    out.push((repo.clone(), rule.clone()));
                }
            }
            if !matched {
                pass.nothing_matched(
                    strict,
                    format!(
                        "pattern {} matches no repository in the parent's catalog",
                        rule.pattern
                    ),
                );
            }
        }
        Ok(out)
    }

    /// Compares every repository in scope (catalog, tag lists, one HEAD per tag).
    pub(crate) async fn compare_all(&self, pass: &Pass) {
        match self.expand_repos(pass).await {
            Ok(repos) => {
                let conc = self.settings.limits.concurrency;
                futures_util::stream::iter(repos)
                    .map(|(repo, rule)| self.sync_repo(pass, repo, rule))
                    .buffer_unordered(conc)
                    .collect::<Vec<()>>()
                    .await;
            }
            Err(e) => pass.record("list repositories", e),
        }
    }

    /// The rule that puts `repo` in scope (the first that matches, as `expand_repos` decides).
    pub(crate) fn rule_for(&self, repo: &str) -> Option<&RepoRule> {
        self.settings.repos.iter().find(|r| r.matches_repo(repo))
    }

    /// Compares one repository in full: its tag list, then every selected tag.
    pub(crate) async fn sync_repo(&self, pass: &Pass, repo: String, rule: RepoRule) {
        if pass.check().is_err() {
            return;
        }
        let tags = match self.client.tags(&repo).await {
            Ok(Some(t)) => t,
            // The repository is gone at the parent: its synced tags go too.
            Ok(None) => {
                if rule.is_explicit() {
                    pass.nothing_matched(
                        self.settings.strict,
                        format!("repository {repo} does not exist at the parent"),
                    );
                }
                Vec::new()
            }
            Err(e) => return pass.record(&repo, e.into()),
        };
        pass.repos.fetch_add(1, Ordering::Relaxed);
        let selected = rule.select_tags(&tags);
        if selected.is_empty() && !tags.is_empty() {
            pass.nothing_matched(
                self.settings.strict,
                format!(
                    "{repo}: none of its {} tags passes the tag filter (include, exclude, newest)",
                    tags.len()
                ),
            );
        }
        let (done, _missing) = self.sync_tags(pass, &repo, &selected).await;
        // Tags sync wrote earlier that the parent no longer has (in scope): untag locally.
        let keep: BTreeSet<&String> = selected.iter().collect();
        let candidates = self
            .synced_tags(&repo)
            .into_iter()
            .filter(|(tag, _)| !keep.contains(tag))
            .collect();
        self.reflect(pass, &repo, done, candidates).await;
    }

    /// Compares only the tags a change feed named in `repo` (each one HEAD, through the normal
    /// copy engine); a named tag the parent no longer has is untagged here if sync wrote it.
    pub(crate) async fn sync_named_tags(
        &self,
        pass: &Pass,
        repo: String,
        rule: RepoRule,
        names: BTreeSet<String>,
    ) {
        if pass.check().is_err() {
            return;
        }
        pass.repos.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = names.into_iter().collect();
        let selected = rule.select_tags(&names);
        let (done, missing) = self.sync_tags(pass, &repo, &selected).await;
        let missing: BTreeSet<String> = missing.into_iter().collect();
        let candidates = self
            .synced_tags(&repo)
            .into_iter()
            .filter(|(tag, _)| missing.contains(tag))
            .collect();
        self.reflect(pass, &repo, done, candidates).await;
    }

    /// A manifest the parent's change feed says was stored by digest in `repo`: kept here when
    /// it is a referrer (signature, SBOM) of a manifest held here, so referrers pushed after
    /// their subject was synced come down too. Anything else (a platform manifest, the target
    /// of a tag out of scope) is left alone. Costs nothing when it is already here.
    pub(crate) async fn sync_referrer(
        &self,
        pass: &Pass,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), SyncError> {
        if self.local_manifest(repo, digest).await?.is_some() {
            return Ok(());
        }
        pass.check()?;
        let Some(m) = self.client.get_manifest(repo, &digest.to_string()).await? else {
            return Ok(()); // deleted at the parent since
        };
        #[derive(serde::Deserialize)]
        struct WithSubject {
            subject: Option<Descriptor>,
        }
        let subject = serde_json::from_slice::<WithSubject>(&m.body)
            .ok()
            .and_then(|w| w.subject);
        let Some(subject) = subject else {
            return Ok(());
        };
        if self.local_manifest(repo, &subject.digest).await?.is_none() {
            return Ok(());
        }
        self.copy_and_store(pass, repo, digest).await?;
        tracing::info!(repo, %digest, subject = %subject.digest, "referrer synced");
        Ok(())
    }

    /// Tags sync wrote in `repo`, with the digest it wrote.
    pub(crate) fn synced_tags(&self, repo: &str) -> std::collections::BTreeMap<String, Digest> {
        self.state
            .read(|s| s.synced_tags.get(repo).cloned())
            .unwrap_or_default()
    }

    /// Brings `tags` of `repo` in step, concurrently. Returns the tags now in step with their
    /// digests, and the tags the parent does not have (errors are recorded in `pass`).
    async fn sync_tags(
        &self,
        pass: &Pass,
        repo: &str,
        tags: &[String],
    ) -> (Vec<(String, Digest)>, Vec<String>) {
        let conc = self.settings.limits.concurrency;
        let results: Vec<(String, Result<Option<Digest>, SyncError>)> =
            futures_util::stream::iter(tags.iter().cloned())
                .map(|tag| async move {
                    let r = self.sync_tag(pass, repo, &tag).await;
                    (tag, r)
                })
                .buffer_unordered(conc)
                .collect()
                .await;
        let mut done = Vec::new();
        let mut missing = Vec::new();
        for (tag, r) in results {
            match r {
                Ok(Some(d)) => done.push((tag, d)),
                Ok(None) => missing.push(tag),
                Err(e) => pass.record(&format!("{repo}:{tag}"), e),
            }
        }
        (done, missing)
    }

    /// Untags `candidates` (tags sync wrote, with the digest it wrote) unless a client re-pointed
    /// the tag here since (content is left to GC), and records what sync now holds in `repo`.
    async fn reflect(
        &self,
        pass: &Pass,
        repo: &str,
        mut done: Vec<(String, Digest)>,
        candidates: Vec<(String, Digest)>,
    ) {
        let mut gone = Vec::new();
        for (tag, digest) in candidates {
            let (r, t) = (repo.to_owned(), tag.clone());
            let local =
                blocking(&self.store, move |s| s.get_manifest(&r, &Reference::Tag(t))).await;
            match local {
                Ok(Some(m)) if m.digest == digest => {
                    let (r, t) = (repo.to_owned(), tag.clone());
                    match blocking(&self.store, move |s| s.delete_tag(&r, &t)).await {
                        Ok(()) => {
                            pass.tags_deleted.fetch_add(1, Ordering::Relaxed);
                            gone.push(tag);
                        }
                        Err(e) => pass.record(&format!("{repo}:{tag}: untag"), e),
                    }
                }
                Ok(_) => gone.push(tag),
                Err(e) => pass.record(&format!("{repo}:{tag}: untag"), e),
            }
        }
        // Write the state only when it changes: a pass with nothing new costs no fsync.
        let known = self.synced_tags(repo);
        done.retain(|(tag, d)| known.get(tag) != Some(d));
        if done.is_empty() && gone.is_empty() {
            return;
        }
        let r = self.state.update(|s| {
            let entry = s.synced_tags.entry(repo.to_owned()).or_default();
            for (tag, d) in done {
                entry.insert(tag, d);
            }
            for tag in gone {
                entry.remove(&tag);
            }
        });
        if let Err(e) = r {
            pass.record(repo, e.into());
        }
    }

    /// Brings one tag in step. Returns the digest it now points at (None: gone at the parent).
    async fn sync_tag(
        &self,
        pass: &Pass,
        repo: &str,
        tag: &str,
    ) -> Result<Option<Digest>, SyncError> {
        pass.check()?;
        let Some(remote) = self.client.head_manifest(repo, tag).await? else {
            return Ok(None);
        };
        pass.tags_checked.fetch_add(1, Ordering::Relaxed);
        let (r, t) = (repo.to_owned(), tag.to_owned());
        let local = blocking(&self.store, move |s| s.get_manifest(&r, &Reference::Tag(t))).await?;
        if local
            .as_ref()
            .is_some_and(|m| m.digest == remote && !self.filter_wants_skipped(m))
        {
            if pass.recheck_referrers.load(Ordering::Relaxed) {
                self.sync_referrers(pass, repo, tag, &remote).await;
            }
            return Ok(Some(remote));
        }
        let ready = self.copy_manifest(pass, repo, &remote).await?;
        self.store_ready(repo, Reference::Tag(tag.to_owned()), ready)
            .await?;
        pass.tags_updated.fetch_add(1, Ordering::Relaxed);
        tracing::info!(repo, tag, digest = %remote, "tag synced");
        self.sync_referrers(pass, repo, tag, &remote).await;
        Ok(Some(remote))
    }

    /// Copies the referrers (signatures, SBOMs) of `digest` that are not here yet; errors are
    /// recorded and do not undo the tag.
    async fn sync_referrers(&self, pass: &Pass, repo: &str, tag: &str, digest: &Digest) {
        match self.client.referrers(repo, digest).await {
            Ok(refs) => {
                for d in refs {
                    if let Err(e) = self.copy_and_store(pass, repo, &d).await {
                        pass.record(&format!("{repo}:{tag}: referrer {d}"), e);
                    }
                }
            }
            Err(e) => pass.record(&format!("{repo}:{tag}: referrers"), e.into()),
        }
    }

    async fn copy_and_store(
        &self,
        pass: &Pass,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), SyncError> {
        let ready = self.copy_manifest(pass, repo, digest).await?;
        if !ready.stored {
            self.store_ready(repo, Reference::Digest(digest.clone()), ready)
                .await?;
        }
        Ok(())
    }

    /// Stores a manifest whose content is all present, as `reference`.
    async fn store_ready(
        &self,
        repo: &str,
        reference: Reference,
        ready: Ready,
    ) -> Result<Digest, SyncError> {
        let repo = repo.to_owned();
        blocking(&self.store, move |s| {
            let m = ready.manifest;
            s.put_manifest(&repo, &reference, &m.media_type, m.body, &ready.skipped)
        })
        .await
    }

    /// Whether a stored partial index has children the platform filter now wants (it was
    /// widened since): then the index is filled in.
    fn filter_wants_skipped(&self, stored: &StoredManifest) -> bool {
        if stored.skipped.is_empty() {
            return false;
        }
        match manifest::parse(&stored.media_type, &stored.body) {
            Ok(Parsed::Index(index)) => index.manifests.iter().any(|c| {
                stored.skipped.contains(&c.digest) && manifest::keeps(&self.settings.platforms, c)
            }),
            _ => false,
        }
    }

    /// Makes everything `digest` references present locally (bottom-up) and returns the
    /// verified manifest, not yet stored unless `stored` says so.
    fn copy_manifest<'a>(
        &'a self,
        pass: &'a Pass,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Ready, SyncError>> {
        async move {
            let m = match self.local_manifest(repo, digest).await? {
                Some(m) if !self.filter_wants_skipped(&m) => {
                    return Ok(Ready {
                        skipped: m.skipped.clone(),
                        manifest: m.into(),
                        stored: true,
                    });
                }
                // A partial index whose left-out platforms are wanted now: fill it in.
                Some(m) => m.into(),
                None => {
                    pass.check()?;
                    let m = self
                        .client
                        .get_manifest(repo, &digest.to_string())
                        .await?
                        .ok_or_else(|| {
                            SyncError::Refused(format!(
                                "{repo}: the parent has no manifest {digest}"
                            ))
                        })?;
                    pass.manifests_fetched.fetch_add(1, Ordering::Relaxed);
                    m
                }
            };
            let skipped = match manifest::parse(&m.media_type, &m.body)
                .map_err(|e| SyncError::Refused(format!("{repo}@{digest}: {e}")))?
            {
                Parsed::Index(index) => {
                    let platforms = &self.settings.platforms;
                    let (kept, skipped): (Vec<_>, Vec<_>) = index
                        .manifests
                        .iter()
                        .partition(|c| manifest::keeps(platforms, c));
                    // Only a filter can leave nothing: an empty index is synced as it is.
                    if kept.is_empty() && !skipped.is_empty() {
                        let offered: Vec<String> = skipped
                            .iter()
                            .filter_map(|c| c.platform.as_ref().map(|p| p.to_string()))
                            .collect();
                        let wanted: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                        return Err(SyncError::Refused(format!(
                            "{repo}@{digest}: the index offers {} but the platform filter keeps only {}: nothing to sync",
                            offered.join(", "),
                            wanted.join(", ")
                        )));
                    }
                    let children = kept.iter().map(|c| self.copy_and_store(pass, repo, &c.digest));
                    futures_util::future::try_join_all(children).await?;
                    skipped.into_iter().map(|c| c.digest.clone()).collect()
                }
                Parsed::Image(image) => {
                    // Foreign / non-distributable layers (Windows base layers) are not served
                    // by registries; the local store does not require them either.
                    let blobs = std::iter::once(&image.config)
                        .chain(image.layers.iter().filter(|l| !manifest::is_foreign(l)))
                        .map(|b| self.ensure_blob(pass, repo, b));
                    futures_util::future::try_join_all(blobs).await?;
                    Vec::new()
                }
            };
            Ok(Ready {
                manifest: m,
                stored: false,
                skipped,
            })
        }
        .boxed()
    }

    fn blob_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(digest.clone()).or_default().clone()
    }

    /// Makes a blob present in `repo`: link it when stored already, else download it.
    async fn ensure_blob(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<(), SyncError> {
        let d = desc.digest.clone();
        let link = |d: Digest| {
            let r = repo.to_owned();
            blocking(&self.store, move |s| {
                if s.blob_size(&d).is_some() {
                    s.link_blob(&r, &d).map(|_| true)
                } else {
                    Ok(false)
                }
            })
        };
        if link(d.clone()).await? {
            return Ok(());
        }
        let lock = self.blob_lock(&d);
        let _guard = lock.lock().await;
        if link(d.clone()).await? {
            return Ok(());
        }
        let _slot = self
            .blob_slots
            .acquire()
            .await
            .map_err(|e| SyncError::Internal(e.to_string()))?;
        pass.check()?;
        let result = self.download_blob(pass, repo, desc).await;
        self.progress.blob_finished(&d, result.is_ok());
        result
    }

    async fn download_blob(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<(), SyncError> {
        let digest = &desc.digest;
        let id = upload_id(repo, digest);
        // Recorded for operators (status, state file) only: the stable id is what makes a
        // download resumable. Small blobs are not worth an fsync each.
        let record = desc.size >= RECORD_UPLOADS_FROM;
        if record {
            let id = id.clone();
            self.state.update(move |s| s.uploads_in_flight.insert(id))?;
        }
        let mut stalls = 0u32;
        let mut restarted = false;
        loop {
            let (r, i) = (repo.to_owned(), id.clone());
            let writer = blocking(&self.store, move |s| s.open_upload(&r, &i)).await?;
            let have = writer.len();
            if desc.size > 0 && have > desc.size {
                if restarted {
                    return Err(SyncError::Internal(format!(
                        "upload {id} keeps more bytes than {digest} has"
                    )));
                }
                drop(writer);
                let i = id.clone();
                blocking(&self.store, move |s| s.cancel_upload(&i)).await?;
                restarted = true;
                continue;
            }
            if have > 0 {
                pass.blobs_resumed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(repo, %digest, have, "resuming blob download");
            }
            self.progress.blob_started(repo, digest, desc.size, have);
            let streamed = if desc.size > 0 && have == desc.size {
                Ok(writer)
            } else {
                self.stream_into(pass, repo, desc, writer, have).await
            };
            match streamed {
                Ok(writer) => {
                    let (d, r) = (digest.clone(), repo.to_owned());
                    let finish = tokio::task::spawn_blocking(move || {
                        writer.finish(&d)?;
                        Ok::<_, StoreError>(d)
                    })
                    .await
                    .map_err(|e| SyncError::Internal(e.to_string()))?;
                    match finish {
                        Ok(d) => {
                            blocking(&self.store, move |s| s.link_blob(&r, &d)).await?;
                            break;
                        }
                        Err(StoreError::DigestMismatch { actual, .. }) => {
                            let id = id.clone();
                            let _ = self.state.update(move |s| s.uploads_in_flight.remove(&id));
                            return Err(SyncError::Refused(format!(
                                "{}: served bytes for {digest} of {repo} that hash to {actual}: refused, the bytes were not kept",
                                self.client.base()
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err((SyncError::Client(e), progressed)) if e.is_unreachable() => {
                    stalls = if progressed { 0 } else { stalls + 1 };
                    if stalls >= self.settings.limits.retries {
                        return Err(SyncError::Client(e));
                    }
                    tracing::info!(repo, %digest, error = %e, "blob transfer interrupted; resuming");
                    let wait = self
                        .settings
                        .limits
                        .backoff_base
                        .saturating_mul(1 << stalls.min(6));
                    let wait = wait.min(self.settings.limits.backoff_max);
                    match pass.deadline {
                        Some(dl) if Instant::now() + wait >= dl => return Err(SyncError::Paused),
                        _ => tokio::time::sleep(wait).await,
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
        pass.blobs_fetched.fetch_add(1, Ordering::Relaxed);
        if record {
            let id2 = id.clone();
            self.state
                .update(move |s| s.uploads_in_flight.remove(&id2))?;
        }
        Ok(())
    }

    /// Streams the blob from byte `have` into `writer` on a blocking thread. On failure the
    /// bytes written so far stay in the upload session (to resume), except when the parent
    /// sent more than the descriptor's size (then they are dropped).
    async fn stream_into(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
        writer: Box<dyn BlobWriter>,
        have: u64,
    ) -> Result<Box<dyn BlobWriter>, (SyncError, bool)> {
        let digest = &desc.digest;
        let mut blob = match self.client.get_blob(repo, digest, have).await {
            Ok(b) => b,
            Err(e) => return Err((e.into(), false)),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let handle = tokio::task::spawn_blocking(move || {
            let mut w = writer;
            while let Some(chunk) = rx.blocking_recv() {
                w.append(&chunk)?;
            }
            Ok::<_, StoreError>(w)
        });
        let mut written = have;
        let mut skip = blob.skip;
        let mut failure: Option<SyncError> = None;
        let mut too_long = false;
        let mut pending = bytes::BytesMut::with_capacity(WRITE_BATCH);
        loop {
            let next = match pass.deadline {
                Some(dl) => match tokio::time::timeout_at(dl, blob.chunks.next()).await {
                    Err(_) => {
                        failure = Some(pass.pause());
                        break;
                    }
                    Ok(r) => r,
                },
                None => blob.chunks.next().await,
            };
            match next {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = (skip as usize).min(chunk.len());
                        chunk = chunk.slice(n..);
                        skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    written += chunk.len() as u64;
                    if desc.size > 0 && written > desc.size {
                        too_long = true;
                        failure = Some(SyncError::Refused(format!(
                            "{}: sent more than the {} bytes of {digest}: refused, the bytes were not kept",
                            blob.source, desc.size
                        )));
                        break;
                    }
                    self.progress.blob_progress(digest, written);
                    // Coalesce network chunks into larger writes: fewer syscalls and wakeups.
                    if pending.is_empty() && chunk.len() >= WRITE_BATCH {
                        if tx.send(chunk).await.is_err() {
                            break; // the writer failed; its error comes from the join below
                        }
                        continue;
                    }
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= WRITE_BATCH
                        && tx.send(pending.split().freeze()).await.is_err()
                    {
                        break;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    failure = Some(e.into());
                    break;
                }
            }
        }
        // Bytes received before a cut or a pause are a valid prefix: keep them for the resume
        // (they are verified with the rest at the end).
        if !too_long && !pending.is_empty() {
            let _ = tx.send(pending.split().freeze()).await;
        }
        drop(tx);
        let progressed = written > have;
        let joined = handle.await.map_err(|e| {
            (
                SyncError::Internal(format!("blob writer failed: {e}")),
                progressed,
            )
        });
        let joined = if too_long {
            drop(joined);
            let id = upload_id(repo, digest);
            let _ = blocking(&self.store, move |s| s.cancel_upload(&id)).await;
            None
        } else {
            Some(joined)
        };
        if let Some(f) = failure {
            return Err((f, progressed));
        }
        let joined = joined.ok_or((SyncError::Internal("writer dropped".into()), progressed))?;
        let writer = joined?.map_err(|e| (SyncError::Store(e), progressed))?;
        if desc.size > 0 && written < desc.size {
            return Err((
                SyncError::Client(ClientError::Transport {
                    url: blob.source,
                    message: format!("connection ended after {written} of {} bytes", desc.size),
                }),
                progressed,
            ));
        }
        Ok(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{image_manifest, index_manifest, Rig, IMAGE, INDEX};

    const CONFIG: &[u8] = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";

    /// The parent's bytes for a layer do not hash to its digest: refused, nothing kept, no tag.
    #[tokio::test]
    async fn a_blob_that_arrives_corrupt_is_not_kept_and_not_tagged() {
        let rig = Rig::new("ReadOnly");
        let layer = vec![7u8; 5000];
        rig.parent.put_blob(CONFIG);
        rig.parent
            .put_blob_as(Digest::sha256_of(&layer), &vec![8u8; 5000]);
        let m = image_manifest(CONFIG, &[&layer]);
        rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Failed);
        assert!(
            summary.errors.iter().any(|e| e.contains("hash to")),
            "{:?}",
            summary.errors
        );
        assert!(!rig.store.has_blob(&Digest::sha256_of(&layer)));
        assert_eq!(rig.store.tag("app", "v1"), None);
    }

    /// The link drops in the middle of a layer: the download resumes from the bytes already
    /// here (a second request at that offset), and the image ends whole and tagged.
    #[tokio::test]
    async fn a_parent_that_drops_mid_blob_is_resumed_where_it_stopped() {
        let rig = Rig::new("ReadOnly");
        let layer: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let layer_digest = Digest::sha256_of(&layer);
        rig.parent.put_blob(CONFIG);
        rig.parent.put_blob(&layer);
        rig.parent.cut_next_download(&layer_digest, 8192);
        let m = image_manifest(CONFIG, &[&layer]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.parent.download_offsets(&layer_digest), vec![0, 8192]);
        assert_eq!(summary.blobs_resumed, 1);
        assert!(rig.store.has_blob(&layer_digest));
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
    }

    /// An index whose child the parent does not have: the index is not stored and the tag is
    /// not set (a tag never points at missing content).
    #[tokio::test]
    async fn an_index_whose_child_is_missing_is_not_stored() {
        let rig = Rig::new("ReadOnly");
        rig.parent.put_blob(CONFIG);
        let child = image_manifest(CONFIG, &[]);
        let index = index_manifest(&[&child]);
        let index_digest = rig.parent.put_manifest("app", Some("v1"), INDEX, &index);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Failed);
        assert!(
            summary.errors.iter().any(|e| e.contains("has no manifest")),
            "{:?}",
            summary.errors
        );
        assert!(!rig.store.has_manifest("app", &index_digest));
        assert_eq!(rig.store.tag("app", "v1"), None);
    }
}
