//! The HTTP client under the Azure SDK: our reqwest, with rustls on aws-lc-rs and the public
//! web roots, as every other client in this project. The SDK's own transport would bring
//! OpenSSL (`enable_reqwest`) or a second crypto library, ring (`enable_reqwest_rustls`): this
//! adapter only converts requests and responses between the two; the SDK does the REST calls,
//! their signing and their retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::error::{ErrorKind, ResultExt};
use azure_core::{Body, HttpClient};
use futures_util::TryStreamExt;

/// A response's headers must arrive within this long (a body streams for as long as it moves).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// reqwest as the Azure SDK's transport.
#[derive(Debug)]
pub(crate) struct Transport {
    client: reqwest::Client,
}

impl Transport {
    pub(crate) fn new() -> Result<Arc<Transport>, String> {
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
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client for Azure Blob Storage: {e}"))?;
        Ok(Arc::new(Transport { client }))
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(
        &self,
        request: &azure_core::Request,
    ) -> azure_core::Result<azure_core::Response> {
        let method = reqwest::Method::from_bytes(request.method().as_ref().as_bytes())
            .with_context(ErrorKind::DataConversion, || {
                format!("HTTP method {}", request.method())
            })?;
        let mut builder = self.client.request(method, request.url().clone());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = match request.body().clone() {
            Body::Bytes(bytes) => builder.body(bytes),
            Body::SeekableStream(stream) => builder.body(reqwest::Body::wrap_stream(stream)),
        };
        let response = builder.send().await.with_context(ErrorKind::Io, || {
            format!("{} {}", request.method(), request.url().path())
        })?;
        let status =
            azure_core::StatusCode::try_from(response.status().as_u16()).map_err(|_| {
                azure_core::Error::with_message(ErrorKind::DataConversion, || {
                    format!("HTTP status {}", response.status())
                })
            })?;
        let headers: HashMap<_, _> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    azure_core::headers::HeaderName::from(name.as_str().to_owned()),
                    azure_core::headers::HeaderValue::from(value.to_str().ok()?.to_owned()),
                ))
            })
            .collect();
        let body = response.bytes_stream().map_err(|error| {
            azure_core::Error::full(ErrorKind::Io, error, "reading a response body")
        });
        Ok(azure_core::Response::new(
            status,
            headers.into(),
            Box::pin(body),
        ))
    }
}
