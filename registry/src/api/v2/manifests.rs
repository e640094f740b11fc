//! Manifests: GET/HEAD/PUT/DELETE by tag or digest.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{Req, DIGEST_HEADER};
use crate::api::error::ApiError;
use crate::api::on_demand::OnDemand;
use crate::storage::StorageError;
use crate::storage::Store;
use crate::storage::{refusal, Attribute};
use oci::name::RepoName;
use oci::reference::Reference;
use oci::ErrorCode;
use oci::Origin;

/// What a manifest GET or HEAD needs from its request (taken before any wait: a request
/// cannot be held across one).
#[derive(Clone, Copy)]
pub struct Ask {
    head_only: bool,
    /// A child's sync asking, not a client (see [`missing`]).
    from_sync: bool,
}

impl Ask {
    pub fn of(req: &Req) -> Ask {
        Ask {
            head_only: req.method == axum::http::Method::HEAD,
            from_sync: req
                .header("user-agent")
                .is_some_and(|agent| agent.starts_with(oci::SYNC_USER_AGENT_PREFIX)),
        }
    }
}

pub async fn get(
    store: &Store,
    on_demand: Option<&OnDemand>,
    repo: &RepoName,
    reference: &Reference,
    req: Ask,
) -> Result<Response, ApiError> {
    let Some(manifest) = store.get_manifest_cached(repo, reference)? else {
        // Not here: from the parent, when this repository is pulled through. A child's sync
        // asking with HEAD is checking what this registry holds (before pushing up, or
        // comparing tags), not pulling: fetching for it would make its push wait on, and fail
        // with, this registry's own parent. Its pulls through here are GETs.
        let pulling = !(req.head_only && req.from_sync);
        if let Some(on_demand) = on_demand.filter(|_| pulling) {
            if let Some(fetched) = on_demand.manifest(store, repo, reference).await? {
                return Ok(answer(
                    req,
                    &fetched.digest,
                    &fetched.media_type,
                    fetched.body.clone(),
                ));
            }
        }
        return Err(missing(store, repo, reference, req.from_sync)?);
    };
    if let Some(locked) = &manifest.unreadable {
        return Err(refusal(repo.as_str(), locked, Attribute::Read, "pulled").into());
    }
    if !req.head_only {
        store.note_pull(repo, &manifest.digest);
    }
    if let Some(on_demand) = on_demand {
        on_demand.revalidate(store, repo, reference, &manifest.digest);
    }
    Ok(answer(
        req,
        &manifest.digest,
        &manifest.media_type,
        manifest.body,
    ))
}

/// A manifest's answer: its bytes (none for HEAD), type and digest.
fn answer(req: Ask, digest: &oci::Digest, media_type: &str, body: Bytes) -> Response {
    let digest = digest.to_string();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(DIGEST_HEADER, &digest)
        .header(header::ETAG, format!("\"{digest}\""));
    let body = if req.head_only {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder.body(body).expect("valid response")
}

/// The answer for a manifest that is not here: for a tag evicted to stay under the quota, why
/// and what brings it back, and the ask is noted as demand (a child's sync comparing tags is not
/// a client asking: it keeps its own copy of a tag listed here).
fn missing(
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
    from_sync: bool,
) -> Result<ApiError, ApiError> {
    if let Reference::Tag(tag) = reference {
        let tag = tag.as_str();
        if store.evicted_tag(repo, tag)?.is_some() {
            if !from_sync {
                store.note_demand(repo, tag);
            }
            return Ok(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "{repo}:{tag} was evicted to keep storage under the quota (--quota); \
                     the next sync pass brings it back"
                ),
            ));
        }
    }
    Ok(ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in repository {repo}"),
    ))
}

/// Reads a manifest body, refusing it as soon as it passes the size limit.
async fn read_limited(req: Req, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = |size| ApiError::from(StorageError::ManifestTooLarge { size, limit });
    let declared = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|s| *s > limit) {
        return Err(too_large(size));
    }
    let mut body = BytesMut::new();
    let mut stream = req.body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the manifest body failed: {e}"),
            )
        })?;
        if (body.len() + frame.len()) as u64 > limit {
            return Err(too_large((body.len() + frame.len()) as u64));
        }
        body.extend_from_slice(&frame);
    }
    Ok(body.freeze())
}

pub async fn put(
    store: &Store,
    repo: RepoName,
    reference: Reference,
    req: Req,
) -> Result<Response, ApiError> {
    let content_type = req.header("content-type").map(str::to_owned);
    let body = read_limited(req, store.limits().max_manifest_size).await?;
    let store2 = store.clone();
    let repo2 = repo.clone();
    let (digest, subject) = tokio::task::spawn_blocking(move || {
        store2.put_manifest(
            &repo2,
            &reference,
            content_type.as_deref(),
            body,
            Origin::Client,
        )
    })
    .await
    .map_err(internal)??;
    let mut builder = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/manifests/{digest}"))
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::CONTENT_LENGTH, 0);
    if let Some(subject) = subject {
        builder = builder.header("oci-subject", subject.to_string());
    }
    Ok(builder.body(Body::empty()).expect("valid response"))
}

pub async fn delete(
    store: &Store,
    repo: RepoName,
    reference: Reference,
) -> Result<Response, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || match &reference {
        Reference::Tag(tag) => {
            if store.delete_tag(&repo, tag, Origin::Client)? {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::ManifestUnknown,
                    format!("tag {tag} is not in repository {repo}"),
                ))
            }
        }
        Reference::Digest(digest) => {
            store.delete_manifest(&repo, digest, Origin::Client)?;
            Ok(())
        }
    })
    .await
    .map_err(internal)??;
    Ok(accepted())
}

pub fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

/// A blocking task that panicked or was cancelled: an internal error.
pub fn internal(err: tokio::task::JoinError) -> ApiError {
    tracing::error!("storage task failed: {err}");
    ApiError::new(ErrorCode::Unknown, "internal error in a storage task")
}
