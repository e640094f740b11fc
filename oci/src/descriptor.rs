//! Descriptors (what a manifest or index points at) and platforms (what an index child runs
//! on), as the OCI image spec defines them. Unknown fields are ignored when reading.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// A descriptor as it appears in manifests, indexes and the referrers API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Required by the spec; read as empty when a sloppy producer leaves it out, so the
    /// digest can still be followed.
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    /// Bytes of the content; a negative size is refused when the manifest is read.
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Set on the children of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor with only the required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        }
    }

    /// Foreign (non-distributable) layers, such as Windows base layers, live elsewhere (at
    /// their `urls`) and are never pushed: the store does not require them and sync does not
    /// fetch them, by this one rule.
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|u| !u.is_empty())
            && (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
    }
}

/// The platform of an index child. Fields beyond os, architecture and variant are kept so a
/// descriptor read and written again loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// `os/architecture[/variant]`, as `docker --platform` writes it.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Platform {
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
            ..Platform::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_platforms_are_refused() {
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn a_platform_round_trips_its_spec_fields() {
        let json = r#"{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1","os.features":["win32k"]}"#;
        let p: Platform = serde_json::from_str(json).unwrap();
        assert_eq!(p.os_version.as_deref(), Some("10.0.17763.1"));
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
    }
}
