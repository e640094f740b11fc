//! PostgreSQL for the end-to-end tests of `serve --metadata postgres://...`: a real server from
//! Debian's `postgresql` package on a free loopback port, stopped (and its directory removed)
//! when dropped or when the test process ends. It is the registry crate's own test server
//! (`registry::storage::postgres_test_server`), which the storage unit tests use too; with TLS
//! on, it presents a certificate of a test CA (`common::tls`, made with `openssl`).

use std::path::Path;

use super::tls::TestCa;

// Not every test file that compiles `common` uses them.
#[allow(unused_imports)]
pub use registry::storage::postgres_test_server::{TestServer, PASSWORD};

/// A server of this test's own with one database; the URL `serve --metadata` takes.
pub fn server_with_database() -> (TestServer, String) {
    let server = TestServer::start();
    let url = server.create_database();
    (server, url)
}

/// The name in the certificate of [`tls_server_with_database`] besides 127.0.0.1 and
/// `localhost`.
pub const TLS_SERVER_NAME: &str = "db.example";

/// A server of this test's own with TLS on and one database, and the test CA (in `dir`) whose
/// intermediate issued its certificate (for 127.0.0.1, `localhost` and [`TLS_SERVER_NAME`]);
/// the URL is [`TestServer::url`]'s, `sslmode=disable`: [`with_query`] gives it others.
pub fn tls_server_with_database(dir: &Path) -> (TestServer, TestCa, String) {
    let ca = TestCa::new(dir);
    let leaf = ca.server("postgres", TLS_SERVER_NAME);
    let server = TestServer::start_with_tls(&leaf.chain, &leaf.key);
    let url = server.create_database();
    (server, ca, url)
}

/// A test server's URL with `query` as its parameters instead of `sslmode=disable`.
pub fn with_query(url: &str, query: &str) -> String {
    let (base, _) = url
        .split_once('?')
        .expect("a test server's URL has parameters");
    format!("{base}?{query}")
}

/// Whether each connection the registry holds to database `db` of `server` is encrypted, read
/// from `pg_stat_ssl` (the server's own view, over psql's unix socket): `(TLS version,
/// cipher)`, or `None` for a plain one.
pub fn registry_connections_tls(server: &TestServer, db: &str) -> Vec<Option<(String, String)>> {
    server
        .sql(
            "postgres",
            &format!(
                "SELECT s.ssl, coalesce(s.version, ''), coalesce(s.cipher, '') \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'connected-registry' AND a.datname = '{db}'"
            ),
        )
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            (fields[0] == "t").then(|| (fields[1].to_owned(), fields[2].to_owned()))
        })
        .collect()
}

/// The database name of a test server's URL.
pub fn database_of(url: &str) -> &str {
    let without_query = url.split('?').next().unwrap_or(url);
    without_query.rsplit('/').next().unwrap_or(without_query)
}
