//! What each route needs: the one table from (method, path) to the repository and action a
//! caller must hold. Every route of the registry is here; a path this table does not know is
//! answered 404 by the router, after the caller was checked like any other request.

use std::borrow::Cow;

use access::Action;
use axum::http::Method;

use crate::api::acr::{parse_route as parse_acr_route, AcrRoute};
use crate::api::gateway::GatewayRoute;
use crate::api::v2::{parse_route, Route};

/// What a request needs before its handler runs. Names are borrowed from the request's path
/// (a mount's source, percent-decoded from the query, may be owned): deciding costs no
/// allocation on the way to a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing (the token endpoint, which checks credentials itself; the change feed's
    /// bounds-only probe, which names nothing).
    Nothing,
    /// Any caller with credentials, an anonymous access token among them (`GET /v2/`: "do you
    /// speak the API, and am I logged in"; a caller with none is challenged).
    Known,
    /// An action on a repository.
    Repository(&'a str, Action),
    /// A listing of repositories (`/v2/_catalog`, `/acr/v1/_catalog`): allowed to any known
    /// caller, and filtered to what it may read (`Caller`).
    Catalog,
    /// A gateway action of a child registry (the change feed, the sync status, the tree).
    Gateway(Action),
    /// A gateway action on one child registry's own route (its settings, its status report):
    /// its sync token's.
    OwnGateway(&'a str, Action),
    /// Writes of a cross-repository mount: the target repository's push, and pull on the
    /// source (without it, the upload starts as an ordinary one: see `auth::guard`).
    Mount {
        target: &'a str,
        source: Cow<'a, str>,
    },
}

/// The need of `method path?query`.
pub fn need<'a>(method: &Method, path: &'a str, query: Option<&'a str>) -> Need<'a> {
    if path == "/v2" || path == "/v2/" {
        return Need::Known;
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        return match parse_route(rest) {
            None => Need::Known,
            Some(Route::Catalog) => Need::Catalog,
            Some(Route::Tags(repo)) => Need::Repository(repo, Action::MetadataRead),
            Some(Route::Manifest(repo, _) | Route::Blob(repo, _)) => {
                let action = match *method {
                    Method::GET | Method::HEAD => Action::ContentRead,
                    Method::DELETE => Action::ContentDelete,
                    _ => Action::ContentWrite,
                };
                Need::Repository(repo, action)
            }
            Some(Route::Referrers(repo, _)) => Need::Repository(repo, Action::ContentRead),
            Some(Route::UploadStart(repo)) => match query_value(query, "from") {
                Some(source) if *method == Method::POST => Need::Mount {
                    target: repo,
                    source,
                },
                _ => Need::Repository(repo, Action::ContentWrite),
            },
            Some(Route::Upload(repo, _)) => Need::Repository(repo, Action::ContentWrite),
        };
    }
    // The token service checks credentials itself; health answers whoever asks (a probe).
    if path.starts_with("/oauth2/") || path == "/healthz" || path == "/readyz" {
        return Need::Nothing;
    }
    if let Some(rest) = path.strip_prefix("/acr/v1/") {
        return acr_need(method, rest, query);
    }
    Need::Known
}

/// The `/acr/v1/` routes, as `api::acr` parses them and names their actions: the change feed
/// and sync status (gateway actions), the catalog, and a repository's properties, tags and
/// manifests.
fn acr_need<'a>(method: &Method, rest: &'a str, query: Option<&'a str>) -> Need<'a> {
    if rest.starts_with("_sync/") {
        return Need::Gateway(Action::MessageRead);
    }
    match crate::api::gateway::gateway_route(rest) {
        Some(GatewayRoute::Config(name)) => return Need::OwnGateway(name, Action::ConfigRead),
        Some(GatewayRoute::Status(name)) => return Need::OwnGateway(name, Action::MessageWrite),
        // The whole subtree: whoever may read this registry's sync status and feed.
        Some(GatewayRoute::Tree) => return Need::Gateway(Action::MessageRead),
        None => {}
    }
    match parse_acr_route(rest) {
        None => Need::Known,
        Some(AcrRoute::Changes) if query_value(query, "n").as_deref() == Some("0") => Need::Nothing,
        Some(AcrRoute::Changes) => Need::Gateway(Action::MessageRead),
        Some(AcrRoute::Catalog) => Need::Catalog,
        Some(route) => match (route.repo(), route.action(method)) {
            (Some(repo), Some(action)) => Need::Repository(repo, action),
            // A method the route does not serve: its 405 says nothing about the repository.
            _ => Need::Known,
        },
    }
}

/// One query parameter's value, percent-decoded (borrowed when there was nothing to decode).
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k)? != name {
            return None;
        }
        if v.bytes().any(|b| b == b'%' || b == b'+') {
            decode(v).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(v))
        }
    })
}

pub(super) fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((decode(k)?, decode(v)?))
    })
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn repo(name: &str, action: Action) -> Need<'_> {
        Need::Repository(name, action)
    }

    #[test]
    fn every_route_has_its_need() {
        let d = "sha256:aa";
        let cases: &[(Method, &str, Option<&str>, Need<'_>)] = &[
            (Method::GET, "/v2/", None, Need::Known),
            (Method::GET, "/v2/_catalog", None, Need::Catalog),
            (
                Method::GET,
                "/v2/a/b/tags/list",
                None,
                repo("a/b", MetadataRead),
            ),
            (
                Method::GET,
                "/v2/a/manifests/latest",
                None,
                repo("a", ContentRead),
            ),
            (
                Method::HEAD,
                "/v2/a/manifests/latest",
                None,
                repo("a", ContentRead),
            ),
            (
                Method::PUT,
                "/v2/a/manifests/latest",
                None,
                repo("a", ContentWrite),
            ),
            (
                Method::DELETE,
                "/v2/a/manifests/latest",
                None,
                repo("a", ContentDelete),
            ),
            (
                Method::GET,
                &format!("/v2/a/blobs/{d}"),
                None,
                repo("a", ContentRead),
            ),
            (
                Method::DELETE,
                &format!("/v2/a/blobs/{d}"),
                None,
                repo("a", ContentDelete),
            ),
            (
                Method::GET,
                &format!("/v2/a/referrers/{d}"),
                None,
                repo("a", ContentRead),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                None,
                repo("a", ContentWrite),
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/u1",
                None,
                repo("a", ContentWrite),
            ),
            (
                Method::GET,
                "/v2/a/blobs/uploads/u1",
                None,
                repo("a", ContentWrite),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                Some("mount=sha256%3Aaa&from=b%2Fc"),
                Need::Mount {
                    target: "a",
                    source: "b/c".into(),
                },
            ),
            (
                Method::GET,
                "/acr/v1/_changes",
                Some("after=0"),
                Need::Gateway(MessageRead),
            ),
            (Method::GET, "/acr/v1/_changes", Some("n=0"), Need::Nothing),
            (
                Method::GET,
                "/acr/v1/_sync/status",
                None,
                Need::Gateway(MessageRead),
            ),
            (Method::GET, "/acr/v1/_catalog", None, Need::Catalog),
            (
                Method::GET,
                "/acr/v1/_gateway/edge1/config",
                None,
                Need::OwnGateway("edge1", ConfigRead),
            ),
            (
                Method::POST,
                "/acr/v1/_gateway/edge1/status",
                None,
                Need::OwnGateway("edge1", MessageWrite),
            ),
            (
                Method::GET,
                "/acr/v1/_gateway/_tree",
                None,
                Need::Gateway(MessageRead),
            ),
            (Method::GET, "/acr/v1/a/b", None, repo("a/b", MetadataRead)),
            (
                Method::PATCH,
                "/acr/v1/a/b",
                None,
                repo("a/b", MetadataWrite),
            ),
            (
                Method::DELETE,
                "/acr/v1/a/b",
                None,
                repo("a/b", ContentDelete),
            ),
            (
                Method::GET,
                "/acr/v1/a/b/_tags",
                None,
                repo("a/b", MetadataRead),
            ),
            (
                Method::PATCH,
                "/acr/v1/a/b/_tags/v1",
                None,
                repo("a/b", MetadataWrite),
            ),
            (
                Method::DELETE,
                "/acr/v1/a/_manifests/sha256:aa",
                None,
                repo("a", ContentDelete),
            ),
            (Method::GET, "/oauth2/token", None, Need::Nothing),
            (Method::GET, "/healthz", None, Need::Nothing),
            (Method::GET, "/readyz", None, Need::Nothing),
            (Method::GET, "/elsewhere", None, Need::Known),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(&need(method, path, *query), expected, "{method} {path}");
        }
    }
}
