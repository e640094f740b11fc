//! The image written to one file, for a device that has no registry yet: an OCI image layout
//! in a tar (`--format oci`, which `skopeo copy oci-archive:FILE` reads) or a `docker load`
//! archive (`--format docker-archive`: `manifest.json` naming the config, the layers and the
//! tags to set). Both hold the same blobs under `blobs/sha256/`, written with fixed times.

use std::io::Write;

use oci::Digest;
use serde_json::json;

use crate::{Image, ImageError};

/// Which kind of archive to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`) in a tar.
    Oci,
    /// What `docker save` writes and `docker load` reads (`manifest.json`).
    DockerArchive,
}

/// Writes `image` as an archive of `format` to `out`. `tags` are full names (`NAME:TAG`) for a
/// docker archive (what `docker load` tags), and the tag alone for the OCI layout's
/// `org.opencontainers.image.ref.name` (only the first: skopeo wants one image per layout).
pub fn write(
    image: &Image,
    format: Format,
    tags: &[String],
    out: impl Write,
) -> Result<(), ImageError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let blob = |digest: Digest| format!("blobs/sha256/{}", digest.hex());
    match format {
        Format::Oci => {
            let mut descriptor = image.descriptor();
            if let Some(tag) = tags.first() {
                let tag = tag.rsplit_once(':').map_or(tag.as_str(), |(_, t)| t);
                let mut annotations = serde_json::Map::new();
                annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
                descriptor.annotations = Some(annotations);
            }
            let index = json!({
                "schemaVersion": 2,
                "mediaType": oci::media_type::OCI_INDEX,
                "manifests": [descriptor],
            });
            files.push((
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ));
            files.push(("index.json".into(), to_json(&index)?));
            files.push((blob(image.manifest_digest()), image.manifest.clone()));
        }
        Format::DockerArchive => {
            let manifest = json!([{
                "Config": blob(image.config_digest()),
                "RepoTags": tags,
                "Layers": [blob(image.layer_digest())],
            }]);
            files.push(("manifest.json".into(), to_json(&manifest)?));
        }
    }
    files.push((blob(image.config_digest()), image.config.clone()));
    let mut builder = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        append(&mut builder, dir, tar::EntryType::Directory, &[])?;
    }
    for (path, data) in &files {
        append(&mut builder, path, tar::EntryType::Regular, data)?;
    }
    // The layer last and without a copy: it is most of the archive.
    let layer_path = blob(image.layer_digest());
    append(
        &mut builder,
        &layer_path,
        tar::EntryType::Regular,
        &image.layer_gzip,
    )?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(ImageError::io("cannot finish the archive"))
}

fn to_json(value: &serde_json::Value) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::Io {
        what: "cannot write the archive's JSON".into(),
        source: e.into(),
    })
}

fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &str,
    kind: tar::EntryType,
    data: &[u8],
) -> Result<(), ImageError> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    builder
        .append_data(&mut header, path, data)
        .map_err(ImageError::io(format!(
            "cannot write {path} into the archive"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    fn image() -> Image {
        let settings = Settings {
            platform: "linux/amd64".parse().unwrap(),
            version: "0.1.0".into(),
            revision: None,
            source: None,
        };
        Image::build(b"bin", b"ca", &settings).unwrap()
    }

    fn names(archive: &[u8]) -> Vec<String> {
        tar::Archive::new(archive)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn an_oci_archive_is_a_layout_with_every_blob() {
        let image = image();
        let mut out = Vec::new();
        write(
            &image,
            Format::Oci,
            &["connected-registry:0.1.0".into()],
            &mut out,
        )
        .unwrap();
        let names = names(&out);
        for digest in [
            image.manifest_digest(),
            image.config_digest(),
            image.layer_digest(),
        ] {
            assert!(
                names.contains(&format!("blobs/sha256/{}", digest.hex())),
                "{names:?}"
            );
        }
        assert!(names.contains(&"index.json".to_owned()));
    }

    #[test]
    fn a_docker_archive_names_its_config_layers_and_tags() {
        let image = image();
        let mut out = Vec::new();
        let tags = ["connected-registry:0.1.0".to_owned()];
        write(&image, Format::DockerArchive, &tags, &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut manifest = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("manifest.json") {
                std::io::Read::read_to_string(&mut entry, &mut manifest).unwrap();
            }
        }
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "connected-registry:0.1.0");
        assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 1);
    }
}
