//! A parent of ours' tag listing with attributes (`GET /acr/v1/{repo}/_tags`): what a full
//! comparison takes its tag set and the parent's `changeableAttributes` from, one request per
//! page (never one per tag). `include=unlisted` asks for the tags with `listEnabled: false` too,
//! which the parent grants a sync token (the gateway action `message/read`), so a child keeps
//! mirroring a tag its parent hides from `/v2` listings. A parent without `/acr` (any other
//! registry) answers [`TagListing::NoAcr`], and the caller lists tags through `/v2` instead.

use oci::ChangeableAttributes;

use super::*;

/// One tag as the parent lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentTag {
    pub name: String,
    pub digest: Digest,
    pub attributes: ChangeableAttributes,
}

/// What a parent answered when asked for a repository's tags with their attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagListing {
    /// The parent has no `/acr` API (a registry that is not ours, or one refusing this token
    /// the listing): list tags through `/v2`, and carry no attributes down.
    NoAcr,
    /// The parent does not know the repository.
    UnknownRepo,
    /// Every tag, unlisted ones included when the parent granted it.
    Tags(Vec<ParentTag>),
}

/// Tags asked for per listing page (our parents cap pages at 1000).
pub const ACR_TAGS_PAGE: usize = 1000;

impl ParentClient {
    /// Every tag of `repo` with its attributes, page by page.
    pub async fn acr_tags(&self, repo: &str) -> Result<TagListing, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(self.url(&format!(
            "/acr/v1/{repo}/_tags?n={ACR_TAGS_PAGE}&include=unlisted"
        )));
        let scope = Scope::Attributes(repo.into());
        while let Some(url) = next.take() {
            let resp = match self
                .send(Method::GET, &url, &scope, true, &|rb| {
                    rb.header(ACCEPT, "application/json")
                })
                .await
            {
                Ok(r) => r,
                // A parent that does not let this token read attributes: as without `/acr`.
                Err(ClientError::Auth { .. }) => return Ok(TagListing::NoAcr),
                Err(e) => return Err(e),
            };
            let status = resp.status().as_u16();
            if matches!(status, 401 | 403 | 404 | 405) {
                let body = resp.text().await.unwrap_or_default();
                // Ours says which repository it does not know; anything else has no `/acr`.
                return Ok(if status == 404 && body.contains("NAME_UNKNOWN") {
                    TagListing::UnknownRepo
                } else {
                    TagListing::NoAcr
                });
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
                return Ok(TagListing::NoAcr);
            }
            next = self.next_link(resp.headers());
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
            let page: Page = self.json(&url, resp).await?;
            out.extend(page.tags.into_iter().map(|t| ParentTag {
                name: t.name,
                digest: t.digest,
                attributes: t.changeable_attributes,
            }));
        }
        Ok(TagListing::Tags(out))
    }
}
