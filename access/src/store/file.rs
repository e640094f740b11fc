//! The access store in the data directory: `access.redb` (mode 0600), separate from the
//! content's metadata, held by one process at a time (redb's lock), so its version is counted
//! in memory: nobody else changes the file while this process has it open.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableTable, TableDefinition};

use super::{AccessStore, Change, Entries, Snapshot, StoreError, Version};

/// kind ("scope-map", "token", "child", "key") and name -> JSON.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("access");

/// The file's name in the data directory.
pub const FILE_NAME: &str = "access.redb";

/// redb's page cache for this file. The set is read whole into memory when the file opens and
/// written rarely (a token or scope map changed), so a cache buys nothing here; redb's default
/// (1 GiB, filled as pages are read or written) kept the file's 0.5 MiB allocator page resident
/// for the life of the process, a sixth of an idle `serve`'s heap.
const CACHE_BYTES: usize = 256 * 1024;

pub struct AccessFile {
    db: Database,
    /// Changes kept since this process opened the file.
    version: AtomicU64,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl AccessFile {
    /// Opens (or creates) `dir/access.redb`.
    pub fn open(dir: &Path) -> Result<AccessFile, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::InUse { path: path.clone() }
                }
                source => StoreError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        restrict_to_owner(&path);
        Ok(AccessFile {
            db,
            version: AtomicU64::new(0),
        })
    }

    /// The kept set.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        super::load(self).map(|(snapshot, _)| snapshot)
    }

    /// Replaces what is kept with `snapshot`, in one transaction (tools and tests that build a
    /// set whole; a running registry changes it through [`super::update`]).
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let after = snapshot.to_entries();
        self.write(&mut |before| Ok(super::Changes::between(before, &after)))
            .map(|_| ())
    }
}

fn read_entries(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<Entries, StoreError> {
    let mut entries = Entries::new();
    for entry in table.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let (kind, name) = key.value();
        entries.insert((kind.to_owned(), name.to_owned()), value.value().to_vec());
    }
    Ok(entries)
}

impl AccessStore for AccessFile {
    fn read(&self) -> Result<(Entries, Version), StoreError> {
        let version = self.version.load(Ordering::Acquire);
        let txn = self.db.begin_read().map_err(db_err)?;
        let entries = match txn.open_table(ENTRIES) {
            Ok(table) => read_entries(&table)?,
            Err(redb::TableError::TableDoesNotExist(_)) => Entries::new(),
            Err(e) => return Err(db_err(e)),
        };
        Ok((entries, version))
    }

    fn version(&self) -> Result<Version, StoreError> {
        Ok(self.version.load(Ordering::Acquire))
    }

    fn write(&self, change: &mut Change<'_>) -> Result<Version, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(db_err)?;
            let before = read_entries(&table)?;
            let changes = change(&before)?;
            if changes.is_empty() {
                // Dropped uncommitted: nothing to keep, no flush to pay.
                return Ok(self.version.load(Ordering::Acquire));
            }
            for (kind, name) in &changes.removed {
                table
                    .remove((kind.as_str(), name.as_str()))
                    .map_err(db_err)?;
            }
            for ((kind, name), value) in &changes.put {
                table
                    .insert((kind.as_str(), name.as_str()), value.as_slice())
                    .map_err(db_err)?;
            }
        }
        // A crash here must leave the set as it was before this change (the commit is the
        // only moment the new set becomes durable).
        util::crash_point::crash_point("in_access_transaction");
        txn.commit().map_err(db_err)?;
        Ok(self.version.fetch_add(1, Ordering::AcqRel) + 1)
    }

    fn is_shared(&self) -> bool {
        false
    }
}

/// The file holds password hashes and signing keys: only its owner reads it.
fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(err) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), %err, "cannot restrict the access store to its owner");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::SigningKey;
    use crate::scope_map::ScopeMap;
    use crate::token::Token;

    #[test]
    fn saves_and_loads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccessFile::open(dir.path()).unwrap();
        assert!(store.load().unwrap().tokens.is_empty());
        let mut snap = Snapshot::default();
        let map = ScopeMap::new("m", "d", vec![]).unwrap();
        snap.scope_maps.insert("m".into(), map);
        snap.tokens
            .insert("t".into(), Token::new("t", "m").unwrap());
        let mut old = SigningKey::generate(1);
        old.retired = Some(5);
        snap.keys = vec![old, SigningKey::generate(2)];
        store.save(&snap).unwrap();
        assert_eq!(store.version().unwrap(), 1);
        store.save(&snap).unwrap();
        assert_eq!(
            store.version().unwrap(),
            1,
            "nothing to write: nothing kept"
        );
        drop(store);
        let store = AccessFile::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.tokens["t"], snap.tokens["t"]);
        assert_eq!(loaded.signing_key().unwrap().kid, snap.keys[1].kid);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            AccessFile::open(dir.path()),
            Err(StoreError::InUse { .. })
        ));
    }

    #[test]
    fn a_refused_change_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccessFile::open(dir.path()).unwrap();
        let refused = super::super::update(&store, |next| {
            next.tokens
                .insert("t".into(), Token::new("t", "m").unwrap());
            Err::<(), _>(crate::ManageError("no".into()))
        });
        assert!(matches!(refused, Err(StoreError::Refused(_))));
        assert!(store.load().unwrap().tokens.is_empty());
        assert_eq!(store.version().unwrap(), 0);
    }
}
