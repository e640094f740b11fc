//! Listings: tags, the catalog (both paginated with `n`/`last` and `Link`), and referrers.
//! Items with `listEnabled: false` are left out, and the catalog names only what the caller
//! may list, filtered while paging so a page still holds `n` names.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Req;
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::storage::Store;
use oci::digest::Digest;
use oci::media_type::OCI_INDEX;
use oci::name::RepoName;
use oci::ErrorCode;

/// `n` and `last` from the query; `n` absent means everything.
fn page(req: &Req) -> Result<(usize, String), ApiError> {
    let n = match req.query.get("n") {
        None => usize::MAX,
        Some(n) => n.parse::<usize>().map_err(|_| {
            ApiError::new(
                ErrorCode::Unsupported,
                format!("n={n:?} is not a number: use n=<count>"),
            )
            .with_status(StatusCode::BAD_REQUEST)
        })?,
    };
    Ok((n, req.query.get("last").cloned().unwrap_or_default()))
}

/// A JSON list answer with at most `n` of `items`, which were fetched one over `n` to know
/// whether a next page exists; when one does, a `Link` to it.
fn paged(
    mut items: Vec<String>,
    n: usize,
    path: &str,
    body: impl FnOnce(&[String]) -> serde_json::Value,
) -> Response {
    let more = items.len() > n;
    items.truncate(n);
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        body(&items).to_string(),
    )
        .into_response();
    if let Some(last) = items.last().filter(|_| more) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(value) = link.parse() {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

pub fn tags(store: &Store, repo: &RepoName, req: &Req) -> Result<Response, ApiError> {
    let (n, last) = page(req)?;
    let items = store
        .tags_page(repo, &last, n.saturating_add(1))?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NameUnknown,
                format!("repository {repo} is not known"),
            )
        })?;
    Ok(paged(
        items,
        n,
        &format!("/v2/{repo}/tags/list"),
        |tags| serde_json::json!({ "name": repo.as_str(), "tags": tags }),
    ))
}

pub fn catalog(store: &Store, req: &Req) -> Result<Response, ApiError> {
    let (n, last) = page(req)?;
    let caller = Caller::of(&req.extensions);
    let may_list = |repo: &str| caller.may_list(repo);
    let items = store.repos_visible(&last, n.saturating_add(1), &may_list, false)?;
    Ok(paged(
        items,
        n,
        "/v2/_catalog",
        |repos| serde_json::json!({ "repositories": repos }),
    ))
}

pub fn referrers(
    store: &Store,
    repo: &RepoName,
    subject: &Digest,
    req: &Req,
) -> Result<Response, ApiError> {
    let mut manifests = store.referrers(repo, subject)?;
    let filter = req.query.get("artifactType");
    if let Some(wanted) = filter {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(wanted.as_str()));
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut response = ([(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            "artifactType".parse().expect("static"),
        );
    }
    Ok(response)
}
