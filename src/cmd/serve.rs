//! `connected-registry serve`: the OCI Distribution registry on the local store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use registry::{Limits, Store};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on, IP:PORT or HOST:PORT (plain HTTP; TLS is the proxy's job). A host
    /// name binds its first IPv4 address (localhost: 127.0.0.1). The IoT Edge module uses 0.0.0.0:8080.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT",
        value_parser = proxy::config::listen_addr
    )]
    pub listen: SocketAddr,

    /// Data directory: blobs, metadata (meta.redb), upload sessions.
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    /// Largest manifest accepted, in bytes (manifests are read whole to be validated).
    #[arg(long, env = "CONNECTED_REGISTRY_MAX_MANIFEST_SIZE", default_value_t = Limits::default().max_manifest_size)]
    pub max_manifest_size: u64,

    /// Memory for recently served manifests, in bytes.
    #[arg(long, env = "CONNECTED_REGISTRY_MANIFEST_CACHE_SIZE", default_value_t = Limits::default().manifest_cache_bytes)]
    pub manifest_cache_size: usize,

    /// Free space kept on the data directory's filesystem, so the device's own system keeps
    /// working: a share (5%) or a size (512MiB, 2GiB, 0 for none). Uploads and manifests that
    /// would go below it are refused with 507 before the disk is full; sync's writes too.
    #[arg(long, env = "CONNECTED_REGISTRY_MIN_FREE", default_value = registry::MinFree::DEFAULT, value_name = "SIZE|PERCENT")]
    pub min_free: registry::MinFree,

    /// Most bytes of blob files to keep (500MiB, 20GiB; sizes as --min-free). Above it, images
    /// sync brought down are evicted, least recently pulled first, after each sync pass and at
    /// the GC interval; content pushed here is never evicted. An evicted tag stays listed and
    /// comes back with the next sync pass after a client asks for it. None by default.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_QUOTA",
        value_name = "SIZE",
        value_parser = registry::storage::quota::parse_quota
    )]
    pub quota: Option<u64>,

    /// When a blob read checks the bytes against the digest: `once` (the first complete read of
    /// each blob after start) or `always` (every complete read; costs throughput, see README
    /// Performance). A damaged file is quarantined and the read fails; manifests are always checked.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_VERIFY_READS",
        default_value = "once",
        value_name = "once|always"
    )]
    pub verify_reads: registry::storage::VerifyReads,

    /// On SIGTERM or Ctrl-C: stop accepting connections, let requests in flight finish for at
    /// most this long, then cut the rest (an upload cut short resumes from what was stored) and
    /// exit 0.
    #[arg(long, env = "CONNECTED_REGISTRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = super::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often to collect garbage while serving (0s: never).
    #[arg(long, env = "CONNECTED_REGISTRY_GC_INTERVAL", default_value = "1h", value_parser = super::parse_duration)]
    pub gc_interval: Duration,

    /// Also serve TLS on this address through the built-in API proxy (routes `/v2`, `/acr` and
    /// `/oauth2` to this registry), with a development certificate chain generated in DATA/certs
    /// unless --proxy-cert/--proxy-key are given: the one-command local setup. On 0.0.0.0 or
    /// :: the development certificate also names this machine's hostname and addresses.
    /// In IoT Edge the proxy is its own module (`proxy`).
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_PROXY_LISTEN",
        value_name = "HOST:PORT",
        value_parser = proxy::config::listen_addr
    )]
    pub proxy_listen: Option<SocketAddr>,

    /// One more DNS name or IP address for the development certificate of --proxy-listen
    /// (repeatable, or comma-separated), e.g. the name clients use through a NAT.
    #[arg(
        long = "proxy-name",
        env = "CONNECTED_REGISTRY_PROXY_NAMES",
        value_name = "NAME",
        value_delimiter = ',',
        requires = "proxy_listen",
        conflicts_with = "proxy_cert"
    )]
    pub proxy_names: Vec<String>,

    /// Server certificate chain (PEM, leaf first) for --proxy-listen instead of the development
    /// chain; reloaded when it changes.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_PROXY_CERT",
        value_name = "CHAIN.pem",
        requires_all = ["proxy_listen", "proxy_key"]
    )]
    pub proxy_cert: Option<PathBuf>,

    /// Private key (PEM) of --proxy-cert.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_PROXY_KEY",
        value_name = "KEY.pem",
        requires = "proxy_cert"
    )]
    pub proxy_key: Option<PathBuf>,

    /// Log one line per request (target `access`: method, path without the query, status,
    /// bytes sent, duration, client address; never a header or token).
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_ACCESS_LOG",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub access_log: bool,

    #[command(flatten)]
    pub gc: super::gc::GcFlags,

    #[command(flatten)]
    pub admin: super::admin::AdminFlags,

    #[command(flatten)]
    pub access: super::access::AccessConfigFlags,

    #[command(flatten)]
    pub sync: Box<super::sync::SyncFlags>,

    #[command(flatten)]
    pub auth: super::auth::AuthFlags,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Every setting is checked, and the port taken, before anything is written to disk: a
    // refused command leaves no data directory behind.
    let sync = super::sync::Prepared::from_flags(&args.sync)?;
    let writes = client_writes(sync.as_ref(), args.sync.mode.as_deref())?;
    let message_ttl = sync::settings::message_ttl(args.sync.message_ttl.as_deref())?;
    let auth_settings = args.auth.settings()?;
    super::check_data_dir(&args.data, super::MissingData::Create)?;
    let port =
        claim_port(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = match args.admin.admin {
        Some(addr) => Some(super::admin::bind(addr).await?),
        None => None,
    };
    let limits = Limits {
        max_manifest_size: args.max_manifest_size,
        manifest_cache_bytes: args.manifest_cache_size,
        min_free: args.min_free,
        verify_reads: args.verify_reads,
        quota: args.quota,
    };
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, limits))
        .await?
        .with_context(|| format!("cannot open the data directory {}", args.data.display()))?;
    let gc_totals = Arc::new(super::admin::GcTotals::default());
    if !args.gc_interval.is_zero() {
        tokio::spawn(collect_garbage(
            store.clone(),
            args.gc_interval,
            args.gc.options(),
            gc_totals.clone(),
        ));
    }
    let background = sync
        .map(|sync| sync.start_background(store.clone(), &args.data))
        .transpose()?;
    let sync_service = background.as_ref().map(|b| b.service.clone());
    let ready = super::admin::Readiness::new(store.clone(), sync_service.clone(), &args.admin);
    let options = registry::api::Options {
        miss_hint: background.as_ref().map(|b| b.miss_hint.clone()),
        writes,
    };
    let mut app = registry::api::router_with(store.clone(), options);
    match background {
        // The sync service prunes the change log itself, sparing what still has to go up.
        Some(background) => app = app.merge(background.status),
        // With no parent nothing goes up: keep changes for children for messageTtl.
        None => {
            tokio::spawn(prune_change_log(store.clone(), message_ttl));
        }
    }
    let data = args.data.clone();
    let authority = tokio::task::spawn_blocking(move || {
        super::auth::open(&args.auth, auth_settings, &data, &args.access)
    })
    .await??;
    if let Some(authority) = &authority {
        // Management commands (`token`, `scope-map`) reach this authority on DATA/admin.sock.
        super::admin_socket::spawn(&args.data, authority.clone())?;
        app = registry::api::auth::guard(
            app.merge(registry::api::auth::token::routes(authority.clone())),
            authority.clone(),
        );
    }
    // Only now, with the store and the token set open (and the admin socket bound): whoever
    // waits for the port finds a registry that serves and answers management commands.
    let listener = port
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // With --admin, every request is counted; without it the router has no such layer.
    let mut ops = admin.map(|listener| {
        let http = Arc::new(registry::api::metrics::HttpMetrics::default());
        app = std::mem::take(&mut app).layer(registry::api::metrics::MetricsLayer(http.clone()));
        let mut ops = super::admin::Ops::new(store.clone(), http, gc_totals, &args.admin);
        ops.sync = sync_service;
        (listener, ops)
    });
    // Probes on the main port too (orchestrators probe the port they route to), merged after
    // the access guard and the metrics layer: probes need no credentials and are not counted.
    app = app.merge(super::admin::health_routes(ready));
    if let Some(tls) = args.proxy_listen {
        let chain = match (&args.proxy_cert, &args.proxy_key) {
            (Some(cert), Some(key)) => ServerChain::Given {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => ServerChain::Development {
                dir: args.data.join("certs"),
                names: super::proxy::dev_names(tls, &args.proxy_names),
            },
        };
        let cert = start_local_proxy(tls, listener.local_addr()?, chain).await?;
        if let Some((_, ops)) = &mut ops {
            ops.cert = Some(cert);
        }
    }
    if let Some((listener, ops)) = ops {
        super::admin::spawn(listener, ops);
    }
    tracing::info!(
        listen = %args.listen,
        data = %args.data.display(),
        access_log = args.access_log,
        "registry serving /v2 over plain HTTP"
    );
    // The log filter is fixed at start: with the access log off (the setting, or a RUST_LOG
    // that drops target `access`) the router is served bare, with no per-request layer at all.
    let logging = args.access_log && tracing::enabled!(target: "access", tracing::Level::INFO);
    let grace = args.shutdown_grace;
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stop = {
        let stopping = stopping.clone();
        async move {
            util::shutdown::signal().await;
            tracing::info!(?grace, "stopping: no new connections; requests in flight may finish within the grace period (--shutdown-grace)");
            stopping.notify_one();
        }
    };
    let serving = async {
        if logging {
            let app = registry::api::access_log::WithAccessLog::new(app, true);
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        } else {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "requests still in flight at the end of the grace period are cut (--shutdown-grace); upload sessions keep what they stored");
            Ok(())
        }
    };
    served.context("server failed")?;
    tracing::info!("registry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Whether clients may write: the sync mode decides (ReadOnly, a child's default, refuses every
/// client write; sync still writes what it brings down). A registry with no parent takes
/// pushes unless `--mode ReadOnly` says otherwise.
fn client_writes(
    sync: Option<&super::sync::Prepared>,
    mode: Option<&str>,
) -> anyhow::Result<registry::api::Writes> {
    let mode = match (sync, mode) {
        (Some(sync), _) => sync.mode(),
        (None, Some(mode)) => mode.parse()?,
        (None, None) => sync::settings::Mode::ReadWrite,
    };
    Ok(match mode {
        sync::settings::Mode::ReadOnly => registry::api::Writes::Refused,
        sync::settings::Mode::ReadWrite => registry::api::Writes::Allowed,
    })
}

/// The certificate the built-in proxy serves.
enum ServerChain {
    /// The operator's own (`--proxy-cert`/`--proxy-key`).
    Given { cert: PathBuf, key: PathBuf },
    /// The development chain in `dir`, its server certificate covering `names`.
    Development { dir: PathBuf, names: Vec<String> },
}

/// Connections waiting to be accepted, as `TcpListener::bind` has it.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` without listening yet: a port in use is refused before anything is written to
/// disk, and connections are accepted only once the store is open (until then they are
/// refused, so whoever waits for the port finds a registry that serves, and `gc` cannot open
/// the store under a registry that is starting).
fn claim_port(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// The API proxy in this process, in front of this registry; returns its server chain's path.
async fn start_local_proxy(
    tls: SocketAddr,
    registry: SocketAddr,
    chain: ServerChain,
) -> anyhow::Result<PathBuf> {
    let mut upstream = registry;
    if upstream.ip().is_unspecified() {
        upstream.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (cert, key) = match chain {
        ServerChain::Given { cert, key } => (cert, key),
        ServerChain::Development { dir, names } => {
            let dev = super::proxy::dev_certificates(&dir, &names).await?;
            tokio::spawn(super::proxy::renew_dev_chain(dir, names));
            (dev.server_chain, dev.server_key)
        }
    };
    let flags = proxy::Flags {
        listen: Some(tls.to_string()),
        cert: Some(cert.clone()),
        key: Some(key),
        routes: ["/v2", "/acr", "/oauth2"]
            .iter()
            .map(|prefix| format!("{prefix}=http://{upstream}"))
            .collect(),
        ..Default::default()
    };
    // The IoT Edge variables configure the proxy module, not this built-in one.
    let no_env = |_: &str| None;
    let config = proxy::Config::load(&flags, &no_env).context("built-in proxy configuration")?;
    let loader = Box::new(move || proxy::Config::load(&flags, &no_env));
    let server = proxy::Proxy::bind(config, loader)
        .await
        .context("starting the built-in proxy")?;
    tracing::info!(
        "TLS on https://{} through the built-in proxy",
        server.local_addr()?
    );
    tokio::spawn(server.serve());
    Ok(cert)
}

/// Drops change-log entries older than `ttl`, hourly: a child away longer falls back once to
/// a full comparison (the feed says `reset`).
async fn prune_change_log(store: Store, ttl: Duration) {
    let mut ticks = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticks.tick().await;
        let before = util::time::now_secs().saturating_sub(ttl.as_secs());
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.prune_changes(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("pruned {n} change-log entries older than messageTtl"),
            Ok(Err(err)) => tracing::error!("pruning the change log failed: {err}"),
            Err(err) => tracing::error!("change-log pruning task failed: {err}"),
        }
    }
}

/// Collects garbage every `interval`, first one `interval` after start, then evicts down to
/// the quota if one is set.
async fn collect_garbage(
    store: Store,
    interval: Duration,
    options: registry::storage::GcOptions,
    totals: Arc<super::admin::GcTotals>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        let store = store.clone();
        let options = options.clone();
        let collected = tokio::task::spawn_blocking(move || {
            let report = store.gc(&options);
            // Pull times are flushed here too (enforce_quota starts with that).
            if let Err(err) = store.enforce_quota() {
                tracing::error!("evicting synced images down to the quota (--quota) failed: {err}");
            }
            report
        });
        match collected.await {
            Ok(Ok(report)) => {
                totals.add(Ok(&report));
                tracing::info!(?report, "garbage collected")
            }
            Ok(Err(err)) => {
                totals.add(Err(()));
                tracing::error!("garbage collection failed: {err}")
            }
            Err(err) => {
                totals.add(Err(()));
                tracing::error!("garbage collection task failed: {err}")
            }
        }
    }
}
