//! The proxy's configuration: a TOML file, the IoT Edge API-proxy environment variables and
//! command-line flags, merged into one effective [`Config`] that remembers where each entry
//! came from (for `--print-config` and for error messages).
//!
//! Precedence: flags override the file, the file overrides the environment, the environment
//! overrides the built-in defaults. Routes merge per key (path prefix plus optional header):
//! a flag `--route /v2=...` replaces only the `/v2` route from the file or the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::HeaderName;
use serde::Deserialize;

/// A configuration that cannot be used; the message names the setting and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Value { origin: Source, message: String },
    #[error("{0}")]
    Missing(String),
}

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Env(&'static str),
    File {
        path: PathBuf,
        line: usize,
    },
    Flag(&'static str),
    /// `serve --proxy-listen`: the one-module deployment routes the registry's prefixes to
    /// the registry in the same process.
    OneModule,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Flag(name) => write!(f, "flag {name}"),
            Source::OneModule => write!(f, "serve --proxy-listen (one module)"),
        }
    }
}

/// `http` or `https` towards an upstream, or no network at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// The registry in this process (`serve --proxy-listen`): its router is called with the
    /// request directly, with no connection and no second HTTP parse. Written `in-process`.
    InProcess,
}

/// How an upstream of [`Scheme::InProcess`] is written in routes and shown.
pub const IN_PROCESS: &str = "in-process";

/// Where a route sends its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// TLS server name to send and verify (https only); defaults to `host`.
    pub sni: Option<String>,
    /// Trust bundle for https; defaults to the global `trust`.
    pub trust: Option<PathBuf>,
}

impl Upstream {
    /// Parses `http://host:port`, `https://host:port` or a bare `host:port` (plain HTTP, as the
    /// IoT Edge variables give it), or `in-process` (the registry in this process, see
    /// [`Upstream::in_process`]). The port defaults to 80 / 443.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let text = text.trim();
        if text == IN_PROCESS {
            return Ok(Upstream::in_process());
        }
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if text.contains("://") {
            return Err(format!(
                "upstream {text:?}: only http:// and https:// upstreams are supported"
            ));
        } else {
            (Scheme::Http, text)
        };
        let rest = rest.trim_end_matches('/');
        // Not echoed: what precedes the '@' may be a password.
        if rest.contains('@') {
            return Err(
                "an upstream URL with credentials (user@host) is refused: credentials \
                 do not belong in a route, whose upstreams show in logs and metrics"
                    .into(),
            );
        }
        if rest.is_empty() || rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "upstream {text:?}: give scheme://host:port with no path (e.g. http://127.0.0.1:8080)"
            ));
        }
        let default_port = match scheme {
            Scheme::Http | Scheme::InProcess => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("upstream {text:?}: unclosed '[' in an IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (host.to_owned(), Some(p)),
                None if after.is_empty() => (host.to_owned(), None),
                None => return Err(format!("upstream {text:?}: junk after ']'")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("upstream {text:?}: no host"));
        }
        if host.contains(['[', ']']) {
            return Err(format!(
                "upstream {text:?}: a stray '[' or ']' (an IPv6 address is written [::1]:8080)"
            ));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("upstream {text:?}: bad port {p:?}"))?,
        };
        Ok(Upstream {
            scheme,
            host,
            port,
            sni: None,
            trust: None,
        })
    }

    /// The registry in this process: only `serve --proxy-listen` has one; the `proxy` command
    /// refuses a route to it at start.
    pub fn in_process() -> Upstream {
        Upstream {
            scheme: Scheme::InProcess,
            host: IN_PROCESS.to_owned(),
            port: 0,
            sni: None,
            trust: None,
        }
    }

    /// `host:port`, bracketing IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::InProcess => return f.write_str(IN_PROCESS),
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Parses a route's upstreams: one URL as [`Upstream::parse`] takes it, or several separated
/// by commas (`http://a:8080,http://b:8080`: replicas sharing their storage, balanced by the
/// proxy). No URL contains a comma, IPv6 literals included.
pub fn parse_upstreams(text: &str) -> Result<Vec<Upstream>, String> {
    upstream_list(text.split(','))
}

/// The upstreams of one route from their texts: each must parse, none may repeat another (two
/// spellings of one address included: `host` and `http://host:80`), and `in-process` stands
/// alone (the registry in this process has no connection to fail over from).
fn upstream_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Vec<Upstream>, String> {
    let mut list: Vec<(Upstream, &str)> = Vec::new();
    for text in texts {
        if text.trim().is_empty() {
            return Err(
                "an empty upstream in the list (a stray comma?): separate URLs with one comma, \
                 e.g. http://10.0.0.4:8080,http://10.0.0.5:8080"
                    .into(),
            );
        }
        let up = Upstream::parse(text)?;
        if let Some((_, first)) = list.iter().find(|(u, _)| *u == up) {
            return Err(format!(
                "upstream {up} is listed twice (as {:?} and {:?}); give each replica once",
                first.trim(),
                text.trim()
            ));
        }
        list.push((up, text));
    }
    if list.is_empty() {
        return Err("no upstream: give a URL, or several separated by commas".into());
    }
    if list.len() > 1 && list.iter().any(|(u, _)| u.scheme == Scheme::InProcess) {
        return Err(format!(
            "{IN_PROCESS} cannot share a route with other upstreams: the registry in this \
             process is called directly, with nothing to balance or fail over; route it alone, \
             or list the replicas' URLs without {IN_PROCESS}"
        ));
    }
    Ok(list.into_iter().map(|(u, _)| u).collect())
}

/// Upstreams as a route is written: URLs separated by commas (what [`parse_upstreams`] reads);
/// for the tests and the fuzz target (`--print-config` shows more of each, see `describe`).
#[cfg(any(test, fuzzing))]
pub fn upstreams_text(upstreams: &[Upstream]) -> String {
    upstreams
        .iter()
        .map(Upstream::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One route: requests whose path starts with `prefix` (and carry `header`, when set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub header: Option<HeaderName>,
    /// Where its requests go: one upstream, or several replicas the proxy balances between
    /// (never empty; `in-process` only alone).
    pub upstreams: Vec<Upstream>,
    pub source: Source,
}

impl Route {
    /// How messages name the route to clients and operators ("route /v2", "the default
    /// route"): the route, never an upstream's address, which is internal.
    pub fn label(&self, default: bool) -> String {
        match (&self.header, default) {
            (_, true) => "the default route".to_string(),
            (Some(h), false) => format!("route {} (header {h})", self.prefix),
            (None, false) => format!("route {}", self.prefix),
        }
    }
}

/// Every limit the proxy enforces, with its default; all are settings, none is hard-coded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to complete the TLS handshake and then each request head
    /// (cuts off slowloris clients).
    pub header_read_timeout: Duration,
    /// A client connection on which no byte moved in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Time to open a TCP (and TLS) connection to an upstream before answering 502.
    pub connect_timeout: Duration,
    /// Time an upstream has to start its response after the request body was sent, and the
    /// longest it may stop taking request-body bytes while the body is sent (504).
    pub upstream_timeout: Duration,
    /// Client connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(300),
            max_connections: 4096,
        }
    }
}

/// How a route with several upstreams spreads its requests and fails over (see `balance`);
/// every value a setting with a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balancing {
    /// What the health check asks each upstream of a route with several for (`GET` of this
    /// path, passed by a 2xx answer): `/readyz`, the readiness probe of our registry and of
    /// this proxy; another registry has its own (CNCF distribution answers `/v2/`). One for
    /// every route: an upstream's health is one state, shared by the routes that list it.
    pub health_path: PathAndQuery,
    /// How often each upstream of a route with several is checked (`GET health_path`): how
    /// soon a dead replica is taken out when no request found it first, and how soon a
    /// restarted one is put back.
    pub health_interval: Duration,
    /// Time one health check has (connect, answer and body); longer, and it failed.
    pub health_timeout: Duration,
    /// How many other upstreams of its route a GET or HEAD is sent to when one fails before
    /// answering (a refused or reset connection). 0 turns retries off. Other methods never are.
    pub retries: u32,
}

/// The health check's path unless `health_path` says otherwise.
pub const DEFAULT_HEALTH_PATH: &str = "/readyz";

/// Parses the health check's path: an absolute path (`/readyz`, `/v2/`) and nothing else. A
/// query string is refused, and not repeated: the path shows in logs, in `--print-config` and
/// in the check's errors, and a query can carry a token.
pub fn parse_health_path(text: &str) -> Result<PathAndQuery, String> {
    if text.contains(['?', '#']) {
        return Err(
            "a query string (or fragment) is refused, and not shown here: the health \
                    path shows in logs and --print-config, and a query may carry a secret; \
                    give a path only, e.g. /readyz or /v2/"
                .into(),
        );
    }
    if !text.starts_with('/') {
        return Err(format!(
            "{text:?} must be an absolute path starting with '/', e.g. /readyz or /v2/"
        ));
    }
    PathAndQuery::try_from(text)
        .map_err(|_| format!("{text:?} is not a valid URL path (no spaces or control characters)"))
}

impl Default for Balancing {
    fn default() -> Self {
        Balancing {
            health_path: PathAndQuery::from_static(DEFAULT_HEALTH_PATH),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            retries: 1,
        }
    }
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: (SocketAddr, Source),
    pub cert: Option<(PathBuf, Source)>,
    pub key: Option<(PathBuf, Source)>,
    pub client_ca: Option<(PathBuf, Source)>,
    pub client_cert_header: HeaderName,
    pub trust: Option<(PathBuf, Source)>,
    pub admin: Option<(SocketAddr, Source)>,
    pub routes: Vec<Route>,
    pub default: Option<Route>,
    pub limits: Limits,
    pub balancing: Balancing,
    pub reload_interval: Duration,
    /// ALPN protocols offered to clients, in order of preference.
    pub alpn: Vec<String>,
    /// Worker threads, each with its own single-threaded runtime.
    pub workers: usize,
    /// The config file, watched for changes.
    pub file: Option<PathBuf>,
    /// Set when no certificate is configured and `--dev-certs DIR` was given: `cert` and
    /// `key` then name the development chain in DIR, which the caller must generate (and
    /// renew) before the proxy starts.
    pub dev_certs: Option<PathBuf>,
}

/// Settings given on the command line (`connected-registry proxy --...`), as raw strings so
/// that parsing errors come from one place with one style.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_cert_header: Option<String>,
    pub trust: Option<PathBuf>,
    pub admin: Option<String>,
    /// `PREFIX=URL[,URL...]`
    pub routes: Vec<String>,
    /// `HEADER=URL[,URL...]`
    pub header_routes: Vec<String>,
    pub default: Option<String>,
    pub sni: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub health_path: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub retries: Option<u32>,
    pub reload_interval: Option<String>,
    /// Comma-separated ALPN list, e.g. `h2,http/1.1`.
    pub alpn: Option<String>,
    pub workers: Option<usize>,
    /// Where a development chain lives when no certificate is configured anywhere: the
    /// explicit opt-in for local tests. Without it a missing certificate is an error.
    pub dev_certs: Option<PathBuf>,
    /// The one-module deployment (`serve --proxy-listen`): `/v2`, `/acr` and `/oauth2` go to
    /// the registry in this process. These routes override the environment's
    /// (`CONNECTED_ACR_ROUTE_ADDRESS` names the registry module, which is this process now);
    /// the file and the flags can still override them.
    pub in_process: bool,
}

/// The prefixes the registry serves, routed to it by the IoT Edge variable
/// `CONNECTED_ACR_ROUTE_ADDRESS` and, in one module, to the registry in this process.
pub const REGISTRY_PREFIXES: [&str; 3] = ["/v2", "/acr", "/oauth2"];

/// The flag that opts into a development certificate chain, as messages and
/// `--print-config` name it.
pub const DEV_CERTS_FLAG: &str = "--dev-certs";

/// The default listen port, as the IoT Edge API proxy has it.
pub const DEFAULT_PORT: u16 = 443;
/// The header that carries a verified client certificate (URL-escaped PEM) to upstreams.
pub const DEFAULT_CLIENT_CERT_HEADER: &str = "x-client-cert";
/// The header whose presence sends a request to the blob-storage route.
pub const BLOB_HEADER: &str = "x-ms-version";
/// How often the config file, certificate and trust bundle are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// ALPN protocols offered to clients by default: HTTP/1.1 first, because registry traffic is
/// big blobs, which HTTP/1.1 moves with ~12 % less CPU per byte than HTTP/2 here (measured with
/// the benchmark: 0.66x -> 0.70x of static TLS nginx); h2 stays offered for clients that want it
/// only. `--alpn h2,http/1.1` prefers HTTP/2.
pub const DEFAULT_ALPN: [&str; 2] = ["http/1.1", "h2"];

/// Worker threads by default: one per core, as nginx's `worker_processes auto`. Each worker
/// is a single-threaded runtime; on the 2-core reference machine this served manifest GETs
/// with about 15 % less CPU per request than one work-stealing runtime (see README).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(256)
}

fn workers(n: usize, source: &Source) -> Result<usize, ConfigError> {
    if n == 0 || n > 256 {
        return Err(ConfigError::Value {
            origin: source.clone(),
            message: format!("workers: {n} is out of range (1 to 256)"),
        });
    }
    Ok(n)
}

fn alpn(list: &[String], source: &Source) -> Result<Vec<String>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::Value {
            origin: source.clone(),
            message: "alpn: give at least one of h2, http/1.1".into(),
        });
    }
    for p in list {
        if p != "h2" && p != "http/1.1" {
            return Err(ConfigError::Value {
                origin: source.clone(),
                message: format!("alpn: {p:?} is not supported (use h2 and/or http/1.1)"),
            });
        }
    }
    Ok(list.to_vec())
}

/// Parses a timeout or interval: a duration in either spelling (`500ms`, `30s`, `5m`, `1h`,
/// `PT30S`; see [`util::duration`]) or, as always, a bare number of seconds. It must be positive:
/// a zero timeout would fail every request.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = util::duration::parse_or_seconds(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("{text:?}: a duration must be positive"));
    }
    Ok(d)
}

// ---- the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<toml::Spanned<String>>,
    cert: Option<toml::Spanned<PathBuf>>,
    key: Option<toml::Spanned<PathBuf>>,
    client_ca: Option<toml::Spanned<PathBuf>>,
    client_cert_header: Option<toml::Spanned<String>>,
    trust: Option<toml::Spanned<PathBuf>>,
    admin: Option<toml::Spanned<String>>,
    reload_interval: Option<toml::Spanned<String>>,
    health_path: Option<toml::Spanned<String>>,
    health_interval: Option<toml::Spanned<String>>,
    health_timeout: Option<toml::Spanned<String>>,
    retries: Option<toml::Spanned<u32>>,
    alpn: Option<toml::Spanned<Vec<String>>>,
    workers: Option<toml::Spanned<usize>>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    routes: Vec<toml::Spanned<FileRoute>>,
    default: Option<toml::Spanned<FileUpstream>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_header_bytes: Option<toml::Spanned<usize>>,
    header_read_timeout: Option<toml::Spanned<String>>,
    idle_timeout: Option<toml::Spanned<String>>,
    connect_timeout: Option<toml::Spanned<String>>,
    upstream_timeout: Option<toml::Spanned<String>>,
    max_connections: Option<toml::Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: Option<toml::Spanned<String>>,
    header: Option<toml::Spanned<String>>,
    #[serde(alias = "upstreams")]
    upstream: toml::Spanned<FileUpstreams>,
    sni: Option<String>,
    trust: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    #[serde(alias = "upstreams")]
    upstream: toml::Spanned<FileUpstreams>,
    sni: Option<String>,
    trust: Option<PathBuf>,
}

/// A route's `upstream` in the file: `"URL"`, `"URL,URL"` or `["URL", "URL"]`.
enum FileUpstreams {
    Text(String),
    List(Vec<String>),
}

impl FileUpstreams {
    fn parse(&self) -> Result<Vec<Upstream>, String> {
        match self {
            FileUpstreams::Text(text) => parse_upstreams(text),
            FileUpstreams::List(list) => upstream_list(list.iter().map(String::as_str)),
        }
    }
}

impl<'de> Deserialize<'de> for FileUpstreams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FileUpstreams;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an upstream URL, URLs separated by commas, or a list of URL strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileUpstreams, E> {
                Ok(FileUpstreams::Text(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FileUpstreams, A::Error> {
                let mut list = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    list.push(url);
                }
                Ok(FileUpstreams::List(list))
            }
        }
        d.deserialize_any(Visit)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The values one source contributes, before merging.
#[derive(Default)]
struct Layer {
    listen: Option<(SocketAddr, Source)>,
    cert: Option<(PathBuf, Source)>,
    key: Option<(PathBuf, Source)>,
    client_ca: Option<(PathBuf, Source)>,
    client_cert_header: Option<(HeaderName, Source)>,
    trust: Option<(PathBuf, Source)>,
    admin: Option<(SocketAddr, Source)>,
    reload_interval: Option<Duration>,
    health_path: Option<PathAndQuery>,
    health_interval: Option<Duration>,
    health_timeout: Option<Duration>,
    retries: Option<u32>,
    alpn: Option<Vec<String>>,
    workers: Option<usize>,
    routes: Vec<Route>,
    default: Option<Route>,
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    upstream_timeout: Option<Duration>,
    max_connections: Option<usize>,
}

/// Prefixes a value error with the config key it belongs to.
fn named(key: &str, err: ConfigError) -> ConfigError {
    match err {
        ConfigError::Value { origin, message } => ConfigError::Value {
            origin,
            message: format!("{key}: {message}"),
        },
        other => other,
    }
}

fn header_name(text: &str, source: &Source) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(text.trim().as_bytes()).map_err(|_| ConfigError::Value {
        origin: source.clone(),
        message: format!("{text:?} is not a valid HTTP header name"),
    })
}

fn socket_addr(text: &str, source: &Source, what: &str) -> Result<SocketAddr, ConfigError> {
    listen_addr(text).map_err(|message| ConfigError::Value {
        origin: source.clone(),
        message: format!("{what} {message}"),
    })
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` with a host name, resolved now. A name
/// with several addresses gets the first IPv4 one, else the first: `localhost` binds 127.0.0.1,
/// the address the docs and most clients use (a client that tries `::1` first falls back to
/// it). Used for every listen address of the binary, the registry's included.
pub fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let malformed =
        || format!("{text:?} is not HOST:PORT (e.g. 0.0.0.0:443, [::]:443 or localhost:8443)");
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(malformed()),
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("{text:?}: cannot resolve the host name: {err}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: the host name has no address"))
}

fn prefix(text: &str, source: &Source) -> Result<String, ConfigError> {
    if !text.starts_with('/') {
        return Err(ConfigError::Value {
            origin: source.clone(),
            message: format!("route prefix {text:?} must start with '/'"),
        });
    }
    Ok(text.to_owned())
}

fn upstreams(text: &str, source: &Source) -> Result<Vec<Upstream>, ConfigError> {
    parse_upstreams(text).map_err(|message| ConfigError::Value {
        origin: source.clone(),
        message,
    })
}

fn health_path(text: &str, source: Source) -> Result<PathAndQuery, ConfigError> {
    parse_health_path(text).map_err(|message| ConfigError::Value {
        origin: source,
        message: format!("health_path: {message}"),
    })
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses a config file's text; `path` is for messages and relative paths.
fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|err| {
        let line = err.span().map(|s| line_of(text, s.start));
        let message = err.message().to_owned();
        ConfigError::File {
            path: path.to_owned(),
            message: match line {
                // Quote the offending line: it names the key even when the message does not.
                Some(line) => format!(
                    "line {line} ({}): {message}",
                    text.lines().nth(line - 1).unwrap_or_default().trim()
                ),
                None => message,
            },
        }
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let src = |span: std::ops::Range<usize>| Source::File {
        path: path.to_owned(),
        line: line_of(text, span.start),
    };
    let dur =
        |v: &Option<toml::Spanned<String>>, key: &str| -> Result<Option<Duration>, ConfigError> {
            match v {
                None => Ok(None),
                Some(s) => parse_duration(s.get_ref())
                    .map(Some)
                    .map_err(|m| ConfigError::Value {
                        origin: src(s.span()),
                        message: format!("{key}: {m}"),
                    }),
            }
        };
    // A route's upstreams, each with the route's TLS server name and trust bundle; an error
    // points at the `upstream` key's line.
    let file_upstreams = |v: &toml::Spanned<FileUpstreams>,
                          sni: Option<&String>,
                          trust: Option<&PathBuf>|
     -> Result<Vec<Upstream>, ConfigError> {
        let mut ups = v.get_ref().parse().map_err(|message| ConfigError::Value {
            origin: src(v.span()),
            message,
        })?;
        for up in &mut ups {
            up.sni = sni.cloned();
            up.trust = trust.map(|t| resolve(base, t));
        }
        Ok(ups)
    };
    let mut layer = Layer::default();
    if let Some(v) = &file.listen {
        layer.listen = Some((
            socket_addr(v.get_ref(), &src(v.span()), "listen")?,
            src(v.span()),
        ));
    }
    let path_of = |v: &Option<toml::Spanned<PathBuf>>| {
        v.as_ref()
            .map(|v| (resolve(base, v.get_ref()), src(v.span())))
    };
    layer.cert = path_of(&file.cert);
    layer.key = path_of(&file.key);
    layer.client_ca = path_of(&file.client_ca);
    layer.trust = path_of(&file.trust);
    if let Some(v) = &file.client_cert_header {
        layer.client_cert_header = Some((header_name(v.get_ref(), &src(v.span()))?, src(v.span())));
    }
    if let Some(v) = &file.admin {
        layer.admin = Some((
            socket_addr(v.get_ref(), &src(v.span()), "admin")?,
            src(v.span()),
        ));
    }
    layer.reload_interval = dur(&file.reload_interval, "reload_interval")?;
    if let Some(v) = &file.health_path {
        layer.health_path = Some(health_path(v.get_ref(), src(v.span()))?);
    }
    layer.health_interval = dur(&file.health_interval, "health_interval")?;
    layer.health_timeout = dur(&file.health_timeout, "health_timeout")?;
    layer.retries = file.retries.as_ref().map(|v| *v.get_ref());
    if let Some(v) = &file.alpn {
        layer.alpn = Some(alpn(v.get_ref(), &src(v.span()))?);
    }
    if let Some(v) = &file.workers {
        layer.workers = Some(workers(*v.get_ref(), &src(v.span()))?);
    }
    let l = &file.limits;
    layer.header_read_timeout = dur(&l.header_read_timeout, "limits.header_read_timeout")?;
    layer.idle_timeout = dur(&l.idle_timeout, "limits.idle_timeout")?;
    layer.connect_timeout = dur(&l.connect_timeout, "limits.connect_timeout")?;
    layer.upstream_timeout = dur(&l.upstream_timeout, "limits.upstream_timeout")?;
    if let Some(v) = &l.max_header_bytes {
        if *v.get_ref() < 1024 {
            return Err(ConfigError::Value {
                origin: src(v.span()),
                message: "limits.max_header_bytes must be at least 1024".into(),
            });
        }
        layer.max_header_bytes = Some(*v.get_ref());
    }
    if let Some(v) = &l.max_connections {
        if *v.get_ref() == 0 {
            return Err(ConfigError::Value {
                origin: src(v.span()),
                message: "limits.max_connections must be at least 1".into(),
            });
        }
        layer.max_connections = Some(*v.get_ref());
    }
    for r in &file.routes {
        let source = src(r.span());
        let route = r.get_ref();
        // Errors point at the key's own line, not the table's.
        let key_src = |v: &toml::Spanned<String>| src(v.span());
        let ups = file_upstreams(&route.upstream, route.sni.as_ref(), route.trust.as_ref())?;
        let header = match &route.header {
            Some(h) => Some(header_name(h.get_ref(), &key_src(h)).map_err(|e| named("header", e))?),
            None => None,
        };
        let pfx = match (&route.prefix, &header) {
            (Some(p), _) => prefix(p.get_ref(), &key_src(p))?,
            (None, Some(_)) => "/".to_owned(),
            (None, None) => {
                return Err(ConfigError::Value {
                    origin: source,
                    message: "a [[routes]] entry needs `prefix` (or `header`)".into(),
                })
            }
        };
        layer.routes.push(Route {
            prefix: pfx,
            header,
            upstreams: ups,
            source,
        });
    }
    if let Some(d) = &file.default {
        let source = src(d.span());
        let d = d.get_ref();
        let ups = file_upstreams(&d.upstream, d.sni.as_ref(), d.trust.as_ref())?;
        layer.default = Some(Route {
            prefix: "/".into(),
            header: None,
            upstreams: ups,
            source,
        });
    }
    Ok(layer)
}

/// The IoT Edge API-proxy environment variables (and our own few for files).
fn env_layer(get: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let var = |name: &'static str| {
        get(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, Source::Env(name)))
    };
    if let Some((port, source)) = var("NGINX_DEFAULT_PORT") {
        let port: u16 = port.trim().parse().map_err(|_| ConfigError::Value {
            origin: source.clone(),
            message: format!("{port:?} is not a port number"),
        })?;
        layer.listen = Some((SocketAddr::from(([0, 0, 0, 0], port)), source));
    }
    for (name, field) in [
        ("PROXY_CERT_FILE", &mut layer.cert),
        ("PROXY_KEY_FILE", &mut layer.key),
        ("PROXY_TRUST_BUNDLE", &mut layer.trust),
        ("PROXY_CLIENT_CA", &mut layer.client_ca),
    ] {
        if let Some((v, source)) = var(name) {
            *field = Some((PathBuf::from(v), source));
        }
    }
    if let Some((v, source)) = var("PROXY_HEALTH_PATH") {
        layer.health_path = Some(health_path(&v, source)?);
    }
    if let Some((v, source)) = var("CONNECTED_ACR_ROUTE_ADDRESS") {
        let ups = upstreams(&v, &source)?;
        for p in REGISTRY_PREFIXES {
            layer.routes.push(Route {
                prefix: p.into(),
                header: None,
                upstreams: ups.clone(),
                source: source.clone(),
            });
        }
    }
    if let Some((v, source)) = var("DOCKER_REQUEST_ROUTE_ADDRESS") {
        let ups = upstreams(&v, &source)?;
        // Both set: the connected registry owns /v2 (it is the newer setting in IoT Edge).
        if !layer.routes.iter().any(|r| r.prefix == "/v2") {
            layer.routes.push(Route {
                prefix: "/v2".into(),
                header: None,
                upstreams: ups,
                source,
            });
        }
    }
    if let Some((v, source)) = var("BLOB_UPLOAD_ROUTE_ADDRESS") {
        layer.routes.push(Route {
            prefix: "/".into(),
            header: Some(HeaderName::from_static(BLOB_HEADER)),
            upstreams: upstreams(&v, &source)?,
            source,
        });
    }
    if let Some((v, source)) = var("IOTEDGE_PARENTHOSTNAME") {
        // The parent's API proxy (or its replicas, separated by commas), always over TLS; a
        // bare name means port 443.
        let texts: Vec<String> = v
            .split(',')
            .map(|t| {
                if t.contains("://") || t.trim().is_empty() {
                    t.to_owned()
                } else {
                    format!("https://{}", t.trim())
                }
            })
            .collect();
        let ups = upstream_list(texts.iter().map(String::as_str)).map_err(|message| {
            ConfigError::Value {
                origin: source.clone(),
                message,
            }
        })?;
        if ups.iter().any(|up| up.scheme != Scheme::Https) {
            return Err(ConfigError::Value {
                origin: source,
                message: "the parent is reached over TLS only; give a host name".into(),
            });
        }
        layer.default = Some(Route {
            prefix: "/".into(),
            header: None,
            upstreams: ups,
            source,
        });
    }
    Ok(layer)
}

fn flag_layer(flags: &Flags) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    if let Some(v) = &flags.listen {
        let s = Source::Flag("--listen");
        layer.listen = Some((socket_addr(v, &s, "listen")?, s));
    }
    layer.cert = flags.cert.clone().map(|p| (p, Source::Flag("--cert")));
    layer.key = flags.key.clone().map(|p| (p, Source::Flag("--key")));
    layer.client_ca = flags
        .client_ca
        .clone()
        .map(|p| (p, Source::Flag("--client-ca")));
    layer.trust = flags.trust.clone().map(|p| (p, Source::Flag("--trust")));
    if let Some(v) = &flags.client_cert_header {
        let s = Source::Flag("--client-cert-header");
        layer.client_cert_header = Some((header_name(v, &s)?, s));
    }
    if let Some(v) = &flags.admin {
        let s = Source::Flag("--admin");
        layer.admin = Some((socket_addr(v, &s, "admin")?, s));
    }
    for r in rejoined(&flags.routes) {
        let s = Source::Flag("--route");
        let (p, u) = r.split_once('=').ok_or_else(|| ConfigError::Value {
            origin: s.clone(),
            message: format!(
                "{r:?}: write PREFIX=URL or PREFIX=URL,URL,..., e.g. /v2=http://127.0.0.1:8080"
            ),
        })?;
        layer.routes.push(Route {
            prefix: prefix(p, &s)?,
            header: None,
            upstreams: upstreams(u, &s)?,
            source: s,
        });
    }
    for r in rejoined(&flags.header_routes) {
        let s = Source::Flag("--header-route");
        let (h, u) = r.split_once('=').ok_or_else(|| ConfigError::Value {
            origin: s.clone(),
            message: format!("{r:?}: write HEADER=URL, e.g. x-ms-version=http://127.0.0.1:11002"),
        })?;
        layer.routes.push(Route {
            prefix: "/".into(),
            header: Some(header_name(h, &s)?),
            upstreams: upstreams(u, &s)?,
            source: s,
        });
    }
    if let Some(d) = &flags.default {
        let s = Source::Flag("--default");
        layer.default = Some(Route {
            prefix: "/".into(),
            header: None,
            upstreams: upstreams(d, &s)?,
            source: s,
        });
    }
    let dur = |v: &Option<String>, name: &'static str| -> Result<Option<Duration>, ConfigError> {
        v.as_ref()
            .map(|t| {
                parse_duration(t).map_err(|message| ConfigError::Value {
                    origin: Source::Flag(name),
                    message,
                })
            })
            .transpose()
    };
    layer.header_read_timeout = dur(&flags.header_read_timeout, "--header-read-timeout")?;
    layer.idle_timeout = dur(&flags.idle_timeout, "--idle-timeout")?;
    layer.connect_timeout = dur(&flags.connect_timeout, "--connect-timeout")?;
    layer.upstream_timeout = dur(&flags.upstream_timeout, "--upstream-timeout")?;
    layer.reload_interval = dur(&flags.reload_interval, "--reload-interval")?;
    if let Some(v) = &flags.health_path {
        layer.health_path = Some(health_path(v, Source::Flag("--health-path"))?);
    }
    layer.health_interval = dur(&flags.health_interval, "--health-interval")?;
    layer.health_timeout = dur(&flags.health_timeout, "--health-timeout")?;
    layer.retries = flags.retries;
    if let Some(n) = flags.workers {
        layer.workers = Some(workers(n, &Source::Flag("--workers"))?);
    }
    if let Some(v) = &flags.alpn {
        let list: Vec<String> = v.split(',').map(|p| p.trim().to_owned()).collect();
        layer.alpn = Some(alpn(&list, &Source::Flag("--alpn"))?);
    }
    if let Some(n) = flags.max_header_bytes {
        if n < 1024 {
            return Err(ConfigError::Value {
                origin: Source::Flag("--max-header-bytes"),
                message: "must be at least 1024".into(),
            });
        }
        layer.max_header_bytes = Some(n);
    }
    if let Some(n) = flags.max_connections {
        if n == 0 {
            return Err(ConfigError::Value {
                origin: Source::Flag("--max-connections"),
                message: "must be at least 1".into(),
            });
        }
        layer.max_connections = Some(n);
    }
    Ok(layer)
}

/// Route flag values as the operator wrote them. `serve` splits the values of its repeatable
/// `--proxy-*` flags (and their variables) at commas, so `/v2=http://a,http://b` arrives as
/// `/v2=http://a` and `http://b`: a value without `=` (no URL has one) continues the route
/// before it.
fn rejoined(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        match out.last_mut() {
            Some(prev) if !v.contains('=') => {
                prev.push(',');
                prev.push_str(v);
            }
            _ => out.push(v.clone()),
        }
    }
    out
}

/// Merges layers, lowest precedence first.
fn merge(layers: Vec<Layer>, file: Option<PathBuf>, sni: Option<&str>) -> Config {
    let defaults = Limits::default();
    let mut c = Config {
        listen: (
            SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            Source::Default,
        ),
        cert: None,
        key: None,
        client_ca: None,
        client_cert_header: HeaderName::from_static(DEFAULT_CLIENT_CERT_HEADER),
        trust: None,
        admin: None,
        routes: Vec::new(),
        default: None,
        limits: defaults,
        balancing: Balancing::default(),
        reload_interval: DEFAULT_RELOAD_INTERVAL,
        alpn: DEFAULT_ALPN.iter().map(|p| p.to_string()).collect(),
        workers: default_workers(),
        file,
        dev_certs: None,
    };
    let mut routes: BTreeMap<(String, Option<String>), Route> = BTreeMap::new();
    for l in layers {
        macro_rules! take {
            ($field:ident) => {
                if l.$field.is_some() {
                    c.$field = l.$field;
                }
            };
        }
        if let Some(v) = l.listen {
            c.listen = v;
        }
        take!(cert);
        take!(key);
        take!(client_ca);
        take!(trust);
        take!(admin);
        if let Some((h, _)) = l.client_cert_header {
            c.client_cert_header = h;
        }
        if let Some(v) = l.reload_interval {
            c.reload_interval = v;
        }
        let b = &mut c.balancing;
        if let Some(v) = l.health_path {
            b.health_path = v;
        }
        b.health_interval = l.health_interval.unwrap_or(b.health_interval);
        b.health_timeout = l.health_timeout.unwrap_or(b.health_timeout);
        b.retries = l.retries.unwrap_or(b.retries);
        if let Some(v) = l.alpn {
            c.alpn = v;
        }
        if let Some(v) = l.workers {
            c.workers = v;
        }
        if let Some(d) = l.default {
            c.default = Some(d);
        }
        for r in l.routes {
            let key = (r.prefix.clone(), r.header.as_ref().map(|h| h.to_string()));
            routes.insert(key, r);
        }
        let lim = &mut c.limits;
        lim.max_header_bytes = l.max_header_bytes.unwrap_or(lim.max_header_bytes);
        lim.header_read_timeout = l.header_read_timeout.unwrap_or(lim.header_read_timeout);
        lim.idle_timeout = l.idle_timeout.unwrap_or(lim.idle_timeout);
        lim.connect_timeout = l.connect_timeout.unwrap_or(lim.connect_timeout);
        lim.upstream_timeout = l.upstream_timeout.unwrap_or(lim.upstream_timeout);
        lim.max_connections = l.max_connections.unwrap_or(lim.max_connections);
    }
    if let (Some(sni), Some(d)) = (sni, c.default.as_mut()) {
        for up in &mut d.upstreams {
            up.sni = Some(sni.to_owned());
        }
    }
    c.routes = routes.into_values().collect();
    c
}

impl Config {
    /// Builds the effective configuration from flags, the file they name (if any) and the
    /// environment (`get` reads a variable; pass `|k| std::env::var(k).ok()`).
    pub fn load(
        flags: &Flags,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        match Config::load_for_display(flags, get)? {
            (config, None) => Ok(config),
            (_, Some(problem)) => Err(problem),
        }
    }

    /// Like [`Config::load`], but returns a configuration that is not complete yet (no
    /// certificate, no route) together with what is missing, for `--print-config`: an
    /// operator checking a deployment's variables should see the table anyway.
    pub fn load_for_display(
        flags: &Flags,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Option<ConfigError>), ConfigError> {
        let env = env_layer(get)?;
        let file = match &flags.config {
            Some(path) => Some(file_layer(path)?),
            None => None,
        };
        let flag = flag_layer(flags)?;
        let mut layers = vec![env];
        if flags.in_process {
            layers.push(Layer {
                routes: REGISTRY_PREFIXES
                    .iter()
                    .map(|p| Route {
                        prefix: (*p).to_owned(),
                        header: None,
                        upstreams: vec![Upstream::in_process()],
                        source: Source::OneModule,
                    })
                    .collect(),
                ..Layer::default()
            });
        }
        layers.extend(file);
        layers.push(flag);
        let mut config = merge(layers, flags.config.clone(), flags.sni.as_deref());
        // The development chain only fills a gap no source filled: one half of a real pair
        // plus a development half would never match.
        if let (None, None, Some(dir)) = (&config.cert, &config.key, &flags.dev_certs) {
            let chain = certs::dev::DevChain::in_dir(dir);
            config.cert = Some((chain.server_chain, Source::Flag(DEV_CERTS_FLAG)));
            config.key = Some((chain.server_key, Source::Flag(DEV_CERTS_FLAG)));
            config.dev_certs = Some(dir.clone());
        }
        let problem = config.check().err();
        Ok((config, problem))
    }

    /// Checks what no single source can: the whole must be usable.
    fn check(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() && self.default.is_none() {
            return Err(ConfigError::Missing(
                "no routes: give --route PREFIX=URL or --default URL, a [[routes]] table in the \
                 config file, or CONNECTED_ACR_ROUTE_ADDRESS / IOTEDGE_PARENTHOSTNAME"
                    .into(),
            ));
        }
        if self.cert.is_none() || self.key.is_none() {
            return Err(ConfigError::Missing(
                "the TLS server certificate is missing: give --cert CHAIN.pem and --key KEY.pem \
                 (or `cert`/`key` in the config file, or PROXY_CERT_FILE/PROXY_KEY_FILE); \
                 for a local test only, --dev-certs DIR generates a development chain in DIR"
                    .into(),
            ));
        }
        for r in self.routes.iter().chain(self.default.as_ref()) {
            for up in &r.upstreams {
                if up.scheme == Scheme::Https && up.trust.is_none() && self.trust.is_none() {
                    return Err(ConfigError::Value {
                        origin: r.source.clone(),
                        message: format!(
                            "{up} is https but no trust bundle is set: give --trust ROOT.pem \
                             (or `trust` in the config file or the route)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The trust bundle a route's upstream is verified against.
    pub fn trust_for(&self, up: &Upstream) -> Option<PathBuf> {
        up.trust
            .clone()
            .or_else(|| self.trust.as_ref().map(|(p, _)| p.clone()))
    }

    /// The effective table for `--print-config`, one entry a line with its origin.
    pub fn render(&self) -> String {
        let mut table = util::config_table::ConfigTable::new();
        let mut line = |k: &str, v: String, s: &dyn fmt::Display| {
            table.line(k, v, s);
        };
        line("listen", self.listen.0.to_string(), &self.listen.1);
        let p = |v: &Option<(PathBuf, Source)>| match v {
            Some((p, s)) => (p.display().to_string(), s.to_string()),
            None => ("-".into(), "unset".into()),
        };
        for (k, v) in [
            ("cert", &self.cert),
            ("key", &self.key),
            ("client_ca", &self.client_ca),
            ("trust", &self.trust),
        ] {
            let (a, b) = p(v);
            line(k, a, &b);
        }
        match &self.admin {
            Some((a, s)) => line("admin", a.to_string(), s),
            None => line("admin", "-".into(), &"unset (no metrics listener)"),
        }
        line(
            "client_cert_header",
            self.client_cert_header.to_string(),
            &"",
        );
        line("alpn", self.alpn.join(","), &"");
        line("workers", self.workers.to_string(), &"");
        line(
            "reload_interval",
            format!("{:?}", self.reload_interval),
            &"",
        );
        let b = &self.balancing;
        line("health_path", b.health_path.to_string(), &"");
        line("health_interval", format!("{:?}", b.health_interval), &"");
        line("health_timeout", format!("{:?}", b.health_timeout), &"");
        line("retries", b.retries.to_string(), &"");
        let l = &self.limits;
        line(
            "limits.max_header_bytes",
            l.max_header_bytes.to_string(),
            &"",
        );
        line(
            "limits.header_read_timeout",
            format!("{:?}", l.header_read_timeout),
            &"",
        );
        line("limits.idle_timeout", format!("{:?}", l.idle_timeout), &"");
        line(
            "limits.connect_timeout",
            format!("{:?}", l.connect_timeout),
            &"",
        );
        line(
            "limits.upstream_timeout",
            format!("{:?}", l.upstream_timeout),
            &"",
        );
        line("limits.max_connections", l.max_connections.to_string(), &"");
        for r in &self.routes {
            let key = match &r.header {
                Some(h) => format!("route {} [{h}]", r.prefix),
                None => format!("route {}", r.prefix),
            };
            line(&key, describe(&r.upstreams, self), &r.source);
        }
        match &self.default {
            Some(r) => line("default", describe(&r.upstreams, self), &r.source),
            None => line("default", "- (404 for unrouted paths)".into(), &"unset"),
        }
        table.to_string()
    }
}

/// A route's upstreams for `--print-config`, separated by `, `.
fn describe(ups: &[Upstream], c: &Config) -> String {
    ups.iter()
        .map(|up| describe_one(up, c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_one(up: &Upstream, c: &Config) -> String {
    match up.scheme {
        Scheme::Http => up.to_string(),
        Scheme::InProcess => format!("{up} (this process's registry, no connection)"),
        Scheme::Https => format!(
            "{} sni={} trust={}",
            up,
            up.sni.as_deref().unwrap_or(&up.host),
            c.trust_for(up)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into())
        ),
    }
}

// ---- what a reload changes ----

/// What a changed configuration means for a running proxy: what a reload applies at once, and
/// what keeps its old value until the next restart. The reload loop only applies it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The route table changed (routes, the default route, the trust bundle or SNI an https
    /// upstream is checked with, or how routes with several upstreams balance and check them):
    /// new tables are built, each new request uses them.
    pub routes: bool,
    /// Settings read once at start (the listener, its certificate and key paths, client
    /// authentication, ALPN, limits, workers, the admin listener, the reload interval), by
    /// their config-file names: a new value takes effect at the next restart. The certificate
    /// and trust *files* are watched and reloaded on their own; only their paths are here.
    pub restart_needed: Vec<&'static str>,
}

impl Config {
    /// Compares the configuration in service (`self`) with a newly loaded one.
    pub fn change_to(&self, new: &Config) -> Change {
        let path = |v: &Option<(PathBuf, Source)>| v.as_ref().map(|(p, _)| p.clone());
        let addr = |v: &Option<(SocketAddr, Source)>| v.as_ref().map(|(a, _)| *a);
        let at_start = [
            ("listen", self.listen.0 != new.listen.0),
            ("cert", path(&self.cert) != path(&new.cert)),
            ("key", path(&self.key) != path(&new.key)),
            ("client_ca", path(&self.client_ca) != path(&new.client_ca)),
            (
                "client_cert_header",
                self.client_cert_header != new.client_cert_header,
            ),
            ("admin", addr(&self.admin) != addr(&new.admin)),
            ("alpn", self.alpn != new.alpn),
            ("workers", self.workers != new.workers),
            ("limits", self.limits != new.limits),
            (
                "reload_interval",
                self.reload_interval != new.reload_interval,
            ),
        ];
        Change {
            routes: self.routes != new.routes
                || self.default != new.default
                || path(&self.trust) != path(&new.trust)
                || self.balancing != new.balancing,
            restart_needed: at_start
                .into_iter()
                .filter(|(_, changed)| *changed)
                .map(|(name, _)| name)
                .collect(),
        }
    }
}

/// Fuzz target for the route configuration (bounded run in the tests below; `fuzz/` under
/// `cargo fuzz`): a config file's text, the IoT Edge route variables, a route's upstreams or a timeout
/// parse or are refused with a message, never a panic; upstreams that parse print as URLs that
/// parse back to them. File seeds have no `listen` or `admin` key: those resolve host names.
#[cfg(any(test, fuzzing))]
pub fn fuzz_route_config(data: &[u8]) {
    let mut g = fuzzkit::Gen::new(data);
    match g.below(4) {
        0 => {
            let text = fuzzkit::text(g.rest());
            if let Err(e) = parse_file(Path::new("/etc/proxy.toml"), &text) {
                let _ = e.to_string();
            }
        }
        1 => {
            let names = [
                "NGINX_DEFAULT_PORT",
                "CONNECTED_ACR_ROUTE_ADDRESS",
                "DOCKER_REQUEST_ROUTE_ADDRESS",
                "BLOB_UPLOAD_ROUTE_ADDRESS",
                "IOTEDGE_PARENTHOSTNAME",
                "PROXY_HEALTH_PATH",
            ];
            let set: Vec<bool> = names.iter().map(|_| g.bool()).collect();
            let values: Vec<String> = fuzzkit::text(g.rest())
                .split('\n')
                .map(str::to_owned)
                .collect();
            let get = |name: &str| {
                let i = names.iter().position(|n| *n == name)?;
                set[i].then(|| values.get(i).cloned().unwrap_or_default())
            };
            match env_layer(&get) {
                Err(e) => {
                    let _ = e.to_string();
                }
                // A health path that shows in logs never carries a query.
                Ok(layer) => assert!(layer
                    .health_path
                    .is_none_or(|p| p.query().is_none() && p.as_str().starts_with('/'))),
            }
        }
        2 => {
            let text = fuzzkit::text(g.rest());
            if let Ok(ups) = parse_upstreams(&text) {
                assert!(!ups.is_empty());
                for up in &ups {
                    assert!(
                        up.scheme == Scheme::InProcess || (up.port != 0 && !up.host.is_empty())
                    );
                    assert!(ups.len() == 1 || up.scheme != Scheme::InProcess);
                }
                let shown = upstreams_text(&ups);
                assert_eq!(
                    parse_upstreams(&shown).as_ref(),
                    Ok(&ups),
                    "{text:?} shown as {shown}"
                );
            }
        }
        _ => {
            if let Ok(d) = parse_duration(&fuzzkit::text(g.rest())) {
                assert!(!d.is_zero());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn flags() -> Flags {
        Flags {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..Flags::default()
        }
    }

    fn loaded(f: &Flags) -> Config {
        Config::load(f, &env(&[])).unwrap()
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let f = Flags {
            routes: vec!["/v2=http://127.0.0.1:9".into()],
            ..flags()
        };
        assert_eq!(loaded(&f).change_to(&loaded(&f)), Change::default());
    }

    #[test]
    fn routes_and_trust_are_applied_at_once() {
        let old = Flags {
            routes: vec!["/v2=http://127.0.0.1:9".into()],
            default: Some("https://parent.example".into()),
            trust: Some("ca.pem".into()),
            ..flags()
        };
        let new_route = Flags {
            routes: vec!["/v2=http://127.0.0.1:10".into()],
            ..old.clone()
        };
        let new_default = Flags {
            default: Some("https://other.example".into()),
            ..old.clone()
        };
        let new_trust = Flags {
            trust: Some("other-ca.pem".into()),
            ..old.clone()
        };
        for new in [new_route, new_default, new_trust] {
            let change = loaded(&old).change_to(&loaded(&new));
            assert!(change.routes, "{new:?}");
            assert!(change.restart_needed.is_empty(), "{new:?}: {change:?}");
        }
    }

    #[test]
    fn settings_read_at_start_wait_for_a_restart() {
        let old = Flags {
            routes: vec!["/v2=http://127.0.0.1:9".into()],
            ..flags()
        };
        let new = Flags {
            listen: Some("127.0.0.1:9443".into()),
            cert: Some("other.pem".into()),
            idle_timeout: Some("5m".into()),
            workers: Some(3),
            reload_interval: Some("PT10S".into()),
            ..old.clone()
        };
        let change = loaded(&old).change_to(&loaded(&new));
        assert!(!change.routes);
        assert_eq!(
            change.restart_needed,
            ["listen", "cert", "workers", "limits", "reload_interval"]
        );
    }

    #[test]
    fn durations_take_both_spellings_and_bare_seconds() {
        assert_eq!(parse_duration("PT30S").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        let zero = parse_duration("0s").unwrap_err();
        assert!(zero.contains("must be positive"), "{zero}");
        let soon = parse_duration("soon").unwrap_err();
        assert!(
            soon.contains("is not a duration") && soon.contains("PT1H"),
            "{soon}"
        );
    }

    #[test]
    fn env_builds_the_iot_edge_table_and_flags_override() {
        let mut f = flags();
        f.routes.push("/v2=http://127.0.0.1:9".into());
        f.trust = Some("root.pem".into());
        let c = Config::load(
            &f,
            &env(&[
                ("NGINX_DEFAULT_PORT", "8443"),
                ("CONNECTED_ACR_ROUTE_ADDRESS", "registry:8080"),
                ("BLOB_UPLOAD_ROUTE_ADDRESS", "blob:11002"),
                ("IOTEDGE_PARENTHOSTNAME", "parent.example"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.0.port(), 8443);
        let v2 = c.routes.iter().find(|r| r.prefix == "/v2").unwrap();
        assert_eq!(upstreams_text(&v2.upstreams), "http://127.0.0.1:9");
        assert_eq!(v2.source, Source::Flag("--route"));
        let acr = c.routes.iter().find(|r| r.prefix == "/acr").unwrap();
        assert_eq!(upstreams_text(&acr.upstreams), "http://registry:8080");
        assert!(c
            .routes
            .iter()
            .any(|r| r.header.as_ref().map(|h| h.as_str()) == Some("x-ms-version")));
        assert_eq!(
            upstreams_text(&c.default.unwrap().upstreams),
            "https://parent.example:443"
        );
    }

    /// The development chain fills only a gap no source filled, labelled `flag --dev-certs`;
    /// half of a configured pair is an error, never completed with a development half.
    #[test]
    fn dev_certs_fill_only_a_missing_pair() {
        let none = env(&[]);
        let mut f = Flags {
            routes: vec!["/v2=http://127.0.0.1:9".into()],
            ..Flags::default()
        };
        let err = Config::load(&f, &none).unwrap_err().to_string();
        assert!(
            err.contains("--cert") && err.contains(DEV_CERTS_FLAG),
            "{err}"
        );

        f.dev_certs = Some("dev".into());
        let c = Config::load(&f, &none).unwrap();
        let (cert, source) = c.cert.clone().unwrap();
        assert!(cert.starts_with("dev"), "{cert:?}");
        assert_eq!(source, Source::Flag(DEV_CERTS_FLAG));
        assert_eq!(c.dev_certs.as_deref(), Some(Path::new("dev")));
        assert!(c.render().contains("# flag --dev-certs"));

        f.cert = Some("c.pem".into());
        assert!(Config::load(&f, &none).is_err(), "a cert without its key");
        f.key = Some("k.pem".into());
        let c = Config::load(&f, &none).unwrap();
        assert_eq!(c.cert.unwrap().1, Source::Flag("--cert"));
        assert!(c.dev_certs.is_none());
    }

    #[test]
    fn file_errors_name_key_and_line() {
        let text =
            "listen = \"127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/v2\"\nupstream = \"ftp://x\"\n";
        let err = match parse_file(Path::new("/etc/p.toml"), text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("ftp upstream accepted"),
        };
        assert!(err.contains("/etc/p.toml:5"), "{err}");
        let err = match parse_file(Path::new("p.toml"), "listen = \"x\"\nbogus = 1\n") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("unknown key accepted"),
        };
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn fuzz_route_config_bounded() {
        let file = b"\x00cert = \"c.pem\"\nkey = \"k.pem\"\ntrust = \"t.pem\"\nclient_ca = \"ca.pem\"\nclient_cert_header = \"x-client-cert\"\nreload_interval = \"30s\"\nalpn = [\"h2\", \"http/1.1\"]\nworkers = 2\n[limits]\nmax_header_bytes = 65536\nheader_read_timeout = \"PT10S\"\nidle_timeout = \"60\"\nconnect_timeout = \"5s\"\nupstream_timeout = \"1m\"\nmax_connections = 100\n[[routes]]\nprefix = \"/v2\"\nupstream = \"http://127.0.0.1:8080\"\n[[routes]]\nheader = \"x-ms-blob-type\"\nupstream = \"https://[::1]:8443\"\nsni = \"reg\"\ntrust = \"up.pem\"\n[default]\nupstream = \"https://parent:443\"\n";
        let seeds: [&[u8]; 6] = [
            file,
            b"\x01\x01\x01\x01\x01\x018443\nhttp://127.0.0.1:8080\n127.0.0.1:5000\nhttp://blob:11002\nparent.local",
            b"\x02https://registry:8443/",
            b"\x02[fe80::1]:80",
            b"\x03PT30S",
            b"\x03500ms",
        ];
        fuzzkit::run("proxy::route_config", &seeds, fuzz_route_config);
    }

    /// Found by fuzzing: a host with a stray bracket was taken (`1::1]:80` as host `1::1]`),
    /// and printed as a URL that does not parse back (`http://[1::1]]:80`).
    #[test]
    fn fuzz_regression_upstream_with_a_stray_bracket_is_refused() {
        for bad in ["1::1]:80", "http://[[a]:1", "a]b:80", "https://[::1]]"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Upstream::parse("[::1]:80").unwrap().host, "::1");
    }

    fn route<'a>(c: &'a Config, prefix: &str) -> &'a Route {
        c.routes
            .iter()
            .find(|r| r.prefix == prefix && r.header.is_none())
            .unwrap_or_else(|| panic!("no route {prefix} in {:?}", c.routes))
    }

    fn flag_error(f: Flags) -> String {
        Config::load(&f, &env(&[])).unwrap_err().to_string()
    }

    #[test]
    fn several_upstreams_in_the_comma_form() {
        let f = Flags {
            routes: vec!["/v2=http://10.0.0.4:8080, 10.0.0.5:8080".into()],
            header_routes: vec!["x-ms-version=http://blob1:11002,http://blob2:11002".into()],
            default: Some("https://p1.example,https://[fd00::2]:8443".into()),
            trust: Some("root.pem".into()),
            ..flags()
        };
        let c = loaded(&f);
        assert_eq!(
            upstreams_text(&route(&c, "/v2").upstreams),
            "http://10.0.0.4:8080,http://10.0.0.5:8080"
        );
        let blob = c.routes.iter().find(|r| r.header.is_some()).unwrap();
        assert_eq!(blob.upstreams.len(), 2);
        let default = c.default.as_ref().unwrap();
        assert_eq!(
            upstreams_text(&default.upstreams),
            "https://p1.example:443,https://[fd00::2]:8443"
        );
        // `--print-config` lists each, with its TLS details.
        let shown = c.render();
        let v2 = shown.lines().find(|l| l.starts_with("route /v2 ")).unwrap();
        assert!(
            v2.contains("http://10.0.0.4:8080, http://10.0.0.5:8080")
                && v2.contains("flag --route"),
            "{v2}"
        );
        let d = shown.lines().find(|l| l.starts_with("default ")).unwrap();
        assert!(
            d.contains("https://p1.example:443 sni=p1.example trust=root.pem, https://[fd00::2]:8443 sni=fd00::2"),
            "{d}"
        );
        // One upstream is a route as before.
        let one = loaded(&Flags {
            routes: vec!["/v2=http://127.0.0.1:9".into()],
            ..flags()
        });
        assert_eq!(
            route(&one, "/v2").upstreams,
            [Upstream::parse("http://127.0.0.1:9").unwrap()]
        );
    }

    /// `serve --proxy-route` splits its values at commas (so its variable can list routes):
    /// the URLs after the first come back to their route.
    #[test]
    fn split_route_values_are_rejoined() {
        let f = Flags {
            routes: vec![
                "/v2=http://a:1".into(),
                "http://b:2".into(),
                "/acr=http://c:3".into(),
            ],
            ..flags()
        };
        let c = loaded(&f);
        assert_eq!(
            upstreams_text(&route(&c, "/v2").upstreams),
            "http://a:1,http://b:2"
        );
        assert_eq!(upstreams_text(&route(&c, "/acr").upstreams), "http://c:3");
        let err = flag_error(Flags {
            routes: vec!["http://b:2".into()],
            ..flags()
        });
        assert!(err.contains("write PREFIX=URL"), "{err}");
    }

    #[test]
    fn the_file_takes_a_list_or_the_comma_form() {
        let text = "[[routes]]\nprefix = \"/v2\"\nupstream = [\"http://a:1\", \"http://b:2\"]\n\
                    [[routes]]\nprefix = \"/acr\"\nupstreams = \"http://a:1,http://b:2\"\n\
                    [default]\nupstreams = [\"https://p1\", \"https://p2\"]\nsni = \"parent\"\n";
        let layer = match parse_file(Path::new("/etc/p.toml"), text) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        for r in &layer.routes {
            assert_eq!(
                upstreams_text(&r.upstreams),
                "http://a:1,http://b:2",
                "{}",
                r.prefix
            );
        }
        let d = layer.default.unwrap();
        assert_eq!(
            upstreams_text(&d.upstreams),
            "https://p1:443,https://p2:443"
        );
        assert!(d
            .upstreams
            .iter()
            .all(|u| u.sni.as_deref() == Some("parent")));
        let err = match parse_file(
            Path::new("p.toml"),
            "[[routes]]\nprefix = \"/v2\"\nupstream = 5\n",
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a number taken as upstreams"),
        };
        assert!(
            err.contains("line 3") && err.contains("list of URL"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_upstreams_are_refused_naming_both_spellings() {
        let err = flag_error(Flags {
            routes: vec!["/v2=http://reg:80,reg".into()],
            ..flags()
        });
        assert!(
            err.contains("flag --route")
                && err.contains("http://reg:80 is listed twice")
                && err.contains("\"reg\""),
            "{err}"
        );
        let text = "[[routes]]\nprefix = \"/v2\"\n\nupstream = [\"http://a:1\", \"http://a:1/\"]\n";
        let err = match parse_file(Path::new("/etc/p.toml"), text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("duplicate accepted"),
        };
        assert!(
            err.contains("/etc/p.toml:4: upstream http://a:1 is listed twice"),
            "{err}"
        );
        let err = Config::load(
            &flags(),
            &env(&[("CONNECTED_ACR_ROUTE_ADDRESS", "reg:8080,reg:8080")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("env CONNECTED_ACR_ROUTE_ADDRESS") && err.contains("listed twice"),
            "{err}"
        );
        let err = flag_error(Flags {
            routes: vec!["/v2=http://a:1,,http://b:2".into()],
            ..flags()
        });
        assert!(
            err.contains("empty upstream") && err.contains("stray comma"),
            "{err}"
        );
    }

    #[test]
    fn in_process_beside_network_upstreams_is_refused() {
        for list in [
            "in-process,http://127.0.0.1:8080",
            "http://127.0.0.1:8080,in-process",
        ] {
            let err = flag_error(Flags {
                routes: vec![format!("/v2={list}")],
                ..flags()
            });
            assert!(
                err.contains("flag --route")
                    && err.contains("in-process cannot share a route")
                    && err.contains("route it alone"),
                "{err}"
            );
        }
        let text = "[[routes]]\nprefix = \"/v2\"\nupstream = [\"in-process\", \"http://a:1\"]\n";
        assert!(parse_file(Path::new("p.toml"), text).is_err());
        // Alone, as the one module routes it, it is fine.
        assert_eq!(
            parse_upstreams("in-process").unwrap(),
            [Upstream::in_process()]
        );
    }

    #[test]
    fn iot_edge_variables_take_several_upstreams() {
        let c = Config::load(
            &Flags {
                trust: Some("root.pem".into()),
                ..flags()
            },
            &env(&[
                (
                    "CONNECTED_ACR_ROUTE_ADDRESS",
                    "registry1:8080,registry2:8080",
                ),
                ("BLOB_UPLOAD_ROUTE_ADDRESS", "blob:11002"),
                ("IOTEDGE_PARENTHOSTNAME", "parent1,parent2:8443"),
            ]),
        )
        .unwrap();
        for p in REGISTRY_PREFIXES {
            assert_eq!(
                upstreams_text(&route(&c, p).upstreams),
                "http://registry1:8080,http://registry2:8080"
            );
        }
        assert_eq!(
            upstreams_text(&c.default.unwrap().upstreams),
            "https://parent1:443,https://parent2:8443"
        );
        let err = Config::load(
            &flags(),
            &env(&[("IOTEDGE_PARENTHOSTNAME", "parent1,http://parent2")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("TLS only"), "{err}");
    }

    #[test]
    fn balancing_settings_have_defaults_and_every_source() {
        let c = loaded(&Flags {
            routes: vec!["/v2=http://a:1".into()],
            ..flags()
        });
        assert_eq!(c.balancing, Balancing::default());
        assert_eq!(c.balancing.health_interval, Duration::from_secs(2));
        assert_eq!(c.balancing.health_timeout, Duration::from_secs(1));
        assert_eq!(c.balancing.retries, 1);
        let rendered = c.render();
        for key in ["health_interval ", "health_timeout ", "retries "] {
            assert!(rendered.lines().any(|l| l.starts_with(key)), "{rendered}");
        }
        let file = parse_file(
            Path::new("p.toml"),
            "health_interval = \"500ms\"\nhealth_timeout = \"PT0.2S\"\nretries = 0\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.health_interval, Some(Duration::from_millis(500)));
        assert_eq!(file.health_timeout, Some(Duration::from_millis(200)));
        assert_eq!(file.retries, Some(0));
        let f = Flags {
            routes: vec!["/v2=http://a:1,http://b:2".into()],
            health_interval: Some("3s".into()),
            retries: Some(2),
            ..flags()
        };
        let new = loaded(&f);
        assert_eq!(new.balancing.health_interval, Duration::from_secs(3));
        assert_eq!(new.balancing.retries, 2);
        let changed = loaded(&Flags {
            routes: f.routes.clone(),
            ..flags()
        })
        .change_to(&new);
        assert!(
            changed.routes && changed.restart_needed.is_empty(),
            "{changed:?}"
        );
        let err = flag_error(Flags {
            health_timeout: Some("0s".into()),
            ..f
        });
        assert!(
            err.contains("--health-timeout") && err.contains("positive"),
            "{err}"
        );
    }

    /// The health check's path: `/readyz` unless the IoT Edge variable, the file or the flag
    /// says otherwise (in that order of precedence), shown by `--print-config`, applied by a
    /// reload; a relative path or one with a query is refused naming its source, and a query
    /// (which may hold a secret) is not repeated.
    #[test]
    fn health_path_has_a_default_every_source_and_refuses_queries() {
        let route = || vec!["/v2=http://a:1,http://b:2".to_string()];
        let c = loaded(&Flags {
            routes: route(),
            ..flags()
        });
        assert_eq!(c.balancing.health_path.as_str(), DEFAULT_HEALTH_PATH);
        assert_eq!(DEFAULT_HEALTH_PATH, "/readyz");
        let shown = c.render();
        let line = shown
            .lines()
            .find(|l| l.starts_with("health_path "))
            .unwrap();
        assert!(line.contains("/readyz"), "{line}");

        let from_env = |f: &Flags| {
            Config::load(f, &env(&[("PROXY_HEALTH_PATH", "/v2/")]))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let unflagged = Flags {
            routes: route(),
            ..flags()
        };
        assert_eq!(from_env(&unflagged).balancing.health_path.as_str(), "/v2/");
        let file = parse_file(Path::new("p.toml"), "health_path = \"/healthz\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            file.health_path.as_ref().map(|p| p.as_str()),
            Some("/healthz")
        );
        let flagged = Flags {
            routes: route(),
            health_path: Some("/v2/".into()),
            ..flags()
        };
        let new = from_env(&Flags {
            health_path: Some("/debug/health".into()),
            ..flagged.clone()
        });
        assert_eq!(
            new.balancing.health_path.as_str(),
            "/debug/health",
            "the flag wins"
        );
        assert!(new
            .render()
            .lines()
            .any(|l| l.starts_with("health_path ") && l.contains("/debug/health")));
        let changed = c.change_to(&new);
        assert!(
            changed.routes && changed.restart_needed.is_empty(),
            "a reload applies it: {changed:?}"
        );

        let err = flag_error(Flags {
            health_path: Some("readyz".into()),
            ..flagged.clone()
        });
        assert!(
            err.contains("flag --health-path")
                && err.contains("health_path")
                && err.contains("starting with '/'"),
            "{err}"
        );
        let err = flag_error(Flags {
            health_path: Some("/health?token=s3cret".into()),
            ..flagged.clone()
        });
        assert!(
            err.contains("flag --health-path") && err.contains("query") && !err.contains("s3cret"),
            "{err}"
        );
        let err = Config::load(&flags(), &env(&[("PROXY_HEALTH_PATH", "/a b")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("env PROXY_HEALTH_PATH") && err.contains("not a valid URL path"),
            "{err}"
        );
        let err = match parse_file(
            Path::new("/etc/p.toml"),
            "retries = 1\nhealth_path = \"/h#xyz\"\n",
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a fragment accepted"),
        };
        assert!(
            err.contains("/etc/p.toml:2: health_path") && !err.contains("xyz"),
            "{err}"
        );
    }

    /// Credentials in an upstream URL are refused, and the message does not repeat them.
    #[test]
    fn credentials_in_an_upstream_are_refused_unrepeated() {
        let err = Upstream::parse("http://admin:s3cret@reg:8080").unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn upstream_parsing() {
        assert_eq!(
            Upstream::parse("https://[::1]").unwrap().authority(),
            "[::1]:443"
        );
        assert_eq!(
            Upstream::parse("host").unwrap().to_string(),
            "http://host:80"
        );
        assert!(Upstream::parse("http://h:0").is_err());
        assert!(Upstream::parse("http://h:1/path").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            listen_addr("localhost:8443").unwrap(),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(listen_addr("[::1]:1").unwrap(), "[::1]:1".parse().unwrap());
        for bad in ["localhost", "localhost:99999", ":80"] {
            assert!(listen_addr(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("3 weeks").is_err());
    }
}
