//! Graceful shutdown: on SIGTERM or SIGINT, refuse new connections, close every session
//! with 1001 (Going Away) so clients reconnect after their back-off, and wait (at most
//! `server.shutdown_timeout_secs`) until they are gone; only then is actix-server told to
//! stop, and it drains plain HTTP connections for that long again. Sessions run in tasks
//! of their own, which actix-server does not wait for, hence the wait here. Installed
//! with `ServerBuilder::shutdown_signal`, which replaces actix's own signal handling.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_http::ws::CloseCode;
use log::{info, warn};

use crate::{connection::session::CloseSession, shared::Shared};

/// Resolves when the process is asked to stop, after telling every session.
pub async fn signal(shared: Arc<Shared>) {
    let name = wait_for_signal().await;
    let closed = shared.connections.close_all(CloseSession {
        code: CloseCode::Away,
        reason: "server shutting down",
    });
    info!("{name} received: closing {closed} WebSocket connections with 1001, then stopping");
    let deadline =
        Instant::now() + Duration::from_secs(shared.settings.server.shutdown_timeout_secs);
    let mut open = shared.connections.open_connections();
    while open > 0 && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        open = shared.connections.open_connections();
    }
    if open > 0 {
        warn!("{open} WebSocket connections still open after the shutdown timeout; dropping them");
    }
    if let Some(cluster) = &shared.cluster {
        // After the sessions: their leaves for swarms owned elsewhere went out on the bus.
        // The bus says `Leaving` (the others drop our peers at once instead of after the
        // expiry), flushes and stops.
        let bus = cluster.bus().clone();
        bus.shutdown();
        let joined = actix_web::rt::task::spawn_blocking(move || bus.join());
        if actix_web::rt::time::timeout(Duration::from_secs(2), joined)
            .await
            .is_err()
        {
            warn!("the cluster bus did not stop within 2 s");
        }
    }
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
