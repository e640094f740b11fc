//! The parent client: the OCI `/v2` API over reqwest with a configurable trust bundle,
//! anonymous / Basic / Docker bearer-token auth (tokens cached until they expire, refreshed on
//! 401), retries with exponential backoff and full jitter, `429` + `Retry-After`, a whole-request
//! timeout for small requests and a *progress* timeout for blobs (a slow but moving multi-GB
//! blob never times out; a stalled one does).
//!
//! Here: the client, one request with its retries and timeouts ([`ParentClient::send`]), and
//! the errors. Beside it: `auth.rs` (Basic and bearer tokens), `tls.rs` (trust), `pull.rs`
//! (catalog, tags, manifests, blobs, referrers), `upload.rs` (blobs and manifests going up),
//! `feed.rs` (a parent of ours' change feed), `acr.rs` (a parent of ours' `/acr` listings and
//! attributes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::bandwidth::Throttle;
use crate::parent::ChunkedUpload;
use crate::settings::{Credentials, Limits};
use oci::{Class, Classify, Digest, Fault};
use util::backoff::Backoff;
use util::error_chain::error_chain;

mod acr;
mod auth;
/// The challenge parser's fuzz target, for `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub use auth::fuzz_parse_challenge;
mod feed;
mod pull;
mod tls;
mod upload;

pub use acr::{AcrAnswer, ParentManifest, ParentTag, TagListing, ACR_PAGE};
use auth::CachedToken;
pub use feed::FeedAnswer;
pub use pull::BlobStream;
use tls::tls_config;
pub use upload::Uploaded;

/// Media types we ask for and accept for manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A failure talking to the parent. Every message says it came from the parent (upstream)
/// and names the URL; credentials never appear.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream {url}: {message}")]
    Transport { url: String, message: String },
    #[error("upstream {method} {url}: HTTP {status}: {body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("upstream {url}: authentication failed: {message}")]
    Auth { url: String, message: String },
    #[error("upstream {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("upstream {url}: no byte received for {secs} s (progress timeout)")]
    Stalled { url: String, secs: u64 },
    #[error("trust bundle: {0}")]
    Trust(String),
    /// The parent's certificate does not verify: retrying cannot help, the trust must change.
    #[error(
        "upstream {url}: the parent's TLS certificate cannot be verified ({message}); {hint}; \
         check the chain with `connected-registry certs doctor {url} --trust FILE`"
    )]
    Certificate {
        url: String,
        message: String,
        hint: &'static str,
    },
}

impl Classify for ClientError {
    /// The parent's doing, except what only a change here fixes: the trust bundle (an
    /// unreadable file, or one without the parent's CA). Transport failures, timeouts, 429 and
    /// 5xx may pass; a refusal (4xx), bad credentials or a broken answer will not by itself.
    fn class(&self) -> Class {
        match self {
            ClientError::Transport { .. } | ClientError::Stalled { .. } => {
                Class::new(Fault::Upstream, true)
            }
            ClientError::Status { status, .. } => {
                let by_status = Class::of_status(*status);
                Class::new(Fault::Upstream, by_status.retryable || *status >= 500)
            }
            ClientError::Auth { .. } | ClientError::Protocol { .. } => {
                Class::new(Fault::Upstream, false)
            }
            ClientError::Trust(_) | ClientError::Certificate { .. } => {
                Class::new(Fault::Local, false)
            }
        }
    }
}

impl ClientError {
    /// True when the parent could not be reached at all (so a pass should stop early).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. } | ClientError::Stalled { .. }
        )
    }
}

/// The credentials a request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sent {
    Nothing,
    Basic,
    Bearer(String),
}

/// What an endpoint needs from the token service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Catalog,
    Pull(String),
    Push(String),
    /// A repository's `/acr` properties and listings with the items hidden from listings:
    /// `metadata_read` there, and the registry-wide grant a parent of ours checks its gateway
    /// action (`message/read`, a sync token's) against.
    Attributes(String),
}

/// The registry-wide token scope (catalog, change feed, gateway actions).
const CATALOG_SCOPE: &str = "registry:catalog:*";

impl Scope {
    fn as_token_scope(&self) -> String {
        match self {
            Scope::Catalog => CATALOG_SCOPE.into(),
            Scope::Pull(r) => format!("repository:{r}:pull"),
            Scope::Push(r) => format!("repository:{r}:pull,push"),
            Scope::Attributes(r) => format!("repository:{r}:metadata_read {CATALOG_SCOPE}"),
        }
    }

    /// The token scope to ask for when a challenge names `challenged`: what it names, plus
    /// the registry-wide grant this scope also needs (a challenge names one scope only).
    fn with_challenge(&self, challenged: String) -> String {
        match self {
            Scope::Attributes(_) if !challenged.contains(CATALOG_SCOPE) => {
                format!("{challenged} {CATALOG_SCOPE}")
            }
            _ => challenged,
        }
    }
}

/// A manifest fetched from the parent, verified against its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// Counters for the summary and the speed claims.
#[derive(Default, Debug)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

/// The client for one parent registry. Cheap to share behind an `Arc`.
pub struct ParentClient {
    http: reqwest::Client,
    base: String,
    creds: Option<Credentials>,
    limits: Limits,
    tokens: Mutex<HashMap<Scope, CachedToken>>,
    /// The parent answered a challenge with `Basic`: send credentials up front from now on.
    basic: AtomicBool,
    /// Serializes answering 401s, so concurrent requests fetch one token, not one each.
    refresh_lock: tokio::sync::Mutex<()>,
    /// The parent answered 404 to the referrers API: it has none.
    no_referrers_api: AtomicBool,
    pub stats: ClientStats,
    /// Waits between attempts of one request.
    retry: Backoff,
    /// A trust bundle was given (else the public web roots): shapes the advice on a certificate error.
    trust_given: bool,
    /// Paces every transfer's bytes to the bandwidth cap.
    throttle: Arc<Throttle>,
}

impl ParentClient {
    /// A client for `base` (`https://host:port`), trusting `trust` (a PEM bundle) or, without
    /// it, the public web roots.
    pub fn new(
        base: &str,
        creds: Option<Credentials>,
        trust: Option<&Path>,
        limits: Limits,
    ) -> Result<ParentClient, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(trust)?)
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.progress_timeout)
            .pool_max_idle_per_host(limits.concurrency.max(4) * 2)
            .user_agent(format!(
                "{}{}",
                oci::SYNC_USER_AGENT_PREFIX,
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.into(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(ParentClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            creds,
            retry: Backoff::new(limits.backoff_base, limits.backoff_max),
            trust_given: trust.is_some(),
            throttle: Arc::new(Throttle::new(limits.bandwidth.clone())),
            limits,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            refresh_lock: tokio::sync::Mutex::new(()),
            no_referrers_api: AtomicBool::new(false),
            stats: ClientStats::default(),
        })
    }

    /// This client, its transfers paced together with `other`'s under one cap: the
    /// upstreams of a top layer share its one uplink, so a cap holds for all of them at once,
    /// not for each.
    pub fn sharing_cap_with(mut self, other: &ParentClient) -> ParentClient {
        self.throttle = other.throttle.clone();
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Full jitter: a uniform delay in [0, min(max, base * 2^attempt)].
    fn backoff(&self, attempt: u32) -> Duration {
        self.retry.full(attempt + 1)
    }

    fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
        let d = if let Ok(secs) = v.trim().parse::<u64>() {
            Duration::from_secs(secs)
        } else {
            let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
            (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        };
        Some(d.min(self.limits.backoff_max))
    }

    /// Sends a request built by `build`, with auth, retries and timeouts. `small` requests get
    /// the whole-request timeout; blob transfers rely on the progress timeout only.
    /// Returns the response whatever its final status, except 401 (an auth error) and
    /// retryable statuses that stayed so after every attempt.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &Scope,
        small: bool,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response, ClientError> {
        let mut attempt = 0u32;
        let mut auth_answered = false;
        loop {
            let mut rb = build(self.http.request(method.clone(), url));
            if small {
                rb = rb.timeout(self.limits.request_timeout);
            }
            let (rb, sent) = self.authorize(rb, scope);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let result = rb.send().await;
            attempt += 1;
            let last = attempt >= self.limits.retries;
            match result {
                Err(e) => {
                    if let Some(err) = certificate_error(&self.base, self.trust_given, &e) {
                        return Err(err);
                    }
                    let err = ClientError::Transport {
                        url: url.to_owned(),
                        message: error_chain(&e),
                    };
                    if last || e.is_builder() {
                        return Err(err);
                    }
                    tracing::debug!(%err, attempt, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    if auth_answered {
                        return Err(ClientError::Auth {
                            url: url.to_owned(),
                            message: "the parent refused the credentials or token (HTTP 401)"
                                .into(),
                        });
                    }
                    self.refresh(url, resp.headers(), scope, &sent).await?;
                    auth_answered = true;
                    attempt -= 1;
                }
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    if last {
                        return Err(status_error(&method, url, resp).await);
                    }
                    let wait = self
                        .retry_after(resp.headers())
                        .unwrap_or_else(|| self.backoff(attempt));
                    tracing::info!(
                        url,
                        wait_ms = wait.as_millis() as u64,
                        "parent says 429: waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
                Ok(resp) if matches!(resp.status().as_u16(), 500 | 502 | 503 | 504) && !last => {
                    let wait = self
                        .retry_after(resp.headers())
                        .unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(url, status = resp.status().as_u16(), "retrying");
                    tokio::time::sleep(wait).await;
                }
                Ok(resp) => return Ok(resp),
            }
        }
    }

    /// A small request whose 404 means "not there" (`None`) and any other failure is an error.
    async fn send_found(
        &self,
        method: Method,
        url: &str,
        scope: &Scope,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Option<Response>, ClientError> {
        let resp = self.send(method.clone(), url, scope, true, build).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(&method, url, resp).await);
        }
        Ok(Some(resp))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        resp: Response,
    ) -> Result<T, ClientError> {
        let bytes = self.read_small(url, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            message: format!("bad JSON: {e}"),
        })
    }

    async fn read_small(&self, url: &str, resp: Response) -> Result<Bytes, ClientError> {
        let limit = self.limits.max_manifest_bytes;
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(ClientError::Protocol {
                url: url.into(),
                message: format!("answer larger than the {limit}-byte limit"),
            });
        }
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Transport {
                url: url.into(),
                message: error_chain(&e),
            })?;
            if out.len() + chunk.len() > limit {
                return Err(ClientError::Protocol {
                    url: url.into(),
                    message: format!("answer larger than the {limit}-byte limit"),
                });
            }
            out.extend_from_slice(&chunk);
            self.throttle.pass(chunk.len()).await;
        }
        self.stats
            .bytes_down
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(Bytes::from(out))
    }
}

pub(crate) async fn status_error(method: &Method, url: &str, resp: Response) -> ClientError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    ClientError::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status,
        body: body.trim().to_owned(),
    }
}

/// The certificate failure behind a transport error, if that is what it is (found in the error's
/// source chain, through the I/O errors hyper and rustls wrap it in).
/// Whether a parent answered JSON: a parent of ours does on `/acr`; anything else (a login page
/// of a proxy in between, an HTML 200) means the API is not there.
fn answers_json(resp: &Response) -> bool {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn certificate_error(
    base: &str,
    trust_given: bool,
    e: &(dyn std::error::Error + 'static),
) -> Option<ClientError> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(cert)) = err.downcast_ref::<rustls::Error>() {
            let hint = if trust_given {
                "the trust bundle given with --trust does not hold the CA that issued it: \
                 give the parent's root CA (the IoT Edge trust bundle of this device)"
            } else {
                "no trust bundle is configured, so only public web roots are trusted: give the \
                 parent's root CA with --trust FILE (the IoT Edge trust bundle of this device)"
            };
            return Some(ClientError::Certificate {
                url: base.to_owned(),
                message: format!("invalid peer certificate: {cert:?}"),
                hint,
            });
        }
        next = match err.downcast_ref::<std::io::Error>() {
            // io::Error::source() skips the error it wraps: look at that one too.
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static))
                .or_else(|| err.source()),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandwidth::Bandwidth;

    /// The upstreams of a top layer share one uplink: a client made `sharing_cap_with` the
    /// parent's waits for the bytes the parent's moved; a client of its own does not.
    #[test]
    fn a_client_sharing_the_cap_waits_for_the_others_bytes() {
        let limits = Limits {
            bandwidth: Bandwidth {
                default: Some(1 << 20),
                windows: Vec::new(),
            },
            ..Limits::default()
        };
        let client = |base: &str| ParentClient::new(base, None, None, limits.clone()).unwrap();
        let parent = client("http://127.0.0.1:9");
        let upstream = client("http://127.0.0.2:9").sharing_cap_with(&parent);
        let alone = client("http://127.0.0.3:9");
        let now = Instant::now();
        for _ in 0..64 {
            parent.throttle.book(64 << 10, now); // 4 MiB at 1 MiB/s
        }
        assert!(upstream.throttle.book(64 << 10, now) >= Duration::from_secs(3));
        assert!(alone.throttle.book(64 << 10, now) < Duration::from_secs(1));
    }
}
