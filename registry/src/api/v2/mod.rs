//! `/v2` routing: the repository name may hold slashes, so the path is parsed from its end.

mod blobs;
mod listing;
mod manifests;
mod uploads;

/// The fuzz targets of the private parsers above, for `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub use {blobs::fuzz_parse_range, uploads::fuzz_content_range};

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use super::AppState;
use crate::api::error::ApiError;
use crate::storage::Attribute;
use oci::digest::Digest;
use oci::name::RepoName;
use oci::reference::Reference;
use oci::ErrorCode;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const DIGEST_HEADER: &str = "docker-content-digest";
pub const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*path}", any(dispatch))
        .layer(axum::middleware::map_response(api_version))
}

async fn api_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    response
}

async fn base() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// The parts of a `/v2/...` path.
#[derive(Debug, PartialEq)]
pub(crate) enum Route<'a> {
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
}

/// `(name, last)` of `name{marker}last` where `marker` is `/kind/` and `last` is the path's last
/// segment. Done with a search for one byte and a comparison of the end: parsing runs twice
/// per request (access, then the handler), and a substring search costs more than the rest.
fn last_segment<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let (head, last) = path.rsplit_once('/')?;
    let kind = marker.strip_suffix('/').unwrap_or(marker);
    let name = head.strip_suffix(kind)?;
    (!name.is_empty() && !last.is_empty()).then_some((name, last))
}

pub(crate) fn parse_route(path: &str) -> Option<Route<'_>> {
    if path == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, reference)) = last_segment(path, "/manifests/") {
        return Some(Route::Manifest(name, reference));
    }
    if let Some((name, digest)) = last_segment(path, "/referrers/") {
        return Some(Route::Referrers(name, digest));
    }
    if let Some(name) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name));
    }
    if let Some((name, id)) = last_segment(path, "/blobs/uploads/") {
        return Some(Route::Upload(name, id));
    }
    if let Some((name, digest)) = last_segment(path, "/blobs/") {
        return Some(Route::Blob(name, digest));
    }
    None
}

/// One request, with what handlers need from it.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: HashMap<String, String>,
    /// What layers before the handler attached (the access layer's `Caller`).
    pub extensions: Extensions,
    pub body: Body,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn repo(name: &str) -> Result<RepoName, ApiError> {
    Ok(name.parse()?)
}

pub fn digest(s: &str) -> Result<Digest, ApiError> {
    Ok(s.parse()?)
}

async fn dispatch(
    State(state): State<AppState>,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Response {
    let req = Req {
        method,
        headers,
        query,
        extensions,
        body,
    };
    match handle(&state, &path, req).await {
        Ok(response) => response,
        Err(err) => explain_miss(&state, &path, err).logged(&path),
    }
}

/// Adds what the state's miss hint knows to a "not here" error about a repository.
fn explain_miss(state: &AppState, path: &str, mut err: ApiError) -> ApiError {
    let unknown = matches!(
        err.code,
        ErrorCode::ManifestUnknown | ErrorCode::NameUnknown | ErrorCode::BlobUnknown
    );
    let Some(hint) = state.miss_hint.as_ref().filter(|_| unknown) else {
        return err;
    };
    let name = match parse_route(path) {
        Some(
            Route::Tags(n) | Route::Manifest(n, _) | Route::Blob(n, _) | Route::Referrers(n, _),
        ) => n,
        _ => return err,
    };
    if let Some(why) = name.parse::<RepoName>().ok().and_then(|r| hint(&r)) {
        err.message = format!("{}: {why}", err.message);
    }
    err
}

async fn handle(state: &AppState, path: &str, req: Req) -> Result<Response, ApiError> {
    let route = parse_route(path).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NameInvalid,
            format!("/v2/{path} is not a registry API path (or the repository name is empty)"),
        )
        .with_status(axum::http::StatusCode::NOT_FOUND)
    })?;
    let store = &state.store;
    if state.writes.get() == super::Writes::Refused
        && !matches!(req.method, Method::GET | Method::HEAD)
    {
        return Err(ApiError::read_only());
    }
    match (route, req.method.clone()) {
        (Route::Catalog, Method::GET) => listing::catalog(store, &req),
        (Route::Tags(name), Method::GET) => listing::tags(store, &repo(name)?, &req),
        (Route::Referrers(name, d), Method::GET) => {
            listing::referrers(store, &repo(name)?, &digest(d)?, &req)
        }
        (Route::Manifest(name, reference), method) => {
            let repo = repo(name)?;
            let reference = match Reference::parse(reference) {
                Ok(parsed) => parsed,
                // A PUT names what it creates: a bad name is the client's to fix (400).
                Err(err) if method == Method::PUT => return Err(err.into()),
                // Nothing can be stored under a malformed reference, so reading or deleting
                // one finds nothing: 404, as the spec and the conformance suite have it.
                Err(err) => {
                    return Err(ApiError::new(
                        ErrorCode::ManifestUnknown,
                        format!("no manifest can be known as {reference:?}: {err}"),
                    ))
                }
            };
            match method {
                Method::GET | Method::HEAD => {
                    let ask = manifests::Ask::of(&req);
                    manifests::get(store, state.on_demand.as_ref(), &repo, &reference, ask).await
                }
                Method::PUT => manifests::put(store, repo, reference, req).await,
                Method::DELETE => manifests::delete(store, repo, reference).await,
                other => Err(ApiError::unsupported(&other, "manifests")),
            }
        }
        (Route::Blob(name, d), method) => {
            let repo = repo(name)?;
            let digest = digest(d)?;
            match method {
                Method::GET | Method::HEAD => {
                    store.require_repo(&repo, &[Attribute::Read], "pulled from")?;
                    let head_only = method == Method::HEAD;
                    let on_demand = state.on_demand.as_ref();
                    blobs::get(store, on_demand, &repo, &digest, &req.headers, head_only).await
                }
                Method::DELETE => {
                    let needs = [Attribute::Delete, Attribute::Write];
                    store.require_repo(&repo, &needs, "deleted from")?;
                    blobs::delete(store, repo, digest).await
                }
                other => Err(ApiError::unsupported(&other, "blobs")),
            }
        }
        (Route::UploadStart(name), Method::POST) => {
            let repo = repo(name)?;
            store.require_repo(&repo, &[Attribute::Write], "pushed to")?;
            uploads::start(store, repo, req).await
        }
        (Route::Upload(name, id), method) => {
            let repo = repo(name)?;
            match method {
                Method::GET => uploads::status(store, &repo, id).await,
                Method::PATCH => uploads::patch(store, &repo, id, req).await,
                Method::PUT => uploads::finish(store, &repo, id, req).await,
                Method::DELETE => uploads::cancel(store, &repo, id).await,
                other => Err(ApiError::unsupported(&other, "upload sessions")),
            }
        }
        (_, method) => Err(ApiError::unsupported(&method, path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_from_the_end() {
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(parse_route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            parse_route("a/manifests/b/manifests/v1"),
            Some(Route::Manifest("a/manifests/b", "v1"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/"),
            Some(Route::UploadStart("a"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/xyz"),
            Some(Route::Upload("a", "xyz"))
        );
        assert_eq!(
            parse_route("a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        );
        assert_eq!(parse_route("a/blobs/"), None);
        assert_eq!(parse_route("manifests/v1"), None);
        assert_eq!(parse_route("a/manifests/x/y"), None);
        assert_eq!(
            parse_route("a/manifests/blobs/x"),
            Some(Route::Blob("a/manifests", "x"))
        );
        assert_eq!(
            parse_route("a/blobs/uploads"),
            Some(Route::UploadStart("a"))
        );
        assert_eq!(parse_route("nothing"), None);
    }
}
