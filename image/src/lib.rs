//! The OCI image of the connected-registry module, built by the binary itself: no base image,
//! no Docker daemon, no `docker build`. An offline device can `docker load` the module it needs
//! before any registry runs there, and CI pushes the same bytes to any registry.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`elf`] | checks that the binary to package is a static ELF executable of the platform |
//! | [`rootfs`] | the one layer: the binary, the CA bundle, a non-root user, the data directory |
//! | [`config`] | the image config (user, entrypoint, ports, labels) and the manifest |
//! | [`archive`] | the image written as an OCI layout tar (`oci-archive:`) or a `docker load` tar |
//! | [`index`] | the multi-architecture index over per-platform manifests |
//!
//! Everything is deterministic: the same binary, CA bundle and settings give the same digests,
//! so a rebuild of a release can be checked against the published image.

#![forbid(unsafe_code)]

pub mod archive;
pub mod config;
pub mod elf;
pub mod index;
pub mod rootfs;

pub use config::{Image, Settings};

/// Where the binary sits in the image (the entrypoint).
pub const BINARY_PATH: &str = "/connected-registry";
/// Where the CA bundle sits in the image: the path Debian, Alpine and rustls-native-certs
/// look at, and the one the shipped deployment manifests pass to `--trust`.
pub const CA_BUNDLE_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The data directory, as the shipped deployment manifests bind it and set
/// `ACR_REGISTRY_DATA_VOLUME`.
pub const DATA_DIR: &str = "/var/acr/data";
/// The non-root user (and group) the module runs as. 65532 is the customary "nonroot" id of
/// distroless images, unlikely to own anything on a host.
pub const USER_ID: u32 = 65532;
/// The name of that user in `/etc/passwd` and its group in `/etc/group`.
pub const USER_NAME: &str = "registry";
/// The ports the module listens on: `serve` (plain HTTP behind the proxy) and `proxy` (TLS).
pub const EXPOSED_PORTS: [&str; 2] = ["8080/tcp", "443/tcp"];
/// The repository the image is published under, in the shipped manifests and by default.
pub const REPOSITORY: &str = "connected-registry";

/// Why an image cannot be built or written; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Binary(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Io { what, source }
    }
}
