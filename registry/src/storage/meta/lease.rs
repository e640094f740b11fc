//! Leases in the metadata: a named right that one holder (a replica) has at a time, taken and
//! renewed in write transactions, which run one at a time across every replica sharing the
//! metadata, so two replicas never both take it. Sync runs its passes only while its replica
//! holds the `sync` lease (see `sync::lease`).
//!
//! Expiry is decided without comparing clocks across machines: the row counts its renewals, and
//! a replica that sees the same holder with the same count for longer than the lease's duration,
//! on its own monotonic clock, may take it over (`storage::lease` keeps that sighting). The
//! holder counts its own duration from before the renewal began, so it stops before anyone may
//! take over. Only clocks that run at the same rate are assumed, not clocks that agree.

use serde::{Deserialize, Serialize};

use super::{from_json, json, now, Meta};
use crate::storage::kv::Table;
use crate::storage::StorageError;

/// name -> [`LeaseRow`] as JSON.
pub(super) const LEASES: Table<String, Vec<u8>> = Table::new("leases");

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRow {
    /// The replica holding it; empty once released.
    pub holder: String,
    /// Takes, renewals and releases so far, never reset (the row stays when released): a row
    /// that stops changing belongs to a holder that stopped.
    pub renewals: u64,
    /// How long the holder keeps it after each renewal, in milliseconds.
    pub duration_ms: u64,
    /// The holder's wall clock at the last renewal, in unix milliseconds: shown, never compared.
    pub renewed_at_ms: u64,
    /// When this holder took it (unix seconds).
    pub taken_at: u64,
}

/// What an attempt to take a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// The caller holds it now (taken or renewed): the row as written.
    Held(LeaseRow),
    /// Another holder has it and it has not expired as the caller sees it.
    Refused(LeaseRow),
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Meta {
    /// Takes or renews lease `name` for `holder`, for `duration_ms` after this moment, in one
    /// write transaction: when nobody holds it, when `holder` does, or when `expired` (the
    /// caller's own sighting of the row) says its holder stopped renewing it.
    pub fn take_lease(
        &self,
        name: &str,
        holder: &str,
        duration_ms: u64,
        expired: impl Fn(&LeaseRow) -> bool,
    ) -> Result<LeaseAttempt, StorageError> {
        self.kv.write(|tx| {
            let current: Option<LeaseRow> =
                tx.get(LEASES, name)?.map(|v| from_json(&v)).transpose()?;
            let row = match current {
                Some(row) if row.holder == holder => LeaseRow {
                    renewals: row.renewals + 1,
                    duration_ms,
                    renewed_at_ms: unix_ms(),
                    ..row
                },
                Some(row) if !row.is_released() && !expired(&row) => {
                    return Ok(LeaseAttempt::Refused(row))
                }
                previous => LeaseRow {
                    holder: holder.to_owned(),
                    renewals: previous.map_or(0, |p| p.renewals) + 1,
                    duration_ms,
                    renewed_at_ms: unix_ms(),
                    taken_at: now(),
                },
            };
            tx.insert(LEASES, name, &json(&row))?;
            Ok(LeaseAttempt::Held(row))
        })
    }

    /// Gives lease `name` up when `holder` holds it (a clean shutdown: another replica takes
    /// it at once instead of after its expiry). The row stays, without a holder, so its count
    /// goes on. Whether it did.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StorageError> {
        self.kv.write(|tx| {
            let Some(row) = tx.get(LEASES, name)? else {
                return Ok(false);
            };
            let row: LeaseRow = from_json(&row)?;
            if row.holder != holder {
                return Ok(false);
            }
            let released = LeaseRow {
                holder: String::new(),
                renewals: row.renewals + 1,
                renewed_at_ms: unix_ms(),
                ..row
            };
            tx.insert(LEASES, name, &json(&released))?;
            Ok(true)
        })
    }

    /// Lease `name` as stored now (`None`: never taken).
    pub fn lease(&self, name: &str) -> Result<Option<LeaseRow>, StorageError> {
        self.kv
            .read(|tx| tx.get(LEASES, name)?.map(|v| from_json(&v)).transpose())
    }
}

impl LeaseRow {
    /// Given up by its last holder: anyone may take it.
    pub fn is_released(&self) -> bool {
        self.holder.is_empty()
    }
}

/// Refuses a write made on the strength of a lease (`fence`: its name and the holder the
/// writer believes it is) unless that holder still holds it, inside the write's transaction: a
/// replica that lost the lease without noticing (paused, cut off) cannot overwrite what the new
/// holder wrote.
pub(super) fn check_fence(
    tx: &crate::storage::kv::Read<'_>,
    fence: &Fence,
) -> Result<(), StorageError> {
    let holder = tx
        .get(LEASES, &fence.lease)?
        .map(|v| from_json::<LeaseRow>(&v))
        .transpose()?
        .map(|row| row.holder);
    if holder.as_deref() == Some(fence.holder.as_str()) {
        return Ok(());
    }
    Err(StorageError::LeaseLost {
        lease: fence.lease.clone(),
        holder: holder.unwrap_or_else(|| "nobody".to_owned()),
    })
}

/// A lease a write depends on, and who the writer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
}
