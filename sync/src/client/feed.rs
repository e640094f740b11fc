//! The change feed of a parent of ours (`/acr/v1/_changes`): one page after a sequence, the
//! anonymous probe for its head, read leniently so a kind this version does not know is `Other`.

use super::*;

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
pub(super) struct RawFeedPage {
    head: u64,
    #[serde(default)]
    oldest: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    changes: Vec<serde_json::Value>,
}

impl ParentClient {
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
    pub(super) async fn feed_page(
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
}
