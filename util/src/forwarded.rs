//! What the proxy in this process tells the registry of a request's way in. Between processes
//! `X-Forwarded-Proto` and `X-Forwarded-Host` carry it; in one process the proxy hands it over as
//! a request extension instead, since formatting headers there to parse them here was a good part
//! of the proxy's own work per request (README, Performance, one module).

/// The request came through the TLS proxy in this process: its client addressed this registry as
/// `https://` and its `Host`, which the proxy keeps. The client's address travels beside it, as
/// axum's `ConnectInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViaTlsProxy;
