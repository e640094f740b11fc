//! Certificates for the nested edge: the edge CA chain, loading into rustls, inspection,
//! trust diagnosis, the development chain and renewal.
//!
//! Every error names the file it came from and says how to fix it, because a wrong
//! certificate is the most common reason a nested edge deployment fails.
//!
//! | module | what lives there |
//! | --- | --- |
//! | `gen`, `dev` | issuing the chain (root, intermediate, edge CA, server, client); the development chain |
//! | `files`, `tls` | reading PEM files; loading them into rustls (client and server configs) |
//! | `inspect`, `verify`, `doctor` | showing a chain; checking one offline; diagnosing a live server's trust failure |
//! | `reload`, `renew` | a server certificate and trust bundle reloaded when their files change; renewal before expiry |
//! | `host` | this machine's names and addresses, for a development certificate on every address |

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
