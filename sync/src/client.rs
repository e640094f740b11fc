//! The parent client: the OCI `/v2` API over reqwest with a configurable trust bundle,
//! anonymous / Basic / Docker bearer-token auth (tokens cached until they expire, refreshed on
//! 401), retries with exponential backoff and full jitter, `429` + `Retry-After`, a whole-request
//! timeout for small requests and a *progress* timeout for blobs (a slow but moving multi-GB
//! blob never times out; a stalled one does).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::backoff::Backoff;
use crate::digest::Digest;
use crate::parent::ChunkedUpload;
use crate::settings::{Credentials, Limits};

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

impl ClientError {
    /// True when the parent could not be reached at all (so a pass should stop early).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. } | ClientError::Stalled { .. }
        )
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires: Instant,
}

/// How a chunked upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    Done,
    /// Stopped between chunks at the end of the window; resumes from the saved location.
    Paused,
}

/// The URL that completes the upload at `location` (its query may carry the registry's state).
fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// `len` bytes of the file at `path` from `offset`.
async fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut file = std::fs::File::open(path)?;
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut buf)?;
        if (buf.len() as u64) < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
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
}

impl Scope {
    fn as_token_scope(&self) -> String {
        match self {
            Scope::Catalog => "registry:catalog:*".into(),
            Scope::Pull(r) => format!("repository:{r}:pull"),
            Scope::Push(r) => format!("repository:{r}:pull,push"),
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

/// One page of a parent's change feed.
#[derive(Clone, Debug)]
pub struct FeedPage {
    /// The parent's newest change sequence number.
    pub head: u64,
    /// The oldest sequence number the parent still keeps.
    pub oldest: u64,
    /// The parent cannot continue from the `after` asked for: compare everything once.
    pub reset: bool,
    pub changes: Vec<FeedChange>,
}

/// One change at the parent, as much as sync needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedChange {
    pub seq: u64,
    pub repo: String,
    pub what: FeedWhat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedWhat {
    /// A tag was set, moved or deleted.
    Tag(String),
    /// A manifest was stored (a referrer pushed by digest, a platform manifest, or the target
    /// of a tag, which comes as its own `Tag` change too).
    ManifestPut(Digest),
    /// A manifest was deleted (tags that pointed at it come as their own `Tag` changes).
    ManifestDeleted,
    /// A kind of change this version does not know (a newer parent): the repository is compared
    /// in full.
    Other,
}

impl FeedChange {
    /// Reads one entry of the feed (`registry::storage::Change` as JSON) leniently: a kind
    /// this version does not know is `Other`, not an error.
    fn from_json(value: serde_json::Value) -> Option<FeedChange> {
        let seq = value.get("seq")?.as_u64()?;
        let repo = value.get("repo")?.as_str()?.to_owned();
        let tag = value.get("tag").and_then(|t| t.as_str());
        let digest = value
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Digest>().ok());
        let what = match (value.get("type").and_then(|t| t.as_str()), tag, digest) {
            (Some("tag_set" | "tag_deleted"), Some(tag), _) => FeedWhat::Tag(tag.to_owned()),
            (Some("manifest_put"), _, Some(digest)) => FeedWhat::ManifestPut(digest),
            (Some("manifest_deleted"), _, _) => FeedWhat::ManifestDeleted,
            _ => FeedWhat::Other,
        };
        Some(FeedChange { seq, repo, what })
    }
}

#[derive(serde::Deserialize)]
struct RawFeedPage {
    head: u64,
    #[serde(default)]
    oldest: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    changes: Vec<serde_json::Value>,
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
}

/// A streaming blob response. `skip` bytes at its start must be dropped (the parent ignored
/// the `Range` header and sent the blob from byte 0).
pub struct BlobStream {
    pub response: Response,
    pub skip: u64,
    pub url: String,
}

fn tls_config(trust: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
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
            .user_agent(concat!(
                "connected-registry-sync/",
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
            limits,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            refresh_lock: tokio::sync::Mutex::new(()),
            no_referrers_api: AtomicBool::new(false),
            stats: ClientStats::default(),
        })
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

    /// Adds what the parent asked for so far; says what was sent, so a 401 can tell a
    /// refused credential from a token someone else already refreshed.
    fn authorize(&self, rb: RequestBuilder, scope: &Scope) -> (RequestBuilder, Sent) {
        let cached = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(scope).cloned())
            .filter(|t| t.expires > Instant::now());
        if let Some(t) = cached {
            let sent = Sent::Bearer(t.token.clone());
            return (rb.bearer_auth(t.token), sent);
        }
        match &self.creds {
            Some(c) if self.basic.load(Ordering::Relaxed) => {
                (rb.basic_auth(&c.username, Some(&c.password)), Sent::Basic)
            }
            _ => (rb, Sent::Nothing),
        }
    }

    /// Handles a 401 for a request that carried `sent`. Concurrent 401s are answered once:
    /// whoever comes second finds the refreshed token (or Basic switched on) and just retries.
    async fn refresh(
        &self,
        url: &str,
        headers: &HeaderMap,
        scope: &Scope,
        sent: &Sent,
    ) -> Result<(), ClientError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let current = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(scope).cloned())
            .filter(|t| t.expires > Instant::now());
        match (sent, &current) {
            (Sent::Bearer(old), Some(now)) if &now.token != old => return Ok(()),
            (Sent::Nothing, Some(_)) => return Ok(()),
            (Sent::Nothing, None) if self.basic.load(Ordering::Relaxed) => return Ok(()),
            _ => {}
        }
        // The token sent may have been revoked or expired early: drop it.
        if let Ok(mut t) = self.tokens.lock() {
            t.remove(scope);
        }
        self.answer_challenge(url, headers, scope, sent).await
    }

    /// Answers a 401 challenge: Basic switches to sending credentials; Bearer fetches a token
    /// from the realm and caches it until it expires.
    async fn answer_challenge(
        &self,
        url: &str,
        headers: &HeaderMap,
        scope: &Scope,
        sent: &Sent,
    ) -> Result<(), ClientError> {
        let auth_err = |message: String| ClientError::Auth {
            url: url.to_owned(),
            message,
        };
        let challenge = headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| auth_err("HTTP 401 without a WWW-Authenticate challenge".into()))?;
        let (kind, params) = parse_challenge(challenge);
        match kind.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(auth_err(
                        "the parent asks for Basic credentials; give --creds NAME:PASSWORD or a connection string".into(),
                    ));
                }
                if *sent == Sent::Basic {
                    return Err(auth_err(
                        "the parent refused the credentials (Basic)".into(),
                    ));
                }
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_err("Bearer challenge without realm".into()))?;
                let token_scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| scope.as_token_scope());
                let mut query: Vec<(&str, String)> = vec![("scope", token_scope)];
                if let Some(service) = params.get("service") {
                    query.push(("service", service.clone()));
                }
                let mut rb = self
                    .http
                    .get(realm)
                    .query(&query)
                    .timeout(self.limits.request_timeout);
                if let Some(c) = &self.creds {
                    rb = rb
                        .basic_auth(&c.username, Some(&c.password))
                        .query(&[("account", c.username.as_str())]);
                }
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let resp = rb.send().await.map_err(|e| ClientError::Transport {
                    url: realm.clone(),
                    message: format!("token service: {}", error_chain(&e)),
                })?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token service {realm} answered HTTP {} (check the sync token name and password)",
                        resp.status().as_u16()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let body: TokenResponse = resp
                    .json()
                    .await
                    .map_err(|e| auth_err(format!("token service {realm}: bad JSON: {e}")))?;
                let token = body
                    .token
                    .or(body.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        auth_err(format!("token service {realm}: no token in the answer"))
                    })?;
                // The spec's default lifetime is 60 s; refresh a little early.
                let life = Duration::from_secs(body.expires_in.unwrap_or(60).max(10));
                let expires = Instant::now() + life.mul_f32(0.9);
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(scope.clone(), CachedToken { token, expires });
                }
                Ok(())
            }
            other => Err(auth_err(format!("unsupported auth scheme {other:?}"))),
        }
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

    /// Every repository in the parent's catalog, or `None` when the parent offers none.
    pub async fn catalog(&self) -> Result<Option<Vec<String>>, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(self.url("/v2/_catalog?n=1000"));
        while let Some(url) = next.take() {
            let resp = match self
                .send(Method::GET, &url, &Scope::Catalog, true, &|rb| rb)
                .await
            {
                Ok(r) => r,
                Err(ClientError::Auth { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            if matches!(resp.status().as_u16(), 401 | 403 | 404 | 405) {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(status_error(&Method::GET, &url, resp).await);
            }
            next = self.next_link(resp.headers());
            #[derive(serde::Deserialize)]
            struct Catalog {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let c: Catalog = self.json(&url, resp).await?;
            out.extend(c.repositories);
        }
        Ok(Some(out))
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

    /// The repository's tags, or `None` when the parent does not know the repository.
    pub async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(self.url(&format!("/v2/{repo}/tags/list?n=1000")));
        let scope = Scope::Pull(repo.into());
        while let Some(url) = next.take() {
            let Some(resp) = self.send_found(Method::GET, &url, &scope, &|rb| rb).await? else {
                return Ok(None);
            };
            next = self.next_link(resp.headers());
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            let t: Tags = self.json(&url, resp).await?;
            out.extend(t.tags.unwrap_or_default());
        }
        Ok(Some(out))
    }

    fn next_link(&self, headers: &HeaderMap) -> Option<String> {
        let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
        let target = link.split(';').next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        Some(if target.starts_with('/') {
            self.url(target)
        } else {
            target.to_owned()
        })
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
        }
        self.stats
            .bytes_down
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(Bytes::from(out))
    }

    /// A HEAD or GET of a manifest accepting every manifest type; `None` when unknown.
    async fn manifest_request(
        &self,
        method: Method,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, Response)>, ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let accept = |rb: RequestBuilder| rb.header(ACCEPT, MANIFEST_ACCEPT);
        let found = self
            .send_found(method, &url, &Scope::Pull(repo.into()), &accept)
            .await?;
        Ok(found.map(|resp| (url, resp)))
    }

    /// The digest a tag or digest resolves to at the parent (one HEAD), or `None` if unknown.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, ClientError> {
        let Some((_, resp)) = self.manifest_request(Method::HEAD, repo, reference).await? else {
            return Ok(None);
        };
        match resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
        {
            Some(d) => Ok(Some(d)),
            // Some registries omit the header on HEAD: fetch and hash instead.
            None => Ok(self.get_manifest(repo, reference).await?.map(|m| m.digest)),
        }
    }

    /// Fetches a manifest; when `reference` is a digest the body must hash to it.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, ClientError> {
        let Some((url, resp)) = self.manifest_request(Method::GET, repo, reference).await? else {
            return Ok(None);
        };
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = self.read_small(&url, resp).await?;
        let digest = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => header_digest.unwrap_or_else(|| Digest::sha256_of(&body)),
        };
        if !crate::digest::matches(&digest, &body) {
            return Err(ClientError::Protocol {
                url,
                message: format!("manifest bytes do not match digest {digest}: refused"),
            });
        }
        let media_type = match media_type {
            Some(m) if m != "application/json" && m != "text/plain" && !m.is_empty() => m,
            _ => {
                #[derive(serde::Deserialize)]
                struct Mt {
                    #[serde(rename = "mediaType")]
                    media_type: Option<String>,
                }
                serde_json::from_slice::<Mt>(&body)
                    .ok()
                    .and_then(|m| m.media_type)
                    .ok_or_else(|| ClientError::Protocol {
                        url: url.clone(),
                        message: "manifest without a media type".into(),
                    })?
            }
        };
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            body,
        }))
    }

    /// Starts a blob download at byte `offset` (a `Range` request when `offset > 0`).
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let range = format!("bytes={offset}-");
        let resp = self
            .send(Method::GET, &url, &Scope::Pull(repo.into()), false, &|rb| {
                if offset > 0 {
                    rb.header(reqwest::header::RANGE, range.as_str())
                } else {
                    rb
                }
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok(BlobStream {
                response: resp,
                skip: offset,
                url,
            }),
            206 => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(ClientError::Protocol {
                        url,
                        message: format!("asked for bytes from {offset}, got Content-Range starting at {start:?}"),
                    });
                }
                Ok(BlobStream {
                    response: resp,
                    skip: 0,
                    url,
                })
            }
            _ => Err(status_error(&Method::GET, &url, resp).await),
        }
    }

    /// Reads the next chunk of a blob stream, failing when nothing arrives within the
    /// progress timeout.
    pub async fn next_chunk(&self, blob: &mut BlobStream) -> Result<Option<Bytes>, ClientError> {
        let secs = self.limits.progress_timeout.as_secs();
        match tokio::time::timeout(self.limits.progress_timeout, blob.response.chunk()).await {
            Err(_) => Err(ClientError::Stalled {
                url: blob.url.clone(),
                secs,
            }),
            Ok(Err(e)) => Err(ClientError::Transport {
                url: blob.url.clone(),
                message: error_chain(&e),
            }),
            Ok(Ok(c)) => {
                if let Some(c) = &c {
                    self.stats
                        .bytes_down
                        .fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                Ok(c)
            }
        }
    }

    /// OCI 1.1 referrers of a manifest; empty when the parent has no referrers API.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Digest>, ClientError> {
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let url = self.url(&format!("/v2/{repo}/referrers/{digest}"));
        let resp = self
            .send(Method::GET, &url, &Scope::Pull(repo.into()), true, &|rb| {
                rb.header(ACCEPT, "application/vnd.oci.image.index.v1+json")
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            // The API answers 200 with an empty index for a manifest it knows; a 404 for a
            // manifest that exists means there is no referrers API: stop asking.
            self.no_referrers_api.store(true, Ordering::Relaxed);
            return Ok(Vec::new());
        }
        if !resp.status().is_success() {
            return Ok(Vec::new());
        }
        let is_index = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/vnd.oci.image.index.v1+json"));
        if !is_index {
            return Ok(Vec::new());
        }
        let index: crate::manifest::Index = self.json(&url, resp).await?;
        Ok(index.manifests.into_iter().map(|d| d.digest).collect())
    }

    /// Whether the parent has a blob in `repo` (HEAD).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Method::HEAD, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(&Method::HEAD, &url, resp).await),
        }
    }

    /// Tries a cross-repository mount; true when the parent mounted the blob.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, ClientError> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self
            .send(Method::POST, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Uploads a blob from a local file: POST for a session, then one monolithic PUT that
    /// streams the file. A retry re-opens the file, so the body is never buffered whole.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        size: u64,
    ) -> Result<(), ClientError> {
        let scope = Scope::Push(repo.into());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .upload_blob_once(repo, digest, path, size, &scope)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unreachable() && attempt < self.limits.retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn upload_blob_once(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
        size: u64,
        scope: &Scope,
    ) -> Result<(), ClientError> {
        let put_url = with_digest(&self.start_upload(repo, scope).await?, digest);
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Protocol {
                url: put_url.clone(),
                message: format!("internal: cannot read local blob {}: {e}", path.display()),
            })?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let body = reqwest::Body::wrap_stream(stream);
        // Single attempt: the body stream cannot be replayed; the caller retries the whole upload.
        let rb = self
            .http
            .put(&put_url)
            .header(CONTENT_LENGTH, size)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(body);
        let (rb, _) = self.authorize(rb, scope);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = rb.send().await.map_err(|e| ClientError::Transport {
            url: put_url.clone(),
            message: error_chain(&e),
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &put_url, resp).await);
        }
        self.stats.bytes_up.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Opens an upload session at the parent; returns its absolute location.
    async fn start_upload(&self, repo: &str, scope: &Scope) -> Result<String, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let resp = self
            .send(Method::POST, &url, scope, true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&Method::POST, &url, resp).await);
        }
        self.location(&url, &resp)
    }

    /// The absolute `Location` of an upload answer.
    fn location(&self, url: &str, resp: &Response) -> Result<String, ClientError> {
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: url.to_owned(),
                message: "upload answered without a Location header".into(),
            })?;
        Ok(if location.starts_with('/') {
            self.url(location)
        } else {
            location.to_owned()
        })
    }

    /// How many bytes the parent holds of the upload at `location` (`GET`, `Range: 0-END`);
    /// `None` when the parent no longer knows it or refuses it (expired, cancelled, restarted:
    /// a 4xx), so the caller starts a new upload instead of asking again forever.
    async fn upload_offset(
        &self,
        location: &str,
        scope: &Scope,
    ) -> Result<Option<u64>, ClientError> {
        let resp = match self
            .send_found(Method::GET, location, scope, &|rb| rb)
            .await
        {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(None),
            Err(ClientError::Status { status, .. }) if (400..500).contains(&status) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        // "0-END" covers END + 1 bytes; "0-0" is also what registries say for nothing yet, and
        // chunks are never a single byte, so it reads as nothing.
        let end = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix("0-"))
            .and_then(|v| v.parse::<u64>().ok());
        Ok(Some(match end {
            Some(0) | None => 0,
            Some(end) => end + 1,
        }))
    }

    /// Uploads a blob in chunks of `chunk` bytes (`PATCH` with `Content-Range`), so that an
    /// upload cut by a dropped link, a closed window or a restart continues from the bytes the
    /// parent already holds instead of starting over. `resume` is a location saved by an
    /// earlier attempt; `saved` is called with the current location after every chunk the
    /// parent acknowledged (persist it to resume after a restart).
    ///
    /// `until` (the end of the sync window) is honoured between chunks: a chunk in flight is
    /// finished, because a registry that received part of a chunk may drop the whole upload
    /// (CNCF distribution cancels an upload whose size no longer matches its last answer).
    pub async fn upload_blob_chunked(
        &self,
        upload: ChunkedUpload<'_>,
    ) -> Result<Uploaded, ClientError> {
        let ChunkedUpload {
            repo,
            digest,
            path,
            size,
            chunk,
            resume,
            saved,
            until,
        } = upload;
        let scope = Scope::Push(repo.into());
        // A location saved for another parent (the settings changed) is of no use here.
        let resume = resume.filter(|loc| loc.starts_with(&self.base));
        let resumed = match resume {
            Some(loc) => self
                .upload_offset(&loc, &scope)
                .await?
                .map(|off| (loc, off)),
            None => None,
        };
        let (mut location, mut offset) = match resumed {
            Some(found) => found,
            None => (self.start_upload(repo, &scope).await?, 0),
        };
        saved(&location);
        let mut failures = 0u32;
        while offset < size {
            if until.is_some_and(|t| Instant::now() >= t) {
                return Ok(Uploaded::Paused);
            }
            let len = chunk.min(size - offset);
            let bytes = read_range(path, offset, len)
                .await
                .map_err(|e| ClientError::Protocol {
                    url: location.clone(),
                    message: format!("internal: cannot read local blob {}: {e}", path.display()),
                })?;
            match self.patch_chunk(&location, &scope, offset, bytes).await {
                Ok(next) => {
                    location = next;
                    offset += len;
                    self.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
                    saved(&location);
                    failures = 0;
                }
                Err(err) => {
                    failures += 1;
                    if failures >= self.limits.retries {
                        return Err(err);
                    }
                    tracing::debug!(%err, "chunk failed: asking the parent what it holds");
                    tokio::time::sleep(self.backoff(failures)).await;
                    // The parent may have kept part of the chunk, or none of it: it says.
                    match self.upload_offset(&location, &scope).await? {
                        Some(held) => offset = held.min(size),
                        None => {
                            location = self.start_upload(repo, &scope).await?;
                            offset = 0;
                            saved(&location);
                        }
                    }
                }
            }
        }
        let put_url = with_digest(&location, digest);
        let resp = self
            .send(Method::PUT, &put_url, &scope, true, &|rb| {
                rb.header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &put_url, resp).await);
        }
        Ok(Uploaded::Done)
    }

    /// Sends one chunk; returns the location for the next. Fails when no byte moved for the
    /// progress timeout (a slow link only has to keep moving).
    async fn patch_chunk(
        &self,
        location: &str,
        scope: &Scope,
        offset: u64,
        bytes: Bytes,
    ) -> Result<String, ClientError> {
        let len = bytes.len() as u64;
        let moved = Arc::new(Mutex::new(Instant::now()));
        let progress = moved.clone();
        let slices: Vec<Bytes> = (0..bytes.len())
            .step_by(64 * 1024)
            .map(|at| bytes.slice(at..(at + 64 * 1024).min(bytes.len())))
            .collect();
        let body = futures_util::stream::iter(slices).map(move |slice| {
            if let Ok(mut t) = progress.lock() {
                *t = Instant::now();
            }
            Ok::<_, std::io::Error>(slice)
        });
        let rb = self
            .http
            .patch(location)
            .header(CONTENT_LENGTH, len)
            .header(
                reqwest::header::CONTENT_RANGE,
                format!("{offset}-{}", offset + len - 1),
            )
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(reqwest::Body::wrap_stream(body));
        let (rb, sent) = self.authorize(rb, scope);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let stall = self.limits.progress_timeout;
        let watchdog = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let last = moved.lock().map(|t| *t).unwrap_or_else(|_| Instant::now());
                if last.elapsed() >= stall {
                    return;
                }
            }
        };
        let resp = tokio::select! {
            r = rb.send() => r.map_err(|e| ClientError::Transport {
                url: location.to_owned(),
                message: error_chain(&e),
            })?,
            () = watchdog => {
                return Err(ClientError::Stalled { url: location.to_owned(), secs: stall.as_secs() });
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The token expired mid-upload: refresh it; the caller asks where to go on.
            self.refresh(location, resp.headers(), scope, &sent).await?;
            return Err(ClientError::Auth {
                url: location.to_owned(),
                message: "token refreshed during the upload".into(),
            });
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&Method::PATCH, location, resp).await);
        }
        self.location(location, &resp)
    }

    /// Puts a manifest by tag or digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let len = body.len() as u64;
        let resp = self
            .send(Method::PUT, &url, &Scope::Push(repo.into()), true, &|rb| {
                rb.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(&Method::PUT, &url, resp).await);
        }
        self.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// One page of the parent's change feed (`GET /acr/v1/_changes?after=&n=`), offered by a
    /// connected registry of ours. `None` when the parent has no feed (any other registry: it
    /// answers 404, 405, 401/403 for a scope it does not know, or something that is not the
    /// feed's JSON).
    pub async fn changes(&self, after: u64, n: usize) -> Result<Option<FeedPage>, ClientError> {
        let url = self.url(&format!("/acr/v1/_changes?after={after}&n={n}"));
        // The feed names every repository, like the catalog: the same token scope.
        let resp = match self
            .send(Method::GET, &url, &Scope::Catalog, true, &|rb| {
                rb.header(ACCEPT, "application/json")
            })
            .await
        {
            Ok(r) => r,
            Err(ClientError::Auth { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.feed_page(url, resp, after).await
    }

    /// Asks whether the parent has a change feed, and its newest sequence number: one anonymous
    /// request for the feed's bounds only (`n=0`), which names no repository. Anonymous on
    /// purpose: answering a parent's auth challenge would cost a token fetch at every parent
    /// that is not ours. `None`: no feed (404, 405, 401, 403, or not the feed's JSON).
    pub async fn feed_head(&self) -> Result<Option<u64>, ClientError> {
        let url = self.url("/acr/v1/_changes?after=0&n=0");
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .http
            .get(&url)
            .header(ACCEPT, "application/json")
            .timeout(self.limits.request_timeout)
            .send()
            .await
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                message: error_chain(&e),
            })?;
        Ok(self.feed_page(url, resp, 0).await?.map(|p| p.head))
    }

    /// Reads a feed answer; `None` when it is not the feed.
    async fn feed_page(
        &self,
        url: String,
        resp: Response,
        after: u64,
    ) -> Result<Option<FeedPage>, ClientError> {
        if matches!(resp.status().as_u16(), 401 | 403 | 404 | 405) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(&Method::GET, &url, resp).await);
        }
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Ok(None);
        }
        let raw: RawFeedPage = match self.json(&url, resp).await {
            Ok(r) => r,
            Err(ClientError::Protocol { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut changes = Vec::with_capacity(raw.changes.len());
        let mut last = after;
        for value in raw.changes {
            let change = FeedChange::from_json(value).ok_or_else(|| ClientError::Protocol {
                url: url.clone(),
                message: "a change without a sequence number or repository".into(),
            })?;
            if change.seq <= last {
                return Err(ClientError::Protocol {
                    url: url.clone(),
                    message: format!(
                        "change {} follows {last}: the feed must be in increasing order after {after}",
                        change.seq
                    ),
                });
            }
            last = change.seq;
            changes.push(change);
        }
        Ok(Some(FeedPage {
            head: raw.head,
            oldest: raw.oldest,
            reset: raw.reset,
            changes,
        }))
    }

    /// Whether the parent answers `/v2/` at all (a cheap reachability probe).
    pub async fn ping(&self) -> Result<(), ClientError> {
        let url = self.url("/v2/");
        let resp = self
            .send(Method::GET, &url, &Scope::Catalog, true, &|rb| rb)
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::UNAUTHORIZED {
            Ok(())
        } else {
            Err(status_error(&Method::GET, &url, resp).await)
        }
    }
}

async fn status_error(method: &Method, url: &str, resp: Response) -> ClientError {
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Parses `Scheme k="v",k2=v2` (values may hold commas inside quotes).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

/// Shared handle.
pub type Client = Arc<ParentClient>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge() {
        let (k, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(k, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (k, p) = parse_challenge(r#"Basic realm="x""#);
        assert_eq!(k, "Basic");
        assert_eq!(p["realm"], "x");
    }
}
