//! When a pass must stop, cleanly (transfers cut between chunks, partial blobs kept for the
//! resume, outcome `Paused`): at the end of the sync window (or `--time-limit`), and, with
//! replicas sharing the metadata, as soon as this replica no longer holds the sync lease.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lease::LeaseState;

/// See the module doc. The default never stops.
#[derive(Clone, Default)]
pub struct Stop {
    deadline: Option<Instant>,
    lease: Option<watch::Receiver<LeaseState>>,
}

impl Stop {
    /// Stops at `deadline` (none: never).
    pub fn at(deadline: Option<Instant>) -> Stop {
        Stop {
            deadline,
            lease: None,
        }
    }

    /// Also stops once the hold `lease` watches ends.
    pub fn while_held(mut self, lease: watch::Receiver<LeaseState>) -> Stop {
        self.lease = Some(lease);
        self
    }

    /// Whether the pass must stop now.
    pub fn reached(&self) -> bool {
        let now = Instant::now();
        self.deadline.is_some_and(|d| now >= d)
            || self
                .lease
                .as_ref()
                .is_some_and(|lease| !lease.borrow().held_at(now))
    }

    /// Completes once the pass must stop (never, for the default).
    pub async fn reached_at(&self) {
        let window = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let lease = async {
            let Some(mut lease) = self.lease.clone() else {
                return std::future::pending().await;
            };
            loop {
                let state = lease.borrow_and_update().clone();
                let LeaseState::Held { until } = state else {
                    return;
                };
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {
                        if !lease.borrow().held_at(Instant::now()) {
                            return;
                        }
                    }
                    changed = lease.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = window => {}
            () = lease => {}
        }
    }

    /// Sleeps `wait`, unless the pass must stop first; whether it slept the whole wait.
    pub async fn sleep(&self, wait: std::time::Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => !self.reached(),
            () = self.reached_at() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stops_at_the_deadline_or_when_the_lease_ends() {
        assert!(!Stop::default().reached());
        let past = Stop::at(Some(Instant::now()));
        assert!(past.reached());
        tokio::time::timeout(Duration::from_secs(1), past.reached_at())
            .await
            .unwrap();

        // Held, renewed once, then not renewed: reached at the end of the renewed hold.
        let (tx, rx) = watch::channel(LeaseState::Held {
            until: Instant::now() + Duration::from_millis(200),
        });
        let stop = Stop::at(None).while_held(rx);
        assert!(!stop.reached());
        let renewed = Instant::now() + Duration::from_millis(400);
        tx.send_replace(LeaseState::Held { until: renewed });
        tokio::time::timeout(Duration::from_secs(2), stop.reached_at())
            .await
            .unwrap();
        assert!(Instant::now() >= renewed);
        assert!(stop.reached());

        // Another replica has it: reached at once.
        let (tx, rx) = watch::channel(LeaseState::Held {
            until: Instant::now() + Duration::from_secs(60),
        });
        let stop = Stop::at(None).while_held(rx);
        assert!(stop.sleep(Duration::from_millis(10)).await);
        tx.send_replace(LeaseState::Standby { holder: "b".into() });
        assert!(stop.reached());
        assert!(!stop.sleep(Duration::from_secs(60)).await);
    }
}
