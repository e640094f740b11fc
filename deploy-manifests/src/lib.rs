//! IoT Edge deployment manifests: the checker that holds a manifest to the production
//! checklist and the `${VAR}` renderer. The connection string it checks is parsed by the
//! `connection-string` crate, which sync uses too.
//!
//! The shipped manifests live in `manifests/` and are embedded here (`SHIPPED`) so the
//! binary can list and test them without a path on disk.

#![forbid(unsafe_code)]

pub mod check;
/// The connection string, shared with sync; the checker checks it.
pub use connection_string;
pub mod dupkeys;
pub mod finding;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod image;
pub mod render;
pub mod route;

pub use check::{check, CheckSettings};
pub use connection_string::{ConnectionString, ConnectionStringError, ParentProtocol};
pub use finding::{Finding, Report, Severity, TwinSize};
pub use render::{parse_env_file, render, RenderError};

/// The manifests this crate ships, by file name, so tests and tools can reach them.
pub const SHIPPED: [(&str, &str); 3] = [
    (
        "top-layer.json",
        include_str!("../manifests/top-layer.json"),
    ),
    (
        "lower-layer.json",
        include_str!("../manifests/lower-layer.json"),
    ),
    (
        "single-layer.json",
        include_str!("../manifests/single-layer.json"),
    ),
];
