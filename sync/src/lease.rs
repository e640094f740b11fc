//! The sync lease: with several replicas sharing the metadata (PostgreSQL), sync passes (the
//! main parent's and each upstream's) run only on the replica holding the `sync` lease, so
//! exactly one pass runs at a time and the progress in the shared state is one replica's.
//!
//! A keeper task takes the lease and renews it every `--sync-lease-renew` (a third of
//! `--sync-lease` by default), whether a pass runs or not: the replica holding it keeps it while
//! it lives. It holds it until a lease's duration after it began its last renewal; a pass stops
//! (cleanly, as at the end of a window: partial blobs stay for the resume) as soon as that
//! passes without a renewal, or another replica has it. A replica killed stops renewing: once
//! another has seen its row unchanged for the lease's duration it takes over and continues from
//! the shared state (`registry::storage::lease` for the rules). At a clean shutdown the holder
//! gives it up, and another replica takes it at once.
//!
//! With redb the metadata is this process's own: there is no lease to take, and it is always
//! held. Pull-through is per request and needs none.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use registry::storage::lease::{Holding, LeaseClaim};

/// The lease's name in the metadata.
pub const SYNC_LEASE: &str = "sync";

/// This replica's hold on the lease, as the keeper last found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Not asked yet.
    Unknown,
    /// Held until `until` unless renewed before.
    Held { until: Instant },
    /// Another replica holds it.
    Standby { holder: String },
    /// Given up (a clean shutdown), or could not be asked while not held.
    NotHeld { why: String },
}

impl LeaseState {
    /// Whether this replica holds the lease at `now`.
    pub fn held_at(&self, now: Instant) -> bool {
        matches!(self, LeaseState::Held { until } if *until > now)
    }
}

/// What the status shows about the lease.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    /// The replica holding it as last seen (`None`: nobody, or not known yet).
    pub holder: Option<String>,
    /// This replica's name in the lease.
    pub this_replica: String,
    /// Whether this replica holds it now.
    pub held_here: bool,
    /// `--sync-lease`, ISO-8601.
    pub duration: String,
    /// When this replica last saw the lease (took, renewed, or found it held elsewhere).
    pub checked: Option<DateTime<Utc>>,
}

/// The sync lease of this process: see the module doc.
pub struct SyncLease {
    claim: Option<Arc<LeaseClaim>>,
    renew: Duration,
    state: watch::Sender<LeaseState>,
    view: std::sync::Mutex<LeaseView>,
}

impl SyncLease {
    /// The metadata is this process's own (redb): always held, nothing to take.
    pub fn exclusive() -> Arc<SyncLease> {
        let state = watch::Sender::new(LeaseState::Held {
            until: Instant::now() + Duration::from_secs(100 * 365 * 86_400),
        });
        Arc::new(SyncLease {
            claim: None,
            renew: Duration::from_secs(3600),
            state,
            view: std::sync::Mutex::new(LeaseView {
                holder: None,
                this_replica: "this process (the metadata is its own)".to_owned(),
                held_here: true,
                duration: "-".to_owned(),
                checked: None,
            }),
        })
    }

    /// The lease in shared metadata, through `claim`, renewed every `renew`. Call
    /// [`SyncLease::spawn`] to start taking it.
    pub fn shared(claim: LeaseClaim, renew: Duration) -> Arc<SyncLease> {
        let view = LeaseView {
            holder: None,
            this_replica: claim.holder().to_owned(),
            held_here: false,
            duration: crate::settings::format_iso_duration(claim.duration()),
            checked: None,
        };
        Arc::new(SyncLease {
            claim: Some(Arc::new(claim)),
            renew,
            state: watch::Sender::new(LeaseState::Unknown),
            view: std::sync::Mutex::new(view),
        })
    }

    /// Whether there are replicas to share with (the lease is in shared metadata).
    pub fn is_shared(&self) -> bool {
        self.claim.is_some()
    }

    /// Starts the keeper (nothing for an exclusive lease): takes the lease when it can,
    /// renews it while held.
    pub fn spawn(self: &Arc<Self>) {
        if self.claim.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if !me.attempt().await {
                    return;
                }
                tokio::time::sleep(me.renew).await;
            }
        });
    }

    /// One attempt to take or renew; `false` once the lease was given up for good.
    async fn attempt(&self) -> bool {
        let Some(claim) = self.claim.clone() else {
            return false;
        };
        if matches!(&*self.state.borrow(), LeaseState::NotHeld { why } if why == GIVEN_UP) {
            return false;
        }
        let found = tokio::task::spawn_blocking(move || claim.try_take()).await;
        let before = self.state.borrow().clone();
        let now = Instant::now();
        let next = match found {
            Ok(Ok(Holding::Held { until, .. })) => {
                if !before.held_at(now) {
                    tracing::info!(replica = %self.this_replica(), "this replica took the sync lease: sync passes run here");
                }
                LeaseState::Held {
                    until: Instant::from_std(until),
                }
            }
            Ok(Ok(Holding::Refused { row })) => {
                if before.held_at(now) {
                    tracing::warn!(holder = %row.holder, "the sync lease went to another replica: sync passes stop here");
                } else if !matches!(&before, LeaseState::Standby { holder } if *holder == row.holder)
                {
                    tracing::info!(holder = %row.holder, "another replica holds the sync lease: sync passes run there, this replica stands by");
                }
                LeaseState::Standby { holder: row.holder }
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot take or renew the sync lease: asking again shortly");
                match before {
                    // Kept until it runs out: a pass stops then, unless a renewal comes first.
                    held @ LeaseState::Held { .. } => held,
                    _ => LeaseState::NotHeld {
                        why: err.to_string(),
                    },
                }
            }
            Err(join) => LeaseState::NotHeld {
                why: format!("internal: the lease attempt failed: {join}"),
            },
        };
        // Given up meanwhile (a shutdown): stays given up.
        if matches!(&*self.state.borrow(), LeaseState::NotHeld { why } if why == GIVEN_UP) {
            return false;
        }
        {
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            view.checked = Some(Utc::now());
            view.held_here = next.held_at(now);
            match &next {
                LeaseState::Held { .. } => view.holder = Some(view.this_replica.clone()),
                LeaseState::Standby { holder } => view.holder = Some(holder.clone()),
                _ => {}
            }
        }
        self.state.send_replace(next);
        true
    }

    fn this_replica(&self) -> String {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .this_replica
            .clone()
    }

    /// Whether this replica holds the lease now.
    pub fn is_held(&self) -> bool {
        self.state.borrow().held_at(Instant::now())
    }

    /// Waits until this replica holds the lease.
    pub async fn held(&self) {
        let mut rx = self.state.subscribe();
        loop {
            if rx.borrow_and_update().held_at(Instant::now()) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A watch on the hold, for a pass to stop when it ends.
    pub fn watch(&self) -> watch::Receiver<LeaseState> {
        self.state.subscribe()
    }

    /// What the status shows.
    pub fn view(&self) -> LeaseView {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        view.held_here = self.is_held();
        view
    }

    /// Stops every pass here at its next step, and the keeper for good (a clean shutdown
    /// begins); the lease stays this replica's until [`SyncLease::give_up`].
    pub fn stop_passes(&self) {
        if self.claim.is_some() {
            self.state.send_replace(LeaseState::NotHeld {
                why: GIVEN_UP.to_owned(),
            });
        }
    }

    /// Gives the lease up for good (a clean shutdown): passes here stop at their next step,
    /// and the row is released so another replica takes over at once.
    pub async fn give_up(&self) {
        let Some(claim) = self.claim.clone() else {
            return;
        };
        self.stop_passes();
        match tokio::task::spawn_blocking(move || claim.release()).await {
            Ok(Ok(true)) => tracing::info!("sync lease given up: another replica takes it now"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot give the sync lease up: another replica takes it once it expires")
            }
            Err(_) => {}
        }
    }
}

/// Why a lease given up at shutdown is not held.
const GIVEN_UP: &str = "given up (stopping)";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exclusive_lease_is_always_held() {
        let lease = SyncLease::exclusive();
        assert!(lease.is_held());
        tokio::time::timeout(Duration::from_secs(1), lease.held())
            .await
            .expect("held at once");
        assert!(!lease.is_shared());
        assert!(lease.view().held_here);
    }
}
