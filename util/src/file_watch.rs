//! Noticing that files changed on disk, so what was loaded from them can be reloaded: the
//! proxy's config file, server certificate and trust bundles.
//!
//! It polls metadata (inode, length, mtime) rather than using inotify: a poll also sees a bind
//! mount or a symlink swap (Kubernetes secrets) and needs no extra dependency. Rename-into-place
//! (see [`crate::atomic_file`]) changes the inode, so it is seen even when the length and
//! mtime happen to match.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What is remembered about a file to notice that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    inode: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl Stamp {
    /// Metadata of `path`, following symlinks (so a swapped symlink target counts as a change).
    /// A missing file gets `None`: a rename-into-place can leave a short gap.
    pub fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            inode,
            len: meta.len(),
            mtime: meta.modified().ok(),
        })
    }
}

/// A set of files and their stamps at the last look.
#[derive(Clone, Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    seen: Vec<Option<Stamp>>,
}

impl FileWatch {
    /// Watches `paths`, taking their stamps now: create it *before* loading the files, so a
    /// change made while they load is still seen at the next look.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> FileWatch {
        let paths: Vec<PathBuf> = paths.into_iter().collect();
        let seen = paths.iter().map(|p| Stamp::of(p)).collect();
        FileWatch { paths, seen }
    }

    /// True when any file changed (appeared, vanished, or was replaced or rewritten) since the
    /// last look, which this call becomes. A file that changed into something that does not
    /// load is thus reported once; the writer finishing or fixing it changes it again.
    pub fn changed(&mut self) -> bool {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| Stamp::of(p)).collect();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_rename_into_place_rewrite_and_removal_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        std::fs::write(&a, "one").unwrap();
        let mut watch = FileWatch::new([a.clone(), b.clone()]);
        assert!(!watch.changed());
        // Same length, maybe the same mtime: the new inode gives it away.
        std::fs::write(dir.path().join("tmp"), "two").unwrap();
        std::fs::rename(dir.path().join("tmp"), &a).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed(), "a change is reported once");
        std::fs::write(&b, "appeared").unwrap();
        assert!(watch.changed());
        std::fs::write(&b, "longer than before").unwrap();
        assert!(watch.changed());
        std::fs::remove_file(&a).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
    }
}
