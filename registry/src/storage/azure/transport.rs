//! The HTTP client of the Azure Blob REST client: our reqwest, with rustls on aws-lc-rs and the
//! public web roots, as every other client in this project (no OpenSSL, no second crypto
//! library).

use std::sync::Arc;
use std::time::Duration;

/// A connection must be set up within this long (a body streams for as long as it moves).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The reqwest client every request of one store goes through (it pools the connections).
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings for Azure Blob Storage: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1: parallel blob transfers each get a connection of their own.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client for Azure Blob Storage: {e}"))
}
