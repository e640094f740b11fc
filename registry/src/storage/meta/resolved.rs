//! This replica's cache of what manifest references resolve to (`Meta::resolve`: a tag or a
//! digest to the manifest's digest and record, with the `readEnabled` switches on the way), so
//! that a manifest GET, the hottest request, does not read the metadata each time. On metadata
//! shared by several replicas (PostgreSQL) that read is a round trip to the database; on redb a
//! read transaction, its table opens and its keys decoded, which was 60% of the instructions of a
//! GET (README, Performance).
//!
//! The rules that keep it correct:
//! - An entry is served for at most the TTL (`serve --metadata-cache-ttl`) after the read that
//!   filled it *began*, so a change committed through another replica is served stale for at
//!   most the TTL.
//! - A write through this replica that may change a resolution forgets the repository's
//!   entries once it ended ([`ResolutionCache::forget`]), so this replica always reads its own
//!   writes. A read that began before such a write does not store what it read (the write
//!   counter it started with moved on): it may have read the old state.
//! - Only what was found is cached: a miss is asked again (a push through another replica shows
//!   at once, and misses are rare in steady use).
//! - Memory is bounded (`serve --metadata-cache-size`): entries are counted by an estimate of
//!   their bytes, and when the budget is spent the cache starts over, as the manifest cache does.
//!
//! On redb this process makes every write (the file is locked to it), so an entry is never
//! stale there: the TTL only makes it be read again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Resolution;

/// The cache's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long an entry is served (0: no cache).
    pub ttl: Duration,
    /// Estimated bytes of all entries together.
    pub budget: usize,
}

/// One cached resolution.
struct Entry {
    /// When the read that filled it began.
    read_at: Instant,
    resolution: Arc<Resolution>,
}

#[derive(Default)]
struct Entries {
    /// repository -> reference (tag or digest, as written) -> entry.
    by_repo: HashMap<String, HashMap<String, Entry>>,
    /// Estimated bytes of the entries.
    used: usize,
}

/// See the module doc.
pub(crate) struct ResolutionCache {
    settings: CacheSettings,
    entries: RwLock<Entries>,
    /// Writes through this replica that forgot entries, so far.
    writes: AtomicU64,
}

/// A lookup that missed: what [`ResolutionCache::store`] needs to decide whether the
/// resolution read after it may be kept.
pub(crate) struct Miss {
    read_at: Instant,
    writes: u64,
}

impl ResolutionCache {
    /// A cache with `settings`; `None` when its TTL is zero (off).
    pub(crate) fn new(settings: CacheSettings) -> Option<ResolutionCache> {
        (!settings.ttl.is_zero()).then(|| ResolutionCache {
            settings,
            entries: RwLock::default(),
            writes: AtomicU64::new(0),
        })
    }

    /// The resolution of `reference` in `repo` when one younger than the TTL is cached;
    /// otherwise the [`Miss`] to hand to [`ResolutionCache::store`] with what is read now.
    pub(crate) fn lookup(&self, repo: &str, reference: &str) -> Result<Arc<Resolution>, Miss> {
        // Taken before the read (and before the cache is looked at): a write that ends after
        // this moment keeps what the read finds out of the cache.
        let miss = Miss {
            writes: self.writes.load(Ordering::SeqCst),
            read_at: Instant::now(),
        };
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries
            .by_repo
            .get(repo)
            .and_then(|refs| refs.get(reference))
        {
            Some(entry) if entry.read_at.elapsed() < self.settings.ttl => {
                Ok(entry.resolution.clone())
            }
            _ => Err(miss),
        }
    }

    /// Keeps `resolution`, read after `miss`, unless a write through this replica ended since
    /// the read began.
    pub(crate) fn store(
        &self,
        miss: Miss,
        repo: &str,
        reference: &str,
        resolution: &Arc<Resolution>,
    ) {
        let size = estimated_size(repo, reference, resolution);
        if size > self.settings.budget / 4 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.writes.load(Ordering::SeqCst) != miss.writes {
            return;
        }
        if entries.used + size > self.settings.budget {
            *entries = Entries::default();
        }
        let entry = Entry {
            read_at: miss.read_at,
            resolution: resolution.clone(),
        };
        let refs = entries.by_repo.entry(repo.to_owned()).or_default();
        let replaced = refs
            .insert(reference.to_owned(), entry)
            .map_or(0, |old| estimated_size(repo, reference, &old.resolution));
        entries.used = entries.used + size - replaced;
    }

    /// Forgets every entry of `repo`: a write through this replica may have changed what its
    /// references resolve to. Called after the write ended, whether it committed or failed.
    pub(crate) fn forget(&self, repo: &str) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(refs) = entries.by_repo.remove(repo) {
            let freed: usize = refs
                .iter()
                .map(|(reference, entry)| estimated_size(repo, reference, &entry.resolution))
                .sum();
            entries.used = entries.used.saturating_sub(freed);
        }
    }

    /// Estimated bytes of the entries held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).used
    }
}

/// Bytes an entry takes, roughly: its strings, digests and the maps' overhead.
fn estimated_size(repo: &str, reference: &str, resolution: &Resolution) -> usize {
    const DIGEST: usize = 96;
    const OVERHEAD: usize = 160;
    let meta = &resolution.meta;
    OVERHEAD
        + repo.len()
        + reference.len()
        + DIGEST
        + meta.media_type.len()
        + DIGEST * (meta.refs.len() + meta.skipped.len() + usize::from(meta.subject.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::meta::ManifestMeta;
    use oci::Digest;

    fn resolution(n: u8) -> Arc<Resolution> {
        Arc::new(Resolution {
            digest: Digest::sha256_of(&[n]),
            meta: ManifestMeta {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 1,
                refs: Vec::new(),
                subject: None,
                skipped: Vec::new(),
                pushed_at: 0,
            },
            unreadable: None,
        })
    }

    fn cache(ttl: Duration, budget: usize) -> ResolutionCache {
        ResolutionCache::new(CacheSettings { ttl, budget }).unwrap()
    }

    #[test]
    fn a_zero_ttl_is_no_cache() {
        let off = CacheSettings {
            ttl: Duration::ZERO,
            budget: 1 << 20,
        };
        assert!(ResolutionCache::new(off).is_none());
    }

    #[test]
    fn an_entry_is_served_until_its_ttl_and_not_after() {
        let cache = cache(Duration::from_millis(200), 1 << 20);
        let miss = cache.lookup("r", "v1").unwrap_err();
        cache.store(miss, "r", "v1", &resolution(1));
        assert_eq!(
            cache.lookup("r", "v1").ok().map(|r| r.digest.clone()),
            Some(resolution(1).digest.clone())
        );
        assert!(cache.lookup("r", "v2").is_err(), "another tag");
        assert!(cache.lookup("s", "v1").is_err(), "another repository");
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.lookup("r", "v1").is_err(), "served past its TTL");
    }

    #[test]
    fn a_write_forgets_its_repository_and_keeps_a_read_begun_before_it_out() {
        let cache = cache(Duration::from_secs(60), 1 << 20);
        for (repo, n) in [("r", 1), ("s", 2)] {
            let miss = cache.lookup(repo, "v1").unwrap_err();
            cache.store(miss, repo, "v1", &resolution(n));
        }
        cache.forget("r");
        assert!(cache.lookup("r", "v1").is_err(), "the written repository");
        assert!(cache.lookup("s", "v1").is_ok(), "another repository stays");

        // A read that began before a write ended may hold the old state: not kept.
        let miss = cache.lookup("r", "v1").unwrap_err();
        cache.forget("r");
        cache.store(miss, "r", "v1", &resolution(1));
        assert!(
            cache.lookup("r", "v1").is_err(),
            "a read from before the write"
        );
        // One that began after it is kept.
        let miss = cache.lookup("r", "v1").unwrap_err();
        cache.store(miss, "r", "v1", &resolution(3));
        assert!(cache.lookup("r", "v1").is_ok());
    }

    #[test]
    fn the_budget_bounds_the_memory() {
        let one = estimated_size("r", "t000", &resolution(0));
        let cache = cache(Duration::from_secs(60), one * 10);
        for n in 0..100u8 {
            let tag = format!("t{n:03}");
            let miss = cache.lookup("r", &tag).unwrap_err();
            cache.store(miss, "r", &tag, &resolution(n));
            assert!(cache.used() <= one * 10, "over the budget at {n}");
        }
        assert!(cache.lookup("r", "t099").is_ok(), "the newest is kept");
        cache.forget("r");
        assert_eq!(cache.used(), 0);
    }
}

/// The cache seen through the store: one replica, and two replicas on one PostgreSQL database.
#[cfg(test)]
mod through_the_store {
    use std::time::{Duration, Instant};

    use oci::{AttributesPatch, Digest, Origin, Reference, RepoName};

    use crate::storage::meta::Lookup;
    use crate::storage::test_support::{image, on_every_backend, TestBackend};
    use crate::storage::{Limits, Store, Target};

    fn limits(ttl: Duration) -> Limits {
        Limits {
            metadata_cache_ttl: ttl,
            ..Limits::default()
        }
    }

    /// What a client's GET of `repo:tag` is served now: the digest, or `None` for a miss or a
    /// read-locked manifest.
    fn served(store: &Store, repo: &RepoName, tag: &str) -> Option<Digest> {
        store
            .get_manifest_cached(repo, &Reference::Tag(tag.into()))
            .unwrap()
            .filter(|m| m.unreadable.is_none())
            .map(|m| m.digest)
    }

    /// Moves `repo:tag` to the manifest `digest` already stored there, as a client's PUT does.
    fn tag(store: &Store, repo: &RepoName, tag: &str, digest: &Digest) {
        let body = store
            .get_manifest(repo, &Reference::Digest(digest.clone()))
            .unwrap()
            .unwrap()
            .body;
        let reference = Reference::Tag(tag.into());
        store
            .put_manifest(repo, &reference, None, body, Origin::Client)
            .unwrap();
    }

    /// On redb, the default, the cache is on too: a manifest GET after the first is a hash
    /// lookup, not a read transaction (the same resolution, not one read again).
    #[test]
    fn on_redb_a_resolution_is_read_once_and_then_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Limits::default()).unwrap();
        let repo: RepoName = "cached/app".parse().unwrap();
        image(&store, &repo, "first", Some("v1"));
        let resolve = || {
            let v1 = Reference::Tag("v1".into());
            store
                .inner
                .meta
                .resolve(repo.as_str(), &v1, Lookup::Cached)
                .unwrap()
                .unwrap()
        };
        assert!(std::sync::Arc::ptr_eq(&resolve(), &resolve()));
    }

    on_every_backend! {
        /// Whatever the TTL, a replica's own writes (tag moved, readEnabled switched, tag
        /// deleted, repository deleted) show in what it serves at once.
        fn a_replica_serves_its_own_writes_at_once(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = backend.open(dir.path(), limits(Duration::from_secs(3600)));
            let repo: RepoName = "cached/app".parse().unwrap();
            let (first, _) = image(&store, &repo, "first", Some("v1"));
            let (second, _) = image(&store, &repo, "second", None);
            assert_eq!(served(&store, &repo, "v1").as_ref(), Some(&first));
            tag(&store, &repo, "v1", &second);
            assert_eq!(served(&store, &repo, "v1").as_ref(), Some(&second));

            let off = AttributesPatch {
                read_enabled: Some(false),
                ..AttributesPatch::default()
            };
            let target = Target::Tag("v1".into());
            store.set_attributes(&repo, &target, &off, Origin::Client).unwrap();
            assert_eq!(served(&store, &repo, "v1"), None, "read-locked");
            let on = AttributesPatch {
                read_enabled: Some(true),
                ..AttributesPatch::default()
            };
            store.set_attributes(&repo, &target, &on, Origin::Client).unwrap();
            assert_eq!(served(&store, &repo, "v1").as_ref(), Some(&second));

            assert!(store.delete_tag(&repo, "v1", Origin::Client).unwrap());
            assert_eq!(served(&store, &repo, "v1"), None, "deleted");
            image(&store, &repo, "third", Some("v2"));
            assert!(served(&store, &repo, "v2").is_some());
            assert!(store.delete_repository(&repo, Origin::Client).unwrap());
            assert_eq!(served(&store, &repo, "v2"), None, "repository deleted");
        }
    }

    /// Two replicas on one database (sharing the data directory for the blobs): a tag moved
    /// through B is served by A with the new digest once A's entry is older than the TTL, never
    /// later; meanwhile A's current reads (sync's) see it at once.
    #[test]
    fn another_replicas_write_shows_within_the_ttl() {
        let backend = TestBackend::postgres();
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_millis(500);
        let a = backend.open(dir.path(), limits(ttl));
        let b = backend.open(dir.path(), limits(ttl));
        let repo: RepoName = "shared/app".parse().unwrap();
        let (first, _) = image(&a, &repo, "first", Some("v1"));
        let (second, _) = image(&a, &repo, "second", None);
        for round in 0..3 {
            let (old, new) = match round % 2 {
                0 => (&first, &second),
                _ => (&second, &first),
            };
            // A caches the old resolution now.
            assert_eq!(served(&a, &repo, "v1").as_ref(), Some(old));
            tag(&b, &repo, "v1", new);
            let moved = Instant::now();
            let current = a
                .get_manifest(&repo, &Reference::Tag("v1".into()))
                .unwrap()
                .unwrap();
            assert_eq!(&current.digest, new, "a current read sees it at once");
            while served(&a, &repo, "v1").as_ref() != Some(new) {
                assert!(
                    moved.elapsed() < ttl + Duration::from_millis(250),
                    "round {round}: served stale past the TTL"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// With a zero TTL there is no cache: the other replica's write shows at once.
    #[test]
    fn a_zero_ttl_serves_every_write_at_once() {
        let backend = TestBackend::postgres();
        let dir = tempfile::tempdir().unwrap();
        let a = backend.open(dir.path(), limits(Duration::ZERO));
        let b = backend.open(dir.path(), limits(Duration::ZERO));
        let repo: RepoName = "uncached/app".parse().unwrap();
        let (first, _) = image(&a, &repo, "first", Some("v1"));
        let (second, _) = image(&a, &repo, "second", None);
        assert_eq!(served(&a, &repo, "v1").as_ref(), Some(&first));
        tag(&b, &repo, "v1", &second);
        assert_eq!(served(&a, &repo, "v1").as_ref(), Some(&second));
    }
}
