//! Process-wide counters and gauges, shared by every thread through one `Arc<Metrics>`.
//!
//! Hot-path counters are resolved once at start (a `Family` lookup takes a lock), so
//! counting a message is one atomic add. `/metrics` renders the registry in the OpenMetrics
//! text format, `/stats.json` reads the same atomics in wt-tracker's shape.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

/// Message kinds counted in both directions.
pub const IN_KINDS: [&str; 4] = ["announce", "answer", "scrape", "invalid"];
pub const OUT_KINDS: [&str; 5] = ["announce", "offer", "answer", "scrape", "failure"];

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    connections_rejected: Family<ReasonLabel, Counter>,
    messages_in: [Counter; 4],
    messages_out: [Counter; 5],
    pub offers_relayed: Counter,
    pub answers_relayed: Counter,
    pub dropped_mailbox_full: Counter,
    pub dropped_closed: Counter,
    protocol_errors: Family<KindLabel, Counter>,
    pub swarms: Gauge,
    pub seeders: Gauge,
    pub leechers: Gauge,
    pub removed_stopped: Counter,
    pub removed_disconnect: Counter,
    pub removed_ttl: Counter,
    pub removed_unreachable: Counter,
    close_codes: Family<ReasonLabel, Counter>,
    pub swarm_panics: Counter,
    /// Frames the sessions sent in total, for /stats.json without walking families.
    frames_in: AtomicU64,
    frames_out: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tracker");
        let connections = Gauge::default();
        registry.register(
            "ws_connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "ws_connections_accepted",
            "WebSocket connections accepted",
            connections_total.clone(),
        );
        let connections_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "ws_connections_rejected",
            "WebSocket upgrades refused, by reason",
            connections_rejected.clone(),
        );
        let messages_in_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_in",
            "Messages received from clients, by kind",
            messages_in_family.clone(),
        );
        let messages_in = IN_KINDS.map(|kind| {
            messages_in_family
                .get_or_create(&KindLabel { kind })
                .clone()
        });
        let messages_out_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "messages_out",
            "Messages sent to clients, by kind",
            messages_out_family.clone(),
        );
        let messages_out = OUT_KINDS.map(|kind| {
            messages_out_family
                .get_or_create(&KindLabel { kind })
                .clone()
        });
        let offers_relayed = Counter::default();
        registry.register(
            "offers_relayed",
            "Offers handed to another peer's session",
            offers_relayed.clone(),
        );
        let answers_relayed = Counter::default();
        registry.register(
            "answers_relayed",
            "Answers handed back to the offering peer's session",
            answers_relayed.clone(),
        );
        let deliveries_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "deliveries_dropped",
            "Relayed offers/answers dropped because the receiving session could not take them",
            deliveries_dropped.clone(),
        );
        let dropped_mailbox_full = deliveries_dropped
            .get_or_create(&ReasonLabel {
                reason: "mailbox_full",
            })
            .clone();
        let dropped_closed = deliveries_dropped
            .get_or_create(&ReasonLabel { reason: "closed" })
            .clone();
        let protocol_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "protocol_errors",
            "Requests answered with a failure reason, by kind",
            protocol_errors.clone(),
        );
        let swarms = Gauge::default();
        registry.register("swarms", "Swarms (info_hashes) with peers", swarms.clone());
        let peers = Family::<RoleLabel, Gauge>::default();
        registry.register("peers", "Registered peers, by role", peers.clone());
        let seeders = peers.get_or_create(&RoleLabel { role: "seeder" }).clone();
        let leechers = peers.get_or_create(&RoleLabel { role: "leecher" }).clone();
        let peers_removed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "peers_removed",
            "Peers removed from swarms, by reason",
            peers_removed.clone(),
        );
        let removed = |reason| peers_removed.get_or_create(&ReasonLabel { reason }).clone();
        let removed_stopped = removed("stopped");
        let removed_disconnect = removed("disconnect");
        let removed_ttl = removed("ttl");
        let removed_unreachable = removed("unreachable");
        let close_codes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "ws_closed_by_server",
            "WebSocket connections closed by the server, by reason",
            close_codes.clone(),
        );
        let swarm_panics = Counter::default();
        registry.register(
            "swarm_panics",
            "Swarms reset after a panic (a bug: please report it)",
            swarm_panics.clone(),
        );
        Self {
            swarm_panics,
            registry,
            connections,
            connections_total,
            connections_rejected,
            messages_in,
            messages_out,
            offers_relayed,
            answers_relayed,
            dropped_mailbox_full,
            dropped_closed,
            protocol_errors,
            swarms,
            seeders,
            leechers,
            removed_stopped,
            removed_disconnect,
            removed_ttl,
            removed_unreachable,
            close_codes,
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
        }
    }

    /// Adds metrics that another component keeps (the cluster's), read at each scrape.
    pub fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    pub fn message_in(&self, kind: &str) {
        if let Some(index) = IN_KINDS.iter().position(|known| *known == kind) {
            self.messages_in[index].inc();
        }
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message_out(&self, kind: &str) {
        if let Some(index) = OUT_KINDS.iter().position(|known| *known == kind) {
            self.messages_out[index].inc();
        }
        self.frames_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn protocol_error(&self, kind: &'static str) {
        self.protocol_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn connection_rejected(&self, reason: &'static str) {
        self.connections_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn closed_by_server(&self, reason: &'static str) {
        self.closed_by_server_n(reason, 1);
    }

    pub fn closed_by_server_n(&self, reason: &'static str, count: u64) {
        self.close_codes
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }

    /// Adjusts the peer gauges by the change in one swarm's counts.
    pub fn peers_changed(&self, seeders_delta: i64, leechers_delta: i64) {
        if seeders_delta != 0 {
            self.seeders.inc_by(seeders_delta);
        }
        if leechers_delta != 0 {
            self.leechers.inc_by(leechers_delta);
        }
    }

    /// Messages received per kind, in `IN_KINDS` order.
    pub fn messages_in_by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        IN_KINDS
            .iter()
            .zip(&self.messages_in)
            .map(|(kind, counter)| (*kind, counter.get()))
    }

    /// Messages sent per kind, in `OUT_KINDS` order.
    pub fn messages_out_by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUT_KINDS
            .iter()
            .zip(&self.messages_out)
            .map(|(kind, counter)| (*kind, counter.get()))
    }

    pub fn frames(&self) -> (u64, u64) {
        (
            self.frames_in.load(Ordering::Relaxed),
            self.frames_out.load(Ordering::Relaxed),
        )
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The process-level figure comes from /proc, appended before the EOF marker.
        if let Some(rss) = resident_memory_bytes() {
            let body = out.trim_end_matches("# EOF\n").to_owned();
            out = format!(
                "{body}# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n\
                 process_resident_memory_bytes {rss}\n# EOF\n"
            );
        }
        out
    }
}

/// Resident set size of this process, from /proc (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
