//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod access;
pub mod admin;
pub mod admin_socket;
pub mod auth;
pub mod bundle;
pub mod certs;
pub mod child;
pub mod demo;
mod demo_image;
pub mod gc;
pub mod image;
pub mod manifest;
pub mod metadata;
pub mod proxy;
pub mod recover;
pub mod scrub;
pub mod serve;
mod serve_config;
pub mod status;
pub mod storage;
pub mod sync;

/// What a command does when its data directory does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MissingData {
    /// Create it (`serve`, `sync`: they fill a store).
    Create,
    /// Refuse (`gc`: a command that reads or collects must never create a store at a
    /// mistyped path).
    Refuse,
}

/// Checks the data directory before a store is opened there, so a path that cannot hold one
/// is named as such, with the setting to change, instead of failing deep in the store.
pub fn check_data_dir(dir: &std::path::Path, missing: MissingData) -> anyhow::Result<()> {
    check_data_dir_for(dir, missing, &registry::storage::Backends::default())
}

/// [`check_data_dir`] for a store on `backends`: with the metadata elsewhere (PostgreSQL), the
/// data directory holds the blobs (`blobs/`) or names where they are (`storage`), not
/// `meta.redb`.
pub fn check_data_dir_for(
    dir: &std::path::Path,
    missing: MissingData,
    backends: &registry::storage::Backends,
) -> anyhow::Result<()> {
    let shown = dir.display();
    let setting = "check --data (or ACR_REGISTRY_DATA_VOLUME)";
    let (holds, needed) = match backends.metadata {
        registry::storage::MetadataBackend::Redb => (registry::Store::exists_in(dir), "meta.redb"),
        registry::storage::MetadataBackend::Postgres(_) => (
            dir.join("blobs").is_dir()
                || dir
                    .join(registry::storage::backends::STORAGE_FILE)
                    .is_file(),
            "blobs/ and no storage file",
        ),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => anyhow::bail!(
            "{shown} is not a directory: the data directory must be one; {setting}, or move the file away"
        ),
        Ok(_) if missing == MissingData::Refuse && !holds => {
            anyhow::bail!("no registry data at {shown} (it holds no {needed}): {setting}")
        }
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => match missing {
            MissingData::Create => Ok(()),
            MissingData::Refuse => {
                anyhow::bail!("no registry data at {shown}: it does not exist; {setting}")
            }
        },
        Err(err) => Err(anyhow::Error::new(err)
            .context(format!("cannot use {shown} as the data directory ({setting})"))),
    }
}

/// A duration flag, in either spelling: `90s`, `30m`, `1h`, `7d` or ISO-8601 `PT1H`, `P7D`
/// (see [`util::duration`]). A bare number is refused: `--gc-grace 10` is more likely a slip
/// than ten seconds.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    util::duration::parse(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(super::parse_duration("PT1H").unwrap().as_secs(), 3600);
        for bad in ["", "10", "h", "1w", "-1h", "1.5", "P1M"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
