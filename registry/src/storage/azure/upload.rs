//! An upload session in Azure Blob Storage: the staging blob `uploads/<id>`, whose committed
//! blocks are the session's bytes, so any replica can continue it.
//!
//! Appended bytes are gathered to [`BLOCK_SIZE`] and put as (uncommitted) blocks; a commit puts
//! what is left and then the block list, conditional on the staging blob being the version
//! this replica last saw (`If-Match`), so two replicas writing one session at once cannot
//! interleave their chunks: the second commit is refused and its client asks where the upload
//! stands. A commit also happens every [`COMMIT_EVERY`] bytes, so a long request (a monolithic
//! push, a sync download) keeps most of its bytes if the replica dies halfway.

use bytes::Bytes;
use oci::digest::{Algorithm, Hasher};

use super::blob::{block_id, BlobClient};
use super::read::AzureSource;
use super::{Remote, REPO_KEY};
use crate::storage::blob_store::{hash_all, BlobSource, Resumed, UploadData};
use crate::storage::StorageError;

/// Bytes per block: large enough that a multi-GB blob stays far below Azure's 50,000 blocks
/// per blob (at full blocks, 390 GiB), small enough to keep per session in memory.
pub const BLOCK_SIZE: usize = 8 << 20;
/// Appended bytes are committed at least this often.
pub const COMMIT_EVERY: u64 = 64 << 20;

/// One block of the session: its id (base64, as the service knows it) and size.
#[derive(Clone)]
struct Block {
    id: String,
    size: u64,
}

/// The session's staging blob as this replica knows it.
pub(crate) struct AzureUpload {
    client: BlobClient,
    remote: Remote,
    id: String,
    repo: String,
    /// The committed blocks, in order (what every replica sees).
    committed: Vec<Block>,
    committed_len: u64,
    /// The staging blob's version after the last commit this replica made or saw.
    etag: String,
    /// Blocks put since the last commit.
    staged: Vec<Block>,
    staged_len: u64,
    /// Bytes not yet put.
    pending: Vec<u8>,
}

impl AzureUpload {
    /// Creates the empty staging blob of session `id` for `repo`; `None` when it exists.
    pub(super) fn create(
        client: BlobClient,
        remote: Remote,
        id: &str,
        repo: &str,
    ) -> Result<Option<AzureUpload>, StorageError> {
        let (c, r) = (client.clone(), remote.clone());
        let what = format!("start upload {id}");
        let metadata = [(REPO_KEY, repo.to_owned())];
        let etag = remote.run(&what.clone(), async move {
            match c.put(Bytes::new(), &metadata, true).await {
                Ok(etag) => Ok(Some(etag)),
                Err(err) if err.conflict() => Ok(None),
                Err(err) => Err(r.error(&what, err)),
            }
        })?;
        Ok(etag.map(|etag| AzureUpload {
            etag,
            ..AzureUpload::open(client, remote, id, repo)
        }))
    }

    /// Session `id` of `repo`, as yet unread ([`UploadData::resume`] reads it).
    pub(super) fn open(client: BlobClient, remote: Remote, id: &str, repo: &str) -> AzureUpload {
        AzureUpload {
            client,
            remote,
            id: id.to_owned(),
            repo: repo.to_owned(),
            committed: Vec::new(),
            committed_len: 0,
            etag: String::new(),
            staged: Vec::new(),
            staged_len: 0,
            pending: Vec::new(),
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The staging blob's name and the version whose bytes were committed last.
    pub(super) fn staged(&self) -> (String, String) {
        (self.client.name().to_owned(), self.etag.clone())
    }

    /// Reads the committed block list and the version it belongs to.
    fn load(&mut self) -> Result<(), StorageError> {
        let client = self.client.clone();
        let remote = self.remote.clone();
        let what = format!("read upload {}", self.id);
        let id = self.id.clone();
        let (blocks, etag) = self.remote.run(&what.clone(), async move {
            let (blocks, etag) = client.committed_blocks().await.map_err(|e| {
                if e.not_found() {
                    StorageError::UploadUnknown(id)
                } else {
                    remote.error(&what, e)
                }
            })?;
            let blocks: Vec<Block> = blocks
                .into_iter()
                .map(|(id, size)| Block { id, size })
                .collect();
            Ok((blocks, etag))
        })?;
        self.committed_len = blocks.iter().map(|b| b.size).sum();
        self.committed = blocks;
        self.etag = etag;
        self.staged.clear();
        self.staged_len = 0;
        self.pending.clear();
        Ok(())
    }

    /// Puts the first `size` pending bytes as a new block.
    fn put_block(&mut self, size: usize) -> Result<(), StorageError> {
        // Fixed-length ids (Azure wants one length per blob): 32 hex digits.
        let id = block_id(uuid::Uuid::new_v4().simple().to_string().as_bytes());
        let body = Bytes::copy_from_slice(&self.pending[..size]);
        let client = self.client.clone();
        let what = format!("store {size} bytes of upload {}", self.id);
        let block_id = id.clone();
        self.remote
            .call(what, async move { client.put_block(&block_id, body).await })?;
        self.pending.drain(..size);
        self.staged.push(Block {
            id,
            size: size as u64,
        });
        self.staged_len += size as u64;
        Ok(())
    }

    /// Commits `blocks` as the staging blob's content, on the condition that it is still at
    /// the version this replica last saw.
    fn put_block_list(&mut self, blocks: Vec<Block>) -> Result<(), StorageError> {
        let list: Vec<String> = blocks.iter().map(|b| b.id.clone()).collect();
        let metadata = [(REPO_KEY, self.repo.clone())];
        let client = self.client.clone();
        let remote = self.remote.clone();
        let etag = self.etag.clone();
        let id = self.id.clone();
        let what = format!("commit upload {id}");
        let committed = self.remote.run(&what.clone(), async move {
            match client.put_block_list(&list, &metadata, &etag).await {
                Ok(etag) => Ok(etag),
                Err(err) if err.conflict() || err.not_found() => Err(StorageError::UploadInvalid(format!(
                    "upload {id} was changed or ended by another replica meanwhile: ask where it stands (GET its location) and continue from there"
                ))),
                Err(err) => Err(remote.error(&what, err)),
            }
        });
        let etag = match committed {
            Ok(etag) => etag,
            Err(err) => {
                // What this replica held is no longer the session: forget it, but keep the
                // version last seen, so the next `changed_since` finds the session changed and
                // the bytes are hashed again at the seal. Reading the session here instead
                // would hide another replica's chunk of the same length as this one's.
                self.staged.clear();
                self.staged_len = 0;
                self.pending.clear();
                return Err(err);
            }
        };
        self.committed_len = blocks.iter().map(|b| b.size).sum();
        self.committed = blocks;
        self.etag = etag;
        self.staged.clear();
        self.staged_len = 0;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.committed_len + self.staged_len + self.pending.len() as u64
    }
}

impl UploadData for AzureUpload {
    /// Reads where the session stands; its bytes are hashed at the seal, if ever (a session
    /// with none needs no hashing).
    fn resume(&mut self) -> Result<Resumed, StorageError> {
        self.load()?;
        Ok(Resumed {
            len: self.committed_len,
            hasher: (self.committed_len == 0).then(|| Hasher::new(Algorithm::Sha256)),
        })
    }

    fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= BLOCK_SIZE {
            self.put_block(BLOCK_SIZE)?;
        }
        if self.staged_len >= COMMIT_EVERY {
            self.commit()?;
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        let put = self.committed_len + self.staged_len;
        if len >= put {
            self.pending.truncate((len - put) as usize);
            return Ok(());
        }
        self.pending.clear();
        // Whole blocks only: a chunk's bytes start a block (every chunk starts after a commit,
        // and a failed put keeps its bytes pending).
        let mut blocks: Vec<Block> = self.committed.iter().chain(&self.staged).cloned().collect();
        let mut total = put;
        while total > len {
            let Some(last) = blocks.pop() else { break };
            total -= last.size;
        }
        if total != len {
            let _ = self.load();
            return Err(StorageError::UploadInvalid(format!(
                "upload {} cannot be cut back to {len} bytes (inside a stored block): ask where it stands and continue from there",
                self.id
            )));
        }
        if len >= self.committed_len {
            let keep = blocks.len() - self.committed.len();
            self.staged.truncate(keep);
            self.staged_len = len - self.committed_len;
            return Ok(());
        }
        self.put_block_list(blocks)
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        if !self.pending.is_empty() {
            let size = self.pending.len();
            self.put_block(size)?;
        }
        if self.staged.is_empty() {
            return Ok(());
        }
        let blocks: Vec<Block> = self.committed.iter().chain(&self.staged).cloned().collect();
        self.put_block_list(blocks)
    }

    fn changed_since(&mut self, known: u64) -> Result<Option<u64>, StorageError> {
        let (len, etag) = (self.len(), self.etag.clone());
        self.load()?;
        if self.etag == etag && self.committed_len == len && len == known {
            return Ok(None);
        }
        Ok(Some(self.committed_len))
    }

    fn readable_len(&self) -> u64 {
        self.committed_len
    }

    fn make_durable(&mut self) -> Result<(), StorageError> {
        self.commit()
    }

    fn hash(&mut self, algorithm: Algorithm) -> Result<(Hasher, u64), StorageError> {
        let source = Box::new(AzureSource::new(
            self.client.clone(),
            self.remote.clone(),
            self.committed_len,
            Some(self.etag.clone()),
        ));
        let mut read = source.into_read();
        hash_all(&mut read, algorithm).map_err(StorageError::io(format!(
            "hash the bytes of upload {} in {}",
            self.id, self.remote.location
        )))
    }

    fn describe(&self) -> String {
        format!("{} in {}", self.client.name(), self.remote.location)
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
