//! The registry's access log: one line per request, at info level with target `access` (as the
//! proxy's), saying method, path, status, bytes sent, duration, client address and request id
//! (`X-Request-Id`, which the proxy sets: one pull can be followed across both), written when
//! the response body has been sent or the client went away. The query string is left out and
//! no header is ever logged: both can carry tokens (`Authorization`, `?token=`).
//!
//! The client's address belongs to the connection, so the log wraps the router once per
//! connection ([`WithAccessLog`] is what `axum::serve` gets) rather than attaching the address
//! to every request. A request costs, when the log is off (the setting, or a `RUST_LOG` that
//! drops target `access`), one check; when on, what the line needs: the method and URI, kept
//! until the body ends, and the body wrapper that counts its bytes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use http::{HeaderValue, Method, StatusCode, Uri};
use tower::Service;

use super::watched_body::{watched, Watch};

/// The router for `axum::serve`, with an access log unless `enabled` is false.
#[derive(Clone)]
pub struct WithAccessLog {
    router: Router,
    enabled: bool,
}

impl WithAccessLog {
    pub fn new(router: Router, enabled: bool) -> WithAccessLog {
        WithAccessLog { router, enabled }
    }
}

/// A new connection gets the router wrapped in an [`AccessLog`] that knows its client.
impl<'a, L> Service<IncomingStream<'a, L>> for WithAccessLog
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = AccessLog;
    type Error = Infallible;
    type Future = std::future::Ready<Result<AccessLog, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(AccessLog {
            router: self.router.clone(),
            enabled: self.enabled,
            client: *stream.remote_addr(),
        }))
    }
}

/// The router of one connection, logging each of its requests.
#[derive(Clone)]
pub struct AccessLog {
    router: Router,
    enabled: bool,
    client: SocketAddr,
}

impl Service<Request> for AccessLog {
    type Response = Response;
    type Error = Infallible;
    type Future = Logged<<Router as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // Access control counts failed logins per client address.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.client));
        let line = (self.enabled && tracing::enabled!(target: "access", tracing::Level::INFO))
            .then(|| Line {
                start: Instant::now(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                client: self.client,
                request_id: request.headers().get(util::request_id::HEADER).cloned(),
                status: None,
                bytes: 0,
                complete: false,
            });
        Logged {
            inner: self.router.call(request),
            line,
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's answer; with the log on, its body is wrapped to count what is sent.
    pub struct Logged<F> {
        #[pin]
        inner: F,
        line: Option<Line>,
    }
}

impl<F> Future for Logged<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match this.line.take() {
            None => response,
            Some(mut line) => {
                line.status = Some(response.status());
                response.map(|body| watched(body, line))
            }
        }))
    }
}

/// One access-log line in the making, written when dropped: after the body, or when the
/// request was abandoned before an answer (status `-`).
struct Line {
    start: Instant,
    method: Method,
    uri: Uri,
    client: SocketAddr,
    /// The `X-Request-Id` the request came with (a clone shares the header's bytes).
    request_id: Option<HeaderValue>,
    status: Option<StatusCode>,
    bytes: u64,
    complete: bool,
}

impl Drop for Line {
    fn drop(&mut self) {
        let millis = self.start.elapsed().as_secs_f64() * 1000.0;
        let ending = match (self.status, self.complete) {
            (_, true) => "",
            (None, false) => " error=\"client closed before the response\"",
            (Some(_), false) => " error=\"client closed before the end of the response\"",
        };
        tracing::info!(
            target: "access",
            "{} {} {} out={} {millis:.1}ms client={} rid={}{ending}",
            self.method,
            self.uri.path(),
            StatusText(self.status),
            self.bytes,
            self.client,
            RequestIdText(self.request_id.as_ref()),
        );
    }
}

/// A status code, or `-` for none.
struct StatusText(Option<StatusCode>);

impl std::fmt::Display for StatusText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some(code) => code.as_u16().fmt(f),
        }
    }
}

/// A request id fit for a log line (see `util::request_id::is_valid`), else `-`: a client
/// talking to the registry directly could send anything.
struct RequestIdText<'a>(Option<&'a HeaderValue>);

impl std::fmt::Display for RequestIdText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.map(|v| v.as_bytes()) {
            Some(id) if util::request_id::is_valid(id) => {
                f.write_str(std::str::from_utf8(id).map_err(|_| std::fmt::Error)?)
            }
            _ => f.write_str("-"),
        }
    }
}

impl Watch for Line {
    fn data(&mut self, n: u64) {
        self.bytes += n;
    }
    fn ended(&mut self) {
        self.complete = true;
    }
}
