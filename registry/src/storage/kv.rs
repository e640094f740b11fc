//! The ordered key-value transaction contract the metadata (`meta`) is written over, so its
//! rules (what must exist before a manifest is stored, the manifest + tag + change-log entry in
//! one transaction, props, quota, GC marks) are written once for every backend.
//!
//! A backend ([`Backend`]) has named tables of byte keys and byte values, ordered by key. A
//! read transaction sees one snapshot: `get` and `range` (forwards or backwards, with a
//! limit). A write transaction also `insert`s and `remove`s, sees its own writes, and commits
//! atomically or not at all; write transactions run one at a time. Two backends implement it:
//! [`in_redb`] (the default: `DATA/meta.redb`, its format unchanged) and [`in_postgres`]
//! (`serve --metadata postgres://...`, shared by several replicas).
//!
//! Above the bytes, [`Table`] gives each table its key and value types ([`codec`] encodes them
//! so byte order is key order), and [`Kv::read`] and [`Kv::write`] run a closure in a
//! transaction: a write commits when the closure returns `Ok` (and wrote something), and a
//! closure that failed because the backend was briefly unreachable runs again, a bounded number
//! of times (the backend's setting), in a new transaction.

pub(crate) mod codec;
pub(crate) mod in_postgres;
pub(crate) mod in_redb;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Bound;
use std::time::Duration;

pub(crate) use codec::{Key, Value};

use crate::storage::StorageError;

/// The shapes of key a table can have (a backend that stores typed keys, redb, opens a table
/// with its types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Str,
    U64,
    Str2,
    Str3,
}

/// The shapes of value a table can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    Str,
    Bytes,
    U64,
    U64Pair,
}

/// A table as the backends see it: its name and the shapes of its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableDef {
    pub name: &'static str,
    pub key: KeyKind,
    pub value: ValueKind,
}

/// One row: encoded key and value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// A range of encoded keys to scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan<'a> {
    pub lower: Bound<&'a [u8]>,
    pub upper: Bound<&'a [u8]>,
    /// Largest key first.
    pub reverse: bool,
    /// At most this many rows.
    pub limit: usize,
}

/// What a read transaction offers (a write transaction offers it too, seeing its own writes).
pub(crate) trait ReadTx {
    fn get(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// The values of several keys, in their order: one request where the backend is remote.
    fn get_many(
        &self,
        table: &TableDef,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        keys.iter().map(|key| self.get(table, key)).collect()
    }
    /// Rows in the range, in key order (or reversed), at most `scan.limit`.
    fn range(&self, table: &TableDef, scan: Scan<'_>) -> Result<Vec<Row>, StorageError>;
}

/// What a write transaction offers on top. Dropped without [`WriteTx::commit`], it leaves
/// nothing.
pub(crate) trait WriteTx: ReadTx {
    /// Sets `key` to `value`; returns the value it replaced.
    fn insert(
        &self,
        table: &TableDef,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Removes `key`; returns the value it had.
    fn remove(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Makes sure the table exists; whether it was created now (a store from before it).
    fn create_table(&self, table: &TableDef) -> Result<bool, StorageError>;
    fn commit(self: Box<Self>) -> Result<(), StorageError>;
}

/// A metadata backend.
pub(crate) trait Backend: Send + Sync {
    fn begin_read(&self) -> Result<Box<dyn ReadTx + '_>, StorageError>;
    /// Waits for the other write transactions (of this process, and of every process sharing
    /// the backend) to end first.
    fn begin_write(&self) -> Result<Box<dyn WriteTx + '_>, StorageError>;
    /// How many more times a transaction that failed with [`StorageError::Unavailable`] runs.
    fn retries(&self) -> u32;
}

/// A table with its key and value types.
pub(crate) struct Table<K, V> {
    def: TableDef,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Value> Table<K, V> {
    pub(crate) const fn new(name: &'static str) -> Table<K, V> {
        Table {
            def: TableDef {
                name,
                key: K::KIND,
                value: V::KIND,
            },
            types: PhantomData,
        }
    }

    pub(crate) fn def(&self) -> &TableDef {
        &self.def
    }
}

/// A read transaction with typed access.
pub(crate) struct Read<'t> {
    tx: &'t dyn ReadTx,
}

/// A write transaction with typed access; reads through `Deref` see its own writes.
pub(crate) struct Write<'t> {
    read: Read<'t>,
    tx: &'t dyn WriteTx,
    /// Whether anything was written: a transaction that wrote nothing is not committed (a
    /// commit costs a disk flush on redb and a round trip on PostgreSQL).
    wrote: Cell<bool>,
}

impl<'t> std::ops::Deref for Write<'t> {
    type Target = Read<'t>;
    fn deref(&self) -> &Read<'t> {
        &self.read
    }
}

impl Read<'_> {
    pub(crate) fn get<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        key: K::Ref<'_>,
    ) -> Result<Option<V>, StorageError> {
        self.tx
            .get(table.def(), &codec::key_bytes::<K>(key))?
            .map(|v| V::decode(&v))
            .transpose()
    }

    /// The values of several keys, in their order (one request on PostgreSQL).
    pub(crate) fn get_many<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        keys: &[K::Ref<'_>],
    ) -> Result<Vec<Option<V>>, StorageError> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| codec::key_bytes::<K>(*k)).collect();
        self.tx
            .get_many(table.def(), &keys)?
            .into_iter()
            .map(|v| v.map(|v| V::decode(&v)).transpose())
            .collect()
    }

    pub(crate) fn contains<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        key: K::Ref<'_>,
    ) -> Result<bool, StorageError> {
        Ok(self
            .tx
            .get(table.def(), &codec::key_bytes::<K>(key))?
            .is_some())
    }

    /// Every row of the table, in key order.
    pub(crate) fn iter<K: Key, V: Value>(&self, table: Table<K, V>) -> Rows<'_, K, V> {
        Rows::new(self.tx, table, Bound::Unbounded, Bound::Unbounded)
    }

    /// The rows whose keys start with the strings `prefix` (some of the key's strings, not
    /// all), in key order.
    pub(crate) fn prefix<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        prefix: &[&str],
    ) -> Rows<'_, K, V> {
        let (lower, upper) = codec::prefix_bounds::<K>(prefix);
        Rows::new(
            self.tx,
            table,
            Bound::Included(lower),
            Bound::Excluded(upper),
        )
    }

    /// The row with the smallest key.
    pub(crate) fn first<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
    ) -> Result<Option<(K, V)>, StorageError> {
        self.iter(table).next().transpose()
    }

    /// The row with the largest key.
    pub(crate) fn last<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
    ) -> Result<Option<(K, V)>, StorageError> {
        self.iter(table).backwards().next().transpose()
    }
}

impl Write<'_> {
    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        key: K::Ref<'_>,
        value: V::Ref<'_>,
    ) -> Result<Option<V>, StorageError> {
        self.wrote.set(true);
        self.tx
            .insert(table.def(), &codec::key_bytes::<K>(key), &V::encode(value))?
            .map(|v| V::decode(&v))
            .transpose()
    }

    /// Removes `key`; returns the value it had.
    pub(crate) fn remove<K: Key, V: Value>(
        &self,
        table: Table<K, V>,
        key: K::Ref<'_>,
    ) -> Result<Option<V>, StorageError> {
        self.wrote.set(true);
        self.tx
            .remove(table.def(), &codec::key_bytes::<K>(key))?
            .map(|v| V::decode(&v))
            .transpose()
    }

    /// Makes sure the table exists; whether it was created now.
    pub(crate) fn create_table(&self, table: &TableDef) -> Result<bool, StorageError> {
        let created = self.tx.create_table(table)?;
        self.wrote.set(self.wrote.get() | created);
        Ok(created)
    }
}

fn encode_bound<K: Key>(bound: Bound<K::Ref<'_>>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(codec::key_bytes::<K>(k)),
        Bound::Excluded(k) => Bound::Excluded(codec::key_bytes::<K>(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Rows of a range, fetched from the backend in pages as they are consumed, so a scan that
/// stops early (a page of tags, the first entries after a sequence number) reads little.
pub(crate) struct Rows<'t, K, V> {
    tx: &'t dyn ReadTx,
    table: TableDef,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    fetched: VecDeque<Row>,
    /// The next page's size: small first (most scans stop early), growing to [`MAX_PAGE`].
    page: usize,
    done: bool,
    types: PhantomData<fn() -> (K, V)>,
}

/// The first page of a scan.
const FIRST_PAGE: usize = 16;
/// The largest page of a scan.
const MAX_PAGE: usize = 1024;

impl<'t, K: Key, V: Value> Rows<'t, K, V> {
    fn new(
        tx: &'t dyn ReadTx,
        table: Table<K, V>,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
    ) -> Rows<'t, K, V> {
        Rows {
            tx,
            table: table.def,
            lower,
            upper,
            reverse: false,
            fetched: VecDeque::new(),
            page: FIRST_PAGE,
            done: false,
            types: PhantomData,
        }
    }

    /// Largest key first (before the first row is taken).
    pub(crate) fn backwards(mut self) -> Self {
        self.reverse = !self.reverse;
        self
    }

    /// Starts at `lower` (or after it, when `Excluded`) instead (before the first row is
    /// taken): a key in the range, e.g. where the previous page of a listing ended.
    pub(crate) fn starting(mut self, lower: Bound<K::Ref<'_>>) -> Self {
        if !matches!(lower, Bound::Unbounded) {
            self.lower = encode_bound::<K>(lower);
        }
        self
    }

    fn fetch(&mut self) -> Result<(), StorageError> {
        fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match b {
                Bound::Included(k) => Bound::Included(k.as_slice()),
                Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        let scan = Scan {
            lower: as_ref(&self.lower),
            upper: as_ref(&self.upper),
            reverse: self.reverse,
            limit: self.page,
        };
        let rows = self.tx.range(&self.table, scan)?;
        self.done = rows.len() < self.page;
        self.page = (self.page * 4).min(MAX_PAGE);
        if let Some((last, _)) = rows.last() {
            // The next page starts after the last row taken.
            let next = Bound::Excluded(last.clone());
            if self.reverse {
                self.upper = next;
            } else {
                self.lower = next;
            }
        }
        self.fetched.extend(rows);
        Ok(())
    }

    /// Only the keys.
    pub(crate) fn keys(self) -> impl Iterator<Item = Result<K, StorageError>> + 't
    where
        K: 't,
        V: 't,
    {
        self.map(|row| row.map(|(k, _)| k))
    }
}

impl<K: Key, V: Value> Iterator for Rows<'_, K, V> {
    type Item = Result<(K, V), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.fetched.is_empty() && !self.done {
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
        let (k, v) = self.fetched.pop_front()?;
        Some(K::decode(&k).and_then(|k| Ok((k, V::decode(&v)?))))
    }
}

/// The metadata backend with typed, retried transactions.
pub(crate) struct Kv {
    backend: Box<dyn Backend>,
}

/// The pause before the first retry; each further one waits twice as long.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Kv {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Kv {
        Kv { backend }
    }

    /// Runs `read` in a read transaction (one snapshot).
    pub(crate) fn read<T>(
        &self,
        read: impl Fn(&Read<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.retrying(|| {
            let tx = self.backend.begin_read().map_err(Failed::Attempt)?;
            read(&Read { tx: &*tx }).map_err(Failed::Attempt)
        })
    }

    /// Runs `write` in a write transaction, committed when it returns `Ok` (and wrote
    /// something); on `Err` nothing it wrote stays. It may run more than once (see the module
    /// doc): whatever it does besides writing through the transaction must bear that.
    pub(crate) fn write<T>(
        &self,
        mut write: impl FnMut(&Write<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.retrying(|| {
            let tx = self.backend.begin_write().map_err(Failed::Attempt)?;
            let typed = Write {
                read: Read { tx: &*tx },
                tx: &*tx,
                wrote: Cell::new(false),
            };
            let out = write(&typed).map_err(Failed::Attempt)?;
            if typed.wrote.get() {
                // A failed commit may have committed all the same: not run again.
                tx.commit().map_err(Failed::Commit)?;
            }
            Ok(out)
        })
    }

    fn retrying<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Failed>,
    ) -> Result<T, StorageError> {
        let mut pause = RETRY_PAUSE;
        let mut left = self.backend.retries();
        loop {
            match attempt() {
                Ok(out) => return Ok(out),
                Err(Failed::Attempt(StorageError::Unavailable(why))) if left > 0 => {
                    tracing::warn!(
                        retries_left = left,
                        "metadata transaction failed, running it again: {why}"
                    );
                    left -= 1;
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                Err(Failed::Attempt(e) | Failed::Commit(e)) => return Err(e),
            }
        }
    }
}

/// How a transaction's attempt failed.
enum Failed {
    /// Before the commit: run again when the backend was unavailable.
    Attempt(StorageError),
    /// At the commit: never run again.
    Commit(StorageError),
}
