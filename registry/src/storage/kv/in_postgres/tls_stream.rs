//! The `postgres` client's TLS hook (`MakeTlsConnect`) on tokio-rustls, with the config of
//! `tls`: the handshake, the encrypted stream, and its `tls-server-end-point` channel binding
//! (SCRAM-SHA-256-PLUS ties the password exchange to this TLS session, so a server in the
//! middle cannot relay it). Written here rather than taken from `tokio-postgres-rustls` (which
//! no longer needs ring): that crate brings a second X.509 parser into the binary (`x509-cert`
//! with `der`, `spki` and an older `const-oid`, beside the `x509-parser` the certs code uses),
//! and a refused certificate must come back explained (`tls::TlsSettings::explain_refusal`).
//!
//! A certificate refusal is returned as [`CertificateRefused`], not as an I/O error, so the
//! backend does not take it for a lost connection worth retrying.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::pki_types::ServerName;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tls::TlsSettings;

/// The server's certificate did not pass the checks of `sslmode`: the explanation, naming the
/// host, the reason and the setting to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct CertificateRefused(String);

/// Makes the TLS connection of each new PostgreSQL connection (cheap to clone: one config).
#[derive(Clone)]
pub(super) struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    settings: Arc<TlsSettings>,
}

impl RustlsConnect {
    /// Builds the config once (reading `sslrootcert`), for every connection of the backend.
    pub(super) fn new(settings: &TlsSettings) -> Result<RustlsConnect, String> {
        Ok(RustlsConnect {
            config: Arc::new(settings.client_config()?),
            settings: Arc::new(settings.clone()),
        })
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = HostConnect;
    type Error = io::Error;

    /// Never fails: the client asks for a connector even where it will not use it (a unix
    /// socket, `sslmode=disable`), with an empty host name; a name that is not one fails the
    /// handshake instead, if there is one.
    fn make_tls_connect(&mut self, host: &str) -> Result<HostConnect, io::Error> {
        Ok(HostConnect {
            connect: self.clone(),
            host: host.to_owned(),
        })
    }
}

/// The handshake with one host.
pub(super) struct HostConnect {
    connect: RustlsConnect,
    host: String,
}

type Handshake = Pin<Box<dyn Future<Output = Result<RustlsStream, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl TlsConnect<Socket> for HostConnect {
    type Stream = RustlsStream;
    type Error = BoxError;
    type Future = Handshake;

    fn connect(self, socket: Socket) -> Handshake {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                format!(
                    "{:?} is not a host name to check a certificate for: {e}",
                    self.host
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(self.connect.config.clone());
            match connector.connect(name, socket).await {
                Ok(stream) => Ok(RustlsStream(Box::new(stream))),
                Err(e) => Err(refusal(&self.connect.settings, &self.host, e)),
            }
        })
    }
}

/// A handshake's failure: explained when the certificate was refused, else the I/O error as
/// it is (a lost connection, worth retrying).
fn refusal(settings: &TlsSettings, host: &str, error: io::Error) -> BoxError {
    let certificate = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(reason) => Some(reason),
            _ => None,
        });
    match certificate {
        Some(reason) => Box::new(CertificateRefused(settings.explain_refusal(host, reason))),
        None => Box::new(error),
    }
}

/// An encrypted connection to PostgreSQL.
pub(super) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| server_end_point(leaf))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate's hash, by the hash function of
/// its signature algorithm (MD5 and SHA-1 upgraded to SHA-256), as PostgreSQL computes it.
/// `None` for an algorithm without one hash function (Ed25519, RSA-PSS): the client then does
/// not offer channel binding, and SCRAM runs without it.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let hash = match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
        // RSA with MD5, SHA-1, SHA-256; ECDSA with SHA-1, SHA-256; DSA with SHA-1, SHA-256.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => sha2::Sha256::digest(cert).to_vec(),
        // RSA and ECDSA with SHA-224.
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" => sha2::Sha224::digest(cert).to_vec(),
        // RSA and ECDSA with SHA-384.
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert).to_vec(),
        // RSA and ECDSA with SHA-512.
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert).to_vec(),
        _ => return None,
    };
    Some(hash)
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Against the real server (`ssl = on`, certificates from our own certs code): the channel
/// binding's hash follows the certificate's signature algorithm exactly as PostgreSQL computes
/// it (with `channel_binding=require` the client refuses to authenticate otherwise, and the
/// server refuses a binding that does not match), and a certificate without one hash function
/// still connects, without binding.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use certs::gen::{ca_params, generate_key, server_params, validity, Ca, KeyType};
    use certs::rcgen;

    use super::super::test_server::TestServer;
    use super::super::{PostgresBackend, PostgresSettings};
    use crate::storage::kv::{Kv, Table};

    const NOTES: Table<String, String> = Table::new("tls_notes");

    /// A root CA whose key is `ca_key` and a server certificate for 127.0.0.1 it signed, as
    /// files in `dir`: (root, server certificate, server key).
    fn issue(dir: &Path, ca_key: rcgen::KeyPair) -> [std::path::PathBuf; 3] {
        let (from, to) = validity(2).unwrap();
        let ca = Ca::new_root(ca_params("test root", None, from, to, None), ca_key).unwrap();
        let leaf_key = generate_key(KeyType::EcdsaP256).unwrap();
        let params = server_params("localhost", &["127.0.0.1".to_owned()], from, to).unwrap();
        let leaf = ca.sign(&params, &leaf_key).unwrap();
        let files = [
            dir.join("root.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        ];
        std::fs::write(&files[0], &ca.cert_pem).unwrap();
        std::fs::write(&files[1], leaf).unwrap();
        std::fs::write(&files[2], leaf_key.serialize_pem()).unwrap();
        files
    }

    /// Writes and reads through a backend on `url`; the server reports its connections
    /// encrypted.
    fn round_trip(server: &TestServer, url: &str) {
        let settings = PostgresSettings::parse(url).unwrap();
        let db = settings.config().get_dbname().unwrap().to_owned();
        let kv = Kv::new(Box::new(PostgresBackend::open(settings).unwrap()));
        kv.write(|tx| {
            tx.create_table(NOTES.def())?;
            tx.insert(NOTES, "k", "over TLS")
        })
        .unwrap();
        let read = kv.read(|tx| tx.get(NOTES, "k")).unwrap();
        assert_eq!(read.as_deref(), Some("over TLS"));
        let ssl = server.sql(
            "postgres",
            &format!(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = '{db}' AND a.application_name = 'connected-registry'"
            ),
        );
        assert!(!ssl.trim().is_empty(), "the backend holds connections");
        assert!(
            ssl.lines().all(|l| l == "t"),
            "every connection encrypted: {ssl}"
        );
    }

    #[test]
    fn channel_binding_hashes_by_the_certificates_signature_algorithm() {
        let cases: [(&rcgen::SignatureAlgorithm, &str); 3] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "require"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "require"),
            // Ed25519 names no hash: no binding, and SCRAM runs without it.
            (&rcgen::PKCS_ED25519, "prefer"),
        ];
        for (algorithm, binding) in cases {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let [root, cert, key] = issue(dir.path(), ca_key);
            let server = TestServer::start_with_tls(&cert, &key);
            let url = server.create_database().replace(
                "sslmode=disable",
                &format!(
                    "sslmode=verify-full&sslrootcert={}&channel_binding={binding}",
                    root.display()
                ),
            );
            round_trip(&server, &url);
        }
    }

    /// A root that did not issue the certificate (another CA, of another name) is refused,
    /// not retried as a lost connection, and explained.
    #[test]
    fn a_root_of_another_name_is_refused_as_an_unknown_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = generate_key(KeyType::EcdsaP256).unwrap();
        let [_, cert, key] = issue(dir.path(), ca_key);
        let (from, to) = validity(2).unwrap();
        let other_key = generate_key(KeyType::EcdsaP256).unwrap();
        let other = Ca::new_root(ca_params("other root", None, from, to, None), other_key).unwrap();
        let other_root = dir.path().join("other.pem");
        std::fs::write(&other_root, &other.cert_pem).unwrap();
        let server = TestServer::start_with_tls(&cert, &key);
        let url = server.create_database().replace(
            "sslmode=disable",
            &format!("sslmode=verify-full&sslrootcert={}", other_root.display()),
        );
        let settings = PostgresSettings::parse(&url).unwrap();
        let kv = Kv::new(Box::new(PostgresBackend::open(settings).unwrap()));
        let err = kv.read(|tx| tx.get(NOTES, "k")).unwrap_err();
        assert!(
            matches!(err, crate::storage::StorageError::Db(_)),
            "not worth retrying: {err:?}"
        );
        let expected = format!(
            "the TLS certificate of 127.0.0.1 was refused under sslmode=verify-full: it was not \
             issued by a CA of sslrootcert={} (UnknownIssuer): point \
             sslrootcert at",
            other_root.display()
        );
        assert!(err.to_string().contains(&expected), "{err}");
    }
}
