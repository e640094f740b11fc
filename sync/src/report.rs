//! Status flowing up: the report a registry makes of itself ([`local`]: version, mode,
//! connection state, last sync, last error, what was synced, what waits to go up, the disk,
//! its children's latest reports) and, for a child defined at its parent, sending it there at
//! the end of every pass ([`Reporter`], `POST /acr/v1/_gateway/{name}/status`). Sending is
//! best effort: a report that cannot go up is logged and dropped, never a failed pass, and the
//! next pass sends a fresh one.

use std::sync::Arc;

use oci::gateway::{ChildNode, ConnectionState, StatusReport};
use oci::Origin;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use crate::client::{ClientError, ParentClient, Scope};
use crate::service::StatusView;
use crate::settings::Mode;
use crate::state::Outcome;

/// Most change-log entries read to count the uploads waiting to go up: past it the count
/// says "at least this many", and a report stays cheap on a child that was offline for long.
pub const MAX_COUNTED_UPLOADS: usize = 10_000;

/// This registry's children as it sees them now (their latest reports, ages, lag).
pub type Subtree = Arc<dyn Fn() -> Vec<ChildNode> + Send + Sync>;

/// What a child needs to report to its parent.
pub struct Reporter {
    /// The name its parent knows it by.
    pub name: String,
    pub client: Arc<ParentClient>,
    pub store: registry::Store,
    pub children: Subtree,
}

/// A registry's sync part of its report: its status now and its totals since start.
pub struct Synced {
    pub status: StatusView,
    pub tags: u64,
    pub bytes: u64,
}

/// How a registry whose sync status is `status` stands with its parent.
pub fn connection_state(status: &StatusView) -> ConnectionState {
    if status.running {
        return ConnectionState::Syncing;
    }
    match &status.last_result {
        None => ConnectionState::Syncing,
        Some(r) if r.outcome == Outcome::Failed && r.retryable => ConnectionState::Offline,
        Some(r) if r.outcome == Outcome::Failed => ConnectionState::Unhealthy,
        Some(_) => ConnectionState::Online,
    }
}

/// This registry's report: from its sync status and totals when it has a parent (`sync`),
/// else as a registry with no parent (`Online`, in `mode`). Blocking: reads the change log's
/// head and the disk's free space.
pub fn local(
    name: &str,
    sync: Option<&Synced>,
    mode: Mode,
    store: &registry::Store,
    children: Vec<ChildNode>,
) -> StatusReport {
    let head = store
        .change_page(u64::MAX, 0)
        .map(|page| page.head)
        .unwrap_or(0);
    let (free, used) = match store.disk_space() {
        Ok(disk) => (
            disk.free_bytes,
            disk.total_bytes.saturating_sub(disk.free_bytes),
        ),
        Err(_) => (0, 0),
    };
    let mut report = StatusReport {
        name: name.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: format!("{mode:?}"),
        connection_state: ConnectionState::Online,
        disk_free_bytes: free,
        disk_used_bytes: used,
        feed_seq: head,
        children,
        ..StatusReport::default()
    };
    if let Some(Synced {
        status,
        tags,
        bytes,
    }) = sync
    {
        report.mode = format!("{:?}", status.mode);
        report.connection_state = connection_state(status);
        report.last_successful_sync = status
            .last_completed
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        report.last_error = status.last_error.clone();
        report.tags_synced = *tags;
        report.bytes_synced = *bytes;
        report.parent_feed_seq = status.parent_feed_seq;
        if status.mode == Mode::ReadWrite {
            report.uploads_waiting = store
                .changes(status.pushed_seq, MAX_COUNTED_UPLOADS)
                .map(|changes| {
                    changes
                        .iter()
                        .filter(|c| c.origin == Origin::Client)
                        .count() as u64
                })
                .unwrap_or(0);
        }
    }
    report
}

impl ParentClient {
    /// Sends this child's status report to its parent (`POST
    /// /acr/v1/_gateway/{name}/status`). `Ok(false)`: the parent has no such route or no such
    /// child (a parent that is not ours, or one that deleted this child).
    pub async fn report_status(
        &self,
        name: &str,
        report: &StatusReport,
    ) -> Result<bool, ClientError> {
        let url = format!("{}/acr/v1/_gateway/{name}/status", self.base());
        let body = serde_json::to_vec(report).map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: format!("cannot write the status report: {e}"),
        })?;
        let resp = self
            .send(Method::POST, &url, &Scope::Catalog, true, &|rb| {
                rb.header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(false),
            _ => Err(crate::client::status_error(&reqwest::Method::POST, &url, resp).await),
        }
    }
}
