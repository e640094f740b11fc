//! `--metadata` and its limits, shared by the commands that open the store (`serve`, `sync`,
//! `gc`, `scrub`, `bundle`; `recover` refuses anything but redb), beside `--storage` (the
//! blobs, `storage.rs`): where the metadata lives,
//! redb in the data directory (the default) or a PostgreSQL database several `serve` replicas
//! share. The URL holds a password: it is parsed here, not by clap (whose error would repeat
//! the value), and shown only redacted.

use registry::storage::backends::redact;
use registry::storage::{Backends, MetadataBackend, PostgresSettings};

use super::storage::StorageFlags;

#[derive(clap::Args, Clone)]
pub struct MetadataFlags {
    /// Where the metadata (tags, manifests, the change log, attributes) lives: `redb`
    /// (DATA/meta.redb) or a PostgreSQL database, postgres://USER:PASSWORD@HOST:PORT/DATABASE,
    /// that several `serve` replicas share (its table is created on first use). TLS as in
    /// libpq: `?sslmode=disable|prefer|require|verify-ca|verify-full` (default prefer: TLS when
    /// the server offers it, its certificate unchecked) and `sslrootcert=PATH|system` (the CAs
    /// verify-ca and verify-full check the certificate against). The password is never shown.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_METADATA",
        default_value = MetadataBackend::DEFAULT,
        value_name = "redb|postgres://...",
        hide_env_values = true,
    )]
    pub metadata: String,

    /// PostgreSQL connections of this process, each on a thread of its own: one write
    /// transaction at a time (PostgreSQL serializes them across replicas), the others read.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_METADATA_CONNECTIONS",
        default_value_t = PostgresSettings::DEFAULT_CONNECTIONS,
        value_parser = connections
    )]
    pub metadata_connections: usize,

    /// How many more times a metadata transaction runs when PostgreSQL could not be reached
    /// (or asked for a retry) before its commit; a lost commit is never run again.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_METADATA_RETRIES",
        default_value_t = PostgresSettings::DEFAULT_RETRIES
    )]
    pub metadata_retries: u32,
}

fn connections(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ 1..=64) => Ok(n),
        _ => Err("a number of connections from 1 to 64".to_owned()),
    }
}

impl MetadataFlags {
    /// The metadata backend these flags choose.
    pub fn metadata(&self) -> anyhow::Result<MetadataBackend> {
        let mut metadata: MetadataBackend = self
            .metadata
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--metadata: {e}"))?;
        if let MetadataBackend::Postgres(settings) = &mut metadata {
            settings.connections = self.metadata_connections;
            settings.retries = self.metadata_retries;
        }
        Ok(metadata)
    }

    /// The backends these flags and `storage` (`--storage`, the blobs) choose.
    pub fn backends(&self, storage: &StorageFlags) -> anyhow::Result<Backends> {
        Ok(Backends {
            metadata: self.metadata()?,
            ..storage.backends()?
        })
    }

    /// The setting as `print-config` shows it: `redb`, or the URL without its password.
    pub fn shown(&self) -> String {
        redact(&self.metadata)
    }
}

/// The context of a store that did not open: the data directory, and the metadata when it is
/// elsewhere (its error names PostgreSQL and the host).
pub fn cannot_open(data: &std::path::Path, flags: &MetadataFlags) -> String {
    if flags.metadata == MetadataBackend::DEFAULT {
        format!("cannot open the data directory {}", data.display())
    } else {
        format!(
            "cannot open the store (data directory {}, metadata {})",
            data.display(),
            flags.shown()
        )
    }
}
