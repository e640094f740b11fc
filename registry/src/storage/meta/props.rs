//! What the `/acr/v1` API shows and changes beside the content: each repository's, tag's and
//! manifest's `changeableAttributes` and the times it was created and last updated, kept in two
//! tables next to the tags and manifests, and the rules that make a lock hold.
//!
//! Both tables are keyed `(repo, item)`: `""` is the repository, `tag:NAME` a tag,
//! `manifest:DIGEST` a manifest (a repository name segment never starts with `tag:` or
//! `manifest:`'s characters in that place, and a tag holds no `:`, so keys cannot collide).
//! A missing attributes record means all enabled and a missing time falls back to what was
//! stored before these tables existed, so older data directories need no migration.
//!
//! Locks hold for clients only: sync writes what the parent has (the parent is authoritative,
//! and its own locks come down with the feed), and GC leaves locked manifests alone.

use std::collections::{BTreeMap, HashSet};

use super::{
    from_json, json, parse_digest, ManifestMeta, Meta, RecordKind, MANIFESTS, REPOS, TAGS,
};
use crate::storage::kv::{Read, Table, Value, Write};
use crate::storage::StorageError;
use oci::{AttributesPatch, ChangeableAttributes, Digest, Origin};

/// (repo, item key) -> `ChangeableAttributes` as JSON; absent = all enabled.
pub(super) const ATTRIBUTES: Table<(String, String), Vec<u8>> = Table::new("attributes");
/// (repo, item key) -> (created, last updated), unix seconds.
pub(super) const TIMES: Table<(String, String), (u64, u64)> = Table::new("item_times");

/// Something that carries `changeableAttributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Repository,
    Tag(String),
    Manifest(Digest),
}

/// One of the four switches, named as ACR names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    Delete,
    Write,
    Read,
    List,
}

impl Attribute {
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Delete => "deleteEnabled",
            Attribute::Write => "writeEnabled",
            Attribute::Read => "readEnabled",
            Attribute::List => "listEnabled",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Attribute::Delete => "--delete-enabled",
            Attribute::Write => "--write-enabled",
            Attribute::Read => "--read-enabled",
            Attribute::List => "--list-enabled",
        }
    }

    fn of(self, attributes: &ChangeableAttributes) -> bool {
        match self {
            Attribute::Delete => attributes.delete_enabled,
            Attribute::Write => attributes.write_enabled,
            Attribute::Read => attributes.read_enabled,
            Attribute::List => attributes.list_enabled,
        }
    }
}

impl Target {
    pub(super) fn key(&self) -> String {
        match self {
            Target::Repository => String::new(),
            Target::Tag(tag) => format!("tag:{tag}"),
            Target::Manifest(digest) => format!("manifest:{digest}"),
        }
    }

    fn describe(&self, repo: &str) -> String {
        match self {
            Target::Repository => format!("repository {repo}"),
            Target::Tag(tag) => format!("tag {tag} in repository {repo}"),
            Target::Manifest(d) => format!("manifest {d} in repository {repo}"),
        }
    }
}

/// The refusal of an action a lock forbids: what is locked, by which switch, and how to unlock
/// it through this API and with `az`.
pub fn refusal(repo: &str, target: &Target, attribute: Attribute, action: &str) -> StorageError {
    let (path, az) = match target {
        Target::Repository => (repo.to_owned(), format!("--repository {repo}")),
        Target::Tag(tag) => (
            format!("{repo}/_tags/{tag}"),
            format!("--image {repo}:{tag}"),
        ),
        Target::Manifest(d) => (
            format!("{repo}/_manifests/{d}"),
            format!("--image {repo}@{d}"),
        ),
    };
    let name = attribute.name();
    StorageError::Locked(format!(
        "The operation is disallowed on this repository, tag or manifest: {} has {name}: false, \
         so it cannot be {action}. To allow it: PATCH /acr/v1/{path} {{\"{name}\": true}} \
         (az acr repository update {az} {} true)",
        target.describe(repo),
        attribute.flag()
    ))
}

fn stored(tx: &Read, repo: &str, target: &Target) -> Result<ChangeableAttributes, StorageError> {
    match tx.get(ATTRIBUTES, (repo, &target.key()))? {
        Some(v) => from_json(&v),
        None => Ok(ChangeableAttributes::ALL_ENABLED),
    }
}

/// The attributes of the repository (first) and of each of `targets`, read in one request.
fn stored_with_repo(
    tx: &Read,
    repo: &str,
    targets: &[Target],
) -> Result<Vec<(Target, ChangeableAttributes)>, StorageError> {
    let all: Vec<Target> = std::iter::once(Target::Repository)
        .chain(targets.iter().cloned())
        .collect();
    let keys: Vec<String> = all.iter().map(Target::key).collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|k| (repo, k.as_str())).collect();
    let found = tx.get_many(ATTRIBUTES, &refs)?;
    all.into_iter()
        .zip(found)
        .map(|(target, v)| {
            let attributes = match v {
                Some(v) => from_json(&v)?,
                None => ChangeableAttributes::ALL_ENABLED,
            };
            Ok((target, attributes))
        })
        .collect()
}

/// Refuses a client's `action` on `targets` (the repository is always checked too) when any of
/// them has one of `needs` switched off. Other origins pass: see the module doc.
pub(super) fn require(
    tx: &Read,
    repo: &str,
    origin: Origin,
    targets: &[Target],
    needs: &[Attribute],
    action: &str,
) -> Result<(), StorageError> {
    if origin != Origin::Client {
        return Ok(());
    }
    for (target, attributes) in stored_with_repo(tx, repo, targets)? {
        if let Some(off) = needs.iter().find(|a| !a.of(&attributes)) {
            return Err(refusal(repo, &target, *off, action));
        }
    }
    Ok(())
}

/// Whether an eviction must leave this tag: it, its manifest or its repository may not be
/// deleted or written (a lock is how an operator pins an image), as GC leaves such manifests.
pub(super) fn pinned(
    tx: &Read,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<bool, StorageError> {
    let a = stored(tx, repo, &Target::Tag(tag.to_owned()))?;
    Ok(!a.delete_enabled || !a.write_enabled || gc_must_keep(tx, repo, digest)?)
}

/// Whether GC must leave this manifest: it (or its repository) may not be deleted.
pub(super) fn gc_must_keep(tx: &Read, repo: &str, digest: &Digest) -> Result<bool, StorageError> {
    let all = stored_with_repo(tx, repo, &[Target::Manifest(digest.clone())])?;
    Ok(all
        .iter()
        .any(|(_, a)| !a.delete_enabled || !a.write_enabled))
}

/// Keeps the created / last-updated times and drops what a deleted item carried; called for
/// every change logged, in its transaction.
pub(super) fn touch(
    tx: &Write,
    repo: &str,
    kind: &RecordKind,
    now: u64,
) -> Result<(), StorageError> {
    let stamp = |key: &str| -> Result<(), StorageError> {
        let created = tx.get(TIMES, (repo, key))?.map(|v| v.0).unwrap_or(now);
        tx.insert(TIMES, (repo, key), (created, now))?;
        Ok(())
    };
    stamp("")?;
    let gone = match kind {
        RecordKind::TagSet { tag, .. } => {
            stamp(&Target::Tag(tag.clone()).key())?;
            None
        }
        RecordKind::ManifestPut { digest, .. } => {
            stamp(&Target::Manifest(digest.clone()).key())?;
            None
        }
        RecordKind::AttributesSet { tag, digest, .. } => {
            stamp(&record_target(tag, digest).key())?;
            None
        }
        RecordKind::TagDeleted { tag } => Some(Target::Tag(tag.clone()).key()),
        RecordKind::ManifestDeleted { digest } => Some(Target::Manifest(digest.clone()).key()),
    };
    if let Some(key) = gone {
        tx.remove(TIMES, (repo, &key))?;
        tx.remove(ATTRIBUTES, (repo, &key))?;
    }
    Ok(())
}

/// The item an `AttributesSet` record names.
pub(super) fn record_target(tag: &Option<String>, digest: &Option<Digest>) -> Target {
    match (tag, digest) {
        (Some(tag), _) => Target::Tag(tag.clone()),
        (None, Some(digest)) => Target::Manifest(digest.clone()),
        (None, None) => Target::Repository,
    }
}

/// Removes every attributes record and time of `repo` (the repository was deleted).
pub(super) fn forget_repo(tx: &Write, repo: &str) -> Result<(), StorageError> {
    for key in collect_keys(tx, TIMES, repo)? {
        tx.remove(TIMES, (repo, &key))?;
    }
    for key in collect_keys(tx, ATTRIBUTES, repo)? {
        tx.remove(ATTRIBUTES, (repo, &key))?;
    }
    Ok(())
}

/// The keys of a `(repo, key)` table for one repository, in order.
pub(super) fn collect_keys<V: Value>(
    tx: &Read,
    table: Table<(String, String), V>,
    repo: &str,
) -> Result<Vec<String>, StorageError> {
    tx.prefix(table, &[repo])
        .keys()
        .map(|key| key.map(|(_, k)| k))
        .collect()
}

/// What listings leave out of a repository: everything (`listEnabled: false` on it), or the
/// tags and manifests switched off one by one.
pub(super) struct Hidden {
    pub repo: bool,
    pub keys: HashSet<String>,
}

impl Hidden {
    pub fn tag(&self, tag: &str) -> bool {
        self.repo || self.keys.contains(&Target::Tag(tag.to_owned()).key())
    }

    pub fn manifest(&self, digest: &Digest) -> bool {
        self.repo || self.keys.contains(&Target::Manifest(digest.clone()).key())
    }
}

pub(super) fn hidden(tx: &Read, repo: &str) -> Result<Hidden, StorageError> {
    let mut out = Hidden {
        repo: false,
        keys: HashSet::new(),
    };
    for row in tx.prefix(ATTRIBUTES, &[repo]) {
        let ((_, k), value) = row?;
        let attributes: ChangeableAttributes = from_json(&value)?;
        if !attributes.list_enabled {
            if k.is_empty() {
                out.repo = true;
            } else {
                out.keys.insert(k);
            }
        }
    }
    Ok(out)
}

/// Whether listings may name `repo` (its own `listEnabled`).
pub(super) fn repo_listed(tx: &Read, repo: &str) -> Result<bool, StorageError> {
    Ok(stored(tx, repo, &Target::Repository)?.list_enabled)
}

/// The first of the items a read goes through that has `readEnabled: false`.
pub(super) fn unreadable(
    tx: &Read,
    repo: &str,
    targets: &[Target],
) -> Result<Option<Target>, StorageError> {
    Ok(stored_with_repo(tx, repo, targets)?
        .into_iter()
        .find(|(_, attributes)| !attributes.read_enabled)
        .map(|(target, _)| target))
}

/// A repository as `GET /acr/v1/{repo}` shows it.
#[derive(Debug, Clone)]
pub struct RepoProps {
    pub created: u64,
    pub updated: u64,
    pub manifest_count: usize,
    pub tag_count: usize,
    pub attributes: ChangeableAttributes,
}

/// A tag as the `/acr/v1` tag routes show it.
#[derive(Debug, Clone)]
pub struct TagProps {
    pub name: String,
    pub digest: Digest,
    pub created: u64,
    pub updated: u64,
    /// Its own attributes (the repository's apply on top, as in ACR).
    pub attributes: ChangeableAttributes,
    /// Whether listings name it (its own and its repository's `listEnabled`).
    pub listed: bool,
}

/// A manifest as the `/acr/v1` manifest routes show it.
#[derive(Debug, Clone)]
pub struct ManifestProps {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub created: u64,
    pub updated: u64,
    /// Tags of the repository that point at it, in name order.
    pub tags: Vec<String>,
    pub attributes: ChangeableAttributes,
    pub listed: bool,
}

/// Whether the item exists.
fn exists(tx: &Read, repo: &str, target: &Target) -> Result<bool, StorageError> {
    match target {
        Target::Repository => tx.contains(REPOS, repo),
        Target::Tag(tag) => tx.contains(TAGS, (repo, tag)),
        Target::Manifest(d) => tx.contains(MANIFESTS, (repo, &d.to_string())),
    }
}

impl Meta {
    /// The item's own attributes; `None` when it does not exist.
    pub fn attributes(
        &self,
        repo: &str,
        target: &Target,
    ) -> Result<Option<ChangeableAttributes>, StorageError> {
        self.kv.read(|tx| {
            if !exists(tx, repo, target)? {
                return Ok(None);
            }
            Ok(Some(stored(tx, repo, target)?))
        })
    }

    /// Changes the switches `patch` names on an item and logs the new set in the same
    /// transaction (so children get it through the feed). `None` when the item does not exist.
    pub fn set_attributes(
        &self,
        repo: &str,
        target: &Target,
        patch: &AttributesPatch,
        origin: Origin,
    ) -> Result<Option<ChangeableAttributes>, StorageError> {
        self.write_repo(repo, |tx| {
            if !exists(tx, repo, target)? {
                return Ok(None);
            }
            let key = target.key();
            let old = stored(tx, repo, target)?;
            let new = old.patched(patch);
            if new == old {
                return Ok(Some(new));
            }
            if new == ChangeableAttributes::ALL_ENABLED {
                tx.remove(ATTRIBUTES, (repo, &key))?;
            } else {
                tx.insert(ATTRIBUTES, (repo, &key), &json(&new))?;
            }
            let (tag, digest) = match target {
                Target::Repository => (None, None),
                Target::Tag(t) => (Some(t.clone()), None),
                Target::Manifest(d) => (None, Some(d.clone())),
            };
            super::log(
                tx,
                repo,
                origin,
                RecordKind::AttributesSet {
                    tag,
                    digest,
                    attributes: new,
                },
            )?;
            Ok(Some(new))
        })
    }

    /// The repository's properties; `None` when it is unknown.
    pub fn repository(&self, repo: &str) -> Result<Option<RepoProps>, StorageError> {
        self.kv.read(|tx| {
            let Some(created) = tx.get(REPOS, repo)? else {
                return Ok(None);
            };
            let updated = tx
                .get(TIMES, (repo, ""))?
                .map(|(_, updated)| updated)
                .unwrap_or(created);
            Ok(Some(RepoProps {
                created,
                updated,
                manifest_count: collect_keys(tx, MANIFESTS, repo)?.len(),
                tag_count: collect_keys(tx, TAGS, repo)?.len(),
                attributes: stored(tx, repo, &Target::Repository)?,
            }))
        })
    }

    /// Every tag of the repository in name order; `None` when it is unknown.
    pub fn tag_props(&self, repo: &str) -> Result<Option<Vec<TagProps>>, StorageError> {
        self.kv.read(|tx| {
            if !tx.contains(REPOS, repo)? {
                return Ok(None);
            }
            let hidden = hidden(tx, repo)?;
            let mut out = Vec::new();
            for (tag, digest_s) in scan(tx, repo)? {
                let digest = parse_digest(&digest_s)?;
                let target = Target::Tag(tag.clone());
                let (created, updated) = match tx.get(TIMES, (repo, &target.key()))? {
                    Some(times) => times,
                    None => {
                        let pushed = match tx.get(MANIFESTS, (repo, &digest_s))? {
                            Some(m) => from_json::<ManifestMeta>(&m)?.pushed_at,
                            None => 0,
                        };
                        (pushed, pushed)
                    }
                };
                out.push(TagProps {
                    listed: !hidden.tag(&tag),
                    attributes: stored(tx, repo, &target)?,
                    name: tag,
                    digest,
                    created,
                    updated,
                });
            }
            // Evicted tags are still known (see `quota`), with the digest they had.
            for (tag, row) in super::quota::evicted_in(tx, repo)? {
                let target = Target::Tag(tag.clone());
                let (created, updated) = tx
                    .get(TIMES, (repo, &target.key()))?
                    .unwrap_or((row.evicted_at, row.evicted_at));
                out.push(TagProps {
                    listed: !hidden.tag(&tag),
                    attributes: stored(tx, repo, &target)?,
                    name: tag,
                    digest: row.digest,
                    created,
                    updated,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Some(out))
        })
    }

    /// Every manifest of the repository in digest order; `None` when it is unknown.
    pub fn manifest_props(&self, repo: &str) -> Result<Option<Vec<ManifestProps>>, StorageError> {
        self.kv.read(|tx| {
            if !tx.contains(REPOS, repo)? {
                return Ok(None);
            }
            let hidden = hidden(tx, repo)?;
            let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (tag, digest) in scan(tx, repo)? {
                tags.entry(digest).or_default().push(tag);
            }
            let mut out = Vec::new();
            for row in tx.prefix(MANIFESTS, &[repo]) {
                let ((_, digest_s), value) = row?;
                let meta: ManifestMeta = from_json(&value)?;
                let digest = parse_digest(&digest_s)?;
                let target = Target::Manifest(digest.clone());
                let key = target.key();
                let (created, updated) = tx
                    .get(TIMES, (repo, &key))?
                    .unwrap_or((meta.pushed_at, meta.pushed_at));
                out.push(ManifestProps {
                    digest,
                    size: meta.size,
                    media_type: meta.media_type,
                    created,
                    updated,
                    tags: tags.remove(&digest_s).unwrap_or_default(),
                    attributes: stored(tx, repo, &target)?,
                    listed: !hidden.repo && !hidden.keys.contains(&key),
                });
            }
            Ok(Some(out))
        })
    }

    /// Deletes a repository: its tags, manifests, blob links and referrers, each tag and
    /// manifest logged as deleted. A client is refused when the repository or anything in it
    /// may not be deleted. `false` when it is unknown.
    pub fn delete_repository(&self, repo: &str, origin: Origin) -> Result<bool, StorageError> {
        self.write_repo(repo, |tx| {
            if !tx.contains(REPOS, repo)? {
                return Ok(false);
            }
            let tags = scan(tx, repo)?;
            let manifests = collect_keys(tx, MANIFESTS, repo)?;
            let mut targets: Vec<Target> =
                tags.iter().map(|(t, _)| Target::Tag(t.clone())).collect();
            for d in &manifests {
                targets.push(Target::Manifest(parse_digest(d)?));
            }
            let needs = [Attribute::Delete, Attribute::Write];
            require(tx, repo, origin, &targets, &needs, "deleted")?;
            for (tag, _) in &tags {
                tx.remove(TAGS, (repo, tag))?;
            }
            for d in &manifests {
                tx.remove(MANIFESTS, (repo, d))?;
            }
            for blob in collect_keys(tx, super::REPO_BLOBS, repo)? {
                tx.remove(super::REPO_BLOBS, (repo, &blob))?;
            }
            let referrers: Vec<(String, String)> = tx
                .prefix(super::REFERRERS, &[repo])
                .keys()
                .map(|key| key.map(|(_, s, d)| (s, d)))
                .collect::<Result<_, _>>()?;
            for (s, d) in referrers {
                tx.remove(super::REFERRERS, (repo, &s, &d))?;
            }
            tx.remove(REPOS, repo)?;
            for (tag, _) in tags {
                super::log(tx, repo, origin, RecordKind::TagDeleted { tag })?;
            }
            for d in manifests {
                let digest = parse_digest(&d)?;
                super::log(tx, repo, origin, RecordKind::ManifestDeleted { digest })?;
            }
            forget_repo(tx, repo)?;
            super::quota::forget_repo(tx, repo)?;
            Ok(true)
        })
    }
}

/// (tag, digest) of every tag of one repository, in name order.
fn scan(tx: &Read, repo: &str) -> Result<Vec<(String, String)>, StorageError> {
    tx.prefix(TAGS, &[repo])
        .map(|row| row.map(|((_, tag), digest)| (tag, digest)))
        .collect()
}
