//! Connections to upstreams: a hyper-util client per upstream with a connector that opens
//! TCP with a timeout and, for `https://` upstreams, TLS verified against the trust bundle
//! that is current when the connection is opened (so a rotated bundle applies to the next
//! connection without a restart).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use certs::reload::ReloadingTrust;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::config::{Scheme, Upstream};

/// Why an upstream connection could not be opened. The text names the address and the trust
/// bundle, for the log; clients get [`ConnectError::public_reason`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} (server name {sni}, trust {trust}): {source}")]
    Tls {
        addr: String,
        sni: String,
        trust: String,
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Why, in words that name no address, port, host or file: what a client of the proxy
    /// may be told (the internal layout of the layers is the operator's, not the client's).
    pub fn public_reason(&self) -> String {
        match self {
            ConnectError::Timeout { after, .. } => {
                format!("did not accept a connection within {after:?}")
            }
            ConnectError::Tcp { source, .. } => format!("did not answer ({})", source.kind()),
            ConnectError::Tls { source, .. } => {
                format!("failed the TLS handshake ({})", tls_reason(source))
            }
        }
    }
}

/// The reason a TLS handshake with an upstream failed, without the names rustls puts in
/// some of its messages (the expected and presented server names).
fn tls_reason(err: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            // BadSignature: a trusted CA has the issuer's name but did not sign it (another
            // chain's root of the same name): to the operator, the same missing trust.
            C::UnknownIssuer | C::BadSignature => {
                "its certificate is not signed by a CA in the proxy's trust bundle"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "its certificate is not valid for the name the proxy expects"
            }
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired",
            _ => "its certificate was not accepted",
        },
        Some(rustls::Error::AlertReceived(_)) => "it refused the handshake",
        Some(_) => "TLS error",
        None => "the connection failed during the handshake",
    }
}

/// A plain or TLS stream to an upstream.
pub enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpStream {
    fn connected(&self) -> Connected {
        match self {
            UpStream::Plain(_) => Connected::new(),
            UpStream::Tls(s) => {
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Opens connections to one upstream.
#[derive(Clone)]
pub struct Connector {
    addr: String,
    tls: Option<(Arc<ReloadingTrust>, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<UpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        // The URI is always this upstream's: one client per upstream.
        let this = self.clone();
        Box::pin(async move {
            let addr = this.addr.clone();
            let connect = async {
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|source| ConnectError::Tcp {
                        addr: addr.clone(),
                        source,
                    })?;
                let _ = tcp.set_nodelay(true);
                match &this.tls {
                    None => Ok(UpStream::Plain(tcp)),
                    Some((trust, sni)) => {
                        let connector = tokio_rustls::TlsConnector::from(trust.config());
                        let tls = connector
                            .connect(sni.clone(), tcp)
                            .await
                            .map_err(|source| ConnectError::Tls {
                                addr: addr.clone(),
                                sni: sni.to_str().into_owned(),
                                trust: trust.path().display().to_string(),
                                source,
                            })?;
                        Ok(UpStream::Tls(Box::new(tls)))
                    }
                }
            };
            match tokio::time::timeout(this.connect_timeout, connect).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(ConnectError::Timeout {
                    addr,
                    after: this.connect_timeout,
                }),
            }
        })
    }
}

/// One upstream: its name for logs and errors, and its pooled client.
pub struct UpstreamClient {
    /// The upstream as written in the config, for logs, metrics and error bodies.
    pub name: Arc<str>,
    /// Scheme and authority of every request URI sent to it, parsed once.
    pub uri_scheme: http::uri::Scheme,
    pub uri_authority: http::uri::Authority,
    pub client: Client<Connector, ReqBody>,
}

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest read from an upstream connection. hyper's buffer grows to it only while reads
/// fill it (a big blob), so manifest responses keep small buffers; fewer, larger reads
/// mean fewer wake-ups and fewer TLS records per layer byte.
pub const UPSTREAM_READ_BUFFER: usize = 1024 * 1024;
/// Idle pooled connections kept per upstream.
pub const POOL_MAX_IDLE: usize = 64;

impl UpstreamClient {
    /// A client for `up`; `trust` must be given for https upstreams.
    pub fn new(
        up: &Upstream,
        trust: Option<Arc<ReloadingTrust>>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let tls = match up.scheme {
            Scheme::InProcess => {
                return Err(format!(
                    "{up}: the registry in this process is called directly, not connected to"
                ))
            }
            Scheme::Http => None,
            Scheme::Https => {
                let trust = trust.ok_or_else(|| format!("{up}: https needs a trust bundle"))?;
                let name = up.sni.clone().unwrap_or_else(|| up.host.clone());
                let sni = ServerName::try_from(name.clone())
                    .map_err(|_| format!("{up}: {name:?} is not a valid TLS server name"))?;
                Some((trust, sni))
            }
        };
        let connector = Connector {
            addr: up.authority(),
            tls,
            connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(UPSTREAM_READ_BUFFER)
            .build(connector);
        let uri_scheme = match up.scheme {
            Scheme::Http | Scheme::InProcess => http::uri::Scheme::HTTP,
            Scheme::Https => http::uri::Scheme::HTTPS,
        };
        let uri_authority = http::uri::Authority::try_from(up.authority())
            .map_err(|err| format!("{up}: not a valid URI authority: {err}"))?;
        Ok(UpstreamClient {
            name: up.to_string().into(),
            uri_scheme,
            uri_authority,
            client,
        })
    }
}
