//! `GET /acr/v1/{repo}/_manifests?n&last&orderby` and `GET|PATCH|DELETE
//! /acr/v1/{repo}/_manifests/{digest}`: manifests as ACR's `ManifestAttributesBase` (`digest`,
//! `imageSize`, `createdTime`, `lastUpdateTime`, `architecture` and `os` when the image's config
//! says, `mediaType`, `tags`, `changeableAttributes`). The list leaves out manifests with
//! `listEnabled: false`; one manifest answers by digest whatever its switches.

use axum::http::Method;
use axum::response::Response;
use serde_json::Value;

use super::{accepted, attributes_json, json, not_found_repo, rfc3339, AcrReq, Page};
use crate::api::error::ApiError;
use crate::storage::{ManifestProps, Store, Target};
use oci::{Digest, ErrorCode, Origin, RepoName};

fn manifest_json(store: &Store, repo: &RepoName, m: &ManifestProps) -> Value {
    let mut value = serde_json::json!({
        "digest": m.digest.to_string(),
        "imageSize": m.size,
        "createdTime": rfc3339(m.created),
        "lastUpdateTime": rfc3339(m.updated),
        "mediaType": m.media_type,
        "tags": m.tags,
        "changeableAttributes": attributes_json(&m.attributes),
    });
    // Where known: a config that cannot be read leaves the fields out, as ACR does for an index.
    match store.image_platform(repo, &m.digest) {
        Ok(Some((architecture, os))) => {
            value["architecture"] = architecture.into();
            value["os"] = os.into();
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(%repo, digest = %m.digest, "reading an image config: {e}"),
    }
    value
}

pub(super) fn list(store: &Store, repo: &RepoName, req: &AcrReq) -> Result<Response, ApiError> {
    let page = Page::of_request(req)?;
    let manifests: Vec<ManifestProps> = store
        .manifest_props(repo)?
        .ok_or_else(|| not_found_repo(repo))?
        .into_iter()
        .filter(|m| m.listed || page.unlisted)
        .collect();
    let keyed: Vec<(String, ManifestProps)> = manifests
        .into_iter()
        .map(|m| (m.digest.to_string(), m))
        .collect();
    let (page_items, more) = page.cut(keyed, |(d, _)| d.as_str(), |(_, m)| m.updated);
    let link = page_items
        .last()
        .filter(|_| more)
        .map(|(d, _)| page.link(&format!("/acr/v1/{repo}/_manifests"), d));
    let body = serde_json::json!({
        "registry": req.registry,
        "imageName": repo.as_str(),
        "manifests": page_items.iter().map(|(_, m)| manifest_json(store, repo, m)).collect::<Vec<_>>(),
    });
    Ok(json(body, link))
}

fn unknown(repo: &RepoName, digest: &Digest) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {digest} is not in repository {repo}"),
    )
}

fn one(store: &Store, repo: &RepoName, digest: &Digest) -> Result<ManifestProps, ApiError> {
    let all = store
        .manifest_props(repo)?
        .ok_or_else(|| not_found_repo(repo))?;
    all.into_iter()
        .find(|m| &m.digest == digest)
        .ok_or_else(|| unknown(repo, digest))
}

pub(super) fn handle(
    store: &Store,
    repo: &RepoName,
    digest: &str,
    req: &AcrReq,
) -> Result<Response, ApiError> {
    let digest: Digest = digest.parse()?;
    let target = Target::Manifest(digest.clone());
    match (&req.method, &req.patch) {
        (&Method::PATCH, Some(patch))
            if store
                .set_attributes(repo, &target, patch, Origin::Client)?
                .is_none() =>
        {
            // Which is missing: the repository or the item.
            one(store, repo, &digest)?;
            return Err(unknown(repo, &digest));
        }
        (&Method::DELETE, _) => {
            if store.repository(repo)?.is_none() {
                return Err(not_found_repo(repo));
            }
            store
                .delete_manifest(repo, &digest, Origin::Client)
                .map_err(|e| match e {
                    crate::storage::StorageError::ManifestUnknown => unknown(repo, &digest),
                    e => e.into(),
                })?;
            return Ok(accepted());
        }
        _ => {}
    }
    let m = one(store, repo, &digest)?;
    let body = serde_json::json!({
        "registry": req.registry,
        "imageName": repo.as_str(),
        "manifest": manifest_json(store, repo, &m),
    });
    Ok(json(body, None))
}
