//! Azurite (Microsoft's Azure Storage emulator, the npm package `test.sh` installs) for the
//! tests of `serve --storage azblob://CONTAINER`: started by the test on a free loopback port,
//! killed when it ends. A missing Azurite fails the test saying how to install it.

use std::path::Path;

use super::{free_port, serve_with, Proc};
pub use registry::azurite::Azurite;

/// `serve --storage azblob://CONTAINER` on `azurite`, its metadata in `data`.
pub fn serve_azblob(data: &Path, azurite: &Azurite, container: &str, extra_args: &[&str]) -> Proc {
    serve_azblob_on(data, free_port(), azurite, container, extra_args)
}

/// [`serve_azblob`] on a given port (to start it again where its clients expect it).
pub fn serve_azblob_on(
    data: &Path,
    port: u16,
    azurite: &Azurite,
    container: &str,
    extra_args: &[&str],
) -> Proc {
    let storage = format!("azblob://{container}");
    let mut args = vec!["--storage", storage.as_str()];
    args.extend_from_slice(extra_args);
    let connection_string = azurite.connection_string();
    serve_with(
        data,
        port,
        &args,
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string.as_str(),
        )],
        data.with_extension("log"),
    )
}

/// The blob contract of the same container, opened from the test (with a data directory of
/// its own): what any replica would see under a digest.
pub fn container_store(azurite: &Azurite, container: &str, data: &Path) -> registry::Store {
    let blobs = registry::storage::BlobBackend::parse(
        &format!("azblob://{container}"),
        Some(&azurite.connection_string()),
    )
    .expect("an Azurite container");
    let backends = registry::storage::Backends {
        blobs,
        ..Default::default()
    };
    registry::Store::open_with(data, registry::Limits::default(), backends)
        .expect("open the container from the test")
}

/// The digests of every blob in the container, as any replica lists them (`data`: the probing
/// store's own data directory).
pub fn container_digests(azurite: &Azurite, container: &str, data: &Path) -> Vec<String> {
    container_store(azurite, container, data)
        .list_blobs()
        .expect("list the container's blobs")
        .blobs
        .iter()
        .map(|(digest, _)| digest.to_string())
        .collect()
}
