//! The registry's HTTP API: `/v2` (OCI Distribution v1.1) and `/acr/v1/_changes` (the change
//! feed children sync from). `/oauth2` joins here.

pub mod acr;
mod drain;
pub mod v2;

use axum::Router;

use crate::storage::Store;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
}

/// The registry's routes over `store`. The binary merges other parts' routes into it.
pub fn router(store: Store) -> Router {
    v2::routes()
        .merge(acr::routes())
        .layer(axum::middleware::from_fn(drain::drain_unread_body))
        .with_state(AppState { store })
}
