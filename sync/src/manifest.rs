//! The parts of OCI / Docker manifests the sync engine walks: which blobs an image needs and
//! which child manifests an index needs, so content is fetched and written bottom-up.

use serde::Deserialize;

use crate::digest::Digest;

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Image {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What a manifest references.
#[derive(Clone, Debug)]
pub enum Parsed {
    Index(Index),
    Image(Image),
}

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Parses a manifest body by its media type (falling back to its shape).
pub fn parse(media_type: &str, body: &[u8]) -> Result<Parsed, String> {
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    if is_index {
        return serde_json::from_slice(body)
            .map(Parsed::Index)
            .map_err(|e| format!("bad index ({media_type}): {e}"));
    }
    match serde_json::from_slice::<Image>(body) {
        Ok(i) => Ok(Parsed::Image(i)),
        Err(e) => {
            // An artifact manifest with unknown media type but an index shape.
            if let Ok(idx) = serde_json::from_slice::<Index>(body) {
                if !idx.manifests.is_empty() {
                    return Ok(Parsed::Index(idx));
                }
            }
            Err(format!("unsupported manifest ({media_type}): {e}"))
        }
    }
}

/// Layers that registries do not serve (fetched from their `urls` by the runtime).
pub fn is_foreign(d: &Descriptor) -> bool {
    d.media_type.contains("foreign") || d.media_type.contains("nondistributable")
}
