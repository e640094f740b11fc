//! Metadata in redb (ACID, crash-safe): tags, manifests per repository, blob links, referrers,
//! and the change log. Each change to tags, manifests or their attributes is logged in the same
//! transaction. `props` keeps the `changeableAttributes` and the times the `/acr/v1` API shows;
//! `handle` is the database itself, opened again by the next write after a failed commit.
//! `quota` keeps which tags sync wrote, pull times and evicted tags (`serve --quota`).

use std::path::Path;
use util::time::now_secs as now;

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::storage::space::Space;
use crate::storage::StorageError;
use oci::digest::Digest;
use oci::reference::Reference;
use oci::{Change, ChangeKind, ChangeableAttributes, Descriptor, Origin};

mod handle;
mod props;
pub(crate) use handle::io_failed;
pub use props::{refusal, Attribute, ManifestProps, RepoProps, TagProps, Target};
mod quota;
use props::{require, Attribute as A};
pub use quota::{Evicted, EvictedTag, EvictionCandidate};

/// (repo, tag) -> manifest digest.
const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// (repo, manifest digest) -> `ManifestMeta` as JSON.
const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
/// (repo, blob digest) -> (size, unix time linked): which blobs a repository may serve and
/// reference; the time lets GC spare a blob pushed moments before its manifest.
const REPO_BLOBS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("repo_blobs");
/// (repo, subject digest, referrer digest) -> referrer `Descriptor` as JSON.
const REFERRERS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("referrers");
/// repo -> unix time of its first manifest: the catalog.
const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
/// seq -> `Record` as JSON: the feed for children and for the upward push.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

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
    db: handle::Handle,
    /// Checked before every write transaction (see `space::METADATA_ROOM`).
    space: Space,
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
fn log(
    tx: &WriteTransaction,
    repo: &str,
    origin: Origin,
    kind: RecordKind,
) -> Result<(), StorageError> {
    let time = now();
    props::touch(tx, repo, &kind, time)?;
    quota::on_logged(tx, repo, origin, &kind, time)?;
    let mut changes = tx.open_table(CHANGES)?;
    let seq = changes.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
    let change = Record {
        seq,
        time,
        repo: repo.to_owned(),
        origin: origin.into(),
        kind,
    };
    changes.insert(seq, json(&change).as_slice())?;
    Ok(())
}

/// Keys of a table whose first tuple element is `repo`, after `after`, at most `limit`.
macro_rules! scan_repo {
    ($table:expr, $repo:expr, $after:expr, $limit:expr) => {{
        let mut out = Vec::new();
        let start = ($repo, $after);
        for entry in $table.range(start..)? {
            let (key, value) = entry?;
            let (r, k) = key.value();
            if r != $repo {
                break;
            }
            if k == $after && !$after.is_empty() {
                continue;
            }
            if out.len() == $limit {
                break;
            }
            out.push((k.to_owned(), value.value().to_owned()));
        }
        out
    }};
}

/// Tags of `repo` that point at `digest`.
fn tags_pointing(
    tx: &WriteTransaction,
    repo: &str,
    digest: &str,
) -> Result<Vec<String>, StorageError> {
    let tags = tx.open_table(TAGS)?;
    Ok(scan_repo!(tags, repo, "", usize::MAX)
        .into_iter()
        .filter(|(_, d)| d == digest)
        .map(|(t, _)| t)
        .collect())
}

/// Whether the manifest `digest` of `repo` is a referrer whose subject is stored in `repo`.
fn subject_present(
    tx: &WriteTransaction,
    repo: &str,
    digest: &Digest,
) -> Result<bool, StorageError> {
    let manifests = tx.open_table(MANIFESTS)?;
    let Some(meta) = manifests.get((repo, digest.to_string().as_str()))? else {
        return Ok(false);
    };
    let Some(subject) = from_json::<ManifestMeta>(meta.value())?.subject else {
        return Ok(false);
    };
    let present = manifests
        .get((repo, subject.to_string().as_str()))?
        .is_some();
    Ok(present)
}

/// Removes a manifest from `repo` inside `tx`, with its referrers entry and the tags that point
/// at it, logging each. Refused (`Denied`) while another manifest there references it: that
/// index would then point at missing content.
fn remove_manifest(
    tx: &WriteTransaction,
    repo: &str,
    digest: &Digest,
    origin: Origin,
) -> Result<(), StorageError> {
    let digest_s = digest.to_string();
    let mut manifests = tx.open_table(MANIFESTS)?;
    let mut this = None;
    for (other, meta) in scan_repo!(manifests, repo, "", usize::MAX) {
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
    manifests.remove((repo, digest_s.as_str()))?;
    drop(manifests);
    if let Some(subject) = &meta.subject {
        tx.open_table(REFERRERS)?.remove((
            repo,
            subject.to_string().as_str(),
            digest_s.as_str(),
        ))?;
    }
    let pointing = tags_pointing(tx, repo, &digest_s)?;
    let mut tags = tx.open_table(TAGS)?;
    for tag in &pointing {
        tags.remove((repo, tag.as_str()))?;
    }
    drop(tags);
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
    pub fn open(path: &Path, space: Space) -> Result<Meta, StorageError> {
        let db = handle::Handle::open(path)?;
        let tx = db.begin_write()?;
        // A store from before the quota tables: learn which tags sync wrote from the log.
        let quota_tables_new = !tx
            .list_tables()?
            .any(|t| t.name() == quota::SYNCED_TAGS.name());
        tx.open_table(TAGS)?;
        tx.open_table(MANIFESTS)?;
        tx.open_table(REPO_BLOBS)?;
        tx.open_table(REFERRERS)?;
        tx.open_table(REPOS)?;
        tx.open_table(CHANGES)?;
        tx.open_table(props::ATTRIBUTES)?;
        tx.open_table(props::TIMES)?;
        tx.open_table(quota::SYNCED_TAGS)?;
        tx.open_table(quota::PULLED)?;
        tx.open_table(quota::EVICTED)?;
        tx.open_table(quota::ON_DEMAND)?;
        if quota_tables_new {
            quota::backfill(&tx)?;
        }
        tx.commit()?;
        Ok(Meta { db, space })
    }

    /// A write transaction, refused while the disk is too full to be sure it can commit.
    fn begin_write(&self) -> Result<WriteTransaction, StorageError> {
        self.space.check_metadata()?;
        self.db.begin_write()
    }

    pub fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REPO_BLOBS)?;
        let size = table
            .get((repo, digest.to_string().as_str()))?
            .map(|v| v.value().0);
        Ok(size)
    }

    pub fn link_blob(&self, repo: &str, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let tx = self.begin_write()?;
        tx.open_table(REPO_BLOBS)?
            .insert((repo, digest.to_string().as_str()), (size, now()))?;
        util::crash_point::crash_point("in_meta_transaction");
        tx.commit()?;
        Ok(())
    }

    /// Removes a blob from a repository unless a manifest there still references it.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<(), StorageError> {
        let tx = self.begin_write()?;
        {
            let manifests = tx.open_table(MANIFESTS)?;
            let all = scan_repo!(manifests, repo, "", usize::MAX);
            for (manifest, meta) in all {
                let meta: ManifestMeta = from_json(&meta)?;
                if meta.refs.contains(digest) {
                    return Err(StorageError::Denied(format!(
                        "blob {digest} is referenced by manifest {manifest} in this repository: delete that manifest first"
                    )));
                }
            }
            let mut links = tx.open_table(REPO_BLOBS)?;
            if links.remove((repo, digest.to_string().as_str()))?.is_none() {
                return Err(StorageError::BlobUnknown(digest.clone()));
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The digest and record of the manifest a tag or digest names in `repo`, with the first
    /// item on the way that has `readEnabled: false`, read in one snapshot: this is every
    /// manifest GET, the hottest path there is.
    pub fn resolve(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<(Digest, ManifestMeta, Option<Target>)>, StorageError> {
        let tx = self.db.begin_read()?;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => match tx.open_table(TAGS)?.get((repo, tag.as_str()))? {
                Some(v) => parse_digest(v.value())?,
                None => return Ok(None),
            },
        };
        let found = tx
            .open_table(MANIFESTS)?
            .get((repo, digest.to_string().as_str()))?;
        let Some(found) = found else {
            return Ok(None);
        };
        let mut through = Vec::with_capacity(2);
        if let Reference::Tag(tag) = reference {
            through.push(Target::Tag(tag.as_str().to_owned()));
        }
        through.push(Target::Manifest(digest.clone()));
        let unreadable = props::unreadable(&tx.open_table(props::ATTRIBUTES)?, repo, &through)?;
        Ok(Some((digest, from_json(found.value())?, unreadable)))
    }

    /// Stores a manifest (and optionally a tag) once everything it references is present in
    /// the repository; checks and writes in one transaction, so no concurrent delete slips between.
    /// `install` runs after the checks pass and before the commit: it puts the manifest's bytes
    /// in place, so a refused manifest leaves nothing behind.
    pub fn put_manifest(
        &self,
        new: NewManifest<'_>,
        install: impl FnOnce() -> Result<(), StorageError>,
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
        let tx = self.begin_write()?;
        require(&tx, repo, origin, &[], &[A::Write], "pushed to")?;
        if let Some(tag) = tag {
            let previous = tx
                .open_table(TAGS)?
                .get((repo, tag))?
                .map(|v| v.value().to_owned());
            if let Some(previous) = previous.filter(|p| *p != digest_s) {
                let targets = [
                    Target::Tag(tag.to_owned()),
                    Target::Manifest(parse_digest(&previous)?),
                ];
                require(&tx, repo, origin, &targets, &[A::Write], "overwritten")?;
            }
        }
        {
            let links = tx.open_table(REPO_BLOBS)?;
            for (blob, size) in blob_sizes {
                match links.get((repo, blob.to_string().as_str()))? {
                    None => return Err(StorageError::ManifestBlobUnknown(blob.clone())),
                    Some(actual) if actual.value().0 != *size => {
                        return Err(StorageError::ManifestInvalid(format!(
                            "descriptor for {blob} says {size} bytes, but the blob has {} bytes",
                            actual.value().0
                        )))
                    }
                    Some(_) => {}
                }
            }
            let mut manifests = tx.open_table(MANIFESTS)?;
            // A partial index stored again (a client re-tagging it) keeps what it left out.
            let mut meta = meta.clone();
            if meta.skipped.is_empty() {
                if let Some(stored) = manifests.get((repo, digest_s.as_str()))? {
                    meta.skipped = from_json::<ManifestMeta>(stored.value())?.skipped;
                }
            }
            let mut skipped = Vec::new();
            for child in meta
                .refs
                .iter()
                .filter(|d| !blob_sizes.iter().any(|(b, _)| b == *d))
            {
                if manifests.get((repo, child.to_string().as_str()))?.is_none() {
                    if !meta.skipped.contains(child) {
                        return Err(StorageError::ManifestBlobUnknown(child.clone()));
                    }
                    skipped.push(child.clone());
                }
            }
            meta.skipped = skipped;
            install()?;
            let existed = manifests
                .insert((repo, digest_s.as_str()), json(&meta).as_slice())?
                .is_some();
            drop(manifests);
            if !existed {
                log(
                    &tx,
                    repo,
                    origin,
                    RecordKind::ManifestPut {
                        digest: digest.clone(),
                        media_type: meta.media_type.clone(),
                    },
                )?;
            }
            if let Some((subject, descriptor)) = referrer {
                tx.open_table(REFERRERS)?.insert(
                    (repo, subject.to_string().as_str(), digest_s.as_str()),
                    json(descriptor).as_slice(),
                )?;
            }
            let mut repos = tx.open_table(REPOS)?;
            if repos.get(repo)?.is_none() {
                repos.insert(repo, now())?;
            }
            drop(repos);
            if let Some(tag) = tag {
                let previous = tx
                    .open_table(TAGS)?
                    .insert((repo, tag), digest_s.as_str())?
                    .map(|v| v.value().to_owned());
                if previous.as_deref() != Some(digest_s.as_str()) {
                    log(
                        &tx,
                        repo,
                        origin,
                        RecordKind::TagSet {
                            tag: tag.to_owned(),
                            digest: digest.clone(),
                        },
                    )?;
                }
            }
        }
        util::crash_point::crash_point("in_meta_transaction");
        tx.commit()?;
        Ok(())
    }

    pub fn delete_tag(&self, repo: &str, tag: &str, origin: Origin) -> Result<bool, StorageError> {
        let tx = self.begin_write()?;
        if tx.open_table(TAGS)?.get((repo, tag))?.is_some() {
            let target = [Target::Tag(tag.to_owned())];
            require(
                &tx,
                repo,
                origin,
                &target,
                &[A::Delete, A::Write],
                "deleted",
            )?;
        }
        let removed = tx.open_table(TAGS)?.remove((repo, tag))?.is_some();
        // An evicted tag is only known here: forgetting it changes nothing in the hierarchy.
        let forgotten = !removed
            && tx
                .open_table(quota::EVICTED)?
                .remove((repo, tag))?
                .is_some();
        if removed {
            log(
                &tx,
                repo,
                origin,
                RecordKind::TagDeleted {
                    tag: tag.to_owned(),
                },
            )?;
        }
        util::crash_point::crash_point("in_meta_transaction");
        tx.commit()?;
        Ok(removed || forgotten)
    }

    /// Deletes a manifest and every tag that points at it, unless an index in the repository
    /// still references it (the index would then point at missing content).
    pub fn delete_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        origin: Origin,
    ) -> Result<(), StorageError> {
        let tx = self.begin_write()?;
        let mut targets = vec![Target::Manifest(digest.clone())];
        targets.extend(
            tags_pointing(&tx, repo, &digest.to_string())?
                .into_iter()
                .map(Target::Tag),
        );
        require(
            &tx,
            repo,
            origin,
            &targets,
            &[A::Delete, A::Write],
            "deleted",
        )?;
        remove_manifest(&tx, repo, digest, origin)?;
        util::crash_point::crash_point("in_meta_transaction");
        tx.commit()?;
        Ok(())
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
        let tx = self.db.begin_read()?;
        if tx.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let hidden = props::hidden(&tx.open_table(props::ATTRIBUTES)?, repo)?;
        // Evicted tags stay listed: they are still known, and sync brings them back on demand.
        // Both tables are in name order, so the first `limit` of each make the page.
        let listed = |tag: &str| (tag != last || last.is_empty()) && !hidden.tag(tag);
        let mut names = std::collections::BTreeSet::new();
        for entry in tx.open_table(TAGS)?.range((repo, last)..)? {
            let (key, _) = entry?;
            let (r, tag) = key.value();
            if r != repo || names.len() == limit {
                break;
            }
            if listed(tag) {
                names.insert(tag.to_owned());
            }
        }
        let mut evicted = 0;
        for entry in tx.open_table(quota::EVICTED)?.range((repo, last)..)? {
            let (key, _) = entry?;
            let (r, tag) = key.value();
            if r != repo || evicted == limit {
                break;
            }
            if listed(tag) {
                names.insert(tag.to_owned());
                evicted += 1;
            }
        }
        let out: Vec<String> = names.into_iter().take(limit).collect();
        Ok(Some(out))
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
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REPOS)?;
        let attributes = tx.open_table(props::ATTRIBUTES)?;
        let mut out = Vec::new();
        for entry in table.range(last..)? {
            let (key, _) = entry?;
            let repo = key.value();
            if repo == last && !last.is_empty() {
                continue;
            }
            if out.len() == limit {
                break;
            }
            if may_list(repo) && (unlisted || props::repo_listed(&attributes, repo)?) {
                out.push(repo.to_owned());
            }
        }
        Ok(out)
    }

    /// The referrers of `subject` the referrers API lists: like the tag and manifest listings,
    /// it leaves out manifests with `listEnabled: false` (all of them when the repository has
    /// it). A hidden referrer still answers by digest.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>, StorageError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REFERRERS)?;
        let hidden = props::hidden(&tx.open_table(props::ATTRIBUTES)?, repo)?;
        if hidden.repo {
            return Ok(Vec::new());
        }
        let subject = subject.to_string();
        let mut out = Vec::new();
        for entry in table.range((repo, subject.as_str(), "")..)? {
            let (key, value) = entry?;
            let (r, s, _) = key.value();
            if r != repo || s != subject {
                break;
            }
            let referrer: Descriptor = from_json(value.value())?;
            if !hidden.manifest(&referrer.digest) {
                out.push(referrer);
            }
        }
        Ok(out)
    }

    /// Change-log entries with `seq > after`, oldest first.
    pub fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHANGES)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..)? {
            if out.len() == limit {
                break;
            }
            let (_, value) = entry?;
            out.push(from_json::<Record>(value.value())?.into());
        }
        Ok(out)
    }

    /// One page of the change feed, read in one snapshot: entries with `seq > after` (at most
    /// `limit`, oldest first) with the log's oldest kept and newest sequence numbers, so a reader
    /// can tell whether entries it has not seen were pruned.
    pub fn change_page(&self, after: u64, limit: usize) -> Result<ChangePage, StorageError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHANGES)?;
        let head = table.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        let oldest = table
            .first()?
            .map(|(k, _)| k.value())
            .unwrap_or(head.saturating_add(1));
        let mut changes = Vec::new();
        if limit > 0 {
            for entry in table.range(after.saturating_add(1)..)? {
                if changes.len() == limit {
                    break;
                }
                let (_, value) = entry?;
                changes.push(from_json::<Record>(value.value())?.into());
            }
        }
        Ok(ChangePage {
            head,
            oldest,
            changes,
        })
    }

    /// Drops change-log entries older than `before` (unix seconds), except the newest; returns how many.
    pub fn prune_changes(&self, before: u64) -> Result<usize, StorageError> {
        let tx = self.begin_write()?;
        let mut removed = 0;
        {
            let mut table = tx.open_table(CHANGES)?;
            let mut old = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let change: Record = from_json(value.value())?;
                if change.time >= before {
                    break;
                }
                old.push(key.value());
            }
            // The newest entry stays: the next sequence number is derived from it.
            let newest = table.last()?.map(|(k, _)| k.value());
            for seq in old.into_iter().filter(|s| Some(*s) != newest) {
                table.remove(seq)?;
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    // ---- garbage collection (see gc.rs for the rules) ----

    /// Everything GC needs to decide, read in one consistent snapshot.
    pub(crate) fn gc_snapshot(&self) -> Result<GcSnapshot, StorageError> {
        let tx = self.db.begin_read()?;
        let mut snap = GcSnapshot::default();
        for entry in tx.open_table(MANIFESTS)?.iter()? {
            let (key, value) = entry?;
            let (repo, digest) = key.value();
            snap.manifests.push((
                repo.to_owned(),
                parse_digest(digest)?,
                from_json(value.value())?,
            ));
        }
        for entry in tx.open_table(TAGS)?.iter()? {
            let (key, value) = entry?;
            snap.tagged
                .push((key.value().0.to_owned(), parse_digest(value.value())?));
        }
        for entry in tx.open_table(REPO_BLOBS)?.iter()? {
            let (key, value) = entry?;
            let (repo, digest) = key.value();
            snap.links
                .push((repo.to_owned(), parse_digest(digest)?, value.value().1));
        }
        Ok(snap)
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
        let tx = self.begin_write()?;
        if !tags_pointing(&tx, repo, &digest.to_string())?.is_empty()
            || props::gc_must_keep(&tx, repo, digest)?
            || subject_present(&tx, repo, digest)?
        {
            return Ok(false);
        }
        match remove_manifest(&tx, repo, digest, Origin::Gc) {
            Ok(()) => {
                util::crash_point::crash_point("in_gc_transaction");
                tx.commit()?;
                Ok(true)
            }
            // Still referenced, or gone already: leave it (dropping `tx` aborts it).
            Err(StorageError::Denied(_) | StorageError::ManifestUnknown) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Removes blob links linked before `before` (unix seconds) that no manifest of their
    /// repository references; returns the links removed.
    pub(crate) fn remove_stale_links(
        &self,
        before: u64,
    ) -> Result<Vec<(String, Digest)>, StorageError> {
        let tx = self.begin_write()?;
        let mut removed = Vec::new();
        {
            let mut referenced = std::collections::HashSet::new();
            for entry in tx.open_table(MANIFESTS)?.iter()? {
                let (key, value) = entry?;
                let meta: ManifestMeta = from_json(value.value())?;
                let repo = key.value().0.to_owned();
                referenced.extend(meta.refs.into_iter().map(|d| (repo.clone(), d)));
            }
            let mut links = tx.open_table(REPO_BLOBS)?;
            let mut stale = Vec::new();
            for entry in links.iter()? {
                let (key, value) = entry?;
                let (repo, digest) = key.value();
                let digest = parse_digest(digest)?;
                if value.value().1 < before
                    && !referenced.contains(&(repo.to_owned(), digest.clone()))
                {
                    stale.push((repo.to_owned(), digest));
                }
            }
            for (repo, digest) in stale {
                links.remove((repo.as_str(), digest.to_string().as_str()))?;
                removed.push((repo, digest));
            }
        }
        if !removed.is_empty() {
            util::crash_point::crash_point("in_gc_transaction");
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Whether any repository links `digest` as a blob or holds it as a manifest.
    pub(crate) fn is_in_use(&self, digest: &Digest) -> Result<bool, StorageError> {
        let tx = self.db.begin_read()?;
        let digest_s = digest.to_string();
        for entry in tx.open_table(REPO_BLOBS)?.iter()? {
            if entry?.0.value().1 == digest_s {
                return Ok(true);
            }
        }
        for entry in tx.open_table(MANIFESTS)?.iter()? {
            if entry?.0.value().1 == digest_s {
                return Ok(true);
            }
        }
        Ok(false)
    }
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
