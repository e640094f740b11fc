//! The bundle format: an OCI image layout in a tar, so standard tools read it.
//!
//! | entry | what |
//! | --- | --- |
//! | `oci-layout` | `{"imageLayoutVersion":"1.0.0"}` |
//! | `index.json` | one descriptor per tag to set and per referrer, see below |
//! | `blobs/sha256/HEX` | every manifest first (children before the index that lists them), then every config and layer; each once, whatever repositories share it |
//!
//! Each descriptor in `index.json` carries the annotation [`REPOSITORY`] (the repository it
//! belongs to). A tag's descriptor also carries `org.opencontainers.image.ref.name` =
//! `REPO:TAG`, which is what `skopeo copy oci-archive:FILE:REPO:TAG` selects by. A
//! referrer's (a signature, an SBOM) has no ref name: it is stored by digest. Index children
//! the source left out on purpose (a platform filter) are listed, space separated, in the
//! index's own annotation [`SKIPPED`].
//!
//! Entries come in this order so an importer learns everything it must check (the names,
//! the manifests) from the first few megabytes, and reads the large blobs once, in order.
//! A delta bundle (exported `--since-state`) leaves out the blobs and manifests the site
//! holds: its `index.json` still lists every tag to set, and the importer takes what is not
//! in the file from its own store.

use std::collections::BTreeMap;

use oci::{Descriptor, Digest};
use serde::{Deserialize, Serialize};

/// The `oci-layout` file's content.
pub const LAYOUT_FILE: &str = "oci-layout";
pub const LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
pub const INDEX_FILE: &str = "index.json";

/// The annotation naming a descriptor's repository.
pub const REPOSITORY: &str = "io.connected-registry.bundle.repository";
/// The OCI annotation naming a tag (`REPO:TAG` here).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The index's annotation listing index children left out on purpose.
pub const SKIPPED: &str = "io.connected-registry.bundle.skipped";

/// Largest `index.json` read (a descriptor is a few hundred bytes: tens of thousands of tags).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The tar entry of a blob or manifest.
pub fn blob_entry(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// The digest a tar entry holds, when it is one of `blobs/ALG/HEX`.
pub fn entry_digest(name: &str) -> Option<Digest> {
    let rest = name.strip_prefix("blobs/")?;
    let (algorithm, hex) = rest.split_once('/')?;
    format!("{algorithm}:{hex}").parse().ok()
}

/// `index.json`: an OCI image index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What one descriptor of `index.json` asks an importer to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub repository: String,
    /// The tag to set; `None` for a referrer (stored by digest).
    pub tag: Option<String>,
}

/// Annotations for a descriptor of `repository`, tagged `tag` when it is a tag.
pub fn annotate(descriptor: &mut Descriptor, repository: &str, tag: Option<&str>) {
    let mut annotations = serde_json::Map::new();
    annotations.insert(REPOSITORY.into(), repository.into());
    if let Some(tag) = tag {
        annotations.insert(REF_NAME.into(), format!("{repository}:{tag}").into());
    }
    descriptor.annotations = Some(annotations);
}

/// The repository and tag a descriptor of `index.json` names. A layout written by other tools
/// names its images only by `org.opencontainers.image.ref.name`: `REPO:TAG` is read as such.
pub fn entry_of(descriptor: &Descriptor) -> Option<Entry> {
    let annotation = |key: &str| {
        descriptor
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
    };
    let ref_name = annotation(REF_NAME);
    match annotation(REPOSITORY) {
        Some(repository) => Some(Entry {
            repository: repository.to_owned(),
            tag: ref_name
                .and_then(|r| r.strip_prefix(repository))
                .and_then(|r| r.strip_prefix(':'))
                .map(str::to_owned),
        }),
        None => {
            let (repository, tag) = ref_name?.rsplit_once(':')?;
            (!repository.contains('@')).then(|| Entry {
                repository: repository.to_owned(),
                tag: Some(tag.to_owned()),
            })
        }
    }
}

/// Whether `repository` matches `pattern`: the name itself, or with `*` standing for any run
/// of characters (`library/*`, `*`).
pub fn matches(pattern: &str, repository: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = repository.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("app", "app"));
        assert!(!matches("app", "app2"));
        assert!(matches("library/*", "library/a/b"));
        assert!(!matches("library/*", "other/a"));
        assert!(matches("*", "x"));
        assert!(matches("a*c*e", "abcde"));
        assert!(!matches("a*c*e", "abcd"));
        assert!(matches("*-dev", "x-dev"));
        assert!(!matches("ab*ba", "aba"));
    }

    #[test]
    fn entries_name_repository_and_tag() {
        let digest = Digest::sha256_of(b"x");
        let mut d = Descriptor::new("application/vnd.oci.image.manifest.v1+json", digest, 1);
        annotate(&mut d, "library/app", Some("1.0"));
        let entry = entry_of(&d).unwrap();
        assert_eq!(entry.repository, "library/app");
        assert_eq!(entry.tag.as_deref(), Some("1.0"));
        annotate(&mut d, "library/app", None);
        assert_eq!(entry_of(&d).unwrap().tag, None);
        // A layout from another tool: the ref name alone.
        let mut annotations = serde_json::Map::new();
        annotations.insert(REF_NAME.into(), "app:2".into());
        d.annotations = Some(annotations);
        let entry = entry_of(&d).unwrap();
        assert_eq!(
            (entry.repository.as_str(), entry.tag.as_deref()),
            ("app", Some("2"))
        );
        assert_eq!(entry_digest("blobs/sha256/x"), None);
        let digest = Digest::sha256_of(b"y");
        assert_eq!(entry_digest(&blob_entry(&digest)), Some(digest));
    }
}
