//! Swarm actor: one per info_hash, running on its shard's thread (an HTTP worker). A thin
//! shell around `SwarmState`: it passes requests in, delivers what comes out with
//! `try_send`, keeps the metrics' peer gauges and the shard's scrape counts current, sweeps
//! on a timer, and stops as soon as the swarm is empty.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use log::{debug, error, trace};
use rand::{rngs::SmallRng, SeedableRng};

use super::{
    messages::{
        Announce, AnnounceReply, Answer, Disowned, InstanceGone, Leave, SwarmError, SwarmIdle,
    },
    route::{PeerRoute, RemoteSessions, Undelivered},
    shard::SwarmShard,
    state::{Delivery, Reject, SwarmLimits, SwarmState},
};
use crate::{
    metrics::Metrics,
    protocol::{Action, InfoHash, OutMessage, SwarmCounts},
};

/// Packs seeders (high half) and leechers (low half) so a scrape reads both at once.
pub fn pack_counts(counts: SwarmCounts) -> u64 {
    (u64::from(counts.complete) << 32) | u64::from(counts.incomplete)
}

pub fn unpack_counts(packed: u64) -> SwarmCounts {
    SwarmCounts {
        complete: (packed >> 32) as u32,
        incomplete: (packed & 0xFFFF_FFFF) as u32,
    }
}

/// Per-swarm settings, shared by all swarms of a process.
#[derive(Debug, Clone, Copy)]
pub struct SwarmConfig {
    pub limits: SwarmLimits,
    pub mailbox: usize,
    pub max_dropped_deliveries: u32,
    pub sweep_interval: Duration,
}

pub struct Swarm {
    state: SwarmState<PeerRoute>,
    /// The sessions of other instances (`None` outside a cluster).
    remote: Option<Arc<dyn RemoteSessions>>,
    config: SwarmConfig,
    generation: u64,
    shard: Addr<SwarmShard>,
    /// Read by the shard for scrapes without a round trip through this actor.
    shared_counts: Arc<AtomicU64>,
    /// Counts last reflected in the metrics gauges and `shared_counts`.
    published: SwarmCounts,
    metrics: Arc<Metrics>,
    rng: SmallRng,
    /// Set once the swarm is empty and on its way out; requests then get `Closed`.
    closing: bool,
}

impl Swarm {
    pub fn new(
        info_hash: InfoHash,
        generation: u64,
        config: SwarmConfig,
        shard: Addr<SwarmShard>,
        shared_counts: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteSessions>>,
    ) -> Self {
        Self {
            state: SwarmState::new(info_hash, config.limits),
            remote,
            config,
            generation,
            shard,
            shared_counts,
            published: SwarmCounts::default(),
            metrics,
            rng: SmallRng::from_rng(&mut rand::rng()),
            closing: false,
        }
    }

    fn deliver(&mut self, deliveries: impl IntoIterator<Item = Delivery>) {
        for delivery in deliveries {
            let (Some(route), Some(conn)) = (
                self.state.recipient(&delivery.to),
                self.state.owner(&delivery.to),
            ) else {
                continue;
            };
            let relayed = match &delivery.message {
                OutMessage::Answer { .. } => &self.metrics.answers_relayed,
                _ => &self.metrics.offers_relayed,
            };
            match route.deliver(conn, delivery.message, self.remote.as_deref()) {
                Ok(()) => {
                    relayed.inc();
                    self.state.delivery_succeeded(&delivery.to);
                }
                Err(Undelivered::Full) => {
                    self.metrics.dropped_mailbox_full.inc();
                    if self
                        .state
                        .delivery_dropped(&delivery.to, self.config.max_dropped_deliveries)
                    {
                        debug!(
                            "info_hash={} peer={} removed: session stopped taking relays",
                            self.state.info_hash(),
                            delivery.to
                        );
                        self.metrics.removed_unreachable.inc();
                    }
                }
                Err(Undelivered::Closed) => {
                    self.metrics.dropped_closed.inc();
                    self.metrics.removed_unreachable.inc();
                    self.state.remove_unreachable(&delivery.to);
                }
            }
        }
    }

    /// Brings the gauges and scrape counts in line with the state, and closes the swarm
    /// once it is empty.
    fn publish(&mut self, ctx: &mut Context<Self>) {
        let counts = self.state.counts();
        if counts != self.published {
            self.metrics.peers_changed(
                i64::from(counts.complete) - i64::from(self.published.complete),
                i64::from(counts.incomplete) - i64::from(self.published.incomplete),
            );
            self.shared_counts
                .store(pack_counts(counts), Ordering::Relaxed);
            self.published = counts;
        }
        if self.state.is_empty() && !self.closing {
            self.closing = true;
            self.shard.do_send(SwarmIdle {
                info_hash: self.state.info_hash(),
                generation: self.generation,
            });
            ctx.stop();
        }
    }

    /// Runs `op` on the state; a panic inside it is contained to this swarm: its peers are
    /// told, the swarm closes (the shard will start a fresh one on the next announce) and
    /// `None` is returned. Nothing else in the process is affected.
    fn guarded<T>(
        &mut self,
        ctx: &mut Context<Self>,
        op: impl FnOnce(&mut SwarmState<PeerRoute>, &mut SmallRng) -> T,
    ) -> Option<T> {
        let state = &mut self.state;
        let rng = &mut self.rng;
        match catch_unwind(AssertUnwindSafe(|| op(state, rng))) {
            Ok(value) => Some(value),
            Err(_) => {
                self.reset_after_panic(ctx);
                None
            }
        }
    }

    fn reset_after_panic(&mut self, ctx: &mut Context<Self>) {
        let info_hash = self.state.info_hash();
        error!(
            "info_hash={info_hash}: swarm panicked; resetting it ({} peers told to re-announce)",
            self.state.peer_count()
        );
        self.metrics.swarm_panics.inc();
        for (conn, route) in self.state.routes() {
            let _ = route.deliver(
                conn,
                OutMessage::Failure {
                    reason: "internal error: this swarm was reset; announce again".into(),
                    action: Action::Announce,
                    info_hash: Some(info_hash),
                },
                self.remote.as_deref(),
            );
        }
        self.closing = true;
        self.shard.do_send(SwarmIdle {
            info_hash,
            generation: self.generation,
        });
        ctx.stop();
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let Some(removed) = self.guarded(ctx, |state, _| state.sweep(Instant::now())) else {
            return;
        };
        if !removed.is_empty() {
            debug!(
                "info_hash={} swept {} silent peers",
                self.state.info_hash(),
                removed.len()
            );
            self.metrics.removed_ttl.inc_by(removed.len() as u64);
        }
        self.publish(ctx);
    }
}

impl Actor for Swarm {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.mailbox);
        ctx.run_interval(self.config.sweep_interval, Self::sweep);
        trace!("info_hash={} swarm started", self.state.info_hash());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // A swarm only stops empty, or when the system shuts down: take what it still
        // counted out of the gauges either way.
        self.metrics.peers_changed(
            -i64::from(self.published.complete),
            -i64::from(self.published.incomplete),
        );
        trace!("info_hash={} swarm stopped", self.state.info_hash());
    }
}

impl Handler<Announce> for Swarm {
    type Result = Result<AnnounceReply, SwarmError>;

    fn handle(&mut self, msg: Announce, ctx: &mut Self::Context) -> Self::Result {
        if self.closing {
            return Err(SwarmError::Closed);
        }
        let stopping = msg.request.event == crate::protocol::AnnounceEvent::Stopped;
        let was_registered = self.state.owner(&msg.request.peer_id) == Some(msg.conn);
        let Announce {
            conn,
            route,
            request,
        } = msg;
        let Some(result) = self.guarded(ctx, |state, rng| {
            state.announce(conn, route, &request, Instant::now(), rng)
        }) else {
            return Err(SwarmError::Closed);
        };
        match result {
            Ok(outcome) => {
                if stopping && was_registered {
                    self.metrics.removed_stopped.inc();
                }
                let reply = AnnounceReply {
                    counts: outcome.counts,
                    registered: outcome.registered,
                };
                self.deliver(outcome.deliveries);
                // Publishing may close the swarm (a `stopped` from the last peer); the reply
                // still carries the counts computed above.
                self.publish(ctx);
                Ok(reply)
            }
            Err(reject) => Err(SwarmError::Rejected(reject)),
        }
    }
}

impl Handler<Answer> for Swarm {
    type Result = ();

    fn handle(&mut self, msg: Answer, ctx: &mut Self::Context) {
        let info_hash = msg.request.info_hash;
        let result = if self.closing {
            // Closing means empty: whoever made the offer has left.
            Err(Reject::OffererGone)
        } else {
            match self.guarded(ctx, |state, _| {
                state.answer(msg.conn, &msg.request, Instant::now())
            }) {
                Some(result) => result,
                None => Err(Reject::OffererGone),
            }
        };
        match result {
            Ok(delivery) => self.deliver(std::iter::once(delivery)),
            Err(reject) => {
                self.metrics.protocol_error(reject.kind());
                // The answerer's session may be gone or full; a lost failure is harmless.
                let failure = OutMessage::Failure {
                    reason: reject.to_string().into(),
                    action: Action::Announce,
                    info_hash: Some(info_hash),
                };
                let _ = msg
                    .reply_to
                    .deliver(msg.conn, failure, self.remote.as_deref());
            }
        }
        if !self.closing {
            self.publish(ctx);
        }
    }
}

impl Handler<Leave> for Swarm {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        let Some(removed) = self.guarded(ctx, |state, _| state.leave(msg.conn, &msg.peer_ids))
        else {
            return;
        };
        self.metrics.removed_disconnect.inc_by(removed as u64);
        self.publish(ctx);
    }
}

impl Handler<InstanceGone> for Swarm {
    type Result = ();

    fn handle(&mut self, msg: InstanceGone, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        let Some(removed) = self.guarded(ctx, |state, _| state.leave_instance(msg.instance)) else {
            return;
        };
        if removed > 0 {
            debug!(
                "info_hash={} {removed} peers left with instance {:016x}",
                self.state.info_hash(),
                msg.instance
            );
            self.metrics.removed_disconnect.inc_by(removed as u64);
        }
        self.publish(ctx);
    }
}

impl Handler<Disowned> for Swarm {
    type Result = ();

    fn handle(&mut self, _msg: Disowned, ctx: &mut Self::Context) {
        // The shard has already forgotten this swarm; requests still queued get `Closed`
        // and their sessions ask again (and are routed to the new owner).
        self.closing = true;
        ctx.stop();
    }
}
