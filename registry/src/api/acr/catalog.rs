//! `GET /acr/v1/_catalog?n&last`: the repositories the caller may list, in name order, without
//! those with `listEnabled: false`, filtered while paging so a page holds `n` names when there
//! are that many and `Link` points after the last one shown.

use axum::response::Response;

use super::{json, AcrReq, Page};
use crate::api::error::ApiError;
use crate::storage::Store;

pub(super) fn get(store: &Store, req: &AcrReq) -> Result<Response, ApiError> {
    let page = Page::of(&req.query)?;
    let last = page.last.clone().unwrap_or_default();
    let may_list = |repo: &str| req.caller.may_list(repo);
    let mut repos = store.repos_visible(&last, page.n.saturating_add(1), &may_list)?;
    let more = repos.len() > page.n;
    repos.truncate(page.n);
    let link = repos
        .last()
        .filter(|_| more)
        .map(|last| format!("</acr/v1/_catalog?last={last}&n={}>; rel=\"next\"", page.n));
    Ok(json(serde_json::json!({ "repositories": repos }), link))
}
