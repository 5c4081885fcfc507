//! SwarmShard actor: one per HTTP worker thread. Owns the map info_hash -> swarm for
//! the info_hashes that hash to it, creates swarms on demand on its own thread, and answers
//! scrapes from the counts each swarm publishes (no round trip through the swarms).
//!
//! `SwarmDirectory` is the cheap, cloneable handle the sessions use to find the right shard.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    thread::ThreadId,
};

use actix::prelude::*;
use log::{debug, trace};

use super::{
    actor::{unpack_counts, Swarm, SwarmConfig},
    messages::{
        Disown, Disowned, FindSwarm, GetSwarm, InstanceGone, ScrapeShard, SwarmIdle, SwarmRef,
    },
    route::RemoteSessions,
    state::IdHasher,
};
use crate::{metrics::Metrics, protocol::InfoHash};

struct SwarmEntry {
    swarm: SwarmRef,
    counts: Arc<AtomicU64>,
}

pub struct SwarmShard {
    swarms: HashMap<InfoHash, SwarmEntry, IdHasher>,
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
            swarms: HashMap::default(),
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
        let swarm = SwarmRef::new(addr, generation);
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
///
/// Shards live on the HTTP worker threads, one per worker: `start_shard_here` runs in each
/// worker's service factory, on that worker's thread, before the worker accepts a
/// connection. A session and the swarms of its own worker's shard then share a thread, so
/// on one core an announce, its offers and the answers never wake another thread (the hop
/// cost more CPU than the tracker's own logic). On N cores, 1/N of the swarm traffic stays
/// on the session's thread and the rest crosses to the owning worker, as it did to the
/// dedicated shard threads before.
#[derive(Clone)]
pub struct SwarmDirectory {
    inner: Arc<Directory>,
}

struct Directory {
    /// One slot per HTTP worker, filled once as the workers start. actix-server creates
    /// every worker's services before it accepts the first connection, so sessions always
    /// find them full; only the cluster's bus task can ask earlier.
    slots: Box<[OnceLock<Addr<SwarmShard>>]>,
    /// Threads that already host a shard (a worker calls its factory once per listener).
    hosts: Mutex<Vec<ThreadId>>,
    config: SwarmConfig,
    metrics: Arc<Metrics>,
    remote: Option<Arc<dyn RemoteSessions>>,
}

impl SwarmDirectory {
    /// A directory of `count` shards, none started yet. `remote` reaches the sessions of
    /// other instances (a cluster), `None` outside a cluster.
    pub fn new(
        count: usize,
        config: SwarmConfig,
        metrics: Arc<Metrics>,
        remote: Option<Arc<dyn RemoteSessions>>,
    ) -> Self {
        Self {
            inner: Arc::new(Directory {
                slots: (0..count.max(1)).map(|_| OnceLock::new()).collect(),
                hosts: Mutex::new(Vec::new()),
                config,
                metrics,
                remote,
            }),
        }
    }

    /// Starts a shard on the current thread's Arbiter and gives it the first free slot,
    /// unless this thread hosts one already or every slot is taken (a worker that
    /// actix-server restarted after a fault then uses the others' shards).
    pub fn start_shard_here(&self) {
        let inner = &self.inner;
        let me = std::thread::current().id();
        let mut hosts = inner.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if hosts.contains(&me) {
            return;
        }
        let Some(slot) = inner.slots.iter().find(|slot| slot.get().is_none()) else {
            return;
        };
        let shard = SwarmShard::new(inner.config, inner.metrics.clone(), inner.remote.clone());
        if slot.set(shard.start()).is_ok() {
            hosts.push(me);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// Whether every shard has started.
    pub fn is_ready(&self) -> bool {
        self.inner.slots.iter().all(|slot| slot.get().is_some())
    }

    /// The shards started so far, with their index.
    pub fn shards(&self) -> impl Iterator<Item = (usize, &Addr<SwarmShard>)> {
        self.inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.get().map(|shard| (index, shard)))
    }

    /// The shard at `index`, if it has started.
    fn shard(&self, index: usize) -> Option<&Addr<SwarmShard>> {
        self.inner.slots.get(index).and_then(OnceLock::get)
    }

    /// Index of the shard that owns `info_hash`. P2P Media Loader v2 info_hashes are
    /// base64 text, so the first byte alone is not uniform; mix the first 8 bytes.
    pub fn shard_index(&self, info_hash: &InfoHash) -> usize {
        let mut head = [0u8; 8];
        head.copy_from_slice(&info_hash.0[..8]);
        let mixed = u64::from_le_bytes(head).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 32) % self.len() as u64) as usize
    }

    /// The shard that owns `info_hash`; `None` only before the workers have started.
    pub fn shard_for(&self, info_hash: &InfoHash) -> Option<&Addr<SwarmShard>> {
        self.shard(self.shard_index(info_hash))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Settings;

    fn directory(count: usize) -> SwarmDirectory {
        SwarmDirectory::new(
            count,
            SwarmConfig::from(&Settings::default()),
            Arc::new(Metrics::new()),
            None,
        )
    }

    /// Runs `start_shard_here` on a new thread (as a worker's factory does) and waits for it.
    fn start_on_new_thread(directory: &SwarmDirectory) -> Arbiter {
        let arbiter = Arbiter::new();
        let (done, finished) = std::sync::mpsc::channel();
        let directory = directory.clone();
        assert!(arbiter.spawn_fn(move || {
            directory.start_shard_here();
            let _ = done.send(());
        }));
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the worker thread ran");
        arbiter
    }

    #[test]
    fn each_worker_thread_hosts_one_shard_and_a_late_worker_none() {
        let system = System::new();
        system.block_on(async {
            let directory = directory(2);
            assert!(!directory.is_ready());
            assert_eq!(directory.shards().count(), 0);

            // A worker's factory runs once per listener: one shard per thread all the same.
            directory.start_shard_here();
            directory.start_shard_here();
            assert_eq!(directory.shards().count(), 1);
            assert!(!directory.is_ready());

            let second = start_on_new_thread(&directory);
            assert!(directory.is_ready());
            // A worker restarted after a fault finds every slot taken and hosts nothing.
            let late = start_on_new_thread(&directory);
            assert_eq!(directory.shards().count(), 2);

            // Both shards run and own the info_hashes that hash to them.
            let mut owners = [0usize; 2];
            for n in 0..64u8 {
                let info_hash = InfoHash([n.wrapping_mul(37); 20]);
                let index = directory.shard_index(&info_hash);
                owners[index] += 1;
                let shard = directory.shard_for(&info_hash).expect("started");
                let files = tokio::time::timeout(
                    Duration::from_secs(10),
                    shard.send(ScrapeShard {
                        info_hashes: Some(vec![info_hash]),
                        limit: 1,
                    }),
                )
                .await
                .expect("the shard answers")
                .expect("the shard runs");
                assert_eq!(files.len(), 1);
            }
            assert!(owners.iter().all(|&count| count > 0), "{owners:?}");
            second.stop();
            late.stop();
        });
    }
}
