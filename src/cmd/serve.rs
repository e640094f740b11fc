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
    /// name binds its first IPv4 address (localhost: 127.0.0.1). The IoT Edge module uses
    /// 0.0.0.0:8080. [default: 127.0.0.1:8080; none with --proxy-listen (one module, TLS only)]
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_LISTEN",
        value_name = "HOST:PORT",
        value_parser = proxy::config::listen_addr
    )]
    pub listen: Option<SocketAddr>,

    /// Data directory: blobs, metadata (meta.redb, unless --metadata is PostgreSQL), upload
    /// sessions (with --storage azblob://, blobs and sessions are in Azure Blob Storage).
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    #[command(flatten)]
    pub storage: super::storage::StorageFlags,

    /// Largest manifest accepted, in bytes (manifests are read whole to be validated).
    #[arg(long, env = "CONNECTED_REGISTRY_MAX_MANIFEST_SIZE", default_value_t = Limits::default().max_manifest_size)]
    pub max_manifest_size: u64,

    /// Memory for recently served manifests, in bytes.
    #[arg(long, env = "CONNECTED_REGISTRY_MANIFEST_CACHE_SIZE", default_value_t = Limits::default().manifest_cache_bytes)]
    pub manifest_cache_size: usize,

    /// How long this replica serves what a tag or digest resolves to without reading the
    /// metadata again. With --metadata on PostgreSQL (shared by replicas) a tag moved through
    /// another replica is served stale for at most this long; one moved through this replica,
    /// and with redb every one, shows at once. 0s turns the cache off (every manifest GET reads
    /// the metadata).
    #[arg(long, env = "CONNECTED_REGISTRY_METADATA_CACHE_TTL", default_value = "1s", value_parser = super::parse_duration)]
    pub metadata_cache_ttl: Duration,

    /// Memory for those cached resolutions, in bytes (estimated; when spent, the cache starts
    /// over).
    #[arg(long, env = "CONNECTED_REGISTRY_METADATA_CACHE_SIZE", default_value_t = Limits::default().metadata_cache_bytes)]
    pub metadata_cache_size: usize,

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

    /// The API proxy in this process (one module): `--proxy-listen HOST:PORT` serves TLS there,
    /// routing `/v2`, `/acr` and `/oauth2` to this registry by calling it directly (no
    /// connection) and other routes (`--proxy-default`, `--proxy-header-route`) over the
    /// network. Every `proxy` flag `--NAME` is `--proxy-NAME` here, with the environment
    /// variable `CONNECTED_REGISTRY_PROXY_NAME`; the IoT Edge API-proxy variables apply too.
    /// With no certificate configured, a development chain is generated in DATA/certs (on
    /// 0.0.0.0 or :: also naming this machine's hostname and addresses).
    #[command(flatten)]
    pub proxy: Box<super::proxy::Prefixed>,

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

    /// A proxy in front of this registry whose `X-Forwarded-For` (its last entry) names the
    /// client that failed logins count against: CIDR (e.g. 172.18.0.0/16) or one address,
    /// repeatable or comma-separated. None by default: the header is ignored and failures count
    /// against the peer. --proxy-listen needs none: in process the registry sees the client's
    /// own address.
    #[arg(
        long = "trusted-proxy",
        env = "CONNECTED_REGISTRY_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<registry::api::auth::TrustedProxy>,

    /// A child registry defined here whose last status report is older than this is shown
    /// `Offline` in the tree (`GET /acr/v1/_gateway/_tree`, `status --tree`). Children report
    /// at every sync pass (every `syncPollInterval`, PT1M by default, while a window is open).
    #[arg(long, env = "CONNECTED_REGISTRY_CHILD_OFFLINE_AFTER", default_value = "5m", value_parser = super::parse_duration)]
    pub child_offline_after: Duration,

    /// Print the effective settings (secrets redacted) and exit, without touching the data
    /// directory or the port.
    #[arg(long)]
    pub print_config: bool,

    #[command(flatten)]
    pub metadata: super::metadata::MetadataFlags,

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
    let sync = match super::sync::Prepared::from_flags(&args.sync)? {
        // A child defined at its parent takes its settings from there (under its own).
        Some(sync) => Some(sync.with_parent_config(&args.data).await?),
        None => None,
    };
    let writes = client_writes(sync.as_ref(), args.sync.mode.as_deref())?;
    // Read by the routes on every request; a child's sync sets it when its parent changes
    // the child's mode.
    let write_switch = registry::api::WriteSwitch::new(writes);
    let message_ttl = sync::settings::message_ttl(args.sync.message_ttl.as_deref())?;
    let mut auth_settings = args.auth.settings()?;
    // A ReadOnly registry may only have ReadOnly children (`child create`).
    auth_settings.read_only = writes == registry::api::Writes::Refused;
    // One module needs no trust: the proxy in this process hands the registry the client's
    // own address (its `ConnectInfo`), not a loopback peer.
    let trusted = args.trusted_proxies.clone();
    let backends = args.metadata.backends(&args.storage)?;
    if args.print_config {
        let settings = sync.as_ref().map(|s| s.settings());
        let sources = sync.as_ref().map(|s| s.sources()).unwrap_or_default();
        print!(
            "{}",
            super::serve_config::render(&args, &backends, settings, &sources, &trusted)
        );
        return OneModule::print_config(&args);
    }
    let one_module = OneModule::load(&args)?;
    // One module serves TLS only, unless a plain listener is asked for too.
    let listen = match (args.listen, &one_module) {
        (Some(addr), _) => Some(addr),
        (None, None) => Some(DEFAULT_LISTEN),
        (None, Some(_)) => None,
    };
    super::check_data_dir_for(&args.data, super::MissingData::Create, &backends)?;
    let port = listen
        .map(|addr| claim_port(addr).with_context(|| format!("cannot listen on {addr}")))
        .transpose()?;
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
        metadata_cache_ttl: args.metadata_cache_ttl,
        metadata_cache_bytes: args.metadata_cache_size,
    };
    let data = args.data.clone();
    let metadata = backends.metadata.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_with(&data, limits, backends))
        .await?
        .with_context(|| super::metadata::cannot_open(&args.data, &args.metadata))?;
    let gc_totals = Arc::new(super::admin::GcTotals::default());
    if !args.gc_interval.is_zero() {
        tokio::spawn(collect_garbage(
            store.clone(),
            args.gc_interval,
            args.gc.options(),
            gc_totals.clone(),
        ));
    }
    let data = args.data.clone();
    let authority = tokio::task::spawn_blocking(move || {
        super::auth::open(&args.auth, auth_settings, &data, &metadata, &args.access)
    })
    .await??;
    // The children's latest status reports, and the tree of registries beneath this one.
    let reports = Arc::new(registry::child_reports::ChildReports::open(
        &args.data,
        args.child_offline_after,
    ));
    let children = subtree(reports.clone(), store.clone(), authority.clone());
    let own_name = args.sync.child_name()?.unwrap_or_default();
    let background = sync
        .map(|sync| {
            sync.start_background(
                store.clone(),
                &args.data,
                children.clone(),
                authority.clone().map(parent_tokens),
                write_switch.clone(),
            )
        })
        .transpose()?;
    let sync_service = background.as_ref().map(|b| b.service.clone());
    let sync_lease = background.as_ref().map(|b| b.lease.clone());
    let upstreams = background
        .as_ref()
        .map(|b| b.upstreams.map().clone())
        .filter(|u| !u.is_empty());
    let ready = super::admin::Readiness::new(store.clone(), sync_service.clone(), &args.admin);
    // Pull-through: a miss in the on-demand scope is fetched through sync's parent client.
    let on_demand = background.as_ref().map(|b| {
        let source = sync::on_demand::PullThrough::new(b.service.clone(), b.upstreams.clone());
        let timeout = source.timeout();
        registry::api::on_demand::OnDemand::new(Arc::new(source), timeout)
    });
    let options = registry::api::Options {
        miss_hint: background.as_ref().map(|b| b.miss_hint.clone()),
        writes: write_switch.clone(),
        on_demand,
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
    let tree = tree_source(
        own_name,
        write_switch,
        sync_service.clone(),
        store.clone(),
        children,
    );
    app = app.merge(registry::api::gateway::tree_routes(tree.clone()));
    // Management commands (`token`, `scope-map`, `child`, `status --tree`, `bundle`) reach
    // this registry on DATA/admin.sock.
    super::admin_socket::spawn(
        &args.data,
        authority.clone(),
        tree,
        super::bundle::socket_routes(store.clone()),
    )?;
    if let Some(authority) = &authority {
        app = registry::api::auth::guard(
            app.merge(registry::api::auth::token::routes(authority.clone()))
                .merge(registry::api::gateway::routes(authority.clone(), reports)),
            authority.clone(),
        );
        app = registry::api::auth::with_client_addr(app, trusted);
    }
    if let Some(upstreams) = upstreams {
        // Outermost: access control and routing judge the local name a `?ns=` maps to.
        app = registry::api::mirror_ns::map_mirror_names(app, mirror_map(upstreams));
    }
    // Only now, with the store and the token set open (and the admin socket bound): whoever
    // waits for the port finds a registry that serves and answers management commands.
    let listener = match (port, listen) {
        (Some(port), Some(addr)) => Some(
            port.listen(LISTEN_BACKLOG)
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        _ => None,
    };
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
    // `true` once the signal came: both listeners stop accepting and drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        }
    };
    let mut tls_drained = None;
    if let Some(one_module) = one_module {
        let (cert, drained) = one_module
            .start(&args.data, &args.proxy_names, app.clone(), stopped())
            .await?;
        tls_drained = Some(drained);
        if let Some((_, ops)) = &mut ops {
            ops.cert = Some(cert);
        }
    }
    if let Some((listener, ops)) = ops {
        super::admin::spawn(listener, ops);
    }
    match listen {
        Some(listen) => tracing::info!(
            %listen,
            data = %args.data.display(),
            access_log = args.access_log,
            "registry serving /v2 over plain HTTP"
        ),
        None => tracing::info!(
            data = %args.data.display(),
            "registry serving over TLS only, through the proxy in this process (no --listen)"
        ),
    }
    // Start-up is over: what it allocated and freed goes back to the system (idle memory).
    heap::release_free();
    // The log filter is fixed at start: with the access log off (the setting, or a RUST_LOG
    // that drops target `access`) the router is served bare, with no per-request layer at all.
    let logging = args.access_log && tracing::enabled!(target: "access", tracing::Level::INFO);
    let grace = args.shutdown_grace;
    let stop = {
        let store = store.clone();
        let lease_at_stop = sync_lease.clone();
        async move {
            util::shutdown::signal().await;
            // Children's long polls of the change feed answer now, not at their deadline.
            store.stop_waiters();
            tracing::info!(?grace, "stopping: no new connections; requests in flight may finish within the grace period (--shutdown-grace)");
            let _ = stop_tx.send(true);
            // A sync pass here stops now; the lease is given up once the requests drained.
            if let Some(lease) = lease_at_stop {
                lease.stop_passes();
            }
        }
    };
    let plain = async {
        let Some(listener) = listener else {
            return Ok(());
        };
        if logging {
            let app = registry::api::access_log::WithAccessLog::new(app, true);
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .await
        } else {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .await
        }
    };
    // The TLS listener of one module drains within the same grace period.
    let tls = async {
        if let Some(drained) = tls_drained {
            let _ = drained.await;
        }
        Ok(())
    };
    // Both drained, or the plain listener failed (then at once, as without a TLS listener).
    let serving = async { tokio::try_join!(plain, tls).map(|((), ())| ()) };
    let served = tokio::select! {
        served = serving => served,
        () = async {
            stop.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "requests still in flight at the end of the grace period are cut (--shutdown-grace); upload sessions keep what they stored");
            Ok(())
        }
    };
    served.context("server failed")?;
    // Another replica takes the sync lease over at once.
    if let Some(lease) = sync_lease {
        lease.give_up().await;
    }
    tracing::info!("registry stopped");
    Ok(ExitCode::SUCCESS)
}

/// The children defined here as this registry sees them now: their latest reports, ages and
/// lag behind this registry's change log (with access control off, none can be defined).
fn subtree(
    reports: Arc<registry::child_reports::ChildReports>,
    store: Store,
    authority: Option<Arc<access::Authority>>,
) -> sync::report::Subtree {
    Arc::new(move || {
        let head = store.change_page(u64::MAX, 0).map(|p| p.head).ok();
        let defined = authority
            .as_ref()
            .map(|a| a.child_names())
            .unwrap_or_default();
        reports.children(Some(&defined), head)
    })
}

/// Applies the client tokens this registry's parent made for it (`token create --for-child`
/// there) to its access store whenever their generation changes.
fn parent_tokens(authority: Arc<access::Authority>) -> super::sync::TokensHook {
    let applied = std::sync::Mutex::new(None::<String>);
    Arc::new(move |value| {
        let set: access::child_tokens::ChildTokens = match serde_json::from_value(value) {
            Ok(set) => set,
            Err(err) => {
                tracing::warn!(%err, "the parent's client tokens for this registry cannot be read: keeping the ones it last handed down");
                return;
            }
        };
        let mut last = applied.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(set.generation.as_str()) {
            return;
        }
        match authority.apply_parent_tokens(&set) {
            Ok(done) => {
                if !done.skipped.is_empty() {
                    tracing::warn!(skipped = ?done.skipped, "client tokens from the parent left out: a token or scope map of the same name was made here (rename or delete the local one)");
                }
                tracing::info!(
                    tokens = done.tokens,
                    "client tokens from the parent applied"
                );
                *last = Some(set.generation);
            }
            Err(err) => {
                tracing::warn!(%err, "the parent's client tokens cannot be kept here: the next pass tries again")
            }
        }
    })
}

/// This registry's tree: its own state (from its sync status when it has a parent) over its
/// children's latest reports.
fn tree_source(
    name: String,
    writes: registry::api::WriteSwitch,
    sync: Option<Arc<sync::SyncService>>,
    store: Store,
    children: sync::report::Subtree,
) -> registry::api::gateway::TreeSource {
    Arc::new(move || {
        let mode = match writes.get() {
            registry::api::Writes::Refused => sync::settings::Mode::ReadOnly,
            registry::api::Writes::Allowed => sync::settings::Mode::ReadWrite,
        };
        let synced = sync.as_ref().map(|s| s.synced());
        sync::report::local(&name, synced.as_ref(), mode, &store, children())
    })
}

/// containerd's `?ns=` names mapped by the upstreams of the sync config.
fn mirror_map(upstreams: Arc<sync::upstreams::Upstreams>) -> registry::api::mirror_ns::MirrorMap {
    Arc::new(move |ns: &str, repo: &str, host: Option<&str>| {
        match upstreams.mirror_name(ns, repo, host) {
            sync::upstreams::MirrorName::Local(name) => Ok(name),
            sync::upstreams::MirrorName::Unknown(message) => Err(message),
        }
    })
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

/// The plain-HTTP address when neither `--listen` nor `--proxy-listen` is given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

/// The one-module deployment: the API proxy in this process, its registry routes calling this
/// registry's router directly.
struct OneModule {
    flags: proxy::Flags,
    config: proxy::Config,
}

impl OneModule {
    /// `serve --print-config`, one module's part: the proxy's effective table, each entry with
    /// where it came from, as `proxy --print-config` prints it; exit status 2 when the proxy
    /// would not start.
    fn print_config(args: &Args) -> anyhow::Result<ExitCode> {
        if args.proxy.0.listen.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
        let (config, problem) = proxy::Config::load_for_display(&OneModule::flags(args), &env)
            .context("proxy configuration (--proxy-*)")?;
        println!("# one module: the API proxy in this process (--proxy-*)");
        print!("{}", config.render());
        if let Some(problem) = problem {
            eprintln!("error: the proxy would not start: {problem}");
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The proxy crate's flags for one module: `/v2`, `/acr`, `/oauth2` in process, and a
    /// development chain in DATA/certs when no certificate is configured.
    fn flags(args: &Args) -> proxy::Flags {
        let mut flags = args.proxy.0.to_proxy(Some(args.data.join("certs")));
        flags.in_process = true;
        flags
    }

    /// The proxy's configuration when `--proxy-listen` is given, checked before anything is
    /// written: flags, the proxy's config file and the IoT Edge API-proxy variables, with
    /// `/v2`, `/acr` and `/oauth2` routed in process. With no certificate configured anywhere,
    /// a development chain in DATA/certs.
    fn load(args: &Args) -> anyhow::Result<Option<OneModule>> {
        if args.proxy.0.listen.is_none() {
            return Ok(None);
        }
        let mut flags = args.proxy.0.to_proxy(Some(args.data.join("certs")));
        flags.in_process = true;
        let config =
            proxy::Config::load(&flags, &env).context("proxy configuration (--proxy-*)")?;
        Ok(Some(OneModule { flags, config }))
    }

    /// Starts the proxy's listener and workers with `registry` as the in-process upstream,
    /// serving until `stop` completes; returns the path of the server chain it serves (for the
    /// expiry metric) and the proxy's task, which ends once its connections have drained.
    async fn start(
        self,
        data: &std::path::Path,
        extra_names: &[String],
        registry: axum::Router,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
        let OneModule { flags, config } = self;
        if let Some(dir) = &config.dev_certs {
            let names = super::proxy::dev_names(config.listen.0, extra_names);
            super::proxy::dev_certificates(dir, &names).await?;
            tokio::spawn(super::proxy::renew_dev_chain(dir.clone(), names));
        } else if !extra_names.is_empty() {
            tracing::warn!(
                "--proxy-name is for the development certificate only; {} is served as given",
                data.display()
            );
        }
        let (cert, _) = config
            .cert
            .clone()
            .context("the proxy has no server certificate (internal)")?;
        let loader = Box::new(move || proxy::Config::load(&flags, &env));
        let server = proxy::Proxy::bind_one_module(config, loader, registry)
            .await
            .context("starting the proxy in this process")?;
        tracing::info!(
            "TLS on https://{} (one module: /v2, /acr, /oauth2 served in process)",
            server.local_addr()?
        );
        let drained = tokio::spawn(server.serve_until(stop));
        Ok((cert, drained))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
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
