//! `GET|PATCH|DELETE /acr/v1/{repo}`: a repository's properties (ACR's `RepositoryProperties`:
//! `registry`, `imageName`, `createdTime`, `lastUpdateTime`, `manifestCount`, `tagCount`,
//! `changeableAttributes`), setting its attributes (they apply to everything in it), and
//! deleting it with everything in it (refused while it or anything in it is locked).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{attributes_json, json, not_found_repo, rfc3339, AcrReq};
use crate::api::error::ApiError;
use crate::storage::{Store, Target};
use oci::{Origin, RepoName};

pub(super) fn handle(store: &Store, repo: &RepoName, req: &AcrReq) -> Result<Response, ApiError> {
    match (&req.method, &req.patch) {
        (&Method::PATCH, Some(patch)) => {
            store
                .set_attributes(repo, &Target::Repository, patch, Origin::Client)?
                .ok_or_else(|| not_found_repo(repo))?;
            properties(store, repo, req)
        }
        (&Method::DELETE, _) => delete(store, repo),
        _ => properties(store, repo, req),
    }
}

fn properties(store: &Store, repo: &RepoName, req: &AcrReq) -> Result<Response, ApiError> {
    let props = store
        .repository(repo)?
        .ok_or_else(|| not_found_repo(repo))?;
    Ok(json(
        serde_json::json!({
            "registry": req.registry,
            "imageName": repo.as_str(),
            "createdTime": rfc3339(props.created),
            "lastUpdateTime": rfc3339(props.updated),
            "manifestCount": props.manifest_count,
            "tagCount": props.tag_count,
            "changeableAttributes": attributes_json(&props.attributes),
        }),
        None,
    ))
}

/// ACR answers 202 with what went: `{"manifestsDeleted": [...], "tagsDeleted": [...]}`.
fn delete(store: &Store, repo: &RepoName) -> Result<Response, ApiError> {
    let tags = store.tag_props(repo)?.ok_or_else(|| not_found_repo(repo))?;
    let manifests = store.manifest_props(repo)?.unwrap_or_default();
    if !store.delete_repository(repo, Origin::Client)? {
        return Err(not_found_repo(repo));
    }
    let body = serde_json::json!({
        "manifestsDeleted": manifests.iter().map(|m| m.digest.to_string()).collect::<Vec<_>>(),
        "tagsDeleted": tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
    });
    let mut response = json(body, None);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response.into_response())
}
