//! The one manifest and index parser: what a manifest is and what it references. The registry
//! uses it to refuse a manifest whose blobs or child manifests are missing and to index
//! referrers by subject; sync uses it to fetch an image's blobs and an index's children
//! bottom-up. One parser, so what sync fetches is exactly what the store will require.
//!
//! Known media types ([`crate::media_type::is_known`]) must be well formed. Any other type is
//! read by its shape (a `config` makes it an image, a non-empty `manifests` an index, else it
//! is opaque) and never refused: it is stored byte-exact, and what it references by that shape
//! is fetched and kept with it.

use serde::Deserialize;

use crate::descriptor::Descriptor;
use crate::media_type::{self, OCI_EMPTY_CONFIG, OCI_INDEX, OCI_MANIFEST};

/// Why a manifest of a known type is refused, in words that say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError(msg.into())
}

/// What a manifest references, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// An image (or artifact) manifest: its config and layers are blobs.
    Image {
        /// Boxed: a descriptor is large, and the other variants hold none inline.
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
    },
    /// An index: its children are manifests.
    Index { manifests: Vec<Descriptor> },
    /// A type with neither shape: stored as it is, referencing nothing.
    Opaque,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub media_type: String,
    pub content: Content,
    /// The manifest this one refers to (signatures, SBOMs): the referrers API indexes it.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or the config's media type for image manifests (the referrers API rule).
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Manifest {
    /// Blobs it references: config and layers (foreign layers included; see
    /// [`Descriptor::is_foreign`]).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let (config, layers) = match &self.content {
            Content::Image { config, layers } => (Some(config.as_ref()), layers.as_slice()),
            _ => (None, &[][..]),
        };
        config.into_iter().chain(layers)
    }

    /// Manifests it references: an index's children.
    pub fn children(&self) -> &[Descriptor] {
        match &self.content {
            Content::Index { manifests } => manifests,
            _ => &[],
        }
    }

    fn opaque(media_type: &str) -> Manifest {
        Manifest {
            media_type: media_type.to_owned(),
            content: Content::Opaque,
            subject: None,
            artifact_type: None,
            annotations: None,
        }
    }
}

/// The body of an image index (and of the referrers API's answer), children only.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
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

/// Parses `body`, served or pushed with `content_type` (its parameters are ignored).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    let raw: RawManifest = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(err) => {
            return match content_type {
                Some(ct) if !media_type::is_known(ct) => Ok(Manifest::opaque(ct)),
                _ if err.is_data() => Err(invalid(format!(
                    "manifest does not match the OCI manifest schema: {err}"
                ))),
                _ => Err(invalid(format!("manifest is not valid JSON: {err}"))),
            };
        }
    };
    let media_type = match (&raw.media_type, content_type) {
        (Some(field), Some(header)) if field != header && media_type::is_known(field) => {
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
    if !media_type::is_known(&media_type) {
        return Ok(by_shape(&media_type, raw));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid(format!(
            "{media_type} needs \"schemaVersion\": 2 (found {:?})",
            raw.schema_version
        )));
    }
    let is_index = media_type::is_index(&media_type);
    let content = if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| invalid(format!("{media_type} needs a \"manifests\" array")))?;
        Content::Index { manifests }
    } else {
        let config = raw
            .config
            .ok_or_else(|| invalid(format!("{media_type} needs a \"config\" descriptor")))?;
        let layers = raw
            .layers
            .ok_or_else(|| invalid(format!("{media_type} needs a \"layers\" array")))?;
        Content::Image {
            config: Box::new(config),
            layers,
        }
    };
    let artifact_type = raw.artifact_type.or_else(|| match &content {
        Content::Image { config, .. } if config.media_type != OCI_EMPTY_CONFIG => {
            Some(config.media_type.clone())
        }
        _ => None,
    });
    Ok(Manifest {
        media_type,
        content,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

/// A manifest of a type not checked here, read by its shape.
fn by_shape(media_type: &str, raw: RawManifest) -> Manifest {
    let content = match (raw.config, raw.manifests) {
        (Some(config), _) => Content::Image {
            config: Box::new(config),
            layers: raw.layers.unwrap_or_default(),
        },
        (None, Some(manifests)) if !manifests.is_empty() => Content::Index { manifests },
        _ => Content::Opaque,
    };
    Manifest {
        content,
        ..Manifest::opaque(media_type)
    }
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
    use crate::media_type::DOCKER_LIST;

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
        assert_eq!(p.blobs().count(), 2);
        assert_eq!(p.subject.unwrap().digest.to_string(), d(3));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn index_children_carry_their_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d(4)
        );
        let p = parse(Some(DOCKER_LIST), body.as_bytes()).unwrap();
        assert_eq!(p.blobs().count(), 0);
        let child = &p.children()[0];
        assert_eq!(
            child.platform.as_ref().unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(p.artifact_type, None);
    }

    #[test]
    fn foreign_layers_need_urls_and_a_foreign_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{}","size":1}},"layers":[
                {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":1,"urls":["https://example.com/l"]}},
                {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":1}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let p = parse(None, body.as_bytes()).unwrap();
        let foreign: Vec<bool> = p.blobs().map(Descriptor::is_foreign).collect();
        assert_eq!(foreign, [false, true, false]);
    }

    #[test]
    fn refuses_broken() {
        assert!(parse(Some(OCI_MANIFEST), b"{not json").is_err());
        assert!(parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2}"#).is_err());
        assert!(parse(None, br#"{"schemaVersion":2}"#).is_err());
        let mismatch = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(Some(OCI_MANIFEST), mismatch.as_bytes()).is_err());
        let negative = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"x","digest":"{}","size":-1}}]}}"#,
            d(1)
        );
        assert!(parse(None, negative.as_bytes()).is_err());
    }

    #[test]
    fn other_types_are_read_by_shape_and_never_refused() {
        let p = parse(Some("application/vnd.example+json"), br#"{"a":1}"#).unwrap();
        assert_eq!(p.media_type, "application/vnd.example+json");
        assert_eq!(p.content, Content::Opaque);
        let p = parse(Some("application/vnd.example+json"), b"not json").unwrap();
        assert_eq!(p.content, Content::Opaque);
        let shaped = format!(
            r#"{{"config":{{"mediaType":"c","digest":"{}","size":1}}}}"#,
            d(1)
        );
        let p = parse(Some("application/vnd.example+json"), shaped.as_bytes()).unwrap();
        assert_eq!(p.blobs().count(), 1);
    }
}
