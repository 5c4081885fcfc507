//! What the cluster counts, and how `/metrics` shows it: the bus task's own counters
//! (`bus::ClusterStats`) and this instance's routing counters (`NodeStats`), read at each
//! scrape by a prometheus-client collector, so no thread copies them around.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
};

use super::bus::{ClusterStats, DropReason};

/// Bus message kinds, in `BusMessage::kind` spelling.
pub const KINDS: [&str; 11] = [
    "heartbeat",
    "leaving",
    "announce",
    "announce_reply",
    "answer",
    "leave",
    "deliver",
    "scrape",
    "scrape_reply",
    "rejoin",
    "passed_on",
];

/// Why this instance dropped something the bus did carry (the bus task counts what it
/// could not carry, `bus::DropReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteDrop {
    /// A relay for a connection that is gone.
    NoSession,
    /// A relay for a session whose mailbox is full.
    SessionFull,
    /// A reply after its request's deadline.
    LateReply,
    /// A request whose reply did not come in time.
    ReplyTimeout,
    /// More arrived than the inbound queue holds.
    InboundFull,
}

impl RouteDrop {
    pub const ALL: [RouteDrop; 5] = [
        RouteDrop::NoSession,
        RouteDrop::SessionFull,
        RouteDrop::LateReply,
        RouteDrop::ReplyTimeout,
        RouteDrop::InboundFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteDrop::NoSession => "no_session",
            RouteDrop::SessionFull => "session_full",
            RouteDrop::LateReply => "late_reply",
            RouteDrop::ReplyTimeout => "reply_timeout",
            RouteDrop::InboundFull => "inbound_full",
        }
    }
}

/// This instance's routing counters.
#[derive(Debug)]
pub struct NodeStats {
    forwarded: [AtomicU64; KINDS.len()],
    handled: [AtomicU64; KINDS.len()],
    dropped: [AtomicU64; RouteDrop::ALL.len()],
    /// Requests forwarded once more because the receiver's view named another owner.
    pub reforwarded: AtomicU64,
    /// Request -> reply round trips through the bus and the owner (announces, scrapes).
    round_trip: Histogram,
}

impl Default for NodeStats {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeStats {
    pub fn new() -> Self {
        Self {
            forwarded: Default::default(),
            handled: Default::default(),
            dropped: Default::default(),
            reforwarded: AtomicU64::new(0),
            // 50 us .. ~3.3 s
            round_trip: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
        }
    }

    fn index(kind: &str) -> Option<usize> {
        KINDS.iter().position(|known| *known == kind)
    }

    /// One message of `kind` handed to the bus for another instance.
    pub fn forwarded(&self, kind: &str) {
        if let Some(index) = Self::index(kind) {
            self.forwarded[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One message of `kind` from another instance acted on here.
    pub fn handled(&self, kind: &str) {
        if let Some(index) = Self::index(kind) {
            self.handled[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self, reason: RouteDrop) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_count(&self, reason: RouteDrop) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn late_reply(&self) {
        self.dropped(RouteDrop::LateReply);
    }

    pub fn reply_timed_out(&self) {
        self.dropped(RouteDrop::ReplyTimeout);
    }

    pub fn request_round_trip(&self, took: Duration) {
        self.round_trip.observe(took.as_secs_f64());
    }

    /// Messages forwarded and handled, by kind (for `/stats.json`).
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        KINDS.iter().enumerate().map(|(index, kind)| {
            (
                *kind,
                self.forwarded[index].load(Ordering::Relaxed),
                self.handled[index].load(Ordering::Relaxed),
            )
        })
    }
}

/// Renders the cluster's counters in `/metrics` (`tracker_cluster_*`).
#[derive(Debug)]
pub struct ClusterCollector {
    pub bus: Arc<ClusterStats>,
    pub node: Arc<NodeStats>,
}

fn labelled<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl Iterator<Item = (&'a str, &'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (label, value, count) in rows {
        let labels = [(label, value)];
        let row = metric.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(count as i64).encode(row)?,
            _ => ConstCounter::new(count).encode(row)?,
        }
    }
    Ok(())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let bus = &self.bus;
        let up = i64::from(bus.is_bus_up());
        ConstGauge::new(up).encode(encoder.encode_descriptor(
            "cluster_bus_up",
            "1 while the bus delivers (our heartbeats come back); 0: every swarm is served here",
            None,
            MetricType::Gauge,
        )?)?;
        let live = bus.live_instances.load(Ordering::Relaxed) as i64;
        ConstGauge::new(live).encode(encoder.encode_descriptor(
            "cluster_instances",
            "Live instances in this instance's view, itself included",
            None,
            MetricType::Gauge,
        )?)?;
        let rtt = bus.heartbeat_rtt_micros.load(Ordering::Relaxed) as f64 / 1e6;
        ConstGauge::new(rtt).encode(encoder.encode_descriptor(
            "cluster_heartbeat_rtt_seconds",
            "Round trip of the latest heartbeat through the broker",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, value) in [
            (
                "cluster_bus_published",
                "Messages handed to the broker",
                bus.published.load(Ordering::Relaxed),
            ),
            (
                "cluster_bus_received",
                "Messages taken off the broker",
                bus.received.load(Ordering::Relaxed),
            ),
            (
                "cluster_bus_reconnects",
                "Times the link to the broker came back",
                bus.reconnects.load(Ordering::Relaxed),
            ),
            (
                "cluster_unreachable",
                "Instances taken out of the view because the broker had no subscriber on \
                 their inbox (found dead before their expiry)",
                bus.unreachable.load(Ordering::Relaxed),
            ),
            (
                "cluster_reforwarded",
                "Requests forwarded once more while views of the live instances differed",
                self.node.reforwarded.load(Ordering::Relaxed),
            ),
        ] {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let by_kind: Vec<_> = self.node.by_kind().collect();
        labelled(
            &mut encoder,
            "cluster_forwarded",
            "Messages sent to other instances, by kind",
            MetricType::Counter,
            by_kind.iter().map(|(kind, sent, _)| ("kind", *kind, *sent)),
        )?;
        labelled(
            &mut encoder,
            "cluster_handled",
            "Messages from other instances acted on here, by kind",
            MetricType::Counter,
            by_kind
                .iter()
                .map(|(kind, _, handled)| ("kind", *kind, *handled)),
        )?;
        let dropped = DropReason::ALL
            .iter()
            .map(|reason| ("reason", reason.as_str(), bus.dropped_count(*reason)))
            .chain(
                RouteDrop::ALL
                    .iter()
                    .map(|reason| ("reason", reason.as_str(), self.node.dropped_count(*reason))),
            );
        labelled(
            &mut encoder,
            "cluster_dropped",
            "Cluster messages dropped, by reason",
            MetricType::Counter,
            dropped,
        )?;
        self.node.round_trip.encode(encoder.encode_descriptor(
            "cluster_request_round_trip_seconds",
            "A forwarded announce or scrape until the owner's reply, through the bus",
            None,
            MetricType::Histogram,
        )?)?;
        Ok(())
    }
}
