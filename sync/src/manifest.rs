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
    /// Set on the children of an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of an index child, as far as the filter looks at it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// `os/architecture[/variant]`, as `docker --platform` takes it.
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("{s:?} is not os/architecture[/variant] (e.g. linux/arm64/v8)");
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl Platform {
    /// Whether a child of this platform is wanted by `filter` entry `self`: os and
    /// architecture equal, and the variant too when the filter names one.
    pub fn admits(&self, child: &Platform) -> bool {
        self.os == child.os
            && self.architecture == child.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| child.variant.as_ref() == Some(v))
    }
}

/// Whether the platform filter (empty: everything) keeps an index child. Children without a
/// platform (nested indexes, artifacts) are kept: the filter cannot judge them.
pub fn keeps(filter: &[Platform], child: &Descriptor) -> bool {
    filter.is_empty()
        || child
            .platform
            .as_ref()
            .is_none_or(|p| filter.iter().any(|f| f.admits(p)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn child(platform: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: Digest::sha256_of(b"x"),
            size: 1,
            platform: platform.map(|p| p.parse().unwrap()),
        }
    }

    #[test]
    fn platform_filter_matches_os_arch_and_variant_when_named() {
        let arm64: Vec<Platform> = vec!["linux/arm64".parse().unwrap()];
        assert!(keeps(&arm64, &child(Some("linux/arm64/v8"))));
        assert!(!keeps(&arm64, &child(Some("linux/amd64"))));
        assert!(keeps(&arm64, &child(None)), "no platform: kept");
        assert!(
            keeps(&[], &child(Some("linux/amd64"))),
            "no filter: everything"
        );
        let v7: Vec<Platform> = vec!["linux/arm/v7".parse().unwrap()];
        assert!(keeps(&v7, &child(Some("linux/arm/v7"))));
        assert!(!keeps(&v7, &child(Some("linux/arm/v6"))));
        assert!(!keeps(&v7, &child(Some("linux/arm"))));
    }

    #[test]
    fn bad_platforms_are_refused() {
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }
}
