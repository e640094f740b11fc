//! Helpers shared by the end-to-end tests: run the real binary and real peers on loopback.
//!
//! Each test file does `mod common;` and uses what it needs, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod access;
pub mod api;
pub mod azurite;
pub mod checks;
pub mod containerd;
pub mod distribution;
pub mod docker;
pub mod netns;
pub mod oci;
pub mod postgres;
pub mod proxy;
pub mod relay;
pub mod replicas;
pub mod skopeo;
pub mod static_build;
pub mod sync;
pub mod target;
pub mod tls;
pub mod tmpfs;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `connected-registry` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_connected-registry"))
}

/// A loopback port free a moment ago and never handed out before in this test process, from
/// the one list the registry's test helpers (Azurite, the PostgreSQL test server) take theirs
/// from too.
pub use registry::test_ports::free_port;

/// Waits until `child` accepts TCP connections on `addr` and holds them, or panics after
/// `timeout` or when `child` exits first.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            if is_held(&stream, addr) {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process exited before listening on {addr}: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listened on {addr} within {timeout:?}");
}

/// Waits until something answers on `addr` or `child` exits (an armed crash point fired),
/// whichever comes first; panics only after `timeout`.
fn open_or_exited(addr: SocketAddr, timeout: Duration, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let answered = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_ok_and(|s| s.local_addr().ok() != Some(addr));
        if answered || matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listened on {addr} within {timeout:?}, and the process still runs");
}

/// Whether a connection that `connect()` says succeeded has a server behind it that keeps it.
/// Two impostors answer a port whose server is not listening yet: the connection to itself (on
/// loopback, connect() may pick `addr`'s own port as its source port: TCP simultaneous open),
/// and a listener that exists for an instant (a test in another thread asking the kernel for a
/// free port may be handed this one while its server has bound it but not yet listens); that
/// listener closes at once and resets what it had accepted. A server holds an idle connection
/// open for much longer than this waits.
fn is_held(stream: &TcpStream, addr: SocketAddr) -> bool {
    if stream.local_addr().ok() == Some(addr) {
        return false;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(30)));
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut &*stream, &mut byte) {
        // A server that speaks first (none of ours do) is a server too.
        Ok(n) => n > 0,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Calls `f` every `step` until it returns `Some`, for at most about `limit`; returns what it
/// returned, or `None` if the time ran out. For waiting on something another process does.
pub fn poll<T>(limit: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// Whether `cond` became true within about `limit`, checked every `step` (see [`poll`]).
pub fn wait_until(limit: Duration, step: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(limit, step, || cond().then_some(())).is_some()
}

/// `curl` downloading `url` into `out` at most `rate` bytes a second (`4M`): a slow client,
/// for a test that does something while a download is in flight. Trusts `cacert`; gives up
/// after 120 s; the caller spawns it.
pub fn slow_curl(cacert: &Path, url: &str, out: &Path, rate: &str) -> Command {
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "--fail",
        "--max-time",
        "120",
        "--limit-rate",
        rate,
        "--cacert",
    ])
    .arg(cacert)
    .arg("-o")
    .arg(out)
    .arg(url);
    curl
}

/// Starts `command` with no stdin and its stdout and stderr both to the file `log` (made anew).
pub fn spawn_logged(command: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).spawn()
}

/// A child process that is killed when the test ends, whatever the outcome.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where stderr goes, to print when a test fails.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args...` with stdout/stderr to `log` and waits until it listens on `addr`.
    pub fn start(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        addr: SocketAddr,
        log: PathBuf,
    ) -> Proc {
        let mut child = spawn_logged(
            Command::new(program).args(args).envs(envs.iter().copied()),
            &log,
        )
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        // A crash point armed for the start may fire before the port is open, or just after:
        // then the test sees the process gone (the torture tests count that as a hit).
        if envs.iter().any(|(k, _)| *k == util::crash_point::ENV) {
            open_or_exited(addr, Duration::from_secs(20), &mut child);
        } else {
            wait_for_port(addr, Duration::from_secs(20), &mut child);
        }
        Proc { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as `docker stop` and `iotedge restart` do.
    pub fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.child.id());
    }

    /// The exit status once the process has ended by itself, waiting at most `limit`; panics
    /// with its log if it still runs then.
    #[track_caller]
    pub fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        poll(limit, Duration::from_millis(20), || {
            child.try_wait().expect("wait for the process")
        })
        .unwrap_or_else(|| panic!("still running after {limit:?}; log:\n{}", self.log_text()))
    }

    /// Kills the process at once (SIGKILL), as a power loss would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    /// Kills the process; a failing test also says whether it still ran, so that a server
    /// that died (by a signal, say, which leaves nothing in its log) is told from one that
    /// answered wrongly.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.child.try_wait() {
                Ok(None) => "still running".to_string(),
                Ok(Some(status)) => format!("had exited: {status}"),
                Err(e) => format!("unknown: {e}"),
            };
            eprintln!(
                "--- process {} (log {}) {state} when the test failed",
                self.child.id(),
                self.log.display()
            );
        }
        self.kill();
    }
}

/// Our registry (`connected-registry serve`) on a fresh loopback port with its data in `data`.
pub fn start_registry(data: &Path, extra_args: &[&str]) -> Proc {
    start_registry_on(data, free_port(), extra_args)
}

/// [`start_registry`] on a given port (to start it again where a child expects its parent).
pub fn start_registry_on(data: &Path, port: u16, extra_args: &[&str]) -> Proc {
    serve_with(data, port, extra_args, &[], data.with_extension("log"))
}

/// [`start_registry_on`] with environment variables `envs` and the log at `log` (a test whose
/// data directory sits on a small filesystem keeps its log elsewhere).
pub fn serve_with(
    data: &Path,
    port: u16,
    extra_args: &[&str],
    envs: &[(&str, &str)],
    log: PathBuf,
) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let args = serve_args(data, &listen, extra_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = Proc::start(&bin(), &args, envs, listen.parse().unwrap(), log);
    wait_for_http(proc.addr, Duration::from_secs(20), &mut proc.child);
    proc
}

/// Waits until `child` answers HTTP on `addr`: the proof that the port is served by it, which
/// an open port alone is not (see [`is_held`]). What it sends is not a request (the HTTP
/// server itself answers 400), so the probe leaves no access-log line and no count in the
/// metrics that tests read.
pub fn wait_for_http(addr: SocketAddr, timeout: Duration, child: &mut Child) {
    use std::io::{Read, Write};
    let request = b"\0\r\n\r\n";
    let answered = poll(timeout, Duration::from_millis(20), || {
        // It answered the port (see `wait_for_port`) and exited since: its test sees that.
        if let Ok(Some(_)) = child.try_wait() {
            return Some(());
        }
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(request).ok()?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).ok()?;
        (&head == b"HTTP/").then_some(())
    });
    assert!(
        answered.is_some(),
        "nothing answered HTTP on {addr} within {timeout:?}"
    );
}

/// `serve --listen LISTEN --data DATA EXTRA...`, open (`--auth none`) unless `extra_args` say
/// how to control access.
pub fn serve_args(data: &Path, listen: &str, extra_args: &[&str]) -> Vec<String> {
    let data_s = data.to_str().expect("utf-8 temp path");
    let mut args = vec!["serve", "--listen", listen, "--data", data_s];
    args.extend_from_slice(extra_args);
    // Tests about access control say how; every other test gets an open registry.
    if !extra_args.iter().any(|a| a.starts_with("--auth")) {
        args.extend_from_slice(&["--auth", "none"]);
    }
    args.into_iter().map(String::from).collect()
}

/// Starts `serve` like [`serve_with`] for a start that is expected to stop by itself before it
/// listens (an armed crash point on its way up): its exit status once it exits, or `None` if it
/// still ran after `limit` (then it is killed).
pub fn serve_until_exit(
    data: &Path,
    extra_args: &[&str],
    envs: &[(&str, &str)],
    log: PathBuf,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = spawn_logged(
        Command::new(bin())
            .args(serve_args(data, &listen, extra_args))
            .envs(envs.iter().copied()),
        &log,
    )
    .expect("spawn connected-registry serve");
    let exited = poll(limit, Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    });
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// Our registry as one module: `serve --proxy-listen 127.0.0.1:TLS_PORT` and no `--listen`,
/// so the registry has no plain listener and is reached only through the proxy in the same
/// process; waits for the TLS port. As [`serve_with`], `--auth none` unless `extra_args` say.
pub fn serve_one_module(
    data: &Path,
    tls_port: u16,
    extra_args: &[&str],
    envs: &[(&str, &str)],
    log: PathBuf,
) -> Proc {
    let listen = format!("127.0.0.1:{tls_port}");
    let data_s = data.to_str().expect("utf-8 temp path");
    let mut args = vec!["serve", "--proxy-listen", &listen, "--data", data_s];
    args.extend_from_slice(extra_args);
    if !extra_args.iter().any(|a| a.starts_with("--auth")) {
        args.extend_from_slice(&["--auth", "none"]);
    }
    Proc::start(&bin(), &args, envs, listen.parse().unwrap(), log)
}

/// Runs `connected-registry ARGS...` to completion: (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run connected-registry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli`] that must succeed: its stdout, or a panic with both outputs.
#[track_caller]
pub fn cli_ok(args: &[&str]) -> String {
    let (ok, out, err) = cli(args);
    assert!(
        ok,
        "connected-registry {} failed:\n{out}\n{err}",
        args.join(" ")
    );
    out
}

/// Runs a command to completion and returns stdout; panics with stderr if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} (is it installed? ./test.sh installs it)"));
    if !out.status.success() {
        panic!(
            "{program} {} failed: {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -sS ARGS...` (60 s at most); returns (HTTP status of the last response, body,
/// response headers). Panics when no HTTP response came.
pub fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D", "-", "-o", "/dev/stderr"])
        .args(args)
        .output()
        .expect("run curl (./test.sh installs it)");
    let headers = String::from_utf8_lossy(&out.stdout).into_owned();
    let body = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = headers
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?} got no HTTP response: {body}"));
    (status, body, headers)
}
