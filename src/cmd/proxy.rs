//! `connected-registry proxy`: the TLS API proxy that routes child devices to the local
//! registry, the blob module or the parent layer (replaces the nginx-based IoT Edge API proxy).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Flags override the config file, which overrides the IoT Edge environment variables.
/// Every setting is documented in proxy/README.md.
#[derive(clap::Args)]
pub struct Args {
    // Boxed: the flags are many, and the subcommand enum should stay small.
    #[command(flatten)]
    flags: Box<ProxyFlags>,
    /// For local tests only: with no server certificate configured, generate (and renew) a
    /// development chain in DIR and serve it. Without this flag a missing certificate is an
    /// error.
    #[arg(long, env = "CONNECTED_REGISTRY_DEV_CERTS", value_name = "DIR")]
    dev_certs: Option<PathBuf>,
    /// Print the effective configuration, with where each entry came from, and exit.
    #[arg(long)]
    print_config: bool,
    /// On SIGTERM or Ctrl-C: refuse new connections, let requests in flight finish for at most
    /// this long, then cut the rest and exit 0 (as `serve --shutdown-grace`).
    #[arg(long, env = "CONNECTED_REGISTRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = super::parse_duration)]
    shutdown_grace: std::time::Duration,
}

/// The API proxy's settings, shared by `proxy` (as `--NAME`) and by `serve`'s one-module
/// deployment (as `--proxy-NAME`, see [`Prefixed`]): one list, so both take the same settings.
/// Every id starts with `proxy_`, which is how [`Prefixed`] finds them.
#[derive(clap::Args, Clone, Default)]
pub struct ProxyFlags {
    /// TOML config file of the API proxy (watched: route changes apply without a restart).
    #[arg(id = "proxy_config", long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// TLS listen address, IP:PORT or HOST:PORT (a host name binds its first IPv4 address)
    /// [proxy default: 0.0.0.0:443, or 0.0.0.0:$NGINX_DEFAULT_PORT].
    #[arg(id = "proxy_listen", long = "listen", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Server certificate chain, PEM, leaf first (reloaded when it changes).
    #[arg(id = "proxy_cert", long = "cert", value_name = "CHAIN.pem")]
    cert: Option<PathBuf>,
    /// Private key of the server certificate, PEM.
    #[arg(id = "proxy_key", long = "key", value_name = "KEY.pem")]
    key: Option<PathBuf>,
    /// Ask clients for a certificate verified against these roots (optional for clients);
    /// a verified one is forwarded to upstreams in the client-cert header.
    #[arg(id = "proxy_client_ca", long = "client-ca", value_name = "ROOTS.pem")]
    client_ca: Option<PathBuf>,
    /// Header carrying the verified client certificate (URL-escaped PEM) [default: x-client-cert].
    #[arg(
        id = "proxy_client_cert_header",
        long = "client-cert-header",
        value_name = "NAME"
    )]
    client_cert_header: Option<String>,
    /// Trust bundle for https upstreams (the parent), reloaded when it changes.
    #[arg(id = "proxy_trust", long = "trust", value_name = "ROOTS.pem")]
    trust: Option<PathBuf>,
    /// Serve the proxy's Prometheus metrics on this address (plain HTTP, /metrics and /healthz).
    #[arg(id = "proxy_admin", long = "admin", value_name = "HOST:PORT")]
    admin: Option<String>,
    /// A path route, PREFIX=URL (repeatable), e.g. /v2=http://127.0.0.1:8080; several URLs
    /// separated by commas are replicas the proxy balances between; URL `in-process` is the
    /// registry in this process (one module only).
    #[arg(id = "proxy_route", long = "route", value_name = "PREFIX=URL[,URL...]")]
    routes: Vec<String>,
    /// A header route, HEADER=URL (repeatable): requests carrying HEADER go to URL (or to
    /// several, separated by commas).
    #[arg(
        id = "proxy_header_route",
        long = "header-route",
        value_name = "HEADER=URL[,URL...]"
    )]
    header_routes: Vec<String>,
    /// Where requests no route matches go (usually https://PARENT:443; several URLs separated
    /// by commas for a parent's replicas).
    #[arg(id = "proxy_default", long = "default", value_name = "URL[,URL...]")]
    default: Option<String>,
    /// TLS server name to verify the default upstream against [default: its host].
    #[arg(id = "proxy_sni", long = "sni", value_name = "NAME")]
    sni: Option<String>,
    /// Largest request head accepted; larger gets 431 [default: 32768].
    #[arg(
        id = "proxy_max_header_bytes",
        long = "max-header-bytes",
        value_name = "BYTES"
    )]
    max_header_bytes: Option<usize>,
    /// Time for the TLS handshake and each request head [default: 30s].
    #[arg(
        id = "proxy_header_read_timeout",
        long = "header-read-timeout",
        value_name = "DURATION"
    )]
    header_read_timeout: Option<String>,
    /// Close a client connection with no traffic for this long [default: 120s].
    #[arg(
        id = "proxy_idle_timeout",
        long = "idle-timeout",
        value_name = "DURATION"
    )]
    idle_timeout: Option<String>,
    /// Time to connect to an upstream before 502 [default: 10s].
    #[arg(
        id = "proxy_connect_timeout",
        long = "connect-timeout",
        value_name = "DURATION"
    )]
    connect_timeout: Option<String>,
    /// Time an upstream has to start answering after the request body was sent, else 504
    /// [default: 300s].
    #[arg(
        id = "proxy_upstream_timeout",
        long = "upstream-timeout",
        value_name = "DURATION"
    )]
    upstream_timeout: Option<String>,
    /// Client connections served at once [default: 4096].
    #[arg(
        id = "proxy_max_connections",
        long = "max-connections",
        value_name = "N"
    )]
    max_connections: Option<usize>,
    /// Path the health check GETs on each upstream of a route with several; a 2xx answer
    /// passes (CNCF distribution: /v2/) [default: /readyz].
    #[arg(id = "proxy_health_path", long = "health-path", value_name = "PATH")]
    health_path: Option<String>,
    /// How often each upstream of a route with several is checked [default: 2s].
    #[arg(
        id = "proxy_health_interval",
        long = "health-interval",
        value_name = "DURATION"
    )]
    health_interval: Option<String>,
    /// Time one health check has before it fails [default: 1s].
    #[arg(
        id = "proxy_health_timeout",
        long = "health-timeout",
        value_name = "DURATION"
    )]
    health_timeout: Option<String>,
    /// How many other upstreams of its route a GET or HEAD is sent to when one fails before
    /// answering; 0: none [default: 1].
    #[arg(id = "proxy_retries", long = "retries", value_name = "N")]
    retries: Option<u32>,
    /// How often files are checked for changes [default: 5s].
    #[arg(
        id = "proxy_reload_interval",
        long = "reload-interval",
        value_name = "DURATION"
    )]
    reload_interval: Option<String>,
    /// ALPN protocols offered to clients, in order of preference [default: http/1.1,h2].
    #[arg(id = "proxy_alpn", long = "alpn", value_name = "LIST")]
    alpn: Option<String>,
    /// Worker threads, each with its own single-threaded runtime [default: one per core].
    #[arg(id = "proxy_workers", long = "workers", value_name = "N")]
    workers: Option<usize>,
}

impl ProxyFlags {
    /// The proxy crate's flags; `dev_certs` is where a development chain goes when no
    /// certificate is configured anywhere.
    pub fn to_proxy(&self, dev_certs: Option<PathBuf>) -> proxy::Flags {
        let f = self.clone();
        proxy::Flags {
            config: f.config,
            listen: f.listen,
            cert: f.cert,
            key: f.key,
            client_ca: f.client_ca,
            client_cert_header: f.client_cert_header,
            trust: f.trust,
            admin: f.admin,
            routes: f.routes,
            header_routes: f.header_routes,
            default: f.default,
            sni: f.sni,
            max_header_bytes: f.max_header_bytes,
            header_read_timeout: f.header_read_timeout,
            idle_timeout: f.idle_timeout,
            connect_timeout: f.connect_timeout,
            upstream_timeout: f.upstream_timeout,
            max_connections: f.max_connections,
            health_path: f.health_path,
            health_interval: f.health_interval,
            health_timeout: f.health_timeout,
            retries: f.retries,
            reload_interval: f.reload_interval,
            alpn: f.alpn,
            workers: f.workers,
            dev_certs,
            in_process: false,
        }
    }
}

/// [`ProxyFlags`] under another command (`serve`): `--NAME` becomes `--proxy-NAME`, and each
/// setting also reads `CONNECTED_REGISTRY_PROXY_NAME` (repeatable ones a comma-separated
/// list) and needs `--proxy-listen`, so the registry's own `--listen`, `--admin`, `--config`
/// keep their meaning.
#[derive(Clone, Default)]
pub struct Prefixed(pub ProxyFlags);

impl Prefixed {
    fn rename(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|arg| {
            let id = arg.get_id().as_str().to_owned();
            let Some(long) = arg.get_long().map(str::to_owned) else {
                return arg;
            };
            if !id.starts_with("proxy_") || long.starts_with("proxy-") {
                return arg;
            }
            let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
            // clap (without its `string` feature) takes static names: the two dozen made
            // here, once per process, are leaked.
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            let mut arg = arg.long(leak(format!("proxy-{long}"))).env(leak(format!(
                "CONNECTED_REGISTRY_{}",
                id.to_ascii_uppercase()
            )));
            if id != "proxy_listen" {
                arg = arg.requires("proxy_listen");
            }
            if repeatable {
                arg.value_delimiter(',')
            } else {
                arg
            }
        })
    }
}

impl clap::FromArgMatches for Prefixed {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        ProxyFlags::from_arg_matches(matches).map(Prefixed)
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl clap::Args for Prefixed {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Prefixed::rename(ProxyFlags::augment_args(cmd))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Prefixed::rename(ProxyFlags::augment_args_for_update(cmd))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let flags = args.flags.to_proxy(args.dev_certs.clone());
    let (config, problem) =
        proxy::Config::load_for_display(&flags, &env).context("proxy configuration")?;
    if args.print_config {
        if let Some(dir) = &config.dev_certs {
            println!(
                "# no server certificate configured (--cert/--key): {} would generate a \
                 DEVELOPMENT chain in {}",
                proxy::config::DEV_CERTS_FLAG,
                dir.display()
            );
        }
        print!("{}", config.render());
        if let Some(problem) = problem {
            eprintln!("error: the proxy would not start: {problem}");
            return Ok(ExitCode::from(2));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Refused before anything is written: no development chain for a proxy that cannot start.
    if let Some(problem) = problem {
        return Err(problem).context("proxy configuration");
    }
    if let Some(dir) = &config.dev_certs {
        let names = dev_names(config.listen.0, &[]);
        dev_certificates(dir, &names).await?;
        tokio::spawn(renew_dev_chain(dir.clone(), names));
    }
    let loader = Box::new(move || proxy::Config::load(&flags, &env));
    let server = proxy::Proxy::bind(config, loader)
        .await
        .context("starting the proxy")?;
    tracing::info!("proxy listening on {} (TLS)", server.local_addr()?);
    // Start-up is over: what it allocated and freed goes back to the system (idle memory).
    heap::release_free();
    let grace = args.shutdown_grace;
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let stop = {
        let stopping = stopping.clone();
        async move {
            util::shutdown::signal().await;
            tracing::info!(?grace, "proxy stopping: no new connections; requests in flight may finish within the grace period (--shutdown-grace)");
            stopping.notify_one();
        }
    };
    tokio::select! {
        () = server.serve_until(stop) => {}
        () = async {
            stopping.notified().await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "requests still in flight at the end of the grace period are cut (--shutdown-grace)"),
    }
    tracing::info!("proxy stopped");
    Ok(ExitCode::SUCCESS)
}

/// Names the development server certificate is for, besides `localhost` and `127.0.0.1`
/// (added by the generator): this machine as IoT Edge knows it, the operator's `extra`
/// names, and where other machines can connect: on every address (0.0.0.0 or ::) the
/// machine's hostname and non-loopback addresses, on one address that address.
pub fn dev_names(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["IOTEDGE_GATEWAYHOSTNAME", "HOSTNAME"]
        .iter()
        .filter_map(|v| env(v))
        .collect();
    let ip = listen.ip();
    if ip.is_unspecified() {
        // Detected names a certificate cannot carry are left out; the operator's are not.
        names.extend(
            certs::host::hostname()
                .filter(|h| certs::gen::parse_san(h).is_ok())
                .into_iter()
                .chain(certs::host::addresses().iter().map(|a| a.to_string())),
        );
    } else if !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names.extend(extra.iter().cloned());
    names
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// Creates or reuses the development chain for `names` (re-issuing the server certificate,
/// under the same root, when it lacks one of them), and says loudly what it is and what to
/// trust.
pub async fn dev_certificates(
    dir: &std::path::Path,
    names: &[String],
) -> anyhow::Result<certs::dev::DevChain> {
    let dir = dir.to_owned();
    let names = names.to_vec();
    let chain = tokio::task::spawn_blocking(move || certs::dev::ensure_dev_chain(&dir, &names))
        .await?
        .context("generating the development certificate chain")?;
    tracing::warn!(
        "NO SERVER CERTIFICATE CONFIGURED: serving a DEVELOPMENT certificate ({}). \
         Clients must trust the development root CA: {}. For production give a real \
         certificate and key.",
        chain.server_chain.display(),
        chain.root_ca.display()
    );
    eprintln!("development root CA to trust: {}", chain.root_ca.display());
    Ok(chain)
}

/// Renews the development server certificate for `names` when due; the proxy picks up the
/// new files itself.
pub async fn renew_dev_chain(dir: PathBuf, names: Vec<String>) {
    let every = certs::renew::RenewPolicy::default().max_check_interval;
    loop {
        tokio::time::sleep(every).await;
        let dir = dir.clone();
        let names = names.clone();
        match tokio::task::spawn_blocking(move || certs::dev::ensure_dev_chain(&dir, &names)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!("renewing the development certificate failed: {err}"),
            Err(err) => tracing::error!("development certificate task failed: {err}"),
        }
    }
}
