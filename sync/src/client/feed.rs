//! The change feed of a parent of ours (`/acr/v1/_changes`): one page after a sequence, and
//! the anonymous probe for its head. Pages are `oci::FeedPage`s; the request names the feed
//! version this build reads (`v=`), and a page in a newer version is not an error but
//! [`FeedAnswer::Newer`], so the caller compares tag by tag instead.

use oci::feed::{FeedError, FeedPage, FEED_VERSION};

use super::*;

/// What a parent answered when asked for its change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedAnswer {
    /// A page in a version this build reads, its changes in increasing order.
    Page(FeedPage),
    /// The parent has no feed (any other registry: 404, 405, 401/403 for a scope it does not
    /// know, or an answer that is not a feed page).
    Absent,
    /// The parent answered in a feed version newer than this build reads.
    Newer { version: u32 },
}

impl ParentClient {
    /// One page of the parent's change feed (`GET /acr/v1/_changes?after=&n=&v=`), offered by
    /// a connected registry of ours.
    pub async fn changes(&self, after: u64, n: usize) -> Result<FeedAnswer, ClientError> {
        let url = self.url(&format!(
            "/acr/v1/_changes?after={after}&n={n}&v={FEED_VERSION}"
        ));
        // The feed names every repository, like the catalog: the same token scope.
        let resp = match self
            .send(Method::GET, &url, &Scope::Catalog, true, &|rb| {
                rb.header(ACCEPT, "application/json")
            })
            .await
        {
            Ok(r) => r,
            Err(ClientError::Auth { .. }) => return Ok(FeedAnswer::Absent),
            Err(e) => return Err(e),
        };
        self.feed_page(url, resp, after).await
    }

    /// Waits (a long poll, at most `wait`) until the parent's feed has a change after `after`
    /// that this client may see: whether one came. A parent that does not wait answers at
    /// once, which callers take as a no.
    pub async fn wait_for_changes(&self, after: u64, wait: Duration) -> Result<bool, ClientError> {
        let secs = wait.as_secs().max(1);
        let url = self.url(&format!(
            "/acr/v1/_changes?after={after}&n=1&v={FEED_VERSION}&wait={secs}"
        ));
        let resp = match self
            .send(Method::GET, &url, &Scope::Catalog, false, &|rb| {
                rb.header(ACCEPT, "application/json")
                    .timeout(wait + self.limits.request_timeout)
            })
            .await
        {
            Ok(r) => r,
            Err(ClientError::Auth { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(match self.feed_page(url, resp, after).await? {
            FeedAnswer::Page(page) => !page.changes.is_empty() || page.reset,
            FeedAnswer::Absent | FeedAnswer::Newer { .. } => false,
        })
    }

    /// Asks whether the parent has a change feed, and its head: one anonymous request for the
    /// feed's bounds only (`n=0`), which names no repository. Anonymous on purpose: answering a
    /// parent's auth challenge would cost a token fetch at every parent that is not ours.
    pub async fn feed_head(&self) -> Result<FeedAnswer, ClientError> {
        let url = self.url(&format!("/acr/v1/_changes?after=0&n=0&v={FEED_VERSION}"));
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
        self.feed_page(url, resp, 0).await
    }

    /// Reads a feed answer to a request for the changes after `after`.
    async fn feed_page(
        &self,
        url: String,
        resp: Response,
        after: u64,
    ) -> Result<FeedAnswer, ClientError> {
        if matches!(resp.status().as_u16(), 401 | 403 | 404 | 405) {
            return Ok(FeedAnswer::Absent);
        }
        if !resp.status().is_success() {
            return Err(status_error(&Method::GET, &url, resp).await);
        }
        if !answers_json(&resp) {
            return Ok(FeedAnswer::Absent);
        }
        let bytes = self.read_small(&url, resp).await?;
        let page = match FeedPage::from_json(&bytes) {
            Ok(page) => page,
            Err(FeedError::Newer { version }) => return Ok(FeedAnswer::Newer { version }),
            Err(FeedError::NotAFeed(_)) => return Ok(FeedAnswer::Absent),
            Err(e @ FeedError::Malformed(_)) => {
                return Err(ClientError::Protocol {
                    url,
                    message: e.to_string(),
                })
            }
        };
        let mut last = after;
        for change in &page.changes {
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
        }
        Ok(FeedAnswer::Page(page))
    }
}
