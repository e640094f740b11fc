//! Several `serve` replicas as issue 17 deploys them: one PostgreSQL (the shared metadata), one
//! Azurite (the shared Azure Blob Storage container), N replicas on them, each with a data
//! directory of its own for what stays local, and our TLS proxy in front with one `/v2` route
//! listing every replica. The proxy speaks TLS with a test CA's certificate, as deployed: a
//! client that can be given the CA ([`Replicas::proxy_api`], skopeo's `--cert-dir`) verifies it.
//! A replica can be killed with `kill -9` and started again on its port and data.
//! [`Replicas::reach_from_namespace`] makes the proxy reachable from a network namespace at an
//! address outside 127.0.0.0/8, where a Docker engine verifies its certificate (it trusts
//! anything on loopback).
//!
//! [`Services`] alone (the database, the container, the flags and environment that point
//! `serve` at them) is what `target.rs` uses to run the protocol and torture tests on this
//! backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::Api;
use super::azurite::Azurite;
use super::netns::{Netns, Network};
use super::postgres::TestServer;
use super::proxy::{balanced_proxy, healthy, metrics};
use super::relay::Relay;
use super::tls::{Leaf, TestCa};
use super::{free_port, serve_with, Proc};

/// The Azure Blob Storage container every replica keeps its blobs in.
pub const CONTAINER: &str = "replicas";

/// The shared services: a database of its own on the test process's PostgreSQL server, and an
/// Azurite of its own (stopped when this is dropped).
pub struct Services {
    /// `postgres://...`, what `serve --metadata` takes.
    pub metadata_url: String,
    pub azurite: Azurite,
}

impl Services {
    pub fn start() -> Services {
        Services {
            metadata_url: TestServer::shared().create_database(),
            azurite: Azurite::start(),
        }
    }

    /// The `serve` flags that put a replica on these services.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--metadata".into(),
            self.metadata_url.clone(),
            "--storage".into(),
            format!("azblob://{CONTAINER}"),
        ]
    }

    /// The environment `serve` reads the container's account and key from.
    pub fn envs(&self) -> Vec<(String, String)> {
        vec![(
            "AZURE_STORAGE_CONNECTION_STRING".into(),
            self.azurite.connection_string(),
        )]
    }

    /// `serve` on these services, on a free port, with `data` for what stays local and `extra`
    /// flags besides the services': a replica outside a [`Replicas`] set (no proxy in front).
    pub fn serve(&self, data: &Path, extra: &[&str]) -> Proc {
        let mut args = self.serve_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        start_replica(self, data, free_port(), &args)
    }

    /// The backends `serve` runs on, to open the store in the test process.
    pub fn backends(&self) -> registry::storage::Backends {
        registry::storage::Backends {
            blobs: registry::storage::BlobBackend::parse(
                &format!("azblob://{CONTAINER}"),
                Some(&self.azurite.connection_string()),
            )
            .expect("the Azurite container"),
            metadata: self.metadata_url.parse().expect("the test's --metadata"),
        }
    }
}

/// One replica: restartable on its port with its data directory.
pub struct Replica {
    pub proc: Proc,
    pub data: PathBuf,
    pub port: u16,
    /// Starts so far, to keep each start's log.
    starts: u32,
}

impl Replica {
    /// `http://127.0.0.1:PORT`, as the proxy's route lists it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client talking to this replica directly (plain HTTP, no proxy).
    pub fn api(&self) -> Api {
        Api::new(&self.url())
    }

    /// Requests whose access-log line contains `what` (e.g. `PATCH /v2/app/blobs/uploads/`)
    /// since it last started.
    pub fn served(&self, what: &str) -> usize {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }
}

/// The services, the replicas and the proxy, stopped when dropped.
pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub services: Services,
    pub replicas: Vec<Replica>,
    /// The `serve` flags of every replica (the services', then the test's).
    serve_args: Vec<String>,
    pub ca: TestCa,
    pub proxy: Proc,
    /// The proxy's admin port (`/metrics`).
    pub admin: SocketAddr,
}

/// The name the proxy's certificate has (besides 127.0.0.1 and localhost), and that a
/// namespace from [`Replicas::reach_from_namespace`] resolves to the proxy.
pub const PROXY_NAME: &str = "proxy.test";

/// The proxy as seen from a network namespace of its own (for a client there, e.g.
/// `Dockerd::start_in(Some(&reach.ns))`): at `proxy.test:PORT`, resolved by the namespace's
/// hosts file to the far end of a veth pair, outside 127.0.0.0/8, where the test process
/// relays each connection to the proxy byte for byte (TLS is between the client and the proxy).
/// Deleted (namespaces, relay, `certs.d` entry) when dropped; drop clients in it first.
pub struct ProxyInNamespace {
    /// Carries the namespace's connections to the proxy, counting the bytes.
    pub relay: Relay,
    /// The client's namespace.
    pub ns: Netns,
    /// `proxy.test:PORT`, the registry part of an image reference through the proxy from
    /// [`ProxyInNamespace::ns`]; PORT is the proxy's own, so the name is this test's alone.
    pub host: String,
    /// Dropped last: the relay's listener lives in one of its namespaces.
    net: Network,
}

impl ProxyInNamespace {
    /// Makes Docker engines trust `ca` for the proxy at [`ProxyInNamespace::host`]:
    /// `/etc/docker/certs.d/HOST:PORT/ca.crt` (dockerd has no flag for another directory; the
    /// entry names this test's host and port only, and goes with the network).
    pub fn trust_for_docker(&mut self, ca: &TestCa) {
        let certs_d = PathBuf::from("/etc/docker/certs.d").join(&self.host);
        std::fs::create_dir_all(&certs_d).expect("create /etc/docker/certs.d/HOST:PORT (root)");
        self.net.remove_on_drop(certs_d.clone());
        std::fs::copy(&ca.root, certs_d.join("ca.crt")).expect("copy the test CA to certs.d");
    }
}

/// How often the proxy checks each replica (`GET /readyz`): a replica killed is out of the
/// route within about this long even when no request found it dead first.
pub const HEALTH_INTERVAL: &str = "200ms";

impl Replicas {
    /// `n` replicas with `serve` flags `extra` (besides the services'; GC off unless `extra`
    /// says otherwise, so that a test decides when it runs), and the proxy in front.
    pub fn start(n: usize, extra: &[&str]) -> Replicas {
        let dir = tempfile::tempdir().expect("temp dir");
        let services = Services::start();
        let mut serve_args = services.serve_args();
        if !extra.iter().any(|a| a.starts_with("--gc-interval")) {
            serve_args.extend(["--gc-interval".into(), "0s".into()]);
        }
        serve_args.extend(extra.iter().map(|s| s.to_string()));
        let replicas = (0..n)
            .map(|i| {
                let data = dir.path().join(format!("replica{i}"));
                let port = free_port();
                let proc = start_replica(&services, &data, port, &serve_args);
                Replica {
                    proc,
                    data,
                    port,
                    starts: 1,
                }
            })
            .collect::<Vec<_>>();
        let ca = TestCa::new(&dir.path().join("ca"));
        let leaf = ca.server("proxy", PROXY_NAME);
        let (proxy, admin) = proxy_before(dir.path(), &leaf, &replicas);
        Replicas {
            dir,
            services,
            replicas,
            serve_args,
            ca,
            proxy,
            admin,
        }
    }

    /// `https://127.0.0.1:PORT`: the proxy.
    pub fn proxy_url(&self) -> String {
        format!("https://{}", self.proxy.addr)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference through the proxy.
    pub fn proxy_host(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// The proxy reachable from a new network namespace at `proxy.test:PORT`, an address
    /// outside 127.0.0.0/8 (two namespaces joined by a veth pair: the client's, and the one
    /// whose end of the pair the relay to the proxy listens on).
    pub fn reach_from_namespace(&self) -> ProxyInNamespace {
        let mut net = Network::new();
        let proxy_side = net.namespace("proxy");
        let ns = net.namespace("client");
        let (proxy_ip, _client_ip) = net.link(&proxy_side, &ns);
        net.name_host(&ns, PROXY_NAME, &proxy_ip);
        let port = self.proxy.addr.port();
        let listen = format!("{proxy_ip}:{port}")
            .parse()
            .expect("a veth address");
        let relay = Relay::into_namespace(&proxy_side, listen, self.proxy.addr);
        ProxyInNamespace {
            relay,
            ns,
            host: format!("{PROXY_NAME}:{port}"),
            net,
        }
    }

    /// A client of the proxy that trusts only the test CA.
    pub fn proxy_api(&self) -> Api {
        Api::with_client(&self.proxy_url(), self.https_client())
    }

    /// A blocking HTTPS client trusting only the test CA, no redirects, 120 s per request.
    pub fn https_client(&self) -> reqwest::blocking::Client {
        self.ca.https_client()
    }

    /// A directory holding the CA as skopeo's `--src-cert-dir`/`--dest-cert-dir` want it.
    pub fn skopeo_cert_dir(&self) -> PathBuf {
        self.ca.skopeo_cert_dir()
    }

    /// `skopeo copy` of `src` to `docker://PROXY/repo_tag`, then back from there to `back`,
    /// verifying the proxy's certificate, logged in as `creds` (`USER:PASSWORD`) when given.
    pub fn skopeo_push_and_pull(&self, src: &str, repo_tag: &str, back: &str, creds: Option<&str>) {
        let certs = self.skopeo_cert_dir();
        let certs = certs.to_str().unwrap();
        let proxied = format!("docker://{}/{repo_tag}", self.proxy_host());
        for (side, from, to) in [
            ("dest", src, proxied.as_str()),
            ("src", proxied.as_str(), back),
        ] {
            let (cert_dir, creds_flag) = (format!("--{side}-cert-dir"), format!("--{side}-creds"));
            let mut args = vec!["--insecure-policy", "copy", &cert_dir, certs];
            if let Some(creds) = creds {
                args.extend([creds_flag.as_str(), creds]);
            }
            args.extend([from, to]);
            super::skopeo::run(&args);
        }
    }

    /// Kills replica `i` at once (SIGKILL), as a power loss would.
    pub fn kill9(&mut self, i: usize) {
        self.replicas[i].proc.kill();
    }

    /// Starts replica `i` again on its port and data (after [`Replicas::kill9`]); the log of
    /// the run before is kept beside it (`replicaN.log.K`).
    pub fn restart(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        r.proc.kill();
        let _ = std::fs::rename(
            &r.proc.log,
            r.proc.log.with_extension(format!("log.{}", r.starts)),
        );
        r.starts += 1;
        r.proc = start_replica(&self.services, &r.data, r.port, &self.serve_args);
    }

    /// The replica with a request in flight from the proxy (its `proxy_upstream_outstanding`
    /// is not 0), waiting up to 10 s for one; panics when none has.
    #[track_caller]
    pub fn busy_replica(&self) -> usize {
        super::poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let text = metrics(self.admin);
            self.replicas.iter().position(|r| {
                let series = format!("proxy_upstream_outstanding{{upstream=\"{}\"}} ", r.url());
                text.lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .is_some_and(|v| v.trim() != "0")
            })
        })
        .expect("a replica with a request in flight from the proxy")
    }

    /// Whether the proxy has replica `i` in service (`proxy_upstream_healthy`).
    pub fn in_service(&self, i: usize) -> bool {
        healthy(self.admin, &self.replicas[i].url()) == Some(1.0)
    }
}

/// `serve` on the services with `data` for what stays local, on `port`; its log beside `data`.
fn start_replica(services: &Services, data: &Path, port: u16, args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let envs = services.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    serve_with(data, port, &args, &envs, data.with_extension("log"))
}

/// The proxy with `/v2`, `/oauth2` (the token service, for replicas with `--auth tokens`) and
/// `/acr` balanced over `replicas`, checking them every [`HEALTH_INTERVAL`], and its admin port.
fn proxy_before(dir: &Path, leaf: &Leaf, replicas: &[Replica]) -> (Proc, SocketAddr) {
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    // `/v2` from the helper, the token service and `/acr` over the same replicas.
    let route = |prefix: &str| format!("{prefix}={}", urls.join(","));
    let (oauth2, acr) = (route("/oauth2"), route("/acr"));
    balanced_proxy(
        dir,
        "proxy",
        leaf,
        &urls,
        &[
            "--route",
            &oauth2,
            "--route",
            &acr,
            "--health-interval",
            HEALTH_INTERVAL,
        ],
    )
}
