//! The blob contract: what the store needs from wherever blob bytes live, so the same rules
//! (a blob is whole or absent, verified before it is visible; uploads survive restarts and
//! continue where they stopped; GC spares what was touched within its grace period) hold on
//! the local disk ([`super::filesystem`]) and in Azure Blob Storage ([`super::azure`]).
//!
//! A trait rather than an enum over the two: the implementations share no code path (file
//! handles, fsync and rename on one side; HTTP requests, block lists and server-side copies on
//! the other), and the store, GC, scrub and the readers only ever go through these calls, so
//! each implementation stays in its own module and a third (another object store) is one more
//! module. Every method blocks (file or network I/O): async callers use `spawn_blocking`,
//! except [`BlobSource::stream`], which streams into the caller's runtime.

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::time::SystemTime;

use bytes::Bytes;
use oci::digest::{Algorithm, Digest, Hasher};

use super::reader::{BlobReader, Check};
use super::space::Space;
use super::StorageError;

/// Where blob bytes are kept: content-addressed blobs, and the upload sessions that become them.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Where the blobs are, for logs and errors: "data directory /data", "Azure Blob Storage
    /// container c of account a".
    fn location(&self) -> String;

    /// The blob's size, if it is stored.
    fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// Size, age and version of a stored blob, for GC's and the quota's decisions.
    fn stat(&self, digest: &Digest) -> Result<Option<BlobStat>, StorageError>;

    /// Opens a stored blob for reading (`None`: not stored).
    fn open(&self, digest: &Digest) -> Result<Option<Box<dyn BlobSource>>, StorageError>;

    /// Keeps small, verified content (a manifest) ready to be made visible under its digest
    /// once the metadata that needs it is accepted ([`StagedBlob::install`]).
    fn stage(&self, data: Bytes) -> Result<Box<dyn StagedBlob>, StorageError>;

    /// Marks a blob as just wanted (GC spares blobs touched within its grace period); whether
    /// it is stored. It changes the blob's version, so a [`BlobStore::delete`] decided on an
    /// earlier [`BlobStat`] fails: a caller that makes a stored blob wanted (a link) touches it
    /// first and goes on only when it was there, and of that touch and a GC delete racing it
    /// (another replica's) one always loses cleanly: the delete keeps the blob, or the touch
    /// finds it gone.
    fn touch(&self, digest: &Digest) -> Result<bool, StorageError>;

    /// Every stored blob, with the names found where blobs live that are not a blob's.
    fn list(&self) -> Result<BlobListing, StorageError>;

    /// Deletes the blob `stat` described, unless it changed since (touched, written again):
    /// whether it went. The caller decided on `stat` (its age), then checked that no metadata
    /// references the blob: a replica that links it meanwhile touched it first, so this fails.
    fn delete(&self, digest: &Digest, stat: &BlobStat) -> Result<bool, StorageError>;

    /// Takes a damaged blob out of service, keeping its bytes for an operator with a note of
    /// `why`: where it went, or `None` when it was already gone (another reader was first).
    fn quarantine(&self, digest: &Digest, why: &str) -> Result<Option<String>, StorageError>;

    /// Starts upload session `id` of `repo`; `None` when a session of that id exists already
    /// (another caller, or another replica, started it at the same moment): open that one.
    fn create_upload(
        &self,
        id: &str,
        repo: &str,
    ) -> Result<Option<Box<dyn UploadData>>, StorageError>;

    /// An existing upload session (after a restart, or started by another replica) with the
    /// repository it belongs to; `None` when there is no such session.
    fn open_upload(&self, id: &str) -> Result<Option<OpenedUpload>, StorageError>;

    /// A reader of session `id`'s bytes that does not hold the session (readers of a blob being
    /// filled, while the filler appends): `None` when the session is gone. It may read past the
    /// size it had when opened, up to what the session holds now.
    fn upload_reader(&self, id: &str) -> Result<Option<Box<dyn BlobSource>>, StorageError>;

    /// Upload sessions with when each last grew, for expiry.
    fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError>;

    /// Deletes session `id` and its bytes; nothing when it is gone already.
    fn remove_upload(&self, id: &str);

    /// Makes a session's bytes, verified by the caller against `digest`, the blob `digest`,
    /// whole or not at all. The session itself is removed by the caller afterwards.
    fn install_upload(
        &self,
        data: &mut dyn UploadData,
        digest: &Digest,
    ) -> Result<(), StorageError>;

    /// The local filesystem that blob bytes fill, when they fill one: `--min-free` is checked
    /// against it before an upload grows. `None` for an object store, where there is no local
    /// disk for the bytes to fill (the reserve still guards the metadata in the data directory).
    fn local_space(&self) -> Option<&Space>;
}

/// A session found by [`BlobStore::open_upload`]: the repository it belongs to, and its bytes.
pub type OpenedUpload = (String, Box<dyn UploadData>);

/// A stored blob as GC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStat {
    pub size: u64,
    /// Last written or touched; where the store records whole seconds, the end of that second,
    /// so GC never sees a blob as older than it is.
    pub modified: SystemTime,
    /// What [`BlobStore::delete`] checks has not changed: an ETag; on the local disk the
    /// modification time, in nanoseconds.
    pub version: String,
}

/// What [`BlobStore::list`] found.
#[derive(Debug, Default)]
pub struct BlobListing {
    /// Every blob by digest, sorted.
    pub blobs: Vec<(Digest, u64)>,
    /// Names where blobs live that name no blob: left alone, named for the operator.
    pub stray: Vec<String>,
}

/// Small content waiting to be made visible under its digest; dropped unused, it leaves nothing.
pub trait StagedBlob: Send {
    /// Makes the staged bytes the blob `digest` (a no-op, apart from a touch, when it is
    /// stored already).
    fn install(self: Box<Self>, digest: &Digest) -> Result<(), StorageError>;
}

/// A stored blob (or a session's bytes) opened for reading.
pub trait BlobSource: Send + fmt::Debug {
    /// Bytes stored when it was opened.
    fn size(&self) -> u64;

    /// Streams `range` into the caller's runtime. A source shorter than the range ends the
    /// stream with `UnexpectedEof`; with `check` (a complete read), the bytes are hashed on
    /// the way and the last chunk is held back until they matched (see [`super::reader`]).
    /// Call inside a tokio runtime.
    fn stream(self: Box<Self>, range: Range<u64>, check: Option<Check>) -> BlobReader;

    /// At most `len` bytes at `offset` (fewer only at the end), blocking.
    fn read_at(&mut self, offset: u64, len: u64) -> std::io::Result<Bytes>;

    /// The bytes from the start as a blocking reader (scrub, bundle export, re-hashing).
    fn into_read(self: Box<Self>) -> BlobRead;
}

/// A blob's bytes as a blocking reader. A file stays a file, so copying it to another file
/// can use `copy_file_range` (the kernel moves the bytes; bundle export).
pub enum BlobRead {
    File(std::fs::File),
    Stream(Box<dyn Read + Send>),
}

impl Read for BlobRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlobRead::File(file) => file.read(buf),
            BlobRead::Stream(stream) => stream.read(buf),
        }
    }
}

/// Bytes hashed per read when a whole blob or session is hashed.
pub const HASH_CHUNK: usize = 1 << 20;

/// Hashes everything `read` yields with `algorithm`; returns the hasher and the length.
pub fn hash_all(read: &mut dyn Read, algorithm: Algorithm) -> std::io::Result<(Hasher, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        match read.read(&mut buf) {
            Ok(0) => return Ok((hasher, len)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where a reopened session stands.
pub struct Resumed {
    /// Bytes the session holds.
    pub len: u64,
    /// Their hash, when reopening hashed them (the local disk does, once, on first use); `None`
    /// defers hashing to the seal (an object store, where reading the bytes back costs a
    /// download: a session that only this replica grew never needs it).
    pub hasher: Option<Hasher>,
}

/// The bytes of one upload session, where the store keeps them. The generic session
/// ([`super::Session`]) keeps the hash, the length and the free-space checks on top.
pub trait UploadData: Send {
    /// Where the session's bytes stand when it is (re)opened.
    fn resume(&mut self) -> Result<Resumed, StorageError>;

    /// Appends bytes: all of them or, on an error, none stay visible (the caller rolls back).
    fn append(&mut self, data: &[u8]) -> Result<(), StorageError>;

    /// Drops everything after the first `len` bytes (a chunk that failed halfway).
    fn truncate(&mut self, len: u64) -> Result<(), StorageError>;

    /// Makes everything appended so far part of the session for every reader and every other
    /// replica (the end of an acknowledged chunk). The local disk needs nothing: the file is
    /// the session.
    fn commit(&mut self) -> Result<(), StorageError>;

    /// The length the store holds now, when another writer (a replica that took the next
    /// chunk) may have changed it since `known`: `Some(len)` when it differs. The local disk
    /// has no other writer: always `None`.
    fn changed_since(&mut self, known: u64) -> Result<Option<u64>, StorageError>;

    /// Bytes readers can see ([`BlobStore::upload_reader`]): everything appended on the local
    /// disk; what was committed in an object store.
    fn readable_len(&self) -> u64;

    /// Makes the bytes durable before they are installed (fsync; a commit in an object store).
    fn make_durable(&mut self) -> Result<(), StorageError>;

    /// Hashes every byte the session holds (at seal, when the hash kept while appending does
    /// not cover all of them).
    fn hash(&mut self, algorithm: Algorithm) -> Result<(Hasher, u64), StorageError>;

    /// Where the bytes are, for errors.
    fn describe(&self) -> String;

    /// For [`super::filesystem`]'s tests and installs: the session as the file system's.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}
