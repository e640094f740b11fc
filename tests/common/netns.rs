//! Network namespaces for tests that build a real layered network (cloud, top layer, lower
//! layer): each layer its own namespace, joined by veth pairs, so a lower layer whose only route
//! is to the layer above cannot reach the cloud even by mistake. Needs root and iproute2 (`ip`,
//! installed by ./test.sh) and util-linux's `nsenter`.
//!
//! Everything is created inside the namespaces (both ends of each veth pair too), never on the
//! host's interfaces or routes, and deleted by [`Network`]'s `Drop` even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{poll, Proc};

/// A namespace made by [`Network::namespace`]: its name under `/var/run/netns`, and its own
/// hosts file (`/etc/netns/NAME/hosts`, where `ip netns exec` looks for it too), which every
/// command run in it reads as `/etc/hosts`.
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
    pub hosts: PathBuf,
}

impl Netns {
    /// `--net=/var/run/netns/NAME`: the `nsenter` argument that enters only this namespace's
    /// network (`ip netns exec` also remounts `/sys`, after which dockerd cannot find its
    /// cgroups: "Devices cgroup isn't mounted").
    pub fn nsenter_arg(&self) -> String {
        format!("--net=/var/run/netns/{}", self.name)
    }

    /// `program args...` run in this namespace: in a mount namespace of its own where this
    /// namespace's hosts file is `/etc/hosts` (so names resolve as the layer's own network
    /// has them, dockerd's included), then `nsenter` into the network namespace alone. Each
    /// step execs the next, so the process is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        const ENTER: &str = r#"mount --bind "$1" /etc/hosts || exit 125; net="$2"; shift 2; exec nsenter "$net" "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            ENTER,
            "sh",
        ])
        .arg(&self.hosts)
        .arg(self.nsenter_arg())
        .arg(program);
        cmd
    }

    /// Runs `f` on a thread of the test process that has entered this namespace's network (a
    /// thread's network namespace is its own), and returns what it returns; an error when the
    /// thread cannot enter it (gone, or not root). Sockets made there stay in this namespace
    /// while any thread uses them: a listener bound here and served from the test's other
    /// threads is the one way to join a namespace to the host's loopback
    /// ([`super::relay::Relay::into_namespace`]).
    pub fn in_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let context = |what: &str, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {path} (root): {e}"))
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let ns = std::fs::File::open(&path).map_err(|e| context("open", e))?;
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&ns),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| context("setns into", e.into()))?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `program args...` in this namespace to completion.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run nsenter {program}: {e} (util-linux's nsenter)"))
    }

    /// [`Netns::output`], panicking with stderr when it fails; returns stdout.
    #[track_caller]
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "{program} {} in namespace {} failed: {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program args...` in this namespace with stdout/stderr to `log`, and waits until
    /// `ready_url` answers HTTP from inside the namespace (curl, `-k`: readiness only, not
    /// trust). The process (nsenter execs it, so the pid is the program's) is killed when the
    /// returned [`Proc`] is dropped.
    pub fn spawn(
        &self,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        ready_url: &str,
        log: PathBuf,
    ) -> Proc {
        let child = super::spawn_logged(
            self.command(program).args(args).envs(envs.iter().copied()),
            &log,
        )
        .unwrap_or_else(|e| panic!("spawn {} in {}: {e}", program.display(), self.name));
        let addr = host_port_of(ready_url);
        let mut proc = Proc { child, addr, log };
        self.wait_for_http(ready_url, &mut proc);
        proc
    }

    /// Waits (at most 30 s) until something answers HTTP at `url` as seen from this namespace.
    #[track_caller]
    pub fn wait_for_http(&self, url: &str, proc: &mut Proc) {
        let answered = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "process exited before it answered at {url}: {status}; log:\n{}",
                    proc.log_text()
                );
            }
            let code = self.http_code(url);
            (code != "000").then_some(())
        });
        assert!(
            answered.is_some(),
            "nothing answered at {url} in namespace {} within 30 s; log:\n{}",
            self.name,
            proc.log_text()
        );
    }

    /// The HTTP status curl gets for `url` from this namespace (`000`: no answer).
    pub fn http_code(&self, url: &str) -> String {
        let out = self.output(
            "curl",
            &[
                "-sk",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// `HOST:PORT` of an `http(s)://HOST:PORT/...` URL, as a socket address (the namespace's, not
/// reachable from the test process: for messages only; a host name, which only the
/// namespace resolves, stands as 0.0.0.0).
fn host_port_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.parse().unwrap_or_else(|_| {
        let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        std::net::SocketAddr::from(([0, 0, 0, 0], port.unwrap_or(0)))
    })
}

/// The namespaces (and so their veth pairs) and global files of one test; all deleted on drop.
pub struct Network {
    /// Unique per test: the process id and a counter.
    prefix: String,
    namespaces: Vec<Netns>,
    /// Files and directories outside the test's temp dir (e.g. `/etc/docker/certs.d/HOST:PORT`).
    global_paths: Vec<PathBuf>,
    /// The third octet of this network's addresses in 10.213.0.0/16.
    subnet: u8,
    links: u8,
}

impl Network {
    /// A new, empty network whose names and addresses no other test of this process uses.
    pub fn new() -> Network {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            Path::new("/usr/sbin/ip").exists() || Path::new("/usr/bin/ip").exists(),
            "ip is missing: ./test.sh installs Debian's iproute2"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Network {
            prefix: format!("crt{pid}x{n}"),
            namespaces: Vec::new(),
            global_paths: Vec::new(),
            subnet: ((pid.wrapping_mul(7) + n * 53) % 250) as u8,
            links: 0,
        }
    }

    /// A new namespace `PREFIX-ROLE` with its loopback up, and a hosts file that knows only
    /// `localhost` (see [`Network::name_host`]).
    pub fn namespace(&mut self, role: &str) -> Netns {
        let name = format!("{}-{role}", self.prefix);
        let dir = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NAME (root)");
        self.global_paths.push(dir.clone());
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("write the namespace's hosts file");
        let ns = Netns { name, hosts };
        ip(&["netns", "add", &ns.name]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Joins `upper` and `lower` with a veth pair on a /30 of their own; returns (upper's
    /// address, lower's address). Each side gets only the link's own route (the kernel adds
    /// it), and namespaces do not forward: a namespace reaches only its direct neighbours.
    pub fn link(&mut self, upper: &Netns, lower: &Netns) -> (String, String) {
        let base = self.links * 4;
        assert!(base < 252, "at most 63 links per network");
        self.links += 1;
        let up_if = format!("down{}", self.links);
        let low_if = format!("up{}", self.links);
        ip(&[
            "link",
            "add",
            &up_if,
            "netns",
            &upper.name,
            "type",
            "veth",
            "peer",
            "name",
            &low_if,
            "netns",
            &lower.name,
        ]);
        let addr = |host: u8| format!("10.213.{}.{}", self.subnet, base + host);
        let (up_addr, low_addr) = (addr(1), addr(2));
        for (ns, ifname, a) in [(upper, &up_if, &up_addr), (lower, &low_if, &low_addr)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/30"),
                "dev",
                ifname,
            ]);
            ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        (up_addr, low_addr)
    }

    /// Lets `ns` resolve `hostname` to `address` (a line in its own hosts file).
    pub fn name_host(&self, ns: &Netns, hostname: &str, address: &str) {
        use std::io::Write;
        let mut hosts = std::fs::OpenOptions::new()
            .append(true)
            .open(&ns.hosts)
            .expect("open the namespace's hosts file");
        writeln!(hosts, "{address} {hostname}").expect("write the namespace's hosts file");
    }

    /// Remembers a path outside the test's temp dir to delete with the network.
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.global_paths.push(path);
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Drop for Network {
    /// Deletes the namespaces (the kernel deletes their veth pairs with them) and the global
    /// files. Processes still inside a namespace keep it alive until they exit; the test's
    /// [`Proc`]s are dropped (killed) before the network, as they are declared after it.
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        }
        for path in self.global_paths.drain(..) {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

/// `ip ARGS...`, panicking with its stderr when it fails.
#[track_caller]
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (./test.sh installs iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed (this test needs root): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Our registry (`connected-registry serve`) in namespace `ns`, plain HTTP on `listen` (an
/// address of that namespace; its loopback when only its proxy should be reached), data in
/// `data`, log beside it; open (`--auth none`) unless `extra_args` say how to control access,
/// as [`super::serve_with`]. Waits until `ready_url` answers from inside the namespace.
pub fn serve_in(
    ns: &Netns,
    data: &Path,
    listen: &str,
    extra_args: &[&str],
    envs: &[(&str, &str)],
    ready_url: &str,
) -> Proc {
    let args = super::serve_args(data, listen, extra_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.spawn(
        &super::bin(),
        &args,
        envs,
        ready_url,
        data.with_extension("log"),
    )
}
