//! The admin socket, `DATA/admin.sock`: how the `token`, `scope-map` and `bundle` commands
//! reach a running `serve`, so a change takes effect at once with no restart and no port to
//! protect.
//!
//! Only the data directory's owner reaches it: the socket is mode 0600 from the moment it has
//! its name (it is bound in a private directory, restricted, then renamed into place), and a
//! peer whose uid is neither the data directory's owner nor root is dropped unanswered. It
//! serves HTTP/1: `POST /access` with an [`access::Command`] as JSON answers 200 with the
//! command's `az acr`-shaped JSON, or 400 with `{"error": message}`; `GET
//! /acr/v1/_gateway/_tree` answers the tree of registries beneath this one (`status --tree`).
//! Those two are served only with access control on (with `--auth none` there is no token set
//! to manage: a 404 sends the CLI to the store). The routes `serve` adds (`POST /bundle`, see
//! `cmd::bundle`) are served always.
//!
//! The client side ([`send`]) falls back to the store itself when no server listens, which is
//! the only other way to the token set: redb lets one process at a time hold `access.redb`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};

/// The socket's name in the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// How long the CLI waits for the server's answer (a command hashes at most two passwords:
/// tens of milliseconds; the rest is a margin for a busy device).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest command accepted (a scope map with many rules is a few kilobytes).
const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Where the admin socket of the registry on `data` is.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET_NAME)
}

/// Serves management commands for `authority` on `DATA/admin.sock` until the process is asked
/// to stop (then the socket is removed). A socket left by a registry that died is replaced:
/// whoever calls this holds `access.redb`, so no other server can be behind it (with the token
/// set in the shared metadata nothing holds the data directory: each replica has its own).
pub fn spawn(
    data: &Path,
    authority: Option<Arc<access::Authority>>,
    tree: registry::api::gateway::TreeSource,
    routes: Router,
) -> anyhow::Result<()> {
    let path = socket_path(data);
    let listener = bind_owner_only(data, &path)
        .with_context(|| format!("cannot serve the admin socket {}", path.display()))?;
    let owner = std::fs::metadata(data)
        .with_context(|| format!("cannot read the owner of {}", data.display()))?
        .uid();
    let mut app = routes;
    if let Some(authority) = authority {
        app = app.merge(
            Router::new()
                .route("/access", post(handle))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_COMMAND_BYTES))
                .with_state(authority)
                .merge(registry::api::gateway::tree_routes(tree)),
        );
    }
    tracing::info!(socket = %path.display(), "management commands are served on the admin socket");
    tokio::spawn(async move {
        let served = axum::serve(OwnerOnly { listener, owner }, app)
            .with_graceful_shutdown(util::shutdown::signal())
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "the admin socket failed: token and scope-map commands cannot reach this registry");
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Binds `path` so that it never exists with a mode other than 0600: bound in a fresh 0700
/// directory beside it, restricted, then renamed over whatever was at `path`.
fn bind_owner_only(data: &Path, path: &Path) -> anyhow::Result<UnixListener> {
    // Short on purpose: a socket's path is limited to 107 bytes.
    let private = data.join(format!(".adm{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("cannot make {}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged).map_err(|e| {
            if path.as_os_str().len() > 100 {
                anyhow::anyhow!("{e} (its path is too long for a socket: use a shorter --data)")
            } else {
                e.into()
            }
        })?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        anyhow::Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// The Unix listener, handing on only connections from `owner` or root.
struct OwnerOnly {
    listener: UnixListener,
    owner: u32,
}

impl axum::serve::Listener for OwnerOnly {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == self.owner || peer.uid() == 0 => return (stream, addr),
                Ok(peer) => tracing::warn!(
                    uid = peer.uid(),
                    "admin socket: refused a connection from a user who does not own the data directory"
                ),
                Err(err) => tracing::warn!(%err, "admin socket: cannot tell who connected; refused"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

async fn handle(State(authority): State<Arc<access::Authority>>, body: Bytes) -> Response {
    let command: access::Command = match serde_json::from_slice(&body) {
        Ok(command) => command,
        Err(err) => {
            return refuse(format!(
                "not a management command: {err} (this socket is for the connected-registry CLI)"
            ))
        }
    };
    let (kind, name) = describe(&command);
    let writes = command.writes();
    let answer = tokio::task::spawn_blocking(move || authority.manage(command)).await;
    match answer {
        Ok(Ok(answer)) => {
            if writes {
                // The command's kind and name only: an answer may hold new passwords.
                tracing::info!(command = %kind, name = %name, "access changed through the admin socket");
            }
            (StatusCode::OK, Json(answer)).into_response()
        }
        Ok(Err(err)) => refuse(err.0),
        Err(err) => {
            tracing::error!(%err, "admin socket: the command's task failed");
            refuse("the command failed inside the registry: see its log".into())
        }
    }
}

fn refuse(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// A command's kind (`token-create`) and the name it acts on, for a log line.
fn describe(command: &access::Command) -> (String, String) {
    let value = serde_json::to_value(command).unwrap_or_default();
    let field = |key: &str| value[key].as_str().unwrap_or_default().to_owned();
    (field("command"), field("name"))
}

/// Applies `command` to the token set of `data`: through the admin socket of the registry
/// serving it, or on the store itself when none does. With `metadata` shared (PostgreSQL) the
/// token set is there, not in `data`: the command is applied to it directly (one write
/// transaction, as a replica's own), and every replica serves the change within its
/// `--access-refresh`. Errors say what was refused and why.
pub async fn send(
    data: &Path,
    metadata: &registry::storage::MetadataBackend,
    command: access::Command,
) -> anyhow::Result<Value> {
    if metadata.is_shared() {
        let (data, metadata) = (data.to_owned(), metadata.clone());
        return tokio::task::spawn_blocking(move || {
            let authority = super::auth::open_authority(settings_of(&data), &data, &metadata)?;
            Ok(authority.manage(command)?)
        })
        .await?;
    }
    let socket = socket_path(data);
    if let Some(answer) = ask_server(&socket, &command).await? {
        return answer;
    }
    let direct = {
        let data = data.to_owned();
        let command = command.clone();
        tokio::task::spawn_blocking(move || apply_on_store(&data, command)).await?
    };
    match direct {
        Err(Direct::InUse) => {
            // A server may have opened the store just now and be about to bind its socket.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match ask_server(&socket, &command).await? {
                Some(answer) => answer,
                None => anyhow::bail!(
                    "a running registry holds {} but its admin socket {} does not answer: it may be starting or stopping (try again), or be a version without the admin socket (stop it, run this command, start it again)",
                    data.join(access::store::FILE_NAME).display(),
                    socket.display()
                ),
            }
        }
        Err(Direct::Failed(err)) => Err(err),
        Ok(answer) => Ok(answer),
    }
}

/// The server's answer (`Ok(Some(..))`, itself a refusal or not), or `None` when no server
/// listens on `socket` (no socket file, or one left by a registry that stopped).
async fn ask_server(
    socket: &Path,
    command: &access::Command,
) -> anyhow::Result<Option<anyhow::Result<Value>>> {
    ask(
        socket,
        "/access",
        Some(serde_json::to_vec(command)?),
        ANSWER_TIMEOUT,
    )
    .await
}

/// The tree of registries beneath the registry serving `data` (`status --tree`), or `None`
/// when none serves it.
pub async fn tree(data: &Path) -> anyhow::Result<Option<Value>> {
    ask(
        &socket_path(data),
        "/acr/v1/_gateway/_tree",
        None,
        ANSWER_TIMEOUT,
    )
    .await?
    .transpose()
}

/// One exchange on the admin socket: `POST path` with `body`, or `GET path` without one,
/// answered within `timeout`. `None` when no server listens, or it does not serve `path`.
pub async fn ask(
    socket: &Path,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<Option<anyhow::Result<Value>>> {
    use http_body_util::{BodyExt, Full};
    let shown = socket.display();
    let stream = match UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot reach the registry's admin socket {shown}: {err}; run this as the user who owns the data directory"
        ),
        Err(err) => {
            return Err(anyhow::Error::new(err)
                .context(format!("cannot reach the registry's admin socket {shown}")))
        }
    };
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = match body {
            Some(body) => hyper::Request::post(path)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::HOST, "localhost")
                .body(Full::new(Bytes::from(body)))?,
            None => hyper::Request::get(path)
                .header(hyper::header::HOST, "localhost")
                .body(Full::new(Bytes::new()))?,
        };
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the registry did not answer on {shown} within {timeout:?}"))?
        .with_context(|| format!("talking to the registry on its admin socket {shown}"))?;
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("the registry answered {status} on {shown}, not in JSON"))?;
    Ok(Some(if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]
            .as_str()
            .unwrap_or("refused, with no reason given");
        Err(anyhow::anyhow!("{message}"))
    }))
}

/// The access settings a command applied without a server uses: this registry is ReadOnly when
/// its parent said so (a child defined there), and may then only have ReadOnly children.
fn settings_of(data: &Path) -> access::Settings {
    let read_only = sync::parent_config::ParentConfig::cached(data)
        .and_then(|c| c.mode)
        .is_some_and(|m| m.eq_ignore_ascii_case("readonly"));
    access::Settings {
        read_only,
        ..access::Settings::default()
    }
}

/// Why a command could not be applied to the store itself.
enum Direct {
    /// A server holds the store.
    InUse,
    Failed(anyhow::Error),
}

fn apply_on_store(data: &Path, command: access::Command) -> Result<Value, Direct> {
    let shown = data.display();
    let setting = "check --data (or ACR_REGISTRY_DATA_VOLUME)";
    if !data.exists() {
        if !command.writes() {
            return Err(Direct::Failed(anyhow::anyhow!(
                "no data directory at {shown}: {setting}"
            )));
        }
        // Tokens may be made before the first start, as the registry's own first start would.
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot make the data directory {shown} ({setting})"))
            .map_err(Direct::Failed)?;
    }
    super::check_data_dir(data, super::MissingData::Create).map_err(Direct::Failed)?;
    let authority = match access::Authority::open(data, settings_of(data)) {
        Ok(authority) => authority,
        Err(access::StoreError::InUse { .. }) => return Err(Direct::InUse),
        Err(err) => return Err(Direct::Failed(err.into())),
    };
    authority
        .manage(command)
        .map_err(|e| Direct::Failed(e.into()))
}
