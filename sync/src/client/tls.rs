//! TLS to the parent: the trust bundle given with `--trust`, or the public web roots; HTTP/1.1
//! only, so parallel blob transfers each get a connection.

use super::*;

pub(super) fn tls_config(trust: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut config = match trust {
        Some(path) => {
            certs::tls::client_config(path).map_err(|e| ClientError::Trust(e.to_string()))?
        }
        None => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            rustls::ClientConfig::builder_with_provider(certs::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| ClientError::Trust(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    // HTTP/1.1 only: blob transfers run on parallel connections, which avoids HTTP/2's
    // per-stream flow-control windows throttling a single large blob.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
