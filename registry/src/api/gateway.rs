//! `GET /acr/v1/_gateway/{name}/config`: the settings a child registry defined here
//! (`child create`) receives from its parent at start and at every sync pass: mode,
//! repositories, schedule, window, message TTL, platforms, bandwidth limit, as strings the
//! child's own settings parser reads. The access layer lets only that child's sync token in
//! (`config/read` on that gateway name); the answer comes from the access model
//! ([`access::Authority::child_config`]), never from the content store.

use std::sync::Arc;

use access::Authority;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::error::ApiError;
use oci::ErrorCode;

/// The route, over the registry's access model (present only with access control on: without
/// tokens there are no children).
pub fn routes(authority: Arc<Authority>) -> Router {
    Router::new()
        .route("/acr/v1/_gateway/{name}/config", get(config))
        .with_state(authority)
}

/// The child name of a `_gateway/{name}/config` path (the part after `/acr/v1/`), for the
/// access layer.
pub(crate) fn config_route(rest: &str) -> Option<&str> {
    let name = rest.strip_prefix("_gateway/")?.strip_suffix("/config")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

async fn config(State(authority): State<Arc<Authority>>, Path(name): Path<String>) -> Response {
    match authority.child_config(&name) {
        Some(settings) => axum::Json(settings).into_response(),
        None => ApiError::new(
            ErrorCode::NameUnknown,
            format!("no child registry {name} is defined here: `child list` on this registry shows them"),
        )
        .into_response(),
    }
}
