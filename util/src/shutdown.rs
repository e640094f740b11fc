//! The shutdown signal every long-running command waits for: SIGTERM (what `docker stop` and
//! `iotedge restart` send) or SIGINT (Ctrl-C in a terminal).

/// Completes when the process is asked to stop. If SIGTERM cannot be watched (no signal
/// handling available), Ctrl-C alone still stops it.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
