//! `certs doctor`: connect to a TLS server, fetch the chain it presents, and explain whether
//! a client trusting a given bundle accepts it, the same way `certs verify` does.
//!
//! The handshake is completed with a verifier that records the chain and accepts it (the
//! server's signature over the handshake is still checked), so the chain can be judged
//! separately and the report can say *why*, where a normal client only says "unknown CA".

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;

use crate::verify::{self, Verdict};
use crate::CertError;

/// Default time allowed to connect and complete the handshake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect, parsed from `https://HOST[:PORT][/...]` (port 443 by default).
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses an `https://` URL or a bare `HOST:PORT`.
    pub fn parse(url: &str) -> Result<Target, CertError> {
        let bad = |why: &str| {
            CertError::Input(format!(
                "{url:?}: {why}; expected https://HOST:PORT (e.g. https://parent.local:443)"
            ))
        };
        let rest = if let Some(r) = url.strip_prefix("https://") {
            r
        } else if url.contains("://") {
            return Err(bad("only https:// URLs can be checked"));
        } else {
            url
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None => 443,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Target { host, port })
    }

    fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the doctor found.
#[derive(Debug)]
pub struct Diagnosis {
    pub target: String,
    /// The chain the server presented, as sent.
    pub presented: Vec<CertificateDer<'static>>,
    pub verdict: Verdict,
}

impl Diagnosis {
    /// The report `certs doctor` prints.
    pub fn report(&self) -> String {
        let mut out = format!(
            "{} presented {} certificate(s):\n",
            self.target,
            self.presented.len()
        );
        if let Ok(infos) = crate::inspect::inspect_ders(&self.presented, &self.target) {
            for (i, c) in infos.iter().enumerate() {
                out.push_str(&format!(
                    "  {}. {} (issued by {}) [{}]\n",
                    i + 1,
                    c.subject,
                    c.issuer,
                    c.role()
                ));
            }
        }
        out.push_str(&self.verdict.report());
        if let Some(root) = &self.verdict.missing_root {
            out.push_str(&format!(
                "Nested edge: the server at {} (the layer above) chains up to the root CA '{root}', \
                 which is missing from this layer's trust bundle {}. Append that layer's \
                 root-ca.cert.pem (subject '{root}') to {} (keep the roots already there), then \
                 restart or let the proxy reload it.\n",
                self.target, self.verdict.trust_label, self.verdict.trust_label
            ));
        } else if self.verdict.has(verify::ProblemKind::BadSignature) {
            out.push_str(&format!(
                "Nested edge: the server at {} has a certificate from a CA that shares a name with \
                 one in {} but is not the same CA: the layer above was probably re-keyed. Replace \
                 its root in {} with the current root-ca.cert.pem of that layer.\n",
                self.target, self.verdict.trust_label, self.verdict.trust_label
            ));
        }
        out
    }
}

/// Records the presented chain and accepts it; handshake signatures are still verified.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut slot) = self.chain.lock() {
            *slot = chain;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Fetches the chain `url` presents (SNI = its host) within `timeout`.
pub fn fetch_chain(
    target: &Target,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let label = target.label();
    let err = |message: String| CertError::Connect {
        target: label.clone(),
        message,
    };
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| err(format!("cannot resolve the host name: {e}")))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        err(format!(
            "cannot connect ({}): is the server running and the port right?",
            last.unwrap_or_else(|| "no address".into())
        ))
    })?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));

    let provider = crate::tls::provider();
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err(format!("internal: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| err(format!("{:?} is not a valid host name", target.host)))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| err(format!("internal: {e}")))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut stream) {
            let got = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
            if !got.is_empty() {
                // The chain arrived; a later failure (e.g. the server wants a client
                // certificate) does not stop the diagnosis of the chain.
                return Ok(got);
            }
            return Err(err(format!(
                "TLS handshake failed before the server sent its certificate: {e} \
                 (is this a TLS port? plain HTTP servers fail here)"
            )));
        }
    }
    // Be polite: close the session.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut stream);
    let _ = stream.flush();
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    if chain.is_empty() {
        return Err(err("the server sent no certificate".into()));
    }
    Ok(chain)
}

/// Connects to `url`, fetches the presented chain and judges it against `trust`. The
/// hostname checked is the URL's host unless `hostname` overrides it.
pub fn doctor(
    url: &str,
    trust: &Path,
    hostname: Option<&str>,
    timeout: Duration,
) -> Result<Diagnosis, CertError> {
    let target = Target::parse(url)?;
    let trust_ders = crate::tls::load_certs(trust)?;
    let presented = fetch_chain(&target, timeout)?;
    let label = target.label();
    let host = hostname.unwrap_or(&target.host).to_string();
    let verdict = verify::verify_chain(
        &presented,
        &format!("the chain {label} presents"),
        &trust_ders,
        &trust.display().to_string(),
        Some(&host),
        OffsetDateTime::now_utc(),
    )?;
    Ok(Diagnosis {
        target: label,
        presented,
        verdict,
    })
}
