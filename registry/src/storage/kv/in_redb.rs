//! The redb backend of the key-value contract: `DATA/meta.redb`, the default. Each table is the
//! typed redb table it always was (same name, same key and value types), so a data directory
//! written before the contract existed opens and reads exactly as before: the contract's bytes
//! are decoded into the typed key or value at each call and encoded back from what redb
//! returns. `handle` reopens the file after an I/O failure; a write is refused while the disk
//! is too full to be sure it can commit (`space::METADATA_ROOM`).

mod handle;

use std::ops::Bound;
use std::path::Path;

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, TableHandle};

pub(crate) use handle::io_failed;

use super::codec::{Key, Value};
use super::{Backend, KeyKind, ReadTx, Row, Scan, TableDef, ValueKind, WriteTx};
use crate::storage::space::Space;
use crate::storage::StorageError;

pub(crate) struct RedbBackend {
    db: handle::Handle,
    /// Checked before every write transaction.
    space: Space,
}

impl RedbBackend {
    /// Opens (or creates) the database file at `path`.
    pub(crate) fn open(path: &Path, space: Space) -> Result<RedbBackend, StorageError> {
        Ok(RedbBackend {
            db: handle::Handle::open(path)?,
            space,
        })
    }
}

impl Backend for RedbBackend {
    fn begin_read(&self) -> Result<Box<dyn ReadTx + '_>, StorageError> {
        Ok(Box::new(Read(self.db.begin_read()?)))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTx + '_>, StorageError> {
        self.space.check_metadata()?;
        Ok(Box::new(Write(self.db.begin_write()?)))
    }

    /// redb is a local file: nothing to retry.
    fn retries(&self) -> u32 {
        0
    }
}

struct Read(ReadTransaction);
struct Write(redb::WriteTransaction);

/// A key type as redb stores it.
trait RedbKey: Key {
    type R: redb::Key + 'static;
    fn borrow(&self) -> <Self::R as redb::Value>::SelfType<'_>;
    fn encode_redb(key: <Self::R as redb::Value>::SelfType<'_>) -> Vec<u8>;
}

/// A value type as redb stores it.
trait RedbValue: Value {
    type R: redb::Value + 'static;
    fn borrow(&self) -> <Self::R as redb::Value>::SelfType<'_>;
    fn encode_redb(value: <Self::R as redb::Value>::SelfType<'_>) -> Vec<u8>;
}

impl RedbKey for String {
    type R = &'static str;
    fn borrow(&self) -> &str {
        self
    }
    fn encode_redb(key: &str) -> Vec<u8> {
        super::codec::key_bytes::<String>(key)
    }
}

impl RedbKey for u64 {
    type R = u64;
    fn borrow(&self) -> u64 {
        *self
    }
    fn encode_redb(key: u64) -> Vec<u8> {
        super::codec::key_bytes::<u64>(key)
    }
}

impl RedbKey for (String, String) {
    type R = (&'static str, &'static str);
    fn borrow(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
    fn encode_redb(key: (&str, &str)) -> Vec<u8> {
        super::codec::key_bytes::<(String, String)>(key)
    }
}

impl RedbKey for (String, String, String) {
    type R = (&'static str, &'static str, &'static str);
    fn borrow(&self) -> (&str, &str, &str) {
        (&self.0, &self.1, &self.2)
    }
    fn encode_redb(key: (&str, &str, &str)) -> Vec<u8> {
        super::codec::key_bytes::<(String, String, String)>(key)
    }
}

impl RedbValue for String {
    type R = &'static str;
    fn borrow(&self) -> &str {
        self
    }
    fn encode_redb(value: &str) -> Vec<u8> {
        <String as Value>::encode(value)
    }
}

impl RedbValue for Vec<u8> {
    type R = &'static [u8];
    fn borrow(&self) -> &[u8] {
        self
    }
    fn encode_redb(value: &[u8]) -> Vec<u8> {
        value.to_vec()
    }
}

impl RedbValue for u64 {
    type R = u64;
    fn borrow(&self) -> u64 {
        *self
    }
    fn encode_redb(value: u64) -> Vec<u8> {
        <u64 as Value>::encode(value)
    }
}

impl RedbValue for (u64, u64) {
    type R = (u64, u64);
    fn borrow(&self) -> (u64, u64) {
        *self
    }
    fn encode_redb(value: (u64, u64)) -> Vec<u8> {
        <(u64, u64) as Value>::encode(value)
    }
}

/// Calls `$f::<K, V>($args)` with the key and value types of the table `$def`.
macro_rules! typed {
    ($def:expr, $f:ident($($arg:expr),*)) => {{
        use KeyKind as K;
        use ValueKind as V;
        match ($def.key, $def.value) {
            (K::Str, V::Str) => $f::<String, String>($($arg),*),
            (K::Str, V::Bytes) => $f::<String, Vec<u8>>($($arg),*),
            (K::Str, V::U64) => $f::<String, u64>($($arg),*),
            (K::Str, V::U64Pair) => $f::<String, (u64, u64)>($($arg),*),
            (K::U64, V::Str) => $f::<u64, String>($($arg),*),
            (K::U64, V::Bytes) => $f::<u64, Vec<u8>>($($arg),*),
            (K::U64, V::U64) => $f::<u64, u64>($($arg),*),
            (K::U64, V::U64Pair) => $f::<u64, (u64, u64)>($($arg),*),
            (K::Str2, V::Str) => $f::<(String, String), String>($($arg),*),
            (K::Str2, V::Bytes) => $f::<(String, String), Vec<u8>>($($arg),*),
            (K::Str2, V::U64) => $f::<(String, String), u64>($($arg),*),
            (K::Str2, V::U64Pair) => $f::<(String, String), (u64, u64)>($($arg),*),
            (K::Str3, V::Str) => $f::<(String, String, String), String>($($arg),*),
            (K::Str3, V::Bytes) => $f::<(String, String, String), Vec<u8>>($($arg),*),
            (K::Str3, V::U64) => $f::<(String, String, String), u64>($($arg),*),
            (K::Str3, V::U64Pair) => $f::<(String, String, String), (u64, u64)>($($arg),*),
        }
    }};
}

fn definition<K: RedbKey, V: RedbValue>(table: &TableDef) -> TableDefinition<'static, K::R, V::R> {
    TableDefinition::new(table.name)
}

fn get<K: RedbKey, V: RedbValue>(
    table: &impl ReadableTable<K::R, V::R>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    let key = K::decode(key)?;
    let found = table.get(key.borrow())?;
    Ok(found.map(|v| V::encode_redb(v.value())))
}

fn decode_bound<K: Key>(bound: Bound<&[u8]>) -> Result<Bound<K>, StorageError> {
    Ok(match bound {
        Bound::Included(k) => Bound::Included(K::decode(k)?),
        Bound::Excluded(k) => Bound::Excluded(K::decode(k)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

fn borrow_bound<K: RedbKey>(bound: &Bound<K>) -> Bound<<K::R as redb::Value>::SelfType<'_>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.borrow()),
        Bound::Excluded(k) => Bound::Excluded(k.borrow()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A row as redb's range gives it.
type RedbRow<'a, K, V> = (
    redb::AccessGuard<'a, <K as RedbKey>::R>,
    redb::AccessGuard<'a, <V as RedbValue>::R>,
);

fn range<K: RedbKey, V: RedbValue>(
    table: &impl ReadableTable<K::R, V::R>,
    scan: Scan<'_>,
) -> Result<Vec<Row>, StorageError> {
    let lower = decode_bound::<K>(scan.lower)?;
    let upper = decode_bound::<K>(scan.upper)?;
    if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) =
        (&scan.lower, &scan.upper)
    {
        // redb refuses a range that ends before it starts; the contract's is just empty.
        if l > u
            || (l == u && !matches!((&lower, &upper), (Bound::Included(_), Bound::Included(_))))
        {
            return Ok(Vec::new());
        }
    }
    let rows = table.range((borrow_bound(&lower), borrow_bound(&upper)))?;
    let encode = |row: Result<RedbRow<'_, K, V>, redb::StorageError>| {
        let (k, v) = row?;
        Ok((K::encode_redb(k.value()), V::encode_redb(v.value())))
    };
    if scan.reverse {
        rows.rev().take(scan.limit).map(encode).collect()
    } else {
        rows.take(scan.limit).map(encode).collect()
    }
}

fn read_get<K: RedbKey, V: RedbValue>(
    tx: &ReadTransaction,
    table: &TableDef,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    match tx.open_table(definition::<K, V>(table)) {
        Ok(t) => get::<K, V>(&t, key),
        // A table this store never created is empty.
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_range<K: RedbKey, V: RedbValue>(
    tx: &ReadTransaction,
    table: &TableDef,
    scan: Scan<'_>,
) -> Result<Vec<Row>, StorageError> {
    match tx.open_table(definition::<K, V>(table)) {
        Ok(t) => range::<K, V>(&t, scan),
        Err(TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn write_get<K: RedbKey, V: RedbValue>(
    tx: &redb::WriteTransaction,
    table: &TableDef,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    get::<K, V>(&tx.open_table(definition::<K, V>(table))?, key)
}

fn write_range<K: RedbKey, V: RedbValue>(
    tx: &redb::WriteTransaction,
    table: &TableDef,
    scan: Scan<'_>,
) -> Result<Vec<Row>, StorageError> {
    range::<K, V>(&tx.open_table(definition::<K, V>(table))?, scan)
}

fn insert<K: RedbKey, V: RedbValue>(
    tx: &redb::WriteTransaction,
    table: &TableDef,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    let key = K::decode(key)?;
    let value = V::decode(value)?;
    let mut t = tx.open_table(definition::<K, V>(table))?;
    let old = t.insert(key.borrow(), value.borrow())?;
    Ok(old.map(|v| V::encode_redb(v.value())))
}

fn remove<K: RedbKey, V: RedbValue>(
    tx: &redb::WriteTransaction,
    table: &TableDef,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    let key = K::decode(key)?;
    let mut t = tx.open_table(definition::<K, V>(table))?;
    let old = t.remove(key.borrow())?;
    Ok(old.map(|v| V::encode_redb(v.value())))
}

fn create<K: RedbKey, V: RedbValue>(
    tx: &redb::WriteTransaction,
    table: &TableDef,
) -> Result<bool, StorageError> {
    let existed = tx.list_tables()?.any(|t| t.name() == table.name);
    tx.open_table(definition::<K, V>(table))?;
    Ok(!existed)
}

impl ReadTx for Read {
    fn get(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        typed!(table, read_get(&self.0, table, key))
    }

    fn range(&self, table: &TableDef, scan: Scan<'_>) -> Result<Vec<Row>, StorageError> {
        typed!(table, read_range(&self.0, table, scan))
    }
}

impl ReadTx for Write {
    fn get(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        typed!(table, write_get(&self.0, table, key))
    }

    fn range(&self, table: &TableDef, scan: Scan<'_>) -> Result<Vec<Row>, StorageError> {
        typed!(table, write_range(&self.0, table, scan))
    }
}

impl WriteTx for Write {
    fn insert(
        &self,
        table: &TableDef,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        typed!(table, insert(&self.0, table, key, value))
    }

    fn remove(&self, table: &TableDef, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        typed!(table, remove(&self.0, table, key))
    }

    fn create_table(&self, table: &TableDef) -> Result<bool, StorageError> {
        typed!(table, create(&self.0, table))
    }

    fn commit(self: Box<Self>) -> Result<(), StorageError> {
        self.0.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use oci::media_type::OCI_MANIFEST;
    use oci::name::RepoName;
    use oci::reference::Reference;
    use oci::{Digest, Origin};
    use redb::{Database, ReadableTable, TableDefinition};

    use crate::storage::test_support::push_blob;
    use crate::storage::{Limits, Store};

    // The tables exactly as the metadata defined them before the key-value contract.
    const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
    const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
    const REPO_BLOBS: TableDefinition<(&str, &str), (u64, u64)> =
        TableDefinition::new("repo_blobs");
    const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
    const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

    /// A data directory whose `meta.redb` was written with redb's typed tables directly (as
    /// the metadata was before the contract) opens and reads exactly as before, and what the
    /// contract writes reads back through those typed tables: the format did not change.
    #[test]
    fn a_data_directory_written_before_the_contract_opens_and_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let repo: RepoName = "old/app".parse().unwrap();
        // The blobs and the manifest's bytes, as the store keeps them (the metadata that
        // pushing them wrote is replaced below).
        let (config, body) = {
            let store = Store::open(dir.path(), Limits::default()).unwrap();
            let config = push_blob(&store, &repo, b"{}");
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
            );
            push_blob(&store, &repo, body.as_bytes());
            (config, body)
        };
        let digest = Digest::sha256_of(body.as_bytes());
        std::fs::remove_file(dir.path().join("meta.redb")).unwrap();
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            let meta = format!(
                r#"{{"media_type":"{OCI_MANIFEST}","size":{},"refs":["{config}"],"pushed_at":1700000000}}"#,
                body.len()
            );
            let d = digest.to_string();
            let c = config.to_string();
            tx.open_table(TAGS)
                .unwrap()
                .insert(("old/app", "v1"), d.as_str())
                .unwrap();
            tx.open_table(MANIFESTS)
                .unwrap()
                .insert(("old/app", d.as_str()), meta.as_bytes())
                .unwrap();
            tx.open_table(REPO_BLOBS)
                .unwrap()
                .insert(("old/app", c.as_str()), (2, 1700000000))
                .unwrap();
            tx.open_table(REPOS)
                .unwrap()
                .insert("old/app", 1700000000)
                .unwrap();
            let change = format!(
                r#"{{"seq":41,"time":1700000000,"repo":"old/app","origin":"client","type":"tag_set","tag":"v1","digest":"{d}"}}"#
            );
            tx.open_table(CHANGES)
                .unwrap()
                .insert(41, change.as_bytes())
                .unwrap();
            tx.commit().unwrap();
        }

        let store = Store::open(dir.path(), Limits::default()).unwrap();
        let found = store
            .get_manifest(&repo, &Reference::Tag("v1".into()))
            .unwrap()
            .expect("the old tag resolves");
        assert_eq!(found.digest, digest);
        assert_eq!(found.body, Bytes::from(body.clone()));
        assert_eq!(store.tags(&repo).unwrap(), ["v1"]);
        assert_eq!(store.repos().unwrap(), ["old/app"]);
        assert_eq!(store.repo_blob(&repo, &config).unwrap(), Some(2));
        let page = store.change_page(0, 10).unwrap();
        assert_eq!((page.oldest, page.head, page.changes.len()), (41, 41, 1));
        // Written through the contract: the next sequence number follows the old log.
        store
            .put_manifest(
                &repo,
                &Reference::Tag("v2".into()),
                None,
                Bytes::from(body),
                Origin::Client,
            )
            .unwrap();
        assert_eq!(store.change_page(41, 10).unwrap().changes[0].seq, 42);
        drop(store);

        let db = Database::open(dir.path().join("meta.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let tags = tx.open_table(TAGS).unwrap();
        let v2 = tags.get(("old/app", "v2")).unwrap().unwrap();
        assert_eq!(v2.value(), digest.to_string());
        let changes = tx.open_table(CHANGES).unwrap();
        assert_eq!(changes.last().unwrap().unwrap().0.value(), 42);
    }
}
