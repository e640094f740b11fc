//! The background schedule `serve` runs, and its status endpoint: at each cron start a window
//! of `syncWindow` opens; a pass runs inside it and pauses when it closes (partial blobs stay
//! on disk and resume in the next window). `GET /acr/v1/_sync/status` shows the last result,
//! the current and next window, conflicts and errors.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::Engine;
use crate::settings::{format_iso_duration, Mode};
use crate::state::{Conflict, Outcome, Summary};

/// What `GET /acr/v1/_sync/status` returns.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub parent: String,
    pub mode: Mode,
    pub sync_schedule: String,
    pub sync_window: String,
    pub message_ttl: String,
    /// A pass is running now.
    pub running: bool,
    /// End of the window the current pass runs in.
    pub current_window_end: Option<DateTime<Utc>>,
    /// Start of the next scheduled window.
    pub next_window_start: Option<DateTime<Utc>>,
    pub last_result: Option<Summary>,
    /// Last change-log sequence pushed up (ReadWrite).
    pub pushed_seq: u64,
    /// Last sequence of the parent's change feed reflected here (`None`: the parent has no
    /// feed, or no pass has completed against it yet).
    pub parent_feed_seq: Option<u64>,
    pub conflicts: Vec<Conflict>,
    /// Errors of the last pass (also in `lastResult.errors`).
    pub errors: Vec<String>,
}

/// The sync schedule running in the background.
pub struct SyncService {
    engine: Arc<Engine>,
    status: Arc<RwLock<StatusView>>,
}

impl SyncService {
    pub fn new(engine: Arc<Engine>) -> Arc<SyncService> {
        let s = &engine.settings;
        let state = engine.state.snapshot();
        let parent_feed_seq = feed_seq(&state, &s.parent);
        let status = StatusView {
            parent: s.parent.clone(),
            mode: s.mode,
            sync_schedule: s.schedule.source().to_owned(),
            sync_window: format_iso_duration(s.window),
            message_ttl: format_iso_duration(s.message_ttl),
            running: false,
            current_window_end: None,
            next_window_start: s.schedule.next_after(Utc::now()),
            errors: state
                .last_result
                .as_ref()
                .map(|r| r.errors.clone())
                .unwrap_or_default(),
            last_result: state.last_result,
            pushed_seq: state.pushed_seq,
            parent_feed_seq,
            conflicts: state.conflicts,
        };
        Arc::new(SyncService {
            engine,
            status: Arc::new(RwLock::new(status)),
        })
    }

    pub fn status(&self) -> StatusView {
        self.status
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, f: impl FnOnce(&mut StatusView)) {
        let mut guard = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }

    /// Starts the schedule on the current tokio runtime.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    async fn run(&self) {
        let settings = &self.engine.settings;
        loop {
            let now = Utc::now();
            if let Some(start) = settings.schedule.last_start_within(now, settings.window) {
                let end = start + chrono::Duration::from_std(settings.window).unwrap_or_default();
                if end > now {
                    let left = (end - now).to_std().unwrap_or(Duration::ZERO);
                    self.set(|s| {
                        s.running = true;
                        s.current_window_end = Some(end);
                    });
                    tracing::info!(window_end = %end, "sync window open: pass starts");
                    let summary = self
                        .engine
                        .run_pass(Some(tokio::time::Instant::now() + left))
                        .await;
                    tracing::info!(
                        outcome = ?summary.outcome,
                        tags_updated = summary.tags_updated,
                        bytes = summary.bytes_down,
                        errors = summary.errors.len(),
                        "sync pass finished"
                    );
                    self.prune(&summary).await;
                    let state = self.engine.state.snapshot();
                    self.set(|s| {
                        s.running = false;
                        s.current_window_end = None;
                        s.errors = summary.errors.clone();
                        s.last_result = Some(summary);
                        s.pushed_seq = state.pushed_seq;
                        s.parent_feed_seq = feed_seq(&state, &s.parent);
                        s.conflicts = state.conflicts;
                    });
                }
            }
            let now = Utc::now();
            let next = settings.schedule.next_after(now);
            self.set(|s| s.next_window_start = next);
            let wait = next
                .and_then(|n| (n - now).to_std().ok())
                .unwrap_or(Duration::from_secs(3600));
            tokio::time::sleep(wait).await;
        }
    }

    /// Applies `messageTtl` to the change log, but never to changes not yet pushed up.
    async fn prune(&self, summary: &Summary) {
        let all_pushed =
            self.engine.settings.mode == Mode::ReadOnly || summary.outcome == Outcome::Completed;
        if !all_pushed {
            return;
        }
        let ttl = self.engine.settings.message_ttl.as_secs();
        let before = (Utc::now().timestamp().max(0) as u64).saturating_sub(ttl);
        let store = self.engine.store.clone();
        match tokio::task::spawn_blocking(move || store.prune_changes(before)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(pruned = n, "change log entries past messageTtl dropped")
            }
            Ok(Err(e)) => tracing::warn!("prune change log: {e}"),
            _ => {}
        }
    }

    /// `GET /acr/v1/_sync/status`, to merge into the registry's router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/acr/v1/_sync/status", get(status_handler))
            .with_state(self.clone())
    }
}

fn feed_seq(state: &crate::state::SyncState, parent: &str) -> Option<u64> {
    state
        .parent_feed
        .as_ref()
        .filter(|f| f.parent == parent)
        .and_then(|f| f.seq)
}

async fn status_handler(State(service): State<Arc<SyncService>>) -> Json<StatusView> {
    Json(service.status())
}
