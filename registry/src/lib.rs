//! The connected registry: storage (blobs, metadata, change log, GC) and the `/v2` and `/acr`
//! HTTP API over it. The protocol's vocabulary (digests, names, manifests, the feed page)
//! comes from the `oci` crate; the few re-exports below save callers an import.
//!
//! | module | what lives there |
//! | --- | --- |
//! | `api` | the HTTP side: [`api::router`] (what `serve` serves), `api::v2` (the OCI routes: the path is parsed from its end, then `handle` calls one handler per route), `api::acr` (the ACR data-plane API: repositories, tags, manifests and their `changeableAttributes`; and the change feed), `api::auth` (the guard over every route: `need` maps route and method to what the caller must hold; `token` is `/oauth2/token`), `api::caller` (what listings may name to the caller), `api::access_log`, `api::metrics` (request counters and latency for `serve --admin`), `api::on_demand` (pull-through: the `Source` contract sync implements, and one fetch per missing manifest), `api::mirror_ns` (containerd's `?ns=` mirror requests mapped to local names before routing and the guard), `api::drain` (refused bodies are read, up to a budget), `api::error` (`ApiError`, the one mapping from storage errors) |
//! | `child_reports` | the latest status report of each child registry, kept in `DATA/child-reports/` for the tree (`api::gateway`) |
//! | `storage` | the store behind one [`Store`] handle: `blob_store` (the blob contract: blobs, upload sessions' bytes, listing, touch and delete for GC), its implementations `filesystem` (content-addressed files in the data directory, the default) and `azure` (Azure Blob Storage, shared by replicas), `backends` (which are chosen: `--storage`, `--metadata`), `meta` (tags, manifests, links, referrers, the change log; `meta::props`: attributes, times, the lock rules), written over `kv` (the ordered key-value transaction contract, its byte encoding `kv::codec`, and its backends `kv::in_redb`, the default, and `kv::in_postgres`, shared by replicas), `props` (the store's `/acr` conveniences), `uploads` (resumable sessions), `reader` (a blob's bytes as a stream), `fill` (a blob fetched on demand, streamed to every client that asks while it is written and verified: one download per blob), `gc`, `quota` (`--quota`: evicting the synced images least recently pulled; its tables are `meta::quota`), `usage` (blobs, bytes, open uploads and free disk, for metrics and readiness), `error` (`StorageError`) |
//!
//! A request enters at `api::v2::dispatch`, which calls a handler; handlers call the store and
//! never touch files; the store never sees HTTP.

#![forbid(unsafe_code)]

pub mod api;
/// Azurite (the Azure Storage emulator) for the Azure Blob Storage backend's tests.
#[cfg(any(test, feature = "azurite"))]
pub mod azurite;
pub mod child_reports;
pub mod storage;
/// Free loopback ports for the servers tests start, shared by every test helper.
#[cfg(any(test, feature = "azurite", feature = "postgres-test-server"))]
pub mod test_ports;

pub use api::error::ApiError;
pub use oci::{Digest, ErrorCode, Origin, Reference, RepoName};
pub use storage::{Limits, MinFree, StorageError, Store};
