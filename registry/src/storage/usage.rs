//! What the store holds and the room left on its disk: blobs and their bytes, open upload
//! sessions, free and total bytes of the data directory's file system. For metrics (`serve
//! --admin`) and the readiness probe; counted from the blob store's listing, so a call costs a
//! walk of `blobs/` (on the local disk) or a listing of the container (in Azure Blob Storage,
//! where the disk figures are those of the data directory, which holds the metadata only).

use std::path::Path;

use super::Store;

/// A snapshot of the store's size and its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Stored blobs (layers, configs and manifests are all blobs).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Upload sessions stored (finished ones are removed; idle ones expire).
    pub uploads_open: u64,
    pub disk: DiskSpace,
}

/// Space on the file system that holds the data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer can still use.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl Store {
    /// Counts blobs and upload sessions and reads the disk's free space. Blocking: call it
    /// from `spawn_blocking`.
    pub fn usage(&self) -> std::io::Result<Usage> {
        let as_io = |e: super::StorageError| std::io::Error::other(e.to_string());
        let listing = self.list_blobs().map_err(as_io)?;
        let blobs = listing.blobs.len() as u64;
        let blob_bytes = listing.blobs.iter().map(|(_, size)| size).sum();
        let uploads_open = self.inner.blobs.list_uploads().map_err(as_io)?.len() as u64;
        Ok(Usage {
            blobs,
            blob_bytes,
            uploads_open,
            disk: self.disk_space()?,
        })
    }

    /// Free and total space of the data directory's file system (one `statvfs`).
    pub fn disk_space(&self) -> std::io::Result<DiskSpace> {
        disk_space(self.root())
    }
}

/// Free and total space of the file system holding `path`.
pub fn disk_space(path: &Path) -> std::io::Result<DiskSpace> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stored_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::Store::open(dir.path(), Default::default()).unwrap();
        let repo: oci::name::RepoName = "r".parse().unwrap();
        crate::storage::test_support::push_blob(&store, &repo, b"12345");
        crate::storage::test_support::push_blob(&store, &repo, b"123");
        std::fs::write(dir.path().join("blobs/sha256/stray"), b"not a blob").unwrap();
        store.new_upload(&repo).unwrap();
        let usage = store.usage().unwrap();
        assert_eq!(
            (usage.blobs, usage.blob_bytes, usage.uploads_open),
            (2, 8, 1)
        );
        let space = disk_space(dir.path()).unwrap();
        assert!(space.total_bytes >= space.free_bytes && space.total_bytes > 0);
    }
}
