//! `/acr/v1`: the ACR data-plane API beside `/v2` (repositories, tags and manifests with their
//! properties and `changeableAttributes`, in the JSON shapes ACR and its SDKs use) and the change
//! feed children sync from.
//!
//! | route | method | answers | action the access layer requires |
//! | --- | --- | --- | --- |
//! | `/acr/v1/_catalog?n&last&include` | GET | `{"repositories": [...]}` | `metadata/read`, filtered per repository ([`Caller::may_list`]) |
//! | `/acr/v1/_changes?after&n&v` | GET | the change feed (`changes`) | the sync token's catalog scope |
//! | `/acr/v1/{repo}` | GET | repository properties | `metadata/read` on `repo` |
//! | `/acr/v1/{repo}` | PATCH | sets its attributes | `metadata/write` on `repo` |
//! | `/acr/v1/{repo}` | DELETE | deletes it and everything in it | `content/delete` on `repo` |
//! | `/acr/v1/{repo}/_tags?n&last&orderby&digest&include` | GET | tag list | `metadata/read` on `repo` |
//! | `/acr/v1/{repo}/_tags/{tag}` | GET, PATCH, DELETE | one tag | `metadata/read`, `metadata/write`, `content/delete` |
//! | `/acr/v1/{repo}/_manifests?n&last&orderby&include` | GET | manifest list | `metadata/read` on `repo` |
//! | `/acr/v1/{repo}/_manifests/{digest}` | GET, PATCH, DELETE | one manifest | `metadata/read`, `metadata/write`, `content/delete` |
//!
//! `parse_route` and `AcrRoute::action` give the access layer the repository and action of a
//! request before it reaches a handler; the handlers check nothing about the caller except
//! what listings may name.
//!
//! `orderby` is `timedesc` or `timeasc` (by last-update time, ties by name; `timedesc` is
//! exactly `timeasc` reversed); absent, name order (digest order for manifests). `last` is the
//! name (digest) of the previous page's last item in every order; `n` defaults to
//! [`DEFAULT_PAGE`] and is capped at [`MAX_PAGE`]. When more follow, `Link` names the next page.
//! Items with `listEnabled: false` (or in a repository with it) are left out of listings and
//! still answer by name. `include=unlisted` lists them too, for a caller holding the gateway
//! action `message/read` (a child's sync token, which keeps mirroring them) or with access
//! control off; anyone else gets the ordinary listing.
//!
//! Writes (`PATCH`, `DELETE`) on a read-only registry are refused exactly as `/v2` writes are.
//! A delete a lock forbids is refused with 405 `DENIED` naming the switch and how to turn it
//! back on (`PATCH /acr/v1/REPO/_tags/TAG {"deleteEnabled": true}`); the same switches hold on
//! `/v2` (see `storage::meta::props`).

mod catalog;
mod changes;
mod manifests;
mod repository;
mod tags;

pub use changes::MAX_CHANGES_PER_PAGE;

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::Value;

use super::{AppState, Writes};
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use oci::{AttributesPatch, ChangeableAttributes, ErrorCode, RepoName};

/// Items per listing page when the request gives no `n` (ACR's default).
pub const DEFAULT_PAGE: usize = 100;
/// The most items a listing page holds whatever `n` says: bounds one answer's size.
pub const MAX_PAGE: usize = 1000;
/// The largest `PATCH` body read: four booleans fit in a hundred bytes.
pub const MAX_PATCH_BODY: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/acr/v1/_changes", get(changes::changes))
        .route("/acr/v1/{*path}", any(dispatch))
}

/// The parts of an `/acr/v1/...` path (the part after `/acr/v1/`). Repository names never hold
/// a segment starting with `_`, so `_tags` and `_manifests` cannot be part of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcrRoute<'a> {
    Catalog,
    Changes,
    Repository(&'a str),
    Tags(&'a str),
    Tag(&'a str, &'a str),
    Manifests(&'a str),
    Manifest(&'a str, &'a str),
}

impl<'a> AcrRoute<'a> {
    /// The repository the route is about (`None`: the catalog and the feed span all).
    pub(crate) fn repo(&self) -> Option<&'a str> {
        match *self {
            AcrRoute::Catalog | AcrRoute::Changes => None,
            AcrRoute::Repository(r)
            | AcrRoute::Tags(r)
            | AcrRoute::Tag(r, _)
            | AcrRoute::Manifests(r)
            | AcrRoute::Manifest(r, _) => Some(r),
        }
    }

    /// The action `method` on this route needs (see the module doc); `None`: the method is not
    /// served here.
    pub(crate) fn action(&self, method: &Method) -> Option<access::Action> {
        let item = matches!(
            self,
            AcrRoute::Repository(_) | AcrRoute::Tag(..) | AcrRoute::Manifest(..)
        );
        match *method {
            Method::GET => Some(access::Action::MetadataRead),
            Method::PATCH if item => Some(access::Action::MetadataWrite),
            Method::DELETE if item => Some(access::Action::ContentDelete),
            _ => None,
        }
    }
}

/// The name before `marker` and the one segment after it.
fn split_last<'a>(path: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    path.rsplit_once(marker)
        .filter(|(name, rest)| !name.is_empty() && !rest.is_empty() && !rest.contains('/'))
}

/// Parses the path after `/acr/v1/`, from its end (repository names hold slashes).
pub(crate) fn parse_route(path: &str) -> Option<AcrRoute<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "_catalog" => return Some(AcrRoute::Catalog),
        "_changes" => return Some(AcrRoute::Changes),
        "" => return None,
        _ => {}
    }
    if let Some(repo) = path.strip_suffix("/_tags") {
        return (!repo.is_empty()).then_some(AcrRoute::Tags(repo));
    }
    if let Some((repo, tag)) = split_last(path, "/_tags/") {
        return Some(AcrRoute::Tag(repo, tag));
    }
    if let Some(repo) = path.strip_suffix("/_manifests") {
        return (!repo.is_empty()).then_some(AcrRoute::Manifests(repo));
    }
    if let Some((repo, digest)) = split_last(path, "/_manifests/") {
        return Some(AcrRoute::Manifest(repo, digest));
    }
    if path.starts_with('_') || path.contains("/_") {
        return None;
    }
    Some(AcrRoute::Repository(path))
}

/// One request, with what handlers need from it.
pub(crate) struct AcrReq {
    pub method: Method,
    pub query: HashMap<String, String>,
    /// The host the client addressed: ACR's `registry` field.
    pub registry: String,
    pub caller: Caller,
    /// The parsed `PATCH` body.
    pub patch: Option<AttributesPatch>,
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
    match handle(
        state,
        path.clone(),
        query,
        method,
        headers,
        extensions,
        body,
    )
    .await
    {
        Ok(response) => response,
        Err(err) => err.logged(&format!("/acr/v1/{path}")),
    }
}

async fn handle(
    state: AppState,
    path: String,
    query: HashMap<String, String>,
    method: Method,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Result<Response, ApiError> {
    let route = parse_route(&path).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NameInvalid,
            format!(
                "/acr/v1/{path} is not an ACR API path: use /acr/v1/_catalog, /acr/v1/REPO, \
                 /acr/v1/REPO/_tags[/TAG] or /acr/v1/REPO/_manifests[/DIGEST]"
            ),
        )
        .with_status(StatusCode::NOT_FOUND)
    })?;
    if route == AcrRoute::Changes {
        // Served by its own route; reached here only with a trailing slash.
        return Err(ApiError::unsupported(&method, "/acr/v1/_changes/"));
    }
    if route.action(&method).is_none() {
        return Err(ApiError::unsupported(&method, &format!("/acr/v1/{path}")));
    }
    if method != Method::GET && state.writes.get() == Writes::Refused {
        return Err(ApiError::read_only());
    }
    let patch = if method == Method::PATCH {
        Some(read_patch(body).await?)
    } else {
        None
    };
    let req = AcrReq {
        method,
        query,
        registry: crate::api::auth::Addressed::service_of(&headers).to_owned(),
        caller: Caller::of(&extensions),
        patch,
    };
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let route = parse_route(&path).expect("parsed above");
        match route {
            AcrRoute::Catalog => catalog::get(&store, &req),
            AcrRoute::Repository(r) => repository::handle(&store, &repo(r)?, &req),
            AcrRoute::Tags(r) => tags::list(&store, &repo(r)?, &req),
            AcrRoute::Tag(r, tag) => tags::handle(&store, &repo(r)?, tag, &req),
            AcrRoute::Manifests(r) => manifests::list(&store, &repo(r)?, &req),
            AcrRoute::Manifest(r, d) => manifests::handle(&store, &repo(r)?, d, &req),
            AcrRoute::Changes => Err(ApiError::unsupported(&req.method, "/acr/v1/_changes/")),
        }
    })
    .await
    .map_err(|e| {
        tracing::error!("/acr task failed: {e}");
        ApiError::new(ErrorCode::Unknown, "internal error in a storage task")
    })?
}

/// Reads and parses a `PATCH` body: the switches to change, nothing else.
async fn read_patch(body: Body) -> Result<AttributesPatch, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_PATCH_BODY)
        .await
        .map_err(|_| {
            bad_request(format!(
                "the PATCH body is over {MAX_PATCH_BODY} bytes: send only the attributes to change, \
                 e.g. {{\"writeEnabled\": false}}"
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "the PATCH body is not a changeableAttributes object ({e}): send a JSON object with \
             any of deleteEnabled, writeEnabled, readEnabled, listEnabled set to true or false, \
             e.g. {{\"writeEnabled\": false}}"
        ))
    })
}

fn repo(name: &str) -> Result<RepoName, ApiError> {
    Ok(name.parse()?)
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, message).with_status(StatusCode::BAD_REQUEST)
}

/// Parses a query number, naming the parameter and the valid form when it is not one.
pub(super) fn number(
    query: &HashMap<String, String>,
    name: &str,
    valid: &str,
) -> Result<Option<u64>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            bad_request(format!(
                "{name}={v:?} is not a number: use {name}=<{valid}>"
            ))
        }),
    }
}

fn not_found_repo(repo: &RepoName) -> ApiError {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!("repository {repo} is not known"),
    )
}

/// The order a listing is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Name,
    TimeAsc,
    TimeDesc,
}

/// `n`, `last` and `orderby` of a listing request, and whether it lists hidden items too.
struct Page {
    n: usize,
    last: Option<String>,
    order: Order,
    /// `include=unlisted`, honoured for this caller: items with `listEnabled: false` too.
    unlisted: bool,
}

impl Page {
    /// The page a listing request asks for; `include=unlisted` counts only when `caller` may
    /// see what listings hide.
    fn of_request(req: &AcrReq) -> Result<Page, ApiError> {
        let mut page = Page::of(&req.query)?;
        page.unlisted =
            req.query.get("include").is_some_and(|v| v == "unlisted") && req.caller.sees_unlisted();
        Ok(page)
    }

    fn of(query: &HashMap<String, String>) -> Result<Page, ApiError> {
        let n = number(query, "n", &format!("count, 1 to {MAX_PAGE}"))?
            .map(|n| (n as usize).clamp(1, MAX_PAGE))
            .unwrap_or(DEFAULT_PAGE);
        let order = match query.get("orderby").map(String::as_str) {
            None | Some("") | Some("none") => Order::Name,
            Some("timeasc") => Order::TimeAsc,
            Some("timedesc") => Order::TimeDesc,
            Some(other) => {
                return Err(bad_request(format!(
                    "orderby={other:?} is not an order: use orderby=timedesc or orderby=timeasc, \
                     or leave it out for name order"
                )))
            }
        };
        let last = query.get("last").filter(|l| !l.is_empty()).cloned();
        Ok(Page {
            n,
            last,
            order,
            unlisted: false,
        })
    }

    /// Sorts `items` in this page's order, keeps those after `last`, at most `n`; and whether
    /// more follow. `key` is an item's name, `time` its last-update time.
    fn cut<T>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> &str,
        time: impl Fn(&T) -> u64,
    ) -> (Vec<T>, bool) {
        match self.order {
            Order::Name => items.sort_by(|a, b| key(a).cmp(key(b))),
            Order::TimeAsc | Order::TimeDesc => {
                items.sort_by(|a, b| (time(a), key(a)).cmp(&(time(b), key(b))));
                if self.order == Order::TimeDesc {
                    items.reverse();
                }
            }
        }
        let start = match (&self.last, self.order) {
            (None, _) => 0,
            (Some(last), Order::Name) => items.partition_point(|i| key(i) <= last.as_str()),
            // In time order the previous page's last item is found by name; when it is gone
            // since, the listing ends there rather than starting over.
            (Some(last), _) => items
                .iter()
                .position(|i| key(i) == last.as_str())
                .map_or(items.len(), |p| p + 1),
        };
        let mut page: Vec<T> = items.into_iter().skip(start).collect();
        let more = page.len() > self.n;
        page.truncate(self.n);
        (page, more)
    }

    /// The `Link` to the page after `last_item` of `path`.
    fn link(&self, path: &str, last_item: &str) -> String {
        let order = match self.order {
            Order::Name => "",
            Order::TimeAsc => "&orderby=timeasc",
            Order::TimeDesc => "&orderby=timedesc",
        };
        let include = if self.unlisted {
            "&include=unlisted"
        } else {
            ""
        };
        format!(
            "<{path}?last={last_item}&n={}{order}{include}>; rel=\"next\"",
            self.n
        )
    }
}

/// A JSON answer, with a `Link` when `link` names a next page.
fn json(body: Value, link: Option<String>) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(value) = link.and_then(|l| l.parse().ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

/// 202 with no body: what ACR answers a delete of a tag or a manifest.
fn accepted() -> Response {
    (StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response()
}

fn attributes_json(a: &ChangeableAttributes) -> Value {
    serde_json::to_value(a).unwrap_or(Value::Null)
}

// Times are answered as RFC 3339 UTC (`2024-05-01T12:00:00Z`), as ACR answers them.
use util::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_from_the_end() {
        assert_eq!(parse_route("_catalog"), Some(AcrRoute::Catalog));
        assert_eq!(parse_route("a/b"), Some(AcrRoute::Repository("a/b")));
        assert_eq!(parse_route("a/b/_tags"), Some(AcrRoute::Tags("a/b")));
        assert_eq!(
            parse_route("a/b/_tags/v1"),
            Some(AcrRoute::Tag("a/b", "v1"))
        );
        assert_eq!(parse_route("a/_manifests"), Some(AcrRoute::Manifests("a")));
        assert_eq!(
            parse_route("a/_manifests/sha256:00"),
            Some(AcrRoute::Manifest("a", "sha256:00"))
        );
        assert_eq!(parse_route("_tags"), None);
        assert_eq!(parse_route("a/_other"), None);
        assert_eq!(parse_route(""), None);
        let tag = AcrRoute::Tag("a", "v1");
        assert_eq!(tag.repo(), Some("a"));
        assert_eq!(
            tag.action(&Method::PATCH),
            Some(access::Action::MetadataWrite)
        );
        assert_eq!(
            tag.action(&Method::DELETE),
            Some(access::Action::ContentDelete)
        );
        assert_eq!(AcrRoute::Tags("a").action(&Method::PATCH), None);
        assert_eq!(
            AcrRoute::Catalog.action(&Method::GET),
            Some(access::Action::MetadataRead)
        );
    }

    #[test]
    fn pages_cut_in_every_order() {
        let items = vec![("b", 1), ("a", 2), ("c", 2)];
        let page = |q: &[(&str, &str)]| {
            let q = q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (page, more) = Page::of(&q).unwrap().cut(items.clone(), |i| i.0, |i| i.1);
            (page.into_iter().map(|i| i.0).collect::<Vec<_>>(), more)
        };
        assert_eq!(page(&[("n", "2")]), (vec!["a", "b"], true));
        assert_eq!(page(&[("n", "2"), ("last", "b")]), (vec!["c"], false));
        assert_eq!(
            page(&[("orderby", "timeasc")]),
            (vec!["b", "a", "c"], false)
        );
        assert_eq!(
            page(&[("orderby", "timedesc"), ("n", "1"), ("last", "c")]),
            (vec!["a"], true)
        );
        assert!(Page::of(&[("orderby".into(), "size".into())].into()).is_err());
    }
}
