//! Graceful shutdown on SIGTERM (`serve --shutdown-grace`): new connections are refused at
//! once, a request in flight may finish within the grace period, one still running at its end
//! is cut, the process exits 0 either way, and an upload cut by the shutdown resumes after a
//! restart from the bytes it stored.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::api::{sha256, Api};
use common::oci::random_bytes;
use common::{start_registry_on, wait_until, Proc};
use reqwest::Method;

/// Starts a PATCH of `total` bytes to the upload at `location` on a raw connection and sends
/// only `first` of them: a slow client with a request in flight.
fn slow_patch(registry: &Proc, location: &str, total: usize, first: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(registry.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        conn,
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
        registry.addr
    )
    .unwrap();
    conn.write_all(first).unwrap();
    conn.flush().unwrap();
    conn
}

/// The bytes the upload session `location` holds on disk (the session is locked while a
/// request writes to it, so the status endpoint would wait).
fn stored(data: &Path, location: &str) -> u64 {
    let id = location.rsplit('/').next().unwrap();
    std::fs::metadata(data.join("uploads").join(id).join("data"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn a_request_in_flight_finishes_within_the_grace_period_and_new_connections_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reg");
    let port = common::free_port();
    let mut registry = start_registry_on(&data, port, &["--shutdown-grace", "5m"]);
    let api = Api::new(&registry.url());
    let location = api.start_upload("r");
    let bytes = random_bytes(2 << 20);
    let (first, rest) = bytes.split_at(1 << 20);
    let mut conn = slow_patch(&registry, &location, bytes.len(), first);
    assert!(wait_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || stored(&data, &location) == first.len() as u64
    ));

    registry.sigterm();
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            TcpStream::connect(registry.addr).is_err()
        }),
        "still accepting connections after SIGTERM"
    );
    assert!(
        registry.child.try_wait().unwrap().is_none(),
        "did not wait for the request"
    );

    conn.write_all(rest).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("range: 0-{}", bytes.len() - 1)),
        "{answer}"
    );
    let status = registry.exit_within(Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");

    // The finished chunk is there after a restart, and the upload completes.
    let registry = start_registry_on(&data, port, &[]);
    let api = Api::new(&registry.url());
    let r = api.get(&location).expect(204);
    assert_eq!(r.header("range"), Some(format!("0-{}", bytes.len() - 1)));
    api.send(api.req(Method::PUT, &Api::with_digest(&location, &sha256(&bytes))))
        .expect(201);
}

#[test]
fn a_request_still_running_at_the_deadline_is_cut_and_its_upload_resumes_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("reg");
    let port = common::free_port();
    // `CONNECTED_REGISTRY_SHUTDOWN_GRACE` sets it like the flag.
    let mut registry = common::serve_with(
        &data,
        port,
        &[],
        &[("CONNECTED_REGISTRY_SHUTDOWN_GRACE", "1s")],
        tmp.path().join("serve.log"),
    );
    let api = Api::new(&registry.url());
    let location = api.start_upload("r");
    let bytes = random_bytes(3 << 20);
    let first = &bytes[..1 << 20];
    // The client never sends the rest.
    let _conn = slow_patch(&registry, &location, bytes.len(), first);
    assert!(wait_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || stored(&data, &location) == first.len() as u64
    ));

    registry.sigterm();
    let status = registry.exit_within(Duration::from_secs(120));
    assert!(status.success(), "exit status {status}");
    let log = registry.log_text();
    assert!(
        log.contains("cut"),
        "the log says requests were cut:\n{log}"
    );

    // After a restart the session says what it holds, and the client continues from there.
    let registry = start_registry_on(&data, port, &[]);
    let api = Api::new(&registry.url());
    let r = api.get(&location).expect(204);
    assert_eq!(r.header("range"), Some(format!("0-{}", first.len() - 1)));
    let rest = &bytes[first.len()..];
    let range = format!("{}-{}", first.len(), bytes.len() - 1);
    let r = api.patch_chunk(&location, rest, Some(&range)).expect(202);
    let done = Api::with_digest(&r.header("location").unwrap(), &sha256(&bytes));
    api.send(api.req(Method::PUT, &done)).expect(201);
    let blob = api
        .get(&format!("/v2/r/blobs/{}", sha256(&bytes)))
        .expect(200);
    assert_eq!(blob.body, bytes);
}
