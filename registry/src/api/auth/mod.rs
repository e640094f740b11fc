//! Access control for every route: who the caller is (Basic, Bearer or nobody), whether it may
//! do what the route needs (`need`), and the answers of the Docker token flow when it may not.
//! `token` is the token service (`/oauth2/token`) the challenge points clients to;
//! `client_addr` decides which address failed logins count against (`--trusted-proxy`).
//!
//! | caller | lacks the need | answer |
//! | --- | --- | --- |
//! | nobody | yes | 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` |
//! | Bearer token | yes | 401 with the challenge and `error="insufficient_scope"` (the client asks for that scope) |
//! | Basic (a token's password) | yes | 403 `DENIED` |
//! | wrong credentials | - | 401 with the challenge |
//! | too many failed logins | - | 429 `TOOMANYREQUESTS` with `Retry-After` |
//!
//! A repository the caller may not read answers the same whether or not it exists: the check
//! comes before the handler looks.

mod client_addr;
mod need;
pub mod token;

pub(crate) use client_addr::client_addr;
#[cfg(any(test, fuzzing))]
pub use client_addr::fuzz_trusted_proxy;
pub use client_addr::{with_client_addr, TrustedProxy};
pub use need::{need, Need};

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use access::{Action, Authority, Identity, Login, Refusal, Target};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use futures_util::future::{BoxFuture, Either, Ready};
use tower::{Service, ServiceExt};

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use oci::ErrorCode;

/// Puts access control in front of every route of `router`: one `Guard` around the whole
/// router, which the returned router calls for every request (its fallback, having no routes
/// of its own). Around the router rather than layered on each of its routes, where axum would
/// box every route once more.
pub fn guard(router: Router, authority: Arc<Authority>) -> Router {
    Router::new().fallback_service(Guard {
        inner: router,
        authority,
    })
}

/// Decides access before the router runs. Written as a service rather than a `from_fn`
/// middleware so that the common case costs no allocation: a request whose credentials are
/// known (an access token, a remembered password, none) is decided in `call` and handed to
/// the router there, without the router cloned or a future boxed. Only a password seen
/// for the first time waits (argon2id, off the async threads) in a future of its own.
#[derive(Clone)]
struct Guard<S> {
    inner: S,
    authority: Arc<Authority>,
}

type GuardFuture<F> = Either<
    F,
    Either<Ready<Result<Response, Infallible>>, BoxFuture<'static, Result<Response, Infallible>>>,
>;

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        match judge(&self.authority, &mut parts, None) {
            // `poll_ready` readied `inner` for exactly this call.
            Verdict::Pass => Either::Left(self.inner.call(Request::from_parts(parts, body))),
            Verdict::Answer(response) => {
                Either::Right(Either::Left(futures_util::future::ready(Ok(response))))
            }
            Verdict::CheckPassword { name, password } => {
                let authority = self.authority.clone();
                let inner = self.inner.clone();
                Either::Right(Either::Right(Box::pin(async move {
                    let from = client_addr(&parts.extensions);
                    let checked = check_password(&authority, name.clone(), password, from)
                        .await
                        .map(|_| Arc::new(Identity::Password { token: name }));
                    match judge(&authority, &mut parts, Some(checked)) {
                        Verdict::Pass => inner.oneshot(Request::from_parts(parts, body)).await,
                        Verdict::Answer(response) => Ok(response),
                        // Judged with the outcome of the check, it never asks for another; if
                        // it did, the request is refused, never let through unchecked.
                        Verdict::CheckPassword { .. } => Ok(ApiError::new(
                            ErrorCode::Unauthorized,
                            "internal: the password check did not settle the request",
                        )
                        .into_response()),
                    }
                })))
            }
        }
    }
}

/// What the guard decided about a request.
enum Verdict {
    /// The route may run.
    Pass,
    /// The answer instead of the route's (a challenge, a refusal).
    Answer(Response),
    /// A password not verified lately: check it (slowly), then judge again with the outcome.
    CheckPassword { name: String, password: String },
}

/// This registry as the client addressed it: behind our proxy, the proxy's name and `https`
/// (`X-Forwarded-Host`, `X-Forwarded-Proto` from a separate proxy; `Host` and
/// [`ViaTlsProxy`](util::forwarded::ViaTlsProxy) from the one in this process). The service name
/// of tokens, ACR's `registry` field, and the token service's realm all come from here.
pub(crate) struct Addressed<'a> {
    pub service: &'a str,
    parts: &'a Parts,
}

impl Addressed<'_> {
    pub(crate) fn of(parts: &Parts) -> Addressed<'_> {
        Addressed {
            service: Addressed::service_of(&parts.headers),
            parts,
        }
    }

    /// The name alone (the host and port the client used).
    pub(crate) fn service_of(headers: &HeaderMap) -> &str {
        header_str(headers, "x-forwarded-host")
            .or_else(|| header_str(headers, header::HOST.as_str()))
            .unwrap_or("localhost")
    }

    /// The token service's URL (made only for a challenge, not per request).
    fn realm(&self) -> String {
        let https = self
            .parts
            .extensions
            .get::<util::forwarded::ViaTlsProxy>()
            .is_some()
            || header_str(&self.parts.headers, "x-forwarded-proto") == Some("https");
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://{}/oauth2/token", self.service)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Credentials of an `Authorization` header.
pub(crate) enum Credentials<'a> {
    None,
    Basic {
        name: String,
        password: String,
    },
    /// Borrowed from the header: a token comes with every request and is only looked up.
    Bearer(&'a [u8]),
    /// A header that is neither, or Basic that does not decode.
    Malformed,
}

impl Credentials<'_> {
    pub(crate) fn of(headers: &HeaderMap) -> Credentials<'_> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Credentials::None;
        };
        // Bytes, not `to_str`: a token is a few hundred bytes on every request, looked up as
        // they are; only one never seen before is read as text (and verified).
        let value = value.as_bytes();
        let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
            Some(space) => (&value[..space], &value[space + 1..]),
            None => (value, &[][..]),
        };
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return Credentials::Bearer(rest.trim_ascii());
        }
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Credentials::Malformed;
        }
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim_ascii())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|pair| {
                let (name, password) = pair.split_once(':')?;
                Some(Credentials::Basic {
                    name: name.to_owned(),
                    password: password.to_owned(),
                })
            })
            .unwrap_or(Credentials::Malformed)
    }
}

/// Checks a token's password: from memory when it was verified lately, else (argon2id, slow
/// by design) off the async threads.
pub(crate) async fn check_password(
    authority: &Arc<Authority>,
    name: String,
    password: String,
    from: IpAddr,
) -> Result<Login, Refusal> {
    if let Some(login) = authority.remembered_login(&name, &password) {
        return Ok(login);
    }
    let authority = authority.clone();
    tokio::task::spawn_blocking(move || authority.login(&name, &password, from))
        .await
        .map_err(|_| Refusal::Unauthorized("password check failed".into()))?
}

/// Decides a request: what its route needs, who is asking (`checked`: the outcome of a
/// password check already made, else found from the credentials), and whether that caller
/// holds the need. On the way it tells listings what the caller may see and turns a mount the
/// caller may not read from into an ordinary upload.
fn judge(
    authority: &Arc<Authority>,
    parts: &mut Parts,
    checked: Option<Result<Arc<Identity>, Refusal>>,
) -> Verdict {
    let need = need(&parts.method, parts.uri.path(), parts.uri.query());
    if need == Need::Nothing {
        return Verdict::Pass;
    }
    let addressed = Addressed::of(parts);
    let credentials = Credentials::of(&parts.headers);
    let basic = matches!(credentials, Credentials::Basic { .. });
    let identity = match checked {
        Some(outcome) => outcome,
        None => match credentials {
            Credentials::None => Ok(Arc::new(Identity::Anonymous)),
            Credentials::Malformed => Err(Refusal::Unauthorized(
                "Authorization is neither Basic name:password nor Bearer".into(),
            )),
            Credentials::Bearer(jwt) => authority.bearer(jwt, addressed.service),
            Credentials::Basic { name, password } => {
                if authority.remembered_login(&name, &password).is_none() {
                    return Verdict::CheckPassword { name, password };
                }
                Ok(Arc::new(Identity::Password { token: name }))
            }
        },
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(Refusal::TooManyAttempts(retry_after)) => {
            return Verdict::Answer(too_many(retry_after))
        }
        Err(Refusal::Unauthorized(why)) => {
            tracing::debug!(%why, client = %client_addr(&parts.extensions), "credentials refused");
            return Verdict::Answer(challenge(
                &addressed,
                &need,
                None,
                "authentication failed: check the token name and password, or log in again",
            ));
        }
    };
    let mut unmount = false;
    let allowed = match (&need, &*identity) {
        (Need::Nothing, _) => true,
        // A caller with no credentials is challenged here even with anonymous pull on: clients
        // (docker, containers/image) learn from `GET /v2/` whether to authenticate, and after
        // a 200 they push without their credentials. Anonymous pull goes through the token
        // service (an anonymous access token), as at ACR and distribution.
        (Need::Known, Identity::Anonymous) => false,
        (Need::Catalog, Identity::Anonymous) => authority.anonymous().is_some(),
        (Need::Known | Need::Catalog, Identity::Password { .. }) => true,
        (Need::Known, Identity::Bearer { .. }) => true,
        (Need::Catalog, Identity::Bearer { access, .. }) => access
            .iter()
            .any(|g| g.kind == "registry" && g.name == "catalog"),
        (Need::Repository(repo, action), _) => {
            authority.allows(&identity, Target::Repository(repo), *action)
        }
        (Need::Gateway(action), _) => authority.allows(&identity, Target::Registry, *action),
        (Need::OwnGateway(name, action), _) => {
            authority.allows(&identity, Target::Gateway(name), *action)
        }
        (Need::Mount { target, source }, _) => {
            let push =
                authority.allows(&identity, Target::Repository(target), Action::ContentWrite);
            // No pull on the source: an ordinary upload, as if no mount had been asked, so the
            // answer says nothing about what the source holds.
            unmount = push
                && !authority.allows(&identity, Target::Repository(source), Action::ContentRead);
            push
        }
    };
    if !allowed {
        return Verdict::Answer(match *identity {
            Identity::Password { .. } if basic => ApiError::new(
                ErrorCode::Denied,
                "requested access to the resource is denied: the token's scope map does not allow it",
            )
            .into_response(),
            Identity::Bearer { .. } => challenge(&addressed, &need, Some("insufficient_scope"), "the access token does not grant this: ask the token service for this scope"),
            _ => challenge(&addressed, &need, None, "authentication required: log in with a token (docker login)"),
        });
    }
    // Only listings (the change feed among them) need to know what the caller may see; a
    // pull is spared the allocation.
    let feed = need == Need::Gateway(Action::MessageRead);
    let lists = matches!(
        need,
        Need::Catalog | Need::Repository(_, Action::MetadataRead)
    );
    if feed {
        let seeing = authority.clone();
        let caller = Caller::seeing(move |repo| seeing.may_read(&identity, repo));
        parts.extensions.insert(caller.with_unlisted(true));
    } else if lists {
        let sync_reader = authority.allows(&identity, Target::Registry, Action::MessageRead);
        let seeing = authority.clone();
        let caller = Caller::seeing(move |repo| seeing.may_list(&identity, repo));
        parts.extensions.insert(caller.with_unlisted(sync_reader));
    }
    if unmount {
        strip_mount(&mut parts.uri);
    }
    Verdict::Pass
}

/// Drops `mount` and `from` from an upload start's query.
fn strip_mount(uri: &mut axum::http::Uri) {
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.starts_with("mount=") && !p.starts_with("from=") && !p.is_empty())
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(stripped) = axum::http::Uri::from_parts(parts) {
            *uri = stripped;
        }
    }
}

/// The Docker token scope a need asks for, as a challenge names it.
fn scope_of(need: &Need<'_>) -> Option<String> {
    match need {
        Need::Repository(repo, action) => {
            let actions = match action {
                Action::ContentWrite => "pull,push".to_owned(),
                other => other.scope_name().to_owned(),
            };
            Some(format!("repository:{repo}:{actions}"))
        }
        Need::Mount { target, source } => Some(format!(
            "repository:{target}:pull,push repository:{source}:pull"
        )),
        Need::Catalog | Need::Gateway(_) | Need::OwnGateway(..) => {
            Some("registry:catalog:*".into())
        }
        Need::Nothing | Need::Known => None,
    }
}

/// 401 with the challenge that sends a Docker client to the token service.
fn challenge(
    addressed: &Addressed<'_>,
    need: &Need<'_>,
    error: Option<&str>,
    message: &str,
) -> Response {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        addressed.realm(),
        addressed.service
    );
    if let Some(scope) = scope_of(need) {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    ApiError::new(ErrorCode::Unauthorized, message)
        .with_header(header::WWW_AUTHENTICATE, value)
        .into_response()
}

fn too_many(retry_after: std::time::Duration) -> Response {
    let secs = retry_after.as_secs().max(1);
    ApiError::new(
        ErrorCode::TooManyRequests,
        format!("too many failed logins: try again in {secs} s"),
    )
    .with_status(StatusCode::TOO_MANY_REQUESTS)
    .with_header(header::RETRY_AFTER, secs.to_string())
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], via_tls_proxy: bool) -> Parts {
        let mut request = axum::http::Request::builder().uri("/v2/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        if via_tls_proxy {
            parts.extensions.insert(util::forwarded::ViaTlsProxy);
        }
        parts
    }

    /// The realm is `https` behind either proxy: the one in this process says so in an
    /// extension, a separate one in `X-Forwarded-Proto`; a direct client gets `http`.
    #[test]
    fn the_realm_follows_the_proxy_in_process_or_its_headers() {
        let direct = parts(&[("host", "edge:5000")], false);
        assert_eq!(
            Addressed::of(&direct).realm(),
            "http://edge:5000/oauth2/token"
        );
        let in_process = parts(&[("host", "edge.test:443")], true);
        assert_eq!(
            Addressed::of(&in_process).realm(),
            "https://edge.test:443/oauth2/token"
        );
        let separate = parts(
            &[
                ("host", "registry:8080"),
                ("x-forwarded-host", "edge.test"),
                ("x-forwarded-proto", "https"),
            ],
            false,
        );
        let addressed = Addressed::of(&separate);
        assert_eq!(addressed.service, "edge.test");
        assert_eq!(addressed.realm(), "https://edge.test/oauth2/token");
    }
}
