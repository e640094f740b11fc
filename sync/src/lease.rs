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

use registry::storage::lease::{Fence, Holding, LeaseClaim};

use crate::stop::Stop;

/// The lease's name in the metadata.
pub const SYNC_LEASE: &str = "sync";

/// This replica's hold on a shared lease, as the keeper last found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Not asked yet, or could not be asked while not held (the keeper logs why).
    NotHeld,
    /// Held until `until` unless renewed before.
    Held { until: Instant },
    /// Another replica holds it.
    Standby { holder: String },
    /// Given up for good (a clean shutdown begins): never taken again by this process.
    GivenUp,
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
    /// `None`: the metadata is this process's own, and the lease always held.
    shared: Option<Shared>,
    state: watch::Sender<LeaseState>,
    /// What the keeper last saw, for the status.
    seen: std::sync::Mutex<Seen>,
}

/// The holder the keeper last saw, and when it looked.
#[derive(Clone, Default)]
struct Seen {
    holder: Option<String>,
    checked: Option<DateTime<Utc>>,
}

/// A lease in shared metadata and how often the keeper asks for it.
struct Shared {
    claim: Arc<LeaseClaim>,
    renew: Duration,
}

impl SyncLease {
    /// The metadata is this process's own (redb): always held, nothing to take.
    pub fn exclusive() -> Arc<SyncLease> {
        Arc::new(SyncLease {
            shared: None,
            state: watch::Sender::new(LeaseState::NotHeld),
            seen: Default::default(),
        })
    }

    /// The lease in shared metadata, through `claim`, renewed every `renew`. Call
    /// [`SyncLease::spawn`] to start taking it.
    pub fn shared(claim: LeaseClaim, renew: Duration) -> Arc<SyncLease> {
        Arc::new(SyncLease {
            shared: Some(Shared {
                claim: Arc::new(claim),
                renew,
            }),
            state: watch::Sender::new(LeaseState::NotHeld),
            seen: Default::default(),
        })
    }

    /// Whether there are replicas to share with (the lease is in shared metadata).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// What a write made on the strength of the lease checks in its transaction (`None` for
    /// an exclusive lease: nothing to check).
    pub fn fence(&self) -> Option<Fence> {
        self.shared.as_ref().map(|shared| shared.claim.fence())
    }

    /// Starts the keeper (nothing for an exclusive lease): takes the lease when it can,
    /// renews it while held.
    pub fn spawn(self: &Arc<Self>) {
        let Some(renew) = self.shared.as_ref().map(|shared| shared.renew) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            while me.attempt().await {
                tokio::time::sleep(renew).await;
            }
        });
    }

    fn given_up(&self) -> bool {
        *self.state.borrow() == LeaseState::GivenUp
    }

    /// One attempt to take or renew; `false` once the lease was given up for good.
    async fn attempt(&self) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        if self.given_up() {
            return false;
        }
        let claim = shared.claim.clone();
        let found = tokio::task::spawn_blocking(move || claim.try_take()).await;
        let before = self.state.borrow().clone();
        let now = Instant::now();
        let next = match found {
            Ok(Ok(Holding::Held { until, .. })) => {
                if !before.held_at(now) {
                    tracing::info!(replica = %shared.claim.holder(), "this replica took the sync lease: sync passes run here");
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
                    _ => LeaseState::NotHeld,
                }
            }
            Err(join) => {
                tracing::error!(%join, "internal: the sync lease attempt failed: asking again shortly");
                LeaseState::NotHeld
            }
        };
        // Given up meanwhile (a shutdown): stays given up.
        if self.given_up() {
            return false;
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.checked = Some(Utc::now());
            match &next {
                LeaseState::Held { .. } => seen.holder = Some(shared.claim.holder().to_owned()),
                LeaseState::Standby { holder } => seen.holder = Some(holder.clone()),
                _ => {}
            }
        }
        self.state.send_replace(next);
        true
    }

    /// Whether this replica holds the lease now.
    pub fn is_held(&self) -> bool {
        self.shared.is_none() || self.state.borrow().held_at(Instant::now())
    }

    /// Waits until this replica holds the lease.
    pub async fn held(&self) {
        let mut rx = self.state.subscribe();
        loop {
            if self.shared.is_none() || rx.borrow_and_update().held_at(Instant::now()) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// When a pass must stop: at `deadline` (none: never) and, with a shared lease, as soon as
    /// this replica no longer holds it.
    pub fn stop_at(&self, deadline: Option<Instant>) -> Stop {
        let stop = Stop::at(deadline);
        match self.shared {
            Some(_) => stop.while_held(self.state.subscribe()),
            None => stop,
        }
    }

    /// What the status shows.
    pub fn view(&self) -> LeaseView {
        let Seen { holder, checked } = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (this_replica, duration) = match &self.shared {
            Some(shared) => (
                shared.claim.holder().to_owned(),
                crate::settings::format_iso_duration(shared.claim.duration()),
            ),
            None => (
                "this process (the metadata is its own)".to_owned(),
                "-".to_owned(),
            ),
        };
        LeaseView {
            holder,
            this_replica,
            held_here: self.is_held(),
            duration,
            checked,
        }
    }

    /// Stops every pass here at its next step, and the keeper for good (a clean shutdown
    /// begins); the lease stays this replica's until [`SyncLease::give_up`].
    pub fn stop_passes(&self) {
        if self.shared.is_some() {
            self.state.send_replace(LeaseState::GivenUp);
        }
    }

    /// Gives the lease up for good (a clean shutdown): passes here stop at their next step,
    /// and the row is released so another replica takes over at once.
    pub async fn give_up(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        self.stop_passes();
        let claim = shared.claim.clone();
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
        assert!(lease.fence().is_none());
        assert!(lease.view().held_here);
        // Its passes stop at their deadline only.
        let stop = lease.stop_at(None);
        assert!(!stop.reached());
        lease.stop_passes();
        assert!(lease.is_held() && !stop.reached());
    }
}
