//! Writing certificate and key files atomically (temp file, fsync, rename, fsync of the
//! directory), keys 0600, and refusing to overwrite what a device already uses.
//!
//! Atomic because the proxy watches these files: a reader must see either the old file or
//! the new one, never half of one.

use std::path::Path;

use crate::CertError;

/// File mode for private keys: readable by the owner only.
pub const KEY_MODE: u32 = 0o600;
/// File mode for certificates: public material.
pub const CERT_MODE: u32 = 0o644;

/// Writes `bytes` to `path` atomically with exactly `mode` (see [`util::atomic_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    util::atomic_file::write(path, bytes, Some(mode))
        .map_err(|e| CertError::io(&e.path, e.step, e.source))
}

/// Refuses to replace any of `paths` that exists, unless `force`: a command that writes keys
/// and certificates must never silently destroy the ones a device already serves or trusts.
/// The error names every existing file, says what replacing them would break (`why`) and
/// how to go ahead anyway (`--force`).
pub fn refuse_overwrite(paths: &[&Path], force: bool, why: &str) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    Err(CertError::Input(format!(
        "{} already exist{}; {why}. Nothing was written: write elsewhere (another --out), \
         or give --force to replace {}",
        existing.join(", "),
        if existing.len() == 1 { "s" } else { "" },
        if existing.len() == 1 { "it" } else { "them" },
    )))
}

/// Creates a directory (and parents) for certificate output.
pub fn ensure_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|e| CertError::io(dir, "cannot create directory", e))
}

/// Reads a file to a string, naming the file on failure.
pub fn read_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::io(path, "cannot read", e))
}
