//! A child registry's routes at its parent, and the tree of registries beneath this one:
//!
//! - `GET /acr/v1/_gateway/{name}/config`: the settings a child registry defined here (`child
//!   create`) receives at start and at every sync pass: mode, repositories, schedule, window,
//!   message TTL, platforms, bandwidth limit, as strings the child's own settings parser
//!   reads. From the access model ([`access::Authority::child_config`]), never from the content
//!   store.
//! - `POST /acr/v1/_gateway/{name}/status`: the child's status report at the end of every pass
//!   (an [`oci::gateway::StatusReport`], with its own children's), kept as its latest
//!   ([`ChildReports`]).
//!
//! Both answer that child's own sync token only (`config/read`, `message/write` on that
//! gateway name: the access layer checks it). With access control off there are no children,
//! and neither route is served.
//!
//! - `GET /acr/v1/_gateway/_tree`: this registry's own state and every child's latest report
//!   with its age and lag, recursively (needs `message/read`, as the sync status does).

use std::sync::Arc;

use access::Authority;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use oci::gateway::StatusReport;

use crate::api::error::ApiError;
use crate::child_reports::ChildReports;
use oci::ErrorCode;

/// Largest status report accepted: a report carries its sender's whole subtree, a few hundred
/// bytes per registry, so this is thousands of registries.
pub const MAX_REPORT_BYTES: usize = 4 << 20;

/// This registry's tree (its own state, its children's reports beneath): what `_tree`
/// answers, made by whoever knows the local state (the binary, from sync's status). Blocking:
/// it may read the disk's free space and the change log's head.
pub type TreeSource = Arc<dyn Fn() -> StatusReport + Send + Sync>;

#[derive(Clone)]
struct Gateway {
    authority: Arc<Authority>,
    reports: Arc<ChildReports>,
}

/// The child routes, over the registry's access model and the kept reports (present only
/// with access control on: without tokens there are no children).
pub fn routes(authority: Arc<Authority>, reports: Arc<ChildReports>) -> Router {
    Router::new()
        .route("/acr/v1/_gateway/{name}/config", get(config))
        .route(
            "/acr/v1/_gateway/{name}/status",
            post(status).layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .with_state(Gateway { authority, reports })
}

/// `GET /acr/v1/_gateway/_tree`, answered from `tree`.
pub fn tree_routes(tree: TreeSource) -> Router {
    Router::new()
        .route("/acr/v1/_gateway/_tree", get(tree_handler))
        .with_state(tree)
}

/// What a `_gateway/...` path (the part after `/acr/v1/`) is, for the access layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GatewayRoute<'a> {
    /// `_gateway/{name}/config`
    Config(&'a str),
    /// `_gateway/{name}/status`
    Status(&'a str),
    /// `_gateway/_tree`
    Tree,
}

pub(crate) fn gateway_route(rest: &str) -> Option<GatewayRoute<'_>> {
    let rest = rest.strip_prefix("_gateway/")?;
    if rest == "_tree" {
        return Some(GatewayRoute::Tree);
    }
    let (name, what) = rest.split_once('/')?;
    if name.is_empty() {
        return None;
    }
    match what {
        "config" => Some(GatewayRoute::Config(name)),
        "status" => Some(GatewayRoute::Status(name)),
        _ => None,
    }
}

fn no_such_child(name: &str) -> Response {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!(
            "no child registry {name} is defined here: `child list` on this registry shows them"
        ),
    )
    .into_response()
}

async fn config(State(gateway): State<Gateway>, Path(name): Path<String>) -> Response {
    match gateway.authority.child_config(&name) {
        Some(settings) => axum::Json(settings).into_response(),
        None => no_such_child(&name),
    }
}

async fn status(State(gateway): State<Gateway>, Path(name): Path<String>, body: Bytes) -> Response {
    if gateway.authority.child_config(&name).is_none() {
        return no_such_child(&name);
    }
    let report: StatusReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(err) => {
            return ApiError::new(
                ErrorCode::Unsupported,
                format!("the status report is not a connected-registry status report: {err}"),
            )
            .with_status(StatusCode::BAD_REQUEST)
            .into_response()
        }
    };
    let reports = gateway.reports.clone();
    let kept = tokio::task::spawn_blocking(move || reports.record(&name, report))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match kept {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => {
            tracing::warn!(%err, "a child's status report cannot be kept");
            ApiError::new(
                ErrorCode::Unknown,
                "the report could not be kept on this registry's disk: see its log",
            )
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response()
        }
    }
}

async fn tree_handler(State(tree): State<TreeSource>) -> Response {
    match tokio::task::spawn_blocking(move || tree()).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(_) => ApiError::new(ErrorCode::Unknown, "building the tree failed: see the log")
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    }
}
