//! The PostgreSQL backend of the key-value contract (`serve --metadata postgres://...`), so
//! several replicas share one metadata store with the same rules as the redb file. `settings`
//! is the URL (shown only redacted) and the named limits; `tls` libpq's `sslmode` and
//! `sslrootcert` and what each checks, `tls_stream` the client's TLS on rustls; `pool` the
//! connections, each on a thread of its own; `session` one connection's SQL, schema and
//! transactions, and why write transactions take an advisory lock first.
//!
//! The client library is `postgres` (sfackler's).

mod pool;
mod session;
pub(crate) mod settings;
#[cfg(any(test, feature = "postgres-test-server"))]
pub mod test_server;
pub(crate) mod tls;
mod tls_stream;

use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Backend, ReadTx, Row, Scan, TableDef, WriteTx};
use crate::storage::StorageError;
use pool::{CheckedOut, Pool};
use session::Mode;
pub use settings::PostgresSettings;
use tls_stream::RustlsConnect;

pub(crate) struct PostgresBackend {
    settings: Arc<PostgresSettings>,
    pool: Pool,
    /// Held through each write transaction of this process: they run one at a time anyway
    /// (the advisory lock), and waiting here rather than in PostgreSQL keeps the other
    /// connections free for reads.
    writer: Mutex<()>,
}

impl PostgresBackend {
    /// Starts the connection threads; the first transaction connects (and creates the schema
    /// in an empty database), so a server that cannot be reached, or whose certificate fails
    /// the checks of `sslmode`, fails the store's opening. So does an unreadable `sslrootcert`.
    pub(crate) fn open(settings: PostgresSettings) -> Result<PostgresBackend, StorageError> {
        let settings = Arc::new(settings);
        let tls = RustlsConnect::new(&settings.tls)
            .map_err(|e| StorageError::Db(format!("{}: {e}", settings.describe())))?;
        tracing::info!(
            server = %settings.describe(),
            connections = settings.connections,
            sslmode = %settings.tls.mode,
            "metadata in PostgreSQL"
        );
        Ok(PostgresBackend {
            pool: Pool::start(&settings, &tls)?,
            settings,
            writer: Mutex::new(()),
        })
    }

    fn begin(&self, mode: Mode) -> Result<Transaction<'_>, StorageError> {
        let worker = self.pool.checkout();
        worker.run(move |session| session.begin(mode))??;
        Ok(Transaction {
            worker,
            open: true,
            _writer: None,
        })
    }
}

impl Backend for PostgresBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTx + '_>, StorageError> {
        Ok(Box::new(self.begin(Mode::Read)?))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTx + '_>, StorageError> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = self.begin(Mode::Write)?;
        tx._writer = Some(writer);
        Ok(Box::new(tx))
    }

    fn retries(&self) -> u32 {
        self.settings.retries
    }
}

/// A transaction on a checked-out connection; rolled back when dropped uncommitted.
struct Transaction<'b> {
    worker: CheckedOut<'b>,
    /// Not committed yet.
    open: bool,
    /// This process's turn to write, for a write transaction.
    _writer: Option<MutexGuard<'b, ()>>,
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl ReadTx for Transaction<'_> {
    fn get(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let (name, key) = (table.name, key.to_vec());
        self.worker.run(move |s| s.get(name, &key))?
    }

    fn get_many(
        &self,
        table: &TableDef,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let (name, keys) = (table.name, keys.to_vec());
        self.worker.run(move |s| s.get_many(name, &keys))?
    }

    fn range(&self, table: &TableDef, scan: Scan<'_>) -> Result<Vec<Row>, StorageError> {
        let name = table.name;
        let (lower, upper) = (owned(scan.lower), owned(scan.upper));
        let (reverse, limit) = (scan.reverse, scan.limit);
        self.worker
            .run(move |s| s.range(name, lower, upper, reverse, limit))?
    }
}

impl WriteTx for Transaction<'_> {
    fn insert(
        &self,
        table: &TableDef,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let (name, key, value) = (table.name, key.to_vec(), value.to_vec());
        self.worker.run(move |s| s.insert(name, &key, &value))?
    }

    fn remove(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let (name, key) = (table.name, key.to_vec());
        self.worker.run(move |s| s.remove(name, &key))?
    }

    fn create_table(&self, table: &TableDef) -> Result<bool, StorageError> {
        let name = table.name;
        self.worker.run(move |s| s.create_table(name))?
    }

    fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        self.open = false;
        self.worker.run(|s| s.commit())?
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // Queued, not waited for: the worker's next transaction begins after it.
            let _ = self.worker.send(|s| s.rollback());
        }
    }
}
