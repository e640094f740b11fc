//! A parent of ours' `/acr` API as a full comparison reads it: a repository's tags
//! (`GET /acr/v1/{repo}/_tags`) and manifests (`GET /acr/v1/{repo}/_manifests`) with their
//! `changeableAttributes`, the repository's own attributes (`GET /acr/v1/{repo}`), and the
//! catalog (`GET /acr/v1/_catalog`). Listings cost one request per page (never one per item).
//! `include=unlisted` asks for the items with `listEnabled: false` too, which the parent grants
//! a sync token (the gateway action `message/read`), so a child keeps mirroring a tag, a
//! manifest or a whole repository its parent hides from `/v2` listings. A parent without `/acr`
//! (any other registry) answers [`AcrAnswer::NoAcr`], and the caller uses `/v2` instead.

use oci::ChangeableAttributes;
use serde::de::DeserializeOwned;

use super::*;

/// One tag as the parent lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentTag {
    pub name: String,
    pub digest: Digest,
    pub attributes: ChangeableAttributes,
}

/// One manifest as the parent lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentManifest {
    pub digest: Digest,
    pub attributes: ChangeableAttributes,
}

/// What a parent answered when asked something through `/acr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcrAnswer<T> {
    /// The parent has no `/acr` API (a registry that is not ours, or one refusing this token
    /// the read): use `/v2`, and carry no attributes down.
    NoAcr,
    /// The parent does not know the repository.
    UnknownRepo,
    /// The answer; for a listing every item, unlisted ones included when the parent granted it.
    Found(T),
}

/// A repository's tags with their attributes.
pub type TagListing = AcrAnswer<Vec<ParentTag>>;

/// Items asked for per listing page (our parents cap pages at 1000).
pub const ACR_PAGE: usize = 1000;

impl ParentClient {
    /// Every tag of `repo` with its attributes, page by page.
    pub async fn acr_tags(&self, repo: &str) -> Result<TagListing, ClientError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Tag {
            name: String,
            digest: Digest,
            changeable_attributes: ChangeableAttributes,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Vec<Tag>,
        }
        let first = format!("/acr/v1/{repo}/_tags?n={ACR_PAGE}&include=unlisted");
        let scope = Scope::Attributes(repo.into());
        self.acr_pages(&first, &scope, |page: Page| {
            page.tags.into_iter().map(|t| ParentTag {
                name: t.name,
                digest: t.digest,
                attributes: t.changeable_attributes,
            })
        })
        .await
    }

    /// Every manifest of `repo` with its attributes, page by page.
    pub async fn acr_manifests(
        &self,
        repo: &str,
    ) -> Result<AcrAnswer<Vec<ParentManifest>>, ClientError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Manifest {
            digest: Digest,
            changeable_attributes: ChangeableAttributes,
        }
        #[derive(serde::Deserialize)]
        struct Page {
            manifests: Vec<Manifest>,
        }
        let first = format!("/acr/v1/{repo}/_manifests?n={ACR_PAGE}&include=unlisted");
        let scope = Scope::Attributes(repo.into());
        self.acr_pages(&first, &scope, |page: Page| {
            page.manifests.into_iter().map(|m| ParentManifest {
                digest: m.digest,
                attributes: m.changeable_attributes,
            })
        })
        .await
    }

    /// The repository's own attributes (one request).
    pub async fn acr_repository(
        &self,
        repo: &str,
    ) -> Result<AcrAnswer<ChangeableAttributes>, ClientError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Properties {
            changeable_attributes: ChangeableAttributes,
        }
        let url = self.url(&format!("/acr/v1/{repo}"));
        let answer = self
            .acr_get::<Properties>(&url, &Scope::Attributes(repo.into()))
            .await?;
        Ok(match answer {
            AcrAnswer::Found((p, _)) => AcrAnswer::Found(p.changeable_attributes),
            AcrAnswer::UnknownRepo => AcrAnswer::UnknownRepo,
            AcrAnswer::NoAcr => AcrAnswer::NoAcr,
        })
    }

    /// Every repository in the catalog, those hidden from `/v2/_catalog` included when the
    /// parent grants it, page by page.
    pub async fn acr_catalog(&self) -> Result<AcrAnswer<Vec<String>>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let first = format!("/acr/v1/_catalog?n={ACR_PAGE}&include=unlisted");
        self.acr_pages(&first, &Scope::Catalog, |page: Page| page.repositories)
            .await
    }

    /// Walks an `/acr` listing from `first` (a path) through its `Link` headers, turning each
    /// page into items with `items`.
    async fn acr_pages<P, I>(
        &self,
        first: &str,
        scope: &Scope,
        items: impl Fn(P) -> I,
    ) -> Result<AcrAnswer<Vec<I::Item>>, ClientError>
    where
        P: DeserializeOwned,
        I: IntoIterator,
    {
        let mut out = Vec::new();
        let mut next = Some(self.url(first));
        while let Some(url) = next.take() {
            match self.acr_get::<P>(&url, scope).await? {
                AcrAnswer::Found((page, link)) => {
                    out.extend(items(page));
                    next = link;
                }
                AcrAnswer::UnknownRepo => return Ok(AcrAnswer::UnknownRepo),
                AcrAnswer::NoAcr => return Ok(AcrAnswer::NoAcr),
            }
        }
        Ok(AcrAnswer::Found(out))
    }

    /// One `/acr` GET: its JSON body and the next page's URL, or what its status says about
    /// the parent (no `/acr` here, or no such repository).
    async fn acr_get<T: DeserializeOwned>(
        &self,
        url: &str,
        scope: &Scope,
    ) -> Result<AcrAnswer<(T, Option<String>)>, ClientError> {
        let resp = match self
            .send(Method::GET, url, scope, true, &|rb| {
                rb.header(ACCEPT, "application/json")
            })
            .await
        {
            Ok(r) => r,
            // A parent that does not let this token read attributes: as without `/acr`.
            Err(ClientError::Auth { .. }) => return Ok(AcrAnswer::NoAcr),
            Err(e) => return Err(e),
        };
        let status = resp.status().as_u16();
        if matches!(status, 401 | 403 | 404 | 405) {
            let body = resp.text().await.unwrap_or_default();
            // Ours says which repository it does not know; anything else has no `/acr`.
            return Ok(if status == 404 && body.contains("NAME_UNKNOWN") {
                AcrAnswer::UnknownRepo
            } else {
                AcrAnswer::NoAcr
            });
        }
        if !resp.status().is_success() {
            return Err(status_error(&Method::GET, url, resp).await);
        }
        if !answers_json(&resp) {
            return Ok(AcrAnswer::NoAcr);
        }
        let next = self.next_link(resp.headers());
        let body: T = self.json(url, resp).await?;
        Ok(AcrAnswer::Found((body, next)))
    }
}
