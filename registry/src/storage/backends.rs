//! Which backends a store runs on, chosen once at start: the metadata in redb in the data
//! directory (the default) or in PostgreSQL (`--metadata postgres://...`, shared by several
//! replicas), and the blobs on the local disk (the default) or in Azure Blob Storage
//! (`--storage azblob://CONTAINER`). [`Backends::default`] is the single-machine store every
//! command and test opens with [`super::Store::open`]; [`super::Store::open_with`] takes others.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::azure::AzureConfig;
use super::StorageError;

pub use crate::storage::kv::in_postgres::settings::redact;
pub use crate::storage::kv::in_postgres::PostgresSettings;

/// The file in a data directory whose blobs are not on the local disk, naming where they are
/// (`azblob://CONTAINER`), so a command opening it without the same `--storage` is refused
/// instead of finding every blob missing.
pub const STORAGE_FILE: &str = "storage";

/// The store's choice of backends.
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

/// Where blob bytes (layers, configs, manifests) and upload sessions live.
#[derive(Debug, Clone, Default)]
pub enum BlobBackend {
    /// Files in the data directory (the default).
    #[default]
    Filesystem,
    /// Objects in an Azure Blob Storage container, shared by every replica that names it.
    AzureBlob(AzureConfig),
}

impl BlobBackend {
    /// The blob backend `--storage` names: `file` (the data directory) or
    /// `azblob://CONTAINER`, whose account and key come from `connection_string` (the
    /// `AZURE_STORAGE_CONNECTION_STRING` variable). The error says what is wrong and how to
    /// fix it, without the key.
    pub fn parse(storage: &str, connection_string: Option<&str>) -> Result<BlobBackend, String> {
        let storage = storage.trim();
        if storage == "file" {
            return Ok(BlobBackend::Filesystem);
        }
        let Some(container) = storage.strip_prefix("azblob://") else {
            return Err(format!(
                "--storage {storage:?} is not a storage: use file (the data directory, the default) or azblob://CONTAINER (Azure Blob Storage)"
            ));
        };
        let container = container.trim_end_matches('/');
        let Some(connection_string) = connection_string.filter(|c| !c.trim().is_empty()) else {
            return Err(format!(
                "--storage azblob://{container} needs the storage account: set AZURE_STORAGE_CONNECTION_STRING (e.g. DefaultEndpointsProtocol=https;AccountName=NAME;AccountKey=KEY;EndpointSuffix=core.windows.net)"
            ));
        };
        AzureConfig::new(container, connection_string).map(BlobBackend::AzureBlob)
    }

    /// The name a data directory keeps of this choice (`STORAGE_FILE`); `None` for the local
    /// disk, the default that needs no note.
    fn marker(&self) -> Option<String> {
        match self {
            BlobBackend::Filesystem => None,
            BlobBackend::AzureBlob(config) => Some(format!("azblob://{}", config.container())),
        }
    }

    /// Refuses opening data directory `dir` with blobs elsewhere than where they were kept, and
    /// notes the choice in a new (or empty) one. `meta_exists`: the directory holds metadata
    /// already.
    pub(crate) fn claim(&self, dir: &Path, meta_exists: bool) -> Result<(), StorageError> {
        let file = dir.join(STORAGE_FILE);
        let kept = std::fs::read_to_string(&file)
            .ok()
            .map(|s| s.trim().to_owned());
        let chosen = self.marker();
        let shown = |m: &Option<String>| m.clone().unwrap_or_else(|| "file".into());
        match (&kept, &chosen) {
            (Some(kept), Some(chosen)) if kept == chosen => Ok(()),
            (None, None) => Ok(()),
            (None, Some(chosen)) if !meta_exists => {
                util::atomic_file::write(&file, chosen.as_bytes(), None).map_err(|e| {
                    StorageError::Io {
                        context: format!("{} {}", e.step, e.path.display()),
                        source: e.source,
                    }
                })
            }
            _ => Err(StorageError::WrongStorage(format!(
                "the blobs of data directory {} are in {}, not {}: run with --storage {} (or CONNECTED_REGISTRY_STORAGE)",
                dir.display(),
                shown(&kept),
                shown(&chosen),
                shown(&kept),
            ))),
        }
    }

    /// What `print-config` shows: the choice without secrets.
    pub fn describe(&self) -> String {
        match self {
            BlobBackend::Filesystem => "file".into(),
            BlobBackend::AzureBlob(config) => config.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn storage_choices_parse_and_say_what_is_wrong() {
        assert!(matches!(
            BlobBackend::parse("file", None),
            Ok(BlobBackend::Filesystem)
        ));
        let cs = format!("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;");
        let BlobBackend::AzureBlob(config) =
            BlobBackend::parse("azblob://images", Some(&cs)).unwrap()
        else {
            panic!("not azure");
        };
        assert_eq!(config.container(), "images");
        for shown in [
            format!("{config:?}"),
            config.describe(),
            BlobBackend::AzureBlob(config.clone()).describe(),
        ] {
            assert!(!shown.contains(KEY), "{shown}");
            assert!(shown.contains("images"), "{shown}");
        }
        let err = BlobBackend::parse("s3://bucket", None).unwrap_err();
        assert!(err.contains("azblob://CONTAINER"), "{err}");
        let err = BlobBackend::parse("azblob://images", None).unwrap_err();
        assert!(err.contains("AZURE_STORAGE_CONNECTION_STRING"), "{err}");
        let err = BlobBackend::parse("azblob://images", Some("AccountName=a")).unwrap_err();
        assert!(err.contains("AccountKey"), "{err}");
        let err = BlobBackend::parse("azblob://Bad_Name", Some(&cs)).unwrap_err();
        assert!(err.contains("container name"), "{err}");
        assert!(!err.contains(KEY), "{err}");
    }

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
