//! Named crash points: a test aid that aborts the process at a chosen place in the write path,
//! so the crash tests (`tests/torture.rs`) can prove that a crash *there* loses nothing that was
//! acknowledged and leaves nothing half-written visible. It is not a user setting: nothing
//! documents it as one, and an operator has no reason to set it.
//!
//! The switch is the environment variable [`ENV`], read once (on the first point reached):
//! `CONNECTED_REGISTRY_CRASH_AT=NAME` aborts the first time point `NAME` is reached,
//! `NAME:N` the N-th time. Unset, a point costs one check of an already initialised
//! `OnceLock`. The abort is `std::process::abort`: no destructors, no flushes, no clean
//! shutdown, as close to `kill -9` or a power loss as a process can do to itself.
//!
//! | point | where | what a crash there must not break |
//! | --- | --- | --- |
//! | `after_blob_fsync` | registry uploads: a blob's bytes verified and fsynced, not yet renamed into place | the blob is not visible (its upload was not acknowledged) |
//! | `after_blob_rename` | registry blobs: a blob or manifest file renamed into place and its directory fsynced, metadata not yet written | no repository serves it until its metadata commits |
//! | `in_meta_transaction` | registry metadata: a manifest put, tag deletion or blob link written in the redb transaction, before the commit | the transaction leaves nothing (the earlier state stays whole) |
//! | `in_gc_transaction` | registry GC: untagged manifests or stale blob links removed in the redb transaction, before the commit | nothing is removed (the transaction leaves nothing); no tagged manifest or anything it references is touched either way |
//! | `after_eviction_commit` | registry quota: a tag's eviction committed (tag, manifests, links gone; `evicted` row written), its blob files not deleted yet | the store opens as it is; the tag stays evicted; the files are garbage GC collects |
//! | `in_access_transaction` | access store: the whole new set of scope maps, tokens and signing keys written in the redb transaction, before the commit | the transaction leaves nothing: the old set stays whole (no token half made, no password half replaced, the signing key kept) |
//! | `after_access_commit` | access store: a management command's change committed, not yet live nor answered | the next start serves the change whole; the caller heard nothing and finds it done |
//! | `sync_before_tag_recorded` | sync: content of tags brought down is in the store, the state file does not record them yet | the next pass finds them in step; no tag is recorded as synced without its content |
//! | `sync_after_push_up` | sync: a local manifest or tag pushed to the parent, the state file does not record it yet | the next pass finds it at the parent and does not push it again |
//! | `bundle_blob_chunk` | `bundle import`: a chunk of a blob appended to its upload session, the blob not verified yet | the next import continues the blob from the bytes on disk, verifies it whole, and reads none of those bytes from the bundle again |
//! | `bundle_blob_stored` | `bundle import`: a blob of the bundle verified and stored, before the next blob and before any manifest or tag | the next import skips the stored blobs (no byte of them read again); no tag points at content that is not whole |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms one crash point: `NAME` or `NAME:N`.
pub const ENV: &str = "CONNECTED_REGISTRY_CRASH_AT";

/// The armed point: its name, on which arrival to abort, and arrivals so far.
struct Armed {
    name: String,
    abort_on: u64,
    reached: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Parses `NAME` or `NAME:N` (N from 1); `None` for an empty or malformed value.
fn parse(value: &str) -> Option<Armed> {
    let (name, abort_on) = match value.rsplit_once(':') {
        Some((name, n)) => (name, n.parse().ok().filter(|&n| n > 0)?),
        None => (value, 1),
    };
    (!name.is_empty()).then(|| Armed {
        name: name.to_owned(),
        abort_on,
        reached: AtomicU64::new(0),
    })
}

/// Marks the named point: aborts the process if [`ENV`] armed it and this is the arrival it
/// names; otherwise does nothing.
pub fn crash_point(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().as_deref().and_then(parse));
    let Some(armed) = armed else { return };
    if armed.name != name {
        return;
    }
    let arrival = armed.reached.fetch_add(1, Ordering::SeqCst) + 1;
    if arrival == armed.abort_on {
        eprintln!("{ENV}: crash point {name} reached (arrival {arrival}): aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_a_count() {
        let a = parse("after_blob_fsync").unwrap();
        assert_eq!((a.name.as_str(), a.abort_on), ("after_blob_fsync", 1));
        let a = parse("in_meta_transaction:3").unwrap();
        assert_eq!((a.name.as_str(), a.abort_on), ("in_meta_transaction", 3));
        assert!(parse("").is_none());
        assert!(parse("x:0").is_none());
        assert!(parse("x:many").is_none());
    }

    #[test]
    fn an_unarmed_point_returns() {
        // The test process does not set the variable: reaching any point is a no-op.
        crash_point("after_blob_fsync");
    }
}
