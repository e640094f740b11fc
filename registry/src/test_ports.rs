//! Loopback ports for the servers tests start (Azurite, the PostgreSQL test server, and, in
//! the end-to-end tests, the registries, proxies and peers of `tests/common`): one list for the
//! whole test process, so no two of them are ever given the same port.

use std::net::TcpListener;
use std::sync::Mutex;

/// A loopback port that was free a moment ago, and never handed out before in this test
/// process: tests run in parallel, and without this two of them can be given the same number
/// (the kernel reuses a released ephemeral port). The second server then fails to bind while
/// its test, finding the port open, talks to the first test's server.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
