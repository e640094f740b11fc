//! What the store holds and the room left on its disk: blobs and their bytes, open upload
//! sessions, free and total bytes of the file system. For metrics (`serve --admin`) and the
//! readiness probe; read from the directories, so a call costs a walk of `blobs/`.

use std::path::Path;

use super::Store;

/// A snapshot of the store's size and its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Blob files (layers, configs and manifests are all blobs).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Upload sessions on disk (finished ones are removed; idle ones expire).
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
        let (blobs, blob_bytes) = count_files(&self.root().join("blobs"), 3)?;
        let uploads_open = match std::fs::read_dir(self.root().join("uploads")) {
            Ok(entries) => entries.filter(|e| e.is_ok()).count() as u64,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err),
        };
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

/// Files `depth` levels below `dir` (`blobs/ALGORITHM/PREFIX/FILE`: 3) and their bytes.
/// Entries that vanish meanwhile (GC) are skipped.
fn count_files(dir: &Path, depth: u32) -> std::io::Result<(u64, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(err) => return Err(err),
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        if depth > 1 {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let (f, b) = count_files(&entry.path(), depth - 1)?;
                files += f;
                bytes += b;
            }
        } else if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_at_the_blob_depth_only() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("sha256/ab");
        std::fs::create_dir_all(&prefix).unwrap();
        std::fs::write(prefix.join("abcd"), b"12345").unwrap();
        std::fs::write(prefix.join("abef"), b"123").unwrap();
        std::fs::write(dir.path().join("sha256/stray"), b"not a blob").unwrap();
        assert_eq!(count_files(dir.path(), 3).unwrap(), (2, 8));
        assert_eq!(count_files(&dir.path().join("missing"), 3).unwrap(), (0, 0));
        let space = disk_space(dir.path()).unwrap();
        assert!(space.total_bytes >= space.free_bytes && space.total_bytes > 0);
    }
}
