//! The bandwidth cap on sync (`--bandwidth-limit`): measured through a TCP relay between a
//! child and its parent that timestamps every byte it forwards, the rate over any 10 s of a
//! transfer stays within 5% of the cap, down (a pull) and up (a ReadWrite child's push).
//! (Local clients are not capped by construction: only the parent client's transfers pass the
//! throttle.)

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::Api;
use common::start_registry;
use common::sync::{start_child, sync_once, wait_for_tag};

/// Bytes forwarded in one direction, with when: the relay's record.
type Log = Arc<Mutex<Vec<(Instant, usize)>>>;

/// A relay on loopback to `upstream`, recording what goes down (to the child) and up.
struct Relay {
    addr: SocketAddr,
    down: Log,
    up: Log,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let (down, up): (Log, Log) = Default::default();
        let (d, u) = (down.clone(), up.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(parent) = TcpStream::connect(upstream) else {
                    continue;
                };
                forward(
                    parent.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    d.clone(),
                );
                forward(client, parent, u.clone());
            }
        });
        Relay { addr, down, up }
    }
}

/// Copies `from` to `to` on a thread of its own, logging each read.
fn forward(mut from: TcpStream, mut to: TcpStream, log: Log) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            log.lock().unwrap().push((Instant::now(), n));
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// The rate over every 10 s interval inside the bulk of the transfer (from its first to its
/// last 256 KiB: the small requests around it, polls and manifests, are not a transfer), as a
/// share of `cap`: the lowest and the highest. Panics when the transfer was shorter.
fn shares_of_cap(log: &Log, cap: u64) -> (f64, f64, usize) {
    let log = log.lock().unwrap().clone();
    let total: usize = log.iter().map(|(_, n)| n).sum();
    let edge = 256 << 10;
    let mut sent = 0;
    let mut first = None;
    let mut last = log[0].0;
    for (t, n) in &log {
        sent += n;
        if sent >= edge && first.is_none() {
            first = Some(*t);
        }
        if sent <= total - edge {
            last = *t;
        }
    }
    let first = first.expect("a transfer");
    let span = Duration::from_secs(10);
    assert!(
        last - first > span,
        "the transfer took {:?}: too short to measure a 10 s interval",
        last - first
    );
    let (mut low, mut high, mut count) = (f64::MAX, 0f64, 0);
    let mut start = first;
    while start + span <= last {
        let bytes: usize = log
            .iter()
            .filter(|(t, _)| *t >= start && *t < start + span)
            .map(|(_, n)| n)
            .sum();
        let share = bytes as f64 / (cap as f64 * span.as_secs_f64());
        low = low.min(share);
        high = high.max(share);
        count += 1;
        start += Duration::from_millis(100);
    }
    (low, high, count)
}

const CAP: u64 = 2 << 20;
const LAYER: usize = 24 << 20;

#[test]
fn a_pull_and_a_push_up_are_held_to_the_cap_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let parent = start_registry(&dir.path().join("parent"), &[]);
    let relay = Relay::start(parent.addr);
    let relay_url = format!("http://{}", relay.addr);
    Api::new(&parent.url()).push_image("apps/big", "v1", 1, LAYER);

    // Down: one pass of a child pulls the 24 MiB image at 2 MiB/s.
    let out = sync_once(
        &dir.path().join("child-once"),
        &relay_url,
        &["--repo", "apps/*", "--bandwidth-limit", "2MiB/s"],
        &[],
    );
    assert!(
        out.status.success(),
        "sync --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (low, high, intervals) = shares_of_cap(&relay.down, CAP);
    eprintln!("down: {intervals} intervals of 10 s, rate {low:.3} to {high:.3} of the cap");
    assert!(
        (0.95..=1.05).contains(&low) && (0.95..=1.05).contains(&high),
        "down: the rate over 10 s ranged {low:.3} to {high:.3} of the cap, not within 5%"
    );

    // Up: a ReadWrite child pushes what a client pushed to it, capped the same way.
    relay.down.lock().unwrap().clear();
    relay.up.lock().unwrap().clear();
    let child = start_child(
        &dir.path().join("child"),
        &relay_url,
        &[
            "--repo",
            "apps/*",
            "--mode",
            "ReadWrite",
            "--bandwidth-limit",
            "2MiB/s",
        ],
    );
    let (_, pushed, _) = Api::new(&child.url()).push_image("apps/local", "v1", 1, LAYER);
    wait_for_tag(&parent, "apps/local", "v1", &pushed.digest);
    let (low, high, intervals) = shares_of_cap(&relay.up, CAP);
    eprintln!("up: {intervals} intervals of 10 s, rate {low:.3} to {high:.3} of the cap");
    assert!(
        (0.95..=1.05).contains(&low) && (0.95..=1.05).contains(&high),
        "up: the rate over 10 s ranged {low:.3} to {high:.3} of the cap, not within 5%"
    );
}
