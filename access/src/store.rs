//! Where scope maps, tokens, child definitions and signing keys are kept, as a contract
//! ([`AccessStore`]) so the set can live in the data directory (`access.redb`, [`AccessFile`],
//! the default) or in the metadata several replicas share (the registry's key-value backend on
//! PostgreSQL, `registry::storage::kv_access`). The whole set is small (a few hundred entries at
//! most): it is read whole and changed in one write transaction, which sees the set as it is
//! then, so a crash leaves the old set or the new one, and two processes changing it at once
//! (two replicas making their first signing key) never lose one another's change.
//!
//! Both implementations keep the same entries: kind (`scope-map`, `token`, `child`, `key`) and
//! name to the value as JSON ([`Snapshot::to_entries`], [`Snapshot::from_entries`]); a write
//! stores only the entries that differ. A version moves with every change kept, so a process
//! sharing the store learns that another one changed it by reading one number.

mod file;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::child::Child;
use crate::jwt::SigningKey;
use crate::manage::ManageError;
use crate::scope_map::ScopeMap;
use crate::token::Token;

pub use file::{AccessFile, FILE_NAME};

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

/// An entry's kind and name.
pub type EntryKey = (String, String);

/// The kept entries: kind and name to the value as JSON.
pub type Entries = BTreeMap<EntryKey, Vec<u8>>;

const SCOPE_MAP: &str = "scope-map";
const TOKEN: &str = "token";
const CHILD: &str = "child";
const KEY: &str = "key";

impl Snapshot {
    /// The snapshot the entries hold; an entry of an unknown kind is skipped (a newer version's).
    pub fn from_entries(entries: &Entries) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        for ((kind, name), bytes) in entries {
            let bad = |e: serde_json::Error| StoreError::Db(format!("entry {kind} {name}: {e}"));
            match kind.as_str() {
                SCOPE_MAP => {
                    snapshot
                        .scope_maps
                        .insert(name.clone(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                TOKEN => {
                    snapshot
                        .tokens
                        .insert(name.clone(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                CHILD => {
                    snapshot
                        .children
                        .insert(name.clone(), serde_json::from_slice(bytes).map_err(bad)?);
                }
                KEY => snapshot
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

    /// The entries that keep this snapshot.
    pub fn to_entries(&self) -> Entries {
        let mut entries = Entries::new();
        let mut put = |kind: &str, name: &str, bytes: Vec<u8>| {
            entries.insert((kind.to_owned(), name.to_owned()), bytes);
        };
        for (name, map) in &self.scope_maps {
            put(SCOPE_MAP, name, json(map));
        }
        for (name, token) in &self.tokens {
            put(TOKEN, name, json(token));
        }
        for (name, child) in &self.children {
            put(CHILD, name, json(child));
        }
        for key in &self.keys {
            put(KEY, &key.kid, json(key));
        }
        entries
    }
}

/// A stored value as JSON (plain structs of strings and numbers: this cannot fail).
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// What one write transaction changes: entries set and entries removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub put: Vec<(EntryKey, Vec<u8>)>,
    pub removed: Vec<EntryKey>,
}

impl Changes {
    /// What turns `before` into `after` (entries that did not change are not written again).
    pub fn between(before: &Entries, after: &Entries) -> Changes {
        Changes {
            put: after
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(*value))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            removed: before
                .keys()
                .filter(|key| !after.contains_key(*key))
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.removed.is_empty()
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
    /// The change itself was refused (a management command's error): nothing was kept.
    #[error("{0}")]
    Refused(ManageError),
}

/// The version of a kept set: moves with every change kept.
pub type Version = u64;

/// A change given to [`AccessStore::write`]: the entries as kept, to the writes to make.
pub type Change<'a> = dyn FnMut(&Entries) -> Result<Changes, StoreError> + 'a;

/// Where the access set is kept.
pub trait AccessStore: Send + Sync {
    /// Every entry, and the version they are at, read in one snapshot.
    fn read(&self) -> Result<(Entries, Version), StoreError>;

    /// The version the kept set is at now (cheap: asked every `--access-refresh` by each
    /// process sharing the store).
    fn version(&self) -> Result<Version, StoreError>;

    /// One write transaction: `change` gets the entries as they are now (every change kept
    /// before is in them, whichever process made it) and answers the writes, made with the
    /// version moved and committed together; on its error nothing is written. Writes run one at
    /// a time, across every process sharing the store; `change` may run more than once (a
    /// transaction run again after the store was briefly unreachable). Returns the version the
    /// set is at after it (unchanged when there was nothing to write).
    fn write(&self, change: &mut Change<'_>) -> Result<Version, StoreError>;

    /// Whether other processes change the set too (then a running registry re-reads it when
    /// its version moved).
    fn is_shared(&self) -> bool;
}

/// The kept set as a snapshot, and its version.
pub fn load(store: &dyn AccessStore) -> Result<(Snapshot, Version), StoreError> {
    let (entries, version) = store.read()?;
    Ok((Snapshot::from_entries(&entries)?, version))
}

/// Runs `change` on the kept set in one write transaction and keeps what it made of it (all of
/// it, or on an error nothing); the set after it, its version and `change`'s answer.
pub fn update<T>(
    store: &dyn AccessStore,
    mut change: impl FnMut(&mut Snapshot) -> Result<T, ManageError>,
) -> Result<(Snapshot, Version, T), StoreError> {
    let mut done = None;
    let version = store.write(&mut |entries| {
        let mut next = Snapshot::from_entries(entries)?;
        let answer = change(&mut next).map_err(StoreError::Refused)?;
        let changes = Changes::between(entries, &next.to_entries());
        done = Some((next, answer));
        Ok(changes)
    })?;
    let (next, answer) = done.ok_or_else(|| {
        StoreError::Db("the write transaction ended without running the change".into())
    })?;
    Ok((next, version, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_changes_name_only_what_differs() {
        let mut snap = Snapshot::default();
        snap.scope_maps
            .insert("m".into(), ScopeMap::new("m", "d", vec![]).unwrap());
        snap.tokens
            .insert("t".into(), Token::new("t", "m").unwrap());
        let mut old = SigningKey::generate(1);
        old.retired = Some(5);
        snap.keys = vec![SigningKey::generate(2), old];
        let entries = snap.to_entries();
        let back = Snapshot::from_entries(&entries).unwrap();
        assert_eq!(back.tokens["t"], snap.tokens["t"]);
        assert_eq!(
            back.signing_key().unwrap().kid,
            snap.keys[0].kid,
            "signing key last"
        );

        let mut next = back.clone();
        next.tokens.remove("t");
        next.tokens
            .insert("u".into(), Token::new("u", "m").unwrap());
        let changes = Changes::between(&entries, &next.to_entries());
        assert_eq!(changes.removed, [(TOKEN.to_owned(), "t".to_owned())]);
        assert_eq!(changes.put.len(), 1, "only the new token: {changes:?}");
        assert!(Changes::between(&entries, &back.to_entries()).is_empty());

        let mut unknown = entries.clone();
        unknown.insert(("later-kind".into(), "x".into()), b"{}".to_vec());
        assert!(
            Snapshot::from_entries(&unknown).is_ok(),
            "a newer kind is skipped"
        );
    }
}
