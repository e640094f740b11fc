//! Which backends a store runs on, chosen at start: the metadata in redb in the data directory
//! (the default) or in PostgreSQL (`--metadata postgres://...`, shared by several replicas),
//! and the blobs on the local filesystem. [`Store::open_with`](crate::Store::open_with) takes
//! them; [`Store::open`](crate::Store::open) means the defaults.

use std::fmt;
use std::str::FromStr;

pub use crate::storage::kv::in_postgres::settings::redact;
pub use crate::storage::kv::in_postgres::PostgresSettings;

/// What a store runs on.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub metadata: MetadataBackend,
    pub blobs: BlobBackend,
}

/// Where the metadata (tags, manifests, links, the change log, attributes, quota) lives.
#[derive(Debug, Clone, Default)]
pub enum MetadataBackend {
    /// `DATA/meta.redb`: one process at a time.
    #[default]
    Redb,
    /// A PostgreSQL database that several `serve` replicas share (boxed: its settings are
    /// large beside the unit variant).
    Postgres(Box<PostgresSettings>),
}

impl MetadataBackend {
    /// The default of `--metadata`, as written.
    pub const DEFAULT: &'static str = "redb";

    /// Whether this metadata lives outside the data directory (shared by other processes).
    pub fn is_shared(&self) -> bool {
        matches!(self, MetadataBackend::Postgres(_))
    }
}

impl FromStr for MetadataBackend {
    type Err = String;

    /// `redb`, or a PostgreSQL URL (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`).
    fn from_str(value: &str) -> Result<MetadataBackend, String> {
        if value == MetadataBackend::DEFAULT {
            return Ok(MetadataBackend::Redb);
        }
        PostgresSettings::parse(value).map(|s| MetadataBackend::Postgres(Box::new(s)))
    }
}

impl fmt::Display for MetadataBackend {
    /// `redb`, or the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataBackend::Redb => f.write_str(MetadataBackend::DEFAULT),
            MetadataBackend::Postgres(settings) => settings.fmt(f),
        }
    }
}

/// Where the blobs' bytes live.
#[derive(Debug, Clone, Default)]
pub enum BlobBackend {
    /// `DATA/blobs/`.
    #[default]
    Filesystem,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_backends_parse_and_show_without_the_password() {
        assert!(matches!("redb".parse(), Ok(MetadataBackend::Redb)));
        let pg: MetadataBackend = "postgres://u:hunter2@db:5432/meta".parse().unwrap();
        assert!(pg.is_shared());
        assert_eq!(pg.to_string(), "postgres://u:***@db:5432/meta");
        assert!(!format!("{pg:?}").contains("hunter2"));
        let err = "sqlite".parse::<MetadataBackend>().unwrap_err();
        assert!(err.contains("neither `redb` nor a PostgreSQL URL"), "{err}");
    }
}
