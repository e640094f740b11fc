//! The multi-architecture index: one tag that `docker pull` on an amd64 gateway, an arm64
//! device and an armv7 device each resolves to its own manifest. CI pushes each platform's
//! image on its own, then assembles this index over them (`image index`).

use oci::Descriptor;
use serde_json::json;

/// The OCI index over `children`, each a manifest descriptor with its platform. Refuses a child
/// without a platform and two children of one platform, which no runtime could choose between.
pub fn build(children: &[Descriptor]) -> Result<Vec<u8>, String> {
    let mut seen = Vec::new();
    for child in children {
        let Some(platform) = &child.platform else {
            return Err(format!("{} has no platform to list it under", child.digest));
        };
        let shown = platform.to_string();
        if seen.contains(&shown) {
            return Err(format!(
                "two images are for {shown}: give each platform's image once"
            ));
        }
        seen.push(shown);
    }
    if children.is_empty() {
        return Err("an index needs at least one image".into());
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": oci::media_type::OCI_INDEX,
        "manifests": children,
    });
    serde_json::to_vec_pretty(&index).map_err(|e| format!("cannot write the index: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Digest;

    fn child(platform: &str) -> Descriptor {
        let mut d = Descriptor::new(
            oci::media_type::OCI_MANIFEST,
            Digest::sha256_of(platform.as_bytes()),
            1,
        );
        d.platform = Some(platform.parse().unwrap());
        d
    }

    #[test]
    fn an_index_lists_each_platform_once() {
        let body = build(&[
            child("linux/amd64"),
            child("linux/arm64/v8"),
            child("linux/arm/v7"),
        ])
        .unwrap();
        let parsed = oci::manifest::parse(Some(oci::media_type::OCI_INDEX), &body).unwrap();
        assert_eq!(parsed.children().len(), 3);
        assert!(build(&[child("linux/amd64"), child("linux/amd64")]).is_err());
        assert!(build(&[]).is_err());
    }
}
