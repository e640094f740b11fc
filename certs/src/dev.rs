//! The development chain: generated in a data directory when the registry or proxy starts
//! without certificates, so the two-command quick start works over TLS.
//!
//! It is for development only: the CA keys sit next to the server key on the same disk.
//! Callers log that loudly and print the root CA path for clients to trust.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::gen::{self, ChainFiles, ChainOptions, ServerOptions};
use crate::renew::{self, RenewPolicy};
use crate::verify;
use crate::CertError;

/// Subject prefix of the development chain's CAs.
pub const DEV_CHAIN_NAME: &str = "Connected Registry Development";
/// Validity of the development server certificate (IoT Edge's default too).
pub const DEV_SERVER_DAYS: u32 = 90;
/// Validity of the development CAs.
pub const DEV_CA_DAYS: u32 = 3650;
/// Lock file that serializes concurrent [`ensure_dev_chain`] calls on one directory.
pub const DEV_LOCK_FILE: &str = ".dev-chain.lock";
/// File names of the development server certificate.
pub const DEV_SERVER_NAME: &str = "server";

/// The development chain's files.
#[derive(Clone, Debug)]
pub struct DevChain {
    /// The root CA certificate clients must trust.
    pub root_ca: PathBuf,
    /// Server certificate followed by the edge and intermediate CAs: what the server presents.
    pub server_chain: PathBuf,
    /// The server's private key (0600).
    pub server_key: PathBuf,
}

impl DevChain {
    /// Where the development chain in `dir` lives (whether or not it exists yet).
    pub fn in_dir(dir: &Path) -> DevChain {
        DevChain {
            root_ca: ChainFiles::in_dir(dir).root_ca_cert,
            server_chain: dir.join(format!("{DEV_SERVER_NAME}-full-chain.cert.pem")),
            server_key: dir.join(format!("{DEV_SERVER_NAME}.key.pem")),
        }
    }
}

/// The names every development server certificate carries besides the caller's.
pub const DEV_DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// Makes sure `dir` holds a usable development chain with a server certificate for
/// `hostnames` plus `localhost` and `127.0.0.1`: creates it on first use, reuses it after,
/// reissues the server certificate when names changed or it is no longer accepted, and
/// renews it when due (80% of its 90 days).
pub fn ensure_dev_chain(dir: &Path, hostnames: &[String]) -> Result<DevChain, CertError> {
    let mut names: Vec<String> = Vec::new();
    for h in hostnames.iter().map(|h| h.trim().to_ascii_lowercase()) {
        if h.is_empty() {
            continue;
        }
        gen::parse_san(&h)?;
        if !names.contains(&h) {
            names.push(h);
        }
    }
    for d in DEV_DEFAULT_NAMES {
        if !names.iter().any(|n| n == d) {
            names.push((*d).to_string());
        }
    }
    // The registry and the proxy may start at once on the same directory: one makes the
    // chain, the other waits and then reuses it (the lock is released when `_lock` drops).
    crate::files::ensure_dir(dir)?;
    let lock_path = dir.join(DEV_LOCK_FILE);
    let _lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| CertError::io(&lock_path, "cannot lock", e))?;
    let chain = ChainFiles::in_dir(dir);
    let out = DevChain::in_dir(dir);

    let ca = match usable_ca(&chain) {
        Ok(ca) => ca,
        Err(why) => {
            if chain.root_ca_cert.exists() {
                tracing::warn!(dir = %dir.display(), %why, "the development CA chain is unusable; generating a new one (clients must trust the new root)");
            }
            let opts = ChainOptions {
                name: DEV_CHAIN_NAME.into(),
                root_days: DEV_CA_DAYS,
                intermediate_days: DEV_CA_DAYS,
                edge_ca_days: DEV_CA_DAYS,
                ..ChainOptions::default()
            };
            gen::new_chain(dir, &opts, true)?;
            tracing::warn!(
                root_ca = %chain.root_ca_cert.display(),
                "generated a DEVELOPMENT certificate chain (its CA keys sit on this disk): \
                 clients must trust the root CA file to connect; configure real certificates \
                 for production"
            );
            let _ = std::fs::remove_file(&out.server_chain);
            chain.edge_ca()?
        }
    };

    if server_fits(&out, &names) {
        renew::renew_if_due(
            &out.server_chain,
            &out.server_key,
            &chain.edge_ca_cert,
            &chain.edge_ca_key,
            &RenewPolicy::default(),
        )?;
        return Ok(out);
    }
    let issued = gen::issue_server(
        &ca,
        &ServerOptions {
            hostname: names[0].clone(),
            sans: names[1..].to_vec(),
            days: DEV_SERVER_DAYS,
            key_type: gen::KeyType::EcdsaP256,
        },
    )?;
    issued.write(dir, DEV_SERVER_NAME)?;
    Ok(out)
}

/// The edge CA if all CA files load and none has expired.
fn usable_ca(chain: &ChainFiles) -> Result<gen::Ca, CertError> {
    let ca = chain.edge_ca()?;
    let now = OffsetDateTime::now_utc();
    for path in [&chain.root_ca_cert, &chain.edge_ca_chain] {
        for info in crate::inspect::inspect_file(path)? {
            if now > info.not_after {
                return Err(CertError::file(
                    path,
                    format!("'{}' has expired", info.subject),
                ));
            }
        }
    }
    Ok(ca)
}

/// True when the existing server chain is accepted under the root for every name and its
/// key matches.
fn server_fits(out: &DevChain, names: &[String]) -> bool {
    if crate::tls::server_config(&out.server_chain, &out.server_key, &[]).is_err() {
        return false;
    }
    names.iter().all(|n| {
        verify::verify_files(&out.server_chain, &out.root_ca, Some(n))
            .map(|v| v.accepted)
            .unwrap_or(false)
    })
}
