//! The image config and manifest: how a container of the module starts (the non-root user,
//! the entrypoint, the default command, the data directory, the exposed ports) and the labels
//! that say which version of which source it is. The default command serves on all
//! interfaces, as a module in a container must; the deployment manifests give their own.

use oci::{Descriptor, Digest, Platform};
use serde_json::{json, Value};

use crate::{rootfs, ImageError, BINARY_PATH, DATA_DIR, EXPOSED_PORTS, USER_ID};

/// The OCI media types of the image's parts.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the image says about itself, beyond the binary.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The platform the binary is built for (`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`).
    pub platform: Platform,
    /// The version label (`org.opencontainers.image.version`): the binary's release.
    pub version: String,
    /// The source commit (`org.opencontainers.image.revision`), when known.
    pub revision: Option<String>,
    /// The source repository URL (`org.opencontainers.image.source`), when known.
    pub source: Option<String>,
}

/// A built image: every blob in memory (the binary is tens of MB at most), with its digests.
#[derive(Debug, Clone)]
pub struct Image {
    pub platform: Platform,
    /// The uncompressed layer tar (a `docker load` archive carries this).
    pub layer_tar: Vec<u8>,
    /// The compressed layer (registries and OCI layouts carry this).
    pub layer_gzip: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// Packages `binary` with `ca_bundle` into a one-layer image.
    pub fn build(
        binary: &[u8],
        ca_bundle: &[u8],
        settings: &Settings,
    ) -> Result<Image, ImageError> {
        let layer_tar = rootfs::tar(binary, ca_bundle)?;
        let layer_gzip = rootfs::gzip(&layer_tar)?;
        let config = config_json(settings, &Digest::sha256_of(&layer_tar));
        let config = serde_json::to_vec_pretty(&config).map_err(json_error)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": oci::media_type::OCI_MANIFEST,
            "config": Descriptor::new(CONFIG_MEDIA_TYPE, Digest::sha256_of(&config), config.len() as u64),
            "layers": [Descriptor::new(LAYER_MEDIA_TYPE, Digest::sha256_of(&layer_gzip), layer_gzip.len() as u64)],
            "annotations": labels(settings),
        });
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(json_error)?;
        Ok(Image {
            platform: settings.platform.clone(),
            layer_tar,
            layer_gzip,
            config,
            manifest,
        })
    }

    pub fn config_digest(&self) -> Digest {
        Digest::sha256_of(&self.config)
    }

    pub fn layer_digest(&self) -> Digest {
        Digest::sha256_of(&self.layer_gzip)
    }

    pub fn manifest_digest(&self) -> Digest {
        Digest::sha256_of(&self.manifest)
    }

    /// The manifest's descriptor, with its platform, as an index lists it.
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            oci::media_type::OCI_MANIFEST,
            self.manifest_digest(),
            self.manifest.len() as u64,
        );
        d.platform = Some(self.platform.clone());
        d
    }
}

fn json_error(e: serde_json::Error) -> ImageError {
    ImageError::Io {
        what: "cannot write the image JSON".into(),
        source: e.into(),
    }
}

/// The OCI labels (also the manifest's annotations, so registries show them without the config).
fn labels(settings: &Settings) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    labels.insert(
        "org.opencontainers.image.title".into(),
        json!(crate::REPOSITORY),
    );
    labels.insert(
        "org.opencontainers.image.version".into(),
        json!(settings.version),
    );
    if let Some(revision) = &settings.revision {
        labels.insert("org.opencontainers.image.revision".into(), json!(revision));
    }
    if let Some(source) = &settings.source {
        labels.insert("org.opencontainers.image.source".into(), json!(source));
    }
    labels.insert(
        "org.opencontainers.image.licenses".into(),
        json!("Apache-2.0"),
    );
    labels
}

fn config_json(settings: &Settings, diff_id: &Digest) -> Value {
    let ports: serde_json::Map<String, Value> = EXPOSED_PORTS
        .iter()
        .map(|p| ((*p).to_owned(), json!({})))
        .collect();
    let mut config = json!({
        // The epoch, not the build time: the digest depends on the inputs alone.
        "created": "1970-01-01T00:00:00Z",
        "architecture": settings.platform.architecture,
        "os": settings.platform.os,
        "config": {
            "User": format!("{USER_ID}:{USER_ID}"),
            "Entrypoint": [BINARY_PATH],
            "Cmd": ["serve", "--listen", "0.0.0.0:8080"],
            // `serve`'s own default (`./data`) would not be writable by the non-root user.
            "Env": [format!("ACR_REGISTRY_DATA_VOLUME={DATA_DIR}")],
            "WorkingDir": "/",
            "ExposedPorts": ports,
            "Labels": labels(settings),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{
            "created": "1970-01-01T00:00:00Z",
            "created_by": "connected-registry image export",
        }],
    });
    if let Some(variant) = &settings.platform.variant {
        config["variant"] = json!(variant);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            platform: "linux/arm/v7".parse().unwrap(),
            version: "1.2.3".into(),
            revision: Some("abc".into()),
            source: None,
        }
    }

    #[test]
    fn the_config_runs_the_binary_as_the_non_root_user_with_the_ports_and_labels() {
        let image = Image::build(b"bin", b"ca", &settings()).unwrap();
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["config"]["Entrypoint"][0], "/connected-registry");
        assert!(config["config"]["ExposedPorts"]["443/tcp"].is_object());
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "1.2.3"
        );
        assert_eq!(
            (config["architecture"].as_str(), config["variant"].as_str()),
            (Some("arm"), Some("v7"))
        );
        let diff_id = Digest::sha256_of(&image.layer_tar).to_string();
        assert_eq!(config["rootfs"]["diff_ids"][0], diff_id);
    }

    #[test]
    fn the_manifest_parses_and_references_the_config_and_layer() {
        let image = Image::build(b"bin", b"ca", &settings()).unwrap();
        let parsed =
            oci::manifest::parse(Some(oci::media_type::OCI_MANIFEST), &image.manifest).unwrap();
        let blobs: Vec<_> = parsed.blobs().map(|d| d.digest.clone()).collect();
        assert_eq!(blobs, [image.config_digest(), image.layer_digest()]);
        let again = Image::build(b"bin", b"ca", &settings()).unwrap();
        assert_eq!(again.manifest_digest(), image.manifest_digest());
    }
}
