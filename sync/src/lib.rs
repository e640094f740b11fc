//! Synchronization with the parent registry: parent client, cron schedule and sync window,
//! the copy engine (down and up), persisted progress and status.

#![forbid(unsafe_code)]

pub mod client;
mod copy;
pub mod digest;
pub mod engine;
#[cfg(test)]
mod fake;
mod feed;
pub mod manifest;
pub mod parent;
mod pass;
mod push;
mod reconcile;
pub mod service;
pub mod settings;
pub mod state;
pub mod store;

pub use axum;
pub use client::ParentClient;
pub use engine::{Engine, NoProgress, Progress};
pub use service::SyncService;
pub use settings::{RawSettings, Settings};
pub use state::{Outcome, Pull, StateFile, Summary};
