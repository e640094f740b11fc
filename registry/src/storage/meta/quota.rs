//! What the storage quota (`serve --quota`) keeps in the metadata: which tags sync wrote (only those may
//! be evicted), when each manifest was last pulled (flushed in batches from memory), and the
//! tags evicted to stay under the quota, which stay *known* (listed, and brought back by sync
//! once a client asks for them).
//!
//! Eviction is local cache management, not a deletion in the hierarchy: it logs no change, so
//! children never mirror it and the upward push never sees it. Every eviction is one write
//! transaction (the tag, the manifests only it needed, their blob links, and the `evicted`
//! row); the blob files go afterwards, and a crash in between leaves only files no metadata
//! references, which GC collects.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{
    from_json, json, now, parse_digest, ManifestMeta, Meta, RecordKind, CHANGES, MANIFESTS,
    REFERRERS, REPO_BLOBS, TAGS,
};
use crate::storage::kv::{Read, Table, Value, Write};
use crate::storage::StorageError;
use oci::{Digest, Origin};

/// (repo, tag) -> unix seconds when sync last set the tag. A tag a client set is not here.
pub(super) const SYNCED_TAGS: Table<(String, String), u64> = Table::new("synced_tags");
/// (repo, tag) -> unix seconds when a pull fetched the tag from the parent on demand
/// (pull-through): such tags are evicted before the ones sync keeps. Cleared when the tag is
/// set or deleted again.
pub(super) const ON_DEMAND: Table<(String, String), u64> = Table::new("on_demand");
/// (repo, manifest digest) -> unix seconds of the last GET that served it (as last flushed).
pub(super) const PULLED: Table<(String, String), u64> = Table::new("pulled");
/// (repo, tag) -> [`EvictedTag`] as JSON: a synced tag evicted to stay under the quota.
pub(super) const EVICTED: Table<(String, String), Vec<u8>> = Table::new("evicted");

/// A tag evicted to keep the store under its quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictedTag {
    /// What the tag pointed at when it was evicted.
    pub digest: Digest,
    /// Bytes of blob files only it needed (what its eviction freed).
    pub bytes: u64,
    /// Unix seconds.
    pub evicted_at: u64,
    /// When a client last asked for it since (unix seconds): sync brings it back then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demanded_at: Option<u64>,
}

/// A synced tag that may be evicted, with what ranks it.
#[derive(Debug, Clone)]
pub struct EvictionCandidate {
    pub repo: String,
    pub tag: String,
    /// The last time its manifest (or an index child of it) was pulled, or else synced.
    pub last_used: u64,
    /// Fetched on demand (pull-through) rather than kept by sync: evicted first.
    pub on_demand: bool,
}

/// What one eviction removed from the metadata.
#[derive(Debug, Clone)]
pub struct Evicted {
    pub digest: Digest,
    /// Bytes of the files in `files` (blob files no metadata references any more).
    pub bytes: u64,
    /// Manifest and blob files nothing references any more: to delete.
    pub files: Vec<Digest>,
}

/// Keeps the quota tables in step with a change being logged (called by `log` in the same
/// transaction): a tag set by sync becomes evictable, one set by a client does not, and a tag
/// set again is no longer evicted.
pub(super) fn on_logged(
    tx: &Write,
    repo: &str,
    origin: Origin,
    kind: &RecordKind,
    time: u64,
) -> Result<(), StorageError> {
    match kind {
        RecordKind::TagSet { tag, .. } => {
            if origin == Origin::Sync {
                tx.insert(SYNCED_TAGS, (repo, tag), time)?;
            } else {
                tx.remove(SYNCED_TAGS, (repo, tag))?;
            }
            tx.remove(EVICTED, (repo, tag))?;
            tx.remove(ON_DEMAND, (repo, tag))?;
        }
        RecordKind::TagDeleted { tag } => {
            tx.remove(ON_DEMAND, (repo, tag))?;
            tx.remove(SYNCED_TAGS, (repo, tag))?;
            tx.remove(EVICTED, (repo, tag))?;
        }
        _ => {}
    }
    Ok(())
}

/// Drops what the quota tables hold for a deleted repository.
pub(super) fn forget_repo(tx: &Write, repo: &str) -> Result<(), StorageError> {
    fn forget<V: Value>(
        tx: &Write,
        table: Table<(String, String), V>,
        repo: &str,
    ) -> Result<(), StorageError> {
        for key in super::props::collect_keys(tx, table, repo)? {
            tx.remove(table, (repo, &key))?;
        }
        Ok(())
    }
    forget(tx, SYNCED_TAGS, repo)?;
    forget(tx, EVICTED, repo)?;
    forget(tx, PULLED, repo)?;
    forget(tx, ON_DEMAND, repo)
}

/// Fills `synced_tags` once, when a store from before it is opened: a tag whose newest change
/// still in the log is a sync's `TagSet` to the digest it points at now was written by sync.
/// Tags whose changes were pruned stay unevictable (the safe side).
pub(super) fn backfill(tx: &Write) -> Result<(), StorageError> {
    let mut newest: HashMap<(String, String), Option<String>> = HashMap::new();
    for row in tx.iter(CHANGES) {
        let (_, value) = row?;
        let record: super::Record = from_json(&value)?;
        match record.kind {
            RecordKind::TagSet { tag, digest } => {
                let synced = record.origin == super::RecordOrigin::Sync;
                newest.insert((record.repo, tag), synced.then(|| digest.to_string()));
            }
            RecordKind::TagDeleted { tag } => {
                newest.insert((record.repo, tag), None);
            }
            _ => {}
        }
    }
    let time = now();
    for ((repo, tag), digest) in newest {
        let Some(digest) = digest else { continue };
        if tx.get(TAGS, (&repo, &tag))?.as_deref() == Some(digest.as_str()) {
            tx.insert(SYNCED_TAGS, (&repo, &tag), time)?;
        }
    }
    Ok(())
}

impl Meta {
    /// The evicted tag `repo:tag`, if it is one.
    pub fn evicted_tag(&self, repo: &str, tag: &str) -> Result<Option<EvictedTag>, StorageError> {
        self.kv.read(|tx| {
            tx.get(EVICTED, (repo, tag))?
                .map(|v| from_json(&v))
                .transpose()
        })
    }

    /// Every evicted tag of `repo`, in name order.
    pub fn evicted_tags(&self, repo: &str) -> Result<Vec<(String, EvictedTag)>, StorageError> {
        self.kv.read(|tx| evicted_in(tx, repo))
    }

    /// Every evicted tag: (repo, tag, row).
    pub fn all_evicted(&self) -> Result<Vec<(String, String, EvictedTag)>, StorageError> {
        self.kv.read(|tx| {
            tx.iter(EVICTED)
                .map(|row| {
                    let ((repo, tag), value) = row?;
                    Ok((repo, tag, from_json(&value)?))
                })
                .collect()
        })
    }

    /// Records that the synced tag `repo:tag` was fetched on demand (pull-through): it is
    /// evicted before the tags sync keeps. A no-op unless the tag is one sync wrote.
    pub fn mark_on_demand(&self, repo: &str, tag: &str) -> Result<(), StorageError> {
        self.kv.write(|tx| {
            if tx.contains(SYNCED_TAGS, (repo, tag))? {
                tx.insert(ON_DEMAND, (repo, tag), now())?;
            }
            Ok(())
        })
    }

    /// Whether `repo:tag` was fetched on demand and not set since.
    pub fn is_on_demand(&self, repo: &str, tag: &str) -> Result<bool, StorageError> {
        self.kv.read(|tx| tx.contains(ON_DEMAND, (repo, tag)))
    }

    /// Writes a batch of pull times (newer ones win) and of demand for evicted tags, in one
    /// transaction.
    pub fn record_pulls(
        &self,
        pulls: &HashMap<(String, Digest), u64>,
        demand: &HashMap<(String, String), u64>,
    ) -> Result<(), StorageError> {
        if pulls.is_empty() && demand.is_empty() {
            return Ok(());
        }
        self.kv.write(|tx| {
            for ((repo, digest), time) in pulls {
                let key = (repo.as_str(), &*digest.to_string());
                let old = tx.get(PULLED, key)?;
                if old.is_none_or(|old| old < *time) {
                    tx.insert(PULLED, key, *time)?;
                }
            }
            for ((repo, tag), time) in demand {
                let found = tx.get(EVICTED, (repo, tag))?;
                let Some(mut row) = found.map(|v| from_json::<EvictedTag>(&v)).transpose()? else {
                    continue;
                };
                if *time >= row.evicted_at && row.demanded_at.is_none_or(|d| d < *time) {
                    row.demanded_at = Some(*time);
                    tx.insert(EVICTED, (repo, tag), &json(&row))?;
                }
            }
            Ok(())
        })
    }

    /// Synced tags that may be evicted, least recently used first. `recent` holds pull times
    /// not flushed yet.
    pub fn eviction_candidates(
        &self,
        recent: &HashMap<(String, Digest), u64>,
    ) -> Result<Vec<EvictionCandidate>, StorageError> {
        self.kv.read(|tx| {
            let last_pull = |repo: &str, digest: &str| -> Result<u64, StorageError> {
                let stored = tx.get(PULLED, (repo, digest))?.unwrap_or(0);
                let fresh = digest
                    .parse::<Digest>()
                    .ok()
                    .and_then(|d| recent.get(&(repo.to_owned(), d)).copied())
                    .unwrap_or(0);
                Ok(stored.max(fresh))
            };
            let mut out = Vec::new();
            for row in tx.iter(SYNCED_TAGS) {
                let ((repo, tag), synced_at) = row?;
                let Some(digest) = tx.get(TAGS, (&repo, &tag))? else {
                    continue;
                };
                let mut last_used = synced_at.max(last_pull(&repo, &digest)?);
                // An index is used when a client pulls one of its platforms.
                if let Some(meta) = tx.get(MANIFESTS, (&repo, &digest))? {
                    let meta: ManifestMeta = from_json(&meta)?;
                    for child in &meta.refs {
                        let child = child.to_string();
                        if tx.contains(MANIFESTS, (&repo, &child))? {
                            last_used = last_used.max(last_pull(&repo, &child)?);
                        }
                    }
                }
                out.push(EvictionCandidate {
                    on_demand: tx.contains(ON_DEMAND, (&repo, &tag))?,
                    repo,
                    tag,
                    last_used,
                });
            }
            // Content fetched on demand goes first, then the least recently used.
            let rank = |c: &EvictionCandidate| (!c.on_demand, c.last_used);
            out.sort_by(|a, b| (rank(a), &a.repo, &a.tag).cmp(&(rank(b), &b.repo, &b.tag)));
            Ok(out)
        })
    }

    /// Evicts the synced tag `repo:tag` in one transaction: removes the tag, the manifests only
    /// it needed (an index's children, referrers of what goes), the blob links only those
    /// manifests needed, and records it as evicted. No change is logged. `None` when the tag is
    /// gone, no longer one sync wrote, or locked (`deleteEnabled` or `writeEnabled` off on it,
    /// its manifest or its repository): checked here, in the transaction.
    ///
    /// A blob link newer than the time sync set the tag is left to GC: a client may have just
    /// uploaded that blob for a manifest it is about to push.
    pub fn evict_tag(&self, repo: &str, tag: &str) -> Result<Option<Evicted>, StorageError> {
        self.write_repo(repo, |tx| evict(tx, repo, tag))
    }

    /// Forgets that `repo:tag` was evicted (sync found it gone at the parent). Whether it was.
    pub fn forget_evicted(&self, repo: &str, tag: &str) -> Result<bool, StorageError> {
        self.kv
            .write(|tx| Ok(tx.remove(EVICTED, (repo, tag))?.is_some()))
    }
}

/// [`Meta::evict_tag`] inside its transaction.
fn evict(tx: &Write, repo: &str, tag: &str) -> Result<Option<Evicted>, StorageError> {
    let Some(synced_at) = tx.get(SYNCED_TAGS, (repo, tag))? else {
        return Ok(None);
    };
    let Some(digest) = tx.get(TAGS, (repo, tag))? else {
        return Ok(None);
    };
    let digest = parse_digest(&digest)?;
    if super::props::pinned(tx, repo, tag, &digest)? {
        return Ok(None);
    }
    let mut manifests: HashMap<Digest, ManifestMeta> = HashMap::new();
    for row in tx.prefix(MANIFESTS, &[repo]) {
        let ((_, d), value) = row?;
        manifests.insert(parse_digest(&d)?, from_json(&value)?);
    }
    let mut roots: Vec<Digest> = Vec::new();
    for row in tx.prefix(TAGS, &[repo]) {
        let ((_, t), d) = row?;
        if t != tag {
            roots.push(parse_digest(&d)?);
        }
    }
    let closure = reach(&manifests, [digest.clone()]);
    roots.extend(manifests.keys().filter(|d| !closure.contains(*d)).cloned());
    let keep = reach(&manifests, roots);
    let removed: Vec<Digest> = closure.difference(&keep).cloned().collect();

    let mut files: Vec<(Digest, u64)> = Vec::new();
    for d in &removed {
        let d_s = d.to_string();
        tx.remove(MANIFESTS, (repo, &d_s))?;
        tx.remove(PULLED, (repo, &d_s))?;
        if let Some(subject) = manifests.get(d).and_then(|m| m.subject.as_ref()) {
            tx.remove(REFERRERS, (repo, &subject.to_string(), &d_s))?;
        }
        files.push((d.clone(), manifests.get(d).map(|m| m.size).unwrap_or(0)));
    }
    let needed: HashSet<&Digest> = keep
        .iter()
        .filter_map(|d| manifests.get(d))
        .flat_map(|m| m.refs.iter())
        .collect();
    let blobs: HashSet<&Digest> = removed
        .iter()
        .filter_map(|d| manifests.get(d))
        .flat_map(|m| m.refs.iter())
        .filter(|b| !manifests.contains_key(*b) && !needed.contains(*b))
        .collect();
    for blob in blobs {
        let key = blob.to_string();
        if let Some((size, linked_at)) = tx.get(REPO_BLOBS, (repo, &key))? {
            if linked_at <= synced_at {
                tx.remove(REPO_BLOBS, (repo, &key))?;
                files.push((blob.clone(), size));
            }
        }
    }
    // Files another repository still links or holds as a manifest stay.
    let mut elsewhere: HashSet<String> = HashSet::new();
    for key in tx.iter(REPO_BLOBS).keys() {
        elsewhere.insert(key?.1);
    }
    for key in tx.iter(MANIFESTS).keys() {
        elsewhere.insert(key?.1);
    }
    files.retain(|(d, _)| !elsewhere.contains(&d.to_string()));
    let bytes = files.iter().map(|(_, size)| size).sum();
    tx.remove(TAGS, (repo, tag))?;
    tx.remove(SYNCED_TAGS, (repo, tag))?;
    let row = EvictedTag {
        digest: digest.clone(),
        bytes,
        evicted_at: now(),
        demanded_at: None,
    };
    tx.insert(EVICTED, (repo, tag), &json(&row))?;
    util::crash_point::crash_point("in_meta_transaction");
    Ok(Some(Evicted {
        digest,
        bytes,
        files: files.into_iter().map(|(d, _)| d).collect(),
    }))
}

/// Evicted tags of `repo` in name order.
pub(super) fn evicted_in(tx: &Read, repo: &str) -> Result<Vec<(String, EvictedTag)>, StorageError> {
    tx.prefix(EVICTED, &[repo])
        .map(|row| {
            let ((_, tag), value) = row?;
            Ok((tag, from_json(&value)?))
        })
        .collect()
}

/// The manifests of one repository reached from `start` through references, and referrers of
/// what is reached (a signature goes and stays with its subject).
fn reach(
    manifests: &HashMap<Digest, ManifestMeta>,
    start: impl IntoIterator<Item = Digest>,
) -> HashSet<Digest> {
    let mut reached: HashSet<Digest> = start
        .into_iter()
        .filter(|d| manifests.contains_key(d))
        .collect();
    loop {
        let mut grew = false;
        for (digest, meta) in manifests {
            if reached.contains(digest) {
                for child in meta.refs.iter().filter(|c| manifests.contains_key(*c)) {
                    grew |= reached.insert(child.clone());
                }
            } else if meta.subject.as_ref().is_some_and(|s| reached.contains(s)) {
                grew |= reached.insert(digest.clone());
            }
        }
        if !grew {
            return reached;
        }
    }
}
