//! `connected-registry certs`: create the edge CA chain, issue server and client
//! certificates, inspect them, and diagnose "unknown CA" before and after deployment.
//!
//! The work is done by the `certs` crate; this module only maps flags to it and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use certs::gen::{
    self, ChainFiles, ChainOptions, ClientOptions, IssuedFiles, KeyType, ServerOptions,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create a root CA, an intermediate CA and an edge CA (PEM, keys 0600) in --out.
    NewChain(NewChainArgs),
    /// Issue a server or client certificate from an edge CA.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Describe the certificates in a PEM file: names, validity, key, fingerprint, chain order.
    Inspect {
        /// A PEM file with one or more certificates.
        file: PathBuf,
    },
    /// Say whether a client trusting --trust accepts --chain (for --hostname), and if not, why.
    /// Exit status: 0 accepted, 1 refused, 2 bad input.
    Verify {
        /// The chain a server presents: its certificate first, then the CAs above it.
        #[arg(long)]
        chain: PathBuf,
        /// The trust bundle the client uses (one or more root CA certificates, PEM).
        #[arg(long)]
        trust: PathBuf,
        /// The name the client connects to (DNS name or IP); without it, names are not checked.
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Connect to a TLS server, fetch the chain it presents and explain whether a client
    /// trusting --trust accepts it. Exit status: 0 accepted, 1 refused, 2 cannot connect.
    Doctor {
        /// https://HOST:PORT of the server (e.g. the parent layer's API proxy).
        url: String,
        /// The trust bundle this layer's clients use.
        #[arg(long)]
        trust: PathBuf,
        /// Check this name instead of the URL's host (when connecting by IP to a named server).
        #[arg(long)]
        hostname: Option<String>,
        /// Time allowed to connect and finish the handshake: a duration (10s, PT10S) or
        /// bare seconds, at least 1 s [default: 10].
        #[arg(long, value_parser = util::duration::parse_or_seconds)]
        timeout_secs: Option<Duration>,
    },
}

#[derive(clap::Args)]
struct NewChainArgs {
    /// Directory for the files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Key type: ecdsa-p256, rsa2048, rsa4096 or ed25519.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_key_type)]
    key_type: KeyType,
    // The help is an attribute, not a doc comment: rustdoc would read `<NAME>` as an HTML tag,
    // and backticks would show in `--help`.
    #[arg(
        long,
        default_value = "Connected Registry",
        help = "Subject prefix: CNs become \"<NAME> Root CA\", \"<NAME> Intermediate CA\", \"<NAME> Edge CA\". \
                Use a distinct name per layer so a diagnosis can say which layer's CA is missing"
    )]
    name: String,
    /// Organization (O=) for every subject.
    #[arg(long)]
    org: Option<String>,
    /// Root CA validity in days.
    #[arg(long, default_value_t = gen::DEFAULT_ROOT_DAYS)]
    root_days: u32,
    /// Intermediate CA validity in days.
    #[arg(long, default_value_t = gen::DEFAULT_INTERMEDIATE_DAYS)]
    intermediate_days: u32,
    /// Edge CA validity in days.
    #[arg(long, default_value_t = gen::DEFAULT_EDGE_CA_DAYS)]
    edge_ca_days: u32,
    /// Replace an existing chain in --out (devices trusting the old root will stop trusting).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Subcommand)]
enum IssueCommand {
    /// A server certificate (serverAuth) whose CN is the hostname in lower case, plus the
    /// full chain file to serve.
    Server {
        #[command(flatten)]
        ca: CaArgs,
        /// The name clients connect to (CN and first SAN).
        #[arg(long)]
        hostname: String,
        /// More DNS names or IP addresses (repeat the flag, or separate with commas).
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = gen::DEFAULT_SERVER_DAYS)]
        days: u32,
        /// Key type: ecdsa-p256, rsa2048, rsa4096 or ed25519.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Directory for the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// File name stem (default: the hostname in lower case).
        #[arg(long)]
        file_name: Option<String>,
        /// Replace an existing key and certificate of that name in --out.
        #[arg(long)]
        force: bool,
    },
    /// A client certificate (clientAuth) for a child device.
    Client {
        #[command(flatten)]
        ca: CaArgs,
        /// The device or module name (the CN).
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = gen::DEFAULT_CLIENT_DAYS)]
        days: u32,
        /// Key type: ecdsa-p256, rsa2048, rsa4096 or ed25519.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Directory for the files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace an existing key and certificate of that name in --out.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
struct CaArgs {
    /// The issuing CA: a directory from `certs new-chain` (uses its edge CA), a path prefix
    /// such as `certs/edge-ca` (PREFIX.cert.pem, PREFIX.key.pem, PREFIX-chain.cert.pem), or
    /// the CA certificate file itself.
    #[arg(long)]
    ca: PathBuf,
    /// The CA's private key, when it is not next to the certificate.
    #[arg(long)]
    ca_key: Option<PathBuf>,
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    s.parse::<KeyType>().map_err(|e| e.to_string())
}

/// Resolves `--ca` to (certificate, key, chain) paths.
fn ca_paths(args: &CaArgs) -> anyhow::Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    let (cert, key, chain) = if args.ca.is_dir() {
        let f = ChainFiles::in_dir(&args.ca);
        (f.edge_ca_cert, f.edge_ca_key, Some(f.edge_ca_chain))
    } else if args.ca.is_file() {
        let s = args.ca.to_string_lossy().to_string();
        let stem = s
            .strip_suffix(".cert.pem")
            .or_else(|| s.strip_suffix(".pem"))
            .or_else(|| s.strip_suffix(".crt"))
            .unwrap_or(&s)
            .to_string();
        (
            args.ca.clone(),
            PathBuf::from(format!("{stem}.key.pem")),
            Some(PathBuf::from(format!("{stem}-chain.cert.pem"))),
        )
    } else {
        let s = args.ca.to_string_lossy();
        let cert = PathBuf::from(format!("{s}.cert.pem"));
        if !cert.exists() {
            anyhow::bail!(
                "--ca {s}: no such directory, file, or {s}.cert.pem; give the directory made by \
                 `certs new-chain` or the edge CA certificate"
            );
        }
        (
            cert,
            PathBuf::from(format!("{s}.key.pem")),
            Some(PathBuf::from(format!("{s}-chain.cert.pem"))),
        )
    };
    let key = args.ca_key.clone().unwrap_or(key);
    Ok((cert, key, chain.filter(|c| c.exists())))
}

fn load_ca(args: &CaArgs) -> anyhow::Result<gen::Ca> {
    let (cert, key, chain) = ca_paths(args)?;
    Ok(gen::Ca::load(&cert, &key, chain.as_deref())?)
}

fn show(label: &str, path: &Path) {
    println!("  {label:<24} {}", path.display());
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything here is blocking file or socket work; keep it off the async workers.
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("internal: the certs task panicked")?
}

fn run_blocking(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::NewChain(a) => {
            let opts = ChainOptions {
                key_type: a.key_type,
                name: a.name,
                organization: a.org,
                root_days: a.root_days,
                intermediate_days: a.intermediate_days,
                edge_ca_days: a.edge_ca_days,
            };
            let f = gen::new_chain(&a.out, &opts, a.force)?;
            println!("Created the edge CA chain ({}):", opts.key_type);
            show("root CA (trust this):", &f.root_ca_cert);
            show("root CA key:", &f.root_ca_key);
            show("intermediate CA:", &f.intermediate_ca_cert);
            show("intermediate CA key:", &f.intermediate_ca_key);
            show("edge CA:", &f.edge_ca_cert);
            show("edge CA key:", &f.edge_ca_key);
            show("edge CA chain:", &f.edge_ca_chain);
            println!(
                "Keep the root CA key offline. Next: connected-registry certs issue server --ca {} --hostname HOST",
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Issue(IssueCommand::Server {
            ca,
            hostname,
            san,
            days,
            key_type,
            out,
            file_name,
            force,
        }) => {
            let stem = file_name.unwrap_or_else(|| hostname.trim().to_ascii_lowercase());
            IssuedFiles::in_dir(&out, &stem).refuse_overwrite(force)?;
            let ca = load_ca(&ca)?;
            let opts = ServerOptions {
                hostname: hostname.clone(),
                sans: san,
                days,
                key_type,
            };
            let issued = gen::issue_server(&ca, &opts)?;
            let f = issued.write(&out, &stem)?;
            println!(
                "Issued a server certificate for {}:",
                hostname.to_ascii_lowercase()
            );
            show("certificate:", &f.cert);
            show("key:", &f.key);
            show("full chain (serve this):", &f.full_chain);
            Ok(ExitCode::SUCCESS)
        }
        Command::Issue(IssueCommand::Client {
            ca,
            name,
            days,
            key_type,
            out,
            force,
        }) => {
            IssuedFiles::in_dir(&out, name.trim()).refuse_overwrite(force)?;
            let ca = load_ca(&ca)?;
            let issued = gen::issue_client(
                &ca,
                &ClientOptions {
                    name: name.clone(),
                    days,
                    key_type,
                },
            )?;
            let f = issued.write(&out, name.trim())?;
            println!("Issued a client certificate for {}:", name.trim());
            show("certificate:", &f.cert);
            show("key:", &f.key);
            show("full chain:", &f.full_chain);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file } => {
            let infos = certs::inspect::inspect_file(&file)?;
            print!("{}", certs::inspect::describe(&infos, time_now()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            chain,
            trust,
            hostname,
        } => {
            let verdict = certs::verify::verify_files(&chain, &trust, hostname.as_deref())?;
            print!("{}", verdict.report());
            Ok(if verdict.accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Doctor {
            url,
            trust,
            hostname,
            timeout_secs,
        } => {
            let diagnosis = certs::doctor::doctor(
                &url,
                &trust,
                hostname.as_deref(),
                timeout_secs
                    .unwrap_or(certs::doctor::DEFAULT_TIMEOUT)
                    .max(Duration::from_secs(1)),
            )?;
            print!("{}", diagnosis.report());
            Ok(if diagnosis.verdict.accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn time_now() -> certs::time::OffsetDateTime {
    certs::time::OffsetDateTime::now_utc()
}
