//! `GET /acr/v1/_catalog?n&last&include`: the repositories the caller may list, in name order,
//! without those with `listEnabled: false` (unless `include=unlisted` is honoured, see the
//! module above: a child's sync expands its wildcard rules from it), filtered while paging so a
//! page holds `n` names when there are that many and `Link` points after the last one shown.

use axum::response::Response;

use super::{json, AcrReq, Page};
use crate::api::error::ApiError;
use crate::storage::Store;

pub(super) fn get(store: &Store, req: &AcrReq) -> Result<Response, ApiError> {
    let page = Page::of_request(req)?;
    let last = page.last.clone().unwrap_or_default();
    let may_list = |repo: &str| req.caller.may_list(repo);
    let limit = page.n.saturating_add(1);
    let mut repos = store.repos_visible(&last, limit, &may_list, page.unlisted)?;
    let more = repos.len() > page.n;
    repos.truncate(page.n);
    let link = repos
        .last()
        .filter(|_| more)
        .map(|last| page.link("/acr/v1/_catalog", last));
    Ok(json(serde_json::json!({ "repositories": repos }), link))
}
