//! The image's one layer: the root filesystem of the module, written as a tar without a base
//! image. It holds only what the binary needs at run time: itself, the CA bundle (its TLS
//! clients trust a parent through it), `/etc/passwd` and `/etc/group` naming the non-root
//! user, the data directory owned by that user (a named volume mounted there inherits the
//! owner), and a `/tmp`. Every entry has a fixed time and owner, so the same inputs give the
//! same bytes and digest.

use std::io::Write;

use flate2::write::GzEncoder;

use crate::{ImageError, BINARY_PATH, CA_BUNDLE_PATH, DATA_DIR, USER_ID, USER_NAME};

/// The modification time of every entry: the epoch, so no build time leaks into the digest.
const MTIME: u64 = 0;

/// One entry of the layer.
enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
        owner: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
}

/// The layer as an uncompressed tar (its digest is the config's `diff_id`).
pub fn tar(binary: &[u8], ca_bundle: &[u8]) -> Result<Vec<u8>, ImageError> {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\n\
         {USER_NAME}:x:{USER_ID}:{USER_ID}:{USER_NAME}:{DATA_DIR}:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\n{USER_NAME}:x:{USER_ID}:\n");
    let entries = [
        Entry::File {
            path: BINARY_PATH,
            mode: 0o755,
            data: binary,
        },
        Entry::Dir {
            path: "/etc",
            mode: 0o755,
            owner: 0,
        },
        Entry::File {
            path: "/etc/group",
            mode: 0o644,
            data: group.as_bytes(),
        },
        Entry::File {
            path: "/etc/passwd",
            mode: 0o644,
            data: passwd.as_bytes(),
        },
        Entry::Dir {
            path: "/etc/ssl",
            mode: 0o755,
            owner: 0,
        },
        Entry::Dir {
            path: "/etc/ssl/certs",
            mode: 0o755,
            owner: 0,
        },
        Entry::File {
            path: CA_BUNDLE_PATH,
            mode: 0o644,
            data: ca_bundle,
        },
        Entry::Dir {
            path: "/tmp",
            mode: 0o1777,
            owner: 0,
        },
        Entry::Dir {
            path: "/var",
            mode: 0o755,
            owner: 0,
        },
        Entry::Dir {
            path: "/var/acr",
            mode: 0o755,
            owner: 0,
        },
        Entry::Dir {
            path: DATA_DIR,
            mode: 0o750,
            owner: USER_ID,
        },
    ];
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(MTIME);
        let (path, data): (String, &[u8]) = match entry {
            Entry::Dir { path, mode, owner } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid((*owner).into());
                header.set_gid((*owner).into());
                (format!("{}/", path.trim_start_matches('/')), &[])
            }
            Entry::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(0);
                header.set_gid(0);
                (path.trim_start_matches('/').to_owned(), data)
            }
        };
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, &path, data)
            .map_err(ImageError::io(format!("cannot add {path} to the layer")))?;
    }
    builder
        .into_inner()
        .map_err(ImageError::io("cannot finish the layer tar"))
}

/// The layer compressed as registries and `docker pull` expect it (`tar+gzip`). The gzip
/// header carries no time or file name, so the bytes depend on the tar alone.
pub fn gzip(tar: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(tar)
        .map_err(ImageError::io("cannot compress the layer"))?;
    encoder
        .finish()
        .map_err(ImageError::io("cannot compress the layer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_layer_holds_the_binary_the_bundle_the_user_and_the_data_directory() {
        let layer = tar(b"\x7fELF binary", b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let entries = listing(&layer);
        let find = |p: &str| entries.iter().find(|e| e.0 == p).cloned().unwrap();
        assert_eq!(find("connected-registry").1, 0o755);
        assert_eq!(find("etc/ssl/certs/ca-certificates.crt").1, 0o644);
        assert_eq!(find("var/acr/data/").2, u64::from(USER_ID));
        assert!(entries.iter().all(|e| e.3 == MTIME));
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let a = gzip(&tar(b"bin", b"ca").unwrap()).unwrap();
        let b = gzip(&tar(b"bin", b"ca").unwrap()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, gzip(&tar(b"bin2", b"ca").unwrap()).unwrap());
    }
}
