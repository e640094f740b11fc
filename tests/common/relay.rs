//! A TCP relay on loopback between a child and its parent that counts the bytes each way, and
//! can cut the link or slow it: what the sync tests see of a transfer from the parent's side.
//! Its listener can also be in a network namespace ([`Relay::into_namespace`]): the one way
//! from a namespace to a server on the host's loopback, byte for byte (TLS stays end to end).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::netns::Netns;

pub struct Relay {
    pub port: u16,
    /// Bytes relayed from the parent to the child.
    pub down: Arc<AtomicU64>,
    /// Bytes relayed from the child to the parent.
    pub up: Arc<AtomicU64>,
    /// While set, the link is down: connections are accepted and closed at once.
    pub down_flag: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Where the listener is, and the namespace it is in (none: the host's), to wake its
    /// accept loop when dropped.
    listen: SocketAddr,
    netns: Option<Netns>,
}

impl Relay {
    /// Relays 127.0.0.1:port to `upstream`. `cut_after`: the first connection that carries more
    /// than this many bytes down is cut (once), and the link stays down (`down_flag`). `rate`: bytes per second down, per connection.
    pub fn start(
        upstream: std::net::SocketAddr,
        cut_after: Option<u64>,
        rate: Option<u64>,
    ) -> Relay {
        Relay::start_with(upstream, cut_after, rate, None)
    }

    /// [`Relay::start`] that also throttles the child-to-parent direction to `rate_up` bytes
    /// per second, per connection.
    pub fn start_with(
        upstream: std::net::SocketAddr,
        cut_after: Option<u64>,
        rate: Option<u64>,
        rate_up: Option<u64>,
    ) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Relay::serve(listener, None, upstream, cut_after, rate, rate_up)
    }

    /// A relay whose listener is at `listen` (an address of namespace `ns`, e.g. its end of a
    /// veth pair) to `upstream` on the host's loopback, which nothing in the namespace reaches
    /// otherwise: a client in the namespace (or linked to it) connects to a host's server as
    /// to one at `listen`, over the bytes the test process carries.
    pub fn into_namespace(ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Relay {
        let listener = ns
            .in_thread(|| TcpListener::bind(listen))
            .and_then(|bound| bound)
            .unwrap_or_else(|e| panic!("listen on {listen} in namespace {}: {e}", ns.name));
        Relay::serve(listener, Some(ns.clone()), upstream, None, None, None)
    }

    /// Relays what `listener` (in `netns`, none: the host's) accepts to `upstream`; see
    /// [`Relay::start_with`].
    fn serve(
        listener: TcpListener,
        netns: Option<Netns>,
        upstream: SocketAddr,
        cut_after: Option<u64>,
        rate: Option<u64>,
        rate_up: Option<u64>,
    ) -> Relay {
        let listen = listener.local_addr().unwrap();
        let port = listen.port();
        let down = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let up2 = up.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let cut_done = Arc::new(AtomicBool::new(false));
        let down_flag = Arc::new(AtomicBool::new(false));
        let (d, s, flag) = (down.clone(), stop.clone(), down_flag.clone());
        // Every connection, so a cut takes down idle pooled ones too.
        let all: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                all.lock().unwrap().push(client.try_clone().unwrap());
                // child -> parent, counted, maybe throttled
                let up = up2.clone();
                std::thread::spawn(move || {
                    pump(c2, s2, &up, rate_up, |_, _| true);
                });
                // parent -> child, counted, maybe cut or throttled
                let (d, cut_done, flag, all) =
                    (d.clone(), cut_done.clone(), flag.clone(), all.clone());
                std::thread::spawn(move || {
                    let (from, to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                    pump(server, client, &d, rate, |sent, n| {
                        let Some(limit) = cut_after else { return true };
                        if sent + n as u64 <= limit || cut_done.swap(true, Ordering::SeqCst) {
                            return true;
                        }
                        flag.store(true, Ordering::SeqCst);
                        for c in all.lock().unwrap().drain(..) {
                            let _ = c.shutdown(Shutdown::Both);
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        false
                    });
                });
            }
        });
        Relay {
            port,
            down,
            up,
            down_flag,
            stop,
            listen,
            netns,
        }
    }

    /// `http://127.0.0.1:PORT`: a relay on the host's loopback ([`Relay::start`]).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, counting into `counter` and keeping under `rate` bytes per second;
/// `go_on(sent, n)` is asked before each write of `n` bytes and ends the copy when false.
/// Shuts `to` for writing at the end, as the peer would.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: &AtomicU64,
    rate: Option<u64>,
    mut go_on: impl FnMut(u64, usize) -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    let start = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !go_on(sent, n) {
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A connection wakes the accept loop, from where the listener is.
        let listen = self.listen;
        let wake = move || drop(TcpStream::connect(listen));
        match &self.netns {
            // No panic in a drop (while panicking it would abort): no namespace, no loop to wake.
            Some(ns) => drop(ns.in_thread(wake)),
            None => wake(),
        }
    }
}
