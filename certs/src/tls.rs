//! Loading PEM certificate chains, private keys and trust bundles into rustls configs.
//!
//! Every error names the file it came from, so an operator knows which file to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not PEM or holds no certificate (expected \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { path: PathBuf },
    #[error("{path}: holds no private key (expected PKCS#8, SEC1 or PKCS#1 PEM)")]
    NoKey { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{chain} and {key}: {message}")]
    Mismatch {
        chain: PathBuf,
        key: PathBuf,
        message: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate in a PEM file, in file order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|err| TlsError::Invalid {
            path: path.to_owned(),
            message: format!("bad PEM: {err}"),
        })?;
    if certs.is_empty() {
        if String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
            return Err(TlsError::Invalid {
                path: path.to_owned(),
                message: "this is a private key, not a certificate: give the certificate \
                          (or chain) file here"
                    .into(),
            });
        }
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    if String::from_utf8_lossy(&pem).contains("ENCRYPTED PRIVATE KEY") {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            message: "the private key is encrypted; give an unencrypted key \
                      (openssl pkey -in KEY -out KEY.plain)"
                .into(),
        });
    }
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|err| TlsError::Invalid {
            path: path.to_owned(),
            message: format!("bad PEM: {err}"),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_owned(),
        })
}

/// A root store holding every certificate of a trust bundle.
pub fn load_root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|err| TlsError::Invalid {
            path: path.to_owned(),
            message: format!("unusable trust anchor: {err}"),
        })?;
    }
    Ok(roots)
}

/// The crypto provider every config in this project uses: aws-lc-rs, rustls's default, whose
/// AES-GCM runs about 1.5x ring's on AVX-512 CPUs (11.3 vs 7.7 GB/s for AES-256-GCM here), and
/// record encryption is the largest single cost of a blob pulled through the proxy.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config from a chain file (leaf first) and its key: TLS 1.2 and 1.3 only,
/// ALPN as given (e.g. `h2`, `http/1.1`).
pub fn server_config(
    chain: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = load_certs(chain)?;
    reject_ca_leaf(chain, &certs[0])?;
    let private_key = load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Invalid {
            path: chain.to_owned(),
            message: err.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|err| TlsError::Mismatch {
            chain: chain.to_owned(),
            key: key.to_owned(),
            message: format!("the key does not fit the certificate: {err}"),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A CA certificate presented as a server's own certificate is refused by every client
/// (webpki: CaUsedAsEndEntity); say so when the file is loaded (at start and on every reload),
/// naming the file, instead of at each handshake.
pub(crate) fn reject_ca_leaf(chain: &Path, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Invalid {
        path: chain.to_owned(),
        message: format!("the first certificate is not valid X.509: {e}"),
    })?;
    if cert.is_ca() {
        return Err(TlsError::Invalid {
            path: chain.to_owned(),
            message: format!(
                "the first certificate '{}' is a CA certificate, and a CA certificate cannot be \
                 the server certificate: clients refuse it. Serve a server certificate issued by \
                 this CA (connected-registry certs issue server --ca ... --hostname ...), leaf first",
                cert.subject()
            ),
        });
    }
    Ok(())
}

/// A client config that trusts exactly the certificates in `trust` (a PEM bundle).
pub fn client_config(trust: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_root_store(trust)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Invalid {
            path: trust.to_owned(),
            message: err.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
