//! Start-up: binds the listeners, starts the HTTP workers with a swarm shard each, and wires
//! each listener's service (actix-web's `App` for plain requests, the tracker's upgrade for
//! WebSockets). `run` is what the binary calls; tests call `start` inside their own actix
//! `System` to get the bound addresses.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
    time::Instant,
};

use actix_web::{dev::ServerHandle, App};
use log::{info, warn};

use crate::{
    access, cluster,
    config::Settings,
    connection::{registry::ConnectionRegistry, upgrade},
    housekeeping, http,
    metrics::Metrics,
    protocol::ParseLimits,
    shared::Shared,
    shutdown,
    swarm::{actor::SwarmConfig, route::RemoteSessions, shard::SwarmDirectory},
    usage::{
        reports::{Budgets, Limits},
        Usage,
    },
};

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
    let mut metrics = Metrics::new();
    let cluster = cluster::join(&settings.cluster, &mut metrics)?;
    let metrics = Arc::new(metrics);
    let remote_sessions = cluster
        .as_ref()
        .map(|(node, _)| node.clone() as Arc<dyn RemoteSessions>);
    // One shard per HTTP worker, started by each worker on its own thread (see
    // `listener_service`'s caller below).
    let workers = settings.worker_count();
    let directory = SwarmDirectory::new(
        workers,
        SwarmConfig::from(&settings),
        metrics.clone(),
        remote_sessions,
    );
    let parse_limits = ParseLimits::from(&settings.tracker);

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
        cluster: cluster.as_ref().map(|(node, _)| node.clone()),
        parse_limits,
        directory,
        metrics,
        connections: ConnectionRegistry::new(
            settings.server.max_connections,
            settings.server.max_connections_per_ip,
            // Outside a cluster connection ids need no instance part.
            cluster.as_ref().map_or(0, |(node, _)| node.self_id()),
        ),
        started_at: Instant::now(),
        bound: addrs.iter().map(ToString::to_string).collect(),
        usage: Usage::new(settings.http.hls_max_streams),
        report_budgets: Mutex::new(Budgets::new(Limits::from(&settings.reports))),
        settings,
    });

    let settings = &shared.settings;
    let mut server_builder = actix_server::Server::build()
        .max_concurrent_connections(settings.server.max_connections.max(1))
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .shutdown_signal(shutdown::signal(shared.clone()))
        .workers(workers);
    // Tells idle keep-alive HTTP connections to close when shutdown starts (as
    // actix-web's HttpServer does).
    let graceful = server_builder.graceful_shutdown_signal();
    for listener in listeners {
        let addr = listener.local_addr()?;
        let shared = shared.clone();
        let graceful = graceful.clone();
        server_builder =
            server_builder.listen(format!("p2p-mediastream-{addr}"), listener, move || {
                // Runs on each worker's thread before it accepts: that worker's shard.
                shared.directory.start_shard_here();
                listener_service(&shared, addr, graceful.clone())
            })?;
    }
    let server = server_builder.run();
    housekeeping::spawn(&shared);
    if let Some((node, inbound)) = cluster {
        actix_web::rt::spawn(cluster::inbound::run(shared.clone(), node, inbound));
    }
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
fn listener_service(
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
        .upgrade(upgrade::upgrade_service(shared.clone()))
        .finish(actix_service::map_config(
            actix_service::IntoServiceFactory::into_factory(app),
            // Only consulted for requests without a Host header (URL generation and
            // ConnectionInfo's fallback host).
            |()| actix_web::dev::AppConfig::default(),
        ))
        .tcp()
}

/// Runs the server until it is stopped; used by the binary.
pub async fn run(settings: Settings) -> io::Result<()> {
    let running = start(settings)?;
    running.server.await?;
    info!("stopped");
    Ok(())
}
