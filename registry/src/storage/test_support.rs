//! Helpers shared by the storage unit tests (compiled for tests only).

use oci::digest::Digest;
use oci::name::RepoName;

use crate::storage::Store;

/// Uploads `data` into `repo` through a session, as a client's push does; returns its digest.
pub(crate) fn push_blob(store: &Store, repo: &RepoName, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let session = store.new_upload(repo).unwrap();
    let mut session = session.blocking_lock();
    session.append(data).unwrap();
    store.finish_upload(&mut session, &digest).unwrap();
    digest
}
