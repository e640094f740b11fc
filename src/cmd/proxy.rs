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
    flags: Box<Flags>,
}

#[derive(clap::Args)]
struct Flags {
    /// TOML config file (watched: route changes apply without a restart).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TLS listen address, IP:PORT or HOST:PORT (a host name binds its first IPv4 address)
    /// [default: 0.0.0.0:443, or 0.0.0.0:$NGINX_DEFAULT_PORT].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Server certificate chain, PEM, leaf first (reloaded when it changes).
    #[arg(long, value_name = "CHAIN.pem")]
    cert: Option<PathBuf>,
    /// Private key of the server certificate, PEM.
    #[arg(long, value_name = "KEY.pem")]
    key: Option<PathBuf>,
    /// Ask clients for a certificate verified against these roots (optional for clients);
    /// a verified one is forwarded to upstreams in --client-cert-header.
    #[arg(long, value_name = "ROOTS.pem")]
    client_ca: Option<PathBuf>,
    /// Header carrying the verified client certificate (URL-escaped PEM) [default: x-client-cert].
    #[arg(long, value_name = "NAME")]
    client_cert_header: Option<String>,
    /// Trust bundle for https upstreams (the parent), reloaded when it changes.
    #[arg(long, value_name = "ROOTS.pem")]
    trust: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (plain HTTP, /metrics and /healthz).
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// A path route, PREFIX=URL (repeatable), e.g. /v2=http://127.0.0.1:8080.
    #[arg(long = "route", value_name = "PREFIX=URL")]
    routes: Vec<String>,
    /// A header route, HEADER=URL (repeatable): requests carrying HEADER go to URL.
    #[arg(long = "header-route", value_name = "HEADER=URL")]
    header_routes: Vec<String>,
    /// Where requests no route matches go (usually https://PARENT:443).
    #[arg(long, value_name = "URL")]
    default: Option<String>,
    /// TLS server name to verify the default upstream against [default: its host].
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// Largest request head accepted; larger gets 431 [default: 32768].
    #[arg(long, value_name = "BYTES")]
    max_header_bytes: Option<usize>,
    /// Time for the TLS handshake and each request head [default: 30s].
    #[arg(long, value_name = "DURATION")]
    header_read_timeout: Option<String>,
    /// Close a client connection with no traffic for this long [default: 120s].
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Time to connect to an upstream before 502 [default: 10s].
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// Time an upstream has to start answering after the request body was sent, else 504
    /// [default: 300s].
    #[arg(long, value_name = "DURATION")]
    upstream_timeout: Option<String>,
    /// Client connections served at once [default: 4096].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// How often files are checked for changes [default: 5s].
    #[arg(long, value_name = "DURATION")]
    reload_interval: Option<String>,
    /// ALPN protocols offered to clients, in order of preference [default: http/1.1,h2].
    #[arg(long, value_name = "LIST")]
    alpn: Option<String>,
    /// Worker threads, each with its own single-threaded runtime [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// For local tests only: with no server certificate configured, generate (and renew) a
    /// development chain in DIR and serve it. Without this flag a missing certificate is an
    /// error.
    #[arg(long, env = "CONNECTED_REGISTRY_DEV_CERTS", value_name = "DIR")]
    dev_certs: Option<PathBuf>,
    /// Print the effective configuration, with where each entry came from, and exit.
    #[arg(long)]
    print_config: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = *args.flags;
    let flags = proxy::Flags {
        config: args.config,
        listen: args.listen,
        cert: args.cert,
        key: args.key,
        client_ca: args.client_ca,
        client_cert_header: args.client_cert_header,
        trust: args.trust,
        admin: args.admin,
        routes: args.routes,
        header_routes: args.header_routes,
        default: args.default,
        sni: args.sni,
        max_header_bytes: args.max_header_bytes,
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        connect_timeout: args.connect_timeout,
        upstream_timeout: args.upstream_timeout,
        max_connections: args.max_connections,
        reload_interval: args.reload_interval,
        alpn: args.alpn,
        workers: args.workers,
        dev_certs: args.dev_certs,
    };
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
    tokio::select! {
        _ = server.serve() => {}
        _ = util::shutdown::signal() => tracing::info!("proxy stopping on signal"),
    }
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
