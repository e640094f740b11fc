//! What a site holds (`bundle state`), for the shore to export only the difference: the
//! digests of every blob and manifest file in its store, and each repository's tags. Small: a
//! digest is 71 bytes, and a thousand images hold a few thousand files.

use std::collections::{BTreeMap, BTreeSet};

use oci::{Digest, Reference, RepoName};
use registry::Store;
use serde::{Deserialize, Serialize};

use crate::BundleError;

/// The state file's `format`, so a file of another kind is refused by name.
pub const STATE_FORMAT: &str = "connected-registry-bundle-state/1";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    /// Every blob and manifest file the site's store holds.
    pub blobs: BTreeSet<Digest>,
    /// Repository → tag → manifest digest.
    pub repositories: BTreeMap<String, BTreeMap<String, Digest>>,
}

impl State {
    /// Reads a state file, refusing one that is not.
    pub fn parse(bytes: &[u8], shown: &str) -> Result<State, BundleError> {
        let state: State = serde_json::from_slice(bytes).map_err(|e| {
            BundleError::Invalid(format!(
                "{shown} is not a bundle state ({e}): make it on the site with `connected-registry bundle state -o FILE`"
            ))
        })?;
        if state.format != STATE_FORMAT {
            return Err(BundleError::Invalid(format!(
                "{shown} is a state of format {:?}, this version reads {STATE_FORMAT:?}",
                state.format
            )));
        }
        Ok(state)
    }

    pub fn holds(&self, digest: &Digest) -> bool {
        self.blobs.contains(digest)
    }
}

/// The state of `store`.
pub fn state(store: &Store) -> Result<State, BundleError> {
    let mut state = State {
        format: STATE_FORMAT.into(),
        ..State::default()
    };
    state
        .blobs
        .extend(store.list_blobs()?.blobs.into_iter().map(|(d, _)| d));
    for repository in store.repos_visible("", usize::MAX, &|_| true, true)? {
        let Ok(name) = repository.parse::<RepoName>() else {
            continue;
        };
        let mut tags = BTreeMap::new();
        for tag in store.tags(&name)? {
            if let Some(m) = store.get_manifest(&name, &Reference::Tag(tag.clone()))? {
                tags.insert(tag, m.digest);
            }
        }
        state.repositories.insert(repository, tags);
    }
    Ok(state)
}
