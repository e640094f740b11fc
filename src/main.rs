//! `connected-registry`: one binary for both IoT Edge modules of a nested-edge layer.
//!
//! Each subcommand wires the workspace's library crates together; the crates themselves
//! know nothing of the command line.

#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "connected-registry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI Distribution API (`/v2`) from the local store.
    Serve(cmd::serve::Args),
    /// Run the TLS API proxy that routes child devices to the local registry or the parent.
    Proxy(cmd::proxy::Args),
    /// Synchronize repositories with the parent registry.
    Sync(cmd::sync::Args),
    /// Collect garbage in a data directory no registry has open.
    Gc(cmd::gc::Args),
    /// Create, issue, inspect and diagnose certificates for the edge CA chain.
    Certs(cmd::certs::Args),
    /// Check or render IoT Edge deployment manifests.
    Manifest(cmd::manifest::Args),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(args).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
            Command::Sync(args) => cmd::sync::run(args).await,
            Command::Gc(args) => cmd::gc::run(args).await,
            Command::Certs(args) => cmd::certs::run(args).await,
            Command::Manifest(args) => cmd::manifest::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
