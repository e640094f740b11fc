//! The Blob service REST client's core: where a container and its blobs are (URLs), how a
//! request is authorized (Shared Key or SAS), sent (with the bounded retries of `retry`), and
//! how a failure is described. The calls themselves are in `container` and `blob`.
//!
//! An error carries the HTTP status and Azure's error code and message, never a URL's query
//! (a SAS), a header or the key.

use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::config::{AzureConfig, Credentials};
use super::retry::{self, Failure};
use super::{sign, xml};

/// The Blob service version requests ask for: the one the Azure SDK (0.21) sent, which
/// Azurite and Azure both serve.
pub(crate) const API_VERSION: &str = "2022-11-02";

/// A container's client. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub(crate) struct Client(Arc<Inner>);

struct Inner {
    http: reqwest::Client,
    account: String,
    /// The container's URL (`ENDPOINT/CONTAINER`), without a query.
    container_url: Url,
    credentials: Credentials,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("container", &self.0.container_url.as_str())
            .finish()
    }
}

/// A request to send: rebuilt and signed again for each attempt.
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn new(method: Method, url: Url) -> Request {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Adds query parameter `name`.
    pub(crate) fn query(mut self, name: &str, value: &str) -> Request {
        self.url.query_pairs_mut().append_pair(name, value);
        self
    }

    /// Sets header `name` (a static name); a value that is not a header value is refused.
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Request, RestError> {
        let value = HeaderValue::from_str(value).map_err(|_| RestError {
            status: None,
            message: format!("{name} is not a valid header value"),
            retry: false,
        })?;
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(self)
    }

    /// Sets header `name` when there is a value.
    pub(crate) fn header_if(
        self,
        name: &'static str,
        value: Option<&str>,
    ) -> Result<Request, RestError> {
        match value {
            Some(value) => self.header(name, value),
            None => Ok(self),
        }
    }

    /// Sets the blob metadata headers (`x-ms-meta-NAME`).
    pub(crate) fn metadata(mut self, metadata: &[(&str, String)]) -> Result<Request, RestError> {
        for (name, value) in metadata {
            let header = HeaderName::from_bytes(format!("x-ms-meta-{name}").as_bytes());
            let value = HeaderValue::from_str(value);
            match (header, value) {
                (Ok(header), Ok(value)) => {
                    self.headers.insert(header, value);
                }
                _ => {
                    return Err(RestError {
                        status: None,
                        message: format!("metadata {name} is not a valid header"),
                        retry: false,
                    })
                }
            }
        }
        Ok(self)
    }

    pub(crate) fn body(mut self, body: Bytes) -> Request {
        self.body = body;
        self
    }
}

/// A failed call: the HTTP status when there was a response, what went wrong, and whether
/// the same call may succeed later.
#[derive(Debug)]
pub(crate) struct RestError {
    pub(crate) status: Option<StatusCode>,
    pub(crate) message: String,
    pub(crate) retry: bool,
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl RestError {
    /// A response that could not be read as the call's answer.
    pub(crate) fn unreadable(what: &str, why: impl fmt::Display) -> RestError {
        RestError {
            status: None,
            message: format!("the answer to {what} could not be read: {why}"),
            retry: false,
        }
    }

    pub(crate) fn not_found(&self) -> bool {
        self.status == Some(StatusCode::NOT_FOUND)
    }

    /// A condition (`If-Match`, `If-None-Match`) did not hold, or the target exists already.
    pub(crate) fn conflict(&self) -> bool {
        matches!(
            self.status,
            Some(StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT)
        )
    }
}

/// A transport error with its causes, without its URL (which may hold a SAS).
pub(crate) fn describe(err: reqwest::Error) -> String {
    util::error_chain::error_chain(&err.without_url())
}

/// The whole body of `response`, the answer to `what`, as text; a body cut off on the way is
/// worth another try.
pub(crate) async fn text(response: reqwest::Response, what: &str) -> Result<String, RestError> {
    response.text().await.map_err(|e| RestError {
        retry: true,
        ..RestError::unreadable(what, describe(e))
    })
}

impl Client {
    pub(crate) fn new(config: &AzureConfig) -> Result<Client, String> {
        let http = super::transport::http_client()?;
        let mut container_url = Url::parse(config.endpoint())
            .map_err(|e| format!("the blob endpoint {}: {e}", config.endpoint()))?;
        container_url
            .path_segments_mut()
            .map_err(|()| format!("the blob endpoint {} has no path", config.endpoint()))?
            .pop_if_empty()
            .push(config.container());
        Ok(Client(Arc::new(Inner {
            http,
            account: config.account().to_owned(),
            container_url,
            credentials: config.credentials().clone(),
        })))
    }

    pub(crate) fn container_url(&self) -> Url {
        self.0.container_url.clone()
    }

    /// Blob `name`'s URL; each `/`-separated part is one path segment, percent-encoded.
    pub(crate) fn blob_url(&self, name: &str) -> Url {
        let mut url = self.container_url();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(name.split('/'));
        }
        url
    }

    /// The URL another request of this account may read blob `name` at (a copy's source): with
    /// the SAS when that is the credential. Never shown.
    pub(crate) fn authorized_url(&self, name: &str) -> Url {
        let mut url = self.blob_url(name);
        if let Credentials::Sas(sas) = &self.0.credentials {
            url.set_query(Some(sas));
        }
        url
    }

    /// Sends `request`, again after a transient failure as `retry` decides, and returns the
    /// first success (2xx) or the error of the last attempt. `what` names the call in errors.
    pub(crate) async fn send(
        &self,
        request: &Request,
        what: &str,
    ) -> Result<reqwest::Response, RestError> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            let (failure, retry_after, error) = match self.attempt(request).await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let retry_after =
                        retry::retry_after(status, response.headers(), SystemTime::now());
                    let error = failed(response).await;
                    (Failure::Status(status), retry_after, error)
                }
                Err(err) => (
                    Failure::Connection,
                    None,
                    RestError {
                        status: None,
                        message: format!("{what}: {}", describe(err)),
                        retry: true,
                    },
                ),
            };
            let wait = retry::delay(
                failure,
                retries,
                started.elapsed(),
                retry_after,
                retry::jitter(),
            );
            let Some(wait) = wait else {
                let retry = retry::transient(failure);
                let tried = if retries > 0 {
                    format!(" (after {} attempts)", retries + 1)
                } else {
                    String::new()
                };
                return Err(RestError {
                    message: format!("{}{tried}", error.message),
                    retry,
                    ..error
                });
            };
            tracing::debug!(
                call = what,
                retries,
                "Azure Blob Storage: {}; retrying in {wait:?}",
                error.message
            );
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// Sends `request` once, authorized.
    async fn attempt(&self, request: &Request) -> Result<reqwest::Response, reqwest::Error> {
        let mut url = request.url.clone();
        let mut headers = request.headers.clone();
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        if request.method == Method::PUT {
            // The service wants a length on every write, 0 included (which reqwest leaves out).
            headers.insert(
                reqwest::header::CONTENT_LENGTH,
                HeaderValue::from(request.body.len()),
            );
        }
        let date = httpdate::fmt_http_date(SystemTime::now());
        headers.insert(
            "x-ms-date",
            HeaderValue::from_str(&date).expect("an HTTP date is a header value"),
        );
        match &self.0.credentials {
            Credentials::SharedKey(key) => {
                let signed = sign::string_to_sign(
                    request.method.as_str(),
                    &url,
                    &headers,
                    request.body.len() as u64,
                    &self.0.account,
                );
                let authorization = sign::authorization(&self.0.account, key, &signed);
                let mut value = HeaderValue::from_str(&authorization)
                    .expect("base64 and an account name are a header value");
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
            Credentials::Sas(sas) => {
                let query = match url.query() {
                    Some(query) if !query.is_empty() => format!("{query}&{sas}"),
                    _ => sas.clone(),
                };
                url.set_query(Some(&query));
            }
        }
        self.0
            .http
            .request(request.method.clone(), url)
            .headers(headers)
            .body(request.body.clone())
            .send()
            .await
    }
}

/// The error of an error response: its status, and Azure's code and message when it sent them.
async fn failed(response: reqwest::Response) -> RestError {
    let status = response.status();
    let code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    let parsed = xml::parse(&body).ok();
    let code = code.or_else(|| {
        parsed
            .as_ref()
            .and_then(|e| e.text_of("Code"))
            .map(str::to_owned)
    });
    // The first line: Azure adds a request id and time on the next ones.
    let message = parsed
        .as_ref()
        .and_then(|e| e.text_of("Message"))
        .and_then(|m| m.lines().next())
        .map(str::to_owned);
    let mut text = format!("HTTP {status}");
    if let Some(code) = code {
        text.push_str(&format!(" ({code})"));
    }
    if let Some(message) = message {
        text.push_str(&format!(": {message}"));
    }
    RestError {
        status: Some(status),
        message: text,
        retry: false,
    }
}
