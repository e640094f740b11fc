//! Synchronization with the parent registry: parent client, cron schedule and sync window,
//! the copy engine (down and up), persisted progress and status.
//!
//! Layout, in the order a pass runs:
//! - `service`: the schedule `serve` runs (windows, polls, retries) and `GET /acr/v1/_sync/status`;
//!   `sync --once` calls [`Engine::run_pass`] directly.
//! - `totals`: counters over every pass since start, for `serve --admin`'s metrics.
//! - `engine`: what a pass works with (the parent, the local store, settings, state) and its errors.
//! - `pass`: one pass: push up (`push`, ReadWrite), then pull down: which repositories and tags to
//!   compare, the summary.
//! - `feed`: a parent of ours' change feed decides what a pull compares; `reconcile` adds what
//!   drifted here; otherwise everything is compared.
//! - `copy`: bringing a manifest and what it references down, bottom-up, verified, resumable.
//! - The two contracts: `parent` (what sync needs from a parent; `client` is the HTTP one) and
//!   `store` (what it needs from the local registry; `registry::Store` implements it). In-memory
//!   fakes of both (`fake`, tests only) test the engine without a network.
//! - `report`: the status report a child sends its parent after every pass (with its own
//!   children's), and the report a registry makes of itself for the tree.
//! - `parent_config`: the settings a child receives from its parent, kept for when it is
//!   unreachable.
//! - `upstreams`: other registries serving local namespaces (`mcr/` from mcr.microsoft.com)
//!   besides the parent, and the one mapping from a local name to its upstream (and from
//!   containerd's `?ns=`); `namespaced`: a parent seen through local names, so each upstream
//!   gets an engine of its own that works in local names.
//! - `on_demand`: pull-through's source (the registry's `api::on_demand::Source` over the parent
//!   client), and the one place that decides which parent serves a repository's misses.
//! - `bandwidth`: the cap on transfers to and from the parent, and the throttle that holds it.
//! - `settings` (validated once at start), `state` (persisted progress), `platforms` (the
//!   platform filter). The protocol's types (digests, manifests, the feed page) come from the
//!   `oci` crate; backoff, durations and atomic writes from `util`; the connection string from
//!   `connection-string`.

#![forbid(unsafe_code)]

pub mod bandwidth;
pub mod client;
mod copy;
pub mod engine;
#[cfg(test)]
mod fake;
mod feed;
pub mod lease;
pub mod namespaced;
pub mod on_demand;
pub mod parent;
pub mod parent_config;
mod pass;
pub mod platforms;
mod push;
mod reconcile;
pub mod report;
pub mod service;
pub mod settings;
pub mod state;
pub mod stop;
pub mod store;
pub mod totals;
pub mod upstreams;

pub use axum;
pub use client::ParentClient;
pub use engine::{Engine, NoProgress, Progress};
pub use service::SyncService;
pub use settings::{RawSettings, Settings};
pub use state::{Outcome, Pull, StateFile, Summary};
