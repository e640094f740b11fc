//! TLS to PostgreSQL in libpq's vocabulary, so an operator pastes the URL their service shows
//! (`sslmode=require`, `sslmode=verify-full&sslrootcert=...`): the URL's `sslmode` and
//! `sslrootcert`, what each mode checks of the server's certificate, the rustls config that
//! checks exactly that (aws-lc-rs, the binary's one TLS stack and crypto library), and a refusal
//! explained with the host, the reason and the setting to change. The `postgres` client's side
//! of the handshake (its `MakeTlsConnect`) is `tls_stream`.
//!
//! The client library knows only `disable`, `prefer` and `require`, and not `sslrootcert`: the
//! two parameters are taken out of the URL here and the library is told only whether TLS is
//! off, offered or required.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::storage::StorageError;

/// libpq's `sslmode`: whether the connection is encrypted, and what of the server's
/// certificate is checked (see [`TlsSettings::checks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the certificate chains to a root of `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate is valid for the host name connected to.
    VerifyFull,
}

impl SslMode {
    /// libpq's default, kept: TLS whenever the server offers it (the URL carries a password,
    /// and Azure Database for PostgreSQL, like most managed servers, offers it), and still a
    /// plain connection to a server without TLS on a trusted network. `sslrootcert=system`
    /// alone means `verify-full`, as in libpq.
    pub const DEFAULT: SslMode = SslMode::Prefer;

    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// As written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        if let Some(mode) = SslMode::ALL.into_iter().find(|m| m.as_str() == value) {
            return Ok(mode);
        }
        let known: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
        let allow = match value {
            "allow" => " (libpq's `allow`, plain first and TLS only if the server insists, is not supported: use prefer)",
            _ => "",
        };
        Err(format!(
            "sslmode={value:?} is not one of {}{allow}",
            known.join(", ")
        ))
    }

    /// What the client library is told: TLS off, offered, or required.
    pub(super) fn negotiation(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq's `sslrootcert`: the roots a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The certificates of a PEM file.
    File(PathBuf),
    /// `sslrootcert=system`: the public web roots built into the binary (Mozilla's list, via
    /// `webpki-roots`), as `sync` trusts its parent without `--trust`.
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(path) => write!(f, "sslrootcert={}", path.display()),
            RootCerts::System => f.write_str("sslrootcert=system (the public web roots)"),
        }
    }
}

/// What of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checks {
    /// Nothing: the connection is encrypted, but a server in the middle is not detected
    /// (libpq's `prefer` and `require` without `sslrootcert`).
    Nothing,
    /// It chains to a root of `sslrootcert` and is within its validity period.
    Chain,
    /// As `Chain`, and it is valid for the host name connected to.
    ChainAndName,
}

/// The URL's TLS parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub roots: Option<RootCerts>,
}

impl TlsSettings {
    /// Takes `sslmode` and `sslrootcert` out of the query of `url` and checks them together;
    /// returns the URL without them (for the client library) and the settings. The values may
    /// be percent-encoded, as every URL parameter.
    pub(super) fn take_from_url(url: &str) -> Result<(String, TlsSettings), String> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let (mut mode, mut roots) = (None, None);
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| format!("the URL parameter {key} is not UTF-8 once decoded"))
            };
            match decode(key)?.as_str() {
                "sslmode" => mode = Some(SslMode::parse(&decode(value)?)?),
                "sslrootcert" => {
                    roots = Some(match decode(value)?.as_str() {
                        "" => return Err("sslrootcert is empty: give the path of a PEM file of CA certificates, or sslrootcert=system".into()),
                        "system" => RootCerts::System,
                        path => RootCerts::File(PathBuf::from(path)),
                    })
                }
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(format!(
                        "{key}: client certificates are not supported: the registry \
                         authenticates to PostgreSQL with the URL's password (SCRAM)"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let settings = TlsSettings::checked(mode, roots)?;
        let url = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        Ok((url, settings))
    }

    /// The settings from the URL's parameters, refusing what libpq refuses: a verifying mode
    /// with nothing to verify against, and the public roots with a mode that does not check
    /// the name (anyone can get a publicly trusted certificate for some name).
    fn checked(mode: Option<SslMode>, roots: Option<RootCerts>) -> Result<TlsSettings, String> {
        let mode = match (mode, &roots) {
            (Some(mode), _) => mode,
            (None, Some(RootCerts::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::DEFAULT,
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots.is_none() {
            return Err(format!(
                "sslmode={mode} checks the server's certificate, but the URL names no CA to \
                 check it against: add sslrootcert=PATH (a PEM file of the CA certificates that \
                 issued it) or sslrootcert=system (the public web roots)"
            ));
        }
        if roots == Some(RootCerts::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (as in libpq): with the public \
                 roots, only the host name tells the server from anyone else's publicly \
                 trusted certificate; sslmode={mode} does not check it"
            ));
        }
        Ok(TlsSettings { mode, roots })
    }

    /// What of the server's certificate this mode checks: libpq's rules, including that a
    /// root file given to `prefer` or `require` makes them check the chain, as `verify-ca`.
    pub(super) fn checks(&self) -> Checks {
        match (self.mode, &self.roots) {
            (SslMode::VerifyFull, _) => Checks::ChainAndName,
            (SslMode::VerifyCa, _) | (SslMode::Prefer | SslMode::Require, Some(_)) => Checks::Chain,
            (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Checks::Nothing,
        }
    }

    /// The rustls config that checks what [`checks`](Self::checks) says; reads the
    /// `sslrootcert` file (an error names it).
    pub(super) fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = certs::tls::provider();
        let roots = match (&self.roots, self.checks()) {
            (_, Checks::Nothing) | (None, _) => None,
            (Some(RootCerts::System), _) => Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            (Some(RootCerts::File(path)), _) => {
                Some(certs::tls::load_root_store(path).map_err(|e| format!("sslrootcert: {e}"))?)
            }
        };
        let verifier = Verifier {
            roots: roots.map(Arc::new),
            check_name: self.checks() == Checks::ChainAndName,
            algorithms: provider.signature_verification_algorithms,
        };
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }

    /// Why the certificate `host` presented was refused, and which setting to change.
    pub(super) fn explain_refusal(&self, host: &str, error: &CertificateError) -> String {
        let roots = self
            .roots
            .as_ref()
            .map_or_else(|| "sslrootcert".to_owned(), |r| r.to_string());
        let other_ca = "point sslrootcert at the PEM file of the CA that issued the server's \
                        certificate (sslrootcert=system for a publicly trusted one), or use \
                        sslmode=require to encrypt without checking the certificate";
        let (reason, fix) = match error {
            CertificateError::UnknownIssuer => (
                format!("it was not issued by a CA of {roots}"),
                other_ca.to_owned(),
            ),
            CertificateError::BadSignature => (
                format!(
                    "it was not issued by a CA of {roots} (a CA of the same name is there, but \
                     it did not sign it)"
                ),
                other_ca.to_owned(),
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (
                    format!("it is not valid for the name {host:?}"),
                    format!(
                        "sslmode={} checks the name: connect by a name the certificate holds (the \
                     URL's host; hostaddr=IP gives the address to connect to apart from it), \
                     or use sslmode=verify-ca to check the issuer only",
                        self.mode
                    ),
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => (
                "it is outside its validity period".to_owned(),
                "renew the server's certificate, or correct this machine's clock".to_owned(),
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
                "it is not a TLS server certificate".to_owned(),
                "give the server a certificate for TLS servers (extendedKeyUsage serverAuth)"
                    .to_owned(),
            ),
            _ => (
                "it did not pass the check".to_owned(),
                format!("check the server's certificate against {roots}, or change sslmode"),
            ),
        };
        format!(
            "the TLS certificate of {host} was refused under sslmode={}: {reason} ({error}): {fix}",
            self.mode
        )
    }
}

/// A connection refused because the server has no TLS (the client library's words), with
/// the settings to change; any other failure as it is.
pub(super) fn explain_plain_server(error: StorageError) -> StorageError {
    const NO_TLS: &str = "server does not support TLS";
    match error {
        StorageError::Db(message) if message.ends_with(NO_TLS) => StorageError::Db(format!(
            "{message}: sslmode=require, verify-ca and verify-full need a server with TLS on \
             (`ssl = on` in postgresql.conf, or the service's TLS setting); on a trusted \
             network, sslmode=prefer or disable connects without"
        )),
        other => other,
    }
}

/// Checks a server's certificate as [`Checks`] says: with `roots`, that it chains to one of
/// them (and when `check_name`, that it is valid for the host name); without, nothing. The
/// handshake's signatures are always checked: they prove the server holds the key of the
/// certificate it sent, which the channel binding (`tls_stream`) relies on.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(url: &str) -> Result<(String, TlsSettings), String> {
        TlsSettings::take_from_url(url)
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_rest_stays() {
        let (url, tls) = take(
            "postgres://u:pw@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:pw@h/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.roots, Some(RootCerts::File("/etc/ca.pem".into())));
        assert_eq!(tls.checks(), Checks::ChainAndName);

        let (url, tls) = take("postgres://u:pw@h/db?sslmode=require").unwrap();
        assert_eq!(url, "postgres://u:pw@h/db");
        assert_eq!(
            (tls.mode, tls.checks()),
            (SslMode::Require, Checks::Nothing)
        );
    }

    #[test]
    fn the_defaults_are_libpqs() {
        let (_, tls) = take("postgres://u:pw@h/db").unwrap();
        assert_eq!((tls.mode, tls.checks()), (SslMode::Prefer, Checks::Nothing));
        // The public roots alone mean verify-full.
        let (_, tls) = take("postgres://u:pw@h/db?sslrootcert=system").unwrap();
        assert_eq!(
            (tls.mode, tls.checks()),
            (SslMode::VerifyFull, Checks::ChainAndName)
        );
        // A root file makes prefer and require check the chain, as verify-ca.
        let (_, tls) = take("postgres://u:pw@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.checks(), Checks::Chain);
        let (_, tls) = take("postgres://u:pw@h/db?sslrootcert=/ca.pem").unwrap();
        assert_eq!((tls.mode, tls.checks()), (SslMode::Prefer, Checks::Chain));
    }

    #[test]
    fn what_libpq_refuses_is_refused_with_what_to_write() {
        let err = take("postgres://u:pw@h/db?sslmode=verify-all").unwrap_err();
        assert!(err.contains("sslmode=\"verify-all\" is not one of disable, prefer, require, verify-ca, verify-full"), "{err}");
        let err = take("postgres://u:pw@h/db?sslmode=allow").unwrap_err();
        assert!(err.contains("use prefer"), "{err}");
        let err = take("postgres://u:pw@h/db?sslmode=verify-ca").unwrap_err();
        assert!(err.contains("add sslrootcert=PATH"), "{err}");
        let err = take("postgres://u:pw@h/db?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(
            err.contains("sslrootcert=system needs sslmode=verify-full"),
            "{err}"
        );
        let err = take("postgres://u:pw@h/db?sslcert=/c.pem").unwrap_err();
        assert!(
            err.contains("client certificates are not supported"),
            "{err}"
        );
        let err = take("postgres://u:pw@h/db?sslrootcert=").unwrap_err();
        assert!(err.contains("sslrootcert is empty"), "{err}");
    }

    #[test]
    fn an_unreadable_root_file_is_named() {
        let (_, tls) =
            take("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .unwrap();
        let err = tls.client_config().unwrap_err();
        assert!(
            err.contains("sslrootcert: /nonexistent/ca.pem: cannot read"),
            "{err}"
        );
        // Without a check, nothing is read: the system roots or no roots at all.
        let (_, tls) = take("postgres://u:pw@h/db?sslmode=require").unwrap();
        tls.client_config().unwrap();
        let (_, tls) = take("postgres://u:pw@h/db?sslrootcert=system").unwrap();
        tls.client_config().unwrap();
    }
}
