//! `serve --admin IP:PORT`: the registry's admin listener, with the proxy's paths: `/metrics`
//! (Prometheus text), `/healthz` (the process answers) and `/readyz` (the store answers, the
//! disk has room, sync is not failing for too long). Plain HTTP and unauthenticated, like the
//! proxy's: bind it to an address only operators reach. No header, token or path is a label.
//! `/healthz` and `/readyz` are also served on the registry's main port ([`health_routes`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use registry::api::metrics::HttpMetrics;
use registry::storage::usage::Usage;
use registry::{MinFree, Store};
use sync::service::SyncService;

/// The admin listener's flags (`serve`).
#[derive(clap::Args)]
pub struct AdminFlags {
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (plain HTTP, no
    /// authentication: an address only operators reach). Off by default, and with it off the
    /// registry counts nothing per request.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_ADMIN",
        value_name = "HOST:PORT",
        value_parser = proxy::config::listen_addr
    )]
    pub admin: Option<SocketAddr>,

    /// /readyz fails while the data directory's disk has less free space than this: bytes
    /// (`67108864`, `64MiB`, `1GiB`) or a share of the disk (`1%`).
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_READY_MIN_FREE",
        value_name = "BYTES|N%",
        default_value = "64MiB"
    )]
    pub ready_min_free: MinFree,

    /// /readyz fails once sync passes have been failing for longer than this (with a parent).
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_READY_MAX_SYNC_FAILURE",
        value_name = "DUR",
        default_value = "1h",
        value_parser = super::parse_duration
    )]
    pub ready_max_sync_failure: Duration,
}

/// Garbage collections while serving, for metrics.
#[derive(Default)]
pub struct GcTotals {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub blobs_deleted: AtomicU64,
}

impl GcTotals {
    /// Adds the outcome of one collection.
    pub fn add(&self, result: Result<&registry::storage::GcReport, ()>) {
        match result {
            Ok(report) => {
                self.runs.fetch_add(1, Ordering::Relaxed);
                self.bytes_freed
                    .fetch_add(report.bytes_freed, Ordering::Relaxed);
                self.blobs_deleted
                    .fetch_add(report.blobs_deleted as u64, Ordering::Relaxed);
            }
            Err(()) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Everything the admin listener reports on.
pub struct Ops {
    pub store: Store,
    pub http: Arc<HttpMetrics>,
    pub sync: Option<Arc<SyncService>>,
    pub gc: Arc<GcTotals>,
    /// The built-in proxy's server certificate chain (`--proxy-listen`), for days to expiry.
    pub cert: Option<PathBuf>,
    pub min_free: MinFree,
    pub max_sync_failure: Duration,
    /// The last walk of the store, reused for a few seconds: scrapers may be many.
    usage: Mutex<Option<(Instant, Usage)>>,
}

/// How long a walk of the store is reused.
const USAGE_FRESH: Duration = Duration::from_secs(10);

impl Ops {
    pub fn new(store: Store, http: Arc<HttpMetrics>, gc: Arc<GcTotals>, flags: &AdminFlags) -> Ops {
        Ops {
            store,
            http,
            sync: None,
            gc,
            cert: None,
            min_free: flags.ready_min_free,
            max_sync_failure: flags.ready_max_sync_failure,
            usage: Mutex::new(None),
        }
    }
}

/// Binds `addr` for the admin listener (before the store opens: a port in use is refused early).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr} (--admin): {err}"))
}

/// What `/readyz` checks: the same on the admin listener and on the registry's main port.
#[derive(Clone)]
pub struct Readiness {
    pub store: Store,
    pub sync: Option<Arc<SyncService>>,
    pub min_free: MinFree,
    pub max_sync_failure: Duration,
}

impl Readiness {
    pub fn new(store: Store, sync: Option<Arc<SyncService>>, flags: &AdminFlags) -> Readiness {
        Readiness {
            store,
            sync,
            min_free: flags.ready_min_free,
            max_sync_failure: flags.ready_max_sync_failure,
        }
    }
}

/// `/healthz` (the process answers) and `/readyz` (see [`Readiness`]): cheap, unauthenticated,
/// for the admin listener and for the registry's main port (where orchestrators probe).
pub fn health_routes(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(ready))
}

/// Serves the admin paths on `listener` until the process stops.
pub fn spawn(listener: tokio::net::TcpListener, ops: Ops) {
    let ready = Readiness {
        store: ops.store.clone(),
        sync: ops.sync.clone(),
        min_free: ops.min_free,
        max_sync_failure: ops.max_sync_failure,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(ops))
        .merge(health_routes(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n") });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("admin listener on http://{addr}: /metrics, /healthz, /readyz");
    }
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!("admin listener (--admin) failed: {err}");
        }
    });
}

fn unix_now() -> i64 {
    i64::try_from(util::time::now_secs()).unwrap_or(i64::MAX)
}

/// `/readyz`: 200 `ready`, or 503 `not ready: WHY`.
async fn readyz(State(ops): State<Arc<Readiness>>) -> impl IntoResponse {
    match readiness(&ops).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn readiness(ops: &Readiness) -> Result<(), String> {
    let store = ops.store.clone();
    let checked = tokio::task::spawn_blocking(move || {
        store
            .repos_page("", 1)
            .map_err(|err| format!("the store does not answer: {err}"))?;
        store.disk_space().map_err(|err| {
            format!("cannot read the free space of the data directory's disk: {err}")
        })
    })
    .await
    .map_err(|err| format!("the readiness check failed (internal): {err}"))?;
    let disk = checked?;
    let min = ops.min_free.bytes(disk.total_bytes);
    if disk.free_bytes < min {
        return Err(format!(
            "{} bytes free on the data directory's disk, below --ready-min-free ({min} bytes)",
            disk.free_bytes
        ));
    }
    if let Some(sync) = &ops.sync {
        let status = sync.status();
        if let Some(since) = status.failing_since {
            let failing = unix_now().saturating_sub(since.timestamp());
            if failing > ops.max_sync_failure.as_secs() as i64 {
                return Err(format!(
                    "sync with the parent has failed since {since} (longer than --ready-max-sync-failure {}): {}",
                    sync::settings::format_iso_duration(ops.max_sync_failure),
                    status.errors.first().map(String::as_str).unwrap_or("no error recorded")
                ));
            }
        }
    }
    Ok(())
}

/// `/metrics`: the Prometheus text exposition.
async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let usage = usage(&ops).await;
    let mut out = String::with_capacity(8192);
    ops.http.render(&mut out);
    match &usage {
        Ok(u) => {
            let gauges: [(&str, &str, u64); 5] = [
                (
                    "connected_registry_blobs",
                    "Blob files stored (layers, configs, manifests).",
                    u.blobs,
                ),
                (
                    "connected_registry_blob_bytes",
                    "Bytes of the blob files stored.",
                    u.blob_bytes,
                ),
                (
                    "connected_registry_uploads_open",
                    "Upload sessions on disk.",
                    u.uploads_open,
                ),
                (
                    "connected_registry_disk_free_bytes",
                    "Free bytes on the data directory's disk.",
                    u.disk.free_bytes,
                ),
                (
                    "connected_registry_disk_size_bytes",
                    "Size of the data directory's disk.",
                    u.disk.total_bytes,
                ),
            ];
            for (name, help, value) in gauges {
                single(&mut out, name, "gauge", help, &value);
            }
        }
        Err(err) => tracing::warn!("metrics: cannot read the store's usage: {err}"),
    }
    let ld = Ordering::Relaxed;
    let gc = &ops.gc;
    let (evictions, evicted_bytes) = ops.store.evictions_total();
    let counters: [(&str, &str, u64); 7] = [
        (
            "connected_registry_quarantined_files_total",
            "Damaged blob and manifest files found on read or scrub and moved to DATA/quarantine.",
            ops.store.quarantined_total(),
        ),
        (
            "connected_registry_gc_runs_total",
            "Garbage collections finished while serving.",
            gc.runs.load(ld),
        ),
        (
            "connected_registry_gc_failures_total",
            "Garbage collections that failed.",
            gc.failures.load(ld),
        ),
        (
            "connected_registry_gc_freed_bytes_total",
            "Bytes of blob files garbage collection removed.",
            gc.bytes_freed.load(ld),
        ),
        (
            "connected_registry_gc_deleted_blobs_total",
            "Blob files garbage collection removed.",
            gc.blobs_deleted.load(ld),
        ),
        (
            "connected_registry_evictions_total",
            "Synced tags evicted to keep the store under --quota (each is logged with why).",
            evictions,
        ),
        (
            "connected_registry_evicted_bytes_total",
            "Bytes of blob files deleted by evictions under --quota.",
            evicted_bytes,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, &value);
    }
    if let Some(expiry) = ops
        .cert
        .as_deref()
        .and_then(|path| certs::renew::expiry_unix_seconds(path).ok())
    {
        single(
            &mut out,
            "connected_registry_server_cert_expiry_timestamp_seconds",
            "gauge",
            "When the built-in proxy's server certificate expires (Unix seconds).",
            &expiry,
        );
    }
    if let Some(sync) = &ops.sync {
        render_sync(&mut out, sync);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn render_sync(out: &mut String, sync: &SyncService) {
    let totals = sync.totals();
    let status = sync.status();
    let ld = Ordering::Relaxed;
    let passes: Vec<(&str, u64)> = sync::totals::OUTCOMES
        .into_iter()
        .zip(totals.passes())
        .collect();
    family(
        out,
        "connected_registry_sync_passes_total",
        "Sync passes finished, by outcome.",
        "outcome",
        &passes,
    );
    family(
        out,
        "connected_registry_sync_bytes_total",
        "Blob bytes sync moved, by direction.",
        "direction",
        &[
            ("down", totals.bytes_down.load(ld)),
            ("up", totals.bytes_up.load(ld)),
        ],
    );
    family(
        out,
        "connected_registry_sync_tags_total",
        "Tags sync changed here, by change.",
        "change",
        &[
            ("updated", totals.tags_updated.load(ld)),
            ("deleted", totals.tags_deleted.load(ld)),
        ],
    );
    single(
        out,
        "connected_registry_sync_manifests_pushed_total",
        "counter",
        "Manifests pushed up to the parent.",
        &totals.manifests_pushed.load(ld),
    );
    let errors = totals.errors();
    let errors: Vec<(&str, u64)> = errors.iter().map(|(f, n)| (f.as_str(), *n)).collect();
    family(
        out,
        "connected_registry_sync_errors_total",
        "Sync errors, by fault (client, upstream, local, internal).",
        "fault",
        &errors,
    );
    single(
        out,
        "connected_registry_sync_running",
        "gauge",
        "Whether a sync pass runs now.",
        &u8::from(status.running),
    );
    if let Some(done) = status.last_completed {
        single(
            out,
            "connected_registry_sync_lag_seconds",
            "gauge",
            "Seconds since the start of the last sync pass that completed (content here is at least that recent).",
            &unix_now().saturating_sub(done.timestamp()).max(0),
        );
    }
}

/// A metric with one sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// A counter family with one label, one sample per value.
fn family(out: &mut String, name: &str, help: &str, label: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// The store's usage, walked at most every [`USAGE_FRESH`].
async fn usage(ops: &Ops) -> std::io::Result<Usage> {
    if let Some((at, usage)) = *ops.usage.lock().unwrap_or_else(|e| e.into_inner()) {
        if at.elapsed() < USAGE_FRESH {
            return Ok(usage);
        }
    }
    let store = ops.store.clone();
    let usage = tokio::task::spawn_blocking(move || store.usage())
        .await
        .map_err(std::io::Error::other)??;
    *ops.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), usage));
    Ok(usage)
}
