//! Scrub: every stored blob hashed against the digest it is stored under (a damaged one is
//! quarantined, see `integrity`), then every manifest, blob link and manifest reference the
//! metadata holds checked for its file. What is missing is listed with a repository that
//! holds it, which is what a repair needs to fetch it again from a parent (`connected-registry
//! scrub --repair` does that; this module never touches the network).

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use oci::digest::Digest;

use super::blob_store::hash_all;
use super::{StorageError, Store};

/// What a missing file held, which decides how a repair fetches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Manifest,
    Blob,
}

/// Content the metadata needs whose file is not there (lost, or quarantined just now).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Missing {
    pub kind: Kind,
    /// A repository that holds it (the one to fetch it from).
    pub repo: String,
    pub digest: Digest,
}

/// The outcome of a scrub.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScrubReport {
    /// Blob files hashed (manifests are blob files too).
    pub checked: u64,
    pub checked_bytes: u64,
    /// Files whose bytes did not hash to their digest: moved to quarantine.
    pub damaged: Vec<Digest>,
    /// Content the metadata needs that has no file (the damaged ones among it).
    pub missing: Vec<Missing>,
    /// Names where blobs live (files under `blobs/`, objects under `blobs/` in the container)
    /// that are not a digest: left alone, named for the operator.
    pub stray: Vec<String>,
}

impl Store {
    /// Hashes every blob file and checks every file the metadata needs. Blocking, and reads
    /// every byte of the store: run it from `spawn_blocking`, when the disk can take it.
    pub fn scrub(&self) -> Result<ScrubReport, StorageError> {
        let mut report = ScrubReport::default();
        let listing = self.inner.blobs.list()?;
        report.stray = listing.stray;
        for (digest, _) in listing.blobs {
            // Collected meanwhile: nothing to check.
            let Some(source) = self.inner.blobs.open(&digest)? else {
                continue;
            };
            match hash_all(&mut source.into_read(), digest.algorithm()) {
                Ok((hasher, len)) => {
                    let actual = hasher.finish();
                    report.checked += 1;
                    report.checked_bytes += len;
                    if actual == digest {
                        self.inner.integrity.verified(&digest);
                    } else {
                        let why = format!("scrub: its bytes hash to {actual}");
                        self.inner
                            .integrity
                            .quarantine(&*self.inner.blobs, &digest, &why);
                        report.damaged.push(digest);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StorageError::io(format!(
                        "read blob {digest} in {}",
                        self.blob_location()
                    ))(e))
                }
            }
        }
        report.missing = self.missing_files()?;
        Ok(report)
    }

    /// Content the metadata needs whose file is absent, each once, with a repository holding it.
    pub fn missing_files(&self) -> Result<Vec<Missing>, StorageError> {
        let snap = self.inner.meta.gc_snapshot()?;
        let manifests: HashSet<(&str, &Digest)> = snap
            .manifests
            .iter()
            .map(|(repo, digest, _)| (repo.as_str(), digest))
            .collect();
        let mut seen = HashSet::new();
        let mut missing = BTreeSet::new();
        let mut check = |repo: &str, digest: &Digest, kind: Kind| {
            if seen.insert(digest.clone()) && !self.blob_exists(digest) {
                missing.insert(Missing {
                    kind,
                    repo: repo.to_owned(),
                    digest: digest.clone(),
                });
            }
        };
        for (repo, digest, meta) in &snap.manifests {
            check(repo, digest, Kind::Manifest);
            for reference in meta.refs.iter().filter(|r| !meta.skipped.contains(r)) {
                let kind = if manifests.contains(&(repo.as_str(), reference)) {
                    Kind::Manifest
                } else {
                    Kind::Blob
                };
                check(repo, reference, kind);
            }
        }
        for (repo, digest, _) in &snap.links {
            check(repo, digest, Kind::Blob);
        }
        Ok(missing.into_iter().collect())
    }

    /// Puts back the file of a manifest whose metadata is still here (fetched again from a
    /// parent): the bytes must hash to `digest`.
    pub fn restore_manifest_file(&self, digest: &Digest, body: &Bytes) -> Result<(), StorageError> {
        let actual = digest.same_algorithm_of(body);
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let staged = self.inner.blobs.stage(body.clone())?;
        let _taking = self.inner.gc_lock.read().expect("gc lock");
        staged.install(digest)
    }
}
