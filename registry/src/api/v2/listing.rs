//! Listings: tags, the catalog (both paginated with `n`/`last` and `Link`), and referrers.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Req;
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::manifest::OCI_INDEX;
use crate::name::RepoName;
use crate::storage::Store;

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

/// A JSON list answer; when more items follow, a `Link` to the next page.
fn paged(items: Vec<String>, n: usize, path: &str, body: serde_json::Value) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if n != usize::MAX && n > 0 && items.len() == n {
        let last = items.last().expect("n > 0 items");
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(value) = link.parse() {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

/// Fetches one item more than asked, to know whether a next page exists.
fn trim(mut items: Vec<String>, n: usize) -> (Vec<String>, bool) {
    let more = items.len() > n;
    items.truncate(n);
    (items, more)
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
    let (items, more) = trim(items, n);
    let body = serde_json::json!({ "name": repo.as_str(), "tags": items });
    Ok(paged(
        if more { items } else { Vec::new() },
        n,
        &format!("/v2/{repo}/tags/list"),
        body,
    ))
}

pub fn catalog(store: &Store, req: &Req) -> Result<Response, ApiError> {
    let (n, last) = page(req)?;
    let (items, more) = trim(store.repos_page(&last, n.saturating_add(1))?, n);
    let body = serde_json::json!({ "repositories": items });
    Ok(paged(
        if more { items } else { Vec::new() },
        n,
        "/v2/_catalog",
        body,
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
