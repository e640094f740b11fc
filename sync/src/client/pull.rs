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
