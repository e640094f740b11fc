//! The blob contract on the local disk (the default): content-addressed files
//! `blobs/<algorithm>/<first two hex>/<hex>`, upload sessions as `uploads/<id>/data` (with
//! `uploads/<id>/repo` naming their repository), staged manifests in `tmp/`, damaged files moved
//! to `quarantine/`, all in the data directory.
//!
//! A file appears under its digest only by `rename` of a complete, verified, fsynced file in the
//! same filesystem (a session's data file, or a staged temp file), so a crash leaves either the
//! whole blob or nothing.

mod upload;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use oci::digest::Digest;

use super::blob_store::{
    BlobListing, BlobSource, BlobStat, BlobStore, OpenedUpload, StagedBlob, UploadData,
};
use super::space::Space;
use super::StorageError;
pub use upload::{FsUpload, WRITEBACK_EVERY};

/// The directory of damaged files, in the data directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Blobs, sessions and staged files under one data directory.
#[derive(Debug)]
pub struct FsBlobs {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
    space: Space,
}

impl FsBlobs {
    /// Opens (creating what is missing) the blob directories of the data directory `root`.
    pub fn open(root: &Path, space: Space) -> Result<FsBlobs, StorageError> {
        let fs_blobs = FsBlobs {
            root: root.to_owned(),
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
            uploads: root.join("uploads"),
            space,
        };
        for dir in [&fs_blobs.blobs, &fs_blobs.tmp, &fs_blobs.uploads] {
            fs::create_dir_all(dir)
                .map_err(StorageError::io(format!("create {}", dir.display())))?;
        }
        // Temp files are never referenced: whatever a crash left there is garbage.
        if let Ok(entries) = fs::read_dir(&fs_blobs.tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(fs_blobs)
    }

    /// Where the file of `digest` is.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        digest_path(&self.blobs, digest)
    }
}

/// Moves a complete, fsynced file into place under `digest` in the blob directory `blobs` (a
/// touch if it is there already: the touch is the check, so a GC delete racing it either keeps
/// the file or took it before, and then this file goes in place).
fn install(blobs: &Path, file: &Path, digest: &Digest) -> Result<(), StorageError> {
    let dest = digest_path(blobs, digest);
    if touch(&dest)? {
        let _ = fs::remove_file(file);
        return Ok(());
    }
    let dir = dest.parent().expect("blob path has a parent");
    fs::create_dir_all(dir).map_err(StorageError::io(format!("create {}", dir.display())))?;
    fs::rename(file, &dest).map_err(StorageError::io(format!(
        "move {} to {}",
        file.display(),
        dest.display()
    )))?;
    sync_dir(dir)?;
    util::crash_point::crash_point("after_blob_rename");
    Ok(())
}

/// Marks a file as just wanted (GC spares files touched within its grace period, and deletes
/// only a file whose modification time did not change since it looked); whether it is there.
fn touch(path: &Path) -> Result<bool, StorageError> {
    let touched = File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(SystemTime::now()));
    match touched {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(format!("touch {}", path.display()))(e)),
    }
}

/// Renames `from` to `to`: whether `from` was there to move (`what` names the step in an
/// error).
fn rename_if_there(
    from: &Path,
    to: &Path,
    what: impl FnOnce() -> String,
) -> Result<bool, StorageError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(what())(e)),
    }
}

/// A file's version for [`BlobStore::delete`]: its modification time in nanoseconds (empty for
/// a file system that keeps none).
fn version(meta: &fs::Metadata) -> String {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default()
}

impl BlobStore for FsBlobs {
    fn location(&self) -> String {
        format!("data directory {}", self.root.display())
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(fs::metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len()))
    }

    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>, StorageError> {
        let Ok(meta) = fs::metadata(self.path(digest)) else {
            return Ok(None);
        };
        Ok(Some(BlobStat {
            size: meta.len(),
            // A file system that keeps no times: treat it as just written (never collected).
            modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
            version: version(&meta),
        }))
    }

    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        FsSource::open_if_there(&self.path(digest))
    }

    fn stage(&self, data: Bytes) -> Result<Box<dyn StagedBlob>, StorageError> {
        let path = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let staged = Staged {
            path,
            blobs: self.blobs.clone(),
        };
        let mut file = File::create(&staged.path).map_err(StorageError::io(format!(
            "create {}",
            staged.path.display()
        )))?;
        file.write_all(&data)
            .and_then(|_| file.sync_all())
            .map_err(StorageError::io(format!("write {}", staged.path.display())))?;
        Ok(Box::new(staged))
    }

    fn touch(&self, digest: &Digest) -> Result<bool, StorageError> {
        touch(&self.path(digest))
    }

    fn list(&self) -> Result<BlobListing, StorageError> {
        let list = |dir: &Path| -> Result<Vec<fs::DirEntry>, StorageError> {
            match fs::read_dir(dir) {
                Ok(entries) => Ok(entries.flatten().collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(StorageError::io(format!("list {}", dir.display()))(e)),
            }
        };
        let mut listing = BlobListing::default();
        // Directories two levels down, files on the third; anything else is stray.
        let dirs = |entries: Vec<fs::DirEntry>, stray: &mut Vec<String>| {
            entries
                .into_iter()
                .filter(|e| {
                    let dir = e.file_type().is_ok_and(|t| t.is_dir());
                    if !dir {
                        stray.push(e.path().display().to_string());
                    }
                    dir
                })
                .collect::<Vec<_>>()
        };
        for algorithm in dirs(list(&self.blobs)?, &mut listing.stray) {
            for prefix in dirs(list(&algorithm.path())?, &mut listing.stray) {
                for file in list(&prefix.path())? {
                    let name = format!(
                        "{}:{}",
                        algorithm.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    match name.parse::<Digest>() {
                        Ok(digest) if file.path() == self.path(&digest) => {
                            // Gone meanwhile (GC): not listed.
                            if let Ok(meta) = file.metadata() {
                                listing.blobs.push((digest, meta.len()));
                            }
                        }
                        _ => listing.stray.push(file.path().display().to_string()),
                    }
                }
            }
        }
        listing.blobs.sort();
        Ok(listing)
    }

    /// A file system has no conditional delete: the file is moved aside first (after that a
    /// touch finds nothing, and an install puts a new file in place), then deleted only if its
    /// modification time is still the one `stat` saw; a file touched in between goes back
    /// (unless a new copy of the same bytes took its place meanwhile).
    fn delete(&self, digest: &Digest, stat: &BlobStat) -> Result<bool, StorageError> {
        let path = self.path(digest);
        let aside = self
            .tmp
            .join(format!("gc-{}", uuid::Uuid::new_v4().simple()));
        if !rename_if_there(&path, &aside, || {
            format!("move {} aside to delete it", path.display())
        })? {
            return Ok(false);
        }
        let unchanged = fs::metadata(&aside).is_ok_and(|meta| version(&meta) == stat.version);
        if !unchanged {
            match fs::hard_link(&aside, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StorageError::io(format!(
                        "put {} back after it was touched (it is at {})",
                        path.display(),
                        aside.display()
                    ))(e))
                }
            }
        }
        fs::remove_file(&aside).map_err(StorageError::io(format!("delete {}", aside.display())))?;
        Ok(unchanged)
    }

    fn quarantine(&self, digest: &Digest, why: &str) -> Result<Option<String>, StorageError> {
        let quarantine = self.root.join(QUARANTINE_DIR);
        let path = self.path(digest);
        fs::create_dir_all(&quarantine).map_err(StorageError::io(format!(
            "create {} for damaged file {}",
            quarantine.display(),
            path.display()
        )))?;
        let stamp = util::time::now_secs();
        let name = format!("{}-{}-{stamp}", digest.algorithm().name(), digest.hex());
        let dest = quarantine.join(&name);
        if !rename_if_there(&path, &dest, || {
            format!("move damaged file {} to {}", path.display(), dest.display())
        })? {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            let _ = sync_dir(dir);
        }
        let note = format!(
            "digest: {digest}\nwas: {}\nquarantined_at_unix: {stamp}\nwhy: {why}\n",
            path.display()
        );
        let _ = fs::write(quarantine.join(format!("{name}.txt")), note);
        Ok(Some(dest.display().to_string()))
    }

    fn create_upload(
        &self,
        id: &str,
        repo: &str,
    ) -> Result<Option<Box<dyn UploadData>>, StorageError> {
        FsUpload::create(self.uploads.join(id), repo)
            .map(|created| created.map(|u| Box::new(u) as Box<dyn UploadData>))
    }

    fn open_upload(&self, id: &str) -> Result<Option<OpenedUpload>, StorageError> {
        let dir = self.uploads.join(id);
        let Ok(owner) = fs::read_to_string(dir.join("repo")) else {
            return Ok(None);
        };
        let data = FsUpload::open(dir)?;
        Ok(Some((owner, Box::new(data))))
    }

    fn upload_reader(&self, id: &str) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        FsSource::open_if_there(&self.uploads.join(id).join("data"))
    }

    fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let entries = match fs::read_dir(&self.uploads) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(format!("list {}", self.uploads.display()))(e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|entry| {
                let modified = fs::metadata(entry.path().join("data"))
                    .or_else(|_| entry.metadata())
                    .and_then(|m| m.modified())
                    .ok()?;
                Some((entry.file_name().to_string_lossy().into_owned(), modified))
            })
            .collect())
    }

    fn remove_upload(&self, id: &str) {
        let _ = fs::remove_dir_all(self.uploads.join(id));
    }

    fn install_upload(
        &self,
        data: &mut dyn UploadData,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        let file = data
            .as_any()
            .downcast_mut::<FsUpload>()
            .ok_or_else(|| {
                StorageError::UploadInvalid("not an upload of the data directory".into())
            })?
            .data_path();
        install(&self.blobs, &file, digest)
    }

    fn local_space(&self) -> Option<&Space> {
        Some(&self.space)
    }
}

/// Where `digest` lives under the blob directory `root`.
fn digest_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join(digest.algorithm().name())
        .join(&hex[..2])
        .join(hex)
}

/// A complete temp file waiting to be installed; removed if dropped before that.
struct Staged {
    path: PathBuf,
    /// The blob directory it goes to.
    blobs: PathBuf,
}

impl StagedBlob for Staged {
    fn install(self: Box<Self>, digest: &Digest) -> Result<(), StorageError> {
        install(&self.blobs, &self.path, digest)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A blob file (or a session's data file) opened for reading.
#[derive(Debug)]
pub(crate) struct FsSource {
    file: File,
    size: u64,
}

impl FsSource {
    /// Opens the file at `path`; `None` when there is none.
    fn open_if_there(path: &Path) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        let opened = File::open(path).and_then(|file| {
            let size = file.metadata()?.len();
            Ok(FsSource { file, size })
        });
        match opened {
            Ok(source) => Ok(Some(Box::new(source))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(format!("open {}", path.display()))(e)),
        }
    }
}

impl BlobSource for FsSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn stream(
        self: Box<Self>,
        range: std::ops::Range<u64>,
        check: Option<super::reader::Check>,
    ) -> super::reader::BlobReader {
        super::reader::read_file_range(
            self.file,
            range.start,
            range.end.saturating_sub(range.start),
            check,
        )
    }

    fn read_at(&mut self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        use std::io::{Read, Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len as usize);
        (&mut self.file).take(len).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn into_read(self: Box<Self>) -> super::blob_store::BlobRead {
        super::blob_store::BlobRead::File(self.file)
    }
}

/// Makes a rename or create durable: fsync the directory that holds the entry.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(format!(
            "fsync directory {}",
            dir.display()
        )))
}
