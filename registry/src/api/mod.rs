//! The registry's HTTP API: `/v2` (OCI Distribution v1.1) and `/acr/v1/_changes` (the change
//! feed children sync from). Token auth (`/oauth2`) and access control are not built yet.

pub mod access_log;
pub mod acr;
mod drain;
pub mod error;
pub mod metrics;
pub mod v2;

use std::sync::Arc;

use axum::Router;

use crate::storage::Store;
use oci::name::RepoName;

/// Explains why a repository has no such manifest, tag or blob here, when something outside
/// the registry knows (sync: "the repository is outside this registry's sync scope"). Its
/// answer is added to the 404's message; it must name no internal address.
pub type MissHint = Arc<dyn Fn(&RepoName) -> Option<String> + Send + Sync>;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub miss_hint: Option<MissHint>,
}

/// The registry's routes over `store`. The binary merges other parts' routes into it.
pub fn router(store: Store) -> Router {
    router_with(store, None)
}

/// [`router`] whose 404s for a repository also say what `miss_hint` knows of it.
pub fn router_with(store: Store, miss_hint: Option<MissHint>) -> Router {
    v2::routes()
        .merge(acr::routes())
        .layer(axum::middleware::from_fn(drain::drain_unread_body))
        .with_state(AppState { store, miss_hint })
}
