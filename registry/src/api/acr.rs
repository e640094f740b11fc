//! `/acr/v1/_changes`: the incremental change feed a child registry of ours reads, so a sync
//! with nothing new costs one request instead of one per tag.
//!
//! `GET /acr/v1/_changes?after=SEQ&n=N` answers
//! `{"head": H, "oldest": O, "reset": false, "changes": [Change, ...]}`: at most `N` change-log
//! entries with `seq > SEQ`, oldest first. `head` is the newest sequence number, `oldest` the
//! oldest still kept (the log is pruned after `messageTtl`; `head + 1` when it is empty).
//! `reset: true` (with no changes) says the reader cannot continue from `SEQ`: entries after
//! it were pruned (`SEQ < oldest - 1`), or this log never reached `SEQ` (`SEQ > head`: the
//! registry was set up again). The reader then compares everything once and continues from `head`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::error::{ApiError, ErrorCode};

/// Changes per page when the request gives no `n`, and the most a page holds whatever `n`
/// says: bounds the memory and time one request takes (a page of 1000 is about 200 KB).
pub const MAX_CHANGES_PER_PAGE: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/acr/v1/_changes", get(changes))
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
}

/// Parses a query number, naming the parameter and the valid form when it is not one.
fn number(
    query: &HashMap<String, String>,
    name: &str,
    valid: &str,
) -> Result<Option<u64>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            bad_query(format!(
                "{name}={v:?} is not a number: use {name}=<{valid}>"
            ))
        }),
    }
}

async fn changes(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match feed(&state, &query).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(error = %err, "change feed request refused");
            err.into_response()
        }
    }
}

async fn feed(state: &AppState, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    // TODO(auth): the feed names every repository and tag, like the catalog: require the
    // `registry:catalog:*` scope (the sync token's) once tokens exist, except for the
    // bounds-only probe (`n=0`), which names nothing and which children send anonymously to
    // find out whether their parent has a feed (see `sync::ParentClient::feed_head`).
    let after = number(query, "after", "sequence number, 0 for the start")?.unwrap_or(0);
    let n = number(query, "n", &format!("count, 0 to {MAX_CHANGES_PER_PAGE}"))?
        .map(|n| n.min(MAX_CHANGES_PER_PAGE as u64) as usize)
        .unwrap_or(MAX_CHANGES_PER_PAGE);
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || store.change_page(after, n))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Unknown,
                format!("internal: change feed task failed: {e}"),
            )
        })??;
    let reset = after.saturating_add(1) < page.oldest || after > page.head;
    let changes = if reset { Vec::new() } else { page.changes };
    let body = serde_json::json!({
        "head": page.head,
        "oldest": page.oldest,
        "reset": reset,
        "changes": changes,
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}
