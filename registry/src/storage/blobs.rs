//! Content-addressed files: `blobs/<algorithm>/<first two hex>/<hex>`.
//!
//! A file appears under its digest only by `rename` of a complete, verified, fsynced temp file
//! in the same filesystem, so a crash leaves either the whole blob or nothing.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::storage::StorageError;
use oci::digest::Digest;

#[derive(Debug)]
pub struct Blobs {
    root: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    pub fn open(root: &Path) -> Result<Blobs, StorageError> {
        let blobs = Blobs {
            root: root.join("blobs"),
            tmp: root.join("tmp"),
        };
        for dir in [&blobs.root, &blobs.tmp] {
            fs::create_dir_all(dir)
                .map_err(StorageError::io(format!("create {}", dir.display())))?;
        }
        // Temp files are never referenced: whatever a crash left there is garbage.
        if let Ok(entries) = fs::read_dir(&blobs.tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(blobs)
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Size of the blob on disk, if it is there.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Marks a blob as just wanted (GC spares files touched within its grace period).
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = File::options().write(true).open(self.path(digest)) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// Moves a complete, fsynced file into place under `digest` (a no-op if already there).
    pub fn install(&self, file: &Path, digest: &Digest) -> Result<(), StorageError> {
        let dest = self.path(digest);
        if dest.is_file() {
            let _ = fs::remove_file(file);
            self.touch(digest);
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

    /// Writes small content (a manifest) to a fsynced temp file, to be installed under its
    /// digest only once the metadata that makes it visible is known to be accepted.
    pub fn stage(&self, data: &[u8]) -> Result<Staged, StorageError> {
        let path = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let staged = Staged { path };
        let mut file = File::create(&staged.path).map_err(StorageError::io(format!(
            "create {}",
            staged.path.display()
        )))?;
        file.write_all(data)
            .and_then(|_| file.sync_all())
            .map_err(StorageError::io(format!("write {}", staged.path.display())))?;
        Ok(staged)
    }
}

/// A complete temp file waiting to be installed; removed if dropped before that.
pub struct Staged {
    path: PathBuf,
}

impl Staged {
    pub fn install(self, blobs: &Blobs, digest: &Digest) -> Result<(), StorageError> {
        blobs.install(&self.path, digest)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
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
