//! What the `/acr/v1` API shows and changes beside the content: each repository's, tag's and
//! manifest's `changeableAttributes` and the times it was created and last updated, kept in two
//! redb tables next to the tags and manifests, and the rules that make a lock hold.
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

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{
    from_json, json, parse_digest, ManifestMeta, Meta, RecordKind, MANIFESTS, REPOS, TAGS,
};
use crate::storage::StorageError;
use oci::{AttributesPatch, ChangeableAttributes, Digest, Origin};

/// (repo, item key) -> `ChangeableAttributes` as JSON; absent = all enabled.
pub(super) const ATTRIBUTES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("attributes");
/// (repo, item key) -> (created, last updated), unix seconds.
pub(super) const TIMES: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("item_times");

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

/// A table `ATTRIBUTES` can be read from (in a read or a write transaction).
pub(super) trait AttributesTable:
    ReadableTable<(&'static str, &'static str), &'static [u8]>
{
}
impl<T: ReadableTable<(&'static str, &'static str), &'static [u8]>> AttributesTable for T {}

fn stored(
    table: &impl AttributesTable,
    repo: &str,
    target: &Target,
) -> Result<ChangeableAttributes, StorageError> {
    match table.get((repo, target.key().as_str()))? {
        Some(v) => from_json(v.value()),
        None => Ok(ChangeableAttributes::ALL_ENABLED),
    }
}

/// Refuses a client's `action` on `targets` (the repository is always checked too) when any of
/// them has one of `needs` switched off. Other origins pass: see the module doc.
pub(super) fn require(
    tx: &WriteTransaction,
    repo: &str,
    origin: Origin,
    targets: &[Target],
    needs: &[Attribute],
    action: &str,
) -> Result<(), StorageError> {
    if origin != Origin::Client {
        return Ok(());
    }
    let table = tx.open_table(ATTRIBUTES)?;
    for target in std::iter::once(&Target::Repository).chain(targets) {
        let attributes = stored(&table, repo, target)?;
        if let Some(off) = needs.iter().find(|a| !a.of(&attributes)) {
            return Err(refusal(repo, target, *off, action));
        }
    }
    Ok(())
}

/// Whether an eviction must leave this tag: it, its manifest or its repository may not be
/// deleted or written (a lock is how an operator pins an image), as GC leaves such manifests.
pub(super) fn pinned(
    tx: &WriteTransaction,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<bool, StorageError> {
    let a = stored(
        &tx.open_table(ATTRIBUTES)?,
        repo,
        &Target::Tag(tag.to_owned()),
    )?;
    Ok(!a.delete_enabled || !a.write_enabled || gc_must_keep(tx, repo, digest)?)
}

/// Whether GC must leave this manifest: it (or its repository) may not be deleted.
pub(super) fn gc_must_keep(
    tx: &WriteTransaction,
    repo: &str,
    digest: &Digest,
) -> Result<bool, StorageError> {
    let table = tx.open_table(ATTRIBUTES)?;
    for target in [Target::Repository, Target::Manifest(digest.clone())] {
        let a = stored(&table, repo, &target)?;
        if !a.delete_enabled || !a.write_enabled {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Keeps the created / last-updated times and drops what a deleted item carried; called for
/// every change logged, in its transaction.
pub(super) fn touch(
    tx: &WriteTransaction,
    repo: &str,
    kind: &RecordKind,
    now: u64,
) -> Result<(), StorageError> {
    let mut times = tx.open_table(TIMES)?;
    let mut stamp = |key: &str| -> Result<(), StorageError> {
        let created = times.get((repo, key))?.map(|v| v.value().0).unwrap_or(now);
        times.insert((repo, key), (created, now))?;
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
        times.remove((repo, key.as_str()))?;
        tx.open_table(ATTRIBUTES)?.remove((repo, key.as_str()))?;
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
pub(super) fn forget_repo(tx: &WriteTransaction, repo: &str) -> Result<(), StorageError> {
    let mut times = tx.open_table(TIMES)?;
    let keys: Vec<String> = collect_keys(&times, repo)?;
    for key in &keys {
        times.remove((repo, key.as_str()))?;
    }
    let mut attributes = tx.open_table(ATTRIBUTES)?;
    let keys: Vec<String> = collect_keys(&attributes, repo)?;
    for key in &keys {
        attributes.remove((repo, key.as_str()))?;
    }
    Ok(())
}

fn collect_keys<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    repo: &str,
) -> Result<Vec<String>, StorageError> {
    let mut keys = Vec::new();
    for entry in table.range((repo, "")..)? {
        let (key, _) = entry?;
        let (r, k) = key.value();
        if r != repo {
            break;
        }
        keys.push(k.to_owned());
    }
    Ok(keys)
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

pub(super) fn hidden(table: &impl AttributesTable, repo: &str) -> Result<Hidden, StorageError> {
    let mut out = Hidden {
        repo: false,
        keys: HashSet::new(),
    };
    for entry in table.range((repo, "")..)? {
        let (key, value) = entry?;
        let (r, k) = key.value();
        if r != repo {
            break;
        }
        let attributes: ChangeableAttributes = from_json(value.value())?;
        if !attributes.list_enabled {
            if k.is_empty() {
                out.repo = true;
            } else {
                out.keys.insert(k.to_owned());
            }
        }
    }
    Ok(out)
}

/// Whether listings may name `repo` (its own `listEnabled`).
pub(super) fn repo_listed(table: &impl AttributesTable, repo: &str) -> Result<bool, StorageError> {
    Ok(stored(table, repo, &Target::Repository)?.list_enabled)
}

/// The first of the items a read goes through that has `readEnabled: false`.
pub(super) fn unreadable(
    table: &impl AttributesTable,
    repo: &str,
    targets: &[Target],
) -> Result<Option<Target>, StorageError> {
    for target in std::iter::once(&Target::Repository).chain(targets) {
        if !stored(table, repo, target)?.read_enabled {
            return Ok(Some(target.clone()));
        }
    }
    Ok(None)
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

impl Meta {
    /// The item's own attributes; `None` when it does not exist.
    pub fn attributes(
        &self,
        repo: &str,
        target: &Target,
    ) -> Result<Option<ChangeableAttributes>, StorageError> {
        let tx = self.db.begin_read()?;
        let exists = match target {
            Target::Repository => tx.open_table(REPOS)?.get(repo)?.is_some(),
            Target::Tag(tag) => tx.open_table(TAGS)?.get((repo, tag.as_str()))?.is_some(),
            Target::Manifest(d) => tx
                .open_table(MANIFESTS)?
                .get((repo, d.to_string().as_str()))?
                .is_some(),
        };
        if !exists {
            return Ok(None);
        }
        Ok(Some(stored(&tx.open_table(ATTRIBUTES)?, repo, target)?))
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
        let tx = self.begin_write()?;
        let exists = match target {
            Target::Repository => tx.open_table(REPOS)?.get(repo)?.is_some(),
            Target::Tag(tag) => tx.open_table(TAGS)?.get((repo, tag.as_str()))?.is_some(),
            Target::Manifest(d) => tx
                .open_table(MANIFESTS)?
                .get((repo, d.to_string().as_str()))?
                .is_some(),
        };
        if !exists {
            return Ok(None);
        }
        let key = target.key();
        let mut table = tx.open_table(ATTRIBUTES)?;
        let old = stored(&table, repo, target)?;
        let new = old.patched(patch);
        if new == old {
            return Ok(Some(new));
        }
        if new == ChangeableAttributes::ALL_ENABLED {
            table.remove((repo, key.as_str()))?;
        } else {
            table.insert((repo, key.as_str()), json(&new).as_slice())?;
        }
        drop(table);
        let (tag, digest) = match target {
            Target::Repository => (None, None),
            Target::Tag(t) => (Some(t.clone()), None),
            Target::Manifest(d) => (None, Some(d.clone())),
        };
        super::log(
            &tx,
            repo,
            origin,
            RecordKind::AttributesSet {
                tag,
                digest,
                attributes: new,
            },
        )?;
        tx.commit()?;
        Ok(Some(new))
    }

    /// The repository's properties; `None` when it is unknown.
    pub fn repository(&self, repo: &str) -> Result<Option<RepoProps>, StorageError> {
        let tx = self.db.begin_read()?;
        let Some(created) = tx.open_table(REPOS)?.get(repo)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let updated = tx
            .open_table(TIMES)?
            .get((repo, ""))?
            .map(|v| v.value().1)
            .unwrap_or(created);
        let tag_count = collect_keys(&tx.open_table(TAGS)?, repo)?.len();
        let manifest_count = collect_keys(&tx.open_table(MANIFESTS)?, repo)?.len();
        let attributes = stored(&tx.open_table(ATTRIBUTES)?, repo, &Target::Repository)?;
        Ok(Some(RepoProps {
            created,
            updated,
            manifest_count,
            tag_count,
            attributes,
        }))
    }

    /// Every tag of the repository in name order; `None` when it is unknown.
    pub fn tag_props(&self, repo: &str) -> Result<Option<Vec<TagProps>>, StorageError> {
        let tx = self.db.begin_read()?;
        if tx.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let attributes = tx.open_table(ATTRIBUTES)?;
        let hidden = hidden(&attributes, repo)?;
        let times = tx.open_table(TIMES)?;
        let manifests = tx.open_table(MANIFESTS)?;
        let mut out = Vec::new();
        for entry in tx.open_table(TAGS)?.range((repo, "")..)? {
            let (key, value) = entry?;
            let (r, tag) = key.value();
            if r != repo {
                break;
            }
            let digest = parse_digest(value.value())?;
            let target = Target::Tag(tag.to_owned());
            let (created, updated) = match times.get((repo, target.key().as_str()))? {
                Some(v) => v.value(),
                None => {
                    let pushed = match manifests.get((repo, value.value()))? {
                        Some(m) => from_json::<ManifestMeta>(m.value())?.pushed_at,
                        None => 0,
                    };
                    (pushed, pushed)
                }
            };
            out.push(TagProps {
                name: tag.to_owned(),
                digest,
                created,
                updated,
                attributes: stored(&attributes, repo, &target)?,
                listed: !hidden.tag(tag),
            });
        }
        // Evicted tags are still known (see `quota`), with the digest they had.
        for (tag, row) in super::quota::evicted_in(&tx.open_table(super::quota::EVICTED)?, repo)? {
            let target = Target::Tag(tag.clone());
            let (created, updated) = times
                .get((repo, target.key().as_str()))?
                .map(|v| v.value())
                .unwrap_or((row.evicted_at, row.evicted_at));
            out.push(TagProps {
                listed: !hidden.tag(&tag),
                attributes: stored(&attributes, repo, &target)?,
                name: tag,
                digest: row.digest,
                created,
                updated,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    /// Every manifest of the repository in digest order; `None` when it is unknown.
    pub fn manifest_props(&self, repo: &str) -> Result<Option<Vec<ManifestProps>>, StorageError> {
        let tx = self.db.begin_read()?;
        if tx.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(None);
        }
        let attributes = tx.open_table(ATTRIBUTES)?;
        let hidden = hidden(&attributes, repo)?;
        let times = tx.open_table(TIMES)?;
        let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tag, digest) in scan(&tx.open_table(TAGS)?, repo)? {
            tags.entry(digest).or_default().push(tag);
        }
        let mut out = Vec::new();
        for entry in tx.open_table(MANIFESTS)?.range((repo, "")..)? {
            let (key, value) = entry?;
            let (r, digest_s) = key.value();
            if r != repo {
                break;
            }
            let meta: ManifestMeta = from_json(value.value())?;
            let digest = parse_digest(digest_s)?;
            let target = Target::Manifest(digest.clone());
            let key = target.key();
            let (created, updated) = times
                .get((repo, key.as_str()))?
                .map(|v| v.value())
                .unwrap_or((meta.pushed_at, meta.pushed_at));
            out.push(ManifestProps {
                digest,
                size: meta.size,
                media_type: meta.media_type,
                created,
                updated,
                tags: tags.remove(digest_s).unwrap_or_default(),
                attributes: stored(&attributes, repo, &target)?,
                listed: !hidden.repo && !hidden.keys.contains(&key),
            });
        }
        Ok(Some(out))
    }

    /// Deletes a repository: its tags, manifests, blob links and referrers, each tag and
    /// manifest logged as deleted. A client is refused when the repository or anything in it
    /// may not be deleted. `false` when it is unknown.
    pub fn delete_repository(&self, repo: &str, origin: Origin) -> Result<bool, StorageError> {
        let tx = self.begin_write()?;
        if tx.open_table(REPOS)?.get(repo)?.is_none() {
            return Ok(false);
        }
        let tags = scan(&tx.open_table(TAGS)?, repo)?;
        let manifests: Vec<String> = collect_keys(&tx.open_table(MANIFESTS)?, repo)?;
        let mut targets: Vec<Target> = tags.iter().map(|(t, _)| Target::Tag(t.clone())).collect();
        for d in &manifests {
            targets.push(Target::Manifest(parse_digest(d)?));
        }
        let needs = [Attribute::Delete, Attribute::Write];
        require(&tx, repo, origin, &targets, &needs, "deleted")?;
        {
            let mut table = tx.open_table(TAGS)?;
            for (tag, _) in &tags {
                table.remove((repo, tag.as_str()))?;
            }
            let mut table = tx.open_table(MANIFESTS)?;
            for d in &manifests {
                table.remove((repo, d.as_str()))?;
            }
            let mut links = tx.open_table(super::REPO_BLOBS)?;
            for blob in collect_keys(&links, repo)? {
                links.remove((repo, blob.as_str()))?;
            }
            let mut referrers = tx.open_table(super::REFERRERS)?;
            let mut keys = Vec::new();
            for entry in referrers.range((repo, "", "")..)? {
                let (key, _) = entry?;
                let (r, s, d) = key.value();
                if r != repo {
                    break;
                }
                keys.push((s.to_owned(), d.to_owned()));
            }
            for (s, d) in keys {
                referrers.remove((repo, s.as_str(), d.as_str()))?;
            }
            tx.open_table(REPOS)?.remove(repo)?;
        }
        for (tag, _) in tags {
            super::log(&tx, repo, origin, RecordKind::TagDeleted { tag })?;
        }
        for d in manifests {
            let digest = parse_digest(&d)?;
            super::log(&tx, repo, origin, RecordKind::ManifestDeleted { digest })?;
        }
        forget_repo(&tx, repo)?;
        super::quota::forget_repo(&tx, repo)?;
        tx.commit()?;
        Ok(true)
    }
}

/// (key, value) pairs of a `(repo, key) -> &str` table for one repository.
fn scan(
    table: &impl ReadableTable<(&'static str, &'static str), &'static str>,
    repo: &str,
) -> Result<Vec<(String, String)>, StorageError> {
    let mut out = Vec::new();
    for entry in table.range((repo, "")..)? {
        let (key, value) = entry?;
        let (r, k) = key.value();
        if r != repo {
            break;
        }
        out.push((k.to_owned(), value.value().to_owned()));
    }
    Ok(out)
}
