//! `GET /acr/v1/{repo}/_tags?n&last&orderby&digest` and `GET|PATCH|DELETE
//! /acr/v1/{repo}/_tags/{tag}`: tags as ACR's `TagAttributesBase` (`name`, `digest`,
//! `createdTime`, `lastUpdateTime`, `signed`, `changeableAttributes`). The list leaves out tags
//! with `listEnabled: false` (unless `include=unlisted` is honoured, see the module above); one
//! tag answers by name whatever its switches.

use axum::http::Method;
use axum::response::Response;
use serde_json::Value;

use super::{accepted, attributes_json, json, not_found_repo, rfc3339, AcrReq, Page};
use crate::api::error::ApiError;
use crate::storage::{Store, TagProps, Target};
use oci::{ErrorCode, Origin, RepoName};

fn tag_json(t: &TagProps) -> Value {
    serde_json::json!({
        "name": t.name,
        "digest": t.digest.to_string(),
        "createdTime": rfc3339(t.created),
        "lastUpdateTime": rfc3339(t.updated),
        "signed": false,
        "changeableAttributes": attributes_json(&t.attributes),
    })
}

pub(super) fn list(store: &Store, repo: &RepoName, req: &AcrReq) -> Result<Response, ApiError> {
    let page = Page::of_request(req)?;
    let digest = req.query.get("digest").filter(|d| !d.is_empty());
    let tags: Vec<TagProps> = store
        .tag_props(repo)?
        .ok_or_else(|| not_found_repo(repo))?
        .into_iter()
        .filter(|t| {
            (t.listed || page.unlisted) && digest.is_none_or(|d| t.digest.to_string() == *d)
        })
        .collect();
    let (tags, more) = page.cut(tags, |t| t.name.as_str(), |t| t.updated);
    let link = tags
        .last()
        .filter(|_| more)
        .map(|t| page.link(&format!("/acr/v1/{repo}/_tags"), &t.name));
    let body = serde_json::json!({
        "registry": req.registry,
        "imageName": repo.as_str(),
        "tags": tags.iter().map(tag_json).collect::<Vec<_>>(),
    });
    Ok(json(body, link))
}

fn unknown(repo: &RepoName, tag: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("tag {tag:?} is not in repository {repo}"),
    )
}

fn one(store: &Store, repo: &RepoName, tag: &str) -> Result<TagProps, ApiError> {
    let tags = store.tag_props(repo)?.ok_or_else(|| not_found_repo(repo))?;
    tags.into_iter()
        .find(|t| t.name == tag)
        .ok_or_else(|| unknown(repo, tag))
}

pub(super) fn handle(
    store: &Store,
    repo: &RepoName,
    tag: &str,
    req: &AcrReq,
) -> Result<Response, ApiError> {
    if oci::validate_tag(tag).is_err() {
        return Err(unknown(repo, tag));
    }
    let target = Target::Tag(tag.to_owned());
    match (&req.method, &req.patch) {
        (&Method::PATCH, Some(patch))
            if store
                .set_attributes(repo, &target, patch, Origin::Client)?
                .is_none() =>
        {
            // Which is missing: the repository or the item.
            one(store, repo, tag)?;
            return Err(unknown(repo, tag));
        }
        (&Method::DELETE, _) => {
            if store.repository(repo)?.is_none() {
                return Err(not_found_repo(repo));
            }
            if !store.delete_tag(repo, tag, Origin::Client)? {
                return Err(unknown(repo, tag));
            }
            return Ok(accepted());
        }
        _ => {}
    }
    let t = one(store, repo, tag)?;
    let body = serde_json::json!({
        "registry": req.registry,
        "imageName": repo.as_str(),
        "tag": tag_json(&t),
    });
    Ok(json(body, None))
}
