//! Graceful shutdown: on SIGTERM or SIGINT, refuse new connections, close every session
//! with 1001 (Going Away) so clients reconnect after their back-off, then let actix-server
//! drain for `server.shutdown_timeout_secs`. Installed with `HttpServer::shutdown_signal`,
//! which replaces actix's own signal handling.

use std::sync::Arc;

use actix_web_actors::ws::CloseCode;
use log::{info, warn};

use crate::{app::Shared, messages::CloseSession};

/// Resolves when the process is asked to stop, after telling every session.
pub async fn signal(shared: Arc<Shared>) {
    let name = wait_for_signal().await;
    let closed = shared.connections.close_all(CloseSession {
        code: CloseCode::Away,
        reason: "server shutting down",
    });
    info!("{name} received: closing {closed} WebSocket connections with 1001, then stopping");
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            warn!("cannot install signal handlers; stop the process with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
