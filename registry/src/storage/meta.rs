//! The metadata (ACID, crash-safe): tags, manifests per repository, blob links, referrers, and
//! the change log, written once over the key-value contract (`kv`), so the same rules hold on
//! redb and on PostgreSQL. Each change to tags, manifests or their attributes is logged in the
//! same transaction. `props` keeps the `changeableAttributes` and the times the `/acr/v1` API
//! shows; `quota` keeps which tags sync wrote, pull times and evicted tags (`serve --quota`);
//! `resolved` is this replica's cache of resolutions (shared metadata); `lease` the leases
//! replicas take (sync's), and `sync_state` sync's progress when the metadata is shared.

use std::ops::Bound;
use std::sync::Arc;

use util::time::now_secs as now;

use serde::{Deserialize, Serialize};

use crate::storage::kv::{Kv, Read, Table, Value, Write};
use crate::storage::StorageError;
use oci::digest::Digest;
use oci::reference::Reference;
use oci::{Change, ChangeKind, ChangeableAttributes, Descriptor, Origin};

mod props;
pub use props::{refusal, Attribute, ManifestProps, RepoProps, TagProps, Target};
mod quota;
use props::{require, Attribute as A};
pub use quota::{Evicted, EvictedTag, EvictionCandidate};
mod resolved;
pub use resolved::CacheSettings;
use resolved::ResolutionCache;
mod lease;
pub use lease::{Fence, LeaseAttempt, LeaseRow};
mod sync_state;

/// (repo, tag) -> manifest digest.
const TAGS: Table<(String, String), String> = Table::new("tags");
/// (repo, manifest digest) -> `ManifestMeta` as JSON.
const MANIFESTS: Table<(String, String), Vec<u8>> = Table::new("manifests");
/// (repo, blob digest) -> (size, unix time linked): which blobs a repository may serve and
/// reference; the time lets GC spare a blob pushed moments before its manifest.
const REPO_BLOBS: Table<(String, String), (u64, u64)> = Table::new("repo_blobs");
/// (repo, subject digest, referrer digest) -> referrer `Descriptor` as JSON.
const REFERRERS: Table<(String, String, String), Vec<u8>> = Table::new("referrers");
/// repo -> unix time of its first manifest: the catalog.
const REPOS: Table<String, u64> = Table::new("repos");
/// seq -> `Record` as JSON: the feed for children and for the upward push.
const CHANGES: Table<u64, Vec<u8>> = Table::new("changes");

/// What the registry keeps about a manifest in a repository (its bytes are a blob file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestMeta {
    pub media_type: String,
    pub size: u64,
    /// Blobs and child manifests it references: nothing they name may go while it stays.
    pub refs: Vec<Digest>,
    #[serde(default)]
    pub subject: Option<Digest>,
    /// Children of an index deliberately not stored here (sync's platform filter). They may
    /// be absent; everything else in `refs` must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Digest>,
    /// Unix seconds when it was first stored: GC spares young manifests.
    #[serde(default)]
    pub pushed_at: u64,
}

/// One entry of the change log as stored in redb. Private: the feed children read is
/// `oci::Change`, converted from this in one place (`From<Record> for Change`), so the stored
/// form and the wire form can each change without the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    seq: u64,
    /// Unix seconds.
    time: u64,
    repo: String,
    origin: RecordOrigin,
    #[serde(flatten)]
    kind: RecordKind,
}

/// [`Origin`] as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordOrigin {
    Client,
    Sync,
    Gc,
}

/// What changed, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordKind {
    ManifestPut {
        digest: Digest,
        media_type: String,
    },
    ManifestDeleted {
        digest: Digest,
    },
    TagSet {
        tag: String,
        digest: Digest,
    },
    TagDeleted {
        tag: String,
    },
    AttributesSet {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<Digest>,
        attributes: ChangeableAttributes,
    },
}

impl From<Origin> for RecordOrigin {
    fn from(origin: Origin) -> RecordOrigin {
        match origin {
            Origin::Client => RecordOrigin::Client,
            Origin::Sync => RecordOrigin::Sync,
            Origin::Gc => RecordOrigin::Gc,
        }
    }
}

/// The one conversion from the stored record to the feed's change.
impl From<Record> for Change {
    fn from(record: Record) -> Change {
        Change {
            seq: record.seq,
            time: record.time,
            repo: record.repo,
            origin: match record.origin {
                RecordOrigin::Client => Origin::Client,
                RecordOrigin::Sync => Origin::Sync,
                RecordOrigin::Gc => Origin::Gc,
            },
            kind: match record.kind {
                RecordKind::ManifestPut { digest, media_type } => {
                    ChangeKind::ManifestPut { digest, media_type }
                }
                RecordKind::ManifestDeleted { digest } => ChangeKind::ManifestDeleted { digest },
                RecordKind::TagSet { tag, digest } => ChangeKind::TagSet { tag, digest },
                RecordKind::TagDeleted { tag } => ChangeKind::TagDeleted { tag },
                RecordKind::AttributesSet {
                    tag,
                    digest,
                    attributes,
                } => ChangeKind::AttributesSet {
                    tag,
                    digest,
                    attributes,
                },
            },
        }
    }
}

/// A page of the change log with its bounds (see `Meta::change_page`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePage {
    /// The newest sequence number (0 when nothing was ever logged).
    pub head: u64,
    /// The oldest sequence number still kept (`head + 1` when the log is empty).
    pub oldest: u64,
    pub changes: Vec<Change>,
}

pub struct Meta {
    kv: Kv,
    /// This replica's cache of resolutions (shared metadata only; see `resolved`).
    resolved: Option<ResolutionCache>,
}

/// What a manifest reference resolves to in a repository, read in one snapshot.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub digest: Digest,
    pub meta: ManifestMeta,
    /// The first item on the way (repository, tag, manifest) that has `readEnabled: false`.
    pub unreadable: Option<Target>,
}

/// How current a resolution must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// As the metadata holds it now: for a caller that decides a write on it (sync).
    Current,
    /// From this replica's cache when it holds one (at most `--metadata-cache-ttl` old, this
    /// replica's own writes always seen): what clients are served.
    Cached,
}

/// A manifest about to be stored, with what must be checked first.
pub struct NewManifest<'a> {
    pub repo: &'a str,
    pub digest: &'a Digest,
    pub meta: &'a ManifestMeta,
    /// Blobs it references with the sizes its descriptors claim.
    pub blob_sizes: &'a [(Digest, u64)],
    /// (subject, descriptor of this manifest) for the referrers index.
    pub referrer: Option<(&'a Digest, &'a Descriptor)>,
    pub tag: Option<&'a str>,
    pub origin: Origin,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("metadata serializes")
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Db(format!("corrupt record: {e}")))
}

/// Appends a change to the log inside `tx`.
fn log(tx: &Write, repo: &str, origin: Origin, kind: RecordKind) -> Result<(), StorageError> {
    let time = now();
    props::touch(tx, repo, &kind, time)?;
    quota::on_logged(tx, repo, origin, &kind, time)?;
    let seq = tx.last(CHANGES)?.map(|(k, _)| k).unwrap_or(0) + 1;
    let change = Record {
        seq,
        time,
        repo: repo.to_owned(),
        origin: origin.into(),
        kind,
    };
    tx.insert(CHANGES, seq, &json(&change))?;
    Ok(())
}

/// Rows of a `(repo, key)` table for `repo` with keys after `after` (all when it is empty),
/// at most `limit`, as (key, value).
fn scan_repo<V: Value>(
    tx: &Read,
    table: Table<(String, String), V>,
    repo: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, V)>, StorageError> {
    let mut rows = tx.prefix(table, &[repo]);
    if !after.is_empty() {
        rows = rows.starting(Bound::Excluded((repo, after)));
    }
    rows.take(limit)
        .map(|row| row.map(|((_, key), value)| (key, value)))
        .collect()
}

/// Tags of `repo` that point at `digest`.
fn tags_pointing(tx: &Read, repo: &str, digest: &str) -> Result<Vec<String>, StorageError> {
    Ok(scan_repo(tx, TAGS, repo, "", usize::MAX)?
        .into_iter()
        .filter(|(_, d)| d == digest)
        .map(|(t, _)| t)
        .collect())
}

/// Whether the manifest `digest` of `repo` is a referrer whose subject is stored in `repo`.
fn subject_present(tx: &Read, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
    let Some(meta) = tx.get(MANIFESTS, (repo, &digest.to_string()))? else {
        return Ok(false);
    };
    let Some(subject) = from_json::<ManifestMeta>(&meta)?.subject else {
        return Ok(false);
    };
    tx.contains(MANIFESTS, (repo, &subject.to_string()))
}

/// Removes a manifest from `repo` inside `tx`, with its referrers entry and the tags that point
/// at it, logging each. Refused (`Denied`) while another manifest there references it: that
/// index would then point at missing content.
fn remove_manifest(
    tx: &Write,
    repo: &str,
    digest: &Digest,
    origin: Origin,
) -> Result<(), StorageError> {
    let digest_s = digest.to_string();
    let mut this = None;
    for (other, meta) in scan_repo(tx, MANIFESTS, repo, "", usize::MAX)? {
        let meta: ManifestMeta = from_json(&meta)?;
        if other == digest_s {
            this = Some(meta);
        } else if meta.refs.contains(digest) {
            return Err(StorageError::Denied(format!(
                "manifest {digest} is referenced by {other} in this repository: delete that first"
            )));
        }
    }
    let meta = this.ok_or(StorageError::ManifestUnknown)?;
    tx.remove(MANIFESTS, (repo, &digest_s))?;
    if let Some(subject) = &meta.subject {
        tx.remove(REFERRERS, (repo, &subject.to_string(), &digest_s))?;
    }
    let pointing = tags_pointing(tx, repo, &digest_s)?;
    for tag in &pointing {
        tx.remove(TAGS, (repo, tag))?;
    }
    for tag in pointing {
        log(tx, repo, origin, RecordKind::TagDeleted { tag })?;
    }
    log(
        tx,
        repo,
        origin,
        RecordKind::ManifestDeleted {
            digest: digest.clone(),
        },
    )
}

impl Meta {
    /// The metadata in `kv`, its tables created when missing, with a cache of resolutions
    /// (`cache`; off with a zero TTL). A store from before the quota tables learns which tags
    /// sync wrote from its change log.
    pub(crate) fn open(kv: Kv, cache: CacheSettings) -> Result<Meta, StorageError> {
        kv.write(|tx| {
            let quota_tables_new = tx.create_table(quota::SYNCED_TAGS.def())?;
            for table in [
                TAGS.def(),
                MANIFESTS.def(),
                REPO_BLOBS.def(),
                REFERRERS.def(),
                REPOS.def(),
                CHANGES.def(),
                props::ATTRIBUTES.def(),
                props::TIMES.def(),
                quota::PULLED.def(),
                quota::EVICTED.def(),
                quota::ON_DEMAND.def(),
                lease::LEASES.def(),
                sync_state::SYNC_STATE.def(),
            ] {
                tx.create_table(table)?;
            }
            if quota_tables_new {
                quota::backfill(tx)?;
            }
            Ok(())
        })?;
        Ok(Meta {
            kv,
            resolved: ResolutionCache::new(cache),
        })
    }

    /// Runs a write that may change what `resolve` answers in `repo` (a tag, a manifest, an
    /// attribute): this replica's cache forgets the repository once the write ended, committed
    /// or not (a failed commit may have committed), so this replica reads its own writes.
    fn write_repo<T>(
        &self,
        repo: &str,
        write: impl FnMut(&Write<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let out = self.kv.write(write);
        if let Some(cache) = &self.resolved {
            cache.forget(repo);
        }
        out
    }

    pub fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let digest = digest.to_string();
        self.kv
            .read(|tx| Ok(tx.get(REPO_BLOBS, (repo, &digest))?.map(|(size, _)| size)))
    }

    pub fn link_blob(&self, repo: &str, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let digest = digest.to_string();
        self.kv.write(|tx| {
            tx.insert(REPO_BLOBS, (repo, &digest), (size, now()))?;
            util::crash_point::crash_point("in_meta_transaction");
            Ok(())
        })
    }

    /// Removes a blob from a repository unless a manifest there still references it.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<(), StorageError> {
        self.kv.write(|tx| {
            for (manifest, meta) in scan_repo(tx, MANIFESTS, repo, "", usize::MAX)? {
                let meta: ManifestMeta = from_json(&meta)?;
                if meta.refs.contains(digest) {
                    return Err(StorageError::Denied(format!(
                        "blob {digest} is referenced by manifest {manifest} in this repository: delete that manifest first"
                    )));
                }
            }
            if tx.remove(REPO_BLOBS, (repo, &digest.to_string()))?.is_none() {
                return Err(StorageError::BlobUnknown(digest.clone()));
            }
            Ok(())
        })
    }

    /// The digest and record of the manifest a tag or digest names in `repo`, with the first
    /// item on the way that has `readEnabled: false`, read in one snapshot (or, with
    /// [`Lookup::Cached`], from this replica's cache): this is every manifest GET, the hottest
    /// path there is.
    pub fn resolve(
        &self,
        repo: &str,
        reference: &Reference,
        lookup: Lookup,
    ) -> Result<Option<Arc<Resolution>>, StorageError> {
        let cache = match (&self.resolved, lookup) {
            (Some(cache), Lookup::Cached) => cache,
            _ => return self.read_resolution(repo, reference),
        };
        let reference_s = reference.to_string();
        let miss = match cache.lookup(repo, &reference_s) {
            Ok(hit) => return Ok(Some(hit)),
            Err(miss) => miss,
        };
        let found = self.read_resolution(repo, reference)?;
        if let Some(resolution) = &found {
            cache.store(miss, repo, &reference_s, resolution);
        }
        Ok(found)
    }

    /// [`Meta::resolve`] from the metadata.
    fn read_resolution(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<Arc<Resolution>>, StorageError> {
        self.kv.read(|tx| {
            let digest = match reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(tag) => match tx.get(TAGS, (repo, tag.as_str()))? {
                    Some(v) => parse_digest(&v)?,
                    None => return Ok(None),
                },
            };
            let Some(found) = tx.get(MANIFESTS, (repo, &digest.to_string()))? else {
                return Ok(None);
            };
            let mut through = Vec::with_capacity(2);
            if let Reference::Tag(tag) = reference {
                through.push(Target::Tag(tag.as_str().to_owned()));
            }
            through.push(Target::Manifest(digest.clone()));
            let unreadable = props::unreadable(tx, repo, &through)?;
            Ok(Some(Arc::new(Resolution {
                digest,
                meta: from_json(&found)?,
                unreadable,
            })))
        })
    }

    /// Stores a manifest (and optionally a tag) once everything it references is present in
    /// the repository; checks and writes in one transaction, so no concurrent delete slips between.
    /// `install` runs after the checks pass and before the commit: it puts the manifest's bytes
    /// in place, so a refused manifest leaves nothing behind. When the transaction runs again
    /// (the metadata backend was briefly unreachable) `install` runs again too: it must bear
    /// that.
    pub fn put_manifest(
        &self,
        new: NewManifest<'_>,
        mut install: impl FnMut() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let NewManifest {
            repo,
            digest,
            meta,
            blob_sizes,
            referrer,
            tag,
            origin,
        } = new;
        let digest_s = digest.to_string();
        self.write_repo(repo, |tx| {
            require(tx, repo, origin, &[], &[A::Write], "pushed to")?;
            if let Some(tag) = tag {
                let previous = tx.get(TAGS, (repo, tag))?;
                if let Some(previous) = previous.filter(|p| *p != digest_s) {
                    let targets = [
                        Target::Tag(tag.to_owned()),
                        Target::Manifest(parse_digest(&previous)?),
                    ];
                    require(tx, repo, origin, &targets, &[A::Write], "overwritten")?;
                }
            }
            for (blob, size) in blob_sizes {
                match tx.get(REPO_BLOBS, (repo, &blob.to_string()))? {
                    None => return Err(StorageError::ManifestBlobUnknown(blob.clone())),
                    Some((actual, _)) if actual != *size => {
                        return Err(StorageError::ManifestInvalid(format!(
                            "descriptor for {blob} says {size} bytes, but the blob has {actual} bytes"
                        )))
                    }
                    Some(_) => {}
                }
            }
            // A partial index stored again (a client re-tagging it) keeps what it left out.
            let mut meta = meta.clone();
            if meta.skipped.is_empty() {
                if let Some(stored) = tx.get(MANIFESTS, (repo, &digest_s))? {
                    meta.skipped = from_json::<ManifestMeta>(&stored)?.skipped;
                }
            }
            let mut skipped = Vec::new();
            for child in meta
                .refs
                .iter()
                .filter(|d| !blob_sizes.iter().any(|(b, _)| b == *d))
            {
                if !tx.contains(MANIFESTS, (repo, &child.to_string()))? {
                    if !meta.skipped.contains(child) {
                        return Err(StorageError::ManifestBlobUnknown(child.clone()));
                    }
                    skipped.push(child.clone());
                }
            }
            meta.skipped = skipped;
            install()?;
            let existed = tx
                .insert(MANIFESTS, (repo, &digest_s), &json(&meta))?
                .is_some();
            if !existed {
                log(
                    tx,
                    repo,
                    origin,
                    RecordKind::ManifestPut {
                        digest: digest.clone(),
                        media_type: meta.media_type.clone(),
                    },
                )?;
            }
            if let Some((subject, descriptor)) = referrer {
                tx.insert(
                    REFERRERS,
                    (repo, &subject.to_string(), &digest_s),
                    &json(descriptor),
                )?;
            }
            if !tx.contains(REPOS, repo)? {
                tx.insert(REPOS, repo, now())?;
            }
            if let Some(tag) = tag {
                let previous = tx.insert(TAGS, (repo, tag), &digest_s)?;
                if previous.as_deref() != Some(digest_s.as_str()) {
                    log(
                        tx,
                        repo,
                        origin,
                        RecordKind::TagSet {
                            tag: tag.to_owned(),
                            digest: digest.clone(),
                        },
                    )?;
                }
            }
            util::crash_point::crash_point("in_meta_transaction");
            Ok(())
        })
    }

    pub fn delete_tag(&self, repo: &str, tag: &str, origin: Origin) -> Result<bool, StorageError> {
        self.write_repo(repo, |tx| {
            if tx.contains(TAGS, (repo, tag))? {
                let target = [Target::Tag(tag.to_owned())];
                require(tx, repo, origin, &target, &[A::Delete, A::Write], "deleted")?;
            }
            let removed = tx.remove(TAGS, (repo, tag))?.is_some();
            // An evicted tag is only known here: forgetting it changes nothing in the hierarchy.
            let forgotten = !removed && tx.remove(quota::EVICTED, (repo, tag))?.is_some();
            if removed {
                log(
                    tx,
                    repo,
                    origin,
                    RecordKind::TagDeleted {
                        tag: tag.to_owned(),
                    },
                )?;
            }
            util::crash_point::crash_point("in_meta_transaction");
            Ok(removed || forgotten)
        })
    }

    /// Deletes a manifest and every tag that points at it, unless an index in the repository
    /// still references it (the index would then point at missing content).
    pub fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        origin: Origin,
    ) -> Result<(), StorageError> {
        self.write_repo(repo, |tx| {
            let mut targets = vec![Target::Manifest(digest.clone())];
            targets.extend(
                tags_pointing(tx, repo, &digest.to_string())?
                    .into_iter()
                    .map(Target::Tag),
            );
            require(
                tx,
                repo,
                origin,
                &targets,
                &[A::Delete, A::Write],
                "deleted",
            )?;
            remove_manifest(tx, repo, digest, origin)?;
            util::crash_point::crash_point("in_meta_transaction");
            Ok(())
        })
    }

    /// Tags of a repository in lexical order after `last`, leaving out those listings may not
    /// name (`listEnabled: false` on the tag or the repository); `None` if the repository is
    /// unknown.
    pub fn tags(
        &self,
        repo: &str,
        last: &str,
        limit: usize,
    ) -> Result<Option<Vec<String>>, StorageError> {
        self.kv.read(|tx| {
            if !tx.contains(REPOS, repo)? {
                return Ok(None);
            }
            let hidden = props::hidden(tx, repo)?;
            // Evicted tags stay listed: they are still known, and sync brings them back on
            // demand. Both tables are in name order, so the first `limit` of each make the page.
            let listed = |tag: &str| (tag != last || last.is_empty()) && !hidden.tag(tag);
            let mut names = std::collections::BTreeSet::new();
            names.extend(first_listed(tx, TAGS, repo, last, limit, &listed)?);
            names.extend(first_listed(
                tx,
                quota::EVICTED,
                repo,
                last,
                limit,
                &listed,
            )?);
            Ok(Some(names.into_iter().take(limit).collect()))
        })
    }

    /// Repositories in lexical order after `last` that listings may name: their own
    /// `listEnabled` (unless `unlisted`: hidden ones too), and `may_list` (the caller's access).
    /// Filtered while scanning, so a page still holds `limit` names when there are that many.
    pub fn repos(
        &self,
        last: &str,
        limit: usize,
        may_list: &dyn Fn(&str) -> bool,
        unlisted: bool,
    ) -> Result<Vec<String>, StorageError> {
        self.kv.read(|tx| {
            let mut out = Vec::new();
            let start = if last.is_empty() {
                Bound::Unbounded
            } else {
                Bound::Excluded(last)
            };
            for repo in tx.iter(REPOS).starting(start).keys() {
                let repo = repo?;
                if out.len() == limit {
                    break;
                }
                if may_list(&repo) && (unlisted || props::repo_listed(tx, &repo)?) {
                    out.push(repo);
                }
            }
            Ok(out)
        })
    }

    /// The referrers of `subject` the referrers API lists: like the tag and manifest listings,
    /// it leaves out manifests with `listEnabled: false` (all of them when the repository has
    /// it). A hidden referrer still answers by digest.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>, StorageError> {
        let subject = subject.to_string();
        self.kv.read(|tx| {
            let hidden = props::hidden(tx, repo)?;
            if hidden.repo {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for row in tx.prefix(REFERRERS, &[repo, &subject]) {
                let (_, value) = row?;
                let referrer: Descriptor = from_json(&value)?;
                if !hidden.manifest(&referrer.digest) {
                    out.push(referrer);
                }
            }
            Ok(out)
        })
    }

    /// Change-log entries with `seq > after`, oldest first.
    pub fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
        self.kv.read(|tx| changes_after(tx, after, limit))
    }

    /// One page of the change feed, read in one snapshot: entries with `seq > after` (at most
    /// `limit`, oldest first) with the log's oldest kept and newest sequence numbers, so a reader
    /// can tell whether entries it has not seen were pruned.
    pub fn change_page(&self, after: u64, limit: usize) -> Result<ChangePage, StorageError> {
        self.kv.read(|tx| {
            let head = tx.last(CHANGES)?.map(|(k, _)| k).unwrap_or(0);
            let oldest = tx
                .first(CHANGES)?
                .map(|(k, _)| k)
                .unwrap_or(head.saturating_add(1));
            Ok(ChangePage {
                head,
                oldest,
                changes: changes_after(tx, after, limit)?,
            })
        })
    }

    /// Drops change-log entries older than `before` (unix seconds), except the newest; returns how many.
    pub fn prune_changes(&self, before: u64) -> Result<usize, StorageError> {
        self.kv.write(|tx| {
            let mut old = Vec::new();
            for row in tx.iter(CHANGES) {
                let (seq, value) = row?;
                let change: Record = from_json(&value)?;
                if change.time >= before {
                    break;
                }
                old.push(seq);
            }
            // The newest entry stays: the next sequence number is derived from it.
            let newest = tx.last(CHANGES)?.map(|(k, _)| k);
            let mut removed = 0;
            for seq in old.into_iter().filter(|s| Some(*s) != newest) {
                tx.remove(CHANGES, seq)?;
                removed += 1;
            }
            Ok(removed)
        })
    }

    // ---- garbage collection (see gc.rs for the rules) ----

    /// Everything GC needs to decide, read in one consistent snapshot.
    pub(crate) fn gc_snapshot(&self) -> Result<GcSnapshot, StorageError> {
        self.kv.read(|tx| {
            let mut snap = GcSnapshot::default();
            for row in tx.iter(MANIFESTS) {
                let ((repo, digest), value) = row?;
                snap.manifests
                    .push((repo, parse_digest(&digest)?, from_json(&value)?));
            }
            for row in tx.iter(TAGS) {
                let ((repo, _), digest) = row?;
                snap.tagged.push((repo, parse_digest(&digest)?));
            }
            for row in tx.iter(REPO_BLOBS) {
                let ((repo, digest), (_, linked)) = row?;
                snap.links.push((repo, parse_digest(&digest)?, linked));
            }
            Ok(snap)
        })
    }

    /// Removes a manifest that no tag and no other manifest in its repository points at, and
    /// whose subject (for a referrer) is not in its repository any more: all checked again here,
    /// since a client may have tagged it, or tagged its subject, since the snapshot. A referrer
    /// therefore goes only after its subject (GC's next pass), never while a client can still
    /// reach the subject it describes. Returns whether it went.
    pub(crate) fn remove_untagged(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        self.write_repo(repo, |tx| {
            if !tags_pointing(tx, repo, &digest.to_string())?.is_empty()
                || props::gc_must_keep(tx, repo, digest)?
                || subject_present(tx, repo, digest)?
            {
                return Ok(false);
            }
            match remove_manifest(tx, repo, digest, Origin::Gc) {
                Ok(()) => {
                    util::crash_point::crash_point("in_gc_transaction");
                    Ok(true)
                }
                // Still referenced, or gone already: leave it (refused before anything was
                // written, so the transaction has nothing to commit).
                Err(StorageError::Denied(_) | StorageError::ManifestUnknown) => Ok(false),
                Err(err) => Err(err),
            }
        })
    }

    /// Removes blob links linked before `before` (unix seconds) that no manifest of their
    /// repository references; returns the links removed.
    pub(crate) fn remove_stale_links(
        &self,
        before: u64,
    ) -> Result<Vec<(String, Digest)>, StorageError> {
        self.kv.write(|tx| {
            let mut referenced = std::collections::HashSet::new();
            for row in tx.iter(MANIFESTS) {
                let ((repo, _), value) = row?;
                let meta: ManifestMeta = from_json(&value)?;
                referenced.extend(meta.refs.into_iter().map(|d| (repo.clone(), d)));
            }
            let mut stale = Vec::new();
            for row in tx.iter(REPO_BLOBS) {
                let ((repo, digest), (_, linked)) = row?;
                let digest = parse_digest(&digest)?;
                if linked < before && !referenced.contains(&(repo.clone(), digest.clone())) {
                    stale.push((repo, digest));
                }
            }
            for (repo, digest) in &stale {
                tx.remove(REPO_BLOBS, (repo, &digest.to_string()))?;
            }
            if !stale.is_empty() {
                util::crash_point::crash_point("in_gc_transaction");
            }
            Ok(stale)
        })
    }

    /// Whether any repository links `digest` as a blob or holds it as a manifest.
    pub(crate) fn is_in_use(&self, digest: &Digest) -> Result<bool, StorageError> {
        let digest_s = digest.to_string();
        self.kv.read(|tx| {
            for key in tx.iter(REPO_BLOBS).keys() {
                if key?.1 == digest_s {
                    return Ok(true);
                }
            }
            for key in tx.iter(MANIFESTS).keys() {
                if key?.1 == digest_s {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

/// The first `limit` names of a `(repo, name)` table from `last` on that `listed` lets through.
fn first_listed<V: Value>(
    tx: &Read,
    table: Table<(String, String), V>,
    repo: &str,
    last: &str,
    limit: usize,
    listed: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, StorageError> {
    let mut out = Vec::new();
    let rows = tx
        .prefix(table, &[repo])
        .starting(Bound::Included((repo, last)));
    for key in rows.keys() {
        if out.len() == limit {
            break;
        }
        let (_, name) = key?;
        if listed(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Change-log entries with `seq > after`, oldest first, at most `limit`.
fn changes_after(tx: &Read, after: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
    tx.iter(CHANGES)
        .starting(Bound::Excluded(after))
        .take(limit)
        .map(|row| Ok(from_json::<Record>(&row?.1)?.into()))
        .collect()
}

fn parse_digest(s: &str) -> Result<Digest, StorageError> {
    s.parse()
        .map_err(|e| StorageError::Db(format!("corrupt digest in metadata: {e}")))
}

/// A consistent read of what GC decides on.
#[derive(Default)]
pub(crate) struct GcSnapshot {
    /// (repo, digest, meta) of every manifest.
    pub manifests: Vec<(String, Digest, ManifestMeta)>,
    /// (repo, digest) of every tag's target.
    pub tagged: Vec<(String, Digest)>,
    /// (repo, blob digest, unix time linked).
    pub links: Vec<(String, Digest, u64)>,
}
