//! Writing a bundle: the tagged images of the repositories asked for, with the referrers of
//! each manifest, as an OCI image layout in a tar (see [`crate::format`]). The file is
//! written beside its final name and renamed into place when complete, so a failed export
//! never leaves a file that looks like a bundle.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use oci::{manifest, Descriptor, Digest, Reference, RepoName};
use registry::storage::BlobRead;
use registry::Store;
use serde::Serialize;

use crate::format::{self, Index};
use crate::{BundleError, State};

/// A tar block: headers are one, content is padded to whole ones, two zero blocks end it.
const BLOCK: u64 = 512;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Repository names, `*` standing for any run of characters.
    pub patterns: Vec<String>,
    /// What the site holds: left out of the bundle.
    pub since: Option<State>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportReport {
    pub repositories: usize,
    pub tags: usize,
    pub referrers: usize,
    /// Manifests and blobs written into the file.
    pub manifests: usize,
    pub blobs: usize,
    /// Manifests and blobs left out because the site holds them (`--since-state`).
    pub left_out: usize,
    /// Bytes of blob and manifest content in the file (the file adds a 512-byte header per
    /// entry and pads each to 512 bytes).
    pub content_bytes: u64,
    pub file_bytes: u64,
}

/// What the walk over the store found: manifests in the order they must be stored, the
/// blobs they reference, and `index.json`'s descriptors.
#[derive(Default)]
struct Plan {
    manifests: Vec<(Digest, Bytes)>,
    seen: HashSet<Digest>,
    blobs: BTreeSet<Digest>,
    /// Blob order as first referenced, so the file reads in image order.
    blob_order: Vec<Digest>,
    index: Vec<Descriptor>,
    skipped: BTreeSet<Digest>,
    report: ExportReport,
}

/// Exports what `options` asks for from `store` into the file `out`.
pub fn export(
    store: &Store,
    options: &ExportOptions,
    out: &Path,
) -> Result<ExportReport, BundleError> {
    let all = store.repos_visible("", usize::MAX, &|_| true, true)?;
    let mut repositories = Vec::new();
    for pattern in &options.patterns {
        let matched: Vec<&String> = all.iter().filter(|r| format::matches(pattern, r)).collect();
        if matched.is_empty() {
            return Err(BundleError::Invalid(format!(
                "no repository here matches {pattern:?} (repositories: {}); check --repository",
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                }
            )));
        }
        repositories.extend(matched.into_iter().cloned());
    }
    repositories.sort();
    repositories.dedup();
    let mut plan = Plan::default();
    for repository in &repositories {
        let name: RepoName = repository
            .parse()
            .map_err(|e| BundleError::Invalid(format!("repository {repository:?}: {e}")))?;
        plan.report.repositories += 1;
        for tag in store.tags(&name)? {
            let Some(m) = store.get_manifest(&name, &Reference::Tag(tag.clone()))? else {
                continue;
            };
            let mut descriptor =
                Descriptor::new(m.media_type.clone(), m.digest.clone(), m.body.len() as u64);
            format::annotate(&mut descriptor, repository, Some(&tag));
            plan.index.push(descriptor);
            plan.report.tags += 1;
            walk(store, &name, &m.digest, &mut plan)?;
        }
    }
    write(store, plan, options.since.as_ref(), out)
}

/// Adds the manifest `digest` of `repo` to the plan: its children first, its blobs, then
/// itself, then its referrers (each listed in `index.json` by digest).
fn walk(
    store: &Store,
    repo: &RepoName,
    digest: &Digest,
    plan: &mut Plan,
) -> Result<(), BundleError> {
    if plan.seen.contains(digest) {
        return Ok(());
    }
    let m = store
        .get_manifest(repo, &Reference::Digest(digest.clone()))?
        .ok_or_else(|| {
            BundleError::Missing(format!(
                "{repo}@{digest} is referenced but not stored here (run `connected-registry scrub`)"
            ))
        })?;
    let parsed = manifest::parse(Some(&m.media_type), &m.body)
        .map_err(|e| BundleError::Invalid(format!("{repo}@{digest}: {e}")))?;
    for child in parsed.children() {
        if m.skipped.contains(&child.digest) {
            plan.skipped.insert(child.digest.clone());
            continue;
        }
        walk(store, repo, &child.digest, plan)?;
    }
    for blob in parsed.blobs().filter(|b| !b.is_foreign()) {
        if plan.blobs.insert(blob.digest.clone()) {
            plan.blob_order.push(blob.digest.clone());
        }
    }
    plan.seen.insert(digest.clone());
    plan.manifests.push((digest.clone(), m.body));
    for referrer in store.referrers(repo, digest)? {
        if plan.seen.contains(&referrer.digest) {
            continue;
        }
        walk(store, repo, &referrer.digest, plan)?;
        let mut descriptor = Descriptor::new(
            referrer.media_type.clone(),
            referrer.digest.clone(),
            referrer.size,
        );
        format::annotate(&mut descriptor, repo.as_str(), None);
        plan.index.push(descriptor);
        plan.report.referrers += 1;
    }
    Ok(())
}

fn write(
    store: &Store,
    mut plan: Plan,
    since: Option<&State>,
    out: &Path,
) -> Result<ExportReport, BundleError> {
    let shown = out.display().to_string();
    let partial = out.with_extension("partial");
    let file = File::create(&partial).map_err(BundleError::io(format!(
        "cannot create {}",
        partial.display()
    )))?;
    let written = (|| {
        let mut tar = TarOut { file };
        let mut annotations = BTreeMap::new();
        if !plan.skipped.is_empty() {
            let skipped: Vec<String> = plan.skipped.iter().map(Digest::to_string).collect();
            annotations.insert(format::SKIPPED.to_owned(), skipped.join(" "));
        }
        let index = Index {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests: std::mem::take(&mut plan.index),
            annotations,
        };
        let index = serde_json::to_vec(&index)
            .map_err(|e| BundleError::Invalid(format!("index.json: {e}")))?;
        tar.bytes(format::LAYOUT_FILE, format::LAYOUT_CONTENT)?;
        tar.bytes(format::INDEX_FILE, &index)?;
        let holds = |d: &Digest| since.is_some_and(|s| s.holds(d));
        for (digest, body) in &plan.manifests {
            if holds(digest) {
                plan.report.left_out += 1;
                continue;
            }
            tar.bytes(&format::blob_entry(digest), body)?;
            plan.report.manifests += 1;
            plan.report.content_bytes += body.len() as u64;
        }
        for digest in &plan.blob_order {
            if holds(digest) {
                plan.report.left_out += 1;
                continue;
            }
            let missing = |why: String| {
                BundleError::Missing(format!(
                    "blob {digest} is referenced but cannot be read from {} ({why}): run `connected-registry scrub`",
                    store.blob_location()
                ))
            };
            let blob = store
                .read_blob(digest)
                .map_err(|e| missing(e.to_string()))?
                .ok_or_else(|| missing("it is not there".into()))?;
            let size = blob.size();
            let name = format::blob_entry(digest);
            // A file is copied file to file (`copy_file_range`); other stores stream.
            let size = match blob.into_read() {
                BlobRead::File(file) => tar.entry(&name, size, file)?,
                BlobRead::Stream(stream) => tar.entry(&name, size, stream)?,
            };
            plan.report.blobs += 1;
            plan.report.content_bytes += size;
        }
        let file = tar.finish()?;
        file.sync_all()
            .map_err(BundleError::io(format!("sync {shown}")))?;
        Ok::<_, BundleError>(file.metadata().map(|m| m.len()).unwrap_or_default())
    })();
    match written {
        Ok(bytes) => {
            std::fs::rename(&partial, out).map_err(BundleError::io(format!(
                "rename {} to {shown}",
                partial.display()
            )))?;
            plan.report.file_bytes = bytes;
            Ok(plan.report)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err)
        }
    }
}

/// The bundle file as it is written: a tar (ustar headers, fixed times and modes, so the same
/// content makes the same file). Not `tar::Builder`: blob files are copied file to file
/// (`std::io::copy` uses `copy_file_range`, so their bytes never pass through this process);
/// blobs in an object store stream through.
struct TarOut {
    file: File,
}

impl TarOut {
    fn header(&mut self, name: &str, size: u64) -> Result<(), BundleError> {
        let mut header = tar::Header::new_ustar();
        header
            .set_path(name)
            .map_err(BundleError::io(format!("entry name {name}")))?;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.file
            .write_all(header.as_bytes())
            .map_err(BundleError::io(format!("write entry {name}")))
    }

    fn pad(&mut self, name: &str, size: u64) -> Result<(), BundleError> {
        let padding = (BLOCK - size % BLOCK) % BLOCK;
        self.file
            .write_all(&[0; BLOCK as usize][..padding as usize])
            .map_err(BundleError::io(format!("write entry {name}")))
    }

    /// An entry holding `bytes`.
    fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        self.header(name, bytes.len() as u64)?;
        self.file
            .write_all(bytes)
            .map_err(BundleError::io(format!("write entry {name}")))?;
        self.pad(name, bytes.len() as u64)
    }

    /// An entry holding the `size` bytes of `source`; returns its size.
    fn entry<R: Read>(&mut self, name: &str, size: u64, source: R) -> Result<u64, BundleError> {
        self.header(name, size)?;
        let copied = std::io::copy(&mut source.take(size), &mut self.file)
            .map_err(BundleError::io(format!("write entry {name}")))?;
        if copied != size {
            return Err(BundleError::Missing(format!(
                "the blob of {name} shrank while it was read ({copied} of {size} bytes): run `connected-registry scrub`"
            )));
        }
        self.pad(name, size)?;
        Ok(size)
    }

    /// Ends the archive (two zero blocks).
    fn finish(mut self) -> Result<File, BundleError> {
        self.file
            .write_all(&[0; 2 * BLOCK as usize])
            .map_err(BundleError::io("end the bundle"))?;
        Ok(self.file)
    }
}
