//! `connected-registry demo`: the nested-edge topology on one machine, for a person to try:
//! a cloud (a registry of ours in ReadWrite, seeded with a small image), a top layer (registry
//! and TLS proxy in one process, syncing from the cloud, with the lower layer defined as its
//! child) and a lower layer (registry and TLS proxy configured only by the connection string
//! the top layer printed). As root each layer gets its own network namespace joined by veth
//! pairs, so the lower layer reaches only the top layer; otherwise (or with `--loopback`) they
//! listen on loopback ports. It prints what it starts, waits until the image has come down to
//! the lower layer, prints the commands that pull from each layer, and on Ctrl-C (or SIGTERM)
//! stops the three processes and deletes the namespaces. Data, certificates and logs stay in
//! `--dir`.
//!
//! Each layer is this same binary (`serve`), started as a child process, in a namespace through
//! `nsenter --net` (util-linux) and set up with `ip` (iproute2).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long each layer may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long the seed image may take to come down to the lower layer.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(120);
/// How long a layer may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// Sync pass interval of both edge layers: short, so what a person pushes shows up at once.
const POLL_INTERVAL: &str = "PT2S";

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the layers' data, certificates and logs (created; must be empty or absent).
    #[arg(long, default_value = "connected-registry-demo")]
    dir: PathBuf,
    /// Listen on loopback ports even when running as root (no network namespaces).
    #[arg(long, env = "CONNECTED_REGISTRY_DEMO_LOOPBACK")]
    loopback: bool,
}

/// Where a layer runs and the address others reach it at.
struct Place {
    /// The network namespace (`/var/run/netns/NAME`), or none on loopback.
    netns: Option<String>,
    /// The address the layer's server listens on, as others reach it: `IP:PORT`.
    addr: String,
}

impl Place {
    /// `nsenter --net=... ` to prefix a command run in this layer's namespace, or nothing.
    fn prefix(&self) -> String {
        match &self.netns {
            Some(ns) => format!("nsenter --net=/var/run/netns/{ns} "),
            None => String::new(),
        }
    }

    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/var/run/netns/{ns}")).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }
}

/// What the demo started; stopped and deleted on drop, whatever happened.
#[derive(Default)]
struct Running {
    layers: Vec<(String, Child)>,
    namespaces: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for (name, child) in self.layers.iter_mut().rev() {
            // The shell's kill: asks for a graceful stop without an unsafe libc call.
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -TERM {}", child.id())])
                .status();
            let start = Instant::now();
            let mut stopped = false;
            while start.elapsed() < STOP_LIMIT {
                if let Ok(Some(_)) = child.try_wait() {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
            println!("stopped {name}");
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().map_err(|e| {
        anyhow::anyhow!("cannot find this program's own path to start the layers: {e}")
    })?;
    let dir = prepare_dir(&args.dir)?;
    let namespaces = !args.loopback && is_root() && has_ip();
    let mut running = Running::default();
    let (cloud, top, lower) = if namespaces {
        make_namespaces(&mut running)?
    } else {
        loopback_places()?
    };
    println!(
        "connected-registry demo: three layers {} (data, certificates and logs in {})",
        if namespaces {
            "in network namespaces, the lower one routed only to the top one"
        } else {
            "on loopback ports (run as root without --loopback for network namespaces)"
        },
        dir.display()
    );

    let top_ip = host_of(&top.addr);
    let lower_ip = host_of(&lower.addr);
    let (top_chain, top_key, top_trust) = layer_chain(&exe, &dir, "top", top_ip)?;
    let (lower_chain, lower_key, lower_trust) = layer_chain(&exe, &dir, "lower", lower_ip)?;

    let cloud_data = dir.join("cloud");
    let digest = super::demo_image::seed(&cloud_data).await?;
    let top_data = dir.join("top");
    let created = run_ok(
        Command::new(&exe)
            .args(["child", "create", "lower", "--mode", "ReadWrite"])
            .args([
                "--repository",
                "*",
                "--parent-endpoint",
                &top.addr,
                "--protocol",
                "https",
                "--output",
                "json",
                "--data",
            ])
            .arg(&top_data),
        "define the lower layer at the top layer (child create)",
    )?;
    let created: serde_json::Value = serde_json::from_str(&created)?;
    let connection_string = created["connectionString"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("child create printed no connectionString"))?
        .to_owned();

    let listen_port = |p: &Place| match p.netns {
        Some(_) => format!("0.0.0.0:{}", port_of(&p.addr)),
        None => p.addr.clone(),
    };
    let s = |p: &Path| p.display().to_string();
    let started = Instant::now();
    start_layer(
        &mut running,
        &exe,
        &dir,
        "cloud",
        &cloud,
        &[
            "--listen",
            &cloud.addr,
            "--data",
            &s(&cloud_data),
            "--mode",
            "ReadWrite",
            "--auth",
            "none",
        ],
        &[],
        "our registry, ReadWrite, open to anyone who reaches it",
    )?;
    let parent = format!("http://{}", cloud.addr);
    start_layer(
        &mut running,
        &exe,
        &dir,
        "top",
        &top,
        &[
            "--proxy-listen",
            &listen_port(&top),
            "--proxy-cert",
            &s(&top_chain),
            "--proxy-key",
            &s(&top_key),
            "--data",
            &s(&top_data),
            "--parent",
            &parent,
            "--mode",
            "ReadWrite",
            "--repo",
            "*",
            "--sync-poll-interval",
            POLL_INTERVAL,
            "--auth",
            "tokens",
            "--anonymous-pull",
            "*",
        ],
        &[],
        "registry + TLS proxy, syncs from the cloud; anyone may pull, its child logs in",
    )?;
    start_layer(
        &mut running,
        &exe,
        &dir,
        "lower",
        &lower,
        &[
            "--proxy-listen", &listen_port(&lower), "--proxy-cert", &s(&lower_chain), "--proxy-key", &s(&lower_key),
            "--trust", &s(&top_trust.join("ca.crt")), "--data", &s(&dir.join("lower")),
            "--sync-poll-interval", POLL_INTERVAL, "--auth", "none",
        ],
        &[("ACR_REGISTRY_CONNECTION_STRING", connection_string.as_str())],
        "registry + TLS proxy, configured only by the connection string, syncs from the top layer; open",
    )?;

    let arrived = wait_for_blob(&dir.join("lower"), &digest.to_string(), &mut running)?;
    if arrived {
        println!(
            "{}:{} ({digest}) came down from the cloud to the lower layer, counted from the cloud's start, in {:.1?}",
            super::demo_image::REPOSITORY,
            super::demo_image::TAG,
            started.elapsed()
        );
    } else {
        println!(
            "the image has not reached the lower layer within {ARRIVAL_LIMIT:?}: see {}/lower.log",
            dir.display()
        );
    }

    let image = format!(
        "{}:{}",
        super::demo_image::REPOSITORY,
        super::demo_image::TAG
    );
    println!("pull from each layer:");
    println!(
        "  cloud: {}skopeo inspect --tls-verify=false docker://{}/{image}",
        cloud.prefix(),
        cloud.addr
    );
    println!(
        "  top:   {}skopeo inspect --cert-dir {} docker://{}/{image}",
        top.prefix(),
        top_trust.display(),
        top.addr
    );
    println!(
        "  lower: {}skopeo copy --src-cert-dir {} docker://{}/{image} oci:{}:v1",
        lower.prefix(),
        lower_trust.display(),
        lower.addr,
        dir.join("pulled-from-lower").display()
    );
    if lower.netns.is_none() {
        println!(
            "  lower, with Docker (127.0.0.0/8 needs no CA for docker): docker pull {}/{image}",
            lower.addr
        );
    } else {
        println!(
            "  lower, with Docker: a dockerd started with `{}dockerd ...` and {}/ca.crt copied to /etc/docker/certs.d/{}/ca.crt",
            lower.prefix(),
            lower_trust.display(),
            lower.addr
        );
    }
    println!("push to the lower layer (ReadWrite) and the image goes up to the cloud. Ctrl-C stops the demo.");
    util::shutdown::signal().await;
    println!("stopping...");
    drop(running);
    println!("stopped; data and logs are kept in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Creates `dir` (refusing one that holds anything: a demo never writes over a store) and
/// returns it absolute, so the printed commands work from any directory.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            anyhow::bail!(
                "{} is not empty (a previous demo?): delete it or give another --dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the demo directory {}: {e}", dir.display()))?;
    Ok(std::fs::canonicalize(dir)?)
}

/// Whether this process runs as root (network namespaces need it): the real uid in
/// `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn has_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Three loopback addresses with ports free a moment ago.
fn loopback_places() -> anyhow::Result<(Place, Place, Place)> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(std::net::TcpListener::bind("127.0.0.1:0")?);
    }
    let mut places = listeners.iter().map(|l| {
        l.local_addr().map(|a| Place {
            netns: None,
            addr: a.to_string(),
        })
    });
    let mut next = || places.next().expect("three listeners");
    Ok((next()?, next()?, next()?))
}

/// Namespaces `crdemoPID-{cloud,top,lower}` joined cloud—top and top—lower by veth pairs on
/// /30s of 10.213.N.0/24 (both ends made inside the namespaces: nothing of the host's changes).
fn make_namespaces(running: &mut Running) -> anyhow::Result<(Place, Place, Place)> {
    let pid = std::process::id();
    let subnet = pid % 250;
    let names: Vec<String> = ["cloud", "top", "lower"]
        .iter()
        .map(|role| format!("crdemo{pid}-{role}"))
        .collect();
    for ns in &names {
        ip(&["netns", "add", ns])?;
        running.namespaces.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let links = [(&names[0], &names[1], 0), (&names[1], &names[2], 4)];
    for (i, (upper, lower, base)) in links.into_iter().enumerate() {
        let (up_if, low_if) = (format!("down{i}"), format!("up{i}"));
        ip(&[
            "link", "add", &up_if, "netns", upper, "type", "veth", "peer", "name", &low_if,
            "netns", lower,
        ])?;
        for (ns, ifname, host) in [(upper, &up_if, base + 1), (lower, &low_if, base + 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.213.{subnet}.{host}/30"),
                "dev",
                ifname,
            ])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
    }
    let place = |i: usize, addr: String| Place {
        netns: Some(names[i].clone()),
        addr,
    };
    Ok((
        place(0, format!("10.213.{subnet}.1:5000")),
        place(1, format!("10.213.{subnet}.5:8443")),
        place(2, format!("10.213.{subnet}.6:8443")),
    ))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_ok(
        Command::new("ip").args(args),
        "set up the demo's network namespaces (ip, as root)",
    )
    .map(|_| ())
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, p)| p)
}

/// A chain for one layer made with `certs` (root CA → intermediate → edge CA → server
/// certificate for `LAYER.edge.demo` and `ip`): (full chain, key, a directory holding only the
/// root CA as `ca.crt`, which skopeo's `--cert-dir` and Docker's `certs.d` want).
fn layer_chain(
    exe: &Path,
    dir: &Path,
    layer: &str,
    ip: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let pki = dir.join(format!("{layer}-pki"));
    let tls = dir.join(format!("{layer}-tls"));
    let hostname = format!("{layer}.edge.demo");
    run_ok(
        Command::new(exe)
            .args([
                "certs",
                "new-chain",
                "--name",
                &format!("{layer} layer"),
                "--out",
            ])
            .arg(&pki),
        "make a certificate chain",
    )?;
    run_ok(
        Command::new(exe)
            .args([
                "certs",
                "issue",
                "server",
                "--hostname",
                &hostname,
                "--san",
                ip,
                "--ca",
            ])
            .arg(&pki)
            .arg("--out")
            .arg(&tls),
        "issue a server certificate",
    )?;
    let trust = dir.join(format!("{layer}-trust"));
    std::fs::create_dir_all(&trust)?;
    std::fs::copy(pki.join("root-ca.cert.pem"), trust.join("ca.crt"))?;
    Ok((
        tls.join(format!("{hostname}-full-chain.cert.pem")),
        tls.join(format!("{hostname}.key.pem")),
        trust,
    ))
}

/// Runs `cmd` to completion; its stdout, or an error saying what failed (`what`) and its stderr.
fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot {what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "cannot {what}: {:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `serve SERVE_ARGS...` as layer `name` at `place`, logging to `DIR/NAME.log`, waits
/// until it serves, and prints it.
#[allow(clippy::too_many_arguments)]
fn start_layer(
    running: &mut Running,
    exe: &Path,
    dir: &Path,
    name: &str,
    place: &Place,
    serve_args: &[&str],
    envs: &[(&str, &str)],
    what: &str,
) -> anyhow::Result<()> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let child = place
        .command(exe)
        .arg("serve")
        .args(serve_args)
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the {name} layer: {e}"))?;
    let pid = child.id();
    running.layers.push((name.to_owned(), child));
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("registry serving") {
            break;
        }
        let (_, child) = running.layers.last_mut().expect("just pushed");
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "the {name} layer exited ({status}); its log {}:\n{text}",
                log.display()
            );
        }
        if start.elapsed() > START_LIMIT {
            anyhow::bail!(
                "the {name} layer did not start within {START_LIMIT:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let scheme = if name == "cloud" { "http" } else { "https" };
    let ns = place
        .netns
        .as_deref()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default();
    println!(
        "  {name:<5} pid {pid:<7} {scheme}://{}{ns}: {what} (log {})",
        place.addr,
        log.display()
    );
    Ok(())
}

/// Waits until the blob file of `digest` is in the data directory `data` (a manifest is stored
/// after everything it references: its file means the image is there), reading the directory
/// rather than asking the server, which may be in a namespace this process cannot reach.
/// `false` when [`ARRIVAL_LIMIT`] passed first; an error when a layer exited.
fn wait_for_blob(data: &Path, digest: &str, running: &mut Running) -> anyhow::Result<bool> {
    let hex = digest.trim_start_matches("sha256:");
    let path = data
        .join("blobs/sha256")
        .join(&hex[..2.min(hex.len())])
        .join(hex);
    let start = Instant::now();
    while start.elapsed() < ARRIVAL_LIMIT {
        if path.exists() {
            return Ok(true);
        }
        for (name, child) in &mut running.layers {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("the {name} layer exited ({status}); see its log");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}
