//! Manifest parsing: which media type a manifest is, and what it references, so the store can
//! refuse a manifest whose blobs or child manifests are missing and index referrers by subject.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::StorageError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The OCI empty descriptor's config type: artifacts use it, and its artifactType comes from the manifest.
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// A descriptor as it appears in manifests and indexes; unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// Foreign (non-distributable) layers, such as Windows base layers, live elsewhere and are
    /// never pushed, so their absence is not an error.
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|u| !u.is_empty())
            && (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What the store needs to know about a manifest it is about to accept.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub media_type: String,
    /// Blobs that must be present: config and layers.
    pub blobs: Vec<Descriptor>,
    /// Manifests that must be present: an index's children.
    pub children: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, or the config's media type for image manifests (the referrers API rule).
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn invalid(msg: impl Into<String>) -> StorageError {
    StorageError::ManifestInvalid(msg.into())
}

/// Parses `body` pushed with `content_type`. Known manifest types must be well formed; other
/// media types are stored byte-exact with no references checked.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, StorageError> {
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    let raw: RawManifest = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(err) => {
            return match content_type {
                Some(ct) if !is_known(ct) => Ok(Parsed::opaque(ct)),
                _ => Err(invalid(format!("manifest is not valid JSON: {err}"))),
            };
        }
    };
    let media_type = match (&raw.media_type, content_type) {
        (Some(field), Some(header)) if field != header && is_known(field) => {
            return Err(invalid(format!(
                "Content-Type {header:?} does not match the manifest's mediaType {field:?}"
            )))
        }
        (Some(field), _) => field.clone(),
        (None, Some(header)) => header.to_owned(),
        (None, None) => guess(&raw).ok_or_else(|| {
            invalid(
                "manifest has no mediaType field and the request no Content-Type: set mediaType",
            )
        })?,
    };
    if !is_known(&media_type) {
        return Ok(Parsed::opaque(&media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid(format!(
            "{media_type} needs \"schemaVersion\": 2 (found {:?})",
            raw.schema_version
        )));
    }
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    let (blobs, children) = if is_index {
        let children = raw
            .manifests
            .ok_or_else(|| invalid(format!("{media_type} needs a \"manifests\" array")))?;
        (Vec::new(), children)
    } else {
        let config = raw
            .config
            .ok_or_else(|| invalid(format!("{media_type} needs a \"config\" descriptor")))?;
        let layers = raw
            .layers
            .ok_or_else(|| invalid(format!("{media_type} needs a \"layers\" array")))?;
        let mut blobs = vec![config];
        blobs.extend(layers);
        (blobs, Vec::new())
    };
    if let Some(bad) = blobs.iter().chain(&children).find(|d| d.size < 0) {
        return Err(invalid(format!(
            "descriptor {} has a negative size",
            bad.digest
        )));
    }
    let artifact_type = raw.artifact_type.or_else(|| {
        blobs
            .first()
            .map(|c| c.media_type.clone())
            .filter(|t| t != OCI_EMPTY_CONFIG && !is_index)
    });
    Ok(Parsed {
        media_type,
        blobs,
        children,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

impl Parsed {
    fn opaque(media_type: &str) -> Parsed {
        Parsed {
            media_type: media_type.to_owned(),
            blobs: Vec::new(),
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }
}

/// The manifest types whose structure the registry checks.
pub fn is_known(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

/// An OCI manifest may omit `mediaType`; tell an image from an index by its fields.
fn guess(raw: &RawManifest) -> Option<String> {
    if raw.manifests.is_some() {
        Some(OCI_INDEX.into())
    } else if raw.config.is_some() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn image_manifest_references() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":3}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}}}"#,
            d(1),
            d(2),
            d(3)
        );
        let p = parse(None, body.as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.subject.unwrap().digest.to_string(), d(3));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn refuses_broken() {
        assert!(parse(Some(OCI_MANIFEST), b"{not json").is_err());
        assert!(parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2}"#).is_err());
        assert!(parse(None, br#"{"schemaVersion":2}"#).is_err());
        let mismatch = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(Some(OCI_MANIFEST), mismatch.as_bytes()).is_err());
    }

    #[test]
    fn opaque_types_pass() {
        let p = parse(Some("application/vnd.example+json"), br#"{"a":1}"#).unwrap();
        assert_eq!(p.media_type, "application/vnd.example+json");
        assert!(p.blobs.is_empty());
    }
}
