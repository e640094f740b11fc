//! `connected-registry`: one binary for both IoT Edge modules of a nested-edge layer.
//!
//! Each subcommand wires the workspace's library crates together; the crates themselves
//! know nothing of the command line.

#![forbid(unsafe_code)]

mod cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "connected-registry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format: `text` (a line for people) or `json` (one JSON object per line, for log
    /// collectors: timestamp, level, target and fields, the message among them).
    #[arg(
        long,
        global = true,
        env = "CONNECTED_REGISTRY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI Distribution API (`/v2`) from the local store.
    Serve(Box<cmd::serve::Args>),
    /// Run the TLS API proxy that routes child devices to the local registry or the parent.
    Proxy(cmd::proxy::Args),
    /// Synchronize repositories with the parent registry.
    Sync(cmd::sync::Args),
    /// Collect garbage in a data directory no registry has open.
    Gc(cmd::gc::Args),
    /// Hash every blob and manifest file, quarantine damaged ones, and with --repair fetch
    /// them again from the parent (the registry must not be running on the directory).
    Scrub(cmd::scrub::Args),
    /// Rebuild a lost metadata database (meta.redb) from the blob files.
    Recover(cmd::recover::Args),
    /// Create, issue, inspect and diagnose certificates for the edge CA chain.
    Certs(cmd::certs::Args),
    /// Check or render IoT Edge deployment manifests.
    Manifest(cmd::manifest::Args),
    /// Build the module's OCI image from a static build of this binary: export it to a file
    /// (`docker load`, `oci-archive:`) or push it to a registry.
    Image(Box<cmd::image::Args>),
    /// Manage scope maps: repositories and what tokens on them may do (as `az acr scope-map`).
    ScopeMap(cmd::access::ScopeMapArgs),
    /// Manage tokens and their passwords (as `az acr token`).
    Token(cmd::access::TokenArgs),
    /// Rotate the key that signs access tokens.
    SigningKey(cmd::access::SigningKeyArgs),
    /// Child registries defined here: their settings, sync token and connection string.
    Child(cmd::child::Args),
    /// This registry and, with --tree, every registry beneath it: state, report age, lag, errors.
    Status(cmd::status::Args),
    /// Carry images to a site no network reaches: export them to one file (an OCI layout in a
    /// tar), import it there, and say what a site holds for the next, smaller export.
    Bundle(cmd::bundle::Args),
    /// Start a cloud, a top and a lower layer on this machine (network namespaces as root,
    /// else loopback ports), print how to pull from each, and stop them on Ctrl-C.
    Demo(cmd::demo::Args),
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    // The fmt subscriber stops at INFO unless told otherwise; `filter` decides instead.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_writer(std::io::stderr);
    match format {
        // No colour codes in JSON: a collector reads it, not a terminal.
        LogFormat::Json => builder.json().with_ansi(false).finish().with(filter).init(),
        LogFormat::Text => builder
            .with_ansi(log_in_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .finish()
            .with(filter)
            .init(),
    }
}

/// The log filter from `RUST_LOG`: `LEVEL` and `TARGET=LEVEL` directives, comma separated
/// (`info,access=off`), a target matching itself and its modules; `info` when unset or not
/// understood. `Targets`, not `EnvFilter`: the span and field directives `EnvFilter` adds need a
/// regex engine (~700 KiB of the binary, issue 16) and no setting of ours uses them.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::filter::Targets {
    let info = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    match rust_log.map(str::trim) {
        None | Some("") => info(),
        Some(directives) => directives.parse().unwrap_or_else(|err| {
            eprintln!("warning: RUST_LOG={directives:?} is not a log filter ({err}); logging at info. Write LEVEL or TARGET=LEVEL, comma separated, e.g. info,access=off");
            info()
        }),
    }
}

/// Colour codes help a person at a terminal and garble everything else (log files,
/// `docker logs`, `journalctl`), so logs are coloured only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn log_in_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The error and its causes, each said once. Our error types, like most, put their cause in
/// their own message (so a log line that shows only the message is complete) and also return
/// it as `source()`; printing the chain naively then repeats it ("...: Address already in use
/// (os error 98): Address already in use (os error 98)"). A cause whose text the message
/// already holds is left out.
fn error_report(err: &anyhow::Error) -> String {
    let mut report = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if report.contains(&text) {
            continue;
        }
        if !report.is_empty() {
            report.push_str(": ");
        }
        report.push_str(&text);
    }
    report
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
            Command::Serve(args) => cmd::serve::run(*args).await,
            Command::Proxy(args) => cmd::proxy::run(args).await,
            Command::Sync(args) => cmd::sync::run(args).await,
            Command::Gc(args) => cmd::gc::run(args).await,
            Command::Scrub(args) => cmd::scrub::run(args).await,
            Command::Recover(args) => cmd::recover::run(args).await,
            Command::Certs(args) => cmd::certs::run(args).await,
            Command::Manifest(args) => cmd::manifest::run(args).await,
            Command::Image(args) => cmd::image::run(*args).await,
            Command::ScopeMap(args) => cmd::access::run_scope_map(args).await,
            Command::Token(args) => cmd::access::run_token(args).await,
            Command::SigningKey(args) => cmd::access::run_signing_key(args).await,
            Command::Child(args) => cmd::child::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Bundle(args) => cmd::bundle::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_report(&err));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target() {
        use tracing::Level;
        let f = log_filter(Some("info,access=off,sync=debug"));
        assert!(f.would_enable("registry::api", &Level::INFO));
        assert!(!f.would_enable("registry::api", &Level::DEBUG));
        assert!(!f.would_enable("access", &Level::ERROR));
        // A target covers its modules.
        assert!(f.would_enable("sync::client", &Level::DEBUG));
        for unset_or_bad in [None, Some(""), Some("info,=nonsense=")] {
            let f = log_filter(unset_or_bad);
            assert!(f.would_enable("access", &Level::INFO), "{unset_or_bad:?}");
            assert!(!f.would_enable("access", &Level::DEBUG), "{unset_or_bad:?}");
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        /// Says its cause and returns it as its source, as `#[error("...: {source}")]` does.
        #[derive(Debug)]
        struct Bind(std::io::Error);
        impl std::fmt::Display for Bind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot listen on 127.0.0.1:1: {}", self.0)
            }
        }
        impl std::error::Error for Bind {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let os = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let err = anyhow::Error::new(Bind(os)).context("starting the proxy");
        let report = error_report(&err);
        let cause = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
        assert_eq!(report.matches(&cause).count(), 1, "{report}");
        assert!(
            report.starts_with("starting the proxy: cannot listen"),
            "{report}"
        );
        // Causes not in the message are all there, in order.
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_report(&err), "outer: middle: inner");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_in_colour(true, None));
        assert!(log_in_colour(true, Some("".into())));
        assert!(!log_in_colour(true, Some("1".into())));
        assert!(!log_in_colour(false, None));
    }
}
