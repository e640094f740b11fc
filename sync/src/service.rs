//! The background schedule `serve` runs, and its status endpoint. At each cron start a window
//! of `syncWindow` opens, and sync stays active until it closes, as in the ACR connected
//! registry: a pass runs at once, then again every `syncPollInterval` (a parent of ours answers
//! with one feed request), at once when a client changes content here (pushed up in ReadWrite,
//! reconciled in scope), and a failed pass is retried with backoff (from `FIRST_RETRY` up to
//! `syncRetryMax`), so a link that is down when the window opens costs minutes, not a day. A
//! pass still running when the window closes pauses (partial blobs stay on disk and resume in
//! the next window). `GET /acr/v1/_sync/status` shows the last result, the open window's end,
//! the next attempt and the next window, conflicts, warnings and errors. With replicas sharing
//! the metadata a pass runs only while this replica holds the sync lease (`lease`), and the
//! status says which replica holds it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::Engine;
use crate::lease::SyncLease;
use crate::report::Reporter;
use crate::settings::{format_iso_duration, Mode, Settings, FIRST_RETRY};
use crate::state::{Conflict, Outcome, Summary};
use crate::totals::SyncTotals;
use util::backoff::Backoff;

/// What `GET /acr/v1/_sync/status` returns.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub parent: String,
    pub mode: Mode,
    pub sync_schedule: String,
    pub sync_window: String,
    pub message_ttl: String,
    pub sync_poll_interval: String,
    /// A pass is running now.
    pub running: bool,
    /// End of the window open now (`None`: no window is open).
    pub current_window_end: Option<DateTime<Utc>>,
    /// When the next pass starts: the next poll or retry inside the open window, else the next
    /// window's start. A client change here can start it sooner.
    pub next_attempt: Option<DateTime<Utc>>,
    /// Passes in a row that failed in this window (reset by one that completes).
    pub failures_in_a_row: u32,
    /// When the first of the passes failing now (across windows) finished; `None` when the
    /// last pass did not fail. Readiness (`serve --admin`'s `/readyz`) compares it with
    /// `--ready-max-sync-failure`.
    pub failing_since: Option<DateTime<Utc>>,
    /// Start of the last pass that completed: content here is at least as new as the parent's
    /// then (the lag metric).
    pub last_completed: Option<DateTime<Utc>>,
    /// Start of the next scheduled window after the one open now.
    pub next_window_start: Option<DateTime<Utc>>,
    pub last_result: Option<Summary>,
    /// Last change-log sequence pushed up (ReadWrite).
    pub pushed_seq: u64,
    /// Last sequence of the parent's change feed reflected here (`None`: the parent has no
    /// feed, or no pass has completed against it yet).
    pub parent_feed_seq: Option<u64>,
    pub conflicts: Vec<Conflict>,
    /// Repository rules that selected nothing at the parent in the last full comparison.
    pub warnings: Vec<String>,
    /// Errors of the last pass (also in `lastResult.errors`).
    pub errors: Vec<String>,
    /// The errors of the last pass that had any, kept after later passes succeed (what a
    /// status report sends up).
    pub last_error: Option<oci::gateway::LastError>,
    /// The upstreams besides the parent that copy ahead of time (`upstreams` in the sync
    /// config), each with its own schedule and status, by local prefix.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub upstreams: std::collections::BTreeMap<String, StatusView>,
    /// With replicas sharing the metadata: the sync lease, and which replica holds it (passes
    /// run there only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::lease::LeaseView>,
}

/// Asked before every pass: new settings when they changed (a child's settings at its parent),
/// `None` to keep the current ones.
pub type Refresh =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Settings>> + Send>> + Send + Sync>;

/// The sync schedule running in the background.
pub struct SyncService {
    /// Replaced between passes when [`Refresh`] brings new settings.
    engine: RwLock<Arc<Engine>>,
    status: Arc<RwLock<StatusView>>,
    totals: SyncTotals,
    refresh: Option<Refresh>,
    /// Sends a status report to the parent after every pass (a child defined there).
    reporter: OnceLock<Reporter>,
    /// The upstreams' schedules, by local prefix, shown in this one's status.
    upstreams: OnceLock<Vec<(String, Arc<SyncService>)>>,
    /// The sync lease passes run under (set once before [`SyncService::spawn`]; without one the
    /// metadata is this process's own and passes always run).
    lease: OnceLock<Arc<SyncLease>>,
}

impl SyncService {
    pub fn new(engine: Arc<Engine>) -> Arc<SyncService> {
        SyncService::refreshed_by(engine, None)
    }

    /// A schedule that asks `refresh` for new settings before every pass and applies them
    /// (scope, schedule, window, TTL, filters) from that pass on.
    pub fn refreshed_by(engine: Arc<Engine>, refresh: Option<Refresh>) -> Arc<SyncService> {
        let s = &engine.settings;
        let state = engine.state.snapshot();
        let parent_feed_seq = feed_seq(&state, &s.parent);
        let status = StatusView {
            parent: s.parent.clone(),
            mode: s.mode,
            sync_schedule: s.schedule.source().to_owned(),
            sync_window: format_iso_duration(s.window),
            message_ttl: format_iso_duration(s.message_ttl),
            sync_poll_interval: format_iso_duration(s.poll_interval),
            running: false,
            current_window_end: None,
            next_attempt: None,
            failures_in_a_row: 0,
            failing_since: None,
            last_completed: state
                .last_result
                .as_ref()
                .filter(|r| r.outcome == Outcome::Completed)
                .and_then(|r| r.started),
            next_window_start: s.schedule.next_after(Utc::now()),
            warnings: state.scope_warnings,
            errors: state
                .last_result
                .as_ref()
                .map(|r| r.errors.clone())
                .unwrap_or_default(),
            last_error: state.last_result.as_ref().and_then(last_error_of),
            last_result: state.last_result,
            pushed_seq: state.pushed_seq,
            parent_feed_seq,
            conflicts: state.conflicts,
            upstreams: Default::default(),
            lease: None,
        };
        Arc::new(SyncService {
            engine: RwLock::new(engine),
            status: Arc::new(RwLock::new(status)),
            totals: SyncTotals::default(),
            refresh,
            reporter: OnceLock::new(),
            upstreams: OnceLock::new(),
            lease: OnceLock::new(),
        })
    }

    /// Runs passes only while `lease` is held here (set once, before [`SyncService::spawn`]).
    pub fn run_under(&self, lease: Arc<SyncLease>) {
        let _ = self.lease.set(lease);
    }

    /// The lease passes run under.
    fn lease(&self) -> Arc<SyncLease> {
        self.lease.get_or_init(SyncLease::exclusive).clone()
    }

    /// Reports to the parent with `reporter` after every pass from now on (set once, before
    /// [`SyncService::spawn`]).
    pub fn report_with(&self, reporter: Reporter) {
        let _ = self.reporter.set(reporter);
    }

    /// Sends this registry's report (with its children's) to its parent, in the background:
    /// best effort, never holding up or failing the schedule.
    fn report_up(&self) {
        let Some(reporter) = self.reporter.get() else {
            return;
        };
        let synced = self.synced();
        let report = {
            let (name, store, children) = (
                reporter.name.clone(),
                reporter.store.clone(),
                reporter.children.clone(),
            );
            move || {
                let mode = synced.status.mode;
                crate::report::local(&name, Some(&synced), mode, &store, children())
            }
        };
        let (client, name) = (reporter.client.clone(), reporter.name.clone());
        tokio::spawn(async move {
            let Ok(report) = tokio::task::spawn_blocking(report).await else {
                return;
            };
            match client.report_status(&name, &report).await {
                Ok(true) => tracing::debug!("status reported to the parent"),
                Ok(false) => tracing::debug!("the parent takes no status report from this registry (not ours, or it does not define this child)"),
                Err(err) if err.is_unreachable() => {
                    tracing::debug!(%err, "cannot report status to the parent: the next pass tries again")
                }
                Err(err) => {
                    tracing::warn!(%err, "the parent refused this registry's status report: the next pass tries again")
                }
            }
        });
    }

    /// Shows `upstreams` (the upstreams' schedules, by local prefix) in this one's status (set
    /// once).
    pub fn show_upstreams(&self, upstreams: Vec<(String, Arc<SyncService>)>) {
        let _ = self.upstreams.set(upstreams);
    }

    /// The engine the next pass runs with.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks [`Refresh`] for new settings; when it has some, the next pass runs with them.
    async fn refresh(&self) {
        let Some(refresh) = &self.refresh else {
            return;
        };
        let Some(settings) = refresh().await else {
            return;
        };
        let old = self.engine();
        tracing::info!(
            mode = ?settings.mode,
            schedule = settings.schedule.source(),
            repos = settings.repos.len(),
            "sync settings changed: the next pass uses them"
        );
        self.set(|s| {
            s.mode = settings.mode;
            s.sync_schedule = settings.schedule.source().to_owned();
            s.sync_window = format_iso_duration(settings.window);
            s.message_ttl = format_iso_duration(settings.message_ttl);
            s.sync_poll_interval = format_iso_duration(settings.poll_interval);
        });
        let engine = Engine::new(
            old.client.clone(),
            old.store.clone(),
            settings,
            old.state.clone(),
            old.progress.clone(),
        );
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
    }

    /// The sync part of this registry's status report.
    pub fn synced(&self) -> crate::report::Synced {
        use std::sync::atomic::Ordering::Relaxed;
        crate::report::Synced {
            status: self.status(),
            tags: self.totals.tags_updated.load(Relaxed),
            bytes: self.totals.bytes_down.load(Relaxed),
        }
    }

    /// Counters over every pass since start.
    pub fn totals(&self) -> &SyncTotals {
        &self.totals
    }

    pub fn status(&self) -> StatusView {
        let mut view = self
            .status
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        view.lease = self
            .lease
            .get()
            .filter(|lease| lease.is_shared())
            .map(|lease| lease.view());
        view
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

    /// The end of the window open at `now`, if one is.
    fn open_window_end(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let engine = self.engine();
        let settings = &engine.settings;
        let start = settings.schedule.last_start_within(now, settings.window)?;
        let end = start + chrono::Duration::from_std(settings.window).ok()?;
        (end > now).then_some(end)
    }

    async fn run(&self) {
        let client_changed = self.engine().store.client_changes();
        let mut failures = 0u32;
        loop {
            self.refresh().await;
            let engine = self.engine();
            let settings = &engine.settings;
            let retry = Backoff::new(FIRST_RETRY.min(settings.retry_max), settings.retry_max);
            let now = Utc::now();
            let Some(end) = self.open_window_end(now) else {
                failures = 0;
                let next = settings.schedule.next_after(now);
                self.set(|s| {
                    s.current_window_end = None;
                    s.next_attempt = next;
                    s.failures_in_a_row = 0;
                    s.next_window_start = next;
                });
                let wait = next
                    .and_then(|n| (n - now).to_std().ok())
                    .unwrap_or(Duration::from_secs(3600));
                tokio::time::sleep(wait).await;
                continue;
            };
            let left = (end - now).to_std().unwrap_or(Duration::ZERO);
            let deadline = tokio::time::Instant::now() + left;
            let lease = self.lease();
            if !lease.is_held() {
                self.set(|s| {
                    s.running = false;
                    s.current_window_end = Some(end);
                    s.next_attempt = None;
                    s.next_window_start = settings.schedule.next_after(end);
                });
                tokio::select! {
                    () = lease.held() => {}
                    // The window closed while another replica held the lease.
                    () = tokio::time::sleep_until(deadline) => continue,
                }
            }
            if lease.is_shared() {
                // Another replica may have run passes since: continue from its progress.
                if let Err(err) = engine.state.reload() {
                    tracing::error!("{err}");
                    tokio::time::sleep(FIRST_RETRY).await;
                    continue;
                }
                self.show_state(&engine);
            }
            self.set(|s| {
                s.running = true;
                s.current_window_end = Some(end);
                s.next_attempt = None;
                s.next_window_start = settings.schedule.next_after(end);
            });
            tracing::debug!(window_end = %end, "sync pass starts");
            let summary = engine.run_pass_until(lease.stop_at(Some(deadline))).await;
            let wait = match summary.outcome {
                // An error no retry can help (a certificate the trust bundle lacks, a refusal)
                // is asked again only at the longest wait: the parent may still change.
                Outcome::Failed if !summary.retryable => {
                    failures += 1;
                    settings.retry_max
                }
                Outcome::Failed => {
                    failures += 1;
                    retry.equal(failures)
                }
                _ => {
                    failures = 0;
                    settings.poll_interval
                }
            };
            self.log(&summary, failures);
            self.totals.add(&summary);
            self.prune(&engine, &summary).await;
            let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            let parent_feed_seq = self.show_state(&engine);
            self.set(|s| {
                s.running = false;
                s.next_attempt = Some(next.min(end));
                s.failures_in_a_row = failures;
                match summary.outcome {
                    Outcome::Failed => {
                        s.failing_since
                            .get_or_insert(summary.finished.unwrap_or_else(Utc::now));
                    }
                    Outcome::Completed => {
                        s.failing_since = None;
                        s.last_completed = summary.started.or(s.last_completed);
                    }
                    _ => s.failing_since = None,
                }
                s.errors = summary.errors.clone();
                if let Some(error) = last_error_of(&summary) {
                    s.last_error = Some(error);
                }
                s.last_result = Some(summary.clone());
            });
            self.report_up();
            if summary.outcome == Outcome::Paused {
                continue; // the window closed: the loop finds the next one
            }
            let until_end = (end - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            let sleep = tokio::time::sleep(wait.min(until_end));
            if summary.outcome == Outcome::Failed {
                // Backing off from a parent that fails; a local push waits for the retry.
                sleep.await;
            } else {
                tokio::select! {
                    _ = sleep => {}
                    _ = client_changed.notified() => {
                        tracing::debug!("a client changed content here: sync pass starts");
                    }
                    () = parent_changed(&engine, parent_feed_seq) => {
                        tracing::debug!("the parent's change feed has news: sync pass starts");
                    }
                }
            }
        }
    }

    /// Shows the persisted progress in the status (only what it shows: the state also holds
    /// every tag sync wrote, and a poll comes every minute); returns the parent feed position.
    fn show_state(&self, engine: &Engine) -> Option<u64> {
        let parent = &engine.settings.parent;
        let (pushed_seq, parent_feed_seq, conflicts, warnings, last_result) =
            engine.state.read(|st| {
                (
                    st.pushed_seq,
                    feed_seq(st, parent),
                    st.conflicts.clone(),
                    st.scope_warnings.clone(),
                    st.last_result.clone(),
                )
            });
        self.set(|s| {
            s.pushed_seq = pushed_seq;
            s.parent_feed_seq = parent_feed_seq;
            s.conflicts = conflicts;
            s.warnings = warnings;
            if last_result.is_some() {
                s.last_result = last_result;
            }
        });
        parent_feed_seq
    }

    /// One line per pass that did something or failed; a poll with nothing new logs at debug.
    fn log(&self, summary: &Summary, failures: u32) {
        let busy = summary.tags_updated + summary.tags_deleted + summary.manifests_pushed > 0;
        if summary.outcome == Outcome::Failed {
            tracing::warn!(
                failures_in_a_row = failures,
                errors = summary.errors.len(),
                retryable = summary.retryable,
                first_error = summary.errors.first().map(String::as_str).unwrap_or(""),
                "sync pass failed: retrying with backoff while the window is open"
            );
        } else if busy || summary.outcome != Outcome::Completed {
            tracing::info!(
                outcome = ?summary.outcome,
                tags_updated = summary.tags_updated,
                tags_deleted = summary.tags_deleted,
                manifests_pushed = summary.manifests_pushed,
                bytes = summary.bytes_down,
                "sync pass finished"
            );
        } else {
            tracing::debug!(requests = summary.requests, "sync poll: nothing new");
        }
    }

    /// Applies `messageTtl` to the change log, but never to changes not yet pushed up.
    async fn prune(&self, engine: &Engine, summary: &Summary) {
        let all_pushed =
            engine.settings.mode == Mode::ReadOnly || summary.outcome == Outcome::Completed;
        if !all_pushed {
            return;
        }
        let ttl = engine.settings.message_ttl.as_secs();
        let before = (Utc::now().timestamp().max(0) as u64).saturating_sub(ttl);
        let store = engine.store.clone();
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

/// The errors of `summary` as a report carries them (`None`: it had none).
fn last_error_of(summary: &Summary) -> Option<oci::gateway::LastError> {
    let first = summary.errors.first()?;
    Some(oci::gateway::LastError {
        at: summary
            .finished
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        message: first.clone(),
        details: summary
            .errors
            .iter()
            .take(oci::gateway::MAX_ERROR_DETAILS)
            .cloned()
            .collect(),
        retryable: summary.retryable,
    })
}

/// The longest one long poll of the parent's change feed waits (the parent caps it too).
const FEED_WAIT: Duration = Duration::from_secs(25);

/// Completes when the parent's change feed has something after `after` (the position of
/// this registry's last pass) for this registry, asking with long polls one after another:
/// a change crosses each layer as soon as it is made instead of at the next poll. Never
/// completes for a parent without a feed, or while asking fails: the poll timer it races
/// against then decides, as before.
async fn parent_changed(engine: &Engine, after: Option<u64>) {
    let Some(after) = after else {
        return std::future::pending().await;
    };
    // Under the progress timeout, which a quiet connection must not reach.
    let wait = FEED_WAIT.min(engine.settings.limits.progress_timeout / 2);
    loop {
        let asked = tokio::time::Instant::now();
        match engine.client.wait_for_changes(after, wait).await {
            Ok(true) => return,
            // Nothing within the wait: ask again.
            Ok(false) if asked.elapsed() >= wait / 2 => {}
            // An empty answer at once: a parent that does not wait (an older one). Asking
            // again would be a request loop; the poll timer decides.
            Ok(false) => return std::future::pending().await,
            Err(err) => {
                tracing::debug!(%err, "cannot long-poll the parent's change feed: waiting for the next poll");
                return std::future::pending().await;
            }
        }
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
    let mut view = service.status();
    if let Some(upstreams) = service.upstreams.get() {
        view.upstreams = upstreams
            .iter()
            .map(|(prefix, s)| (prefix.clone(), s.status()))
            .collect();
    }
    Json(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Rig;

    #[tokio::test]
    async fn the_long_poll_ends_on_news_and_leaves_a_parent_that_does_not_wait_to_the_timer() {
        let rig = Rig::new("ReadOnly");
        rig.parent.answer_long_polls_with(true);
        parent_changed(&rig.engine, Some(7)).await;
        assert_eq!(rig.parent.long_polls(), 1);

        // An empty answer at once (a parent that does not wait): asked once, never again, and
        // the future never completes (the poll timer it races decides).
        let rig = Rig::new("ReadOnly");
        rig.parent.answer_long_polls_with(false);
        let waited = tokio::time::timeout(
            Duration::from_millis(500),
            parent_changed(&rig.engine, Some(7)),
        )
        .await;
        assert!(waited.is_err(), "completed without news");
        assert_eq!(rig.parent.long_polls(), 1, "asked again in a loop");

        // A parent with no feed position (not ours): not asked at all.
        let rig = Rig::new("ReadOnly");
        rig.parent.answer_long_polls_with(true);
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            parent_changed(&rig.engine, None),
        )
        .await;
        assert!(waited.is_err());
        assert_eq!(rig.parent.long_polls(), 0);
    }
}
