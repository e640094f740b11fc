//! PostgreSQL for the end-to-end tests of `serve --metadata postgres://...`: a real server from
//! Debian's `postgresql` package on a free loopback port, stopped (and its directory removed)
//! when dropped or when the test process ends. It is the registry crate's own test server
//! (`registry::storage::postgres_test_server`), which the storage unit tests use too.

// Not every test file that compiles `common` uses them.
#[allow(unused_imports)]
pub use registry::storage::postgres_test_server::{TestServer, PASSWORD};

/// A server of this test's own with one database; the URL `serve --metadata` takes.
pub fn server_with_database() -> (TestServer, String) {
    let server = TestServer::start();
    let url = server.create_database();
    (server, url)
}
