//! The connected registry: storage, the `/v2` API, auth, change feed, GC.

#![forbid(unsafe_code)]

pub mod api;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;
pub mod reference;
pub mod storage;

pub use digest::Digest;
pub use error::{ApiError, ErrorCode, StorageError};
pub use name::RepoName;
pub use reference::Reference;
pub use storage::{Limits, Origin, Store};
