//! containerd's mirror requests: a node whose `hosts.toml` sends pulls for several registries
//! here names the registry each is for in `?ns=` (`GET /v2/library/alpine/manifests/latest
//! ?ns=docker.io`). This layer, in front of the router and the access guard, turns the
//! repository into the local name that registry's images have here (`hub/library/alpine`), so
//! routing, access control and the handlers all see that one name. The mapping itself is the
//! caller's (sync's upstreams); a registry that is not configured gets 404 `NAME_UNKNOWN` saying
//! so. Requests without `ns` pass untouched, at the cost of one query scan.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::{Either, Ready};
use tower::Service;

use crate::api::error::ApiError;
use oci::ErrorCode;

/// Maps `(ns, repository, Host of the request)` to the local repository name, or a message
/// saying why there is none.
pub type MirrorMap = Arc<dyn Fn(&str, &str, Option<&str>) -> Result<String, String> + Send + Sync>;

/// `router`, with `?ns=` requests' repository names mapped by `map` before it routes them.
pub fn map_mirror_names(router: Router, map: MirrorMap) -> Router {
    Router::new().fallback_service(MirrorNames { inner: router, map })
}

#[derive(Clone)]
struct MirrorNames<S> {
    inner: S,
    map: MirrorMap,
}

impl<S> Service<Request> for MirrorNames<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match mapped_uri(request.uri(), request.headers(), &self.map) {
            Ok(None) => {}
            Ok(Some(uri)) => *request.uri_mut() = uri,
            Err(message) => {
                let refused = ApiError::new(ErrorCode::NameUnknown, message).into_response();
                return Either::Right(futures_util::future::ready(Ok(refused)));
            }
        }
        // `poll_ready` readied `inner` for exactly this call.
        Either::Left(self.inner.call(request))
    }
}

/// The route suffixes after a repository name in `/v2/NAME/...` (a reference never holds `/`,
/// so the last of them ends the name).
const SUFFIXES: [&str; 4] = ["/manifests/", "/blobs/", "/tags/", "/referrers/"];

/// The request's URI with its repository mapped and `ns` dropped; `None`: nothing to map (no
/// `ns`, or not a repository route).
fn mapped_uri(
    uri: &Uri,
    headers: &header::HeaderMap,
    map: &MirrorMap,
) -> Result<Option<Uri>, String> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let Some(ns) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ns="))
        .map(percent_decode)
    else {
        return Ok(None);
    };
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(None);
    };
    let Some(end) = SUFFIXES.iter().filter_map(|s| rest.rfind(s)).max() else {
        return Ok(None);
    };
    let (repo, route) = rest.split_at(end);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let local = map(&ns, repo, host)?;
    let others: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.starts_with("ns=") && !pair.is_empty())
        .collect();
    let path_and_query = if others.is_empty() {
        format!("/v2/{local}{route}")
    } else {
        format!("/v2/{local}{route}?{}", others.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| format!("the mapped name {local:?} is not a valid path: {e}"))?,
    );
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|e| format!("the mapped name {local:?} is not a valid path: {e}"))
}

/// `%XX` escapes decoded (a port's `%3A`); anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> MirrorMap {
        Arc::new(|ns: &str, repo: &str, _host: Option<&str>| match ns {
            "docker.io" => Ok(format!("hub/{repo}")),
            other => Err(format!("{other} is not configured")),
        })
    }

    fn mapped(uri: &str) -> Result<Option<String>, String> {
        let uri: Uri = uri.parse().unwrap();
        mapped_uri(&uri, &header::HeaderMap::new(), &map()).map(|u| u.map(|u| u.to_string()))
    }

    #[test]
    fn repositories_map_and_ns_is_dropped() {
        assert_eq!(
            mapped("/v2/library/alpine/manifests/latest?ns=docker.io").unwrap(),
            Some("/v2/hub/library/alpine/manifests/latest".into())
        );
        assert_eq!(
            mapped("/v2/a/blobs/b/blobs/sha256:00?ns=docker.io&x=1").unwrap(),
            Some("/v2/hub/a/blobs/b/blobs/sha256:00?x=1".into())
        );
        assert_eq!(
            mapped("/v2/a/tags/list?n=5&ns=docker%2Eio").unwrap(),
            Some("/v2/hub/a/tags/list?n=5".into())
        );
        assert_eq!(mapped("/v2/a/manifests/latest").unwrap(), None);
        assert_eq!(mapped("/v2/?ns=docker.io").unwrap(), None);
        assert!(mapped("/v2/a/manifests/x?ns=ghcr.io")
            .unwrap_err()
            .contains("ghcr.io"));
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(percent_decode("a%3Ab"), "a:b");
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
