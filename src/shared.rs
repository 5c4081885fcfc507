//! Shared: what every session and HTTP handler of the process reads. Built once by
//! `server::start`, before the HTTP workers start, and cloned into them as an `Arc`.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use crate::{
    access::AccessList,
    cluster::node::ClusterNode,
    config::Settings,
    connection::registry::ConnectionRegistry,
    metrics::Metrics,
    protocol::ParseLimits,
    swarm::shard::SwarmDirectory,
    usage::{reports::Budgets, Usage},
};

pub struct Shared {
    pub settings: Settings,
    pub parse_limits: ParseLimits,
    pub directory: SwarmDirectory,
    pub metrics: Arc<Metrics>,
    pub connections: ConnectionRegistry,
    pub access: AccessList,
    /// This instance's side of the cluster; `None` unless `[cluster]` is configured.
    pub cluster: Option<Arc<ClusterNode>>,
    pub started_at: Instant,
    /// The addresses actually bound (port 0 resolved), for /stats.json.
    pub bound: Vec<String>,
    /// Bytes served from /hls and what viewers reported (`usage`).
    pub usage: Usage,
    /// Per-address budgets of viewer reports.
    pub report_budgets: Mutex<Budgets>,
}
