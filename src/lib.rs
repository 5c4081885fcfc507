//! p2p-mediastream: a WebTorrent tracker (WebSocket signalling for P2P Media Loader and
//! WebTorrent) and the HTTP server of a live HLS stream and its web player, in one process.
//!
//! # Layout
//! The modules follow the architecture, from the wire inwards:
//!
//! - [`protocol`]: the tracker protocol as pure data (ids in the JavaScript "binary string"
//!   form, request validation, responses, a client codec for the load tester); no I/O.
//! - [`connection`]: everything between a client's socket and the swarms: the WebSocket
//!   upgrade and admission, the socket I/O, the `PeerSession` actor (one per socket) with
//!   its plain-data parts (message reassembly, rate limit, memberships), and the registry
//!   of live connections.
//! - [`swarm`]: one `Swarm` actor per info_hash around `SwarmState` (the swarm logic as
//!   plain data), grouped by `SwarmShard`s on their own threads; the messages sessions and
//!   swarms exchange.
//! - [`http`]: the routes for plain HTTP: `/hls` (with HLS headers), the player at "/",
//!   `/config.json`, `/stats.json`, `/metrics`, `/healthz`, `/readyz`.
//! - [`server`]: start-up (listeners, shards, workers) and [`housekeeping`] (watchdog,
//!   access list reloads); [`shutdown`]: SIGTERM/SIGINT closes every socket with 1001.
//! - [`config`]: settings, their embedded defaults, file/env layering and validation.
//! - [`access`] (info_hash allow/deny list), [`client_ip`] (X-Forwarded-For from trusted
//!   proxies only), [`metrics`] (counters and gauges), [`shared`] (what every thread reads).
//! - [`cluster`]: several instances sharing their swarms over NATS (off unless
//!   `[cluster] nats_urls` is set): the bus thread, who is alive and who owns which swarm,
//!   and `ClusterNode`, which implements the ports `connection::requests::RemoteSwarms`
//!   and `swarm::route::RemoteSessions` for swarms and sockets on other instances.
//! - [`usage`]: origin offload accounting: `/hls` bytes by stream and kind, and the viewer
//!   reports (`POST /api/report`: schema, plausibility, per-address budgets) summed per
//!   stream; read by `/metrics`, `/stats.json` and the dashboard (`http::dashboard`).
//!
//! # Threads
//! HTTP workers (one per core by default) run the sessions (a task each), and so all JSON
//! work, and one swarm shard each (the swarms whose info_hash hashes to it), so a session
//! and the swarms of its own worker's shard share a thread. Sessions and swarms talk only
//! through actor messages, whether or not they share a thread: a swarm never waits on a session
//! (relays are `try_send`, dropped and counted when a session's mailbox is full). In a
//! cluster one more thread (`cluster-bus`) owns the NATS connection; actors only queue for
//! it with `try_send`.

pub mod access;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod housekeeping;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod swarm;
pub mod usage;

pub use config::Settings;
pub use server::{run, start, Running};
