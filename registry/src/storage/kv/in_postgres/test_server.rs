//! A real PostgreSQL server for tests (the storage unit tests and the end-to-end tests), from
//! Debian's `postgresql` package: `initdb` into a fresh directory, `postgres` on a free
//! loopback port with its unix socket in that directory, password (SCRAM) authentication over
//! TCP. The server refuses to run as root, so under root it runs as the `postgres` user.
//! [`TestServer::start_with_tls`] turns TLS on (`ssl = on`) with a certificate the test made.
//!
//! The server is started by a small shell script that stops it (and removes its directory) as
//! soon as its standard input closes: when the [`TestServer`] is dropped, and also when the
//! test process dies however it dies, so no server outlives its test run.
//!
//! Tuned for tests, not for keeping data: no fsync. Missing binaries fail the test with what to
//! install; nothing is skipped silently.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::test_ports::free_port;

/// The superuser the tests connect as.
pub const USER: &str = "registry";
/// Its password (a test server on loopback; what redaction must hide).
pub const PASSWORD: &str = "test-secret-7d1c";

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running test server; stopped, and its directory removed, when dropped.
pub struct TestServer {
    port: u16,
    dir: PathBuf,
    /// Closing it stops the server (see the module doc).
    stdin: Option<ChildStdin>,
    supervisor: Child,
    databases: AtomicU64,
}

/// The directory of `initdb`, `postgres` and `pg_isready`: `$POSTGRES_BIN`, or the newest
/// version under `/usr/lib/postgresql/`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: the PostgreSQL \
             tests need a real server: install it (apt-get install postgresql; test.sh does), \
             or point POSTGRES_BIN at a directory holding initdb, postgres and pg_isready"
        ),
    }
}

/// Runs `command` as the `postgres` user when this process is root (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the server when its standard input closes, then removes the directory.
const SUPERVISE: &str = r#"
bin="$1"; dir="$2"; port="$3"; shift 3
"$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "$@" \
  >"$dir/log" 2>&1 &
pid=$!
cat >/dev/null
kill -QUIT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$dir"
"#;

impl TestServer {
    /// Starts a server of its own (about a second: `initdb` and start), without TLS.
    pub fn start() -> TestServer {
        TestServer::start_with(None)
    }

    /// Starts a server of its own with TLS on (`ssl = on`; plain connections are still
    /// accepted, as the default `pg_hba.conf` lines are `host`, not `hostssl`): it presents the
    /// certificate chain `chain` (leaf first, PEM) with the private key `key`.
    pub fn start_with_tls(chain: &Path, key: &Path) -> TestServer {
        TestServer::start_with(Some((chain, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> TestServer {
        for _ in 0..5 {
            if let Some(server) = TestServer::try_start(tls) {
                return server;
            }
        }
        panic!("the PostgreSQL test server found no free port in 5 tries");
    }

    /// A server, or `None` when another process took its port first.
    fn try_start(tls: Option<(&Path, &Path)>) -> Option<TestServer> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "registry-pg-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test server's directory");
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if root {
            run(
                Command::new("chown").args(["postgres:postgres"]).arg(&dir),
                "hand the test server's directory to the postgres user",
            );
        }
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        run(
            as_server_user(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-U", USER, "-E", "UTF8", "--no-sync", "--no-instructions"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let mut settings = Vec::new();
        if let Some((chain, key)) = tls {
            // The server reads them as its own user, and refuses a key others can read.
            let (cert_copy, key_copy) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::copy(chain, &cert_copy).expect("copy the test server's certificate");
            std::fs::copy(key, &key_copy).expect("copy the test server's key");
            std::fs::set_permissions(&key_copy, std::fs::Permissions::from_mode(0o600))
                .expect("make the test server's key private");
            if root {
                run(
                    Command::new("chown")
                        .args(["postgres:postgres"])
                        .arg(&cert_copy)
                        .arg(&key_copy),
                    "hand the test server's certificate and key to the postgres user",
                );
            }
            settings = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", cert_copy.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", key_copy.display()),
            ];
        }
        let port = free_port();
        let mut supervisor = as_server_user(Path::new("/bin/sh"))
            .args(["-c", SUPERVISE, "supervise"])
            .arg(&bin)
            .arg(&dir)
            .arg(port.to_string())
            .args(&settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL test server");
        let stdin = supervisor.stdin.take();
        let server = TestServer {
            port,
            dir,
            stdin,
            supervisor,
            databases: AtomicU64::new(0),
        };
        // Not ready: the port was taken meanwhile (dropping it removes its directory).
        server.wait_ready(&bin).then_some(server)
    }

    /// One server for the whole test process (each test takes a database of its own).
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<TestServer> = OnceLock::new();
        SHARED.get_or_init(TestServer::start)
    }

    /// Whether it accepts connections before the timeout (false: it exited, e.g. on a port
    /// taken meanwhile).
    fn wait_ready(&self, bin: &Path) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            if log.contains("Address already in use") {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        panic!("the PostgreSQL test server did not accept connections within {START_TIMEOUT:?}:\n{log}");
    }

    /// The URL of database `db` on this server, with the right password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a database of its own for a test; returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "registry_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs SQL as the superuser in database `db` with `psql`, over the unix socket; returns
    /// what it printed (unaligned, tuples only).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.supervisor.wait();
    }
}
