//! What the storage quota (`serve --quota`) keeps in redb: which tags sync wrote (only those may
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

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    from_json, json, now, parse_digest, ManifestMeta, Meta, RecordKind, CHANGES, MANIFESTS,
    REFERRERS, REPO_BLOBS, TAGS,
};
use crate::storage::StorageError;
use oci::{Digest, Origin};

/// (repo, tag) -> unix seconds when sync last set the tag. A tag a client set is not here.
pub(super) const SYNCED_TAGS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("synced_tags");
/// (repo, tag) -> unix seconds when a pull fetched the tag from the parent on demand
/// (pull-through): such tags are evicted before the ones sync keeps. Cleared when the tag is
/// set or deleted again.
pub(super) const ON_DEMAND: TableDefinition<(&str, &str), u64> = TableDefinition::new("on_demand");
/// (repo, manifest digest) -> unix seconds of the last GET that served it (as last flushed).
pub(super) const PULLED: TableDefinition<(&str, &str), u64> = TableDefinition::new("pulled");
/// (repo, tag) -> [`EvictedTag`] as JSON: a synced tag evicted to stay under the quota.
pub(super) const EVICTED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("evicted");

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
    tx: &WriteTransaction,
    repo: &str,
    origin: Origin,
    kind: &RecordKind,
    time: u64,
) -> Result<(), StorageError> {
    match kind {
        RecordKind::TagSet { tag, .. } => {
            let mut synced = tx.open_table(SYNCED_TAGS)?;
            if origin == Origin::Sync {
                synced.insert((repo, tag.as_str()), time)?;
            } else {
                synced.remove((repo, tag.as_str()))?;
            }
            tx.open_table(EVICTED)?.remove((repo, tag.as_str()))?;
            tx.open_table(ON_DEMAND)?.remove((repo, tag.as_str()))?;
        }
        RecordKind::TagDeleted { tag } => {
            tx.open_table(ON_DEMAND)?.remove((repo, tag.as_str()))?;
            tx.open_table(SYNCED_TAGS)?.remove((repo, tag.as_str()))?;
            tx.open_table(EVICTED)?.remove((repo, tag.as_str()))?;
        }
        _ => {}
    }
    Ok(())
}

/// Drops what the quota tables hold for a deleted repository.
pub(super) fn forget_repo(tx: &WriteTransaction, repo: &str) -> Result<(), StorageError> {
    let mut synced = tx.open_table(SYNCED_TAGS)?;
    for key in keys(&synced, repo)? {
        synced.remove((repo, key.as_str()))?;
    }
    let mut evicted = tx.open_table(EVICTED)?;
    for key in keys(&evicted, repo)? {
        evicted.remove((repo, key.as_str()))?;
    }
    let mut pulled = tx.open_table(PULLED)?;
    for key in keys(&pulled, repo)? {
        pulled.remove((repo, key.as_str()))?;
    }
    let mut on_demand = tx.open_table(ON_DEMAND)?;
    for key in keys(&on_demand, repo)? {
        on_demand.remove((repo, key.as_str()))?;
    }
    Ok(())
}

fn keys<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    repo: &str,
) -> Result<Vec<String>, StorageError> {
    let mut out = Vec::new();
    for entry in table.range((repo, "")..)? {
        let (key, _) = entry?;
        let (r, k) = key.value();
        if r != repo {
            break;
        }
        out.push(k.to_owned());
    }
    Ok(out)
}

/// Fills `synced_tags` once, when a store from before it is opened: a tag whose newest change
/// still in the log is a sync's `TagSet` to the digest it points at now was written by sync.
/// Tags whose changes were pruned stay unevictable (the safe side).
pub(super) fn backfill(tx: &WriteTransaction) -> Result<(), StorageError> {
    let mut newest: HashMap<(String, String), Option<String>> = HashMap::new();
    for entry in tx.open_table(CHANGES)?.iter()? {
        let (_, value) = entry?;
        let record: super::Record = from_json(value.value())?;
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
    let tags = tx.open_table(TAGS)?;
    let mut synced = tx.open_table(SYNCED_TAGS)?;
    let time = now();
    for ((repo, tag), digest) in newest {
        let Some(digest) = digest else { continue };
        if tags
            .get((repo.as_str(), tag.as_str()))?
            .map(|v| v.value() == digest)
            == Some(true)
        {
            synced.insert((repo.as_str(), tag.as_str()), time)?;
        }
    }
    Ok(())
}

impl Meta {
    /// The evicted tag `repo:tag`, if it is one.
    pub fn evicted_tag(&self, repo: &str, tag: &str) -> Result<Option<EvictedTag>, StorageError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVICTED)?;
        let found = table.get((repo, tag))?;
        found.map(|v| from_json(v.value())).transpose()
    }

    /// Every evicted tag of `repo`, in name order.
    pub fn evicted_tags(&self, repo: &str) -> Result<Vec<(String, EvictedTag)>, StorageError> {
        let tx = self.db.begin_read()?;
        evicted_in(&tx.open_table(EVICTED)?, repo)
    }

    /// Every evicted tag: (repo, tag, row).
    pub fn all_evicted(&self) -> Result<Vec<(String, String, EvictedTag)>, StorageError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in tx.open_table(EVICTED)?.iter()? {
            let (key, value) = entry?;
            let (repo, tag) = key.value();
            out.push((repo.to_owned(), tag.to_owned(), from_json(value.value())?));
        }
        Ok(out)
    }

    /// Records that the synced tag `repo:tag` was fetched on demand (pull-through): it is
    /// evicted before the tags sync keeps. A no-op unless the tag is one sync wrote.
    pub fn mark_on_demand(&self, repo: &str, tag: &str) -> Result<(), StorageError> {
        let tx = self.begin_write()?;
        if tx.open_table(SYNCED_TAGS)?.get((repo, tag))?.is_some() {
            tx.open_table(ON_DEMAND)?.insert((repo, tag), now())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether `repo:tag` was fetched on demand and not set since.
    pub fn is_on_demand(&self, repo: &str, tag: &str) -> Result<bool, StorageError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ON_DEMAND)?.get((repo, tag))?.is_some())
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
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(PULLED)?;
            for ((repo, digest), time) in pulls {
                let key = (repo.as_str(), digest.to_string());
                let old = table.get((key.0, key.1.as_str()))?.map(|v| v.value());
                if old.is_none_or(|old| old < *time) {
                    table.insert((key.0, key.1.as_str()), *time)?;
                }
            }
            let mut evicted = tx.open_table(EVICTED)?;
            for ((repo, tag), time) in demand {
                let found = evicted.get((repo.as_str(), tag.as_str()))?;
                let Some(mut row) = found
                    .map(|v| from_json::<EvictedTag>(v.value()))
                    .transpose()?
                else {
                    continue;
                };
                if *time >= row.evicted_at && row.demanded_at.is_none_or(|d| d < *time) {
                    row.demanded_at = Some(*time);
                    evicted.insert((repo.as_str(), tag.as_str()), json(&row).as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Synced tags that may be evicted, least recently used first. `recent` holds pull times
    /// not flushed yet.
    pub fn eviction_candidates(
        &self,
        recent: &HashMap<(String, Digest), u64>,
    ) -> Result<Vec<EvictionCandidate>, StorageError> {
        let tx = self.db.begin_read()?;
        let tags = tx.open_table(TAGS)?;
        let manifests = tx.open_table(MANIFESTS)?;
        let pulled = tx.open_table(PULLED)?;
        let on_demand = tx.open_table(ON_DEMAND)?;
        let last_pull = |repo: &str, digest: &str| -> Result<u64, StorageError> {
            let stored = pulled.get((repo, digest))?.map(|v| v.value()).unwrap_or(0);
            let fresh = digest
                .parse::<Digest>()
                .ok()
                .and_then(|d| recent.get(&(repo.to_owned(), d)).copied())
                .unwrap_or(0);
            Ok(stored.max(fresh))
        };
        let mut out = Vec::new();
        for entry in tx.open_table(SYNCED_TAGS)?.iter()? {
            let (key, value) = entry?;
            let (repo, tag) = key.value();
            let Some(digest) = tags.get((repo, tag))?.map(|v| v.value().to_owned()) else {
                continue;
            };
            let mut last_used = value.value().max(last_pull(repo, &digest)?);
            // An index is used when a client pulls one of its platforms.
            if let Some(meta) = manifests.get((repo, digest.as_str()))? {
                let meta: ManifestMeta = from_json(meta.value())?;
                for child in &meta.refs {
                    let child = child.to_string();
                    if manifests.get((repo, child.as_str()))?.is_some() {
                        last_used = last_used.max(last_pull(repo, &child)?);
                    }
                }
            }
            out.push(EvictionCandidate {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                last_used,
                on_demand: on_demand.get((repo, tag))?.is_some(),
            });
        }
        // Content fetched on demand goes first, then the least recently used.
        let rank = |c: &EvictionCandidate| (!c.on_demand, c.last_used);
        out.sort_by(|a, b| (rank(a), &a.repo, &a.tag).cmp(&(rank(b), &b.repo, &b.tag)));
        Ok(out)
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
        let tx = self.begin_write()?;
        let Some(synced_at) = tx
            .open_table(SYNCED_TAGS)?
            .get((repo, tag))?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let Some(digest) = tx
            .open_table(TAGS)?
            .get((repo, tag))?
            .map(|v| v.value().to_owned())
        else {
            return Ok(None);
        };
        let digest = parse_digest(&digest)?;
        if super::props::pinned(&tx, repo, tag, &digest)? {
            return Ok(None);
        }
        let mut manifests: HashMap<Digest, ManifestMeta> = HashMap::new();
        for entry in tx.open_table(MANIFESTS)?.range((repo, "")..)? {
            let (key, value) = entry?;
            let (r, d) = key.value();
            if r != repo {
                break;
            }
            manifests.insert(parse_digest(d)?, from_json(value.value())?);
        }
        let mut roots: Vec<Digest> = Vec::new();
        for entry in tx.open_table(TAGS)?.range((repo, "")..)? {
            let (key, value) = entry?;
            let (r, t) = key.value();
            if r != repo {
                break;
            }
            if t != tag {
                roots.push(parse_digest(value.value())?);
            }
        }
        let closure = reach(&manifests, [digest.clone()]);
        roots.extend(manifests.keys().filter(|d| !closure.contains(*d)).cloned());
        let keep = reach(&manifests, roots);
        let removed: Vec<Digest> = closure.difference(&keep).cloned().collect();

        let mut files: Vec<(Digest, u64)> = Vec::new();
        {
            let mut table = tx.open_table(MANIFESTS)?;
            let mut referrers = tx.open_table(REFERRERS)?;
            let mut pulled = tx.open_table(PULLED)?;
            for d in &removed {
                let d_s = d.to_string();
                table.remove((repo, d_s.as_str()))?;
                pulled.remove((repo, d_s.as_str()))?;
                if let Some(subject) = manifests.get(d).and_then(|m| m.subject.as_ref()) {
                    referrers.remove((repo, subject.to_string().as_str(), d_s.as_str()))?;
                }
                files.push((d.clone(), manifests.get(d).map(|m| m.size).unwrap_or(0)));
            }
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
        {
            let mut links = tx.open_table(REPO_BLOBS)?;
            for blob in blobs {
                let key = blob.to_string();
                let link = links.get((repo, key.as_str()))?.map(|v| v.value());
                if let Some((size, linked_at)) = link {
                    if linked_at <= synced_at {
                        links.remove((repo, key.as_str()))?;
                        files.push((blob.clone(), size));
                    }
                }
            }
        }
        // Files another repository still links or holds as a manifest stay.
        let mut elsewhere: HashSet<String> = HashSet::new();
        for entry in tx.open_table(REPO_BLOBS)?.iter()? {
            elsewhere.insert(entry?.0.value().1.to_owned());
        }
        for entry in tx.open_table(MANIFESTS)?.iter()? {
            elsewhere.insert(entry?.0.value().1.to_owned());
        }
        files.retain(|(d, _)| !elsewhere.contains(&d.to_string()));
        let bytes = files.iter().map(|(_, size)| size).sum();
        tx.open_table(TAGS)?.remove((repo, tag))?;
        tx.open_table(SYNCED_TAGS)?.remove((repo, tag))?;
        let row = EvictedTag {
            digest: digest.clone(),
            bytes,
            evicted_at: now(),
            demanded_at: None,
        };
        tx.open_table(EVICTED)?
            .insert((repo, tag), json(&row).as_slice())?;
        util::crash_point::crash_point("in_meta_transaction");
        tx.commit()?;
        Ok(Some(Evicted {
            digest,
            bytes,
            files: files.into_iter().map(|(d, _)| d).collect(),
        }))
    }

    /// Forgets that `repo:tag` was evicted (sync found it gone at the parent). Whether it was.
    pub fn forget_evicted(&self, repo: &str, tag: &str) -> Result<bool, StorageError> {
        let tx = self.begin_write()?;
        let removed = tx.open_table(EVICTED)?.remove((repo, tag))?.is_some();
        tx.commit()?;
        Ok(removed)
    }
}

/// Evicted tags of `repo` in name order.
pub(super) fn evicted_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    repo: &str,
) -> Result<Vec<(String, EvictedTag)>, StorageError> {
    let mut out = Vec::new();
    for entry in table.range((repo, "")..)? {
        let (key, value) = entry?;
        let (r, tag) = key.value();
        if r != repo {
            break;
        }
        out.push((tag.to_owned(), from_json(value.value())?));
    }
    Ok(out)
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
