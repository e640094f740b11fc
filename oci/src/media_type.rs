//! The manifest media types the registry checks and sync walks, and how to tell an index.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The OCI empty descriptor's config type: artifacts use it, and their artifactType comes
/// from the manifest.
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// The manifest types whose structure must be well formed (the registry refuses them
/// otherwise); any other type is stored byte-exact.
pub fn is_known(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

/// Whether a media type names an index (a list of manifests rather than of blobs).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_LIST)
}
