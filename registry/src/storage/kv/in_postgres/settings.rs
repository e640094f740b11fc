//! `--metadata postgres://USER:PASSWORD@HOST:PORT/DB`: where the PostgreSQL backend connects,
//! how (TLS: the URL's `sslmode` and `sslrootcert`, see `tls`), and its named limits. The URL
//! holds a password, so it is shown only redacted ([`PostgresSettings`]'s `Display` and
//! `Debug`), in logs, errors and `print-config` alike.

use std::fmt;
use std::time::Duration;

use super::tls::TlsSettings;

/// How to reach PostgreSQL, and the limits of the backend's connections.
#[derive(Clone)]
pub struct PostgresSettings {
    /// The URL as given (with its password): only ever handed to the client library.
    url: String,
    config: postgres::Config,
    /// TLS to the server (`sslmode`, `sslrootcert`).
    pub(crate) tls: TlsSettings,
    /// Connections, each on a thread of its own (`--metadata-connections`). One write
    /// transaction runs at a time per process (PostgreSQL serializes them across replicas
    /// anyway), so the others serve reads.
    pub connections: usize,
    /// How many more times a transaction that failed before its commit because the connection
    /// was lost (or PostgreSQL asked for a retry) runs (`--metadata-retries`).
    pub retries: u32,
}

impl PostgresSettings {
    /// The default of `--metadata-connections`.
    pub const DEFAULT_CONNECTIONS: usize = 4;
    /// The default of `--metadata-retries`.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// How long connecting may take, unless the URL says (`connect_timeout=SECONDS`).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long data sent may stay unacknowledged before the connection counts as lost, unless
    /// the URL says (`tcp_user_timeout`): a server that vanished without closing the
    /// connection fails the transaction (which is then retried) instead of hanging it.
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

    /// Parses a `postgres://` or `postgresql://` URL, with libpq's TLS parameters (`sslmode`,
    /// `sslrootcert`, see `tls::TlsSettings`); the `sslrootcert` file is read when the backend
    /// opens.
    pub fn parse(url: &str) -> Result<PostgresSettings, String> {
        let shown = redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "metadata backend {shown:?} is neither `redb` nor a PostgreSQL URL \
                 (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
            ));
        }
        let (client_url, tls) = TlsSettings::take_from_url(url)
            .map_err(|e| format!("metadata backend {shown}: {e}"))?;
        let mut config: postgres::Config = client_url
            .parse()
            .map_err(|e| format!("metadata backend {shown}: not a valid PostgreSQL URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err(format!(
                "metadata backend {shown}: the URL names no host (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
            ));
        }
        config.ssl_mode(tls.mode.negotiation());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Self::CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Self::TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("connected-registry");
        }
        Ok(PostgresSettings {
            url: url.to_owned(),
            config,
            tls,
            connections: Self::DEFAULT_CONNECTIONS,
            retries: Self::DEFAULT_RETRIES,
        })
    }

    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// Where it connects, for messages: `PostgreSQL at HOST:PORT/DATABASE`.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = self
                    .config
                    .get_ports()
                    .get(i)
                    .or(self.config.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let db = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres");
        format!("PostgreSQL at {}/{db}", hosts.join(","))
    }
}

impl fmt::Display for PostgresSettings {
    /// The URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &redact(&self.url))
            .field("tls", &self.tls)
            .field("connections", &self.connections)
            .field("retries", &self.retries)
            .finish()
    }
}

/// The URL with the password of its user part and of a `password=` parameter replaced by
/// `***`. Also for text that did not parse (an error about a mistyped URL must not show the
/// password either).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url =
            "postgres://registry:s3cr%40t@db.example:5433/meta?password=other&application_name=x";
        let settings = PostgresSettings::parse(url).unwrap();
        for shown in [
            settings.to_string(),
            format!("{settings:?}"),
            settings.describe(),
        ] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(!shown.contains("other"), "{shown}");
        }
        assert_eq!(
            settings.to_string(),
            "postgres://registry:***@db.example:5433/meta?password=***&application_name=x"
        );
        assert_eq!(settings.describe(), "PostgreSQL at db.example:5433/meta");
    }

    #[test]
    fn bad_urls_are_refused_with_what_to_write() {
        let err = PostgresSettings::parse("mysql://u:pw@h/db").unwrap_err();
        assert!(err.contains("neither `redb` nor a PostgreSQL URL"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        let err = PostgresSettings::parse("postgres://u:pw@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("metadata backend postgres://u:***@h/db?sslmode=verify: sslmode=\"verify\" is not one of"), "{err}");
        let err =
            PostgresSettings::parse("postgres://u:pw@h/db?sslmode=verify-ca&sslcompression=1")
                .unwrap_err();
        assert!(err.contains("add sslrootcert=PATH"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        let err = PostgresSettings::parse("postgres://u:pw@h:notaport/db").unwrap_err();
        assert!(err.contains("not a valid PostgreSQL URL"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}
