//! Small filesystems for the full-disk tests: a tmpfs of a few MiB, mounted on a temp directory
//! and unmounted on drop, and what `df` says is free on it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `mib` MiB; `None` (after saying why) where mounting is not permitted (the
    /// tests that need one need root).
    pub fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}): this test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes all but `leave` bytes of the free space with a file; returns its path.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let size = free_bytes(self.path()).saturating_sub(leave);
        std::fs::write(&path, vec![0u8; size as usize]).expect("write the filler file");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Available bytes on the filesystem of `dir`, as `df` says.
pub fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("run df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df output: {text}"))
}
