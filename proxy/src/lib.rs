//! The API proxy: TLS listener, route table, streaming reverse proxy, config and cert reload.
//!
//! Replaces the nginx-based IoT Edge API proxy module: one port (443) for every request from
//! child devices, routed by path prefix (and optional header) to the local registry, the
//! blob-storage module or the parent layer's proxy. See `proxy/README.md` for the settings.
//!
//! | module | what lives there |
//! | --- | --- |
//! | `config` | file, IoT Edge environment and flags merged into one [`Config`]; what a reload changes |
//! | `server` | [`Proxy`]: the TLS listener, one acceptor handing connections to workers, the request handler (route, forward, retry, error bodies), the reload and health-check loops |
//! | `balance` | routes with several upstreams: the choice among them, their health, the active check |
//! | `upstream` | connections to upstreams (TCP with a timeout, TLS against the current trust bundle) |
//! | `body` | bodies streamed through while counting bytes; the access-log line when one ends |
//! | `metrics` | Prometheus counters and the admin port |
//!
//! A request enters at `server`'s handler: the route table picks an upstream (`balance`
//! chooses when the route has several), `upstream` connects, `body` streams both ways, errors become OCI-style JSON saying whose fault they are.
//! In the one-module deployment (`serve --proxy-listen`, [`Proxy::bind_one_module`]) an upstream
//! may be `in-process`: the registry's router in this process, called with the request.

#![forbid(unsafe_code)]

pub mod balance;
pub mod body;
pub mod config;
pub mod metrics;
pub mod server;
pub mod upstream;

pub use config::{Config, ConfigError, Flags};
pub use server::{Proxy, StartError};
