//! Request metrics of the registry's HTTP API, for Prometheus: requests by route, method and
//! status, latency histograms by route, and request and response body bytes by route.
//!
//! The manifest GET answers tens of thousands of requests a second, so counting costs a few
//! relaxed atomic additions: every counter lives in an array allocated once, indexed by a small
//! [`Route`] (never the raw path, so no label grows without bound), the method and the status
//! out of a fixed list. Nothing is allocated per request, except a counting wrapper around a
//! body whose length is not known in advance (uploads, streamed bodies). `serve` adds the layer
//! only with `--admin`; without it the router is served bare.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use http::Method;
use http_body::Body as HttpBody;
use tower::{Layer, Service};

use super::watched_body::{watched, Count};

/// What a request asked for, from its path: the label `route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/NAME/manifests/REF`
    Manifest,
    /// `/v2/NAME/blobs/DIGEST`
    Blob,
    /// `/v2/NAME/blobs/uploads/[ID]`
    Upload,
    /// `/v2/NAME/tags/list`
    Tags,
    /// `/v2/NAME/referrers/DIGEST`
    Referrers,
    /// `/acr/...`: the change feed and sync status
    Acr,
    /// anything else
    Other,
}

const ROUTES: [&str; 9] = [
    "base",
    "catalog",
    "manifest",
    "blob",
    "upload",
    "tags",
    "referrers",
    "acr",
    "other",
];

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "other"];

/// The statuses the registry answers with; any other is counted under its class (`4xx`).
const STATUSES: [u16; 17] = [
    200, 201, 202, 204, 206, 307, 400, 401, 403, 404, 405, 409, 413, 416, 429, 500, 503,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATUS_SLOTS: usize = STATUSES.len() + CLASSES.len();

/// Upper bounds of the latency buckets, in seconds (`+Inf` follows).
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

impl Route {
    /// The route of `path`, as the dispatcher reads it (`v2::parse_route`: from the end, since
    /// a repository name may hold `manifests` or `blobs` as a component).
    pub fn of(path: &str) -> Route {
        use super::v2::Route as V2;
        if path == "/v2" || path == "/v2/" {
            return Route::Base;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path.starts_with("/acr/") {
                Route::Acr
            } else {
                Route::Other
            };
        };
        match super::v2::parse_route(rest) {
            Some(V2::Catalog) => Route::Catalog,
            Some(V2::Tags(_)) => Route::Tags,
            Some(V2::Manifest(..)) => Route::Manifest,
            Some(V2::Referrers(..)) => Route::Referrers,
            Some(V2::UploadStart(_) | V2::Upload(..)) => Route::Upload,
            Some(V2::Blob(..)) => Route::Blob,
            None => Route::Other,
        }
    }
}

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::PUT => 2,
        Method::POST => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        _ => 6,
    }
}

fn status_slot(status: u16) -> usize {
    match STATUSES.iter().position(|&s| s == status) {
        Some(i) => i,
        None => STATUSES.len() + usize::from(status / 100).clamp(1, 5) - 1,
    }
}

fn status_label(slot: usize) -> std::borrow::Cow<'static, str> {
    match STATUSES.get(slot) {
        Some(code) => code.to_string().into(),
        None => CLASSES[slot - STATUSES.len()].into(),
    }
}

/// The request counters of one registry process.
pub struct HttpMetrics {
    /// route × method × status slot
    requests: Box<[AtomicU64]>,
    /// route × bucket (not cumulative; `+Inf` last)
    latency: Box<[AtomicU64]>,
    /// route: total latency in nanoseconds
    latency_nanos: Box<[AtomicU64]>,
    /// route: request body bytes read
    bytes_in: Box<[AtomicU64]>,
    /// route: response body bytes
    bytes_out: Box<[AtomicU64]>,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: counters(ROUTES.len() * METHODS.len() * STATUS_SLOTS),
            latency: counters(ROUTES.len() * (BUCKETS.len() + 1)),
            latency_nanos: counters(ROUTES.len()),
            bytes_in: counters(ROUTES.len()),
            bytes_out: counters(ROUTES.len()),
        }
    }
}

impl HttpMetrics {
    /// Counts one answered request.
    fn answered(&self, route: Route, method: usize, status: u16, start: Instant) {
        let r = route as usize;
        let cell = (r * METHODS.len() + method) * STATUS_SLOTS + status_slot(status);
        self.requests[cell].fetch_add(1, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.latency[r * (BUCKETS.len() + 1) + bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_nanos[r].fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends the Prometheus text exposition of these counters to `out`.
    pub fn render(&self, out: &mut String) {
        let ld = Ordering::Relaxed;
        out.push_str(
            "# HELP connected_registry_http_requests_total Requests answered, by route, method and status.\n\
             # TYPE connected_registry_http_requests_total counter\n",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for slot in 0..STATUS_SLOTS {
                    let n = self.requests[(r * METHODS.len() + m) * STATUS_SLOTS + slot].load(ld);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "connected_registry_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{}\"}} {n}",
                            status_label(slot)
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP connected_registry_http_request_duration_seconds Time from a request to its response head, by route.\n\
             # TYPE connected_registry_http_request_duration_seconds histogram\n",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let cells = &self.latency[r * (BUCKETS.len() + 1)..(r + 1) * (BUCKETS.len() + 1)];
            let counts: Vec<u64> = cells.iter().map(|c| c.load(ld)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, n) in counts.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "connected_registry_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = self.latency_nanos[r].load(ld) as f64 / 1e9;
            let _ = writeln!(
                out,
                "connected_registry_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}\n\
                 connected_registry_http_request_duration_seconds_count{{route=\"{route}\"}} {total}"
            );
        }
        for (name, help, values) in [
            (
                "connected_registry_http_request_bytes_total",
                "Request body bytes received, by route.",
                &self.bytes_in,
            ),
            (
                "connected_registry_http_response_bytes_total",
                "Response body bytes sent, by route (a body of known length counts when its head is sent).",
                &self.bytes_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (r, route) in ROUTES.iter().enumerate() {
                let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", values[r].load(ld));
            }
        }
    }
}

/// The layer `serve --admin` puts on the router: counts every request in [`HttpMetrics`].
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<HttpMetrics>);

impl<S> Layer<S> for MetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> Service<Request> for Counted<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = Route::of(request.uri().path());
        let method = method_slot(request.method());
        // A request without a body (GET, HEAD, DELETE) is passed on untouched.
        let request = if request.body().is_end_stream() {
            request
        } else {
            let (metrics, r) = (self.metrics.clone(), route as usize);
            request.map(|body| {
                watched(
                    body,
                    Count(move |n| {
                        metrics.bytes_in[r].fetch_add(n, Ordering::Relaxed);
                    }),
                )
            })
        };
        CountedFuture {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            route,
            method,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, counted when its head is ready.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<HttpMetrics>,
        route: Route,
        method: usize,
        start: Instant,
    }
}

impl<F> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let metrics = this.metrics;
        let r = *this.route as usize;
        metrics.answered(
            *this.route,
            *this.method,
            response.status().as_u16(),
            *this.start,
        );
        let response = match response.body().size_hint().exact() {
            Some(len) => {
                metrics.bytes_out[r].fetch_add(len, Ordering::Relaxed);
                response
            }
            None => {
                let metrics = metrics.clone();
                response.map(|body| {
                    watched(
                        body,
                        Count(move |n| {
                            metrics.bytes_out[r].fetch_add(n, Ordering::Relaxed);
                        }),
                    )
                })
            }
        };
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_the_end_of_the_path() {
        let cases = [
            ("/v2/", Route::Base),
            ("/v2", Route::Base),
            ("/v2/_catalog", Route::Catalog),
            ("/v2/a/b/manifests/v1", Route::Manifest),
            ("/v2/manifests/blobs/manifests/sha256:ab", Route::Manifest),
            ("/v2/a/blobs/sha256:ab", Route::Blob),
            ("/v2/a/blobs/uploads/", Route::Upload),
            ("/v2/a/blobs/uploads/some-id", Route::Upload),
            ("/v2/a/tags/list", Route::Tags),
            ("/v2/a/referrers/sha256:ab", Route::Referrers),
            ("/acr/v1/_changes", Route::Acr),
            ("/metrics", Route::Other),
            ("/v2/a/nothing/here", Route::Other),
        ];
        for (path, route) in cases {
            assert_eq!(Route::of(path), route, "{path}");
        }
    }

    #[test]
    fn unlisted_statuses_count_under_their_class() {
        assert_eq!(status_label(status_slot(404)), "404");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(502)), "5xx");
        assert_eq!(status_label(status_slot(302)), "3xx");
    }

    #[test]
    fn a_request_lands_in_its_cell_and_bucket() {
        let m = HttpMetrics::default();
        m.answered(
            Route::Manifest,
            method_slot(&Method::GET),
            200,
            Instant::now(),
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "connected_registry_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 1\n"
        ), "{out}");
        assert!(out.contains(
            "connected_registry_http_request_duration_seconds_bucket{route=\"manifest\",le=\"+Inf\"} 1\n"
        ), "{out}");
        assert!(out.contains(
            "connected_registry_http_request_duration_seconds_count{route=\"manifest\"} 1\n"
        ));
    }
}
