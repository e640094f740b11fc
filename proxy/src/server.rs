//! The TLS listener and the forwarding handler: accepts client connections (HTTP/1.1 and
//! HTTP/2 over TLS), picks a route, streams the exchange to the upstream and back, and
//! reloads config, certificate and trust bundle in the background.
//!
//! An upstream is reached over the network, or, in the one-module deployment (`serve
//! --proxy-listen`), is the registry in this process: its router is called with the request
//! directly (no loopback connection, no second HTTP parse; bodies are handed over as streams).
//! Everything else (request id, `X-Forwarded-*`, access log, metrics, limits, error bodies) is
//! one code path for both.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use certs::reload::{ReloadingServer, ReloadingTrust};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use oci::{Class, Fault};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

use crate::balance::{failed_before_response, Balancer, Board, InFlight};
use crate::body::{Exchange, Outcome, ReqBody, ReqProgress, RespBody, UpstreamBody};
use crate::config::{Config, ConfigError, Limits, Route, Scheme, Upstream};
use crate::metrics::{serve_admin, Metrics};
use crate::upstream::{ConnectError, UpstreamClient};
use util::error_chain::error_chain;
use util::file_watch::FileWatch;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server certificate: {0}")]
    Cert(#[from] certs::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Route(String),
}

/// Where a route's requests go.
enum Target {
    /// An upstream over the network, through its pooled client.
    Remote(Arc<UpstreamClient>),
    /// The registry in this process: its router, called with the request.
    InProcess(axum::Router),
}

/// One upstream of a route: where requests go, and its name.
struct Choice {
    target: Target,
    /// The upstream as written in the config, for logs and metrics.
    name: Arc<str>,
}

/// A route with its upstreams.
struct Entry {
    route: Route,
    /// How error bodies name the route to clients ("route /v2", "the default route"): the
    /// route, never the upstream's address, which is internal.
    label: Arc<str>,
    /// In the route's order; never empty.
    choices: Vec<Choice>,
    /// The choice among several upstreams and their health; `None` for a route with one.
    balancer: Option<Balancer>,
}

impl Entry {
    /// `route` with its targets (in its upstreams' order); `board` holds the health of the
    /// upstreams of routes with several.
    fn new(route: &Route, targets: Vec<Target>, default: bool, board: &Board) -> Entry {
        let choices: Vec<Choice> = targets
            .into_iter()
            .zip(&route.upstreams)
            .map(|(target, up)| {
                let name = match &target {
                    Target::Remote(client) => client.name.clone(),
                    Target::InProcess(_) => up.to_string().into(),
                };
                Choice { target, name }
            })
            .collect();
        let balancer = (choices.len() > 1)
            .then(|| {
                choices
                    .iter()
                    .map(|c| board.health(&c.name))
                    .collect::<Option<Vec<_>>>()
            })
            .flatten()
            .map(Balancer::new);
        Entry {
            route: route.clone(),
            label: route.label(default).into(),
            choices,
            balancer,
        }
    }

    /// The upstream for a request's next attempt, not one of those it `tried`; `None` once it
    /// tried them all.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        match &self.balancer {
            None => tried.is_empty().then_some(0),
            Some(b) => b.pick(tried),
        }
    }
}

/// The routing table in force; swapped whole on reload.
struct Table {
    /// Header routes first, then path routes; each group longest prefix first.
    routes: Vec<Entry>,
    default: Option<Entry>,
    /// How many more upstreams a GET or HEAD may be sent to (`retries`).
    retries: u32,
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

impl Table {
    fn pick(&self, path: &str, headers: &HeaderMap) -> Option<&Entry> {
        self.routes
            .iter()
            .find(|e| {
                prefix_matches(&e.route.prefix, path)
                    && e.route
                        .header
                        .as_ref()
                        .is_none_or(|h| headers.contains_key(h))
            })
            .or(self.default.as_ref())
    }
}

/// Shared by every connection.
struct State {
    /// One table per worker thread: each worker has its own upstream clients (pools), so
    /// a request never hands its upstream connection to another thread.
    tables: RwLock<Vec<Arc<Table>>>,
    workers: usize,
    config: RwLock<Arc<Config>>,
    limits: Limits,
    client_cert_header: HeaderName,
    metrics: Arc<Metrics>,
    server_cert: Arc<ReloadingServer>,
    trusts: Mutex<HashMap<PathBuf, Arc<ReloadingTrust>>>,
    clients: Mutex<HashMap<String, Arc<UpstreamClient>>>,
    /// The registry in this process (one module), for routes to `in-process`.
    registry: Option<axum::Router>,
}

/// ALPN offered to upstreams: HTTP/2 when the upstream speaks it (another proxy of ours).
fn upstream_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

impl State {
    fn trust(&self, path: PathBuf) -> Result<Arc<ReloadingTrust>, String> {
        let mut trusts = self.trusts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = trusts.get(&path) {
            return Ok(t.clone());
        }
        let t = Arc::new(
            ReloadingTrust::new(path.clone(), upstream_alpn())
                .map_err(|e| format!("trust bundle: {e}"))?,
        );
        trusts.insert(path, t.clone());
        Ok(t)
    }

    /// Where requests for `up` go from `worker`.
    fn target(&self, config: &Config, up: &Upstream, worker: usize) -> Result<Target, String> {
        if up.scheme != Scheme::InProcess {
            return self.client(config, up, Some(worker)).map(Target::Remote);
        }
        match &self.registry {
            Some(router) => Ok(Target::InProcess(router.clone())),
            None => Err(format!(
                "{up} names the registry in this process, which only the one-module \
                 deployment (`connected-registry serve --proxy-listen`) has; give the \
                 registry's URL instead (e.g. http://127.0.0.1:8080)"
            )),
        }
    }

    /// The pooled client for `up` of `worker`, or of the health checker (`None`): each has
    /// its own pools.
    fn client(
        &self,
        config: &Config,
        up: &Upstream,
        worker: Option<usize>,
    ) -> Result<Arc<UpstreamClient>, String> {
        let trust_path = config.trust_for(up);
        let key = format!("{worker:?} {up} sni={:?} trust={:?}", up.sni, trust_path);
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let trust = match (up.scheme, trust_path) {
            (crate::config::Scheme::Https, Some(p)) => Some(self.trust(p)?),
            _ => None,
        };
        let client = Arc::new(UpstreamClient::new(up, trust, self.limits.connect_timeout)?);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, client.clone());
        Ok(client)
    }

    /// Tables for every worker, and the health board they share; neither is in service yet
    /// ([`State::install`]).
    fn build_tables(&self, config: &Config) -> Result<(Vec<Arc<Table>>, Board), String> {
        let board = self.metrics.health.plan(config);
        let tables = (0..self.workers)
            .map(|w| self.build_table(config, w, &board).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok((tables, board))
    }

    /// Puts tables and their board in service: each new request uses them.
    fn install(&self, (tables, board): (Vec<Arc<Table>>, Board)) {
        self.metrics.health.install(board);
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = tables;
    }

    /// The targets of `route`'s upstreams for `worker`.
    fn targets(
        &self,
        config: &Config,
        route: &Route,
        worker: usize,
    ) -> Result<Vec<Target>, String> {
        route
            .upstreams
            .iter()
            .map(|up| self.target(config, up, worker))
            .collect()
    }

    fn build_table(&self, config: &Config, worker: usize, board: &Board) -> Result<Table, String> {
        let mut routes = Vec::new();
        for r in &config.routes {
            let targets = self
                .targets(config, r, worker)
                .map_err(|e| format!("route {} ({}): {e}", r.prefix, r.source))?;
            routes.push(Entry::new(r, targets, false, board));
        }
        routes.sort_by(|a, b| {
            b.route
                .header
                .is_some()
                .cmp(&a.route.header.is_some())
                .then(b.route.prefix.len().cmp(&a.route.prefix.len()))
        });
        let default = match &config.default {
            Some(r) => Some(Entry::new(
                r,
                self.targets(config, r, worker)
                    .map_err(|e| format!("default route ({}): {e}", r.source))?,
                true,
                board,
            )),
            None => None,
        };
        Ok(Table {
            routes,
            default,
            retries: config.balancing.retries,
        })
    }
}

/// A proxy whose listeners are bound; [`Proxy::serve`] runs it.
pub struct Proxy {
    state: Arc<State>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    loader: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
}

impl Proxy {
    /// Loads certificates and trust bundles and binds the listeners. `loader` re-reads the
    /// configuration (flags, file, environment) when the config file changes.
    pub async fn bind(
        config: Config,
        loader: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    ) -> Result<Proxy, StartError> {
        Proxy::bind_with(config, loader, None).await
    }

    /// [`Proxy::bind`] for the one-module deployment: routes to `in-process` call `registry`
    /// (the registry's router, with its access control and metrics layers) on the proxy's own
    /// worker threads, with the client's address as its `ConnectInfo`.
    pub async fn bind_one_module(
        config: Config,
        loader: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
        registry: axum::Router,
    ) -> Result<Proxy, StartError> {
        Proxy::bind_with(config, loader, Some(registry)).await
    }

    async fn bind_with(
        config: Config,
        loader: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
        registry: Option<axum::Router>,
    ) -> Result<Proxy, StartError> {
        let (cert, _) = config
            .cert
            .clone()
            .ok_or_else(|| StartError::Route("no --cert".into()))?;
        let (key, _) = config
            .key
            .clone()
            .ok_or_else(|| StartError::Route("no --key".into()))?;
        let metrics = Arc::new(Metrics::new(config.workers));
        let _ = metrics.server_cert.set(cert.clone());
        let server_cert = Arc::new(ReloadingServer::with_client_auth(
            cert,
            key,
            config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
            config.client_ca.as_ref().map(|(p, _)| p.as_path()),
        )?);
        let state = Arc::new(State {
            tables: RwLock::new(Vec::new()),
            workers: config.workers,
            config: RwLock::new(Arc::new(config.clone())),
            limits: config.limits.clone(),
            client_cert_header: config.client_cert_header.clone(),
            metrics,
            server_cert,
            trusts: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            registry,
        });
        let built = state.build_tables(&config).map_err(StartError::Route)?;
        state.install(built);
        let addr = config.listen.0;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let admin = match config.admin {
            Some((addr, _)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Proxy {
            state,
            listener,
            admin,
            loader,
        })
    }

    /// The address the TLS listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the process ends; [`Proxy::serve_until`] with a stop.
    pub async fn serve(self) {
        self.serve_until(std::future::pending()).await
    }

    /// Accepts connections until `stop` completes, then drains: the listener is closed (new
    /// connections are refused), idle connections close at once, and each request in flight
    /// finishes before its connection closes (hyper's graceful shutdown, HTTP/1.1 and HTTP/2).
    /// Returns when every connection has ended, so a shutdown can wait for the downloads and
    /// uploads in flight instead of cutting them; the caller bounds the wait (its grace period).
    ///
    /// The work runs on `workers` threads, each with its own single-threaded runtime that
    /// keeps each connection, and the upstream connections it uses, on that one thread: no
    /// cross-thread wake-ups per request, which costs less CPU per request than a
    /// work-stealing runtime (see README). One acceptor (on worker 0) hands each new
    /// connection to the worker serving the fewest: workers that all waited on the shared
    /// listener took connections unevenly (one worker could end up with all of a client's
    /// connections while the other core idled).
    pub async fn serve_until(self, stop: impl std::future::Future<Output = ()>) {
        let Proxy {
            state,
            listener,
            admin,
            loader,
        } = self;
        let listener = match listener.into_std() {
            Ok(l) => l,
            Err(err) => {
                tracing::error!("proxy listener unusable (internal): {err}");
                return;
            }
        };
        let admin = admin.and_then(|a| a.into_std().ok());
        let permits = Arc::new(Semaphore::new(state.limits.max_connections));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        // `true` once the proxy drains; the acceptor and every connection watch it.
        let (draining_tx, draining) = tokio::sync::watch::channel(false);
        // Each worker holds a sender until its last connection ended: `recv` sees `None` then.
        let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut inboxes = Vec::with_capacity(state.workers);
        let mut senders = Vec::with_capacity(state.workers);
        for _ in 0..state.workers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
            senders.push(tx);
            inboxes.push(rx);
        }
        // Worker 0 also runs the acceptor, the admin listener and the reload loop.
        let mut extras = Some((listener, senders, admin, loader));
        for (worker, inbox) in inboxes.into_iter().enumerate() {
            let state = state.clone();
            let permits = permits.clone();
            let done = done_tx.clone();
            let draining = draining.clone();
            let ended = ended_tx.clone();
            let extras = extras.take();
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-{worker}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(err) => {
                            tracing::error!("proxy worker {worker}: no runtime (internal): {err}");
                            let _ = done.blocking_send(());
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        if let Some((listener, senders, admin, loader)) = extras {
                            if let Some(admin) = admin.and_then(|a| TcpListener::from_std(a).ok()) {
                                tokio::spawn(serve_admin(admin, state.metrics.clone()));
                            }
                            tokio::spawn(reload_loop(state.clone(), loader));
                            tokio::spawn(health_loop(state.clone()));
                            let acceptor = accept_loop(
                                listener,
                                senders,
                                permits,
                                state.clone(),
                                draining.clone(),
                            );
                            let metrics = state.metrics.clone();
                            metrics.listening.store(true, Ordering::Relaxed);
                            tokio::spawn(async move {
                                acceptor.await;
                                metrics.listening.store(false, Ordering::Relaxed);
                                // Without an acceptor nothing new arrives: stop the proxy.
                                let _ = done.send(()).await;
                            });
                        }
                        worker_loop(state, inbox, worker, draining).await;
                    });
                    // Only now: dropping the runtime would cut the connections it still serves.
                    drop(ended);
                });
            if let Err(err) = spawned {
                tracing::error!("cannot start proxy worker {worker} (internal): {err}");
                return;
            }
        }
        drop(done_tx);
        drop(ended_tx);
        // Serves until asked to stop, or until the acceptor stops by itself (a fatal error).
        tokio::select! {
            () = stop => tracing::info!("proxy draining: new connections refused, requests in flight finish"),
            _ = done_rx.recv() => {}
        }
        let _ = draining_tx.send(true);
        // `None` once every worker has ended, i.e. once every connection has.
        let _ = ended_rx.recv().await;
    }
}

/// A connection on its way from the acceptor to a worker, with its connection permit.
type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// Accepts connections and hands each to the worker serving the fewest.
async fn accept_loop(
    listener: std::net::TcpListener,
    workers_tx: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
    permits: Arc<Semaphore>,
    state: Arc<State>,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(err) => {
            tracing::error!("proxy listener unusable (internal): {err}");
            return;
        }
    };
    // Returning drops the listener (new connections are refused) and the senders (each
    // worker ends once its connections have).
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            _ = draining.wait_for(|d| *d) => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = draining.wait_for(|d| *d) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed (proxy, internal): {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(tcp) = tcp.into_std() else { continue };
        let least_busy = state.metrics.least_busy_worker();
        state.metrics.worker_connections[least_busy].fetch_add(1, Ordering::Relaxed);
        if workers_tx[least_busy].send((tcp, peer, permit)).is_err() {
            tracing::error!("proxy worker {least_busy} is gone (internal)");
            return;
        }
    }
}

/// One worker: serves the connections handed to it on its own runtime; once the acceptor has
/// stopped, returns when the last of them has ended.
async fn worker_loop(
    state: Arc<State>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    worker: usize,
    draining: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(state.server_cert.config());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let handoff = tokio::select! {
            handoff = inbox.recv() => handoff,
            // Reaped as they end, so the set holds the open connections only.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some((tcp, peer, permit)) = handoff else {
            break;
        };
        // Counted out when it goes, however the connection ends.
        let slot = ConnectionSlot {
            state: state.clone(),
            worker,
            _permit: permit,
        };
        let tcp = match TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(err) => {
                tracing::warn!("connection from {peer} unusable (proxy, internal): {err}");
                continue;
            }
        };
        state
            .metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let acceptor = acceptor.clone();
        let draining = draining.clone();
        connections.spawn(async move {
            serve_connection(slot.state.clone(), acceptor, tcp, peer, worker, draining).await;
            drop(slot);
        });
    }
    while connections.join_next().await.is_some() {}
}

/// A connection's place: its permit and its count in its worker's gauge, both given back on drop.
struct ConnectionSlot {
    state: Arc<State>,
    worker: usize,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.metrics.worker_connections[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection facts the handler needs.
struct ConnInfo {
    peer: SocketAddr,
    /// The peer's address as a header value, made once per connection for `X-Forwarded-For`.
    peer_ip: HeaderValue,
    /// The worker thread serving this connection (selects its upstream clients).
    worker: usize,
    /// The verified client certificate, URL-escaped PEM, when the client sent one.
    client_cert: Option<HeaderValue>,
    /// Requests on this connection waiting for their upstream's response head; while any
    /// does, the idle timeout does not apply (the upstream timeout does).
    waiting: AtomicUsize,
    /// Milliseconds since `epoch()` of the last byte moved on this connection.
    last_activity: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Encrypted bytes queued per client connection before a write must wait: rustls's 64 KiB
/// default costs a syscall per 64 KiB of a multi-GB layer.
const TLS_SEND_BUFFER: usize = 256 * 1024;

async fn serve_connection(
    state: Arc<State>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    worker: usize,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let limits = &state.limits;
    // The handshake shares the header-read budget: a client that opens a socket and sends
    // nothing is a slowloris too.
    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            state
                .metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake with {peer} failed (client): {err}");
            return;
        }
        Err(_) => {
            state
                .metrics
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake with {peer} timed out (client)");
            return;
        }
    };
    let mut tls = tls;
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| HeaderValue::from_str(&escaped_pem(der)).ok());
    let info = Arc::new(ConnInfo {
        peer,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        worker,
        client_cert,
        waiting: AtomicUsize::new(0),
        last_activity: AtomicU64::new(now_ms()),
    });
    let io = TokioIo::new(ActivityIo {
        inner: tls,
        info: info.clone(),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    let svc_state = state.clone();
    let svc_info = info.clone();
    let svc = hyper::service::service_fn(move |req| {
        let state = svc_state.clone();
        let info = svc_info.clone();
        async move { Ok::<_, Infallible>(handle(state, info, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    let idle = idle_watch(info.clone(), limits.idle_timeout);
    tokio::pin!(conn, idle);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!("connection from {peer} ended (client): {err}");
                }
                return;
            }
            _ = idle.as_mut() => {
                tracing::debug!("connection from {peer} idle for {:?}, closed", limits.idle_timeout);
                return;
            }
            // The proxy drains (or its owner is gone): close when idle, after the request in
            // flight otherwise (HTTP/2: GOAWAY, the open streams finish).
            _ = draining.wait_for(|d| *d), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves when no byte moved on the connection for `idle` while no request waited for
/// its upstream.
async fn idle_watch(info: Arc<ConnInfo>, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let last = info.last_activity.load(Ordering::Relaxed);
        let now = now_ms();
        if now.saturating_sub(last) >= idle_ms && info.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let wait = idle_ms
            .saturating_sub(now.saturating_sub(last))
            .max(idle_ms / 4)
            .max(10);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// The client stream, noting the time of every byte moved (for the idle timeout).
struct ActivityIo<T> {
    inner: T,
    info: Arc<ConnInfo>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.info.last_activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.info.last_activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.info.last_activity.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A certificate as URL-escaped PEM, the form nginx's `$ssl_client_escaped_cert` uses.
fn escaped_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// The headers every request gets, named once: a name given as text is parsed and checked on
// every use, which showed in the per-request profile.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const REQUEST_ID: HeaderName = HeaderName::from_static(util::request_id::HEADER);

/// Whether `name` describes one hop, not the exchange (RFC 9110 7.6.1): never forwarded.
/// Matched by its text, a few instructions per header where a lookup per name cost a hash each.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

/// Removes hop-by-hop headers, and those the `Connection` header names; keeps
/// `Connection: upgrade` + `Upgrade` when `upgrade` is set.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names tells.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .chain(headers.keys().filter(|n| is_hop_by_hop(n)).cloned())
        .collect();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    for h in &named {
        headers.remove(h);
    }
    if upgrade {
        if let Some(v) = upgrade_value {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, v);
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// An OCI-style error body naming the route (not the upstream: its address is internal),
/// whose fault the error is and whether retrying can help (`oci::fault`, as the registry says it).
fn error_json(code: &str, message: &str, route: Option<&str>, class: Class) -> Bytes {
    let body = serde_json::json!({
        "errors": [{
            "code": code,
            "message": message,
            "detail": { "route": route, "fault": class.fault.as_str(), "retryable": class.retryable },
        }]
    });
    Bytes::from(body.to_string())
}

async fn handle(
    state: Arc<State>,
    info: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let start = Instant::now();
    let method = req.method().clone();
    // A clone of the URI shares its bytes; only its path is logged: query strings can carry
    // tokens, and logs must not.
    let client_uri = req.uri().clone();
    let path = client_uri.path();
    let table = state.tables.read().unwrap_or_else(|e| e.into_inner())[info.worker].clone();
    let progress = Arc::new(ReqProgress::default());
    let request_id = request_id(req.headers());

    // `class` is set for an exchange the proxy failed (or that failed on its way);
    // `in_flight` counts the request against its upstream until the response ends.
    let make_exchange = |upstream: Option<Arc<str>>,
                         status: StatusCode,
                         class: Option<Class>,
                         error: Option<String>,
                         in_flight: Option<InFlight>| {
        let state = state.clone();
        let method = method.clone();
        let uri = client_uri.clone();
        let progress = progress.clone();
        let request_id = request_id.clone();
        let peer = info.peer;
        Exchange {
            on_done: Some(Box::new(move |bytes_out: u64, outcome: Outcome| {
                drop(in_flight);
                let secs = start.elapsed().as_secs_f64();
                let bytes_in = progress.bytes.load(Ordering::Relaxed);
                let (class, error) = match outcome {
                    Outcome::Complete => (class, error),
                    Outcome::ClientGone => (
                        Some(Class::new(Fault::Client, true)),
                        Some("client closed before the end of the response".into()),
                    ),
                    Outcome::UpstreamFailed => (
                        Some(Class::new(Fault::Upstream, true)),
                        Some("upstream failed during the response body".into()),
                    ),
                };
                if let Some(class) = class {
                    state.metrics.failure(class);
                }
                let up = upstream.as_deref().unwrap_or("-");
                state
                    .metrics
                    .bytes_in
                    .fetch_add(bytes_in, Ordering::Relaxed);
                state
                    .metrics
                    .bytes_out
                    .fetch_add(bytes_out, Ordering::Relaxed);
                state.metrics.request(up, status.as_u16(), secs);
                tracing::info!(
                    target: "access",
                    "{method} {} {} in={bytes_in} out={bytes_out} {:.1}ms client={peer} upstream={up} rid={} fault={}{}",
                    uri.path(),
                    status.as_u16(),
                    secs * 1000.0,
                    // Checked or made by `request_id`: plain text, fit for a log line.
                    request_id.to_str().unwrap_or("-"),
                    class.map_or("-".into(), |c| format!("{} retryable={}", c.fault, c.retryable)),
                    error.map(|e| format!(" error={e:?}")).unwrap_or_default()
                );
            })),
            bytes_out: 0,
            outcome: Outcome::Complete,
        }
    };
    let reply = |status: StatusCode, body: Bytes, exchange: Exchange| {
        let mut resp = Response::new(RespBody::full(body, exchange));
        *resp.status_mut() = status;
        resp.headers_mut().insert(REQUEST_ID, request_id.clone());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    };

    let Some(entry) = table.pick(path, req.headers()) else {
        let msg = format!("proxy: no route for {path} and no default route");
        let class = Class::of_status(404);
        let body = error_json("ROUTE_NOT_FOUND", &msg, None, class);
        return reply(
            StatusCode::NOT_FOUND,
            body,
            make_exchange(None, StatusCode::NOT_FOUND, Some(class), Some(msg), None),
        );
    };
    // Build the upstream request: same method, path and body; Host preserved.
    let upgrade = req.version() == http::Version::HTTP_11 && is_upgrade(req.headers());
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    // The registry in this process learns the client's address and that it came over TLS from
    // the request's extensions (`ConnectInfo`, `ViaTlsProxy`, added below) and its own name from
    // `Host`: no `X-Forwarded-*` to format here and parse there. A route with an in-process
    // upstream has no other (`config`).
    let in_process = matches!(entry.choices[0].target, Target::InProcess(_));
    // Room for the headers added below, made once: hyper sizes the map to what the client sent,
    // and growing it insert by insert cost more than the inserts.
    headers.reserve(if in_process { 3 } else { 6 });
    // Only the proxy vouches for a client certificate: drop whatever the client claims.
    headers.remove(&state.client_cert_header);
    if let Some(cert) = &info.client_cert {
        headers.insert(state.client_cert_header.clone(), cert.clone());
    }
    if !in_process {
        // A chain that is not text is replaced, not extended.
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", info.peer.ip()))
                .unwrap_or_else(|_| info.peer_ip.clone()),
            None => info.peer_ip.clone(),
        };
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    if let Some(h) = &host {
        if !in_process {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        // Already there, and once, unless the name came in the URI (HTTP/2's `:authority`).
        if headers.get_all(header::HOST).iter().count() != 1 {
            headers.insert(header::HOST, h.clone());
        }
    }

    // A GET or HEAD without a body may go to another upstream of a route with several when
    // its upstream fails before answering: nothing was sent that could be sent twice, and
    // nothing reached the client. Any other request is sent once (a PATCH or PUT to a dead
    // replica fails, and the client's next request goes to another).
    let retries = match &entry.balancer {
        Some(_)
            if (method == http::Method::GET || method == http::Method::HEAD)
                && !upgrade
                && http_body::Body::is_end_stream(&body) =>
        {
            table.retries as usize
        }
        _ => 0,
    };
    // A request that may be sent again has no body to send: each attempt gets an empty one.
    let mut body = (retries == 0).then_some(body);
    let timeout = state.limits.upstream_timeout;
    let mut tried: Vec<usize> = Vec::new();
    // Wait for the response head (see `send` for the upstream timeout).
    info.waiting.fetch_add(1, Ordering::Relaxed);
    let (choice, in_flight, result) = loop {
        // Every attempt so far went to another upstream, so one is left (`pick` is `None` only
        // once every upstream was tried, and a request never tries more than `retries` + 1).
        let index = entry.pick(&tried).unwrap_or(0);
        let choice = &entry.choices[index];
        let in_flight: Option<InFlight> =
            entry.balancer.as_ref().map(|b| b.upstream(index).begin());
        let last_attempt = tried.len() >= retries || tried.len() + 1 >= entry.choices.len();
        let mut uri_parts = http::uri::Parts::default();
        // The registry in this process gets the origin form a server would have parsed.
        if let Target::Remote(client) = &choice.target {
            uri_parts.scheme = Some(client.uri_scheme.clone());
            uri_parts.authority = Some(client.uri_authority.clone());
        }
        uri_parts.path_and_query = Some(path_and_query.clone());
        // `from_parts` fails only when a scheme comes without an authority, or a path without both.
        let uri = Uri::from_parts(uri_parts).expect("a path, with scheme and authority or neither");
        let req_body = match body.take() {
            Some(b) => ReqBody::new(b, progress.clone()),
            None => ReqBody::empty(progress.clone()),
        };
        let mut up_req = Request::new(req_body);
        *up_req.method_mut() = method.clone();
        *up_req.uri_mut() = uri;
        // Copied only while another attempt may need them.
        *up_req.headers_mut() = if last_attempt {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        *up_req.version_mut() = http::Version::HTTP_11;
        // The registry's access control counts failed logins per client address: in process it
        // reads the real client's from here, no `X-Forwarded-For` trust needed.
        up_req
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(info.peer));
        if in_process {
            up_req.extensions_mut().insert(util::forwarded::ViaTlsProxy);
        }

        let result = send(&choice.target, up_req, &progress, timeout).await;
        // An upstream that did not answer at all is out of service until its health check
        // passes; the request goes to another when it may.
        if let Some(Err(err)) = &result {
            if failed_before_response(err) && !progress.failed.load(Ordering::Relaxed) {
                if let Some(b) = &entry.balancer {
                    b.upstream(index).take_out(&format_args!(
                        "it failed before answering: {}",
                        error_chain(err)
                    ));
                }
                if !last_attempt {
                    state.metrics.upstream_error(&choice.name, error_kind(err));
                    state.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{method} {path} (rid {}): upstream {} failed before answering, sent \
                         again to another upstream of {}: {}",
                        request_id.to_str().unwrap_or("-"),
                        choice.name,
                        entry.label,
                        error_chain(err)
                    );
                    tried.push(index);
                    continue;
                }
            }
        }
        break (choice, in_flight, result);
    };
    info.waiting.fetch_sub(1, Ordering::Relaxed);
    let upstream_name = choice.name.clone();

    let mut resp = match result {
        Some(Ok(resp)) => resp,
        Some(Err(err)) => {
            drop(in_flight);
            // `public` goes to the client, `logged` (with addresses and paths) to the log.
            let label = &entry.label;
            let kind = error_kind(&err);
            let (status, code, class, public, logged) = if let Some(ce) = find_connect_error(&err) {
                (
                    StatusCode::BAD_GATEWAY,
                    "UPSTREAM_UNREACHABLE",
                    Class::new(Fault::Upstream, !matches!(ce, ConnectError::Tls { .. })),
                    format!("proxy: the upstream for {label} {}", ce.public_reason()),
                    format!("proxy: upstream {upstream_name} unreachable: {ce}"),
                )
            } else if progress.failed.load(Ordering::Relaxed) {
                (
                        StatusCode::BAD_REQUEST,
                        "CLIENT_ABORTED",
                        Class::new(Fault::Client, true),
                        format!(
                            "proxy: the request body failed before the upstream for {label} answered"
                        ),
                        format!("proxy: the client's request body failed before the upstream {upstream_name} answered: {}", error_chain(&err)),
                    )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "UPSTREAM_ERROR",
                    Class::of_status(502),
                    format!(
                        "proxy: the upstream for {label} broke off the exchange before answering"
                    ),
                    format!(
                        "proxy: upstream {upstream_name} failed: {}",
                        error_chain(&err)
                    ),
                )
            };
            state.metrics.upstream_error(&upstream_name, kind);
            let body = error_json(code, &public, Some(label), class);
            return reply(
                status,
                body,
                make_exchange(Some(upstream_name), status, Some(class), Some(logged), None),
            );
        }
        None => {
            drop(in_flight);
            state.metrics.upstream_error(&upstream_name, "timeout");
            let label = &entry.label;
            let public =
                format!("proxy: the upstream for {label} did not answer within {timeout:?}");
            let logged =
                format!("proxy: upstream {upstream_name} did not answer within {timeout:?}");
            let status = StatusCode::GATEWAY_TIMEOUT;
            let class = Class::of_status(status.as_u16());
            let body = error_json("UPSTREAM_TIMEOUT", &public, Some(label), class);
            return reply(
                status,
                body,
                make_exchange(Some(upstream_name), status, Some(class), Some(logged), None),
            );
        }
    };

    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let peer = info.peer;
            tokio::spawn(async move {
                match (client_upgrade.await, upstream_upgrade.await) {
                    (Ok(c), Ok(u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        if let Err(err) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!("upgraded connection from {peer} ended: {err}");
                        }
                    }
                    (Err(err), _) | (_, Err(err)) => {
                        tracing::debug!("upgrade for {peer} failed: {err}");
                    }
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(
        &mut parts.headers,
        status == StatusCode::SWITCHING_PROTOCOLS,
    );
    parts.headers.insert(REQUEST_ID, request_id.clone());
    let exchange = make_exchange(Some(upstream_name), status, None, None, in_flight);
    Response::from_parts(parts, RespBody::upstream(body, exchange))
}

/// An upstream's answer to one attempt, hyper-util's error, or `None` when the upstream timeout
/// fired: when the upstream takes no request-body bytes for `timeout` while the body is being
/// sent, or does not answer within `timeout` once it was sent. A request without a body (GET,
/// HEAD) is sent from the start: one timer, for the answer.
async fn send(
    target: &Target,
    req: Request<ReqBody>,
    progress: &ReqProgress,
    timeout: Duration,
) -> Option<Result<Response<UpstreamBody>, hyper_util::client::legacy::Error>> {
    let response = async {
        match target {
            Target::Remote(client) => client
                .client
                .request(req)
                .await
                .map(|r| r.map(UpstreamBody::Remote)),
            Target::InProcess(router) => {
                let Ok(r) = router.clone().oneshot(req).await;
                Ok(r.map(UpstreamBody::InProcess))
            }
        }
    };
    let deadline = async {
        while !progress.is_sent() {
            let before = progress.bytes.load(Ordering::Relaxed);
            tokio::select! {
                _ = progress.sent() => break,
                _ = tokio::time::sleep(timeout) => {
                    if progress.bytes.load(Ordering::Relaxed) == before {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        r = response => Some(r),
        _ = deadline => None,
    }
}

/// The request's id: the client's `X-Request-Id` when it is fit to log, else a fresh one. It
/// goes upstream, back to the client and into the access log, so one request can be followed
/// across hops.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&REQUEST_ID) {
        Some(id) if util::request_id::is_valid(id.as_bytes()) => id.clone(),
        _ => HeaderValue::from_str(&util::request_id::new())
            .expect("hex digits are a valid header value"),
    }
}

/// The `kind` label of an upstream failure in `proxy_upstream_errors_total`.
fn error_kind(err: &(dyn std::error::Error + 'static)) -> &'static str {
    match find_connect_error(err) {
        Some(ConnectError::Timeout { .. }) => "connect_timeout",
        Some(ConnectError::Tcp { .. }) => "connect",
        Some(ConnectError::Tls { .. }) => "tls",
        None => "protocol",
    }
}

fn find_connect_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ce) = e.downcast_ref::<ConnectError>() {
            return Some(ce);
        }
        cur = e.source();
    }
    None
}

/// Checks every upstream of every route with several (`GET health_path`, see `balance`), all
/// at once, every `health_interval`: a failed check takes an upstream out of service, a
/// passing one puts it back. The checker has its own connection pools, so checks neither wait
/// for nor hold the workers' connections. Path, interval and timeout are read each round (a
/// reload applies).
async fn health_loop(state: Arc<State>) {
    loop {
        let config = state
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let timeout = config.balancing.health_timeout;
        let path = &config.balancing.health_path;
        let mut checks = tokio::task::JoinSet::new();
        for watched in state.metrics.health.current().watched() {
            let health = watched.health.clone();
            let path = path.clone();
            match state.client(&config, &watched.upstream, None) {
                Ok(client) => {
                    checks.spawn(async move {
                        match crate::balance::check(&client, &path, timeout).await {
                            Ok(()) => health.put_back(&path),
                            Err(why) => {
                                health.take_out(&format_args!("its health check failed: {why}"))
                            }
                        }
                    });
                }
                // The route tables were built with the same settings, so this is rare (a trust
                // bundle that became unreadable): the upstream cannot be checked.
                Err(err) => health.take_out(&format_args!("it cannot be checked: {err}")),
            }
        }
        while checks.join_next().await.is_some() {}
        tokio::time::sleep(config.balancing.health_interval).await;
    }
}

/// Polls the config file, the server certificate and the trust bundles; reloads what changed.
async fn reload_loop(
    state: Arc<State>,
    loader: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
) {
    let interval = state
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .reload_interval;
    let file = state
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .file
        .clone();
    let mut watch = file.as_ref().map(|f| FileWatch::new([f.clone()]));
    loop {
        tokio::time::sleep(interval).await;
        let m = &state.metrics;
        match state.server_cert.reload_if_changed() {
            Ok(true) => {
                m.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!("server certificate reloaded");
            }
            Ok(false) => {}
            Err(err) => {
                m.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("server certificate not reloaded, the previous one stays: {err}");
            }
        }
        let trusts: Vec<_> = state
            .trusts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for t in trusts {
            match t.reload_if_changed() {
                Ok(true) => {
                    m.reloads_ok.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("trust bundle {} reloaded", t.path().display());
                }
                Ok(false) => {}
                Err(err) => {
                    m.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("trust bundle not reloaded, the previous one stays: {err}");
                }
            }
        }
        if let (Some(path), Some(watch)) = (&file, watch.as_mut()) {
            if watch.changed() {
                match loader() {
                    Ok(config) => apply_config(&state, path, config),
                    Err(err) => {
                        m.reloads_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("config not reloaded, the previous one stays: {err}");
                    }
                }
            }
        }
    }
}

/// Puts a newly loaded config in service as far as a running proxy can: what that means is
/// [`Config::change_to`]'s decision; this only carries it out and says what waits for a restart.
fn apply_config(state: &State, path: &std::path::Path, config: Config) {
    let m = &state.metrics;
    let old = state
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let change = old.change_to(&config);
    if change.routes {
        match state.build_tables(&config) {
            Ok(built) => state.install(built),
            Err(err) => {
                m.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("config not reloaded, the previous one stays: {err}");
                return;
            }
        }
    }
    if !change.restart_needed.is_empty() {
        tracing::warn!(
            "{}: {} changes take effect at the next restart; {}",
            path.display(),
            change.restart_needed.join(", "),
            if change.routes {
                "routes were reloaded"
            } else {
                "routes are unchanged"
            }
        );
    }
    *state.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    m.reloads_ok.fetch_add(1, Ordering::Relaxed);
    tracing::info!("{}: config reloaded", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/v2", "/v2"));
        assert!(prefix_matches("/v2", "/v2/library/x"));
        assert!(!prefix_matches("/v2", "/v2x"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/acr/", "/acr/v1"));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
