//! One pass: push up (ReadWrite), then pull down, and its summary; which repositories and
//! tags are compared, in what order, and what a tag the parent no longer has means here. A
//! full comparison with a parent of ours expands wildcard rules from its `/acr` catalog and
//! takes the tag set from its `/acr` tag listing (hidden repositories and tags included), and
//! brings the `changeableAttributes` of the repository, its tags and its manifests down (the
//! repository read and the manifest listing besides the tag listing); a tag read-locked at the
//! parent is not pulled. The copying itself (manifests bottom-up, blobs, resume) is `copy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use oci::{Class, Classify};
use tokio::time::Instant;

use crate::client::{AcrAnswer, ClientError, ParentTag};
use crate::engine::{blocking, Engine, SyncError};
use crate::settings::RepoRule;
use crate::state::{Outcome, Pull, StateError, Summary};
use crate::stop::Stop;
use crate::store::StoreError;
use oci::ChangeableAttributes;
use oci::Descriptor;
use oci::Digest;
use oci::Reference;

/// What `changeableAttributes` are kept on in a repository.
enum Item {
    Repository,
    Tag(String),
    Manifest(Digest),
}

/// The attributes a parent of ours keeps in one repository, as a full comparison read them.
struct ParentAttributes {
    tags: Vec<ParentTag>,
    /// The repository's own; `None` when its read failed.
    repository: Option<ChangeableAttributes>,
    manifests: BTreeMap<Digest, ChangeableAttributes>,
}

impl ParentAttributes {
    /// Whether the parent refuses to serve `tag`: read-locked itself, its manifest, or the
    /// repository.
    fn read_locked(&self, tag: &ParentTag) -> bool {
        !tag.attributes.read_enabled
            || self.repository.is_some_and(|a| !a.read_enabled)
            || self
                .manifests
                .get(&tag.digest)
                .is_some_and(|a| !a.read_enabled)
    }
}

/// Counters of one pass.
#[derive(Default)]
pub(crate) struct Pass {
    /// When it must stop (the window's end, the sync lease's).
    pub(crate) stop: Stop,
    pub(crate) paused: AtomicBool,
    /// The local disk filled up: whatever else the pass would copy cannot be stored either.
    pub(crate) halted: AtomicBool,
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
    /// What failed, each with its class (the summary's `faults` and `retryable` come from it).
    pub(crate) errors: Mutex<Vec<(String, Class)>>,
    /// Scope that matched nothing at the parent (errors instead under `strict`).
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) conflicts: Mutex<Vec<String>>,
    pub(crate) pull: Mutex<Pull>,
    /// The parent answered it has no `/acr` API (not ours): the rest of this pass lists
    /// repositories and tags through `/v2` without asking again.
    pub(crate) no_acr: AtomicBool,
    /// Tags (`repo:tag`) read-locked at the parent, not pulled this pass.
    pub(crate) read_locked: Mutex<Vec<String>>,
}

impl Pass {
    pub(crate) fn check(&self) -> Result<(), SyncError> {
        if self.halted.load(Ordering::Relaxed) {
            return Err(SyncError::Halted);
        }
        if self.paused.load(Ordering::Relaxed) || self.stop.reached() {
            return Err(self.pause());
        }
        Ok(())
    }

    /// Marks the pass as stopped by its window (or the sync lease's end); returns the error to
    /// stop with.
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
            // Another replica holds the sync lease now: a stop, not a failure.
            SyncError::Paused | SyncError::State(StateError::LeaseLost { .. }) => {
                self.paused.store(true, Ordering::Relaxed)
            }
            // Recorded once, as the error that ended the pass.
            SyncError::Halted => {}
            e => {
                if matches!(e, SyncError::Store(StoreError::Full(_))) {
                    if self.halted.swap(true, Ordering::Relaxed) {
                        return;
                    }
                    tracing::error!("the local disk is full: this sync pass stops here, the next continues once space is freed");
                }
                let class = e.class();
                let msg = format!("{what}: {e}");
                tracing::warn!(
                    fault = class.fault.as_str(),
                    retryable = class.retryable,
                    "{msg}"
                );
                if let Ok(mut v) = self.errors.lock() {
                    v.push((msg, class));
                }
            }
        }
    }
}

impl Engine {
    /// One pass: push up (ReadWrite), then pull down every repository in scope. Stops
    /// transfers at `deadline` (the end of the window), leaving partial blobs to resume.
    pub async fn run_pass(&self, deadline: Option<Instant>) -> Summary {
        self.run_pass_until(Stop::at(deadline)).await
    }

    /// [`Engine::run_pass`] stopping at `stop` (the end of the window, the sync lease's end).
    pub async fn run_pass_until(&self, stop: Stop) -> Summary {
        let started = chrono::Utc::now();
        let clock = std::time::Instant::now();
        let stats = self.client.stats();
        let (req0, down0, up0) = (
            stats.requests.load(Ordering::Relaxed),
            stats.bytes_down.load(Ordering::Relaxed),
            stats.bytes_up.load(Ordering::Relaxed),
        );
        let pass = Pass {
            stop,
            ..Default::default()
        };
        if self.settings.mode == crate::settings::Mode::ReadWrite {
            if let Err(e) = crate::push::push_up(self, &pass).await {
                pass.record("push up", e);
            }
        }
        crate::feed::pull_down(self, &pass).await;
        let store = self.store.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || store.after_pass()).await {
            tracing::error!("the local store's housekeeping after the pass failed: {e}");
        }
        let failed = pass.errors.lock().map(|v| v.clone()).unwrap_or_default();
        let mut faults = BTreeMap::new();
        for (_, class) in &failed {
            *faults.entry(class.fault.as_str().to_owned()).or_default() += 1;
        }
        let retryable = failed.iter().all(|(_, class)| class.retryable);
        let errors: Vec<String> = failed.into_iter().map(|(msg, _)| msg).collect();
        let read_locked = pass
            .read_locked
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        if !read_locked.is_empty() {
            tracing::info!(
                tags = read_locked.len(),
                first = %read_locked[0],
                "read-locked at the parent (readEnabled: false): not pulled; a copy held here \
                 stays and carries the same lock"
            );
        }
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
            read_locked,
            faults,
            retryable,
            errors,
        };
        let saved = summary.clone();
        if let Err(e) = self.state.update(|s| s.last_result = Some(saved)) {
            tracing::error!("{e}");
        }
        summary
    }

    /// Repositories in scope: explicit names as given, wildcard patterns expanded from the
    /// parent's catalog when it offers one (a parent of ours' `/acr` catalog, which names the
    /// repositories hidden from `/v2/_catalog` too, so a hidden one stays mirrored).
    async fn expand_repos(&self, pass: &Pass) -> Result<Vec<(String, RepoRule)>, SyncError> {
        let mut out: Vec<(String, RepoRule)> = Vec::new();
        let mut seen = BTreeSet::new();
        let needs_catalog = self.settings.repos.iter().any(|r| !r.is_explicit());
        let catalog = if needs_catalog {
            match self.acr(pass, || self.client.acr_catalog()).await? {
                Some(AcrAnswer::Found(repos)) => Some(repos),
                _ => self.client.catalog().await?,
            }
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
        // A parent of ours lists every tag with its attributes (those hidden from `/v2`
        // listings too); any other registry through `/v2`.
        let listing = match self.parent_tags(pass, &repo).await {
            Ok(listing) => listing,
            Err(e) => return pass.record(&repo, e.into()),
        };
        let listed = match listing {
            Some(AcrAnswer::Found(tags)) => Ok(Some(tags)),
            Some(AcrAnswer::UnknownRepo) => Ok(None),
            Some(AcrAnswer::NoAcr) | None => Err(()),
        };
        let (tags, attributes) = match listed {
            Ok(Some(tags)) => {
                let names = tags.iter().map(|t| t.name.clone()).collect();
                let parent = self.parent_attributes(pass, &repo, tags).await;
                (Some(names), Some(parent))
            }
            Ok(None) => (None, None),
            Err(()) => match self.client.tags(&repo).await {
                Ok(tags) => (tags, None),
                Err(e) => return pass.record(&repo, e.into()),
            },
        };
        let tags = match tags {
            Some(t) => t,
            // The repository is gone at the parent: its synced tags go too.
            None => {
                if rule.is_explicit() {
                    pass.nothing_matched(
                        self.settings.strict,
                        format!("repository {repo} does not exist at the parent"),
                    );
                }
                Vec::new()
            }
        };
        pass.repos.fetch_add(1, Ordering::Relaxed);
        let mut selected = rule.select_tags(&tags);
        if selected.is_empty() && !tags.is_empty() {
            pass.nothing_matched(
                self.settings.strict,
                format!(
                    "{repo}: none of its {} tags passes the tag filter (include, exclude, newest)",
                    tags.len()
                ),
            );
        }
        // Read-locked at the parent: not pulled (it refuses); a copy held here stays.
        let mut kept = Vec::new();
        let mut listed = BTreeMap::new();
        if let Some(parent) = &attributes {
            let locked: BTreeSet<&str> = parent
                .tags
                .iter()
                .filter(|t| parent.read_locked(t))
                .map(|t| t.name.as_str())
                .collect();
            if !locked.is_empty() {
                kept = self.read_locked(pass, &repo, &selected, &locked).await;
                selected.retain(|t| !locked.contains(t.as_str()));
            }
            listed = parent
                .tags
                .iter()
                .map(|t| (t.name.clone(), t.digest.clone()))
                .collect();
        }
        let (done, _missing) = self.sync_tags(pass, &repo, &selected, &listed).await;
        selected.extend(kept);
        if let Some(parent) = attributes {
            self.apply_parent_attributes(pass, &repo, &selected, parent)
                .await;
        }
        // Tags sync wrote earlier that the parent no longer has (in scope): untag locally.
        let keep: BTreeSet<&String> = selected.iter().collect();
        let candidates = self
            .synced_tags(&repo)
            .into_iter()
            .filter(|(tag, _)| !keep.contains(tag))
            .collect();
        self.reflect(pass, &repo, done, candidates).await;
    }

    /// The parent's tags of `repo` with their attributes; `None` when the parent has no `/acr`.
    async fn parent_tags(
        &self,
        pass: &Pass,
        repo: &str,
    ) -> Result<Option<AcrAnswer<Vec<ParentTag>>>, ClientError> {
        self.acr(pass, || self.client.acr_tags(repo)).await
    }

    /// Asks a parent of ours through `/acr` (`ask`); `None` when the parent has no `/acr` API,
    /// which is remembered for the pass: asked once, then not again.
    async fn acr<'a, T>(
        &self,
        pass: &Pass,
        ask: impl FnOnce() -> BoxFuture<'a, Result<AcrAnswer<T>, ClientError>>,
    ) -> Result<Option<AcrAnswer<T>>, ClientError> {
        if pass.no_acr.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let answer = ask().await?;
        if !matches!(answer, AcrAnswer::NoAcr) {
            return Ok(Some(answer));
        }
        if !pass.no_acr.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                "the parent has no /acr API: repositories and tags come from /v2, attributes \
                 only through a change feed"
            );
        }
        Ok(None)
    }

    /// Of `selected`, the tags read-locked at the parent (`locked`): each is noted once for the
    /// summary; those held here are returned (kept, not untagged, and locked the same way).
    async fn read_locked(
        &self,
        pass: &Pass,
        repo: &str,
        selected: &[String],
        locked: &BTreeSet<&str>,
    ) -> Vec<String> {
        let mut kept = Vec::new();
        for tag in selected.iter().filter(|t| locked.contains(t.as_str())) {
            if let Ok(mut v) = pass.read_locked.lock() {
                v.push(format!("{repo}:{tag}"));
            }
            let (r, t) = (repo.to_owned(), tag.clone());
            match blocking(&self.store, move |s| s.get_manifest(&r, &Reference::Tag(t))).await {
                Ok(Some(_)) => kept.push(tag.clone()),
                Ok(None) => {}
                Err(e) => pass.record(&format!("{repo}:{tag}"), e),
            }
        }
        kept
    }

    /// The attributes a parent of ours keeps in `repo`: its tags' (the listing already read),
    /// the repository's own (one request) and its manifests' (the manifest listing). A failed
    /// read is recorded, and that part is left as it is here.
    async fn parent_attributes(
        &self,
        pass: &Pass,
        repo: &str,
        tags: Vec<ParentTag>,
    ) -> ParentAttributes {
        let repository = match self.acr(pass, || self.client.acr_repository(repo)).await {
            Ok(Some(AcrAnswer::Found(attributes))) => Some(attributes),
            Ok(_) => None,
            Err(e) => {
                let what = format!("{repo}: the parent's repository attributes");
                pass.record(&what, e.into());
                None
            }
        };
        let manifests = match self.acr(pass, || self.client.acr_manifests(repo)).await {
            Ok(Some(AcrAnswer::Found(manifests))) => manifests
                .into_iter()
                .map(|m| (m.digest, m.attributes))
                .collect(),
            Ok(_) => BTreeMap::new(),
            Err(e) => {
                pass.record(&format!("{repo}: the parent's manifest listing"), e.into());
                BTreeMap::new()
            }
        };
        ParentAttributes {
            tags,
            repository,
            manifests,
        }
    }

    /// Brings the parent's `changeableAttributes` down onto `repo` here: the repository's own,
    /// each tag of `selected` and each manifest, set where they differ (origin: sync). An item
    /// not here (left out, or failed this pass) is skipped.
    async fn apply_parent_attributes(
        &self,
        pass: &Pass,
        repo: &str,
        selected: &[String],
        parent: ParentAttributes,
    ) {
        let selected: BTreeSet<&String> = selected.iter().collect();
        let mut wanted: Vec<(Item, ChangeableAttributes)> = parent
            .tags
            .into_iter()
            .filter(|t| selected.contains(&t.name))
            .map(|t| (Item::Tag(t.name), t.attributes))
            .collect();
        wanted.extend(parent.repository.map(|a| (Item::Repository, a)));
        wanted.extend(
            parent
                .manifests
                .into_iter()
                .map(|(digest, a)| (Item::Manifest(digest), a)),
        );
        let r = repo.to_owned();
        let applied = blocking(&self.store, move |s| {
            let repository = s.repository_attributes(&r)?;
            let tags = s.tag_attributes(&r)?;
            let manifests = s.manifest_attributes(&r)?;
            let mut applied = Vec::new();
            for (item, attributes) in wanted {
                let here = match &item {
                    Item::Repository => repository,
                    Item::Tag(tag) => tags.get(tag).copied(),
                    Item::Manifest(digest) => manifests.get(digest).copied(),
                };
                let (tag, digest) = match &item {
                    Item::Repository => (None, None),
                    Item::Tag(tag) => (Some(tag.as_str()), None),
                    Item::Manifest(digest) => (None, Some(digest)),
                };
                if here.is_some_and(|own| own != attributes)
                    && s.set_attributes(&r, tag, digest, attributes)?
                {
                    applied.push(item);
                }
            }
            Ok(applied)
        })
        .await;
        match applied {
            Ok(applied) if applied.is_empty() => {}
            Ok(applied) => {
                let count = |f: fn(&Item) -> bool| applied.iter().filter(|i| f(i)).count();
                tracing::info!(
                    repo,
                    repository = count(|i| matches!(i, Item::Repository)) > 0,
                    tags = count(|i| matches!(i, Item::Tag(_))),
                    manifests = count(|i| matches!(i, Item::Manifest(_))),
                    "changeableAttributes of the parent applied here"
                );
            }
            Err(e) => pass.record(&format!("{repo}: changeableAttributes from the parent"), e),
        }
    }

    /// Compares only the tags a change feed named in `repo` (each one HEAD, through the normal
    /// copy engine); a named tag the parent no longer has is untagged here if sync wrote it.
    /// `deleted`: those the feed says were deleted (no need to ask whether the parent still
    /// lists them).
    pub(crate) async fn sync_named_tags(
        &self,
        pass: &Pass,
        repo: String,
        rule: RepoRule,
        names: BTreeSet<String>,
        deleted: BTreeSet<String>,
    ) {
        if pass.check().is_err() {
            return;
        }
        pass.repos.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = names.into_iter().collect();
        let selected = rule.select_tags(&names);
        let (done, missing) = self
            .sync_tags(pass, &repo, &selected, &BTreeMap::new())
            .await;
        let mut missing: BTreeSet<String> = missing.into_iter().collect();
        // A tag the parent still lists but does not serve was evicted there to stay under its
        // quota: that is no deletion, so the copy here stays. One tag list answers it, asked
        // only for a tag the feed did not say was deleted.
        if !missing.is_subset(&deleted) {
            match self.client.tags(&repo).await {
                Ok(Some(listed)) => missing.retain(|tag| !listed.contains(tag)),
                Ok(None) => {}
                Err(e) => {
                    missing.clear();
                    pass.record(&repo, e.into());
                }
            }
        }
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

    /// Brings `tags` of `repo` in step, concurrently. `listed`: the digests a parent of ours'
    /// tag listing gave (a tag here already at its digest costs no request). Returns the tags
    /// now in step with their digests, and the tags the parent does not have (errors are
    /// recorded in `pass`).
    async fn sync_tags(
        &self,
        pass: &Pass,
        repo: &str,
        tags: &[String],
        listed: &BTreeMap<String, Digest>,
    ) -> (Vec<(String, Digest)>, Vec<String>) {
        let conc = self.settings.limits.concurrency;
        let results: Vec<(String, Result<Option<Digest>, SyncError>)> =
            futures_util::stream::iter(tags.iter().cloned())
                .map(|tag| async move {
                    let r = self.sync_tag(pass, repo, &tag, listed.get(&tag)).await;
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
                // Neither in step nor gone: a copy held here stays.
                Err(SyncError::ReadLocked) => {
                    if let Ok(mut v) = pass.read_locked.lock() {
                        v.push(format!("{repo}:{tag}"));
                    }
                }
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
                Ok(None) => {
                    // Evicted here (to stay under the quota): no longer known either.
                    let (r, t) = (repo.to_owned(), tag.clone());
                    match blocking(&self.store, move |s| s.delete_tag(&r, &t)).await {
                        Ok(()) => gone.push(tag),
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
        util::crash_point::crash_point("sync_before_tag_recorded");
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
    /// `listed`: its digest as a parent of ours' tag listing gave it, which spares the HEAD
    /// when the tag here is already there; anything to copy is resolved by HEAD as ever.
    async fn sync_tag(
        &self,
        pass: &Pass,
        repo: &str,
        tag: &str,
        listed: Option<&Digest>,
    ) -> Result<Option<Digest>, SyncError> {
        pass.check()?;
        let (r, t) = (repo.to_owned(), tag.to_owned());
        let local = blocking(&self.store, move |s| s.get_manifest(&r, &Reference::Tag(t))).await?;
        let in_step = |digest: &Digest| {
            local
                .as_ref()
                .is_some_and(|m| &m.digest == digest && !self.filter_wants_skipped(m))
        };
        let remote = match listed {
            Some(digest) if in_step(digest) => digest.clone(),
            _ => match self.client.head_manifest(repo, tag).await {
                Ok(Some(remote)) => remote,
                Ok(None) => return Ok(None),
                // A parent of ours refuses a tag with `readEnabled: false` (HEAD has no body
                // to say so; nothing else answers 405 to a manifest HEAD): a tag the feed
                // named, or locked since the listing was read.
                Err(ClientError::Status { status: 405, .. }) => return Err(SyncError::ReadLocked),
                Err(e) => return Err(e.into()),
            },
        };
        pass.tags_checked.fetch_add(1, Ordering::Relaxed);
        if local.is_none() {
            let (r, t) = (repo.to_owned(), tag.to_owned());
            if let Some(evicted) = blocking(&self.store, move |s| s.evicted(&r, &t)).await? {
                if !evicted.demanded {
                    // Fetching it now would only push the store over its quota again.
                    tracing::debug!(
                        repo,
                        tag,
                        "evicted here to stay under the quota and not asked for since: left out"
                    );
                    return Ok(Some(remote));
                }
                tracing::info!(repo, tag, digest = %remote, "a client asked for a tag evicted here: bringing it back");
            }
        }
        if in_step(&remote) {
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
}

#[cfg(test)]
mod tests {
    use crate::client::FeedAnswer;
    use crate::fake::{image_manifest, Rig, IMAGE};
    use crate::Outcome;
    use oci::feed::FEED_VERSION;
    use oci::{ChangeableAttributes, FeedPage};

    fn locked(f: impl FnOnce(&mut ChangeableAttributes)) -> ChangeableAttributes {
        let mut a = ChangeableAttributes::ALL_ENABLED;
        f(&mut a);
        a
    }

    /// A parent of ours with no feed: the full comparison reads the `/acr` tag listing (one
    /// request for the repository, not one per tag) and brings the parent's locks down: a
    /// write lock set before the child's first pass, a tag hidden from `/v2` listings (still
    /// mirrored, hidden here too), and a read-locked tag that is not pulled and is no error.
    #[tokio::test]
    async fn a_full_comparison_brings_the_parents_tag_attributes_down() {
        let rig = Rig::new("ReadOnly");
        parent_of_ours(&rig);
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        for tag in ["v2", "hidden", "secret"] {
            rig.parent.put_manifest("app", Some(tag), IMAGE, &m);
        }
        let write_locked = locked(|a| a.write_enabled = false);
        let unlisted = locked(|a| a.list_enabled = false);
        let unreadable = locked(|a| a.read_enabled = false);
        rig.parent.lock_tag("app", "v1", write_locked);
        rig.parent.lock_tag("app", "hidden", unlisted);
        rig.parent.lock_tag("app", "secret", unreadable);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(
            rig.parent.acr_requests(),
            3,
            "one tag listing page, one repository read, one manifest listing page"
        );
        assert_eq!(rig.store.tag("app", "v1"), Some(digest.clone()));
        assert_eq!(rig.store.tag("app", "hidden"), Some(digest.clone()));
        assert_eq!(
            rig.store.tag("app", "secret"),
            None,
            "read-locked: not pulled"
        );
        assert_eq!(summary.read_locked, ["app:secret"]);
        let here = crate::store::LocalStore::tag_attributes(&*rig.store, "app").unwrap();
        assert_eq!(here["v1"], write_locked);
        assert_eq!(here["hidden"], unlisted);
        assert_eq!(here["v2"], ChangeableAttributes::ALL_ENABLED);

        // In step: a second pass sets nothing again and untags nothing.
        let before = rig.store.changes_logged();
        let again = rig.engine.run_pass(None).await;
        assert_eq!(again.outcome, Outcome::Completed, "{:?}", again.errors);
        assert_eq!(again.tags_deleted, 0);
        assert_eq!(rig.store.changes_logged(), before, "nothing set twice");

        // Read-locked later, a tag held here stays, locked the same way.
        rig.parent.lock_tag("app", "v2", unreadable);
        let third = rig.engine.run_pass(None).await;
        assert_eq!(third.outcome, Outcome::Completed, "{:?}", third.errors);
        assert_eq!(rig.store.tag("app", "v2"), Some(digest));
        let here = crate::store::LocalStore::tag_attributes(&*rig.store, "app").unwrap();
        assert_eq!(here["v2"], unreadable);
        assert_eq!(third.read_locked, ["app:secret", "app:v2"]);
    }

    /// A parent of ours whose every pass compares in full (its feed cannot continue).
    fn parent_of_ours(rig: &Rig) {
        rig.parent.serve_acr();
        rig.parent.answer_feed_with(FeedAnswer::Page(FeedPage {
            version: FEED_VERSION,
            head: 0,
            oldest: 1,
            reset: true,
            changes: Vec::new(),
        }));
    }

    /// A repository lock and a manifest lock set at the parent before the child's first pass
    /// arrive with that full comparison (no feed entry carries them); a second pass writes
    /// nothing; unlocked at the parent, unlocked here at the next comparison.
    #[tokio::test]
    async fn a_full_comparison_brings_repository_and_manifest_attributes_down() {
        use crate::store::LocalStore;
        let rig = Rig::new("ReadOnly");
        parent_of_ours(&rig);
        rig.parent.put_blob(b"{}");
        rig.parent.put_blob(b"layer");
        let plain = rig
            .parent
            .put_manifest("app", Some("v1"), IMAGE, &image_manifest(b"{}", &[]));
        let pinned = rig.parent.put_manifest(
            "app",
            Some("v2"),
            IMAGE,
            &image_manifest(b"{}", &[b"layer"]),
        );
        let write_locked = locked(|a| a.write_enabled = false);
        let undeletable = locked(|a| a.delete_enabled = false);
        rig.parent.lock_repo("app", write_locked);
        rig.parent.lock_manifest("app", &pinned, undeletable);

        let first = rig.engine.run_pass(None).await;
        assert_eq!(first.outcome, Outcome::Completed, "{:?}", first.errors);
        assert_eq!(rig.store.tag("app", "v2"), Some(pinned.clone()));
        assert_eq!(
            rig.store.repository_attributes("app").unwrap(),
            Some(write_locked)
        );
        let manifests = rig.store.manifest_attributes("app").unwrap();
        assert_eq!(manifests[&pinned], undeletable);
        assert_eq!(manifests[&plain], ChangeableAttributes::ALL_ENABLED);

        let before = rig.store.changes_logged();
        let second = rig.engine.run_pass(None).await;
        assert_eq!(second.outcome, Outcome::Completed, "{:?}", second.errors);
        assert_eq!(rig.store.changes_logged(), before, "nothing set twice");

        rig.parent
            .lock_repo("app", ChangeableAttributes::ALL_ENABLED);
        let third = rig.engine.run_pass(None).await;
        assert_eq!(third.outcome, Outcome::Completed, "{:?}", third.errors);
        assert_eq!(
            rig.store.repository_attributes("app").unwrap(),
            Some(ChangeableAttributes::ALL_ENABLED)
        );
        assert_eq!(rig.store.changes_logged(), before + 1, "one unlock");
    }

    /// A repository hidden at the parent (`listEnabled: false` drops it from `/v2/_catalog`)
    /// stays mirrored under a wildcard rule: a parent of ours' `/acr` catalog names it. It is
    /// hidden here too.
    #[tokio::test]
    async fn a_hidden_repository_under_a_wildcard_rule_stays_mirrored() {
        use crate::store::LocalStore;
        let rig = Rig::with_repos("ReadOnly", &["team/*"]);
        parent_of_ours(&rig);
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("team/shown", Some("v1"), IMAGE, &m);
        rig.parent.put_manifest("team/ghost", Some("v1"), IMAGE, &m);
        let unlisted = locked(|a| a.list_enabled = false);
        rig.parent.lock_repo("team/ghost", unlisted);

        let first = rig.engine.run_pass(None).await;
        assert_eq!(first.outcome, Outcome::Completed, "{:?}", first.errors);
        assert_eq!(first.repos, 2, "{:?}", first.warnings);
        assert_eq!(rig.store.tag("team/shown", "v1"), Some(digest.clone()));
        assert_eq!(rig.store.tag("team/ghost", "v1"), Some(digest.clone()));
        assert_eq!(
            rig.store.repository_attributes("team/ghost").unwrap(),
            Some(unlisted)
        );

        let before = rig.store.changes_logged();
        let second = rig.engine.run_pass(None).await;
        assert_eq!(second.outcome, Outcome::Completed, "{:?}", second.errors);
        assert_eq!(second.tags_deleted, 0);
        assert_eq!(rig.store.tag("team/ghost", "v1"), Some(digest));
        assert_eq!(rig.store.changes_logged(), before, "nothing written again");
    }

    /// A manifest read-locked at the parent: the tags pointing at it are not pulled and are
    /// noted, as a read-locked tag is; the pass completes.
    #[tokio::test]
    async fn a_tag_of_a_read_locked_manifest_is_not_pulled() {
        let rig = Rig::new("ReadOnly");
        parent_of_ours(&rig);
        rig.parent.put_blob(b"{}");
        let digest = rig
            .parent
            .put_manifest("app", Some("v1"), IMAGE, &image_manifest(b"{}", &[]));
        rig.parent
            .lock_manifest("app", &digest, locked(|a| a.read_enabled = false));
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(summary.read_locked, ["app:v1"]);
        assert_eq!(rig.store.tag("app", "v1"), None);
    }

    /// A pass over tags already here costs no request per tag with a parent of ours: its tag
    /// listing gave their digests, so no HEAD is sent. A parent with no `/acr` costs a HEAD
    /// per tag (as every registry that is not ours does).
    #[tokio::test]
    async fn tags_in_step_cost_no_head_when_the_listing_gave_their_digests() {
        const TAGS: u64 = 10;
        for ours in [true, false] {
            let rig = Rig::new("ReadOnly");
            parent_of_ours(&rig);
            if !ours {
                rig.parent.stop_serving_acr();
            }
            rig.parent.put_blob(b"{}");
            let m = image_manifest(b"{}", &[]);
            for n in 0..TAGS {
                rig.parent
                    .put_manifest("app", Some(&format!("v{n}")), IMAGE, &m);
            }
            let first = rig.engine.run_pass(None).await;
            assert_eq!(first.outcome, Outcome::Completed, "{:?}", first.errors);
            let second = rig.engine.run_pass(None).await;
            assert_eq!(second.outcome, Outcome::Completed, "{:?}", second.errors);
            assert_eq!(second.tags_checked, TAGS);
            assert_eq!(second.tags_updated, 0);
            let expected = if ours {
                3 // the tag listing, the repository, the manifest listing
            } else {
                1 + 1 + TAGS // the /acr ask answered 404, the /v2 tag list, one HEAD per tag
            };
            assert_eq!(second.requests, expected, "parent of ours: {ours}");
        }
    }

    /// A tag read-locked at a parent whose tag set comes without attributes (the feed named
    /// it, or `/acr` is not there): the parent's refusal is noted, not an error, and a copy
    /// held here is not untagged.
    #[tokio::test]
    async fn a_read_locked_tag_is_no_error_without_the_listing() {
        let rig = Rig::new("ReadOnly");
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        let first = rig.engine.run_pass(None).await;
        assert_eq!(first.outcome, Outcome::Completed, "{:?}", first.errors);
        rig.parent
            .lock_tag("app", "v1", locked(|a| a.read_enabled = false));
        let second = rig.engine.run_pass(None).await;
        assert_eq!(second.outcome, Outcome::Completed, "{:?}", second.errors);
        assert_eq!(second.read_locked, ["app:v1"]);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
    }

    /// A parent that is not ours (no feed): not asked for `/acr` at all (a parent demanding
    /// tokens would cost a token fetch), tags come from `/v2` as before, and nothing fails.
    #[tokio::test]
    async fn a_parent_without_a_feed_is_not_asked_for_acr() {
        let rig = Rig::new("ReadOnly");
        rig.parent.serve_acr();
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
        assert_eq!(rig.parent.acr_requests(), 0);
    }

    /// A parent with a feed that answers 404 on `/acr` (a listing this parent does not offer):
    /// asked once in the pass, then tags come from `/v2`.
    #[tokio::test]
    async fn a_parent_without_acr_is_asked_once_per_pass() {
        let rig = Rig::new("ReadOnly");
        rig.parent.answer_feed_with(FeedAnswer::Page(FeedPage {
            version: FEED_VERSION,
            head: 0,
            oldest: 1,
            reset: false,
            changes: Vec::new(),
        }));
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
        assert_eq!(rig.parent.acr_requests(), 1);
    }

    /// `feed: false` (`--sync-feed off`): a parent of ours that offers a feed is never asked
    /// for it, nor for its `/acr` listing; every pass compares tag by tag, as with a parent
    /// that is not ours (the generic comparison the benchmark measures the feed against).
    #[tokio::test]
    async fn feed_off_compares_tag_by_tag_at_a_parent_with_a_feed() {
        let rig = Rig::with_raw(
            "ReadOnly",
            &["app"],
            crate::RawSettings {
                feed: Some(false),
                ..Default::default()
            },
        );
        rig.parent.serve_acr();
        rig.parent.answer_feed_with(FeedAnswer::Page(FeedPage {
            version: FEED_VERSION,
            head: 0,
            oldest: 1,
            reset: false,
            changes: Vec::new(),
        }));
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        for _ in 0..2 {
            let summary = rig.engine.run_pass(None).await;
            assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        }
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
        assert_eq!(rig.parent.feed_requests(), 0);
        assert_eq!(rig.parent.acr_requests(), 0);
    }
}
