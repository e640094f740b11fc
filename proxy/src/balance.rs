//! Routes with several upstreams (registry replicas sharing their storage): which upstream a
//! request goes to, which upstreams are in service, and the active health check.
//!
//! - **Choice** ([`Balancer::pick`]): the fewest requests in flight among the upstreams in
//!   service, ties broken round-robin.
//! - **Health** ([`UpstreamHealth`]): an upstream is taken out when a connection to it fails
//!   before any response byte (refused, reset, timed out) or when its health check fails, and
//!   put back when a health check passes. The check ([`check`]) is a `GET` of `health_path`
//!   (`/readyz` unless set), every `health_interval`, for each upstream of each route with
//!   several ([`HealthBoard`] lists them for the checker, `/metrics` and `/readyz`).
//! - When every upstream of a route is out, they are all still tried: the marks may be stale
//!   (a replica restarted since), and trying costs less than refusing without trying.
//!
//! Which requests may go to a second upstream is the handler's rule (`server`): GET and HEAD
//! without a body whose upstream failed before answering ([`failed_before_response`]).
//!
//! A route with one upstream has none of this: no choice, no health state, no retry; it
//! behaves as it did before routes could have several.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::PathAndQuery;
use http_body_util::BodyExt as _;

use crate::body::{ReqBody, ReqProgress};
use crate::config::{Config, Upstream};
use crate::upstream::{ConnectError, UpstreamClient};
use util::error_chain::error_chain;

/// One upstream of a route with several, as every worker sees it: in service or not, and its
/// requests in flight. Shared by the routes that list it (keyed by its URL).
pub struct UpstreamHealth {
    /// The upstream's URL, for logs and metrics (never for clients).
    pub name: Arc<str>,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    went_out: AtomicU64,
    came_back: AtomicU64,
}

impl UpstreamHealth {
    /// A newly listed upstream is in service until something says otherwise.
    pub fn new(name: Arc<str>) -> UpstreamHealth {
        UpstreamHealth {
            name,
            healthy: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            went_out: AtomicU64::new(0),
            came_back: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests sent to it whose response has not ended yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Takes it out of service; `why` (for the log only: it may hold addresses) is logged,
    /// and the change counted, only when it was in service.
    pub fn take_out(&self, why: &dyn std::fmt::Display) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            self.went_out.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("upstream {} taken out of service: {why}", self.name);
        }
    }

    /// Puts it back in service after a passing health check (`GET path`); logged and counted
    /// only when it was out.
    pub fn put_back(&self, path: &PathAndQuery) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            self.came_back.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "upstream {} back in service: its health check (GET {path}) passed",
                self.name
            );
        }
    }

    /// Counts a request in flight until the returned guard is dropped (when the response body
    /// has ended or was abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an upstream; counted out on drop.
pub struct InFlight(Arc<UpstreamHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The choice among a route's upstreams, for one worker's route table.
pub struct Balancer {
    /// In the route's order; index `i` is the route's `i`-th upstream.
    upstreams: Vec<Arc<UpstreamHealth>>,
    /// Where the next scan starts: the round-robin among ties.
    cursor: AtomicUsize,
}

impl Balancer {
    pub fn new(upstreams: Vec<Arc<UpstreamHealth>>) -> Balancer {
        Balancer {
            upstreams,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn upstream(&self, index: usize) -> &Arc<UpstreamHealth> {
        &self.upstreams[index]
    }

    /// The upstream for a request's next attempt, skipping those it `tried`: among the
    /// upstreams in service (or, when none is left, among all) the one with the fewest
    /// requests in flight; ties go round-robin. `None` once every upstream was tried.
    ///
    /// Why least outstanding requests: a blob download holds its upstream for seconds, a
    /// manifest GET for a millisecond, so counting requests sent (round-robin alone) can pile
    /// new requests onto a replica still streaming layers while the other idles; the number in
    /// flight is what each replica is busy with now. The counts are exact (one process, shared
    /// by its workers) and a route has a handful of upstreams, so a full scan costs less than
    /// sampling two (power of two choices, which pays off with many upstreams or with
    /// balancers that cannot see each other's counts) and never picks the busier of two.
    /// Round-robin among ties matters when the load is light: every count is then 0, and the
    /// first upstream would otherwise get every request.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.upstreams.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        for only_healthy in [true, false] {
            for k in 0..n {
                let i = (start + k) % n;
                let up = &self.upstreams[i];
                if tried.contains(&i) || (only_healthy && !up.is_healthy()) {
                    continue;
                }
                let busy = up.outstanding();
                if best.is_none_or(|(_, fewest)| busy < fewest) {
                    best = Some((i, busy));
                }
            }
            if let Some((i, _)) = best {
                return Some(i);
            }
        }
        None
    }
}

/// Whether an upstream failed before any byte of its response was received: it refused or
/// reset the connection, closed it before the status line, or did not accept it in time.
/// Such an upstream is taken out of service, and a GET or HEAD may go to another one: it did
/// not answer, so nothing reached the client. A response that timed out (it accepted and
/// stayed silent), a response that did not parse (bytes came) and a failing client body are
/// not such failures.
pub fn failed_before_response(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<ConnectError>().is_some() {
            return true;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_user() || h.is_timeout() || h.is_body_write_aborted() {
                return false;
            }
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::ConnectionReset
                    | K::ConnectionAborted
                    | K::ConnectionRefused
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::NotConnected
            );
        }
        cur = e.source();
    }
    false
}

/// One active check of `client`'s upstream: `GET path`, passed by a 2xx answer (its body read
/// to the end, so the connection can be reused) within `timeout`. The error, for the log, says
/// what failed (`path` has no query: nothing secret).
pub async fn check(
    client: &UpstreamClient,
    path: &PathAndQuery,
    timeout: Duration,
) -> Result<(), String> {
    let uri = http::Uri::builder()
        .scheme(client.uri_scheme.clone())
        .authority(client.uri_authority.clone())
        .path_and_query(path.clone())
        .build()
        .map_err(|e| format!("no request URI (internal): {e}"))?;
    let mut req = http::Request::new(ReqBody::empty(Arc::new(ReqProgress::default())));
    *req.uri_mut() = uri;
    let exchange = async {
        let resp = client
            .client
            .request(req)
            .await
            .map_err(|e| format!("GET {path} failed: {}", error_chain(&e)))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path}: the answer broke off: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} got no answer within {timeout:?}")))
}

/// An upstream of a route with several, with what the checker needs to reach it.
pub struct Watched {
    /// As the first route listing it has it (its TLS server name and trust bundle).
    pub upstream: Upstream,
    pub health: Arc<UpstreamHealth>,
}

/// Every upstream of every route with several, and those routes: built from a configuration
/// (keeping the state of upstreams already watched), put in service with the route tables.
#[derive(Default)]
pub struct Board {
    upstreams: BTreeMap<Arc<str>, Watched>,
    /// Each route with several upstreams: its label and its upstreams' health.
    routes: Vec<(String, Vec<Arc<UpstreamHealth>>)>,
}

impl Board {
    /// The upstreams to check.
    pub fn watched(&self) -> impl Iterator<Item = &Watched> {
        self.upstreams.values()
    }

    /// The shared state of the upstream named `name`, when a route with several lists it.
    pub fn health(&self, name: &str) -> Option<Arc<UpstreamHealth>> {
        self.upstreams.get(name).map(|w| w.health.clone())
    }
}

/// The board in service, for the checker, `/metrics` and `/readyz`.
#[derive(Default)]
pub struct HealthBoard {
    current: RwLock<Arc<Board>>,
}

impl HealthBoard {
    /// The board for `config`; upstreams the board in service watches keep their state (a
    /// reload does not put a dead replica back), the others start in service.
    pub fn plan(&self, config: &Config) -> Board {
        let old = self.current();
        let mut board = Board::default();
        let routes = config
            .routes
            .iter()
            .map(|r| (r, false))
            .chain(config.default.iter().map(|r| (r, true)));
        for (route, default) in routes {
            if route.upstreams.len() < 2 {
                continue;
            }
            let mut healths = Vec::with_capacity(route.upstreams.len());
            for up in &route.upstreams {
                let name: Arc<str> = up.to_string().into();
                let health = match board.upstreams.get(&name) {
                    Some(w) => w.health.clone(),
                    None => {
                        let health = old
                            .health(&name)
                            .unwrap_or_else(|| Arc::new(UpstreamHealth::new(name.clone())));
                        board.upstreams.insert(
                            name,
                            Watched {
                                upstream: up.clone(),
                                health: health.clone(),
                            },
                        );
                        health
                    }
                };
                healths.push(health);
            }
            board.routes.push((route.label(default), healths));
        }
        board
    }

    /// Puts `board` in service (with the route tables built from the same configuration).
    pub fn install(&self, board: Board) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(board);
    }

    pub fn current(&self) -> Arc<Board> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the proxy is not ready, when a route with several upstreams has none in service
    /// (its clients would get errors, unless a replica came back since its last check). Names
    /// the route, not the upstreams.
    pub fn unready(&self) -> Option<String> {
        let board = self.current();
        board.routes.iter().find_map(|(label, ups)| {
            (!ups.iter().any(|u| u.is_healthy())).then(|| {
                format!(
                    "{label}: none of its {} upstreams is in service (each failed a connection \
                     or its health check)",
                    ups.len()
                )
            })
        })
    }

    /// The Prometheus lines of every watched upstream.
    pub fn render(&self, out: &mut String, esc: impl Fn(&str) -> String) {
        let board = self.current();
        // name, help, value
        type Gauge = (&'static str, &'static str, fn(&UpstreamHealth) -> usize);
        let gauges: [Gauge; 2] = [
            (
                "proxy_upstream_healthy",
                "Whether an upstream of a route with several is in service (1) or taken out (0).",
                |h| usize::from(h.is_healthy()),
            ),
            (
                "proxy_upstream_outstanding",
                "Requests in flight to an upstream of a route with several.",
                UpstreamHealth::outstanding,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for w in board.watched() {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\"}} {}",
                    esc(&w.health.name),
                    value(&w.health)
                );
            }
        }
        let name = "proxy_upstream_health_changes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Times an upstream of a route with several was taken out of service (to=\"out\") and put back (to=\"in\").\n# TYPE {name} counter"
        );
        for w in board.watched() {
            let h = &w.health;
            for (to, n) in [("out", &h.went_out), ("in", &h.came_back)] {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",to=\"{to}\"}} {}",
                    esc(&h.name),
                    n.load(Ordering::Relaxed)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readyz() -> PathAndQuery {
        PathAndQuery::from_static("/readyz")
    }

    fn balancer(n: usize) -> Balancer {
        Balancer::new(
            (0..n)
                .map(|i| Arc::new(UpstreamHealth::new(format!("http://u{i}:80").into())))
                .collect(),
        )
    }

    #[test]
    fn idle_upstreams_take_turns() {
        let b = balancer(3);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_one_with_fewest_in_flight_wins() {
        let b = balancer(3);
        let _busy0 = b.upstream(0).begin();
        let _busy1a = b.upstream(1).begin();
        let _busy1b = b.upstream(1).begin();
        for _ in 0..4 {
            assert_eq!(b.pick(&[]), Some(2));
        }
        let held = b.upstream(2).begin();
        let _held2 = b.upstream(2).begin();
        assert_eq!(b.pick(&[]), Some(0), "0 has 1 in flight, 1 and 2 have 2");
        drop(held);
        assert_eq!(
            b.upstream(2).outstanding(),
            1,
            "the guard counts out on drop"
        );
    }

    #[test]
    fn upstreams_out_of_service_are_skipped_until_none_is_left() {
        let b = balancer(3);
        b.upstream(0).take_out(&"test");
        for _ in 0..6 {
            assert_ne!(b.pick(&[]), Some(0));
        }
        b.upstream(1).take_out(&"test");
        b.upstream(2).take_out(&"test");
        // Every one out: still tried (the marks may be stale), the least busy first.
        let _busy = b.upstream(0).begin();
        let picked = b.pick(&[]).unwrap();
        assert_ne!(picked, 0);
        b.upstream(2).put_back(&readyz());
        assert_eq!(b.pick(&[]), Some(2));
    }

    #[test]
    fn a_retry_goes_to_an_upstream_not_tried_yet() {
        let b = balancer(2);
        for first in [0, 1] {
            let other = 1 - first;
            assert_eq!(b.pick(&[first]), Some(other));
            b.upstream(other).take_out(&"test");
            assert_eq!(b.pick(&[first]), Some(other), "out, but the only one left");
            b.upstream(other).put_back(&readyz());
        }
        assert_eq!(b.pick(&[0, 1]), None);
    }

    /// An upstream on a fresh loopback port that reads each request head, records its request
    /// line, and answers `response` (or, given `None`, stays silent with the connection open).
    async fn upstream(
        response: Option<&'static str>,
    ) -> (UpstreamClient, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    record
                        .lock()
                        .unwrap()
                        .push(text.lines().next().unwrap_or_default().to_owned());
                    match response {
                        Some(r) => {
                            let _ = conn.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        let up = Upstream::parse(&format!("http://{addr}")).unwrap();
        let client = UpstreamClient::new(&up, None, Duration::from_secs(5)).unwrap();
        (client, seen)
    }

    /// The check GETs the path it is given and passes on a 2xx only; an upstream that accepts
    /// and stays silent fails it once `health_timeout` has passed, and each error names the
    /// path and what went wrong.
    #[tokio::test]
    async fn the_check_gets_its_path_and_has_its_timeout() {
        let v2 = PathAndQuery::from_static("/v2/");
        let second = Duration::from_secs(1);
        let (ok, seen) = upstream(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")).await;
        assert_eq!(check(&ok, &v2, second).await, Ok(()));
        assert_eq!(*seen.lock().unwrap(), ["GET /v2/ HTTP/1.1"]);

        let (missing, _) =
            upstream(Some("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")).await;
        let err = check(&missing, &readyz(), second).await.unwrap_err();
        assert!(err.contains("GET /readyz answered 404"), "{err}");

        let (silent, seen) = upstream(None).await;
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let err = check(&silent, &v2, timeout).await.unwrap_err();
        assert!(err.contains("GET /v2/ got no answer within 200ms"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(*seen.lock().unwrap(), ["GET /v2/ HTTP/1.1"]);
    }

    #[test]
    fn changes_are_counted_once() {
        let h = UpstreamHealth::new("http://u:80".into());
        h.put_back(&readyz());
        h.take_out(&"refused");
        h.take_out(&"refused again");
        h.put_back(&readyz());
        h.put_back(&readyz());
        assert_eq!(h.went_out.load(Ordering::Relaxed), 1);
        assert_eq!(h.came_back.load(Ordering::Relaxed), 1);
    }
}
