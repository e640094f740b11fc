//! The API proxy: TLS listener, route table, streaming reverse proxy, config and cert reload.
//!
//! Replaces the nginx-based IoT Edge API proxy module: one port (443) for every request from
//! child devices, routed by path prefix (and optional header) to the local registry, the
//! blob-storage module or the parent layer's proxy. See `proxy/README.md` for the settings.

#![forbid(unsafe_code)]

pub mod body;
pub mod config;
pub mod metrics;
pub mod server;
pub mod upstream;

pub use config::{Config, ConfigError, Flags};
pub use server::{Proxy, StartError};
