//! The storage quota (`serve --quota`): when the blob files pass it, the synced images least
//! recently pulled are evicted until they no longer do. Only tags sync wrote are evicted: what
//! clients pushed here never is (the store does not know what was already pushed up to the
//! parent, so it keeps all of it). An evicted tag stays known (listed; its pull answers 404
//! saying why), and the next sync pass brings it back once a client asked for it.
//!
//! Pull times are kept in memory and written in one transaction per flush (before each
//! eviction run, at the GC interval): a pull never waits for a write transaction, and a crash
//! loses at most the pulls since the last flush. The tables and the eviction transaction are
//! `meta::quota`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{MinFree, StorageError, Store};
use crate::storage::meta::EvictedTag;
use oci::digest::Digest;
use oci::name::RepoName;
use util::time::now_secs;

/// Parses `--quota`: bytes with an optional binary unit, as `--min-free` takes them (`500MiB`,
/// `20GiB`); a share of the disk is refused (the quota is about what the store holds).
pub fn parse_quota(value: &str) -> Result<u64, String> {
    match value.parse::<MinFree>()? {
        MinFree::Bytes(0) => Err(format!(
            "quota {value:?} is zero: give a size like 500MiB or 20GiB, or leave --quota out for none"
        )),
        MinFree::Bytes(bytes) => Ok(bytes),
        MinFree::Percent(_) => Err(format!(
            "quota {value:?} is a share of the disk: give a size like 500MiB or 20GiB (--min-free keeps disk space free)"
        )),
    }
}

/// What the quota tracks in memory, and its counters.
#[derive(Default)]
pub(crate) struct QuotaState {
    /// (repo, manifest digest) -> unix seconds of the last GET that served it, since the last flush.
    pulls: Mutex<HashMap<(String, Digest), u64>>,
    /// (repo, tag) -> unix seconds a client last asked for the evicted tag, since the last flush.
    demand: Mutex<HashMap<(String, String), u64>>,
    /// Held by the one eviction run at a time (a sync pass and the GC timer may both start one).
    running: Mutex<()>,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    /// Images being fetched on demand (see [`Store::defer_evictions`]).
    deferring: AtomicU64,
}

/// While held, evictions wait (see [`Store::defer_evictions`]).
pub struct EvictionDeferral {
    store: Store,
}

impl Drop for EvictionDeferral {
    fn drop(&mut self) {
        self.store
            .inner
            .quota
            .deferring
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One tag evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub repo: String,
    pub tag: String,
    pub digest: Digest,
    /// Bytes of blob files deleted.
    pub bytes: u64,
}

/// What an eviction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaReport {
    /// Blob bytes before and after.
    pub usage_before: u64,
    pub usage_after: u64,
    pub evicted: Vec<Eviction>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// The quota in bytes (`--quota`), if one is set.
    pub fn quota(&self) -> Option<u64> {
        self.inner.limits.quota
    }

    /// Notes that a client was served manifest `digest` of `repo` (in memory; a no-op without a
    /// quota).
    pub fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        if self.quota().is_none() {
            return;
        }
        lock(&self.inner.quota.pulls)
            .insert((repo.as_str().to_owned(), digest.clone()), now_secs());
    }

    /// The evicted tag `repo:tag`, if it is one, with the demand not flushed yet counted.
    pub fn evicted_tag(
        &self,
        repo: &RepoName,
        tag: &str,
    ) -> Result<Option<EvictedTag>, StorageError> {
        let Some(mut row) = self.inner.meta.evicted_tag(repo.as_str(), tag)? else {
            return Ok(None);
        };
        let key = (repo.as_str().to_owned(), tag.to_owned());
        if let Some(asked) = lock(&self.inner.quota.demand).get(&key).copied() {
            if asked >= row.evicted_at && row.demanded_at.is_none_or(|d| d < asked) {
                row.demanded_at = Some(asked);
            }
        }
        Ok(Some(row))
    }

    /// Notes that a client asked for the evicted tag `repo:tag`: the next sync pass brings it
    /// back, and the first ask wakes sync (as a client's change does) rather than waiting for
    /// its next poll.
    pub fn note_demand(&self, repo: &RepoName, tag: &str) {
        let key = (repo.as_str().to_owned(), tag.to_owned());
        let first = lock(&self.inner.quota.demand)
            .insert(key, now_secs())
            .is_none();
        if first {
            self.inner.client_changed.notify_one();
        }
    }

    /// Evicted tags a client asked for since they were evicted: what the next sync pass brings
    /// back.
    pub fn demanded_evictions(&self) -> Result<Vec<(String, String)>, StorageError> {
        let demand = lock(&self.inner.quota.demand).clone();
        Ok(self
            .inner
            .meta
            .all_evicted()?
            .into_iter()
            .filter(|(repo, tag, row)| {
                row.demanded_at.is_some()
                    || demand
                        .get(&(repo.clone(), tag.clone()))
                        .is_some_and(|asked| *asked >= row.evicted_at)
            })
            .map(|(repo, tag, _)| (repo, tag))
            .collect())
    }

    /// Writes the pull times and demand gathered in memory, in one transaction.
    pub fn flush_pulls(&self) -> Result<(), StorageError> {
        let pulls = std::mem::take(&mut *lock(&self.inner.quota.pulls));
        let demand = std::mem::take(&mut *lock(&self.inner.quota.demand));
        let written = self.inner.meta.record_pulls(&pulls, &demand);
        if written.is_err() {
            // Kept for the next flush (newer entries gathered meanwhile win).
            let mut kept = lock(&self.inner.quota.pulls);
            for (k, v) in pulls {
                kept.entry(k).or_insert(v);
            }
            let mut kept = lock(&self.inner.quota.demand);
            for (k, v) in demand {
                kept.entry(k).or_insert(v);
            }
        }
        written
    }

    /// Evictions since start, and the bytes they freed (for `serve --admin`'s metrics).
    pub fn evictions_total(&self) -> (u64, u64) {
        let q = &self.inner.quota;
        (
            q.evictions.load(Ordering::Relaxed),
            q.evicted_bytes.load(Ordering::Relaxed),
        )
    }

    /// Holds evictions back while an image is fetched on demand: its blobs count toward the
    /// usage as they arrive, but its tag is an eviction candidate (the first) only once the
    /// manifest is stored, so an eviction run meanwhile would evict a synced image instead.
    /// The next run after the guard is dropped (the next sync pass, the GC timer) catches up.
    pub fn defer_evictions(&self) -> EvictionDeferral {
        self.inner.quota.deferring.fetch_add(1, Ordering::Relaxed);
        EvictionDeferral {
            store: self.clone(),
        }
    }

    /// Brings the blob files under the quota by evicting synced tags, least recently pulled
    /// first; logs each eviction. Does nothing without a quota, under it, or while another run
    /// is going. Blocking.
    pub fn enforce_quota(&self) -> Result<QuotaReport, StorageError> {
        let mut report = QuotaReport::default();
        let Some(quota) = self.quota() else {
            return Ok(report);
        };
        let Ok(_one_run) = self.inner.quota.running.try_lock() else {
            return Ok(report);
        };
        if self.inner.quota.deferring.load(Ordering::Relaxed) > 0 {
            tracing::debug!("eviction deferred: an image is being fetched on demand");
            return Ok(report);
        }
        self.flush_pulls()?;
        // The blobs' bytes only: no need for the upload sessions and the disk `usage` counts
        // too (in an object store, each is one more listing).
        let mut used: u64 = self.list_blobs()?.blobs.iter().map(|(_, size)| size).sum();
        report.usage_before = used;
        if used > quota {
            for candidate in self.inner.meta.eviction_candidates(&HashMap::new())? {
                if used <= quota {
                    break;
                }
                let (repo, tag) = (candidate.repo, candidate.tag);
                let why = format!("usage {used} bytes over quota {quota} bytes (--quota)");
                let decided = SystemTime::now();
                let Some(evicted) = self.inner.meta.evict_tag(&repo, &tag)? else {
                    continue;
                };
                lock(&self.inner.quota.demand).remove(&(repo.clone(), tag.clone()));
                util::crash_point::crash_point("after_eviction_commit");
                let freed = self.delete_unreferenced(&evicted.files, decided)?;
                used = used.saturating_sub(freed);
                let q = &self.inner.quota;
                q.evictions.fetch_add(1, Ordering::Relaxed);
                q.evicted_bytes.fetch_add(freed, Ordering::Relaxed);
                tracing::info!(
                    repo,
                    tag,
                    digest = %evicted.digest,
                    bytes = freed,
                    last_used = candidate.last_used,
                    on_demand = candidate.on_demand,
                    why,
                    "evicted a synced image least recently pulled; the tag stays listed and the next sync pass brings it back once a client asks for it"
                );
                report.evicted.push(Eviction {
                    repo,
                    tag,
                    digest: evicted.digest,
                    bytes: freed,
                });
            }
            if used > quota {
                tracing::warn!(
                    usage = used,
                    quota,
                    "still over the quota (--quota): nothing more may be evicted (only images sync brought down are; content pushed here never is)"
                );
            }
        }
        report.usage_after = used;
        Ok(report)
    }

    /// Deletes the blobs `files` that nothing references any more and that nobody touched
    /// since `decided` (GC's step, [`Store::delete_unused_blob`]): installing or linking a blob
    /// touches it, so a client that just uploaded the same bytes keeps them. No grace period is
    /// needed beyond that: the metadata that referenced these blobs is gone. Returns the bytes
    /// freed.
    fn delete_unreferenced(
        &self,
        files: &[Digest],
        decided: SystemTime,
    ) -> Result<u64, StorageError> {
        let mut freed = 0;
        for digest in files {
            freed += self.delete_unused_blob(digest, decided)?.unwrap_or(0);
        }
        Ok(freed)
    }

    /// Records that `repo:tag` was just fetched from the parent on demand (pull-through): it
    /// counts toward the quota like synced content and is evicted first.
    pub fn mark_on_demand(&self, repo: &RepoName, tag: &str) -> Result<(), StorageError> {
        self.inner.meta.mark_on_demand(repo.as_str(), tag)
    }

    /// Whether `repo:tag` was fetched on demand (and not set again since).
    pub fn is_on_demand(&self, repo: &RepoName, tag: &str) -> Result<bool, StorageError> {
        self.inner.meta.is_on_demand(repo.as_str(), tag)
    }

    /// Forgets that `repo:tag` was evicted (the parent no longer has it). Whether it was.
    pub fn forget_evicted(&self, repo: &RepoName, tag: &str) -> Result<bool, StorageError> {
        self.inner.meta.forget_evicted(repo.as_str(), tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::{on_every_backend, push_blob, TestBackend};
    use crate::storage::Limits;
    use bytes::Bytes;
    use oci::media_type::OCI_MANIFEST;
    use oci::reference::Reference;
    use oci::Origin;

    /// An image of one `size`-byte layer (plus `shared`, if given) tagged `tag` by `origin`.
    fn image(
        store: &Store,
        repo: &RepoName,
        tag: &str,
        size: usize,
        shared: Option<&[u8]>,
        origin: Origin,
    ) -> (Digest, Vec<Digest>) {
        let config = push_blob(store, repo, format!("{{\"tag\":\"{tag}\"}}").as_bytes());
        let mut layers = vec![push_blob(store, repo, &vec![tag.as_bytes()[0]; size])];
        if let Some(shared) = shared {
            layers.push(push_blob(store, repo, shared));
        }
        let descs: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}"#,
                    store.blob_size(l).unwrap()
                )
            })
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{}]}}"#,
            store.blob_size(&config).unwrap(),
            descs.join(",")
        );
        let (digest, _) = store
            .put_manifest(
                repo,
                &Reference::Tag(tag.into()),
                None,
                Bytes::from(body),
                origin,
            )
            .unwrap();
        (digest, layers)
    }

    fn store_with_quota(backend: &TestBackend, dir: &std::path::Path, quota: u64) -> Store {
        let limits = Limits {
            quota: Some(quota),
            ..Limits::default()
        };
        backend.open(dir, limits)
    }

    #[test]
    fn parses_sizes_only() {
        assert_eq!(parse_quota("300KiB"), Ok(300 << 10));
        assert_eq!(parse_quota("2GiB"), Ok(2 << 30));
        assert!(parse_quota("5%").unwrap_err().contains("share of the disk"));
        assert!(parse_quota("0").unwrap_err().contains("zero"));
        assert!(parse_quota("lots").is_err());
    }

    on_every_backend! {
        fn evicts_least_recently_used_synced_tags_and_keeps_what_clients_pushed(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_quota(&backend, dir.path(), 27_000);
            let repo: RepoName = "edge/app".parse().unwrap();
            let shared = vec![7u8; 5_000];
            let (a, a_layers) = image(&store, &repo, "a", 10_000, Some(&shared), Origin::Sync);
            let (_, b_layers) = image(&store, &repo, "b", 10_000, None, Origin::Sync);
            let (_, mine) = image(&store, &repo, "mine", 10_000, Some(&shared), Origin::Client);
            // `b` was pulled after both were synced: `a` is the least recently used.
            store.note_pull(
                &repo,
                &store
                    .get_manifest(&repo, &Reference::Tag("b".into()))
                    .unwrap()
                    .unwrap()
                    .digest,
            );
            lock(&store.inner.quota.pulls)
                .values_mut()
                .for_each(|t| *t += 10);

            let report = store.enforce_quota().unwrap();
            assert_eq!(report.evicted.len(), 1, "{report:?}");
            assert_eq!(
                (report.evicted[0].tag.as_str(), &report.evicted[0].digest),
                ("a", &a)
            );
            assert!(report.usage_after <= 27_000 && report.usage_after < report.usage_before);
            // Its own layer went; the layer a client's image shares stayed.
            assert!(!store.blob_exists(&a_layers[0]) && store.blob_exists(&a_layers[1]));
            assert!(store.blob_exists(&b_layers[0]) && store.blob_exists(&mine[0]));
            // Still listed, not served, and no change logged (children do not mirror it).
            assert_eq!(store.tags(&repo).unwrap(), ["a", "b", "mine"]);
            assert!(store
                .get_manifest(&repo, &Reference::Tag("a".into()))
                .unwrap()
                .is_none());
            assert!(store
                .get_manifest(&repo, &Reference::Digest(a.clone()))
                .unwrap()
                .is_none());
            let changes = store.changes(0, 1000).unwrap();
            assert!(!changes.iter().any(|c| matches!(
                &c.kind,
                oci::ChangeKind::TagDeleted { .. } | oci::ChangeKind::ManifestDeleted { .. }
            )));
            let row = store.evicted_tag(&repo, "a").unwrap().unwrap();
            assert_eq!((row.digest, row.demanded_at), (a.clone(), None));
            assert_eq!(store.evictions_total().0, 1);

            // Asked for: demanded; sync putting it back clears the record in the same transaction.
            store.note_demand(&repo, "a");
            assert_eq!(
                store.demanded_evictions().unwrap(),
                [("edge/app".to_owned(), "a".to_owned())]
            );
            store.flush_pulls().unwrap();
            assert!(store
                .evicted_tag(&repo, "a")
                .unwrap()
                .unwrap()
                .demanded_at
                .is_some());
            let (back, _) = image(&store, &repo, "a", 10_000, Some(&shared), Origin::Sync);
            assert_eq!(back, a);
            assert!(store.evicted_tag(&repo, "a").unwrap().is_none());
            assert!(store.demanded_evictions().unwrap().is_empty());

            // Nothing synced left to evict but over the quota: the client's image stays whole.
            let small = store_with_quota(&backend.another(), dir.path().join("x").as_path(), 1);
            image(&small, &repo, "mine", 10_000, None, Origin::Client);
            assert!(small.enforce_quota().unwrap().evicted.is_empty());
            assert!(small
                .get_manifest(&repo, &Reference::Tag("mine".into()))
                .unwrap()
                .is_some());
        }
    }

    on_every_backend! {
        fn a_manifest_another_tag_needs_stays(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_quota(&backend, dir.path(), 1);
            let repo: RepoName = "edge/app".parse().unwrap();
            let (d, layers) = image(&store, &repo, "s", 10_000, None, Origin::Sync);
            // A client tags the same manifest: evicting `s` must not take it away from `c`.
            let body = store
                .get_manifest(&repo, &Reference::Digest(d.clone()))
                .unwrap()
                .unwrap()
                .body;
            store
                .put_manifest(
                    &repo,
                    &Reference::Tag("c".into()),
                    None,
                    body,
                    Origin::Client,
                )
                .unwrap();
            let report = store.enforce_quota().unwrap();
            assert_eq!(report.evicted.len(), 1);
            assert_eq!(report.evicted[0].bytes, 0);
            assert!(store
                .get_manifest(&repo, &Reference::Tag("c".into()))
                .unwrap()
                .is_some());
            assert!(store.blob_exists(&layers[0]) && store.blob_exists(&d));
        }
    }

    on_every_backend! {
        fn an_index_child_a_kept_tag_needs_stays_a_lock_pins_and_a_client_push_ends_an_eviction(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_quota(&backend, dir.path(), 1);
            let repo: RepoName = "edge/multi".parse().unwrap();
            let (child, layers) = image(&store, &repo, "plat", 10_000, None, Origin::Sync);
            let index = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{child}","size":{}}}]}}"#,
                oci::media_type::OCI_INDEX,
                store.blob_size(&child).unwrap()
            );
            let index = Bytes::from(index);
            let (idx, _) = store
                .put_manifest(
                    &repo,
                    &Reference::Tag("idx".into()),
                    None,
                    index.clone(),
                    Origin::Sync,
                )
                .unwrap();
            // `plat` is locked (as an operator pins an image): never evicted.
            let lock_it = oci::AttributesPatch {
                delete_enabled: Some(false),
                ..Default::default()
            };
            store
                .set_attributes(
                    &repo,
                    &crate::storage::Target::Tag("plat".into()),
                    &lock_it,
                    Origin::Client,
                )
                .unwrap();

            let report = store.enforce_quota().unwrap();
            let evicted: Vec<&str> = report.evicted.iter().map(|e| e.tag.as_str()).collect();
            assert_eq!(evicted, ["idx"]);
            // The index went; its platform, which `plat` still needs, stayed whole.
            assert!(!store.blob_exists(&idx));
            assert!(store
                .get_manifest(&repo, &Reference::Tag("plat".into()))
                .unwrap()
                .is_some());
            assert!(store.blob_exists(&child) && store.blob_exists(&layers[0]));

            // A client pushing to the evicted tag ends the eviction; the tag is then its own.
            store
                .put_manifest(
                    &repo,
                    &Reference::Tag("idx".into()),
                    None,
                    index,
                    Origin::Client,
                )
                .unwrap();
            assert!(store.evicted_tag(&repo, "idx").unwrap().is_none());
            assert!(store.enforce_quota().unwrap().evicted.is_empty());
            assert!(store
                .get_manifest(&repo, &Reference::Tag("idx".into()))
                .unwrap()
                .is_some());
        }
    }

    /// A store from before the quota tables learns which tags sync wrote from its change log.
    #[test]
    fn a_store_from_before_the_quota_learns_its_synced_tags_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let repo: RepoName = "edge/old".parse().unwrap();
        {
            let store = Store::open(dir.path(), Limits::default()).unwrap();
            image(&store, &repo, "synced", 10_000, None, Origin::Sync);
            image(&store, &repo, "pushed", 10_000, None, Origin::Client);
        }
        {
            let db = redb::Database::create(dir.path().join("meta.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            let table: redb::TableDefinition<(&str, &str), u64> =
                redb::TableDefinition::new("synced_tags");
            assert!(tx.delete_table(table).unwrap());
            tx.commit().unwrap();
        }
        let store = store_with_quota(&TestBackend::redb(), dir.path(), 1);
        let evicted: Vec<String> = store
            .enforce_quota()
            .unwrap()
            .evicted
            .into_iter()
            .map(|e| e.tag)
            .collect();
        assert_eq!(evicted, ["synced"]);
    }

    on_every_backend! {
        /// A tag fetched on demand is evicted before the synced one, although pulled more
        /// recently; sync setting the tag again makes it a synced tag like the others.
        fn on_demand_tags_are_evicted_first(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_quota(&backend, dir.path(), 15_000);
            let repo: RepoName = "edge/app".parse().unwrap();
            image(&store, &repo, "synced", 10_000, None, Origin::Sync);
            let (fetched, _) = image(&store, &repo, "fetched", 10_000, None, Origin::Sync);
            store.mark_on_demand(&repo, "fetched").unwrap();
            assert!(store.is_on_demand(&repo, "fetched").unwrap());
            store.note_pull(&repo, &fetched);
            lock(&store.inner.quota.pulls)
                .values_mut()
                .for_each(|t| *t += 10);
            let report = store.enforce_quota().unwrap();
            let evicted: Vec<&str> = report.evicted.iter().map(|e| e.tag.as_str()).collect();
            assert_eq!(evicted, ["fetched"]);

            image(&store, &repo, "again", 1_000, None, Origin::Sync);
            store.mark_on_demand(&repo, "again").unwrap();
            image(&store, &repo, "again", 2_000, None, Origin::Sync);
            assert!(
                !store.is_on_demand(&repo, "again").unwrap(),
                "set again by sync"
            );
        }
    }
}
