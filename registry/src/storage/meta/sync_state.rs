//! Sync's progress document in the metadata, one row per sync engine (the main parent, each
//! upstream), for metadata shared by several replicas: whichever replica holds the sync lease
//! continues from where the last one stopped. The document is sync's own (`sync::state`); here it
//! is bytes, written whole in one transaction, and only by the lease's holder (a fence).

use super::lease::{check_fence, Fence};
use super::Meta;
use crate::storage::kv::Table;
use crate::storage::StorageError;

/// engine name -> its state document.
pub(super) const SYNC_STATE: Table<String, Vec<u8>> = Table::new("sync_state");

impl Meta {
    /// Engine `name`'s state document (`None`: never written).
    pub fn sync_state(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.kv.read(|tx| tx.get(SYNC_STATE, name))
    }

    /// Replaces engine `name`'s state document with `document`, only while `fence` holds
    /// ([`StorageError::LeaseLost`] otherwise, and nothing is written).
    pub fn put_sync_state(
        &self,
        name: &str,
        document: &[u8],
        fence: &Fence,
    ) -> Result<(), StorageError> {
        self.kv.write(|tx| {
            check_fence(tx, fence)?;
            tx.insert(SYNC_STATE, name, document)?;
            Ok(())
        })
    }
}
