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
//!
//! The REST client is our own, for exactly the calls above: `config` (the connection string),
//! `client` (URLs, authorization by `sign` or a SAS, sending with the retries of `retry`),
//! `blob` and `container` (the calls), `xml` (their answers), `transport` (the reqwest client),
//! `bridge` (blocking callers), `read` and `upload` (a blob's bytes, a session's blocks).

mod blob;
mod bridge;
mod client;
mod config;
mod container;
mod read;
mod retry;
mod sign;
mod transport;
mod upload;
mod xml;

use std::time::SystemTime;

use bytes::Bytes;
use oci::digest::Digest;

use super::blob_store::{
    BlobListing, BlobSource, BlobStat, BlobStore, OpenedUpload, StagedBlob, UploadData,
};
use super::space::Space;
use super::StorageError;
use blob::{BlobClient, CopyStatus, Properties};
pub(crate) use bridge::Bridge;
use client::{Client, RestError};
pub use config::AzureConfig;
use read::AzureSource;

/// The fuzz target of the XML reading above, for `fuzz/` (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub use container::fuzz_azure_xml;
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
    client: Client,
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

    /// Runs `call`, one or more REST calls, on the client's runtime and waits for it; its
    /// error becomes the store's, naming `what`.
    pub(crate) fn call<T, F>(&self, what: String, call: F) -> Result<T, StorageError>
    where
        F: std::future::Future<Output = Result<T, RestError>> + Send + 'static,
        T: Send + 'static,
    {
        let remote = self.clone();
        self.run(&what.clone(), async move {
            call.await.map_err(|err| remote.error(&what, err))
        })
    }

    /// The error of `action` failing with `err`.
    pub(crate) fn error(&self, action: &str, err: RestError) -> StorageError {
        error(&self.location, action, err)
    }
}

/// Maps a REST client error to the store's: Azure named, whether a retry can help.
pub(crate) fn error(location: &str, action: &str, err: RestError) -> StorageError {
    StorageError::Remote {
        store: location.to_owned(),
        action: action.to_owned(),
        message: err.message,
        retry: err.retry,
    }
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
        let client = Client::new(&config).map_err(refused)?;
        let bridge = Bridge::new().map_err(|e| refused(format!("start its client: {e}")))?;
        let store = AzureBlobs {
            client,
            bridge: bridge.clone(),
            location,
        };
        let client = store.client.clone();
        let remote = store.remote();
        store.remote().run("reach the container", async move {
            match container::create(&client).await {
                Ok(_) => Ok(()),
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
        BlobClient::new(self.client.clone(), name)
    }

    /// Properties of blob `name`, `None` when it is absent.
    fn properties(&self, name: String, action: &str) -> Result<Option<Properties>, StorageError> {
        let client = self.blob(&name);
        self.remote().call(format!("{action} {name}"), async move {
            client.properties().await
        })
    }

    /// Copies blob `source` to `dest` on the server when `source` is still at version
    /// `source_etag`, and waits until the copy is complete.
    fn copy(
        &self,
        source: &str,
        source_etag: Option<&str>,
        dest: &str,
        metadata: Vec<(&'static str, String)>,
        action: &str,
    ) -> Result<bool, StorageError> {
        let remote = self.remote();
        let dest_client = self.blob(dest);
        let source = source.to_owned();
        let etag = source_etag.map(str::to_owned);
        let what = format!("{action} ({source} to {dest})");
        self.remote().run(action, async move {
            let copied = dest_client
                .copy_from(&source, etag.as_deref(), &metadata)
                .await;
            let mut status = match copied {
                Ok(status) => status,
                Err(err) if err.not_found() || err.conflict() => return Ok(false),
                Err(err) => return Err(remote.error(&what, err)),
            };
            let started = std::time::Instant::now();
            loop {
                match status {
                    CopyStatus::Success => return Ok(true),
                    CopyStatus::Pending if started.elapsed() < COPY_WAIT => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let props = dest_client
                            .properties()
                            .await
                            .map_err(|e| remote.error(&what, e))?
                            .ok_or_else(|| StorageError::Remote {
                                store: remote.location.clone(),
                                action: what.clone(),
                                message: "the copy's destination went away while it ran".into(),
                                retry: true,
                            })?;
                        status = props.copy_status.unwrap_or(CopyStatus::Success);
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
        self.remote()
            .call(format!("store blob {digest}"), async move {
                client.put(data, &[], false).await.map(drop)
            })
    }
}

/// The latest instant a write or touch stamped `last_modified` can have happened. Azure records
/// whole seconds, so a blob touched at 12:00:00.9 says 12:00:00; taken as is, GC would think
/// it 0.9 s older than it is and a grace period would shrink by up to a second (a blob linked
/// by another replica just after GC's cutoff could go). The end of the second never errs that way.
fn latest_instant(last_modified: SystemTime) -> SystemTime {
    last_modified + std::time::Duration::from_nanos(999_999_999)
}

impl BlobStore for AzureBlobs {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(self
            .properties(blob_name(digest), "look up blob")?
            .filter(Properties::complete)
            .map(|b| b.content_length))
    }

    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>, StorageError> {
        Ok(self
            .properties(blob_name(digest), "look up blob")?
            .filter(Properties::complete)
            .map(|b| BlobStat {
                size: b.content_length,
                modified: latest_instant(b.last_modified),
                version: b.etag,
            }))
    }

    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn BlobSource>>, StorageError> {
        let name = blob_name(digest);
        let Some(blob) = self
            .properties(name.clone(), "open blob")?
            .filter(Properties::complete)
        else {
            return Ok(None);
        };
        Ok(Some(Box::new(AzureSource::new(
            self.blob(&name),
            self.remote(),
            blob.content_length,
            Some(blob.etag),
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
        let client = self.client.clone();
        let listed = self.remote().call("list blobs".into(), async move {
            container::list(&client, "blobs/").await
        })?;
        let mut listing = BlobListing::default();
        for blob in listed {
            let parsed = blob
                .name
                .strip_prefix("blobs/")
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok())
                .filter(|d| blob_name(d) == blob.name);
            match parsed {
                Some(digest) if blob.complete() => {
                    listing.blobs.push((digest, blob.content_length))
                }
                Some(_) => {}
                None => listing.stray.push(blob.name),
            }
        }
        listing.blobs.sort();
        Ok(listing)
    }

    fn delete(&self, digest: &Digest, stat: &BlobStat) -> Result<bool, StorageError> {
        let client = self.blob(&blob_name(digest));
        let remote = self.remote();
        let what = format!("delete blob {digest}");
        let etag = stat.version.clone();
        self.remote().run(&what.clone(), async move {
            match client.delete(Some(&etag)).await {
                Ok(()) => Ok(true),
                // Gone already, or written or touched since GC looked: kept.
                Err(err) if err.not_found() || err.conflict() => Ok(false),
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
        let metadata = vec![("why", header_safe(why)), ("digest", digest.to_string())];
        let source = blob_name(digest);
        if !self.copy(&source, None, &dest, metadata, "quarantine blob")? {
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
        let Some(repo) = blob.metadata.get(REPO_KEY).cloned() else {
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
            blob.content_length,
            None,
        ))))
    }

    fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let client = self.client.clone();
        let listed = self
            .remote()
            .call("list upload sessions".into(), async move {
                container::list(&client, "uploads/").await
            })?;
        Ok(listed
            .into_iter()
            .filter_map(|blob| {
                let id = blob.name.strip_prefix("uploads/")?.to_owned();
                Some((id, latest_instant(blob.last_modified)))
            })
            .collect())
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
        if self.copy(&source, Some(&etag), &dest, Vec::new(), "install blob")? {
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
            match client.delete(None).await {
                Ok(()) => Ok(()),
                Err(err) if err.not_found() => Ok(()),
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
            let metadata = [(TOUCHED_KEY, util::time::now_secs().to_string())];
            match client.set_metadata(&metadata).await {
                Ok(()) => Ok(true),
                Err(err) if err.not_found() => Ok(false),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azurite::Azurite;

    fn config(connection_string: &str) -> AzureConfig {
        AzureConfig::new("signed", connection_string).unwrap()
    }

    /// A wrong key is refused at open, in words naming the account and the setting to check,
    /// never the key.
    #[test]
    fn a_wrong_account_key_is_reported_at_open_without_the_key() {
        let azurite = Azurite::start();
        let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5";
        let connection_string = azurite
            .connection_string()
            .replace(crate::azurite::KEY, wrong);
        let err = AzureBlobs::open(config(&connection_string)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("devstoreaccount1"), "{text}");
        assert!(
            text.contains("check the account, key and endpoint"),
            "{text}"
        );
        assert!(text.contains("403"), "{text}");
        assert!(
            !text.contains(wrong) && !text.contains(crate::azurite::KEY),
            "{text}"
        );
        assert!(
            matches!(err, StorageError::Remote { retry: false, .. }),
            "{err:?}"
        );
    }

    /// Azurite accepts what `sign` signs: metadata headers, a range and an `If-Match`; a read
    /// of another version is refused as a condition (412).
    #[test]
    fn azurite_accepts_requests_signed_with_metadata_a_range_and_conditions() {
        let azurite = Azurite::start();
        let store = AzureBlobs::open(config(&azurite.connection_string())).unwrap();
        let blob = store.blob("blobs/x/signed me");
        let remote = store.remote();
        remote
            .run("test", async move {
                let metadata = [("repo", "app/web".to_owned()), ("touched", "1".to_owned())];
                let etag = blob
                    .put(Bytes::from_static(b"0123456789"), &metadata, true)
                    .await
                    .unwrap();
                let again = blob.put(Bytes::new(), &[], true).await.unwrap_err();
                assert!(again.conflict(), "{again}");
                let props = blob.properties().await.unwrap().unwrap();
                assert_eq!(
                    props.metadata.get("repo").map(String::as_str),
                    Some("app/web")
                );
                assert_eq!(props.content_length, 10);
                let part = blob.get(2..5, Some(&etag)).await.unwrap();
                assert_eq!(&part.bytes().await.unwrap()[..], b"234");
                let stale = blob.get(2..5, Some("\"0x1\"")).await.unwrap_err();
                assert_eq!(stale.status, Some(reqwest::StatusCode::PRECONDITION_FAILED));
                assert!(!stale.retry);
                blob.set_metadata(&metadata[..1]).await.unwrap();
                blob.delete(Some(&etag)).await.unwrap_err();
                Ok(())
            })
            .unwrap();
    }

    /// An account SAS of Azurite's development account for the Blob service, signed with its
    /// key, as the Azure portal makes them.
    fn account_sas() -> String {
        use base64::Engine;
        let (version, permissions, expiry) = ("2022-11-02", "rwdlacup", "2099-01-01T00:00:00Z");
        let to_sign = format!(
            "{}\n{permissions}\nb\nsco\n\n{expiry}\n\n\n{version}\n\n",
            crate::azurite::ACCOUNT
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(crate::azurite::KEY)
            .unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
        let sig = base64::engine::general_purpose::STANDARD
            .encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let sig: String = url_encode(&sig);
        format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={expiry}&sig={sig}")
    }

    fn url_encode(text: &str) -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// With a SAS instead of the key every call the store makes works (the copy's source
    /// carries the SAS too), and no error shows the signature.
    #[test]
    fn a_shared_access_signature_serves_every_call() {
        let azurite = Azurite::start();
        let sas = account_sas();
        let connection_string = format!(
            "AccountName={};SharedAccessSignature={sas};BlobEndpoint=http://{}/{}",
            crate::azurite::ACCOUNT,
            azurite.addr(),
            crate::azurite::ACCOUNT
        );
        let store = AzureBlobs::open(config(&connection_string)).unwrap();
        let data = Bytes::from_static(b"{\"schemaVersion\":2}");
        let digest = Digest::sha256_of(&data);
        store.stage(data.clone()).unwrap().install(&digest).unwrap();
        assert_eq!(store.size(&digest).unwrap(), Some(data.len() as u64));
        assert!(store.touch(&digest).unwrap());
        assert_eq!(
            store.list().unwrap().blobs,
            vec![(digest.clone(), data.len() as u64)]
        );
        let moved = store.quarantine(&digest, "test").unwrap().unwrap();
        assert!(moved.starts_with("quarantine/"), "{moved}");
        assert_eq!(store.size(&digest).unwrap(), None);

        let wrong = connection_string.replace("sp=rwdlacup", "sp=r");
        let err = AzureBlobs::open(config(&wrong)).unwrap_err().to_string();
        assert!(err.contains("403"), "{err}");
        let sig = sas.rsplit("sig=").next().unwrap();
        assert!(!err.contains(sig) && !err.contains("sig="), "{err}");
    }
}
