//! Free space on the data directory's filesystem, checked before the store writes: the reserve
//! (`serve --min-free`) below which uploads and manifests are refused, so the device's own
//! system keeps working, and the room the metadata database always needs to commit.
//!
//! One `statvfs` call per manifest, per upload request that declares its size, and per
//! [`CHECK_EVERY`] bytes of an upload: never per byte.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::storage::StorageError;

/// Room kept free for the metadata database on top of the reserve. redb refuses every further
/// operation, reads included, after a commit that failed for lack of space (until the store is
/// opened again): so data writes stop while this much is still free, and a metadata change
/// (even a deletion, which also writes) is refused once less is left.
pub const METADATA_ROOM: u64 = 1 << 20;

/// An upload's free space is checked again each time this many more bytes arrived.
pub const CHECK_EVERY: u64 = 1 << 20;

/// The reserve: an amount, or a share of the filesystem's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Percent(f64),
}

impl MinFree {
    /// The default of `--min-free`: enough for logs and the module runtime to keep working on
    /// an edge device, small enough for any disk that holds images at all.
    pub const DEFAULT: &'static str = "256MiB";

    /// The reserve in bytes on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(bytes) => bytes,
            MinFree::Percent(share) => (total as f64 * share / 100.0) as u64,
        }
    }
}

impl Default for MinFree {
    fn default() -> MinFree {
        MinFree::DEFAULT.parse().expect("the default parses")
    }
}

impl FromStr for MinFree {
    type Err = String;

    /// `5%` (of the filesystem), or bytes with an optional binary unit: `0`, `512MiB`, `2GiB`.
    fn from_str(value: &str) -> Result<MinFree, String> {
        let bad = || {
            format!(
                "free-space reserve {value:?} is not a size: use a share like 5% or bytes like 0, 512MiB, 2GiB"
            )
        };
        let value = value.trim();
        if let Some(share) = value.strip_suffix('%') {
            let share: f64 = share.trim().parse().map_err(|_| bad())?;
            if !(0.0..100.0).contains(&share) {
                return Err(format!(
                    "free-space reserve {value} is out of range: a share is at least 0% and below 100%"
                ));
            }
            return Ok(MinFree::Percent(share));
        }
        let digits = value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len());
        let (number, unit) = value.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            _ => return Err(bad()),
        };
        number.checked_mul(unit).map(MinFree::Bytes).ok_or_else(bad)
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Bytes(bytes) => write!(f, "{bytes} bytes"),
            MinFree::Percent(share) => write!(f, "{share}%"),
        }
    }
}

/// The data directory's filesystem, as the store's writes see it.
#[derive(Debug, Clone)]
pub struct Space {
    dir: PathBuf,
    min_free: MinFree,
}

/// Free space now: what an unprivileged writer may still use, and the reserve in bytes.
struct Free {
    available: u64,
    reserve: u64,
}

impl Space {
    pub fn new(dir: PathBuf, min_free: MinFree) -> Space {
        Space { dir, min_free }
    }

    fn free(&self) -> Result<Free, StorageError> {
        let disk = super::usage::disk_space(&self.dir).map_err(StorageError::io(format!(
            "free space of {}",
            self.dir.display()
        )))?;
        Ok(Free {
            available: disk.free_bytes,
            reserve: self.min_free.bytes(disk.total_bytes),
        })
    }

    /// Refuses writing `size` more bytes of `what` (e.g. "manifest sha256:…") when that would
    /// leave less than the reserve plus [`METADATA_ROOM`].
    pub fn check_write(
        &self,
        what: impl FnOnce() -> String,
        size: u64,
    ) -> Result<(), StorageError> {
        let free = self.free()?;
        let floor = free.reserve.saturating_add(METADATA_ROOM);
        if free.available >= floor.saturating_add(size) {
            return Ok(());
        }
        Err(self.no_space(what(), size, free))
    }

    /// Refuses a metadata change when less than [`METADATA_ROOM`] is free: the database could
    /// not be sure to finish it, and a commit that fails for lack of space stops all of it.
    pub fn check_metadata(&self) -> Result<(), StorageError> {
        let free = self.free()?;
        if free.available >= METADATA_ROOM {
            return Ok(());
        }
        // Metadata changes may use the reserve (a deletion is how space is freed), not the room.
        let free = Free { reserve: 0, ..free };
        Err(self.no_space("a metadata change".into(), 0, free))
    }

    /// Says a write that failed for lack of space (`ENOSPC`) with the free space now; other
    /// errors pass unchanged.
    pub fn explain(
        &self,
        err: StorageError,
        what: impl FnOnce() -> String,
        size: u64,
    ) -> StorageError {
        match &err {
            StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!("{err}");
                match self.free() {
                    Ok(free) => self.no_space(what(), size, free),
                    Err(_) => err,
                }
            }
            _ => err,
        }
    }

    fn no_space(&self, what: String, size: u64, free: Free) -> StorageError {
        tracing::warn!(
            dir = %self.dir.display(),
            available = free.available,
            reserve = free.reserve,
            size,
            "refused {what}: not enough free space"
        );
        StorageError::NoSpace {
            what,
            size,
            available: free.available,
            reserve: free.reserve,
            min_free: self.min_free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_parse_as_shares_or_sizes() {
        assert_eq!("5%".parse(), Ok(MinFree::Percent(5.0)));
        assert_eq!("0".parse(), Ok(MinFree::Bytes(0)));
        assert_eq!("512MiB".parse(), Ok(MinFree::Bytes(512 << 20)));
        assert_eq!("2 GiB".parse(), Ok(MinFree::Bytes(2 << 30)));
        assert_eq!(MinFree::default(), MinFree::Bytes(256 << 20));
        assert_eq!(MinFree::Percent(1.0).bytes(1000), 10);
        // As `serve --ready-min-free` reads it too.
        assert_eq!("1%".parse(), Ok(MinFree::Percent(1.0)));
        assert_eq!("64MiB".parse(), Ok(MinFree::Bytes(64 << 20)));
        assert_eq!("1024".parse(), Ok(MinFree::Bytes(1024)));
        for bad in [
            "",
            "5 %%",
            "100%",
            "101%",
            "x%",
            "-1",
            "1MB",
            "1.5GiB",
            "12 parsecs",
            "99999999999TiB",
            "99999999999999999999GiB",
        ] {
            assert!(bad.parse::<MinFree>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_says_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path().into(), MinFree::Percent(99.9));
        let err = space.check_write(|| "a test write".into(), 10).unwrap_err();
        let StorageError::NoSpace {
            available, reserve, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(reserve > available, "{reserve} {available}");
        let message = err.to_string();
        assert!(message.contains("a test write"), "{message}");
        assert!(message.contains(&available.to_string()), "{message}");
        assert!(Space::new(dir.path().into(), MinFree::Bytes(0))
            .check_write(|| "a small write".into(), 10)
            .is_ok());
    }
}
