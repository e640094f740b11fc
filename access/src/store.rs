//! Where scope maps, tokens and signing keys are kept: `access.redb` in the data directory
//! (mode 0600), separate from the content's metadata. The whole set is small (a few hundred
//! entries at most), so it is read whole at start and written whole per change, in one
//! transaction: a crash leaves the old set or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::child::Child;
use crate::jwt::SigningKey;
use crate::scope_map::ScopeMap;
use crate::token::Token;

/// kind ("scope-map", "token", "child", "key") and name -> JSON.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("access");

/// The file's name in the data directory.
pub const FILE_NAME: &str = "access.redb";

/// Everything kept, as one value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub scope_maps: BTreeMap<String, ScopeMap>,
    pub tokens: BTreeMap<String, Token>,
    /// Child registries defined here (`child create`), by name.
    #[serde(default)]
    pub children: BTreeMap<String, Child>,
    /// The signing key last, older (retired) ones before it.
    pub keys: Vec<SigningKey>,
}

impl Snapshot {
    /// The key that signs now.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.last()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// Another process holds the file (a `serve` on this data directory).
    #[error("{path} is in use by another process (a running serve on this data directory)")]
    InUse { path: PathBuf },
    #[error("access store: {0}")]
    Db(String),
}

pub struct AccessStore {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl AccessStore {
    /// Opens (or creates) `dir/access.redb`.
    pub fn open(dir: &Path) -> Result<AccessStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            source => StoreError::Open {
                path: path.clone(),
                source,
            },
        })?;
        restrict_to_owner(&path);
        Ok(AccessStore { db })
    }

    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut snapshot = Snapshot::default();
        let table = match txn.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(snapshot),
            Err(e) => return Err(db_err(e)),
        };
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (kind, name) = key.value();
            let bytes = value.value();
            let bad = |e: serde_json::Error| db_err(format!("entry {kind} {name}: {e}"));
            match kind {
                "scope-map" => {
                    snapshot
                        .scope_maps
                        .insert(name.to_owned(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                "token" => {
                    snapshot
                        .tokens
                        .insert(name.to_owned(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                "child" => {
                    snapshot
                        .children
                        .insert(name.to_owned(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                "key" => snapshot
                    .keys
                    .push(serde_json::from_slice(bytes).map_err(bad)?),
                _ => {}
            }
        }
        // Keys are stored by kid: order them by age, the signing one (never retired) last.
        snapshot
            .keys
            .sort_by_key(|k| (k.retired.is_none(), k.created));
        Ok(snapshot)
    }

    /// Replaces what is kept with `snapshot`, in one transaction.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(db_err)?;
            table.retain(|_, _| false).map_err(db_err)?;
            for (name, map) in &snapshot.scope_maps {
                table
                    .insert(("scope-map", name.as_str()), json(map).as_slice())
                    .map_err(db_err)?;
            }
            for (name, token) in &snapshot.tokens {
                table
                    .insert(("token", name.as_str()), json(token).as_slice())
                    .map_err(db_err)?;
            }
            for (name, child) in &snapshot.children {
                table
                    .insert(("child", name.as_str()), json(child).as_slice())
                    .map_err(db_err)?;
            }
            for key in &snapshot.keys {
                table
                    .insert(("key", key.kid.as_str()), json(key).as_slice())
                    .map_err(db_err)?;
            }
        }
        // A crash here must leave the set as it was before this change (the commit is the
        // only moment the new set becomes durable).
        util::crash_point::crash_point("in_access_transaction");
        txn.commit().map_err(db_err)
    }
}

/// A stored value as JSON (plain structs of strings and numbers: this cannot fail).
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
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

    #[test]
    fn saves_and_loads_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccessStore::open(dir.path()).unwrap();
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
        drop(store);
        let store = AccessStore::open(dir.path()).unwrap();
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
            AccessStore::open(dir.path()),
            Err(StoreError::InUse { .. })
        ));
    }
}
