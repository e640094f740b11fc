//! One pass: push up (ReadWrite), then pull down, and its summary; which repositories and
//! tags are compared, in what order, and what a tag the parent no longer has means here. The
//! copying itself (manifests bottom-up, blobs, resume) is `copy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::StreamExt;
use oci::{Class, Classify};
use tokio::time::Instant;

use crate::engine::{blocking, Engine, SyncError};
use crate::settings::RepoRule;
use crate::state::{Outcome, Pull, Summary};
use crate::store::StoreError;
use oci::Descriptor;
use oci::Digest;
use oci::Reference;

/// Counters of one pass.
#[derive(Default)]
pub(crate) struct Pass {
    pub(crate) deadline: Option<Instant>,
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
}

impl Pass {
    pub(crate) fn check(&self) -> Result<(), SyncError> {
        if self.halted.load(Ordering::Relaxed) {
            return Err(SyncError::Halted);
        }
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
        let (done, missing) = self.sync_tags(pass, &repo, &selected).await;
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
}
