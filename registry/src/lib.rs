//! The connected registry: storage (blobs, metadata, change log, GC) and the `/v2` and `/acr`
//! HTTP API over it. The protocol's vocabulary (digests, names, manifests, the feed page)
//! comes from the `oci` crate; the few re-exports below save callers an import.

#![forbid(unsafe_code)]

pub mod api;
pub mod storage;

pub use api::error::ApiError;
pub use oci::{Digest, ErrorCode, Origin, Reference, RepoName};
pub use storage::{Limits, StorageError, Store};
