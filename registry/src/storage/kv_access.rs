//! The access store (scope maps, tokens, child definitions, signing keys: the `access` crate's
//! [`AccessStore`] contract) in the metadata's key-value backend, so replicas sharing the
//! metadata on PostgreSQL share one token set: a token made through one replica logs in on
//! every other, and every replica signs and verifies access tokens with the same key.
//!
//! Two tables beside the content's: `access`, the same entries `access.redb` holds (kind and
//! name to JSON), and `access_version`, one counter moved by every write that changed an entry,
//! which is what a replica reads every `--access-refresh` to learn that another one changed the
//! set. A write is one write transaction of the backend (on PostgreSQL, after the advisory lock
//! every metadata write takes), so it sees every change committed before it and no two run at
//! once: two replicas making the first signing key at the same moment make one.
//!
//! With redb metadata (the default) the access store stays `DATA/access.redb`
//! ([`access::AccessFile`]); [`open`] answers `None` there.

use std::sync::Arc;

use access::store::{AccessStore, Change, Entries, StoreError, Version};

use super::backends::MetadataBackend;
use super::kv::{self, Kv, Table};
use super::StorageError;

/// kind and name -> the entry's JSON.
const ACCESS: Table<(String, String), Vec<u8>> = Table::new("access");
/// [`VERSION_KEY`] -> the set's version.
const ACCESS_VERSION: Table<String, u64> = Table::new("access_version");
const VERSION_KEY: &str = "version";

/// Connections of the access store's own pool: the refresh's reads and the rare writes (the
/// content's metadata keeps its `--metadata-connections` for requests).
const CONNECTIONS: usize = 2;

/// The access store in the shared metadata when `metadata` is shared (PostgreSQL), with a pool
/// of its own; `None` with redb. Connects (and creates its tables) now, so a server that
/// cannot be reached fails here, naming it.
pub fn open(metadata: &MetadataBackend) -> Result<Option<Arc<dyn AccessStore>>, StorageError> {
    let MetadataBackend::Postgres(settings) = metadata else {
        return Ok(None);
    };
    let mut settings = (**settings).clone();
    settings.connections = settings.connections.min(CONNECTIONS);
    let backend = kv::in_postgres::PostgresBackend::open(settings)?;
    Ok(Some(Arc::new(KvAccessStore::new(Kv::new(Box::new(
        backend,
    )))?)))
}

/// The access store on a key-value backend.
pub(crate) struct KvAccessStore {
    kv: Kv,
}

/// A metadata error as the access store reports it (PostgreSQL and the host are named, the
/// password never).
fn store_err(e: StorageError) -> StoreError {
    StoreError::Db(e.to_string())
}

impl KvAccessStore {
    /// The store on `kv`, its tables made when missing.
    pub(crate) fn new(kv: Kv) -> Result<KvAccessStore, StorageError> {
        kv.write(|tx| {
            tx.create_table(ACCESS.def())?;
            tx.create_table(ACCESS_VERSION.def())?;
            Ok(())
        })?;
        Ok(KvAccessStore { kv })
    }
}

fn entries(tx: &kv::Read<'_>) -> Result<Entries, StorageError> {
    tx.iter(ACCESS).collect()
}

impl AccessStore for KvAccessStore {
    fn read(&self) -> Result<(Entries, Version), StoreError> {
        self.kv
            .read(|tx| {
                let version = tx.get(ACCESS_VERSION, VERSION_KEY)?.unwrap_or(0);
                Ok((entries(tx)?, version))
            })
            .map_err(store_err)
    }

    fn version(&self) -> Result<Version, StoreError> {
        self.kv
            .read(|tx| Ok(tx.get(ACCESS_VERSION, VERSION_KEY)?.unwrap_or(0)))
            .map_err(store_err)
    }

    fn write(&self, change: &mut Change<'_>) -> Result<Version, StoreError> {
        // The change's own error, carried past the backend's (which only ends the transaction).
        let mut refused = None;
        let written = self.kv.write(|tx| {
            let version = tx.get(ACCESS_VERSION, VERSION_KEY)?.unwrap_or(0);
            let before = entries(tx)?;
            let changes = match change(&before) {
                Ok(changes) => changes,
                Err(e) => {
                    refused = Some(e);
                    return Err(StorageError::Db("the access change was refused".into()));
                }
            };
            if changes.is_empty() {
                return Ok(version);
            }
            for (kind, name) in &changes.removed {
                tx.remove(ACCESS, (kind.as_str(), name.as_str()))?;
            }
            for ((kind, name), value) in &changes.put {
                tx.insert(ACCESS, (kind.as_str(), name.as_str()), value.as_slice())?;
            }
            tx.insert(ACCESS_VERSION, VERSION_KEY, version + 1)?;
            // A crash here must leave the set as it was before this change.
            util::crash_point::crash_point("in_access_transaction");
            Ok(version + 1)
        });
        match (written, refused) {
            (Err(_), Some(refused)) => Err(refused),
            (written, _) => written.map_err(store_err),
        }
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::on_every_backend;
    use access::{Authority, Command, Settings};

    fn create(name: &str) -> Command {
        Command::TokenCreate {
            name: name.into(),
            scope_map: Some("_repositories_admin".into()),
            rules: Vec::new(),
            status: None,
            no_passwords: false,
            expiration: None,
            for_child: None,
        }
    }

    on_every_backend! {
        /// Entries written are read back whole; the version moves only with a change; a refused
        /// change leaves nothing.
        fn keeps_the_set_and_its_version(backend) {
            let dir = tempfile::tempdir().unwrap();
            let store = KvAccessStore::new(backend.kv(dir.path())).unwrap();
            assert_eq!(store.read().unwrap(), (Entries::new(), 0));
            let authority = Authority::open_on(Arc::new(store), Settings::default()).unwrap();
            let made = authority.manage(create("ci")).unwrap();
            assert_eq!(made["name"], "ci");
            let refused = authority.manage(create("ci")).unwrap_err();
            assert!(refused.0.contains("ci"), "{refused}");
            drop(authority);

            let store = KvAccessStore::new(backend.kv(dir.path())).unwrap();
            let (snapshot, version) = access::store::load(&store).unwrap();
            assert_eq!(version, 2, "the defaults, then the token");
            assert!(snapshot.tokens.contains_key("ci"));
            assert!(snapshot.signing_key().is_some());
            let again = Authority::open_on(Arc::new(store), Settings::default()).unwrap();
            assert!(!again.reload_if_changed().unwrap(), "nothing moved");
        }
    }

    /// Replicas on one PostgreSQL database: starting together they make one signing key; a
    /// token made through one is read by the other once the version moved.
    #[test]
    fn replicas_starting_together_make_one_signing_key() {
        let backend = crate::storage::test_support::TestBackend::postgres();
        let dir = tempfile::tempdir().unwrap();
        let authorities: Vec<Authority> = std::thread::scope(|s| {
            let started: Vec<_> = (0..4)
                .map(|_| {
                    let kv = backend.kv(dir.path());
                    s.spawn(move || {
                        let store = KvAccessStore::new(kv).unwrap();
                        Authority::open_on(Arc::new(store), Settings::default()).unwrap()
                    })
                })
                .collect();
            started.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let store = KvAccessStore::new(backend.kv(dir.path())).unwrap();
        let (snapshot, version) = access::store::load(&store).unwrap();
        assert_eq!(snapshot.keys.len(), 1, "one signing key");
        assert_eq!(version, 1, "made once");
        let made_first = authorities[0]
            .manage_first_token(create("admin"), |_| Ok(()))
            .unwrap();
        assert!(made_first.is_some());
        for other in &authorities[1..] {
            assert!(
                other.reload_if_changed().unwrap(),
                "the token moved the version"
            );
            assert!(other.has_tokens());
            let again = other
                .manage_first_token(create("admin"), |_| Ok(()))
                .unwrap();
            assert!(again.is_none(), "the first token is made once");
        }
    }
}
