//! `connected-registry bundle export | import | state`: registry content carried to a site no
//! network reaches, as one file (the `bundle` crate has the format and the work).
//!
//! Each command goes to the registry serving the data directory when one does (`POST /bundle`
//! on its admin socket: redb lets one process at a time hold the store, and the running
//! registry serves what it imports at once), else opens the store itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use registry::{Limits, StorageError, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::admin_socket;

/// How long the CLI waits for a running registry to finish an export or import it asked for:
/// copying tens of gigabytes from a USB disk takes a while.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write the tagged images of the repositories named (with their referrers) to one file:
    /// an OCI image layout in a tar (`skopeo copy oci-archive:FILE:REPO:TAG` reads it).
    Export(ExportArgs),
    /// Store a bundle's content here, every digest verified, tags last; resumes an
    /// interrupted import; works while `serve` runs on the data directory.
    Import(ImportArgs),
    /// Write what this registry holds (blob digests, tags), for the shore's
    /// `bundle export --since-state`.
    State(StateArgs),
}

#[derive(clap::Args)]
struct DataFlag {
    /// Data directory of the registry.
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    data: PathBuf,
    /// Where its blobs are, when no registry runs on it (a running one answers on its socket).
    #[command(flatten)]
    storage: super::storage::StorageFlags,
    /// Where its metadata is, likewise.
    #[command(flatten)]
    metadata: super::metadata::MetadataFlags,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    on: DataFlag,
    /// Repositories to export: names, `*` standing for any run of characters (`library/*`).
    #[arg(long = "repository", required = true, num_args = 1..)]
    repositories: Vec<String>,
    /// A site's `bundle state`: what it holds is left out (a delta bundle).
    #[arg(long)]
    since_state: Option<PathBuf>,
    /// The bundle file to write.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The bundle file (a file, not a pipe: the import seeks past what it has already).
    file: PathBuf,
    #[command(flatten)]
    on: DataFlag,
}

#[derive(clap::Args)]
struct StateArgs {
    #[command(flatten)]
    on: DataFlag,
    /// The state file to write.
    #[arg(short, long)]
    output: PathBuf,
}

/// What the CLI asks of the registry on its admin socket (`POST /bundle`). Paths are absolute:
/// the registry runs elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Export {
        output: PathBuf,
        repositories: Vec<String>,
        since_state: Option<PathBuf>,
    },
    Import {
        file: PathBuf,
    },
    State {
        output: PathBuf,
    },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let absolute = |p: &Path| {
        std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    let (on, request) = match args.command {
        Command::Export(a) => (
            a.on,
            Request::Export {
                output: absolute(&a.output)?,
                repositories: a.repositories,
                since_state: a.since_state.as_deref().map(absolute).transpose()?,
            },
        ),
        Command::Import(a) => (
            a.on,
            Request::Import {
                file: absolute(&a.file)?,
            },
        ),
        Command::State(a) => (
            a.on,
            Request::State {
                output: absolute(&a.output)?,
            },
        ),
    };
    let report = send(&on, request).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Performs `request` in the registry serving `on.data`, or on the store itself when none does.
async fn send(on: &DataFlag, request: Request) -> anyhow::Result<Value> {
    let data = on.data.as_path();
    let backends = on.metadata.backends(&on.storage)?;
    let socket = admin_socket::socket_path(data);
    let body = serde_json::to_vec(&request)?;
    if let Some(answer) =
        admin_socket::ask(&socket, "/bundle", Some(body.clone()), ANSWER_TIMEOUT).await?
    {
        return answer;
    }
    let missing = match request {
        Request::Import { .. } => super::MissingData::Create,
        _ => super::MissingData::Refuse,
    };
    super::check_data_dir_for(data, missing, &backends)?;
    let direct = {
        let data = data.to_owned();
        let request = request.clone();
        tokio::task::spawn_blocking(move || {
            match Store::open_with(&data, Limits::default(), backends) {
                Ok(store) => Ok(perform(&store, &request)),
                Err(err) => Err(err),
            }
        })
        .await?
    };
    match direct {
        Ok(answer) => answer,
        Err(StorageError::InUse(_)) => {
            // A server may have opened the store just now and be about to bind its socket.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match admin_socket::ask(&socket, "/bundle", Some(body), ANSWER_TIMEOUT).await? {
                Some(answer) => answer,
                None => anyhow::bail!(
                    "a running registry holds {} but its admin socket {} does not answer: it may be starting or stopping (try again), or be a version without bundles (stop it, run this command, start it again)",
                    data.display(),
                    socket.display()
                ),
            }
        }
        Err(err) => {
            Err(anyhow::Error::new(err).context(super::metadata::cannot_open(data, &on.metadata)))
        }
    }
}

/// Does what `request` asks on `store`; the answer is the command's report.
pub fn perform(store: &Store, request: &Request) -> anyhow::Result<Value> {
    match request {
        Request::Export {
            output,
            repositories,
            since_state,
        } => {
            let since = since_state
                .as_deref()
                .map(|path| {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read the state {}", path.display()))?;
                    anyhow::Ok(bundle::State::parse(&bytes, &path.display().to_string())?)
                })
                .transpose()?;
            let options = bundle::ExportOptions {
                patterns: repositories.clone(),
                since,
            };
            let report = bundle::export(store, &options, output)?;
            tracing::info!(file = %output.display(), bytes = report.file_bytes, "bundle exported");
            Ok(serde_json::to_value(report)?)
        }
        Request::Import { file } => {
            let report = bundle::import(store, file)?;
            tracing::info!(file = %file.display(), tags = report.tags_set, blobs = report.blobs_written, "bundle imported");
            Ok(serde_json::to_value(report)?)
        }
        Request::State { output } => {
            let state = bundle::state(store)?;
            let bytes = serde_json::to_vec(&state)?;
            util::atomic_file::write(output, &bytes, None)?;
            Ok(json!({
                "output": output,
                "blobs": state.blobs.len(),
                "repositories": state.repositories.len(),
                "bytes": bytes.len(),
            }))
        }
    }
}

/// `POST /bundle` on the admin socket: the running registry performs the command on its own
/// store (the socket is the owner's only, and names files the owner may read and write).
pub fn socket_routes(store: Store) -> Router {
    Router::new()
        .route("/bundle", post(handle))
        .with_state(store)
}

async fn handle(State(store): State<Store>, Json(request): Json<Request>) -> Response {
    let answer = tokio::task::spawn_blocking(move || perform(&store, &request)).await;
    match answer {
        Ok(Ok(answer)) => (StatusCode::OK, Json(answer)).into_response(),
        Ok(Err(err)) => refuse(super::super::error_report(&err)),
        Err(err) => {
            tracing::error!(%err, "admin socket: the bundle command's task failed");
            refuse("the bundle command failed inside the registry: see its log".into())
        }
    }
}

fn refuse(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}
