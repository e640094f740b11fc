//! Recovery of the metadata database (`meta.redb`) from the blob files, when it is lost and
//! the blobs are still there (`connected-registry recover`).
//!
//! Manifests are blobs: every small blob file that parses as a manifest (`schemaVersion` 2)
//! and hashes to its name is one, and its references (layers, config, index children, subject)
//! say what it needs. What the blobs cannot say is where content was: repository names and
//! tags live only in the database. The caller passes what else on disk remembers them (sync's
//! state: the tags sync wrote, [`KnownTag`]); manifests no known tag reaches are placed, by
//! digest, in one repository for the operator to look through (`orphans`). Everything is
//! stored as sync would store it ([`Origin::Sync`]), so nothing recovered is pushed up to a
//! parent as if a client had just pushed it.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use oci::digest::Digest;
use oci::manifest;
use oci::name::RepoName;
use oci::reference::Reference;
use oci::Origin;

use super::{StorageError, Store};

/// A tag something outside the database remembers (sync's state).
#[derive(Debug, Clone)]
pub struct KnownTag {
    pub repo: String,
    pub tag: String,
    pub digest: Digest,
}

/// What a recovery rebuilt and what it could not.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RecoverReport {
    /// Blob files looked at.
    pub blobs: u64,
    /// Of those, manifests.
    pub manifests: usize,
    /// Tags put back (from sync's state).
    pub tags_restored: usize,
    /// Known tags not put back, with why (their manifest or some of its content is not here).
    pub tags_lost: Vec<String>,
    /// Manifests no known tag reaches, stored by digest in the orphans repository.
    pub orphan_manifests: usize,
    /// Manifests that could not be stored anywhere (content they reference is missing), with why.
    pub manifests_unplaced: Vec<String>,
    /// Repositories that now exist.
    pub repos: Vec<String>,
}

/// A manifest found among the blobs.
struct Found {
    body: Bytes,
    parsed: manifest::Manifest,
}

impl Store {
    /// Rebuilds the metadata of a store whose database was just created empty. Blocking.
    pub fn recover(
        &self,
        known_tags: &[KnownTag],
        orphans: &RepoName,
    ) -> Result<RecoverReport, StorageError> {
        let mut report = ScanReport::default();
        let found = self.find_manifests(&mut report)?;
        let mut out = RecoverReport {
            blobs: report.blobs,
            manifests: found.len(),
            ..RecoverReport::default()
        };
        // Referrers by subject, so a placed manifest brings its signatures and SBOMs along.
        let mut referrers: BTreeMap<&Digest, Vec<&Digest>> = BTreeMap::new();
        for (digest, f) in &found {
            if let Some(subject) = &f.parsed.subject {
                referrers.entry(&subject.digest).or_default().push(digest);
            }
        }
        let mut placed_anywhere: HashSet<Digest> = HashSet::new();
        for known in known_tags {
            let Ok(repo) = known.repo.parse::<RepoName>() else {
                out.tags_lost.push(format!(
                    "{}:{}: not a repository name",
                    known.repo, known.tag
                ));
                continue;
            };
            if !found.contains_key(&known.digest) {
                out.tags_lost.push(format!(
                    "{}:{} -> {}: the manifest is not among the blobs",
                    known.repo, known.tag, known.digest
                ));
                continue;
            }
            let mut placed = HashSet::new();
            match self.place(&repo, &known.digest, &found, &referrers, &mut placed) {
                Ok(()) => {
                    let f = &found[&known.digest];
                    match Reference::parse(&known.tag) {
                        Ok(tag @ Reference::Tag(_)) => {
                            self.put_manifest(&repo, &tag, None, f.body.clone(), Origin::Sync)?;
                            out.tags_restored += 1;
                        }
                        _ => out.tags_lost.push(format!(
                            "{}:{}: not a tag (its manifest is kept by digest)",
                            known.repo, known.tag
                        )),
                    }
                }
                Err(err) => out.tags_lost.push(format!(
                    "{}:{} -> {}: {err}",
                    known.repo, known.tag, known.digest
                )),
            }
            placed_anywhere.extend(placed);
        }
        for digest in found.keys() {
            if placed_anywhere.contains(digest) {
                continue;
            }
            let mut placed = HashSet::new();
            match self.place(orphans, digest, &found, &referrers, &mut placed) {
                Ok(()) => {}
                Err(err) => out.manifests_unplaced.push(format!("{digest}: {err}")),
            }
            out.orphan_manifests += placed
                .iter()
                .filter(|d| !placed_anywhere.contains(*d))
                .count();
            placed_anywhere.extend(placed);
        }
        out.repos = self.repos()?;
        Ok(out)
    }

    /// Stores `digest` in `repo` by digest after what it needs (its blobs, its index children
    /// that are here), then its referrers. `placed` stops cycles and repeats.
    fn place(
        &self,
        repo: &RepoName,
        digest: &Digest,
        found: &BTreeMap<Digest, Found>,
        referrers: &BTreeMap<&Digest, Vec<&Digest>>,
        placed: &mut HashSet<Digest>,
    ) -> Result<(), StorageError> {
        if !placed.insert(digest.clone()) {
            return Ok(());
        }
        let f = &found[digest];
        let mut skipped = Vec::new();
        for child in f.parsed.children() {
            if found.contains_key(&child.digest)
                && self
                    .place(repo, &child.digest, found, referrers, placed)
                    .is_ok()
            {
                continue;
            }
            // An index keeps the children that are here (as sync's platform filter does).
            skipped.push(child.digest.clone());
        }
        for blob in f.parsed.blobs().filter(|d| !d.is_foreign()) {
            if self.blob_exists(&blob.digest) {
                self.link_blob(repo, &blob.digest)?;
            }
        }
        let by_digest = Reference::Digest(digest.clone());
        let stored = self.put_partial_index(
            repo,
            &by_digest,
            None,
            f.body.clone(),
            Origin::Sync,
            skipped,
        );
        if let Err(err) = stored {
            placed.remove(digest);
            return Err(err);
        }
        for referrer in referrers.get(digest).into_iter().flatten() {
            // A referrer that cannot be stored does not undo its subject.
            let _ = self.place(repo, referrer, found, referrers, placed);
        }
        Ok(())
    }

    /// Every blob file that is a manifest and hashes to its name.
    fn find_manifests(
        &self,
        report: &mut ScanReport,
    ) -> Result<BTreeMap<Digest, Found>, StorageError> {
        let limit = self.limits().max_manifest_size;
        let mut found = BTreeMap::new();
        for (digest, size) in self.inner.blobs.list()?.blobs {
            report.blobs += 1;
            if size > limit {
                continue;
            }
            let Some(mut source) = self.inner.blobs.open(&digest)? else {
                continue;
            };
            let body = source.read_at(0, size).map_err(StorageError::io(format!(
                "read blob {digest} in {}",
                self.blob_location()
            )))?;
            if !looks_like_manifest(&body) || !digest.matches(&body) {
                continue;
            }
            if let Ok(parsed) = manifest::parse(None, &body) {
                found.insert(digest, Found { body, parsed });
            }
        }
        Ok(found)
    }
}

/// Counts of the scan of `blobs/`.
#[derive(Default)]
struct ScanReport {
    blobs: u64,
}

/// A JSON object with `"schemaVersion": 2`: what every manifest has and configs and layers
/// do not.
fn looks_like_manifest(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<i64>,
    }
    body.first() == Some(&b'{')
        && serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.schema_version == Some(2))
}
