//! `/acr/v1/_changes`: the incremental change feed a child registry of ours reads, so a sync
//! with nothing new costs one request instead of one per tag.
//!
//! `GET /acr/v1/_changes?after=SEQ&n=N&v=VERSION` answers an `oci::FeedPage`,
//! `{"version": 1, "head": H, "oldest": O, "reset": false, "changes": [Change, ...]}`: at most `N` change-log
//! entries with `seq > SEQ`, oldest first. `head` is the newest sequence number, `oldest` the
//! oldest still kept (the log is pruned after `messageTtl`; `head + 1` when it is empty).
//! `reset: true` (with no changes) says the reader cannot continue from `SEQ`: entries after
//! it were pruned (`SEQ < oldest - 1`), or this log never reached `SEQ` (`SEQ > head`: the
//! registry was set up again). The reader then compares everything once and continues from `head`.
//!
//! `wait=SECONDS` (at most 25) makes it a long poll: when nothing after `SEQ` is there for the
//! caller, the answer waits until something is or the time is up, so a child learns of a
//! change at once instead of at its next poll, and a change crosses each layer in milliseconds.
//!
//! `v` is the feed version the child reads (absent: 1). The page comes in that version when
//! this registry knows it, else in its newest (`oci::feed::answer_version`); a child that
//! cannot read the answer compares tag by tag. The stored change log becomes the wire's
//! `oci::Change` in `storage::meta`, never here: this handler only pages and frames it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use oci::feed::{answer_version, FeedPage};

use axum::http::Extensions;

use super::number;
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::AppState;
use oci::ErrorCode;

/// Changes per page when the request gives no `n`, and the most a page holds whatever `n`
/// says: bounds the memory and time one request takes (a page of 1000 is about 200 KB).
pub const MAX_CHANGES_PER_PAGE: usize = 1000;

pub(super) async fn changes(
    State(state): State<AppState>,
    extensions: Extensions,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let caller = Caller::of(&extensions);
    match feed(&state, &caller, &query).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(error = %err, "change feed request refused");
            err.into_response()
        }
    }
}

async fn feed(
    state: &AppState,
    caller: &Caller,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    // The access layer let in a caller with `message/read` (or anyone for the bounds-only
    // probe `n=0`, which names nothing); `caller` says which repositories it may read, and the
    // page names no other (a child never learns a repository outside its scope).
    let after = number(query, "after", "sequence number, 0 for the start")?.unwrap_or(0);
    let asked = number(query, "v", "feed version")?.map(|v| v.min(u32::MAX as u64) as u32);
    let n = number(query, "n", &format!("count, 0 to {MAX_CHANGES_PER_PAGE}"))?
        .map(|n| n.min(MAX_CHANGES_PER_PAGE as u64) as usize)
        .unwrap_or(MAX_CHANGES_PER_PAGE);
    let wait = number(query, "wait", "seconds to wait for a change, 0 to 25")?
        .map(|w| Duration::from_secs(w.min(MAX_FEED_WAIT.as_secs())))
        .filter(|w| !w.is_zero() && n > 0);
    // A long poll subscribes before the first read: a change between the read and the wait
    // wakes it. A plain read subscribes to nothing.
    let mut long_poll =
        wait.map(|w| (state.store.watch_changes(), tokio::time::Instant::now() + w));
    let mut page = read_page(state, caller, after, n).await?;
    // Nothing the caller may see yet: wait for a change (one it may not see wakes it too, and
    // it reads again) until the deadline.
    let nothing_yet = |p: &crate::storage::ChangePage| {
        p.changes.is_empty() && after <= p.head && after.saturating_add(1) >= p.oldest
    };
    while let Some((changed, deadline)) = long_poll
        .as_mut()
        .filter(|_| nothing_yet(&page) && !state.store.is_stopping())
    {
        match tokio::time::timeout_at(*deadline, changed.changed()).await {
            Ok(Ok(())) => page = read_page(state, caller, after, n).await?,
            _ => break,
        }
    }
    let reset = after.saturating_add(1) < page.oldest || after > page.head;
    let changes = if reset { Vec::new() } else { page.changes };
    let body = FeedPage {
        version: answer_version(asked),
        head: page.head,
        oldest: page.oldest,
        reset,
        changes,
    };
    Ok(axum::Json(body).into_response())
}

/// The longest a feed request waits for a change (`wait=SECONDS`): under the timeouts of the
/// proxies between a child and its parent, so the answer, empty or not, gets through.
pub const MAX_FEED_WAIT: Duration = Duration::from_secs(25);

/// [`visible_page`] off the async threads.
async fn read_page(
    state: &AppState,
    caller: &Caller,
    after: u64,
    n: usize,
) -> Result<crate::storage::ChangePage, ApiError> {
    let store = state.store.clone();
    let caller = caller.clone();
    Ok(
        tokio::task::spawn_blocking(move || visible_page(&store, &caller, after, n))
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Unknown,
                    format!("internal: change feed task failed: {e}"),
                )
            })??,
    )
}

/// Change-log entries read per request at most while looking for ones the caller may see:
/// bounds the work a page of entries outside the caller's scope costs.
pub const MAX_SCANNED_PER_PAGE: usize = 20 * MAX_CHANGES_PER_PAGE;

/// Up to `n` changes after `after` that `caller` may see, reading on past the ones it may
/// not until `n` are found, the log's head is reached, or [`MAX_SCANNED_PER_PAGE`] entries
/// were read.
fn visible_page(
    store: &crate::storage::Store,
    caller: &Caller,
    after: u64,
    n: usize,
) -> Result<crate::storage::ChangePage, crate::storage::StorageError> {
    let mut page = store.change_page(after, n)?;
    if n == 0 || caller.may_list_all() {
        return Ok(page);
    }
    let mut scanned = page.changes.len();
    let mut last = page.changes.last().map(|c| c.seq);
    page.changes.retain(|c| caller.may_list(&c.repo));
    while page.changes.len() < n && scanned < MAX_SCANNED_PER_PAGE {
        let Some(from) = last.filter(|&seq| seq < page.head) else {
            break;
        };
        let next = store.change_page(from, n)?;
        if next.changes.is_empty() {
            break;
        }
        scanned += next.changes.len();
        last = next.changes.last().map(|c| c.seq);
        page.changes.extend(
            next.changes
                .into_iter()
                .filter(|c| caller.may_list(&c.repo)),
        );
    }
    page.changes.truncate(n);
    Ok(page)
}
