//! Certificates for the nested edge: the edge CA chain, loading into rustls, inspection,
//! trust diagnosis, the development chain and renewal.
//!
//! Every error names the file it came from and says how to fix it, because a wrong
//! certificate is the most common reason a nested edge deployment fails.

#![forbid(unsafe_code)]

pub mod dev;
pub mod doctor;
mod error;
pub mod files;
pub mod gen;
pub mod host;
pub mod inspect;
pub mod reload;
pub mod renew;
pub mod tls;
pub mod verify;

pub use error::CertError;
/// Re-exported so callers (and tests that build deliberately broken chains) can shape
/// certificate parameters without depending on rcgen themselves.
pub use rcgen;
/// Re-exported: times in this crate's API are `time::OffsetDateTime`.
pub use time;
