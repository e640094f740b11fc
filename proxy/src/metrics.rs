//! Prometheus metrics of the proxy, served as text on the admin listener (`/metrics`), with
//! the probes `/healthz` (the process answers) and `/readyz` (ready for traffic).
//!
//! Plain atomics and one small map: a metrics library would cost more than it gives here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Counters and gauges of one proxy process.
#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// GET and HEAD requests sent to another upstream of their route after one failed
    /// before answering.
    pub retries: AtomicU64,
    /// The upstreams of routes with several: in service or not (`/readyz` reads it too).
    pub health: crate::balance::HealthBoard,
    /// upstream -> its request counts and durations (one lock per request, and no
    /// allocation once the upstream and status have been seen)
    per_upstream: Mutex<HashMap<String, UpstreamStats>>,
    /// (upstream, kind) -> count
    upstream_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Requests the proxy failed (or that failed on their way), by fault and retryability.
    failures: Mutex<BTreeMap<(&'static str, bool), u64>>,
    /// Client connections each worker thread serves now; the acceptor gives a new
    /// connection to the worker with the fewest.
    pub worker_connections: Box<[AtomicU64]>,
    /// The server certificate chain file, read at each scrape for its days to expiry: an
    /// operator's alert on it catches a rotation that stopped before clients see expired certs.
    pub server_cert: std::sync::OnceLock<std::path::PathBuf>,
    /// The acceptor runs on the TLS listener (set when it starts, cleared if it stops).
    pub listening: AtomicBool,
}

#[derive(Default)]
struct UpstreamStats {
    by_status: BTreeMap<u16, u64>,
    count: u64,
    seconds: f64,
}

impl Metrics {
    /// Metrics for a proxy with `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Metrics {
            worker_connections: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ..Metrics::default()
        }
    }

    /// The worker serving the fewest connections now.
    pub fn least_busy_worker(&self) -> usize {
        (0..self.worker_connections.len())
            .min_by_key(|&w| self.worker_connections[w].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn request(&self, upstream: &str, status: u16, seconds: f64) {
        let mut map = self.per_upstream.lock().unwrap_or_else(|e| e.into_inner());
        let stats = match map.get_mut(upstream) {
            Some(stats) => stats,
            None => map.entry(upstream.to_owned()).or_default(),
        };
        *stats.by_status.entry(status).or_default() += 1;
        stats.count += 1;
        stats.seconds += seconds;
    }

    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        *self
            .upstream_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((upstream.to_owned(), kind))
            .or_default() += 1;
    }

    /// Counts a request that failed, under the labels every part uses (`oci::fault`).
    pub fn failure(&self, class: oci::Class) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((class.fault.as_str(), class.retryable))
            .or_default() += 1;
    }

    /// Whether the proxy is ready for traffic (`/readyz`): its configuration loaded (a proxy
    /// exists only once it has), its server certificate readable and not expired, the TLS
    /// listener accepting, and every route with several upstreams with at least one in
    /// service. The error says what is missing.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err("the TLS listener is not accepting connections".into());
        }
        if let Some(why) = self.health.unready() {
            return Err(why);
        }
        let Some(path) = self.server_cert.get() else {
            return Err("no server certificate configured".into());
        };
        match certs::renew::days_to_expiry(path) {
            Ok(days) if days > 0.0 => Ok(()),
            Ok(_) => Err(format!(
                "the server certificate {} has expired",
                path.display()
            )),
            Err(err) => Err(format!(
                "the server certificate {} cannot be read: {err}",
                path.display()
            )),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ld = Ordering::Relaxed;
        let simple: [(&str, &str, &str, u64); 8] = [
            (
                "proxy_connections_total",
                "counter",
                "Client connections accepted.",
                self.connections_total.load(ld),
            ),
            (
                "proxy_connections_active",
                "gauge",
                "Client connections open now.",
                self.worker_connections.iter().map(|n| n.load(ld)).sum(),
            ),
            (
                "proxy_tls_handshake_failures_total",
                "counter",
                "Client TLS handshakes that failed or timed out.",
                self.tls_handshake_failures.load(ld),
            ),
            (
                "proxy_request_bytes_total",
                "counter",
                "Request body bytes received from clients.",
                self.bytes_in.load(ld),
            ),
            (
                "proxy_response_bytes_total",
                "counter",
                "Response body bytes sent to clients.",
                self.bytes_out.load(ld),
            ),
            (
                "proxy_reloads_total",
                "counter",
                "Successful reloads of config, certificate or trust bundle.",
                self.reloads_ok.load(ld),
            ),
            (
                "proxy_reload_failures_total",
                "counter",
                "Reloads that failed (the previous state stayed).",
                self.reloads_failed.load(ld),
            ),
            (
                "proxy_retries_total",
                "counter",
                "GET and HEAD requests sent to another upstream of their route after one failed before answering.",
                self.retries.load(ld),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out.push_str("# HELP proxy_worker_connections Client connections open now, by worker thread.\n# TYPE proxy_worker_connections gauge\n");
        for (worker, n) in self.worker_connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "proxy_worker_connections{{worker=\"{worker}\"}} {}",
                n.load(ld)
            );
        }
        if let Some(expiry) = self
            .server_cert
            .get()
            .and_then(|path| certs::renew::expiry_unix_seconds(path).ok())
        {
            let _ = writeln!(
                out,
                "# HELP connected_registry_server_cert_expiry_timestamp_seconds When the served certificate expires (Unix seconds).\n\
                 # TYPE connected_registry_server_cert_expiry_timestamp_seconds gauge\n\
                 connected_registry_server_cert_expiry_timestamp_seconds {expiry}"
            );
        }
        let map = self.per_upstream.lock().unwrap_or_else(|e| e.into_inner());
        let mut upstreams: Vec<_> = map.iter().collect();
        upstreams.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str("# HELP proxy_requests_total Requests answered, by upstream and status.\n# TYPE proxy_requests_total counter\n");
        for (up, stats) in &upstreams {
            for (status, n) in &stats.by_status {
                let _ = writeln!(
                    out,
                    "proxy_requests_total{{upstream=\"{}\",status=\"{status}\"}} {n}",
                    esc(up)
                );
            }
        }
        out.push_str("# HELP proxy_request_duration_seconds Time to the end of the response, by upstream.\n# TYPE proxy_request_duration_seconds summary\n");
        for (up, stats) in &upstreams {
            let _ = writeln!(
                out,
                "proxy_request_duration_seconds_sum{{upstream=\"{}\"}} {}",
                esc(up),
                stats.seconds
            );
            let _ = writeln!(
                out,
                "proxy_request_duration_seconds_count{{upstream=\"{}\"}} {}",
                esc(up),
                stats.count
            );
        }
        drop(map);
        self.health.render(&mut out, esc);
        out.push_str("# HELP proxy_upstream_errors_total Upstream failures, by upstream and kind.\n# TYPE proxy_upstream_errors_total counter\n");
        for ((up, kind), n) in self
            .upstream_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "proxy_upstream_errors_total{{upstream=\"{}\",kind=\"{kind}\"}} {n}",
                esc(up)
            );
        }
        out.push_str("# HELP proxy_failures_total Requests that failed, by fault (client, upstream, local, internal) and whether a retry can help.\n# TYPE proxy_failures_total counter\n");
        for ((fault, retryable), n) in self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "proxy_failures_total{{fault=\"{fault}\",retryable=\"{retryable}\"}} {n}"
            );
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!("admin listener: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let resp =
                            match req.uri().path() {
                                "/metrics" => Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(metrics.render()))),
                                "/healthz" => {
                                    Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                                }
                                "/readyz" => match metrics.readiness() {
                                    Ok(()) => Response::builder()
                                        .body(Full::new(Bytes::from_static(b"ready\n"))),
                                    Err(why) => Response::builder().status(503).body(Full::new(
                                        Bytes::from(format!("not ready: {why}\n")),
                                    )),
                                },
                                _ => Response::builder().status(404).body(Full::new(
                                    Bytes::from_static(b"try /metrics, /healthz or /readyz\n"),
                                )),
                            };
                        Ok::<_, http::Error>(resp.expect("static response parts are valid"))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
