//! Upward push (ReadWrite, store and forward): manifests clients pushed here, read from the
//! local change log after the last sequence pushed, go to the parent blobs first (skipping what
//! the parent has), then child manifests, then the manifest and its tag. The sequence only
//! advances after a change is fully at the parent, so nothing is lost while it is unreachable.
//! A tag the parent moved meanwhile is a conflict: the parent's tag stays, the local manifest
//! goes up by digest, and the conflict is reported.

use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::client::Uploaded;
use crate::engine::{blocking, Engine, SyncError};
use crate::parent::ChunkedUpload;
use crate::pass::Pass;
use crate::state::Conflict;
use oci::manifest::{self, Content};
use oci::Digest;
use oci::{ChangeKind, Origin};

/// Change-log entries read per batch.
const BATCH: usize = 256;

pub(crate) async fn push_up(engine: &Engine, pass: &Pass) -> Result<(), SyncError> {
    loop {
        pass.check()?;
        let after = engine.state.read(|s| s.pushed_seq);
        let changes = blocking(&engine.store, move |s| s.changes(after, BATCH)).await?;
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            if change.origin == Origin::Client && engine.client.accepts_push(&change.repo) {
                let repo = change.repo.as_str();
                match &change.kind {
                    ChangeKind::TagSet { tag, digest } => {
                        push_tag(engine, pass, repo, tag, digest).await?;
                    }
                    ChangeKind::ManifestPut { digest, .. } => {
                        push_manifest(engine, pass, repo, digest).await?;
                    }
                    // Deletions stay local: a child never deletes content at its parent; locks
                    // come down from the parent, never go up; a kind this build does not know
                    // names nothing it could push.
                    ChangeKind::TagDeleted { .. }
                    | ChangeKind::ManifestDeleted { .. }
                    | ChangeKind::AttributesSet { .. }
                    | ChangeKind::Unknown => {}
                }
            }
            let seq = change.seq;
            engine.state.update(move |s| s.pushed_seq = seq)?;
        }
    }
}

async fn push_tag(
    engine: &Engine,
    pass: &Pass,
    repo: &str,
    tag: &str,
    digest: &Digest,
) -> Result<(), SyncError> {
    // The local tag may have moved on since this change; the later change pushes that.
    if !push_manifest(engine, pass, repo, digest).await? {
        return Ok(());
    }
    let parent = engine.client.head_manifest(repo, tag).await?;
    let known = engine
        .state
        .read(|s| s.synced_tags.get(repo).and_then(|t| t.get(tag).cloned()));
    match parent {
        Some(p) if &p == digest => {}
        // The parent's tag is where we last saw it (or we never saw it): ours is newer.
        Some(p) if known.as_ref() != Some(&p) => {
            let msg = format!(
                "{repo}:{tag}: conflict: the parent moved the tag to {p} while it was re-pushed here as {digest}; \
                 the parent's tag was left in place and {digest} was pushed by digest"
            );
            tracing::warn!("{msg}");
            if let Ok(mut v) = pass.conflicts.lock() {
                v.push(msg);
            }
            let c = Conflict {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                local: digest.clone(),
                parent: p,
                time: chrono::Utc::now(),
            };
            engine.state.update(move |s| s.conflicts.push(c))?;
            return Ok(());
        }
        _ => {
            let Some(m) = engine.local_manifest(repo, digest).await? else {
                return Ok(());
            };
            engine
                .client
                .put_manifest(repo, tag, &m.media_type, m.body)
                .await?;
            tracing::info!(repo, tag, %digest, "pushed up");
            util::crash_point::crash_point("sync_after_push_up");
        }
    }
    let (r, t, d) = (repo.to_owned(), tag.to_owned(), digest.clone());
    engine.state.update(move |s| {
        s.synced_tags.entry(r).or_default().insert(t, d);
    })?;
    Ok(())
}

/// Pushes a manifest and everything under it by digest. False when it no longer exists here.
fn push_manifest<'a>(
    engine: &'a Engine,
    pass: &'a Pass,
    repo: &'a str,
    digest: &'a Digest,
) -> BoxFuture<'a, Result<bool, SyncError>> {
    async move {
        let Some(m) = engine.local_manifest(repo, digest).await? else {
            return Ok(false);
        };
        if engine
            .client
            .head_manifest(repo, &digest.to_string())
            .await?
            == Some(digest.clone())
        {
            return Ok(true);
        }
        pass.check()?;
        match manifest::parse(Some(&m.media_type), &m.body)
            .map_err(|e| SyncError::Internal(format!("{repo}@{digest}: {e}")))?
            .content
        {
            Content::Opaque => {}
            Content::Index { manifests } => {
                for child in &manifests {
                    push_manifest(engine, pass, repo, &child.digest).await?;
                }
            }
            Content::Image { config, layers } => {
                for blob in std::iter::once(config.as_ref())
                    .chain(layers.iter().filter(|l| !l.is_foreign()))
                {
                    pass.check()?;
                    if engine.client.blob_exists(repo, &blob.digest).await? {
                        continue;
                    }
                    if mount_from_synced_repo(engine, repo, &blob.digest).await? {
                        continue;
                    }
                    let d = blob.digest.clone();
                    let (bytes, size) = blocking(&engine.store, move |s| {
                        Ok((s.blob_bytes(&d), s.blob_size(&d)))
                    })
                    .await?;
                    let size = size.ok_or_else(|| {
                        SyncError::Internal(format!(
                            "{repo}@{digest}: blob {} is missing locally",
                            blob.digest
                        ))
                    })?;
                    upload(engine, pass, repo, &blob.digest, &*bytes, size).await?;
                }
            }
        }
        engine
            .client
            .put_manifest(repo, &digest.to_string(), &m.media_type, m.body)
            .await?;
        pass.manifests_pushed.fetch_add(1, Ordering::Relaxed);
        util::crash_point::crash_point("sync_after_push_up");
        Ok(true)
    }
    .boxed()
}

/// Uploads one blob to the parent. Blobs larger than the upload chunk go in acknowledged
/// chunks whose location is kept in the state file, so the next window (or attempt, or run)
/// continues after the last chunk the parent holds; the end of the window stops such an
/// upload between two chunks. A smaller blob, once started, is finished.
async fn upload(
    engine: &Engine,
    pass: &Pass,
    repo: &str,
    digest: &Digest,
    blob: &dyn crate::store::BlobBytes,
    size: u64,
) -> Result<(), SyncError> {
    let client = &engine.client;
    let chunk = engine.settings.limits.upload_chunk;
    if size <= chunk {
        return Ok(client.upload_blob(repo, digest, blob, size).await?);
    }
    let key = format!("{repo}@{digest}");
    let resume = engine.state.read(|s| s.uploads_up.get(&key).cloned());
    let saved = |location: &str| {
        let (k, l) = (key.clone(), location.to_owned());
        if let Err(e) = engine.state.update(move |s| s.uploads_up.insert(k, l)) {
            tracing::warn!("cannot remember the upload position of {key}: {e}");
        }
    };
    let uploaded = client
        .upload_blob_chunked(ChunkedUpload {
            repo,
            digest,
            blob,
            size,
            chunk,
            resume,
            saved: &saved,
            stop: &pass.stop,
        })
        .await?;
    if uploaded == Uploaded::Paused {
        return Err(pass.pause());
    }
    engine.state.update(move |s| s.uploads_up.remove(&key))?;
    Ok(())
}

/// Tries a cross-repository mount from a parent repository this blob was synced down from
/// (a local repository that sync fills and that holds the blob): one small POST instead of
/// uploading the bytes again.
async fn mount_from_synced_repo(
    engine: &Engine,
    repo: &str,
    digest: &Digest,
) -> Result<bool, SyncError> {
    let synced: Vec<String> = engine.state.read(|s| {
        s.synced_tags
            .keys()
            .filter(|r| *r != repo)
            .cloned()
            .collect()
    });
    let d = digest.clone();
    let from = blocking(&engine.store, move |s| {
        Ok(synced.into_iter().find(|r| s.repo_has_blob(r, &d)))
    })
    .await?;
    match from {
        Some(from) => {
            let mounted = engine.client.mount_blob(repo, digest, &from).await?;
            if mounted {
                tracing::debug!(repo, %digest, from, "mounted at the parent");
            }
            Ok(mounted)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use crate::fake::{image_manifest, Rig, IMAGE};
    use oci::Digest;

    /// Both sides moved the same tag: the parent's tag stays where it is, the local manifest
    /// goes up by digest, and the conflict is reported.
    #[tokio::test]
    async fn a_tag_moved_on_both_sides_is_a_conflict_that_keeps_both() {
        let rig = Rig::new("ReadWrite");
        let config = b"{\"os\":\"linux\"}".as_slice();
        let synced = image_manifest(config, &[b"synced"]);
        let theirs = image_manifest(config, &[b"theirs"]);
        let ours = image_manifest(config, &[b"ours"]);
        rig.parent.put_blob(config);
        rig.parent.put_blob(b"theirs");
        let parent_digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &theirs);
        let synced_digest = Digest::sha256_of(&synced);
        rig.engine
            .state
            .update(|s| {
                s.synced_tags
                    .entry("app".into())
                    .or_default()
                    .insert("v1".into(), synced_digest)
            })
            .unwrap();
        rig.store.client_blob("app", config);
        rig.store.client_blob("app", b"ours");
        let local = rig.store.client_manifest("app", "v1", IMAGE, ours);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.conflicts.len(), 1, "{summary:?}");
        assert_eq!(rig.parent.tag("app", "v1"), Some(parent_digest));
        assert!(rig.parent.has_manifest(&local), "ours went up by digest");
        let recorded = rig.engine.state.read(|s| s.conflicts.clone());
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].local, local);
    }
}
