//! Reading from the parent: catalog and tag lists (paged), manifests by tag or digest
//! (verified against the digest asked for), blobs as streams from an offset (`Range`, with a
//! progress timeout), referrers.

use super::*;

/// A streaming blob response. `skip` bytes at its start must be dropped (the parent ignored
/// the `Range` header and sent the blob from byte 0).
pub struct BlobStream {
    pub response: Response,
    pub skip: u64,
    pub url: String,
    /// The whole blob's size, when the parent said (`Content-Length` of a 200, the total of a
    /// 206's `Content-Range`).
    pub size: Option<u64>,
    /// Under a bandwidth cap: the rest of the blob, asked for one slice at a time.
    paced: Option<Slices>,
}

/// A blob read in slices of `Range` requests, each asked for only when the last was read:
/// under a bandwidth cap the pacing is done by reading slowly, and a whole blob asked for at
/// once would fill the socket buffers on the way (megabytes on a fast hop) at full speed, so
/// the link would carry a burst before the cap took hold. A slice is a quarter second at the
/// cap, so any interval of seconds carries the cap's bytes.
struct Slices {
    repo: String,
    digest: Digest,
    /// The first byte not yet asked for.
    next: u64,
    size: u64,
    slice: u64,
}

/// The bytes of one `Range` request under a cap: a quarter second's worth, within bounds.
fn slice_at(rate: u64) -> u64 {
    (rate / 4).clamp(64 << 10, 16 << 20)
}

/// `bytes START-END/SIZE` of a 206.
fn content_range(resp: &Response) -> Option<(u64, u64, Option<u64>)> {
    let value = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (range, size) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, size.parse().ok()))
}

impl ParentClient {
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

    pub(super) fn next_link(&self, headers: &HeaderMap) -> Option<String> {
        let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
        let target = link.split(';').next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        Some(if target.starts_with('/') {
            self.url(target)
        } else {
            target.to_owned()
        })
    }

    /// A HEAD or GET of a manifest accepting every manifest type; `None` when unknown.
    pub(super) async fn manifest_request(
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
        if !digest.matches(&body) {
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

    /// Starts a blob download at byte `offset` (a `Range` request when `offset > 0`, or when a
    /// bandwidth cap is in force: then in slices, see `Slices`).
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, ClientError> {
        let slice = self.throttle.rate_now().map(slice_at);
        let end = slice.map(|s| offset + s - 1);
        let (response, url, status) = self.request_range(repo, digest, offset, end).await?;
        if status == 200 {
            let size = response.content_length();
            return Ok(BlobStream {
                response,
                skip: offset,
                url,
                size,
                paced: None,
            });
        }
        let (_, last, size) = content_range(&response).unwrap_or((offset, 0, None));
        let paced = match (slice, size) {
            (Some(slice), Some(size)) if last + 1 < size => Some(Slices {
                repo: repo.to_owned(),
                digest: digest.clone(),
                next: last + 1,
                size,
                slice,
            }),
            _ => None,
        };
        Ok(BlobStream {
            response,
            skip: 0,
            url,
            size,
            paced,
        })
    }

    /// `GET` of a blob from `offset` (to `end`, inclusive, if given): the response and its
    /// status, 200 (the whole blob: the parent ignored the range, or none was asked) or 206
    /// starting at `offset`.
    async fn request_range(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
    ) -> Result<(Response, String, u16), ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let range = match end {
            Some(end) => format!("bytes={offset}-{end}"),
            None => format!("bytes={offset}-"),
        };
        let resp = self
            .send(Method::GET, &url, &Scope::Pull(repo.into()), false, &|rb| {
                if offset > 0 || end.is_some() {
                    rb.header(reqwest::header::RANGE, range.as_str())
                } else {
                    rb
                }
            })
            .await?;
        match resp.status().as_u16() {
            200 => Ok((resp, url, 200)),
            206 => {
                let start = content_range(&resp).map(|(start, _, _)| start);
                if start != Some(offset) {
                    return Err(ClientError::Protocol {
                        url,
                        message: format!("asked for bytes from {offset}, got Content-Range starting at {start:?}"),
                    });
                }
                Ok((resp, url, 206))
            }
            _ => Err(status_error(&Method::GET, &url, resp).await),
        }
    }

    /// Reads the next chunk of a blob stream, failing when nothing arrives within the
    /// progress timeout.
    pub async fn next_chunk(&self, blob: &mut BlobStream) -> Result<Option<Bytes>, ClientError> {
        loop {
            let chunk = self.next_chunk_of_response(blob).await?;
            if chunk.is_some() {
                return Ok(chunk);
            }
            // The slice is read: ask for the next one, if any.
            let Some(slices) = blob.paced.as_mut().filter(|s| s.next < s.size) else {
                return Ok(None);
            };
            let (from, end) = (
                slices.next,
                (slices.next + slices.slice).min(slices.size) - 1,
            );
            let (repo, digest) = (slices.repo.clone(), slices.digest.clone());
            let (response, _, status) = self.request_range(&repo, &digest, from, Some(end)).await?;
            if status != 206 {
                return Err(ClientError::Protocol {
                    url: blob.url.clone(),
                    message: format!(
                        "asked for bytes {from}-{end}, got the whole blob (status {status})"
                    ),
                });
            }
            slices.next = end + 1;
            blob.response = response;
        }
    }

    async fn next_chunk_of_response(
        &self,
        blob: &mut BlobStream,
    ) -> Result<Option<Bytes>, ClientError> {
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
                    self.throttle.pass(c.len()).await;
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
                rb.header(ACCEPT, oci::media_type::OCI_INDEX)
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
            .is_some_and(|v| v.starts_with(oci::media_type::OCI_INDEX));
        if !is_index {
            return Ok(Vec::new());
        }
        let index: oci::manifest::Index = self.json(&url, resp).await?;
        Ok(index.manifests.into_iter().map(|d| d.digest).collect())
    }
}
