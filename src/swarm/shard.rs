//! SwarmShard actor: one per shard Arbiter (thread). Owns the map info_hash -> swarm for
//! the info_hashes that hash to it, creates swarms on demand on its own thread, and answers
//! scrapes from the counts each swarm publishes (no round trip through the swarms).
//!
//! `SwarmDirectory` is the cheap, cloneable handle the sessions use to find the right shard.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use actix::prelude::*;
use log::{debug, trace};

use super::{
    actor::{unpack_counts, Swarm, SwarmConfig},
    messages::{
        Disown, Disowned, FindSwarm, GetSwarm, InstanceGone, ScrapeShard, SwarmIdle, SwarmRef,
    },
    route::RemoteSessions,
};
use crate::{metrics::Metrics, protocol::InfoHash};

struct SwarmEntry {
    swarm: SwarmRef,
    counts: Arc<AtomicU64>,
}

pub struct SwarmShard {
    swarms: HashMap<InfoHash, SwarmEntry>,
    next_generation: u64,
    config: SwarmConfig,
    metrics: Arc<Metrics>,
    remote: Option<Arc<dyn RemoteSessions>>,
}

impl SwarmShard {
    pub fn new(
        config: SwarmConfig,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteSessions>>,
    ) -> Self {
        Self {
            swarms: HashMap::new(),
            next_generation: 0,
            config,
            metrics,
            remote,
        }
    }

    fn create(&mut self, info_hash: InfoHash, ctx: &mut Context<Self>) -> SwarmRef {
        self.next_generation += 1;
        let generation = self.next_generation;
        let counts = Arc::new(AtomicU64::new(0));
        // Started from inside this actor, the swarm lands on this shard's Arbiter.
        let addr = Swarm::new(
            info_hash,
            generation,
            self.config,
            ctx.address(),
            counts.clone(),
            self.metrics.clone(),
            self.remote.clone(),
        )
        .start();
        let swarm = SwarmRef { addr, generation };
        if self
            .swarms
            .insert(
                info_hash,
                SwarmEntry {
                    swarm: swarm.clone(),
                    counts,
                },
            )
            .is_none()
        {
            self.metrics.swarms.inc();
        }
        trace!("info_hash={info_hash} swarm created (generation {generation})");
        swarm
    }
}

impl Actor for SwarmShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every session of the process may need its shard at once.
        ctx.set_mailbox_capacity(self.config.mailbox);
    }
}

impl Handler<GetSwarm> for SwarmShard {
    type Result = MessageResult<GetSwarm>;

    fn handle(&mut self, msg: GetSwarm, ctx: &mut Self::Context) -> Self::Result {
        if let Some(entry) = self.swarms.get(&msg.info_hash) {
            let stale = msg.stale == Some(entry.swarm.generation) || !entry.swarm.addr.connected();
            if !stale {
                return MessageResult(entry.swarm.clone());
            }
        }
        // `create` replaces a stale entry; the gauge counts info_hashes, so it only grows
        // for a new one.
        MessageResult(self.create(msg.info_hash, ctx))
    }
}

impl Handler<SwarmIdle> for SwarmShard {
    type Result = ();

    fn handle(&mut self, msg: SwarmIdle, _ctx: &mut Self::Context) {
        let current = self
            .swarms
            .get(&msg.info_hash)
            .is_some_and(|entry| entry.swarm.generation == msg.generation);
        if current {
            self.swarms.remove(&msg.info_hash);
            self.metrics.swarms.dec();
        }
    }
}

impl Handler<ScrapeShard> for SwarmShard {
    type Result = MessageResult<ScrapeShard>;

    fn handle(&mut self, msg: ScrapeShard, _ctx: &mut Self::Context) -> Self::Result {
        let counts_of = |entry: &SwarmEntry| unpack_counts(entry.counts.load(Ordering::Relaxed));
        let files = match msg.info_hashes {
            Some(hashes) => hashes
                .into_iter()
                .take(msg.limit)
                .map(|hash| {
                    let counts = self.swarms.get(&hash).map(counts_of).unwrap_or_default();
                    (hash, counts)
                })
                .collect(),
            None => self
                .swarms
                .iter()
                .take(msg.limit)
                .map(|(hash, entry)| (*hash, counts_of(entry)))
                .collect(),
        };
        MessageResult(files)
    }
}

impl Handler<FindSwarm> for SwarmShard {
    type Result = Option<SwarmRef>;

    fn handle(&mut self, msg: FindSwarm, _ctx: &mut Self::Context) -> Self::Result {
        self.swarms
            .get(&msg.info_hash)
            .map(|entry| entry.swarm.clone())
            .filter(|swarm| swarm.addr.connected())
    }
}

impl Handler<InstanceGone> for SwarmShard {
    type Result = ();

    fn handle(&mut self, msg: InstanceGone, _ctx: &mut Self::Context) {
        for entry in self.swarms.values() {
            entry.swarm.addr.do_send(msg);
        }
    }
}

impl Handler<Disown> for SwarmShard {
    type Result = ();

    fn handle(&mut self, msg: Disown, _ctx: &mut Self::Context) {
        let before = self.swarms.len();
        self.swarms.retain(|info_hash, entry| {
            let owned = (msg.owned)(info_hash);
            if !owned {
                entry.swarm.addr.do_send(Disowned);
            }
            owned
        });
        let closed = before - self.swarms.len();
        if closed > 0 {
            self.metrics.swarms.dec_by(closed as i64);
            debug!("{closed} swarms moved to other instances");
        }
    }
}

/// Finds the shard of an info_hash. Cloned into every session.
#[derive(Clone)]
pub struct SwarmDirectory {
    shards: Arc<[Addr<SwarmShard>]>,
}

impl SwarmDirectory {
    /// Starts `count` shards, each on an Arbiter (thread) of its own. `remote` reaches the
    /// sessions of other instances (a cluster), `None` outside a cluster.
    pub fn start(
        count: usize,
        config: SwarmConfig,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteSessions>>,
    ) -> Self {
        let shards: Vec<Addr<SwarmShard>> = (0..count.max(1))
            .map(|_| {
                let arbiter = Arbiter::new();
                let metrics = metrics.clone();
                let remote = remote.clone();
                SwarmShard::start_in_arbiter(&arbiter.handle(), move |_| {
                    SwarmShard::new(config, metrics, remote)
                })
            })
            .collect();
        Self {
            shards: shards.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn shards(&self) -> &[Addr<SwarmShard>] {
        &self.shards
    }

    /// Index of the shard that owns `info_hash`. P2P Media Loader v2 info_hashes are
    /// base64 text, so the first byte alone is not uniform; mix the first 8 bytes.
    pub fn shard_index(&self, info_hash: &InfoHash) -> usize {
        let mut head = [0u8; 8];
        head.copy_from_slice(&info_hash.0[..8]);
        let mixed = u64::from_le_bytes(head).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 32) % self.shards.len() as u64) as usize
    }

    pub fn shard_for(&self, info_hash: &InfoHash) -> &Addr<SwarmShard> {
        &self.shards[self.shard_index(info_hash)]
    }
}
