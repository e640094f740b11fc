//! The blob contract in Azure Blob Storage (`serve --storage azblob://CONTAINER`): several
//! replicas share one container, so any of them can die and the others carry on.
//!
//! Layout in the container: `blobs/<algorithm>/<hex>` (content-addressed blobs),
//! `uploads/<id>` (upload sessions: staging blobs whose committed blocks are the session's
//! bytes, with the repository in their metadata), `quarantine/<algorithm>-<hex>-<unix time>`
//! (damaged blobs, the reason in their metadata).
//!
//! The rules are the local disk's:
//! - whole or absent: a blob appears under its digest only by a server-side copy of a staging
//!   blob whose bytes were hashed and matched, on the condition that the staging blob is still
//!   the version that was hashed (`x-ms-source-if-match`); a manifest by one `Put Blob` of bytes
//!   already verified in memory. Either is atomic: an interrupted upload leaves nothing under a
//!   digest.
//! - shared sessions: each acknowledged chunk is committed (`Put Block` + `Put Block List`), so
//!   the staging blob's committed length is the session's length for every replica; a replica
//!   that did not see every chunk re-hashes the staged bytes at the seal, streaming.
//! - GC's grace: a touch rewrites the blob's metadata, which moves its `Last-Modified`; a
//!   delete is conditional on the `ETag` GC looked at, so a blob touched or written again by
//!   another replica in between stays.
//! - `--min-free` and the disk figures concern the data directory (the metadata); blob bytes
//!   are not on it.
//!
//! Errors name Azure Blob Storage, the container and the operation, and say whether a retry
//! can help; the account key is never in them.

mod bridge;
mod config;
mod read;
mod transport;
mod upload;

use std::time::SystemTime;

use azure_core::error::ErrorKind;
use azure_core::request_options::{IfMatchCondition, Metadata};
use azure_core::StatusCode;
use azure_storage_blobs::prelude::{BlobClient, ClientBuilder, ContainerClient};
use bytes::Bytes;
use futures_util::StreamExt;
use oci::digest::Digest;

use super::blob_store::{
    BlobListing, BlobSource, BlobStat, BlobStore, OpenedUpload, StagedBlob, UploadData,
};
use super::space::Space;
use super::StorageError;
pub(crate) use bridge::Bridge;
pub use config::AzureConfig;
use read::AzureSource;
use upload::AzureUpload;

/// Metadata key of a staging blob naming its repository.
const REPO_KEY: &str = "repo";
/// Metadata key a touch writes (the time, in Unix seconds): what moves `Last-Modified`.
const TOUCHED_KEY: &str = "touched";
/// A server-side copy not done after this long is reported (they are immediate within one
/// account in practice).
const COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// A container holding blobs and sessions. Its clients are cheap handles: a clone shares them.
#[derive(Clone)]
pub struct AzureBlobs {
    container: ContainerClient,
    bridge: Bridge,
    location: String,
}

/// Only where it is: nothing of the credentials.
impl std::fmt::Debug for AzureBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobs")
            .field("location", &self.location)
            .finish()
    }
}

/// The context every request of one store carries: clients, runtime, and the name for errors.
#[derive(Clone, Debug)]
pub(crate) struct Remote {
    pub(crate) bridge: Bridge,
    pub(crate) location: String,
}

impl Remote {
    /// Runs `future` on the client's runtime and waits for it.
    pub(crate) fn run<T, F>(&self, action: &str, future: F) -> Result<T, StorageError>
    where
        F: std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
        T: Send + 'static,
    {
        self.bridge.run(future).unwrap_or_else(|| {
            Err(StorageError::Remote {
                store: self.location.clone(),
                action: action.to_owned(),
                message: "the client stopped (the registry is shutting down)".into(),
                retry: true,
            })
        })
    }

    /// The error of `action` failing with `err`.
    pub(crate) fn error(&self, action: &str, err: azure_core::Error) -> StorageError {
        error(&self.location, action, err)
    }
}

/// Maps an SDK error to the store's: Azure named, whether a retry can help.
pub(crate) fn error(location: &str, action: &str, err: azure_core::Error) -> StorageError {
    let retry = match err.kind() {
        ErrorKind::HttpResponse { status, .. } => matches!(
            *status,
            StatusCode::RequestTimeout
                | StatusCode::TooManyRequests
                | StatusCode::InternalServerError
                | StatusCode::BadGateway
                | StatusCode::ServiceUnavailable
                | StatusCode::GatewayTimeout
        ),
        ErrorKind::Io => true,
        _ => false,
    };
    StorageError::Remote {
        store: location.to_owned(),
        action: action.to_owned(),
        message: err.to_string(),
        retry,
    }
}

/// The HTTP status of a failed request, if it got one.
pub(crate) fn status(err: &azure_core::Error) -> Option<StatusCode> {
    match err.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(*status),
        _ => None,
    }
}

fn not_found(err: &azure_core::Error) -> bool {
    status(err) == Some(StatusCode::NotFound)
}

/// A condition (`If-Match`, `If-None-Match`) did not hold, or the blob exists already.
pub(crate) fn conflict(err: &azure_core::Error) -> bool {
    matches!(
        status(err),
        Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
    )
}

/// The name of `digest`'s blob.
fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// The name of upload session `id`'s staging blob.
fn upload_name(id: &str) -> String {
    format!("uploads/{id}")
}

/// Metadata values are HTTP header values: printable ASCII only.
fn header_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl AzureBlobs {
    /// Connects to the container, creating it when it does not exist, so a wrong account,
    /// key or endpoint is reported at start and not at the first push.
    pub fn open(config: AzureConfig) -> Result<AzureBlobs, StorageError> {
        let location = format!("Azure Blob Storage container {}", config.describe());
        let refused = |message: String| StorageError::Remote {
            store: location.clone(),
            action: "connect".into(),
            message,
            retry: false,
        };
        let (cloud, credentials) = config.client_parts().map_err(refused)?;
        let transport = transport::Transport::new().map_err(refused)?;
        let container = ClientBuilder::with_location(cloud, credentials)
            .transport(azure_core::TransportOptions::new(transport))
            .container_client(config.container());
        let bridge = Bridge::new().map_err(|e| refused(format!("start its client: {e}")))?;
        let store = AzureBlobs {
            container,
            bridge: bridge.clone(),
            location,
        };
        let client = store.container.clone();
        let remote = store.remote();
        store.remote().run("reach the container", async move {
            match client.create().await {
                Ok(_) => Ok(()),
                Err(err) if status(&err) == Some(StatusCode::Conflict) => Ok(()),
                Err(err) => Err(remote.error(
                    "reach the container (created when missing): check the account, key and endpoint in AZURE_STORAGE_CONNECTION_STRING",
                    err,
                )),
            }
        })?;
        Ok(store)
    }

    fn remote(&self) -> Remote {
        Remote {
            bridge: self.bridge.clone(),
            location: self.location.clone(),
        }
    }

    fn blob(&self, name: &str) -> BlobClient {
        self.container.blob_client(name)
    }

    /// Properties of blob `name`, `None` when it is absent.
    fn properties(
        &self,
        name: String,
        action: &str,
    ) -> Result<Option<azure_storage_blobs::blob::Blob>, StorageError> {
        let client = self.blob(&name);
        let remote = self.remote();
        let what = format!("{action} {name}");
        self.remote().run(action, async move {
            match client.get_properties().await {
                Ok(response) => Ok(Some(response.blob)),
                Err(err) if not_found(&err) => Ok(None),
                Err(err) => Err(remote.error(&what, err)),
            }
        })
    }

    /// Copies blob `source` to `dest` on the server when `source` is still at version
    /// `source_etag`, and waits until the copy is complete.
    fn copy(
        &self,
        source: &str,
        source_etag: Option<&str>,
        dest: &str,
        metadata: Option<Metadata>,
        action: &str,
    ) -> Result<bool, StorageError> {
        let remote = self.remote();
        let source_url = self
            .blob(source)
            .url()
            .map_err(|e| remote.error(action, e))?;
        let dest_client = self.blob(dest);
        let etag = source_etag.map(str::to_owned);
        let what = format!("{action} ({source} to {dest})");
        self.remote().run(action, async move {
            let mut copy = dest_client.copy(source_url);
            if let Some(etag) = etag {
                copy = copy.if_source_match(
                    azure_core::request_options::IfSourceMatchCondition::Match(etag),
                );
            }
            if let Some(metadata) = metadata {
                copy = copy.metadata(metadata);
            }
            let response = match copy.await {
                Ok(response) => response,
                Err(err) if not_found(&err) || conflict(&err) => return Ok(false),
                Err(err) => return Err(remote.error(&what, err)),
            };
            let mut status = response.copy_status;
            let started = std::time::Instant::now();
            loop {
                use azure_storage_blobs::blob::CopyStatus;
                match status {
                    CopyStatus::Success => return Ok(true),
                    CopyStatus::Pending if started.elapsed() < COPY_WAIT => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let props = dest_client
                            .get_properties()
                            .await
                            .map_err(|e| remote.error(&what, e))?;
                        status = props
                            .blob
                            .properties
                            .copy_status
                            .unwrap_or(CopyStatus::Success);
                    }
                    other => {
                        return Err(StorageError::Remote {
                            store: remote.location.clone(),
                            action: what,
                            message: format!("the copy ended {other:?}"),
                            retry: true,
                        })
                    }
                }
            }
        })
    }

    /// Writes `data` as blob `digest` in one request (content already verified).
    fn put_whole(&self, digest: &Digest, data: Bytes) -> Result<(), StorageError> {
        let client = self.blob(&blob_name(digest));
        let remote = self.remote();
        let what = format!("store blob {digest}");
        self.remote().run(&what.clone(), async move {
            client
                .put_block_blob(data)
                .content_type("application/octet-stream")
                .await
                .map(|_| ())
                .map_err(|e| remote.error(&what, e))
        })
    }
}

/// Whether a blob's bytes are all there: not the destination of a copy still running.
/// The latest instant a write or touch stamped `last_modified` can have happened. Azure records
/// whole seconds, so a blob touched at 12:00:00.9 says 12:00:00; taken as is, GC would think
/// it 0.9 s older than it is and a grace period would shrink by up to a second (a blob linked
/// by another replica just after GC's cutoff could go). The end of the second never errs that way.
fn latest_instant(last_modified: impl Into<SystemTime>) -> SystemTime {
    last_modified.into() + std::time::Duration::from_nanos(999_999_999)
}

fn complete(blob: &azure_storage_blobs::blob::Blob) -> bool {
    use azure_storage_blobs::blob::CopyStatus;
    matches!(
        blob.properties.copy_status,
        None | Some(CopyStatus::Success)
    )
}

impl BlobStore for AzureBlobs {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(self
            .properties(blob_name(digest), "look up blob")?
            .filter(complete)
            .map(|b| b.properties.content_length))
    }

    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>, StorageError> {
        Ok(self
            .properties(blob_name(digest), "look up blob")?
            .filter(complete)
            .map(|b| BlobStat {
                size: b.properties.content_length,
                modified: latest_instant(b.properties.last_modified),
                version: b.properties.etag.to_string(),
            }))
    }

    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        let name = blob_name(digest);
        let Some(blob) = self.properties(name.clone(), "open blob")?.filter(complete) else {
            return Ok(None);
        };
        Ok(Some(Box::new(AzureSource::new(
            self.blob(&name),
            self.remote(),
            blob.properties.content_length,
            Some(blob.properties.etag.to_string()),
        ))))
    }

    fn stage(&self, data: Bytes) -> Result<Box<dyn StagedBlob>, StorageError> {
        Ok(Box::new(Staged {
            data,
            store: self.clone(),
        }))
    }

    fn touch(&self, digest: &Digest) -> Result<bool, StorageError> {
        self.touch_blob(&blob_name(digest))
    }

    fn list(&self) -> Result<BlobListing, StorageError> {
        let container = self.container.clone();
        let remote = self.remote();
        let mut listing = self.remote().run("list blobs", async move {
            let mut listing = BlobListing::default();
            let mut pages = container.list_blobs().prefix("blobs/").into_stream();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| remote.error("list blobs", e))?;
                for blob in page.blobs.blobs() {
                    let parsed = blob
                        .name
                        .strip_prefix("blobs/")
                        .and_then(|rest| rest.split_once('/'))
                        .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok())
                        .filter(|d| blob_name(d) == blob.name);
                    match parsed {
                        Some(digest) if complete(blob) => {
                            listing.blobs.push((digest, blob.properties.content_length))
                        }
                        Some(_) => {}
                        None => listing.stray.push(blob.name.clone()),
                    }
                }
            }
            Ok(listing)
        })?;
        listing.blobs.sort();
        Ok(listing)
    }

    fn delete(&self, digest: &Digest, stat: &BlobStat) -> Result<bool, StorageError> {
        let client = self.blob(&blob_name(digest));
        let remote = self.remote();
        let what = format!("delete blob {digest}");
        let etag = stat.version.clone();
        self.remote().run(&what.clone(), async move {
            match client
                .delete()
                .if_match(IfMatchCondition::Match(etag))
                .await
            {
                Ok(_) => Ok(true),
                // Gone already, or written or touched since GC looked: kept.
                Err(err) if not_found(&err) || conflict(&err) => Ok(false),
                Err(err) => Err(remote.error(&what, err)),
            }
        })
    }

    fn quarantine(&self, digest: &Digest, why: &str) -> Result<Option<String>, StorageError> {
        let stamp = util::time::now_secs();
        let dest = format!(
            "quarantine/{}-{}-{stamp}",
            digest.algorithm().name(),
            digest.hex()
        );
        let mut metadata = Metadata::new();
        metadata.insert("why", header_safe(why));
        metadata.insert("digest", digest.to_string());
        let source = blob_name(digest);
        if !self.copy(&source, None, &dest, Some(metadata), "quarantine blob")? {
            return Ok(None);
        }
        self.delete_blob(&source, "delete a quarantined blob")?;
        Ok(Some(format!("{dest} in {}", self.location)))
    }

    fn create_upload(
        &self,
        id: &str,
        repo: &str,
    ) -> Result<Option<Box<dyn UploadData>>, StorageError> {
        let created = AzureUpload::create(self.blob(&upload_name(id)), self.remote(), id, repo)?;
        Ok(created.map(|u| Box::new(u) as Box<dyn UploadData>))
    }

    fn open_upload(&self, id: &str) -> Result<Option<OpenedUpload>, StorageError> {
        let Some(blob) = self.properties(upload_name(id), "open upload")? else {
            return Ok(None);
        };
        let Some(repo) = blob
            .metadata
            .as_ref()
            .and_then(|m| m.get(REPO_KEY))
            .cloned()
        else {
            // Not a session of ours (no owner): as good as absent.
            return Ok(None);
        };
        let data = AzureUpload::open(self.blob(&upload_name(id)), self.remote(), id, &repo);
        Ok(Some((repo, Box::new(data))))
    }

    fn upload_reader(&self, id: &str) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        let name = upload_name(id);
        let Some(blob) = self.properties(name.clone(), "open upload")? else {
            return Ok(None);
        };
        // No version: the session grows while it is read.
        Ok(Some(Box::new(AzureSource::new(
            self.blob(&name),
            self.remote(),
            blob.properties.content_length,
            None,
        ))))
    }

    fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let container = self.container.clone();
        let remote = self.remote();
        self.remote().run("list upload sessions", async move {
            let mut sessions = Vec::new();
            let mut pages = container.list_blobs().prefix("uploads/").into_stream();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| remote.error("list upload sessions", e))?;
                for blob in page.blobs.blobs() {
                    if let Some(id) = blob.name.strip_prefix("uploads/") {
                        sessions
                            .push((id.to_owned(), latest_instant(blob.properties.last_modified)));
                    }
                }
            }
            Ok(sessions)
        })
    }

    fn remove_upload(&self, id: &str) {
        if let Err(err) = self.delete_blob(&upload_name(id), "remove upload session") {
            // Left for the upload expiry of a later GC.
            tracing::warn!(upload = id, "{err}");
        }
    }

    fn install_upload(
        &self,
        data: &mut dyn UploadData,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        let upload = data.as_any().downcast_mut::<AzureUpload>().ok_or_else(|| {
            StorageError::UploadInvalid(format!("not an upload of {}", self.location))
        })?;
        let dest = blob_name(digest);
        // Stored already (the same bytes, pushed before): a touch keeps it, and readers of it
        // never see it rewritten.
        if self.touch_blob(&dest)? {
            return Ok(());
        }
        let (source, etag) = upload.staged();
        if self.copy(&source, Some(&etag), &dest, None, "install blob")? {
            util::crash_point::crash_point("after_blob_rename");
            return Ok(());
        }
        Err(StorageError::UploadInvalid(format!(
            "upload {} changed (another replica wrote to it) between its check and its install as {digest}: nothing was stored; push it again",
            upload.id()
        )))
    }

    fn local_space(&self) -> Option<&Space> {
        None
    }
}

impl AzureBlobs {
    /// Deletes blob `name` whatever its version; one already gone is fine.
    fn delete_blob(&self, name: &str, action: &str) -> Result<(), StorageError> {
        let client = self.blob(name);
        let remote = self.remote();
        let what = format!("{action} {name}");
        self.remote().run(action, async move {
            match client.delete().await {
                Ok(_) => Ok(()),
                Err(err) if not_found(&err) => Ok(()),
                Err(err) => Err(remote.error(&what, err)),
            }
        })
    }

    /// Rewrites blob `name`'s metadata, which moves its `Last-Modified` (GC's age): whether it
    /// is there.
    fn touch_blob(&self, name: &str) -> Result<bool, StorageError> {
        let client = self.blob(name);
        let remote = self.remote();
        let what = format!("touch {name}");
        self.remote().run(&what.clone(), async move {
            let mut metadata = Metadata::new();
            metadata.insert(TOUCHED_KEY, util::time::now_secs().to_string());
            match client.set_metadata().metadata(metadata).await {
                Ok(_) => Ok(true),
                Err(err) if not_found(&err) => Ok(false),
                Err(err) => Err(remote.error(&what, err)),
            }
        })
    }
}

/// A verified manifest in memory, written under its digest once the metadata accepted it.
struct Staged {
    data: Bytes,
    store: AzureBlobs,
}

impl StagedBlob for Staged {
    fn install(self: Box<Self>, digest: &Digest) -> Result<(), StorageError> {
        self.store.put_whole(digest, self.data)
    }
}
