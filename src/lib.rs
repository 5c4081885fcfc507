//! p2p-mediastream: a WebTorrent tracker (WebSocket signalling for P2P Media Loader and
//! WebTorrent) and the HTTP server of a live HLS stream and its web player, in one process.
//!
//! # Layout
//! - `protocol`: the wire protocol as pure data (ids, requests, responses); no I/O.
//! - `config`: settings, defaults, file/env layering, validation.
//! - `swarm::state`: the swarm logic as plain data (peers, offer routing, expiry).
//! - `swarm` (actor shell), `swarm::shard` (one per Arbiter, owns info_hash -> swarm).
//! - `session`: one actor per WebSocket: heartbeat, limits, parse/serialise;
//!   `memberships`: the swarms it joined.
//! - `messages`: every message between actors.
//! - `http`: routes (`/hls`, `public/`, stats, metrics, health), the tracker upgrade
//!   (`http::ws`) and the WebSocket I/O on the raw socket (`http::ws_io`).
//! - `connections`: admission caps and the session list for shutdown.
//! - `client_ip`, `metrics`, `shutdown`, `app` (what all threads share).
//!
//! # Threads
//! HTTP workers (one per core by default) run the sessions (a task each), and so all JSON
//! work; `swarm.shards` Arbiters run the shards and their swarms, chosen by info_hash.

pub mod access;
pub mod app;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod http;
pub mod memberships;
pub mod messages;
pub mod metrics;
pub mod protocol;
pub mod session;
pub mod shutdown;
pub mod swarm;

use std::{io, net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use actix_web::{dev::ServerHandle, App};
use log::{info, warn};

pub use config::Settings;

use app::Shared;
use connections::ConnectionRegistry;
use metrics::Metrics;
use protocol::ParseLimits;
use swarm::{shard::SwarmDirectory, state::SwarmLimits, SwarmConfig};

/// A started server: its bound addresses and the handles to wait for or stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub server: actix_web::dev::Server,
    pub handle: ServerHandle,
    pub shared: Arc<Shared>,
}

/// Binds and starts everything; must be called inside an actix `System`. The returned
/// `server` future completes when the server has stopped (after SIGTERM/SIGINT, or
/// `handle.stop`).
pub fn start(settings: Settings) -> io::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let tracker = &settings.tracker;
    let limits = SwarmLimits {
        max_offers: tracker.max_offers,
        max_peers: tracker.max_peers_per_swarm,
        peer_ttl: Duration::from_secs(tracker.peer_ttl_secs),
        offer_ttl: Duration::from_secs(tracker.offer_ttl_secs),
        max_pending_offers: tracker
            .max_peers_per_swarm
            .saturating_mul(tracker.max_offers)
            .saturating_mul(2)
            .max(1024),
    };
    let swarm_config = SwarmConfig {
        limits,
        mailbox: settings.swarm.mailbox,
        max_dropped_deliveries: settings.swarm.max_dropped_deliveries,
        sweep_interval: Duration::from_secs(tracker.sweep_interval_secs),
    };
    // Shards start before the HTTP server: the app factory runs once per worker, and
    // starting them there would make one set per worker.
    let directory = SwarmDirectory::start(settings.shard_count(), swarm_config, metrics.clone());
    let parse_limits = ParseLimits {
        max_sdp_bytes: tracker.max_sdp_bytes,
        max_scrape_hashes: tracker.max_scrape_hashes,
        max_offers: tracker.max_offers,
    };

    for (what, dir) in [
        ("http.public_dir", &settings.http.public_dir),
        ("http.hls_dir", &settings.http.hls_dir),
    ] {
        if !dir.is_dir() {
            warn!(
                "{what} {} is not a directory; it will answer 404",
                dir.display()
            );
        }
    }

    // Bind first so that `Shared` can list the real addresses (port 0 resolved).
    let probe_binds = settings.bind_addresses();
    let listeners: Vec<std::net::TcpListener> = probe_binds
        .iter()
        .map(|bind| {
            std::net::TcpListener::bind(bind).map_err(|err| {
                io::Error::new(err.kind(), format!("cannot listen on {bind}: {err}"))
            })
        })
        .collect::<io::Result<_>>()?;
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<io::Result<_>>()?;

    let access = access::AccessList::load(&settings.access)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;

    let shared = Arc::new(Shared {
        access,
        parse_limits,
        directory,
        metrics,
        connections: ConnectionRegistry::new(
            settings.server.max_connections,
            settings.server.max_connections_per_ip,
        ),
        started_at: Instant::now(),
        bound: addrs.iter().map(ToString::to_string).collect(),
        settings,
    });

    let settings = &shared.settings;
    let mut server_builder = actix_server::Server::build()
        .max_concurrent_connections(settings.server.max_connections.max(1))
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .shutdown_signal(shutdown::signal(shared.clone()));
    if settings.server.workers > 0 {
        server_builder = server_builder.workers(settings.server.workers);
    }
    // Tells idle keep-alive HTTP connections to close when shutdown starts (as
    // actix-web's HttpServer does).
    let graceful = server_builder.graceful_shutdown_signal();
    for listener in listeners {
        let addr = listener.local_addr()?;
        let shared = shared.clone();
        let graceful = graceful.clone();
        server_builder =
            server_builder.listen(format!("p2p-mediastream-{addr}"), listener, move || {
                http_service(&shared, addr, graceful.clone())
            })?;
    }
    let server = server_builder.run();
    spawn_housekeeping(&shared);
    // Only now, with every handler in place, tell the world (and tests) we listen.
    for addr in &addrs {
        info!(
            "listening on http://{addr} (tracker at ws://{addr}{})",
            settings.ws.path
        );
    }
    info!(
        "{} swarm shard(s); announce interval {} s; max {} connections",
        shared.directory.len(),
        settings.tracker.announce_interval_secs,
        settings.server.max_connections
    );
    Ok(Running {
        addrs,
        handle: server.handle(),
        server,
        shared,
    })
}

/// One listener's HTTP/1.1 service: actix-web's `App` for plain requests, and the tracker's
/// upgrade service for WebSocket upgrades (actix-web's `HttpServer` offers no upgrade
/// hook, so the service is assembled here the way `HttpServer` does it).
fn http_service(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    graceful: actix_server::GracefulShutdownSignal,
) -> impl actix_service::ServiceFactory<
    actix_web::rt::net::TcpStream,
    Config = (),
    Response = (),
    Error = actix_http::error::DispatchError,
    InitError = (),
> {
    let app_shared = shared.clone();
    let app = App::new().configure(move |cfg| http::configure(cfg, &app_shared));
    let settings = &shared.settings.server;
    actix_http::HttpService::build()
        .client_request_timeout(Duration::from_secs(settings.client_request_timeout_secs))
        .client_disconnect_timeout(Duration::from_millis(settings.client_disconnect_timeout_ms))
        // Signalling is latency-bound small writes: without TCP_NODELAY, Nagle plus
        // delayed ACKs add up to 40 ms to a relay.
        .tcp_nodelay(true)
        .local_addr(addr)
        .graceful_shutdown_signal(move || {
            let graceful = graceful.clone();
            async move { graceful.notified().await }
        })
        .upgrade(http::ws::upgrade_service(shared.clone()))
        .finish(actix_service::map_config(
            actix_service::IntoServiceFactory::into_factory(app),
            // Only consulted for requests without a Host header (URL generation and
            // ConnectionInfo's fallback host).
            |()| actix_web::dev::AppConfig::default(),
        ))
        .tcp()
}

/// Background tasks on the system's main arbiter: the frozen-session watchdog and the
/// access list reloads (timer and SIGHUP). They end with the System.
fn spawn_housekeeping(shared: &Arc<Shared>) {
    let ws = &shared.settings.ws;
    let ping = Duration::from_secs(ws.ping_interval_secs);
    // A live session runs at least once per ping interval (its heartbeat), so one that has
    // not run for the idle timeout plus two pings is frozen behind a full socket.
    let frozen_after = Duration::from_secs(ws.idle_timeout_secs) + 2 * ping;
    let watchdog = shared.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(ping);
        loop {
            ticks.tick().await;
            let cut = watchdog.connections.cut_frozen(frozen_after);
            if cut > 0 {
                watchdog
                    .metrics
                    .closed_by_server_n("stopped_reading", cut as u64);
            }
        }
    });

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, synchronously, before the server says it is listening: a SIGHUP
        // that arrived before the handler existed would kill the process (its default).
        let hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(err) => {
                warn!(
                    "cannot listen for SIGHUP ({err}); the access list reloads on its timer only"
                );
                None
            }
        };
        if let Some(mut hangups) = hangups {
            let reloader = shared.clone();
            actix_web::rt::spawn(async move {
                while hangups.recv().await.is_some() {
                    match reloader.access.reload() {
                        Ok(_) if reloader.access.mode() == config::AccessMode::Off => {
                            info!("SIGHUP: no access list configured; nothing to reload")
                        }
                        Ok(count) => info!("SIGHUP: access list reloaded: {count} info_hashes"),
                        Err(err) => warn!("SIGHUP: {err}; keeping the previous list"),
                    }
                }
            });
        }
    }

    if shared.access.mode() == config::AccessMode::Off {
        return;
    }
    let reloader = shared.clone();
    let every = Duration::from_secs(shared.settings.access.reload_interval_secs);
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(every);
        loop {
            ticks.tick().await;
            match reloader.access.reload_if_changed() {
                Ok(Some(count)) => info!("access list reloaded: {count} info_hashes"),
                Ok(None) => {}
                Err(err) => warn!("{err}; keeping the previous list"),
            }
        }
    });
}

/// Runs the server until it is stopped; used by the binary.
pub async fn run(settings: Settings) -> io::Result<()> {
    let running = start(settings)?;
    running.server.await?;
    info!("stopped");
    Ok(())
}
