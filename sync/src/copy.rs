//! The copy mechanics: what a manifest references is made present here bottom-up (blobs,
//! then child manifests, then the manifest), every digest verified, blobs streamed into
//! resumable upload sessions (a dropped link continues with `Range` from the bytes on disk),
//! and only then is the manifest stored, so a tag never points at missing content.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::client::{ClientError, FetchedManifest};
use crate::engine::{blocking, upload_id, Engine, SyncError};
use crate::pass::Pass;
use crate::platforms;
use crate::store::{BlobWriter, StoreError, StoredManifest};
use oci::manifest::{self, Content};
use oci::Descriptor;
use oci::Digest;
use oci::Reference;

/// A manifest whose content is all present locally, ready to be stored.
pub(crate) struct Ready {
    manifest: FetchedManifest,
    /// Stored locally as it is already: nothing to write.
    stored: bool,
    /// Index children the platform filter left out.
    skipped: Vec<Digest>,
}

/// Network chunks are gathered into writes of about this size.
const WRITE_BATCH: usize = 1 << 20;

/// Blobs from this size on are listed in the state file while they download.
const RECORD_UPLOADS_FROM: u64 = 4 << 20;

impl Engine {
    pub(crate) async fn copy_and_store(
        &self,
        pass: &Pass,
        repo: &str,
        digest: &Digest,
    ) -> Result<(), SyncError> {
        let ready = self.copy_manifest(pass, repo, digest).await?;
        if !ready.stored {
            self.store_ready(repo, Reference::Digest(digest.clone()), ready)
                .await?;
        }
        Ok(())
    }

    /// Stores a manifest whose content is all present, as `reference`.
    pub(crate) async fn store_ready(
        &self,
        repo: &str,
        reference: Reference,
        ready: Ready,
    ) -> Result<Digest, SyncError> {
        let repo = repo.to_owned();
        blocking(&self.store, move |s| {
            let m = ready.manifest;
            s.put_manifest(&repo, &reference, &m.media_type, m.body, &ready.skipped)
        })
        .await
    }

    /// Whether a stored partial index has children the platform filter now wants (it was
    /// widened since): then the index is filled in.
    pub(crate) fn filter_wants_skipped(&self, stored: &StoredManifest) -> bool {
        if stored.skipped.is_empty() {
            return false;
        }
        manifest::parse(Some(&stored.media_type), &stored.body).is_ok_and(|m| {
            m.children().iter().any(|c| {
                stored.skipped.contains(&c.digest) && platforms::keeps(&self.settings.platforms, c)
            })
        })
    }

    /// Makes everything `digest` references present locally (bottom-up) and returns the
    /// verified manifest, not yet stored unless `stored` says so.
    pub(crate) fn copy_manifest<'a>(
        &'a self,
        pass: &'a Pass,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Ready, SyncError>> {
        async move {
            let m = match self.local_manifest(repo, digest).await? {
                Some(m) if !self.filter_wants_skipped(&m) => {
                    return Ok(Ready {
                        skipped: m.skipped.clone(),
                        manifest: m.into(),
                        stored: true,
                    });
                }
                // A partial index whose left-out platforms are wanted now: fill it in.
                Some(m) => m.into(),
                None => {
                    pass.check()?;
                    let m = self
                        .client
                        .get_manifest(repo, &digest.to_string())
                        .await?
                        .ok_or_else(|| {
                            SyncError::Refused(format!(
                                "{repo}: the parent has no manifest {digest}"
                            ))
                        })?;
                    pass.manifests_fetched.fetch_add(1, Ordering::Relaxed);
                    m
                }
            };
            let skipped = match manifest::parse(Some(&m.media_type), &m.body)
                .map_err(|e| SyncError::Refused(format!("{repo}@{digest}: {e}")))?
                .content
            {
                Content::Index { manifests } => {
                    let platforms = &self.settings.platforms;
                    let (kept, skipped): (Vec<_>, Vec<_>) = manifests
                        .iter()
                        .partition(|c| platforms::keeps(platforms, c));
                    // Only a filter can leave nothing: an empty index is synced as it is.
                    if kept.is_empty() && !skipped.is_empty() {
                        let offered: Vec<String> = skipped
                            .iter()
                            .filter_map(|c| c.platform.as_ref().map(|p| p.to_string()))
                            .collect();
                        let wanted: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                        return Err(SyncError::Refused(format!(
                            "{repo}@{digest}: the index offers {} but the platform filter keeps only {}: nothing to sync",
                            offered.join(", "),
                            wanted.join(", ")
                        )));
                    }
                    let children = kept.iter().map(|c| self.copy_and_store(pass, repo, &c.digest));
                    futures_util::future::try_join_all(children).await?;
                    skipped.into_iter().map(|c| c.digest.clone()).collect()
                }
                Content::Image { config, layers } => {
                    // Foreign / non-distributable layers (Windows base layers) are not served
                    // by registries; the local store does not require them either.
                    let blobs = std::iter::once(config.as_ref())
                        .chain(layers.iter().filter(|l| !l.is_foreign()))
                        .map(|b| self.ensure_blob(pass, repo, b));
                    futures_util::future::try_join_all(blobs).await?;
                    Vec::new()
                }
                // A type that references nothing the parser can see is stored as it is.
                Content::Opaque => Vec::new(),
            };
            Ok(Ready {
                manifest: m,
                stored: false,
                skipped,
            })
        }
        .boxed()
    }

    fn blob_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.blob_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(digest.clone()).or_default().clone()
    }

    /// Makes a blob present in `repo`: link it when stored already, else download it.
    async fn ensure_blob(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<(), SyncError> {
        let d = desc.digest.clone();
        let link = |d: Digest| {
            let r = repo.to_owned();
            blocking(&self.store, move |s| {
                if s.blob_size(&d).is_some() {
                    s.link_blob(&r, &d).map(|_| true)
                } else {
                    Ok(false)
                }
            })
        };
        if link(d.clone()).await? {
            return Ok(());
        }
        let lock = self.blob_lock(&d);
        let _guard = lock.lock().await;
        if link(d.clone()).await? {
            return Ok(());
        }
        let _slot = self
            .blob_slots
            .acquire()
            .await
            .map_err(|e| SyncError::Internal(e.to_string()))?;
        pass.check()?;
        let result = self.download_blob(pass, repo, desc).await;
        self.progress.blob_finished(&d, result.is_ok());
        result
    }

    async fn download_blob(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
    ) -> Result<(), SyncError> {
        let digest = &desc.digest;
        let id = upload_id(repo, digest);
        // Recorded for operators (status, state file) only: the stable id is what makes a
        // download resumable. Small blobs are not worth an fsync each.
        let record = desc.size >= RECORD_UPLOADS_FROM;
        if record {
            let id = id.clone();
            self.state.update(move |s| s.uploads_in_flight.insert(id))?;
        }
        let mut stalls = 0u32;
        let mut restarted = false;
        loop {
            let (r, i) = (repo.to_owned(), id.clone());
            let writer = blocking(&self.store, move |s| s.open_upload(&r, &i)).await?;
            let have = writer.len();
            if desc.size > 0 && have > desc.size {
                if restarted {
                    return Err(SyncError::Internal(format!(
                        "upload {id} keeps more bytes than {digest} has"
                    )));
                }
                drop(writer);
                let i = id.clone();
                blocking(&self.store, move |s| s.cancel_upload(&i)).await?;
                restarted = true;
                continue;
            }
            if have > 0 {
                pass.blobs_resumed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(repo, %digest, have, "resuming blob download");
            }
            self.progress.blob_started(repo, digest, desc.size, have);
            let streamed = if desc.size > 0 && have == desc.size {
                Ok(writer)
            } else {
                self.stream_into(pass, repo, desc, writer, have).await
            };
            match streamed {
                Ok(writer) => {
                    let (d, r) = (digest.clone(), repo.to_owned());
                    let finish = tokio::task::spawn_blocking(move || {
                        writer.finish(&d)?;
                        Ok::<_, StoreError>(d)
                    })
                    .await
                    .map_err(|e| SyncError::Internal(e.to_string()))?;
                    match finish {
                        Ok(d) => {
                            blocking(&self.store, move |s| s.link_blob(&r, &d)).await?;
                            break;
                        }
                        Err(StoreError::DigestMismatch { actual, .. }) => {
                            let id = id.clone();
                            let _ = self.state.update(move |s| s.uploads_in_flight.remove(&id));
                            return Err(SyncError::Refused(format!(
                                "{}: served bytes for {digest} of {repo} that hash to {actual}: refused, the bytes were not kept",
                                self.client.base()
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err((SyncError::Client(e), progressed)) if e.is_unreachable() => {
                    stalls = if progressed { 0 } else { stalls + 1 };
                    if stalls >= self.settings.limits.retries {
                        return Err(SyncError::Client(e));
                    }
                    tracing::info!(repo, %digest, error = %e, "blob transfer interrupted; resuming");
                    let wait = self
                        .settings
                        .limits
                        .backoff_base
                        .saturating_mul(1 << stalls.min(6));
                    let wait = wait.min(self.settings.limits.backoff_max);
                    if !pass.stop.sleep(wait).await {
                        return Err(pass.pause());
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
        pass.blobs_fetched.fetch_add(1, Ordering::Relaxed);
        if record {
            let id2 = id.clone();
            self.state
                .update(move |s| s.uploads_in_flight.remove(&id2))?;
        }
        Ok(())
    }

    /// Streams the blob from byte `have` into `writer` on a blocking thread. On failure the
    /// bytes written so far stay in the upload session (to resume), except when the parent
    /// sent more than the descriptor's size (then they are dropped).
    async fn stream_into(
        &self,
        pass: &Pass,
        repo: &str,
        desc: &Descriptor,
        writer: Box<dyn BlobWriter>,
        have: u64,
    ) -> Result<Box<dyn BlobWriter>, (SyncError, bool)> {
        let digest = &desc.digest;
        let mut blob = match self.client.get_blob(repo, digest, have).await {
            Ok(b) => b,
            Err(e) => return Err((e.into(), false)),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let handle = tokio::task::spawn_blocking(move || {
            let mut w = writer;
            while let Some(chunk) = rx.blocking_recv() {
                w.append(&chunk)?;
            }
            // Stopped or done: what arrived is the session's for whoever resumes it.
            w.commit()?;
            Ok::<_, StoreError>(w)
        });
        let mut written = have;
        let mut skip = blob.skip;
        let mut failure: Option<SyncError> = None;
        let mut too_long = false;
        let mut pending = bytes::BytesMut::with_capacity(WRITE_BATCH);
        loop {
            let next = tokio::select! {
                next = blob.chunks.next() => next,
                () = pass.stop.reached_at() => {
                    failure = Some(pass.pause());
                    break;
                }
            };
            match next {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = (skip as usize).min(chunk.len());
                        chunk = chunk.slice(n..);
                        skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    written += chunk.len() as u64;
                    if desc.size > 0 && written > desc.size {
                        too_long = true;
                        failure = Some(SyncError::Refused(format!(
                            "{}: sent more than the {} bytes of {digest}: refused, the bytes were not kept",
                            blob.source, desc.size
                        )));
                        break;
                    }
                    self.progress.blob_progress(digest, written);
                    // Coalesce network chunks into larger writes: fewer syscalls and wakeups.
                    if pending.is_empty() && chunk.len() >= WRITE_BATCH {
                        if tx.send(chunk).await.is_err() {
                            break; // the writer failed; its error comes from the join below
                        }
                        continue;
                    }
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= WRITE_BATCH
                        && tx.send(pending.split().freeze()).await.is_err()
                    {
                        break;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    failure = Some(e.into());
                    break;
                }
            }
        }
        // Bytes received before a cut or a pause are a valid prefix: keep them for the resume
        // (they are verified with the rest at the end).
        if !too_long && !pending.is_empty() {
            let _ = tx.send(pending.split().freeze()).await;
        }
        drop(tx);
        let progressed = written > have;
        let joined = handle.await.map_err(|e| {
            (
                SyncError::Internal(format!("blob writer failed: {e}")),
                progressed,
            )
        });
        let joined = if too_long {
            drop(joined);
            let id = upload_id(repo, digest);
            let _ = blocking(&self.store, move |s| s.cancel_upload(&id)).await;
            None
        } else {
            Some(joined)
        };
        if let Some(f) = failure {
            return Err((f, progressed));
        }
        let joined = joined.ok_or((SyncError::Internal("writer dropped".into()), progressed))?;
        let writer = joined?.map_err(|e| (SyncError::Store(e), progressed))?;
        if desc.size > 0 && written < desc.size {
            return Err((
                SyncError::Client(ClientError::Transport {
                    url: blob.source,
                    message: format!("connection ended after {written} of {} bytes", desc.size),
                }),
                progressed,
            ));
        }
        Ok(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{image_manifest, index_manifest, Rig, IMAGE, INDEX};
    use crate::Outcome;

    const CONFIG: &[u8] = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";

    /// The parent's bytes for a layer do not hash to its digest: refused, nothing kept, no tag.
    #[tokio::test]
    async fn a_blob_that_arrives_corrupt_is_not_kept_and_not_tagged() {
        let rig = Rig::new("ReadOnly");
        let layer = vec![7u8; 5000];
        rig.parent.put_blob(CONFIG);
        rig.parent
            .put_blob_as(Digest::sha256_of(&layer), &vec![8u8; 5000]);
        let m = image_manifest(CONFIG, &[&layer]);
        rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Failed);
        assert!(
            summary.errors.iter().any(|e| e.contains("hash to")),
            "{:?}",
            summary.errors
        );
        assert!(!rig.store.has_blob(&Digest::sha256_of(&layer)));
        assert_eq!(rig.store.tag("app", "v1"), None);
        // The parent's fault, and a retry of the same bytes does not help.
        assert_eq!(summary.faults.get("upstream"), Some(&1), "{summary:?}");
        assert!(!summary.retryable);
    }

    /// The link drops in the middle of a layer: the download resumes from the bytes already
    /// here (a second request at that offset), and the image ends whole and tagged.
    #[tokio::test]
    async fn a_parent_that_drops_mid_blob_is_resumed_where_it_stopped() {
        let rig = Rig::new("ReadOnly");
        let layer: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let layer_digest = Digest::sha256_of(&layer);
        rig.parent.put_blob(CONFIG);
        rig.parent.put_blob(&layer);
        rig.parent.cut_next_download(&layer_digest, 8192);
        let m = image_manifest(CONFIG, &[&layer]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.parent.download_offsets(&layer_digest), vec![0, 8192]);
        assert_eq!(summary.blobs_resumed, 1);
        assert!(rig.store.has_blob(&layer_digest));
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
    }

    /// An index whose child the parent does not have: the index is not stored and the tag is
    /// not set (a tag never points at missing content).
    #[tokio::test]
    async fn an_index_whose_child_is_missing_is_not_stored() {
        let rig = Rig::new("ReadOnly");
        rig.parent.put_blob(CONFIG);
        let child = image_manifest(CONFIG, &[]);
        let index = index_manifest(&[&child]);
        let index_digest = rig.parent.put_manifest("app", Some("v1"), INDEX, &index);

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Failed);
        assert!(
            summary.errors.iter().any(|e| e.contains("has no manifest")),
            "{:?}",
            summary.errors
        );
        assert!(!rig.store.has_manifest("app", &index_digest));
        assert_eq!(rig.store.tag("app", "v1"), None);
    }
}
