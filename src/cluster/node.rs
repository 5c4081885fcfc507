//! ClusterNode: this instance's part in the cluster, as the rest of the process sees it.
//! It implements the two ports the tracker defines for other instances:
//! `connection::requests::RemoteSwarms` (sessions reaching swarms owned elsewhere) and
//! `swarm::route::RemoteSessions` (swarms reaching sessions held elsewhere), on top of the
//! bus handle. Every call is non-blocking: requests are queued with `try_send` (a full
//! queue or a lost bus is a refusal, counted), and a request that wants a reply gets a
//! future that resolves when the owner answers, when the owner leaves the view (an
//! announce then comes back to be routed again), or when the reply deadline passes. An
//! announce the owner passed on to another instance (`PassedOn`) waits for that one
//! instead, and comes back at once if that one is dead to us.
//!
//! What arrives from other instances is handled by `inbound`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use log::debug;
use tokio::sync::{oneshot, Semaphore};

use super::{
    bus::{BusHandle, SendRefused},
    members::LiveView,
    stats::NodeStats,
    wire::{
        AnnounceResult, BusMessage, ConnKey, Deliver, ForwardedAnnounce, ForwardedAnswer,
        ForwardedLeave, Relay, ScrapeQuery, MAX_HOPS,
    },
};
use crate::{
    connection::{
        conn_id, instance_of,
        requests::{Failure, NotAnnounced, RejoinTurn, RemoteSwarms},
        ConnId, InstanceId,
    },
    protocol::{AnnounceRequest, AnswerRequest, InfoHash, OutMessage, PeerId, SwarmCounts},
    swarm::{
        messages::AnnounceReply,
        route::{RemoteSessions, Undelivered},
    },
};

/// The cluster-wide name of a socket of this or another instance.
pub fn conn_key(conn: ConnId) -> ConnKey {
    ConnKey {
        instance: instance_of(conn),
        // The low half of the id is the instance's own connection number.
        conn: conn as u64,
    }
}

/// The connection id of a socket named on the bus.
pub fn conn_of(key: ConnKey) -> ConnId {
    conn_id(key.instance, key.conn)
}

/// What a request of ours waiting for its owner learns first.
enum Outcome<T> {
    Replied(T),
    /// The owner left the view (dead, left, or cut off) before it replied.
    OwnerGone,
}

/// A request of ours waiting for its reply.
enum Pending {
    /// Resolved with the instance that replied (see `announce_replied`) and its result.
    Announce(oneshot::Sender<Outcome<(InstanceId, AnnounceResult)>>),
    Scrape(oneshot::Sender<Outcome<Vec<(InfoHash, SwarmCounts)>>>),
}

impl Pending {
    fn owner_gone(self) {
        // A waiter that timed out meanwhile has nobody left to tell.
        match self {
            Pending::Announce(waiting) => {
                let _ = waiting.send(Outcome::OwnerGone);
            }
            Pending::Scrape(waiting) => {
                let _ = waiting.send(Outcome::OwnerGone);
            }
        }
    }
}

/// At most this many re-joins in flight, however large the bus queue.
const MAX_REJOINS_IN_FLIGHT: usize = 1024;

/// Paces the re-joins of this instance's sessions (after a view change or a `Rejoin`,
/// every session re-announces the swarms concerned, thousands at once): at most `limit`
/// are in flight, from their turn until their owner's reply (or their failure), and the
/// others wait for a turn in order. So re-joins alone never fill more than a quarter of
/// the bus queue (the rest stays for the traffic of the moment), and an owner's queue of
/// replies holds no more of ours than that either.
pub struct RejoinGate {
    turns: Arc<Semaphore>,
}

impl RejoinGate {
    pub fn new(bus_queue: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(Self::limit(bus_queue))),
        }
    }

    /// Re-joins in flight at once for a bus queue of `bus_queue` messages.
    pub fn limit(bus_queue: usize) -> usize {
        (bus_queue / 4).clamp(1, MAX_REJOINS_IN_FLIGHT)
    }

    /// Resolves with a turn, held until the re-join is over; `None` never happens while
    /// the gate lives (its semaphore is never closed).
    pub fn turn(&self) -> BoxFuture<'static, Option<RejoinTurn>> {
        let turns = self.turns.clone();
        Box::pin(async move { turns.acquire_owned().await.ok() })
    }
}

pub struct ClusterNode {
    bus: BusHandle,
    self_id: InstanceId,
    /// How long a request waits for the owner's reply: the expiry, after which an owner
    /// that does not answer is dead anyway and the request is made again elsewhere.
    reply_timeout: Duration,
    next_request: AtomicU64,
    /// Bounded by the sessions: each waits for at most one reply at a time, and an entry
    /// leaves at its reply, its owner's departure from the view, or its deadline. Each
    /// entry keeps the instance it waits for.
    pending: Mutex<HashMap<u64, (InstanceId, Pending)>>,
    rejoins: RejoinGate,
    pub stats: Arc<NodeStats>,
}

impl ClusterNode {
    /// `bus_queue`: the bus's queue (`cluster.bus_queue`), which paces re-joins.
    pub fn new(
        bus: BusHandle,
        reply_timeout: Duration,
        bus_queue: usize,
        stats: Arc<NodeStats>,
    ) -> Self {
        Self {
            self_id: bus.self_id(),
            bus,
            reply_timeout,
            next_request: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            rejoins: RejoinGate::new(bus_queue),
            stats,
        }
    }

    pub fn self_id(&self) -> InstanceId {
        self.self_id
    }

    pub fn bus(&self) -> &BusHandle {
        &self.bus
    }

    pub fn view(&self) -> Arc<LiveView> {
        self.bus.view()
    }

    /// Queues `message` for instance `to`, counting it as forwarded.
    pub fn send(&self, to: InstanceId, message: BusMessage) -> Result<(), SendRefused> {
        let kind = message.kind();
        let sent = self.bus.try_send(to, message);
        if sent.is_ok() {
            self.stats.forwarded(kind);
        }
        sent
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (InstanceId, Pending)>> {
        // Entries are plain senders: a panic elsewhere cannot leave the map half-written.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a request waiting for the reply of `owner`; returns its id, or `None`
    /// when `owner` has already left the view. Registered first and checked after, so a
    /// departure is never missed: the view changes before `owners_gone` runs, so either
    /// this check sees the new view or `owners_gone` sees the entry.
    fn expect_reply(&self, owner: InstanceId, pending: Pending) -> Option<u64> {
        let req_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.pending().insert(req_id, (owner, pending));
        if self.view().live.contains(&owner) {
            Some(req_id)
        } else {
            self.forget(req_id);
            None
        }
    }

    /// `gone` left the view: the requests waiting for them learn it now instead of at
    /// their deadline (what was sent to a dead instance is lost, and with "no responders"
    /// a death is known long before the deadline).
    pub fn owners_gone(&self, gone: &[InstanceId]) {
        let released: Vec<Pending> = {
            let mut pending = self.pending();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, (owner, _))| gone.contains(owner))
                .map(|(req_id, _)| *req_id)
                .collect();
            ids.iter()
                .filter_map(|req_id| pending.remove(req_id))
                .map(|(_, waiting)| waiting)
                .collect()
        };
        for waiting in released {
            waiting.owner_gone();
        }
    }

    fn forget(&self, req_id: u64) {
        self.pending().remove(&req_id);
    }

    /// `from` answered an announce of ours: the owner we sent it to, or the instance that
    /// owner passed it on to (its view named another owner), which is then the one that
    /// holds the peer.
    pub fn announce_replied(&self, req_id: u64, from: InstanceId, result: AnnounceResult) {
        match self.pending().remove(&req_id) {
            Some((_, Pending::Announce(waiting))) => {
                let _ = waiting.send(Outcome::Replied((from, result)));
            }
            other => self.late_reply(req_id, other),
        }
    }

    /// The instance we sent announce `req_id` to passed it on to `owner` (its view named
    /// that one): the request waits for `owner` from then on. If `owner` has left our
    /// view, it is dead to us and the announce lost there, so the request is released at
    /// once, as by `owners_gone`, to be made again where our view says. An `owner` we
    /// have not heard of yet (a newcomer) is waited for like any owner.
    pub fn announce_passed_on(&self, req_id: u64, owner: InstanceId) {
        match self.pending().get_mut(&req_id) {
            Some((waits_for, Pending::Announce(_))) => *waits_for = owner,
            // Replied already (the reply may overtake this notice), or timed out.
            _ => return,
        }
        // Waiting for `owner` first and checked after, as in `expect_reply`: a departure
        // this check misses is in a view change whose `owners_gone` finds the entry.
        if self.view().counts_gone(owner) {
            let released = self.pending().remove(&req_id);
            if let Some((_, waiting)) = released {
                waiting.owner_gone();
            }
        }
    }

    /// The owner answered a scrape of ours.
    pub fn scrape_replied(&self, req_id: u64, files: Vec<(InfoHash, SwarmCounts)>) {
        match self.pending().remove(&req_id) {
            Some((_, Pending::Scrape(waiting))) => {
                let _ = waiting.send(Outcome::Replied(files));
            }
            other => self.late_reply(req_id, other),
        }
    }

    /// A reply after its deadline (or of the wrong kind, which a well-behaved peer never
    /// sends): the request was already answered as unavailable.
    fn late_reply(&self, req_id: u64, wrong: Option<(InstanceId, Pending)>) {
        if let Some(pending) = wrong {
            // Put back what was not this reply's to take.
            self.pending().insert(req_id, pending);
        }
        self.stats.late_reply();
        debug!("cluster: reply {req_id} arrived after its deadline");
    }

    /// Waits for the reply to `req_id` at most the reply deadline; the round trip goes
    /// into the relay latency histogram.
    fn await_reply<T: Send + 'static>(
        self: &Arc<Self>,
        req_id: u64,
        reply: oneshot::Receiver<Outcome<T>>,
    ) -> BoxFuture<'static, Result<Outcome<T>, Failure>> {
        let node = self.clone();
        let asked = Instant::now();
        Box::pin(async move {
            match tokio::time::timeout(node.reply_timeout, reply).await {
                Ok(Ok(Outcome::Replied(value))) => {
                    node.stats.request_round_trip(asked.elapsed());
                    Ok(Outcome::Replied(value))
                }
                Ok(Ok(Outcome::OwnerGone)) => Ok(Outcome::OwnerGone),
                _ => {
                    node.forget(req_id);
                    node.stats.reply_timed_out();
                    Err(Failure::unavailable())
                }
            }
        })
    }
}

impl ClusterNode {
    /// The cluster section of `/stats.json` (ids in hex, as in the logs).
    pub fn status(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let view = self.view();
        let bus = self.bus.stats();
        let mut forwarded = serde_json::Map::new();
        let mut handled = serde_json::Map::new();
        for (kind, sent, acted) in self.stats.by_kind() {
            forwarded.insert(kind.to_owned(), sent.into());
            handled.insert(kind.to_owned(), acted.into());
        }
        let mut dropped = serde_json::Map::new();
        for reason in super::bus::DropReason::ALL {
            dropped.insert(reason.as_str().to_owned(), bus.dropped_count(reason).into());
        }
        for reason in super::stats::RouteDrop::ALL {
            let count = self.stats.dropped_count(reason);
            dropped.insert(reason.as_str().to_owned(), count.into());
        }
        serde_json::json!({
            "instance": format!("{:016x}", self.self_id),
            "busUp": view.bus_up,
            "connected": bus.is_connected(),
            "instances": view.live.iter().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
            "viewGeneration": view.generation,
            "heartbeatRttMs": bus.heartbeat_rtt_micros.load(Relaxed) as f64 / 1000.0,
            "reconnects": bus.reconnects.load(Relaxed),
            "unreachable": bus.unreachable.load(Relaxed),
            "forwarded": forwarded,
            "handled": handled,
            "reforwarded": self.stats.reforwarded.load(Relaxed),
            "dropped": dropped,
        })
    }

    /// What `/readyz` says of the cluster: an instance without its bus stays ready (it
    /// serves every swarm itself) but says so.
    pub fn readiness(&self) -> serde_json::Value {
        let view = self.view();
        let detail = if view.bus_up {
            format!("bus up, {} instances", view.live.len())
        } else {
            "bus lost: every swarm is served by this instance alone until it returns".to_owned()
        };
        serde_json::json!({
            "busUp": view.bus_up,
            "instances": view.live.len(),
            "detail": detail,
        })
    }
}

/// The port `connection::requests` uses; implemented on `Arc<ClusterNode>` because the
/// reply futures keep the node.
impl RemoteSwarms for Arc<ClusterNode> {
    fn owner(&self, info_hash: &InfoHash) -> Option<InstanceId> {
        let owner = self.view().owner(info_hash);
        (owner != self.self_id).then_some(owner)
    }

    fn view_generation(&self) -> u64 {
        self.view().generation
    }

    fn announce(
        &self,
        owner: InstanceId,
        conn: ConnId,
        request: AnnounceRequest,
        resent: bool,
    ) -> BoxFuture<'static, Result<(InstanceId, AnnounceReply), NotAnnounced>> {
        let (reply, replied) = oneshot::channel();
        let Some(req_id) = self.expect_reply(owner, Pending::Announce(reply)) else {
            return Box::pin(async { Err(NotAnnounced::OwnerGone(request)) });
        };
        // Kept to be routed again if the owner turns out gone before it replies.
        let retry = request.clone();
        let message = BusMessage::Announce(ForwardedAnnounce {
            from: conn_key(conn),
            req_id,
            // Its trip to the owner that died was its one forward: the receiver's view may
            // still hold that owner, and passing it on there would lose it.
            hops: if resent { MAX_HOPS } else { 0 },
            request,
        });
        if self.send(owner, message).is_err() {
            self.forget(req_id);
            return Box::pin(async { Err(NotAnnounced::Failed(Failure::unavailable())) });
        }
        let replied = self.await_reply(req_id, replied);
        Box::pin(async move {
            let (taken_by, result) = match replied.await.map_err(NotAnnounced::Failed)? {
                Outcome::Replied(replied) => replied,
                Outcome::OwnerGone => return Err(NotAnnounced::OwnerGone(retry)),
            };
            match result {
                AnnounceResult::Accepted { counts, registered } => {
                    Ok((taken_by, AnnounceReply { counts, registered }))
                }
                AnnounceResult::Rejected(reject) => Err(NotAnnounced::Failed(reject.into())),
                AnnounceResult::Unavailable => Err(NotAnnounced::Failed(Failure::unavailable())),
            }
        })
    }

    fn rejoin_turn(&self) -> BoxFuture<'static, Option<RejoinTurn>> {
        self.rejoins.turn()
    }

    fn answer(
        &self,
        owner: InstanceId,
        conn: ConnId,
        request: AnswerRequest,
    ) -> Result<(), Failure> {
        let message = BusMessage::Answer(ForwardedAnswer {
            from: conn_key(conn),
            hops: 0,
            request,
        });
        self.send(owner, message)
            .map_err(|_| Failure::unavailable())
    }

    fn leave(&self, owner: InstanceId, conn: ConnId, info_hash: InfoHash, peer_ids: Vec<PeerId>) {
        let message = BusMessage::Leave(ForwardedLeave {
            conn: conn_key(conn),
            info_hash,
            peer_ids,
        });
        // A lost leave is repaired by the owner: the peers expire (peer TTL), or go with
        // this instance if it dies.
        let _ = self.send(owner, message);
    }

    fn scrape(
        &self,
        owner: InstanceId,
        info_hashes: Vec<InfoHash>,
    ) -> BoxFuture<'static, Result<Vec<(InfoHash, SwarmCounts)>, Failure>> {
        let (reply, replied) = oneshot::channel();
        let Some(req_id) = self.expect_reply(owner, Pending::Scrape(reply)) else {
            return Box::pin(async { Err(Failure::unavailable()) });
        };
        let message = BusMessage::Scrape(ScrapeQuery {
            // The reply goes to this instance; the connection number is not needed.
            from: ConnKey {
                instance: self.self_id,
                conn: 0,
            },
            req_id,
            info_hashes,
        });
        if self.send(owner, message).is_err() {
            self.forget(req_id);
            return Box::pin(async { Err(Failure::unavailable()) });
        }
        let replied = self.await_reply(req_id, replied);
        Box::pin(async move {
            match replied.await? {
                Outcome::Replied(files) => Ok(files),
                // Asked again, the client's next scrape finds the swarms' new owner.
                Outcome::OwnerGone => Err(Failure::unavailable()),
            }
        })
    }
}

/// The port swarms use to reach sessions held by other instances.
impl RemoteSessions for ClusterNode {
    fn deliver(&self, to: ConnId, message: OutMessage) -> Result<(), Undelivered> {
        let instance = instance_of(to);
        if !self.view().live.contains(&instance) {
            // Dead or cut off: its peers are being dropped; never queue for it.
            return Err(Undelivered::Closed);
        }
        let Some(relay) = Relay::from_out(&message) else {
            // Swarms relay only offers, answers and refusals of answers.
            return Err(Undelivered::Closed);
        };
        let message = BusMessage::Deliver(Deliver {
            to: conn_key(to),
            message: relay,
        });
        match self.send(instance, message) {
            Ok(()) => Ok(()),
            Err(SendRefused::QueueFull | SendRefused::BusDown) => Err(Undelivered::Full),
            Err(SendRefused::Stopped) => Err(Undelivered::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::cluster::bus::Outgoing;

    #[test]
    fn rejoins_in_flight_are_a_quarter_of_the_bus_queue_within_bounds() {
        assert_eq!(RejoinGate::limit(16), 4);
        assert_eq!(RejoinGate::limit(1024), 256);
        assert_eq!(RejoinGate::limit(3), 1, "always one at least");
        assert_eq!(RejoinGate::limit(65_536), MAX_REJOINS_IN_FLIGHT);
    }

    #[test]
    fn a_rejoin_waits_for_its_turn_until_one_in_flight_is_over() {
        use futures_util::FutureExt;
        let gate = RejoinGate::new(8);
        let first = gate.turn().now_or_never().flatten().expect("a turn");
        let second = gate.turn().now_or_never().flatten().expect("a turn");
        let mut third = gate.turn();
        assert!(
            (&mut third).now_or_never().is_none(),
            "two in flight at most"
        );
        drop(first);
        assert!(third.now_or_never().flatten().is_some(), "the freed turn");
        drop(second);
    }

    const ME: InstanceId = 0x1;
    const OWNER: InstanceId = 0x2;
    const ELSEWHERE: InstanceId = 0x3;

    /// A node whose view holds `live` and counts `departed` gone, on a bus that only
    /// queues what it is given.
    fn node_seeing(
        live: &[InstanceId],
        departed: &[InstanceId],
    ) -> (Arc<ClusterNode>, mpsc::Receiver<Outgoing>) {
        let mut live = live.to_vec();
        live.sort_unstable();
        let view = LiveView {
            self_id: ME,
            live,
            bus_up: true,
            generation: 1,
            departed: departed.to_vec(),
        };
        let (bus, sent) = BusHandle::detached(view, 16);
        let expiry = Duration::from_secs(600);
        let node = ClusterNode::new(bus, expiry, 64, Arc::new(NodeStats::new()));
        (Arc::new(node), sent)
    }

    fn join_request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            event: crate::protocol::AnnounceEvent::Started,
            left_is_zero: None,
            numwant: None,
            offers: Vec::new(),
        }
    }

    /// The announce `node` handed to the bus, which must be for `to`.
    fn forwarded_to(sent: &mut mpsc::Receiver<Outgoing>, to: InstanceId) -> ForwardedAnnounce {
        match sent.try_recv() {
            Ok(Outgoing {
                to: sent_to,
                message: BusMessage::Announce(forwarded),
            }) if sent_to == to => forwarded,
            other => panic!("expected an announce for {to:x}, got {other:?}"),
        }
    }

    fn joined() -> AnnounceResult {
        AnnounceResult::Accepted {
            counts: SwarmCounts {
                complete: 0,
                incomplete: 1,
            },
            registered: true,
        }
    }

    #[tokio::test]
    async fn an_announce_is_held_by_the_instance_that_replied() {
        let (node, mut sent) = node_seeing(&[ME, OWNER, ELSEWHERE], &[]);
        let conn = conn_id(ME, 5);
        let waiting = node.announce(OWNER, conn, join_request(), false);
        let forwarded = forwarded_to(&mut sent, OWNER);
        // OWNER's view named another owner, which took the announce and replied.
        node.announce_replied(forwarded.req_id, ELSEWHERE, joined());
        let (taken_by, reply) = waiting.await.expect("accepted");
        assert_eq!(taken_by, ELSEWHERE, "the peer is registered there");
        assert!(reply.registered);

        // The usual case: the owner it went to replies itself.
        let waiting = node.announce(OWNER, conn, join_request(), false);
        let forwarded = forwarded_to(&mut sent, OWNER);
        node.announce_replied(forwarded.req_id, OWNER, joined());
        assert_eq!(waiting.await.expect("accepted").0, OWNER);
    }

    /// Whether `waiting` came back to be made again (polled once: a release is at once).
    fn made_again(
        waiting: &mut BoxFuture<'static, Result<(InstanceId, AnnounceReply), NotAnnounced>>,
    ) -> bool {
        use futures_util::FutureExt;
        match waiting.now_or_never() {
            Some(Err(NotAnnounced::OwnerGone(request))) => {
                assert!(request == join_request(), "the request comes back whole");
                true
            }
            None => false,
            Some(other) => panic!("expected the request back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_announce_passed_on_to_an_instance_dead_to_us_comes_back_at_once() {
        let (node, mut sent) = node_seeing(&[ME, OWNER], &[ELSEWHERE]);
        let mut waiting = node.announce(OWNER, conn_id(ME, 5), join_request(), false);
        let forwarded = forwarded_to(&mut sent, OWNER);
        assert!(!made_again(&mut waiting), "waits for its owner");
        node.announce_passed_on(forwarded.req_id, ELSEWHERE);
        assert!(made_again(&mut waiting), "ELSEWHERE will never reply");
    }

    #[tokio::test]
    async fn an_announce_passed_on_waits_for_the_instance_it_went_to() {
        const NEWCOMER: InstanceId = 0x4;
        let (node, mut sent) = node_seeing(&[ME, OWNER, ELSEWHERE], &[]);
        let conn = conn_id(ME, 5);

        // Passed on to a live instance: released when that one leaves, not the owner.
        let mut waiting = node.announce(OWNER, conn, join_request(), false);
        let forwarded = forwarded_to(&mut sent, OWNER);
        node.announce_passed_on(forwarded.req_id, ELSEWHERE);
        node.owners_gone(&[OWNER]);
        assert!(
            !made_again(&mut waiting),
            "the owner it went to is out of it"
        );
        node.owners_gone(&[ELSEWHERE]);
        assert!(made_again(&mut waiting));

        // Passed on to an instance we have not heard of yet: it may have just started,
        // and its reply is waited for.
        let mut waiting = node.announce(OWNER, conn, join_request(), false);
        let forwarded = forwarded_to(&mut sent, OWNER);
        node.announce_passed_on(forwarded.req_id, NEWCOMER);
        assert!(!made_again(&mut waiting), "a newcomer is not dead");
        node.announce_replied(forwarded.req_id, NEWCOMER, joined());
        assert_eq!(waiting.await.expect("accepted").0, NEWCOMER);

        // Told after the reply (the two come from different instances): nothing to do.
        node.announce_passed_on(forwarded.req_id, ELSEWHERE);
        assert!(node.pending().is_empty());
    }

    #[test]
    fn connection_ids_survive_the_bus() {
        for (instance, local) in [(0, 1), (7, 42), (u64::MAX, u64::MAX), (0xdead_beef, 0)] {
            let conn = conn_id(instance, local);
            let key = conn_key(conn);
            assert_eq!(key.instance, instance);
            assert_eq!(key.conn, local);
            assert_eq!(conn_of(key), conn);
        }
    }
}
