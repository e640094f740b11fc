//! Counters over every pass since the process started, for Prometheus (`serve --admin`):
//! passes by outcome, bytes down and up, tags updated and deleted, errors by fault. The status
//! endpoint shows the last pass; these add up all of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::state::{Outcome, Summary};

/// Running totals of the sync schedule.
#[derive(Default)]
pub struct SyncTotals {
    /// completed, paused, failed
    passes: [AtomicU64; 3],
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub tags_updated: AtomicU64,
    pub tags_deleted: AtomicU64,
    pub manifests_pushed: AtomicU64,
    /// Errors by fault (`client`, `upstream`, `local`, `internal`: `oci::fault`).
    errors: Mutex<BTreeMap<String, u64>>,
}

/// The outcomes a finished pass can have, as labels.
pub const OUTCOMES: [&str; 3] = ["completed", "paused", "failed"];

impl SyncTotals {
    /// Adds a finished pass.
    pub fn add(&self, summary: &Summary) {
        let ld = Ordering::Relaxed;
        let slot = match summary.outcome {
            Outcome::Completed => 0,
            Outcome::Paused => 1,
            Outcome::Failed => 2,
            Outcome::Running => return,
        };
        self.passes[slot].fetch_add(1, ld);
        self.bytes_down.fetch_add(summary.bytes_down, ld);
        self.bytes_up.fetch_add(summary.bytes_up, ld);
        self.tags_updated.fetch_add(summary.tags_updated, ld);
        self.tags_deleted.fetch_add(summary.tags_deleted, ld);
        self.manifests_pushed
            .fetch_add(summary.manifests_pushed, ld);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        for (fault, n) in &summary.faults {
            *errors.entry(fault.clone()).or_default() += n;
        }
    }

    /// Passes finished with each of [`OUTCOMES`], in that order.
    pub fn passes(&self) -> [u64; 3] {
        self.passes.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Errors so far, by fault.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_add_up() {
        let totals = SyncTotals::default();
        let mut failed = Summary {
            outcome: Outcome::Failed,
            ..Summary::default()
        };
        failed.faults.insert("upstream".into(), 2);
        totals.add(&failed);
        totals.add(&failed);
        totals.add(&Summary {
            outcome: Outcome::Completed,
            bytes_down: 10,
            tags_updated: 1,
            ..Summary::default()
        });
        assert_eq!(totals.passes(), [1, 0, 2]);
        assert_eq!(totals.bytes_down.load(Ordering::Relaxed), 10);
        assert_eq!(totals.errors().get("upstream"), Some(&4));
    }
}
