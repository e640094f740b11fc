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

use std::net::IpAddr;
use std::sync::Arc;

use access::{Action, Authority, Identity, Login, Refusal, Target};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use oci::ErrorCode;

/// Puts access control in front of every route of `router`.
pub fn guard(router: Router, authority: Arc<Authority>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(authority, check))
}

/// This registry as the client addressed it: behind our proxy, the proxy's name and `https`
/// (`X-Forwarded-Host`, `X-Forwarded-Proto`). The service name of tokens, ACR's `registry`
/// field, and the token service's realm all come from here.
pub(crate) struct Addressed {
    pub service: String,
    scheme: &'static str,
}

impl Addressed {
    pub(crate) fn of(headers: &HeaderMap) -> Addressed {
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let host = value("x-forwarded-host")
            .or_else(|| value(header::HOST.as_str()))
            .unwrap_or("localhost");
        let scheme = match value("x-forwarded-proto") {
            Some("https") => "https",
            _ => "http",
        };
        Addressed {
            service: host.to_owned(),
            scheme,
        }
    }

    /// The token service's URL (made only for a challenge, not per request).
    fn realm(&self) -> String {
        format!("{}://{}/oauth2/token", self.scheme, self.service)
    }
}

/// Credentials of an `Authorization` header.
pub(crate) enum Credentials<'a> {
    None,
    Basic {
        name: String,
        password: String,
    },
    /// Borrowed from the header: a token comes with every request and is only looked up.
    Bearer(&'a str),
    /// A header that is neither, or Basic that does not decode.
    Malformed,
}

impl Credentials<'_> {
    pub(crate) fn of(headers: &HeaderMap) -> Credentials<'_> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Credentials::None;
        };
        let Ok(value) = value.to_str() else {
            return Credentials::Malformed;
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Credentials::Bearer(rest.trim());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Credentials::Malformed;
        }
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
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

/// The identity of a request's credentials; a Basic password is checked off the async
/// threads unless remembered.
async fn identify(
    authority: &Arc<Authority>,
    credentials: Credentials<'_>,
    service: &str,
    from: IpAddr,
) -> Result<Arc<Identity>, Refusal> {
    match credentials {
        Credentials::None => Ok(Arc::new(Identity::Anonymous)),
        Credentials::Malformed => Err(Refusal::Unauthorized(
            "Authorization is neither Basic name:password nor Bearer".into(),
        )),
        Credentials::Bearer(jwt) => authority.bearer(jwt, service),
        Credentials::Basic { name, password } => {
            check_password(authority, name.clone(), password, from).await?;
            Ok(Arc::new(Identity::Password { token: name }))
        }
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

async fn check(
    State(authority): State<Arc<Authority>>,
    mut request: Request,
    next: Next,
) -> Response {
    let need = need(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    if need == Need::Nothing {
        return next.run(request).await;
    }
    let addressed = Addressed::of(request.headers());
    let from = client_addr(&request);
    let credentials = Credentials::of(request.headers());
    let basic = matches!(credentials, Credentials::Basic { .. });
    let identity = match identify(&authority, credentials, &addressed.service, from).await {
        Ok(identity) => identity,
        Err(Refusal::TooManyAttempts(retry_after)) => return too_many(retry_after),
        Err(Refusal::Unauthorized(why)) => {
            tracing::debug!(%why, client = %from, "credentials refused");
            return challenge(
                &addressed,
                &need,
                None,
                "authentication failed: check the token name and password, or log in again",
            );
        }
    };
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
            if push && !authority.allows(&identity, Target::Repository(source), Action::ContentRead)
            {
                // No pull on the source: an ordinary upload, as if no mount had been asked,
                // so the answer says nothing about what the source holds.
                strip_mount(&mut request);
            }
            push
        }
    };
    if !allowed {
        return match *identity {
            Identity::Password { .. } if basic => ApiError::new(
                ErrorCode::Denied,
                "requested access to the resource is denied: the token's scope map does not allow it",
            )
            .into_response(),
            Identity::Bearer { .. } => challenge(&addressed, &need, Some("insufficient_scope"), "the access token does not grant this: ask the token service for this scope"),
            _ => challenge(&addressed, &need, None, "authentication required: log in with a token (docker login)"),
        };
    }
    // Only listings (the change feed among them) need to know what the caller may see; a
    // pull is spared the allocation.
    if need == Need::Gateway(Action::MessageRead) {
        let seeing = authority.clone();
        let caller = Caller::seeing(move |repo| seeing.may_read(&identity, repo));
        request.extensions_mut().insert(caller.with_unlisted(true));
    } else if matches!(
        need,
        Need::Catalog | Need::Repository(_, Action::MetadataRead)
    ) {
        let sync_reader = authority.allows(&identity, Target::Registry, Action::MessageRead);
        let seeing = authority.clone();
        let caller = Caller::seeing(move |repo| seeing.may_list(&identity, repo));
        request
            .extensions_mut()
            .insert(caller.with_unlisted(sync_reader));
    }
    next.run(request).await
}

/// Drops `mount` and `from` from an upload start's query.
fn strip_mount(request: &mut Request) {
    let uri = request.uri();
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
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// The Docker token scope a need asks for, as a challenge names it.
fn scope_of(need: &Need) -> Option<String> {
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
fn challenge(addressed: &Addressed, need: &Need, error: Option<&str>, message: &str) -> Response {
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
