//! Reconciling the local store with what sync recorded. A parent's change feed names what
//! changed *there*; it cannot say that a client deleted or moved a synced tag *here*, or that
//! the disk was restored from a backup. Before a feed pass this finds such drift:
//! - client changes in the local change log (after the last sequence looked at) to tags of
//!   repositories in scope: those tags are compared with the parent again;
//! - once per process start, every tag sync recorded against the local store (a store
//!   changed while the registry was stopped);
//! - tags the store evicted to stay under its quota that a client asked for since: they come
//!   back;
//! - a change log that is older than sync's record of it (restored from backup) or that
//!   lost entries sync never looked at (pruned): everything is compared.
//!
//! The periodic full comparison (`reconcileInterval`) is the safety net behind all three.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use crate::engine::{blocking, Engine, SyncError};
use oci::{ChangeKind, Origin, Reference};

/// Local change-log entries read per batch.
const BATCH: usize = 1000;

/// More local client changes than this since the last look and a full comparison is cheaper.
const MAX_LOCAL_CHANGES: usize = 100_000;

/// What drifted locally, in repositories in scope.
#[derive(Debug, Default)]
pub(crate) struct Drift {
    /// Tags to compare with the parent again, per repository.
    pub tags: BTreeMap<String, BTreeSet<String>>,
    /// Repositories to compare whole (a manifest deleted here took its tags with it).
    pub repos: BTreeSet<String>,
    /// Compare everything, and why.
    pub everything: Option<String>,
    /// The local change log's newest sequence when this was computed: where the next look starts
    /// once this drift is reconciled.
    pub head: u64,
}

/// Finds what drifted since the last look (see the module docs).
pub(crate) async fn local_drift(engine: &Engine) -> Result<Drift, SyncError> {
    let seen = engine.state.read(|s| s.reconciled_seq);
    let (oldest, head) = blocking(&engine.store, |s| s.change_bounds()).await?;
    let mut drift = Drift {
        head,
        ..Drift::default()
    };
    if head < seen {
        drift.everything = Some(format!(
            "the local change log ends at {head} but sync looked up to {seen}: the store is older \
             than sync's record of it (restored from a backup?)"
        ));
        return Ok(drift);
    }
    if oldest > seen.saturating_add(1) {
        drift.everything = Some(format!(
            "local changes {}..{} were pruned before sync looked at them",
            seen + 1,
            oldest - 1
        ));
        return Ok(drift);
    }
    let mut after = seen;
    let mut read = 0usize;
    while after < head {
        let changes = blocking(&engine.store, move |s| s.changes(after, BATCH)).await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            break;
        };
        read += changes.len();
        if read > MAX_LOCAL_CHANGES {
            drift.everything = Some(format!("{read} local changes since the last look"));
            return Ok(drift);
        }
        for change in changes.into_iter().filter(|c| c.origin == Origin::Client) {
            if engine.rule_for(&change.repo).is_none() {
                continue;
            }
            match change.kind {
                ChangeKind::TagSet { tag, .. } | ChangeKind::TagDeleted { tag } => {
                    drift.tags.entry(change.repo).or_default().insert(tag);
                }
                // A deleted manifest may have carried tags; an unknown kind may have moved any.
                ChangeKind::ManifestDeleted { .. } | ChangeKind::Unknown => {
                    drift.repos.insert(change.repo);
                }
                // A manifest stored by digest moves no tag sync manages; a lock moves none.
                ChangeKind::ManifestPut { .. } | ChangeKind::AttributesSet { .. } => {}
            }
        }
        after = last;
    }
    for (repo, tag) in blocking(&engine.store, |s| s.demanded_evictions()).await? {
        if engine.rule_for(&repo).is_some() {
            drift.tags.entry(repo).or_default().insert(tag);
        }
    }
    if !engine.audited.load(Ordering::Relaxed) {
        audit(engine, &mut drift).await?;
    }
    Ok(drift)
}

/// Adds every tag sync recorded whose local tag is gone or points elsewhere.
async fn audit(engine: &Engine, drift: &mut Drift) -> Result<(), SyncError> {
    let recorded: Vec<(String, String, oci::Digest)> = engine.state.read(|s| {
        s.synced_tags
            .iter()
            .flat_map(|(repo, tags)| {
                tags.iter()
                    .map(move |(tag, d)| (repo.clone(), tag.clone(), d.clone()))
            })
            .collect()
    });
    let drifted = blocking(&engine.store, move |s| {
        let mut out = Vec::new();
        for (repo, tag, digest) in recorded {
            let local = s.get_manifest(&repo, &Reference::Tag(tag.clone()))?;
            if local.is_none_or(|m| m.digest != digest) {
                out.push((repo, tag));
            }
        }
        Ok(out)
    })
    .await?;
    for (repo, tag) in drifted {
        if engine.rule_for(&repo).is_some() {
            drift.tags.entry(repo).or_default().insert(tag);
        }
    }
    Ok(())
}

/// Records that the drift found up to `head` is reconciled (call only after a pass that
/// reflected it without errors).
pub(crate) fn reconciled(engine: &Engine, head: u64) -> Result<(), SyncError> {
    engine.audited.store(true, Ordering::Relaxed);
    if engine.state.read(|s| s.reconciled_seq) != head {
        engine.state.update(|s| s.reconciled_seq = head)?;
    }
    Ok(())
}
