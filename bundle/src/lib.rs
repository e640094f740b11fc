//! Offline bundles (issue 15): what a registry holds, written to one file that travels on a
//! disk to a site no network reaches, and stored there again as sync would have stored it.
//!
//! - [`export()`] writes the tagged images of the repositories asked for, with the referrers of
//!   each manifest, as an OCI image layout in a tar ([`mod@format`] describes it; `skopeo copy
//!   oci-archive:FILE:REPO:TAG` reads it). Given a site's [`State`] it leaves out every blob
//!   and manifest the site holds, so a second bundle carries only what changed.
//! - [`import()`] verifies every digest and writes through the store's own API bottom-up
//!   (blobs, then manifests children first, then tags), as sync does: a tag never points at
//!   missing content. A truncated file is refused before anything is written; an altered
//!   blob is refused when its bytes are hashed, before it is kept. Blobs already stored are
//!   skipped by seeking past them, and a blob cut short resumes where its upload session
//!   ended, so an interrupted import goes on without reading again what it stored.
//! - [`state()`] is what a site holds, small: the digests of its blob files and its tags.
//!
//! Everything here is blocking and HTTP-free: the CLI calls it on a store it opened, or a
//! running registry calls it on its own store when asked on its admin socket.

pub mod error;
pub mod export;
pub mod format;
pub mod import;
pub mod state;

pub use error::BundleError;
pub use export::{export, ExportOptions, ExportReport};
pub use import::{import, ImportReport};
pub use state::{state, State};
