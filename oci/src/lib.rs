//! The protocol both ends of a connected registry speak, at the bottom of the workspace:
//! `registry` serves it and `sync` reads it, and neither declares these types again, so what a
//! child parses is by construction what its parent wrote.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`attributes`] | `changeableAttributes`: whether an item may be deleted, overwritten, pulled, listed |
//! | [`digest`] | content digests (`sha256:…`), parsing and streaming hashers |
//! | [`name`] | repository names and tags, checked against the distribution spec's grammar |
//! | [`reference`](mod@reference) | a manifest reference in a URL: a tag or a digest |
//! | [`media_type`] | the manifest media types and which of them are checked |
//! | [`descriptor`] | descriptors and platforms, as manifests and indexes carry them |
//! | [`manifest`] | the one manifest and index parser (what a manifest references) |
//! | [`error_code`] | the OCI error codes and the HTTP status each is answered with |
//! | [`fault`] | where a failure came from (client, upstream, local, internal) and whether a retry helps |
//! | [`feed`] | the typed, versioned change-feed page a parent of ours serves its children |
//! | [`gateway`] | the status report a child sends up and the tree of registries a parent shows |
//!
//! No HTTP, no async runtime, no storage: only the vocabulary and its rules.

#![forbid(unsafe_code)]

pub mod attributes;
pub mod descriptor;
pub mod digest;
pub mod error_code;
pub mod fault;
pub mod feed;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gateway;
pub mod manifest;
pub mod media_type;
pub mod name;
pub mod reference;

pub use attributes::{AttributesPatch, ChangeableAttributes};
pub use descriptor::{Descriptor, Platform};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error_code::ErrorCode;
pub use fault::{Class, Classify, Fault};
pub use feed::{
    Change, ChangeKind, FeedError, FeedPage, Origin, FEED_VERSION, SYNC_USER_AGENT_PREFIX,
};
pub use manifest::{Content, Manifest, ManifestError};
pub use name::{validate_tag, NameError, RepoName};
pub use reference::{Reference, ReferenceError};
