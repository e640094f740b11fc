//! Builds OCI image layouts on disk (images and multi-arch indexes with random, incompressible
//! gzip tar layers) for real clients such as skopeo to copy from.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::api::{
    config_bytes, image_manifest, index_manifest, sha256, Desc, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};

/// Media type of the layers written here. They are gzip, because clients such as skopeo
/// compress uncompressed layers on the way to a registry, which would change the digests.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `data` as a gzip stream of stored (uncompressed) deflate blocks: random data does not
/// compress, so this is as small as real compression and needs no compressor.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let crc = !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    });
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(if chunks.peek().is_none() { 1 } else { 0 });
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// `len` deterministic incompressible bytes: the same `seed` gives the same bytes on every run
/// (xorshift64), so a failing test repeats with the same data; different seeds give different data.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The layer digests of the first manifest listed in the `index.json` of the OCI layout at
/// `dir` (e.g. one skopeo pulled into), in manifest order.
pub fn first_image_layers(dir: &Path) -> Vec<String> {
    let read_json = |path: PathBuf| -> Value {
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read {} of a pulled layout: {e}", path.display()));
        serde_json::from_slice(&bytes).expect("layout JSON")
    };
    let index = read_json(dir.join("index.json"));
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("index.json lists a manifest");
    let manifest = read_json(blob_path(dir, digest));
    manifest["layers"]
        .as_array()
        .expect("a manifest with layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Where a layout at `dir` keeps the blob `digest` (`sha256:<hex>`).
fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// A tar archive holding one regular file `name` with `content` (ustar format).
pub fn tar_file(name: &str, content: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100, "tar member name too long");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, content.len() as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = Vec::with_capacity(content.len() + 2048);
    out.extend_from_slice(&h);
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out
}

/// One image written to a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Desc,
    pub config: Desc,
    pub layers: Vec<Desc>,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
#[derive(Clone)]
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<Value>,
}

impl Image {
    /// The layer digests, in manifest order.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
}

impl Layout {
    /// A new layout at `dir` holding one amd64 image (random layers of `layer_sizes` bytes of
    /// file content) tagged `tag`: the usual thing to seed a registry with.
    pub fn with_image(dir: &Path, tag: &str, layer_sizes: &[usize]) -> (Layout, Image) {
        let mut layout = Layout::create(dir);
        let image = layout.add_image("amd64", layer_sizes);
        layout.tag(tag, &image.manifest);
        (layout, image)
    }

    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout dir");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Layout {
            dir: dir.to_path_buf(),
            refs: vec![],
        };
        l.write_index();
        l
    }

    /// `oci:DIR:TAG`, the skopeo reference of `tag` in this layout.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    pub fn write_blob(&self, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        std::fs::write(blob_path(&self.dir, &d), bytes).expect("write layout blob");
        d
    }

    /// The bytes of blob `digest` (`sha256:<hex>`) in this layout.
    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(blob_path(&self.dir, digest))
            .unwrap_or_else(|e| panic!("read layout blob {digest}: {e}"))
    }

    /// Writes an image with one random layer per entry of `layer_sizes` (bytes of file content);
    /// the config's `rootfs.diff_ids` list the layers, so Docker accepts it.
    pub fn add_image(&self, arch: &str, layer_sizes: &[usize]) -> Image {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let tar = tar_file(&format!("layer{i}.bin"), &random_bytes(size));
            diff_ids.push(sha256(&tar));
            let gz = gzip_stored(&tar);
            self.write_blob(&gz);
            layers.push(Desc::of(LAYER_TAR_GZIP, &gz));
        }
        let mut config: Value = serde_json::from_slice(&config_bytes(arch)).unwrap();
        config["rootfs"]["diff_ids"] = json!(diff_ids);
        let config = serde_json::to_vec(&config).unwrap();
        self.write_blob(&config);
        let config = Desc::of(OCI_CONFIG, &config);
        let manifest = image_manifest(OCI_MANIFEST, &config, &layers);
        self.write_blob(&manifest);
        Image {
            manifest: Desc::of(OCI_MANIFEST, &manifest),
            config,
            layers,
        }
    }

    /// Writes one image per architecture and an OCI index over them.
    pub fn add_index(&self, arches: &[&str], layer_sizes: &[usize]) -> (Desc, Vec<Image>) {
        let images: Vec<Image> = arches
            .iter()
            .map(|a| self.add_image(a, layer_sizes))
            .collect();
        let entries: Vec<(Desc, &str)> = images
            .iter()
            .zip(arches)
            .map(|(i, a)| (i.manifest.clone(), *a))
            .collect();
        let index = index_manifest(OCI_INDEX, &entries);
        self.write_blob(&index);
        (Desc::of(OCI_INDEX, &index), images)
    }

    /// Names `desc` as `tag` in the layout's `index.json`.
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        let mut v = desc.json();
        v["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(v);
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }
}
