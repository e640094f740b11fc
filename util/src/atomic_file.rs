//! Replacing a file atomically: a crash, a power loss or a concurrent reader sees either the
//! old file or the new one, never a half-written one.
//!
//! The recipe: write a temp file in the same directory (so the rename stays on one
//! filesystem), fsync it, rename it over the target, then fsync the directory so the rename
//! itself survives a power loss. Readers that matter here: the proxy watching its certificate
//! files, and sync reading its state file after an abrupt stop.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which step failed on which file; the message says both, and what the write was for is the
/// caller's to add.
#[derive(Debug)]
pub struct AtomicWriteError {
    /// The file the step was working on (the temp file or the target).
    pub path: PathBuf,
    /// What was being done: "cannot create", "cannot write", ...
    pub step: &'static str,
    pub source: std::io::Error,
}

impl fmt::Display for AtomicWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.step, self.path.display(), self.source)
    }
}

impl std::error::Error for AtomicWriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` atomically. With `mode` (unix permission bits, e.g. `0o600` for a
/// private key) the file has exactly that mode, whatever the umask, from its first byte on;
/// without it the process's default applies.
pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), AtomicWriteError> {
    let fail = |path: &Path, step: &'static str| {
        let path = path.to_owned();
        move |source| AtomicWriteError { path, step, source }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| AtomicWriteError {
        path: path.to_owned(),
        step: "cannot write to",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    // Hidden and named after the process, so two writers never share a temp file and a
    // directory listing (or a glob like *.pem) does not pick it up.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        }
        let mut file = options.open(&tmp).map_err(fail(&tmp, "cannot create"))?;
        #[cfg(unix)]
        if let Some(mode) = mode {
            // The mode given to open() is filtered by the umask; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(fail(&tmp, "cannot set permissions of"))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        file.write_all(bytes).map_err(fail(&tmp, "cannot write"))?;
        file.sync_all().map_err(fail(&tmp, "cannot fsync"))?;
        std::fs::rename(&tmp, path).map_err(fail(path, "cannot rename into place"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename is in place; making it durable is best effort (some filesystems refuse to
    // open or fsync a directory), and the file itself is already whole.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"first", None).unwrap();
        write(&path, b"second", None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn sets_the_exact_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"secret", Some(0o600)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        write(&path, b"old", None).unwrap();
        // A directory where the file should go cannot be replaced by a rename.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let err = write(&blocked.join("x"), b"new", None).unwrap_err();
        assert_eq!(err.step, "cannot rename into place");
        assert!(err.to_string().contains("blocked/x"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&blocked).unwrap().count(),
            1,
            "temp file left behind"
        );
        let missing = write(&dir.path().join("no/such/dir/f"), b"x", None).unwrap_err();
        assert_eq!(missing.step, "cannot create");
    }
}
