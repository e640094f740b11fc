//! `--storage`: where a command's store keeps its blobs, for every command that opens a store
//! (`serve`, `gc`, `scrub`, `recover`, `bundle`, `sync`). The metadata is `--metadata`'s
//! (`metadata.rs`); a data directory remembers the blob choice it was created with
//! (`storage::backends`).

use registry::storage::{Backends, BlobBackend};

/// The variable the Azure tools and SDKs read the storage account from.
pub const CONNECTION_STRING_ENV: &str = "AZURE_STORAGE_CONNECTION_STRING";

#[derive(clap::Args, Clone, Debug)]
pub struct StorageFlags {
    /// Where blobs (layers, configs, manifests) and upload sessions live: `file` (the data
    /// directory) or `azblob://CONTAINER` (Azure Blob Storage, created when missing; the
    /// account and key come from AZURE_STORAGE_CONNECTION_STRING, so Azurite and real Azure
    /// both work; several `serve` replicas may share one container). The metadata is where
    /// --metadata says (meta.redb in the data directory by default).
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_STORAGE",
        default_value = "file",
        value_name = "file|azblob://CONTAINER"
    )]
    pub storage: String,
}

impl StorageFlags {
    /// The backends chosen, checked: the error names what is wrong, never the account key.
    pub fn backends(&self) -> anyhow::Result<Backends> {
        let connection_string = std::env::var(CONNECTION_STRING_ENV).ok();
        let blobs = BlobBackend::parse(&self.storage, connection_string.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Backends {
            blobs,
            ..Backends::default()
        })
    }
}
