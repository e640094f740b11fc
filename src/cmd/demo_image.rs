//! The image `connected-registry demo` puts in its cloud before anything starts: one small
//! layer holding a text file, written straight into the cloud's store, so the demo needs no
//! image download, no Docker and no network to have something to pull through the layers.

use std::path::Path;

use axum::body::Bytes;
use registry::{Digest, Limits, Origin, Reference, RepoName, Store};

/// Where the demo image lives in every layer.
pub const REPOSITORY: &str = "demo/hello";
/// Its tag.
pub const TAG: &str = "v1";

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Stores the demo image in the registry data directory `data` (no registry may have it open);
/// returns the manifest's digest.
pub async fn seed(data: &Path) -> anyhow::Result<Digest> {
    let store = Store::open(data, Limits::default()).map_err(|e| {
        anyhow::anyhow!("cannot open the demo cloud's store {}: {e}", data.display())
    })?;
    let repo: RepoName = REPOSITORY.parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let text = b"Hello from the cloud, through every layer of the edge.\n";
    let layer = tar_one_file("hello.txt", text);
    let layer_digest = push_blob(&store, &repo, &layer).await?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest.to_string()] },
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = push_blob(&store, &repo, &config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest.to_string(), "size": layer.len() }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let tag = Reference::parse(TAG).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (digest, _) = store
        .put_manifest(
            &repo,
            &tag,
            Some(MANIFEST_MEDIA_TYPE),
            Bytes::from(manifest),
            Origin::Client,
        )
        .map_err(|e| anyhow::anyhow!("cannot store the demo manifest: {e}"))?;
    Ok(digest)
}

/// Stores `data` as a blob of `repo` through an upload session, as a client's push does.
async fn push_blob(store: &Store, repo: &RepoName, data: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::sha256_of(data);
    let session = store
        .new_upload(repo)
        .map_err(|e| anyhow::anyhow!("cannot start an upload in the demo cloud: {e}"))?;
    let mut session = session.lock().await;
    session
        .append(data)
        .and_then(|_| store.finish_upload(&mut session, &digest))
        .map_err(|e| anyhow::anyhow!("cannot store a demo blob: {e}"))?;
    Ok(digest)
}

/// A tar archive (ustar) holding one regular file `name` (shorter than 100 bytes) with
/// `content`: an uncompressed OCI layer.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let mut octal = |offset: usize, len: usize, value: u64| {
        let field = format!("{value:0width$o}\0", width = len - 1);
        header[offset..offset + len].copy_from_slice(field.as_bytes());
    };
    octal(100, 8, 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, content.len() as u64);
    octal(136, 12, 1_700_000_000);
    header[148..156].copy_from_slice(b"        ");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_layer_is_a_tar_of_whole_blocks_with_a_valid_checksum() {
        let tar = super::tar_one_file("hello.txt", b"hi\n");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..9], b"hello.txt");
        let mut header = tar[..512].to_vec();
        let stored = String::from_utf8_lossy(&header[148..154]).into_owned();
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(&stored, 8).unwrap(), sum);
    }
}
