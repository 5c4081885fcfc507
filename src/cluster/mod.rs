//! Many instances, one swarm: the cluster's building blocks. Several tracker processes
//! share their swarms over a NATS bus: each swarm has one owner instance, chosen by
//! rendezvous hashing of its info_hash over the live instances; an instance forwards the
//! requests of its sockets for swarms owned elsewhere to the owner's inbox, and the owner
//! sends each relayed offer or answer to the inbox of the instance holding the target
//! socket. When the owner is local nothing touches the bus. Clustering is off unless
//! `[cluster] nats_urls` is set.
//!
//! # Layout
//! - `settings`: the `[cluster]` section and its validation.
//! - `wire`: the bus messages and their versioned binary encoding (pure data).
//! - `ring`: who owns a swarm (rendezvous hashing; pure functions).
//! - `members`: who is alive (plain data, `now` passed in) and the shared live view.
//! - `bus`: the bus task on its own thread, behind the `Transport` trait, with NATS as the
//!   engine; actors only ever `try_send` to its bounded queue.
//! - `node`: `ClusterNode`, this instance's side of the cluster as the tracker sees it: it
//!   implements the ports `RemoteSwarms` (sessions -> swarms owned elsewhere) and
//!   `RemoteSessions` (swarms -> sessions held elsewhere).
//! - `inbound`: serves what other instances ask of this one, and applies view changes.
//! - `stats`: routing counters and the `/metrics` collector.
//!
//! # Threads
//! Everything here is plain data except `bus`, which runs one thread (`cluster-bus`) with
//! its own Tokio runtime: the NATS client, heartbeats, encoding and decoding live there and
//! never on an actix worker or shard.

pub mod bus;
pub mod inbound;
pub mod members;
pub mod node;
pub mod ring;
pub mod settings;
pub mod stats;
pub mod wire;

use std::{io, sync::Arc};

use log::info;

use crate::metrics::Metrics;
use inbound::Inbound;
use node::ClusterNode;
use settings::ClusterSettings;
use stats::{ClusterCollector, NodeStats};

/// Joins the cluster if `[cluster]` names NATS servers: draws this instance's id, starts
/// the bus thread (which connects in the background, so a NATS server that is down at
/// start is no error) and adds the cluster's counters to `metrics`. Returns the node and
/// the queue `inbound::run` must serve once the rest of the server exists.
pub fn join(
    settings: &ClusterSettings,
    metrics: &mut Metrics,
) -> io::Result<Option<(Arc<ClusterNode>, Inbound)>> {
    if !settings.enabled() {
        return Ok(None);
    }
    let self_id = bus::new_instance_id();
    let stats = Arc::new(NodeStats::new());
    let (on_event, inbound) = inbound::queue(stats.clone());
    let bus = bus::start_nats(settings, self_id, on_event)
        .map_err(|err| io::Error::other(format!("cannot start the cluster bus: {err}")))?;
    info!(
        "cluster: instance {self_id:016x}{} joining through {}",
        if settings.instance_id.is_empty() {
            String::new()
        } else {
            format!(" ({})", settings.instance_id)
        },
        settings.nats_urls.join(", ")
    );
    metrics.register_collector(Box::new(ClusterCollector {
        bus: bus.stats().clone(),
        node: stats.clone(),
    }));
    let node = Arc::new(ClusterNode::new(
        bus,
        settings.expiry(),
        settings.heartbeat_interval(),
        settings.bus_queue,
        stats,
    ));
    Ok(Some((node, inbound)))
}
