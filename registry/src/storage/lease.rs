//! One replica's claim on a lease in the metadata (the rules of the row are `meta::lease`):
//! who this replica is, and what it last saw of another holder's row and when, on its own
//! monotonic clock. A row seen unchanged (same holder, same count) for longer than its
//! duration belongs to a holder that stopped renewing (killed, cut off): this replica may take
//! it over. This replica's own hold ends a duration after it *began* its last renewal, so it
//! always ends before another replica may take over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::storage::meta::LeaseAttempt;
pub use crate::storage::meta::{Fence, LeaseRow};
use crate::storage::{StorageError, Store};

/// What an attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// This replica holds the lease until `until` unless it renews it before.
    Held { until: Instant, row: LeaseRow },
    /// Another replica holds it (`row.holder`).
    Refused { row: LeaseRow },
}

/// A row last seen held by another replica, and when.
struct Sighting {
    holder: String,
    renewals: u64,
    at: Instant,
}

/// This replica's claim on one lease: see the module doc.
pub struct LeaseClaim {
    store: Store,
    name: String,
    holder: String,
    duration: Duration,
    sighting: Mutex<Option<Sighting>>,
}

impl LeaseClaim {
    /// A claim on lease `name` for the replica named `holder` (unique among the replicas:
    /// [`replica_name`]), held for `duration` after each renewal.
    pub fn new(store: Store, name: &str, holder: &str, duration: Duration) -> LeaseClaim {
        LeaseClaim {
            store,
            name: name.to_owned(),
            holder: holder.to_owned(),
            duration,
            sighting: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This replica's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// What a write made on the strength of this lease checks in its transaction.
    pub fn fence(&self) -> Fence {
        Fence {
            lease: self.name.clone(),
            holder: self.holder.clone(),
        }
    }

    /// One attempt (blocking): takes the lease when nobody holds it, or its holder stopped
    /// renewing it as seen from here; renews it when this replica holds it.
    pub fn try_take(&self) -> Result<Holding, StorageError> {
        let began = Instant::now();
        let duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
        let attempt = {
            let sighting = self.sighting.lock().unwrap_or_else(|e| e.into_inner());
            self.store
                .inner
                .meta
                .take_lease(&self.name, &self.holder, duration_ms, |row| {
                    sighting.as_ref().is_some_and(|seen| {
                        seen.holder == row.holder
                            && seen.renewals == row.renewals
                            && seen.at.elapsed() >= Duration::from_millis(row.duration_ms)
                    })
                })?
        };
        let mut sighting = self.sighting.lock().unwrap_or_else(|e| e.into_inner());
        match attempt {
            LeaseAttempt::Held(row) => {
                *sighting = None;
                Ok(Holding::Held {
                    until: began + self.duration,
                    row,
                })
            }
            LeaseAttempt::Refused(row) => {
                let same = sighting
                    .as_ref()
                    .is_some_and(|seen| seen.holder == row.holder && seen.renewals == row.renewals);
                if !same {
                    // Seen now, after the read: the holder renewed before this moment, so
                    // counting from here never takes over early.
                    *sighting = Some(Sighting {
                        holder: row.holder.clone(),
                        renewals: row.renewals,
                        at: Instant::now(),
                    });
                }
                Ok(Holding::Refused { row })
            }
        }
    }

    /// Gives the lease up if this replica holds it (a clean shutdown), so another replica
    /// takes it at once. Whether it did.
    pub fn release(&self) -> Result<bool, StorageError> {
        self.store
            .inner
            .meta
            .release_lease(&self.name, &self.holder)
    }

    /// The lease's row as stored now (`None`: never taken).
    pub fn row(&self) -> Result<Option<LeaseRow>, StorageError> {
        self.store.inner.meta.lease(&self.name)
    }
}

/// A name for this process among the replicas: the machine's host name, the process id and a
/// random suffix (a restarted replica is a new holder).
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

impl Store {
    /// Engine `name`'s sync state document in the metadata (`None`: never written).
    pub fn sync_state(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.meta.sync_state(name)
    }

    /// Replaces engine `name`'s sync state document, only while `fence`'s holder holds its
    /// lease ([`StorageError::LeaseLost`] otherwise).
    pub fn put_sync_state(
        &self,
        name: &str,
        document: &[u8],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        self.inner.meta.put_sync_state(name, document, fence)
    }

    /// Whether the metadata is shared with other processes (PostgreSQL): sync then keeps its
    /// state there and runs under a lease.
    pub fn metadata_is_shared(&self) -> bool {
        self.inner.metadata_shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::on_every_backend;
    use crate::storage::Limits;

    /// A second replica's store on the same metadata: another handle on PostgreSQL; on redb,
    /// which one process opens at a time, the same store (the claims stand for the replicas).
    fn second(
        backend: &crate::storage::test_support::TestBackend,
        first: &Store,
        dir: &std::path::Path,
    ) -> Store {
        match backend.backends.metadata {
            crate::storage::MetadataBackend::Redb => first.clone(),
            crate::storage::MetadataBackend::Postgres(_) => backend.open(dir, Limits::default()),
        }
    }

    fn held(holding: &Holding) -> bool {
        matches!(holding, Holding::Held { .. })
    }

    on_every_backend! {
        /// Taken when free, renewed by its holder (the count grows), refused to another
        /// replica while renewed, taken over once its holder stopped renewing for the
        /// duration, refused to the old holder after that, and free at once when released.
        fn a_lease_has_one_holder_at_a_time(backend) {
            let dir = tempfile::tempdir().unwrap();
            let a_store = backend.open(dir.path(), Limits::default());
            let b_store = second(&backend, &a_store, dir.path());
            let duration = Duration::from_millis(600);
            let a = LeaseClaim::new(a_store, "sync", "replica-a", duration);
            let b = LeaseClaim::new(b_store, "sync", "replica-b", duration);
            assert_eq!(a.row().unwrap(), None);

            // Taken.
            let first = a.try_take().unwrap();
            let Holding::Held { until, row } = &first else { panic!("{first:?}") };
            assert_eq!((row.holder.as_str(), row.renewals), ("replica-a", 1));
            assert!(*until <= Instant::now() + duration);

            // Renewed by its holder, refused to the other meanwhile, for longer than the
            // duration in all.
            let started = Instant::now();
            let mut a_until = *until;
            while started.elapsed() < duration * 2 {
                let renewed = a.try_take().unwrap();
                let Holding::Held { until, .. } = renewed else { panic!("{renewed:?}") };
                a_until = until;
                let refused = b.try_take().unwrap();
                let Holding::Refused { row } = &refused else { panic!("taken while renewed: {refused:?}") };
                assert_eq!(row.holder, "replica-a");
                std::thread::sleep(duration / 4);
            }
            let renewals = a.row().unwrap().unwrap().renewals;
            assert!(renewals > 4, "renewals counted: {renewals}");

            // A stops renewing (killed): B takes it over, but never before A's hold ended.
            let stopped = Instant::now();
            loop {
                let attempt = b.try_take().unwrap();
                if held(&attempt) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() >= a_until, "taken over while A still held it");
            let took = stopped.elapsed();
            assert!(took < duration * 2, "taken over only after {took:?}");
            let row = b.row().unwrap().unwrap();
            assert_eq!(row.holder, "replica-b");
            assert_eq!(row.renewals, renewals + 1, "the count goes on");
            // The old holder, back, finds it taken.
            let back = a.try_take().unwrap();
            assert!(matches!(&back, Holding::Refused { row } if row.holder == "replica-b"), "{back:?}");

            // Released at a clean shutdown: the other takes it at once.
            assert!(!a.release().unwrap(), "released by one that does not hold it");
            assert!(b.release().unwrap());
            let row = a.row().unwrap().unwrap();
            assert!(row.is_released());
            assert!(held(&a.try_take().unwrap()), "free after a release");
        }

        /// Sync's state document is written only by the lease's holder (a fence), whole, and
        /// read back by any replica.
        fn sync_state_is_written_only_by_the_lease_holder(backend) {
            let dir = tempfile::tempdir().unwrap();
            let a_store = backend.open(dir.path(), Limits::default());
            let b_store = second(&backend, &a_store, dir.path());
            let a = LeaseClaim::new(a_store.clone(), "sync", "replica-a", Duration::from_secs(60));
            let b = LeaseClaim::new(b_store.clone(), "sync", "replica-b", Duration::from_secs(60));
            assert_eq!(a_store.sync_state("main").unwrap(), None);
            let refused = a_store.put_sync_state("main", b"{}", &a.fence()).unwrap_err();
            assert!(refused.to_string().contains("held by nobody"), "{refused}");

            assert!(held(&a.try_take().unwrap()));
            a_store.put_sync_state("main", br#"{"pushedSeq":7}"#, &a.fence()).unwrap();
            a_store.put_sync_state("upstream-mcr", b"{}", &a.fence()).unwrap();
            assert_eq!(
                b_store.sync_state("main").unwrap().as_deref(),
                Some(&br#"{"pushedSeq":7}"#[..])
            );
            let refused = b_store
                .put_sync_state("main", br#"{"pushedSeq":1}"#, &b.fence())
                .unwrap_err();
            assert!(
                matches!(&refused, StorageError::LeaseLost { holder, .. } if holder == "replica-a"),
                "{refused}"
            );
            assert_eq!(
                a_store.sync_state("main").unwrap().as_deref(),
                Some(&br#"{"pushedSeq":7}"#[..]),
                "left as the holder wrote it"
            );
        }
    }

    #[test]
    fn replica_names_differ() {
        assert_ne!(replica_name(), replica_name());
        assert!(replica_name().contains(&format!("/{}/", std::process::id())));
    }
}
