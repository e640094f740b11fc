//! Storing a bundle, as sync stores what it fetches: every digest verified, blobs before the
//! manifests that reference them, an index's children before the index, tags last, so a tag
//! never points at missing content.
//!
//! It goes in three steps. First the tar's entry headers are read (seeking past the content)
//! and checked against the file's length: a truncated file is refused before anything is
//! stored. Then `index.json` and the manifests it reaches are read and verified, and
//! everything they reference is looked for in the bundle or in the store: a bundle that lacks
//! something this store does not hold is refused, still before anything is stored. Only then
//! are blobs written, through stable upload sessions, each verified whole before it is kept;
//! a blob the store holds is skipped by seeking past it, and one whose upload an interruption
//! cut short resumes from the bytes on disk. Manifests follow, and tags last.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use oci::{manifest, Descriptor, Digest, Origin, Reference, RepoName};
use registry::{StorageError, Store};
use serde::Serialize;

use crate::format::{self, Index};
use crate::BundleError;

/// Blob bytes are read and appended in chunks of this size.
const READ_CHUNK: usize = 1 << 20;

/// Blobs written at the same time: enough that the blobs' fsyncs overlap each other and the
/// reading and hashing of the next ones (on the 2-core bench machine 8 imported 1 GiB in
/// 3.0-3.8 s where 4 took 4.3-6.0 s and one 9.3 s), few enough for a small device.
const PARALLEL_BLOBS: usize = 8;

/// A mutex's guard, also after a worker panicked holding it (the data is counters and the
/// first error: still right).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub repositories: usize,
    /// Tags set, and tags that pointed at the bundle's manifest already.
    pub tags_set: usize,
    pub tags_unchanged: usize,
    pub manifests_written: usize,
    pub manifests_present: usize,
    pub blobs_written: usize,
    /// Blobs the store held already (linked, not read from the bundle).
    pub blobs_present: usize,
    /// Blob bytes read from the bundle.
    pub bytes_read: u64,
    /// Blob bytes an earlier, interrupted import had stored already (not read again).
    pub bytes_resumed: u64,
}

/// One entry of the tar: where its content starts, and how long it is.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

/// A manifest to store: its media type and bytes (verified).
struct Loaded {
    media_type: String,
    body: Bytes,
}

/// What one repository gets: manifests in the order to store them, the blobs they
/// reference, and the tags to set.
#[derive(Default)]
struct RepoPlan {
    manifests: Vec<Digest>,
    blobs: BTreeSet<Digest>,
    tags: Vec<(String, Digest)>,
}

struct Bundle<'a> {
    file: File,
    path: PathBuf,
    shown: String,
    entries: HashMap<Digest, Span>,
    store: &'a Store,
    skipped: BTreeSet<Digest>,
    manifests: HashMap<Digest, Loaded>,
    /// Blob sizes, from the descriptors that reference them.
    blob_sizes: HashMap<Digest, u64>,
}

/// Imports the bundle at `path` into `store`.
pub fn import(store: &Store, path: &Path) -> Result<ImportReport, BundleError> {
    let shown = path.display().to_string();
    let file =
        File::open(path).map_err(BundleError::io(format!("cannot open the bundle {shown}")))?;
    let (entries, index_span) = scan(&file, &shown)?;
    let mut bundle = Bundle {
        file,
        path: path.to_owned(),
        shown,
        entries,
        store,
        skipped: BTreeSet::new(),
        manifests: HashMap::new(),
        blob_sizes: HashMap::new(),
    };
    let index = bundle.read_index(index_span)?;
    bundle.skipped = index
        .annotations
        .get(format::SKIPPED)
        .map(|s| {
            s.split_whitespace()
                .filter_map(|d| d.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let plans = bundle.plan(&index)?;
    let mut report = ImportReport {
        repositories: plans.len(),
        ..ImportReport::default()
    };
    bundle.store_blobs(&plans, &mut report)?;
    bundle.store_manifests(&plans, &mut report)?;
    Ok(report)
}

/// The tar's entries by digest, and where `index.json` is; refuses a truncated file.
fn scan(file: &File, shown: &str) -> Result<(HashMap<Digest, Span>, Span), BundleError> {
    let truncated = |detail: String| BundleError::Truncated {
        file: shown.to_owned(),
        detail,
    };
    let length = file
        .metadata()
        .map_err(BundleError::io(format!("stat {shown}")))?
        .len();
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| BundleError::Invalid(format!("{shown} is not a bundle (not a tar: {e})")))?;
    let mut found = HashMap::new();
    let mut index = None;
    let mut layout = false;
    let mut end = 0;
    for entry in entries {
        let entry = entry.map_err(|e| {
            truncated(format!(
                "an entry header after byte {end} cannot be read ({e})"
            ))
        })?;
        let name = entry
            .path()
            .map_err(|e| {
                BundleError::Invalid(format!("{shown}: an entry name is not a path ({e})"))
            })?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let span = Span {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        end = span.offset + span.size;
        if end > length {
            return Err(truncated(format!(
                "entry {name} needs bytes up to {end} but the file ends at {length}"
            )));
        }
        if name == format::INDEX_FILE {
            index = Some(span);
        } else if name == format::LAYOUT_FILE {
            layout = true;
        } else if let Some(digest) = format::entry_digest(&name) {
            found.insert(digest, span);
        }
    }
    match (index, layout) {
        (Some(index), true) => Ok((found, index)),
        _ if found.is_empty() => Err(BundleError::Invalid(format!(
            "{shown} is not a bundle: it holds no OCI image layout (oci-layout, index.json, blobs/)"
        ))),
        _ => Err(truncated(format!(
            "it has blobs but no {} (or no {}), which every bundle has",
            format::INDEX_FILE,
            format::LAYOUT_FILE
        ))),
    }
}

impl Bundle<'_> {
    fn altered(&self, detail: String) -> BundleError {
        BundleError::Altered {
            file: self.shown.clone(),
            detail,
        }
    }

    /// The whole content of a small entry.
    fn read_span(&mut self, span: Span, limit: u64, what: &str) -> Result<Vec<u8>, BundleError> {
        if span.size > limit {
            return Err(self.altered(format!(
                "{what} is {} bytes, over the limit of {limit}",
                span.size
            )));
        }
        let mut bytes = vec![0; span.size as usize];
        self.file
            .seek(SeekFrom::Start(span.offset))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(BundleError::io(format!("read {what} from {}", self.shown)))?;
        Ok(bytes)
    }

    fn read_index(&mut self, span: Span) -> Result<Index, BundleError> {
        let bytes = self.read_span(span, format::MAX_INDEX_BYTES, format::INDEX_FILE)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.altered(format!("{} is not an image index: {e}", format::INDEX_FILE)))
    }

    /// Reads and checks every manifest `index` reaches, and that every blob they reference is
    /// in the bundle or the store; nothing is written yet.
    fn plan(&mut self, index: &Index) -> Result<BTreeMap<String, RepoPlan>, BundleError> {
        let mut plans: BTreeMap<String, RepoPlan> = BTreeMap::new();
        for descriptor in &index.manifests {
            let entry = format::entry_of(descriptor).ok_or_else(|| {
                self.altered(format!(
                    "{} lists {} without a repository ({} or {})",
                    format::INDEX_FILE,
                    descriptor.digest,
                    format::REPOSITORY,
                    format::REF_NAME
                ))
            })?;
            let repo: RepoName = entry.repository.parse().map_err(|e| {
                self.altered(format!(
                    "{}: repository {:?}: {e}",
                    format::INDEX_FILE,
                    entry.repository
                ))
            })?;
            if let Some(tag) = &entry.tag {
                oci::validate_tag(tag)
                    .map_err(|e| self.altered(format!("{}: {e}", format::INDEX_FILE)))?;
            }
            let plan = plans.entry(repo.as_str().to_owned()).or_default();
            let mut visiting = Vec::new();
            self.load(&repo, descriptor, plan, &mut visiting)?;
            if let Some(tag) = entry.tag {
                plan.tags.push((tag, descriptor.digest.clone()));
            }
        }
        Ok(plans)
    }

    /// Loads the manifest `descriptor` names and what it references into `plan`, children
    /// first. `visiting` guards against an index that lists itself.
    fn load(
        &mut self,
        repo: &RepoName,
        descriptor: &Descriptor,
        plan: &mut RepoPlan,
        visiting: &mut Vec<Digest>,
    ) -> Result<(), BundleError> {
        let digest = &descriptor.digest;
        if plan.manifests.contains(digest) {
            return Ok(());
        }
        if visiting.contains(digest) || visiting.len() > 16 {
            return Err(self.altered(format!(
                "manifest {digest} refers to itself or nests too deep"
            )));
        }
        if !self.manifests.contains_key(digest) {
            let loaded = self.read_manifest(repo, descriptor)?;
            self.manifests.insert(digest.clone(), loaded);
        }
        let loaded = &self.manifests[digest];
        let media_type = (!loaded.media_type.is_empty()).then_some(loaded.media_type.as_str());
        let parsed = manifest::parse(media_type, &loaded.body)
            .map_err(|e| self.altered(format!("manifest {digest}: {e}")))?;
        visiting.push(digest.clone());
        for child in parsed.children() {
            if self.skipped.contains(&child.digest) && !self.available(&child.digest) {
                continue;
            }
            self.load(repo, child, plan, visiting)?;
        }
        visiting.pop();
        for blob in parsed.blobs().filter(|b| !b.is_foreign()) {
            let present = self.store.blob_size(&blob.digest);
            match (self.entries.get(&blob.digest), present) {
                (_, Some(_)) => {}
                (Some(span), None) if span.size != blob.size => {
                    return Err(self.altered(format!(
                        "entry {} is {} bytes, but manifest {digest} says {}",
                        format::blob_entry(&blob.digest),
                        span.size,
                        blob.size
                    )))
                }
                (Some(_), None) => {}
                (None, None) => return Err(self.missing(repo, &blob.digest, digest)),
            }
            self.blob_sizes.insert(blob.digest.clone(), blob.size);
            plan.blobs.insert(blob.digest.clone());
        }
        plan.manifests.push(digest.clone());
        Ok(())
    }

    fn available(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest) || self.store.blob_size(digest).is_some()
    }

    fn missing(&self, repo: &RepoName, digest: &Digest, by: &Digest) -> BundleError {
        BundleError::Missing(format!(
            "{repo}: {digest} (referenced by {by}) is neither in the bundle {} nor in this store: the file may be cut short, or it was exported --since-state of another site (export it again with this site's `bundle state`, or without --since-state); nothing was stored",
            self.shown
        ))
    }

    /// A manifest's verified bytes, from the bundle or else from the store.
    fn read_manifest(
        &mut self,
        repo: &RepoName,
        descriptor: &Descriptor,
    ) -> Result<Loaded, BundleError> {
        let digest = &descriptor.digest;
        let limit = self.store.limits().max_manifest_size;
        let body = match self.entries.get(digest).copied() {
            Some(span) => {
                let name = format::blob_entry(digest);
                let body = self.read_span(span, limit, &name)?;
                let actual = digest.same_algorithm_of(&body);
                if &actual != digest {
                    return Err(self.altered(format!("entry {name} hashes to {actual}")));
                }
                body
            }
            None => self
                .store
                .read_small_blob(digest, limit)
                .ok()
                .flatten()
                .map(|body| body.to_vec())
                .ok_or_else(|| self.missing(repo, digest, digest))?,
        };
        Ok(Loaded {
            media_type: descriptor.media_type.clone(),
            body: Bytes::from(body),
        })
    }

    /// Writes every blob the plans need that the store lacks, in the bundle's order, and
    /// links each to every repository that needs it.
    fn store_blobs(
        &mut self,
        plans: &BTreeMap<String, RepoPlan>,
        report: &mut ImportReport,
    ) -> Result<(), BundleError> {
        let mut wanted: BTreeMap<Digest, Vec<RepoName>> = BTreeMap::new();
        for (repo, plan) in plans {
            let name: RepoName = repo
                .parse()
                .map_err(|e| BundleError::Invalid(format!("{repo}: {e}")))?;
            for blob in &plan.blobs {
                wanted.entry(blob.clone()).or_default().push(name.clone());
            }
        }
        let mut order: Vec<(Digest, Vec<RepoName>)> = wanted.into_iter().collect();
        order.sort_by_key(|(d, _)| self.entries.get(d).map_or(0, |s| s.offset));
        let mut to_write = Vec::new();
        for (digest, repos) in order {
            let expected = self.blob_sizes.get(&digest).copied();
            let held = self.store.blob_size(&digest);
            if held.is_some() && held == expected {
                report.blobs_present += 1;
                for repo in &repos {
                    self.store.link_blob(repo, &digest)?;
                }
                continue;
            }
            let span = self.entries.get(&digest).copied().ok_or_else(|| {
                self.altered(format!(
                    "blob {digest} in the store has the wrong size and the bundle does not hold it"
                ))
            })?;
            to_write.push((digest, repos, span));
        }
        // Several blobs at a time, each worker on its own handle of the file: one blob's fsync
        // overlaps the others' reading and hashing.
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<BundleError>> = Mutex::new(None);
        let totals = Mutex::new(ImportReport::default());
        let this = &*self;
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL_BLOBS.min(to_write.len()) {
                scope.spawn(|| {
                    let fail = |err: BundleError| {
                        lock(&failed).get_or_insert(err);
                    };
                    let mut file = match File::open(&this.path) {
                        Ok(file) => file,
                        Err(e) => {
                            return fail(BundleError::io(format!(
                                "cannot open the bundle {}",
                                this.shown
                            ))(e))
                        }
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((digest, repos, span)) = to_write.get(i) else {
                            return;
                        };
                        if lock(&failed).is_some() {
                            return;
                        }
                        let mut done = ImportReport::default();
                        let written = this
                            .write_blob(&mut file, &repos[0], digest, *span, &mut done)
                            .and_then(|()| {
                                repos[1..]
                                    .iter()
                                    .try_for_each(|repo| {
                                        this.store.link_blob(repo, digest).map(|_| ())
                                    })
                                    .map_err(BundleError::from)
                            });
                        if let Err(err) = written {
                            return fail(err);
                        }
                        util::crash_point::crash_point("bundle_blob_stored");
                        let mut totals = lock(&totals);
                        totals.blobs_written += 1;
                        totals.bytes_read += done.bytes_read;
                        totals.bytes_resumed += done.bytes_resumed;
                    }
                });
            }
        });
        if let Some(err) = lock(&failed).take() {
            return Err(err);
        }
        let totals = lock(&totals);
        report.blobs_written += totals.blobs_written;
        report.bytes_read += totals.bytes_read;
        report.bytes_resumed += totals.bytes_resumed;
        Ok(())
    }

    /// Streams one blob from the bundle into an upload session of `repo` whose id is stable,
    /// so an interrupted import finds its bytes again; verified whole before it is kept.
    fn write_blob(
        &self,
        file: &mut File,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
        report: &mut ImportReport,
    ) -> Result<(), BundleError> {
        let name = format::blob_entry(digest);
        let id = format!("bundle-{}-{}", digest.algorithm().name(), digest.hex());
        let mut session = self.store.open_upload(repo, &id)?.blocking_lock_owned();
        if session.len() > span.size {
            drop(session);
            self.store.cancel_upload(&id);
            session = self.store.open_upload(repo, &id)?.blocking_lock_owned();
        }
        let have = session.len();
        if have > 0 {
            tracing::info!(%digest, have, "resuming a blob an interrupted import left");
            report.bytes_resumed += have;
        }
        file.seek(SeekFrom::Start(span.offset + have))
            .map_err(BundleError::io(format!("seek in {}", self.shown)))?;
        let mut left = span.size - have;
        let mut buffer = vec![0; READ_CHUNK];
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            let read = file
                .read(&mut buffer[..want])
                .map_err(BundleError::io(format!("read {name} from {}", self.shown)))?;
            if read == 0 {
                // The file shrank since it was scanned.
                drop(session);
                self.store.cancel_upload(&id);
                return Err(BundleError::Truncated {
                    file: self.shown.clone(),
                    detail: format!("entry {name} ends early"),
                });
            }
            session.append(&buffer[..read])?;
            util::crash_point::crash_point("bundle_blob_chunk");
            left -= read as u64;
            report.bytes_read += read as u64;
        }
        match self.store.finish_upload(&mut session, digest) {
            Ok(_) => Ok(()),
            Err(StorageError::DigestMismatch { actual, .. }) => {
                Err(self.altered(format!("entry {name} hashes to {actual}, not to its name")))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Stores each repository's manifests (children first) by digest, then sets its tags.
    fn store_manifests(
        &mut self,
        plans: &BTreeMap<String, RepoPlan>,
        report: &mut ImportReport,
    ) -> Result<(), BundleError> {
        let put = |repo: &RepoName, reference: Reference, loaded: &Loaded, skipped: Vec<Digest>| {
            let media_type = (!loaded.media_type.is_empty()).then_some(loaded.media_type.as_str());
            self.store.put_partial_index(
                repo,
                &reference,
                media_type,
                loaded.body.clone(),
                Origin::Sync,
                skipped,
            )
        };
        // The children of an index that the bundle names as left out, and this store lacks.
        let skipped_of = |loaded: &Loaded| -> Vec<Digest> {
            let media_type = (!loaded.media_type.is_empty()).then_some(loaded.media_type.as_str());
            manifest::parse(media_type, &loaded.body)
                .map(|m| {
                    m.children()
                        .iter()
                        .filter(|c| {
                            self.skipped.contains(&c.digest)
                                && !self.manifests.contains_key(&c.digest)
                        })
                        .map(|c| c.digest.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for (repo, plan) in plans {
            let name: RepoName = repo
                .parse()
                .map_err(|e| BundleError::Invalid(format!("{repo}: {e}")))?;
            for digest in &plan.manifests {
                let reference = Reference::Digest(digest.clone());
                if self.store.get_manifest(&name, &reference)?.is_some() {
                    report.manifests_present += 1;
                    continue;
                }
                let loaded = &self.manifests[digest];
                put(&name, reference, loaded, skipped_of(loaded))?;
                report.manifests_written += 1;
            }
        }
        for (repo, plan) in plans {
            let name: RepoName = repo
                .parse()
                .map_err(|e| BundleError::Invalid(format!("{repo}: {e}")))?;
            for (tag, digest) in &plan.tags {
                let reference = Reference::Tag(tag.clone());
                let current = self.store.get_manifest(&name, &reference)?;
                if current.is_some_and(|m| &m.digest == digest) {
                    report.tags_unchanged += 1;
                    continue;
                }
                let loaded = &self.manifests[digest];
                put(&name, reference, loaded, skipped_of(loaded))?;
                report.tags_set += 1;
            }
        }
        Ok(())
    }
}
