//! The registry's HTTP API: `/v2` (OCI Distribution v1.1) and `/acr/v1` (the ACR data-plane
//! API and the change feed children sync from). `auth` puts access control in front of every
//! route and serves the token service (`/oauth2/token`); `gateway` serves a child registry its
//! settings; `caller` tells listings what the
//! caller may see.

pub mod access_log;
pub mod acr;
pub mod auth;
pub mod caller;
mod drain;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod mirror_ns;
pub mod on_demand;
pub mod v2;
mod watched_body;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Router;

use crate::storage::Store;
use oci::name::RepoName;

/// Explains why a repository has no such manifest, tag or blob here, when something outside
/// the registry knows (sync: "the repository is outside this registry's sync scope"). Its
/// answer is added to the 404's message; it must name no internal address.
pub type MissHint = Arc<dyn Fn(&RepoName) -> Option<String> + Send + Sync>;

/// Who may write through the API. Sync writes through the store, never through these routes, so
/// a read-only registry still fills from its parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Writes {
    /// Clients push and delete (a standalone registry; a child in ReadWrite mode).
    #[default]
    Allowed,
    /// Every client write is refused (a child in ReadOnly mode: content comes from the parent).
    Refused,
}

/// Who may write, as the routes read it on every request: a switch, so that a child whose
/// parent changes its mode (ReadOnly, ReadWrite) applies it at its next pass, not its next start.
#[derive(Clone, Debug, Default)]
pub struct WriteSwitch(Arc<AtomicBool>);

impl WriteSwitch {
    pub fn new(writes: Writes) -> WriteSwitch {
        WriteSwitch(Arc::new(AtomicBool::new(writes == Writes::Refused)))
    }

    pub fn get(&self) -> Writes {
        if self.0.load(Ordering::Relaxed) {
            Writes::Refused
        } else {
            Writes::Allowed
        }
    }

    pub fn set(&self, writes: Writes) {
        self.0.store(writes == Writes::Refused, Ordering::Relaxed);
    }
}

/// How the routes behave beyond the store they serve.
#[derive(Clone, Default)]
pub struct Options {
    /// Explains a 404 for a repository (see [`MissHint`]).
    pub miss_hint: Option<MissHint>,
    pub writes: WriteSwitch,
    /// Pull-through: where a pull that misses here is fetched from (see [`on_demand`]).
    pub on_demand: Option<on_demand::OnDemand>,
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub miss_hint: Option<MissHint>,
    pub writes: WriteSwitch,
    pub on_demand: Option<on_demand::OnDemand>,
}

/// The registry's routes over `store`. The binary merges other parts' routes into it.
pub fn router(store: Store) -> Router {
    router_with(store, Options::default())
}

/// [`router`] with [`Options`]: 404s that say what a miss hint knows, writes refused.
pub fn router_with(store: Store, options: Options) -> Router {
    let state = AppState {
        store,
        miss_hint: options.miss_hint,
        writes: options.writes,
        on_demand: options.on_demand,
    };
    v2::routes()
        .merge(acr::routes())
        .layer(axum::middleware::from_fn(drain::drain_unread_body))
        .with_state(state)
}
