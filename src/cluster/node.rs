//! ClusterNode: this instance's part in the cluster, as the rest of the process sees it.
//! It implements the two ports the tracker defines for other instances:
//! `connection::requests::RemoteSwarms` (sessions reaching swarms owned elsewhere) and
//! `swarm::route::RemoteSessions` (swarms reaching sessions held elsewhere), on top of the
//! bus handle. Every call is non-blocking: messages nobody waits for are queued with
//! `try_send` (a full queue or a lost bus is a refusal, counted), and a request that wants
//! a reply gets a future that waits for its turn and for room in the queue (see `ask`),
//! then resolves when the owner answers, when the owner leaves the view (an announce then
//! comes back to be routed again), or when the reply deadline passes. An
//! announce the owner passed on to another instance (`PassedOn`) waits for that one
//! instead, and comes back at once if that one is dead to us. An instance that leaves a
//! request without a reply for a heartbeat interval is probed (see `ask`), so that one
//! which died holding it is found within a round trip rather than at the expiry.
//!
//! What arrives from other instances is handled by `inbound`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
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

/// The failure reason for an answer whose offer's swarm was on an instance that is gone
/// (the offer went with it): known before it was sent, or told by the broker's "no
/// responders" for it (see `bus::BusEvent::AnswerLost`).
const OFFER_LOST: &str = "the tracker instance that relayed this offer is gone, and the offer \
                          with it; announce again";

/// The relay that tells an answering socket its answer in `info_hash` was lost.
pub fn answer_lost(info_hash: InfoHash) -> Relay {
    Relay::Failure {
        info_hash,
        reason: OFFER_LOST.to_owned(),
    }
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

/// Instances whose latest probe is remembered; beyond it all are forgotten (a cluster has a
/// handful of instances: only ids of dead newcomers could pile up).
const MAX_PROBED: usize = 1024;

/// Locks a map of plain values: a panic elsewhere cannot leave one half-written.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forwarded announces and scrapes in flight to any one instance at once, for a bus queue
/// of `bus_queue` messages: a quarter of it, so that the requests to one owner never fill
/// this instance's queue, nor the owner's subscription (as large). Not capped like
/// re-joins: it paces bursts with a small queue, and with the default (16,384) it does not
/// limit the steady traffic to a slow owner.
fn requests_in_flight_limit(bus_queue: usize) -> usize {
    (bus_queue / 4).max(1)
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
    bus_queue: usize,
    /// Turns for the requests in flight to each instance (see `ask`),
    /// `requests_in_flight_limit` of them per instance; an instance's entry goes when it
    /// leaves the view.
    in_flight: Mutex<HashMap<InstanceId, Arc<Semaphore>>>,
    /// A request without a reply for this long has the instance it waits for probed (see
    /// `ask`): the heartbeat interval.
    probe_after: Duration,
    /// When each instance was last probed: once per `probe_after` at most, however many
    /// requests wait for it. At most `MAX_PROBED` entries; an instance's goes when it
    /// leaves the view.
    probed: Mutex<HashMap<InstanceId, Instant>>,
    pub stats: Arc<NodeStats>,
}

impl ClusterNode {
    /// `bus_queue`: the bus's queue (`cluster.bus_queue`), which paces requests;
    /// `probe_after`: the heartbeat interval (see `ask`).
    pub fn new(
        bus: BusHandle,
        reply_timeout: Duration,
        probe_after: Duration,
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
            bus_queue,
            in_flight: Mutex::new(HashMap::new()),
            probe_after,
            probed: Mutex::new(HashMap::new()),
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

    /// Queues `message` for instance `to` once the bus queue has room (see
    /// `BusHandle::send_when_room`), counting it as forwarded: for requests and replies
    /// someone waits for, which a burst must delay rather than lose.
    pub async fn send_when_room(
        &self,
        to: InstanceId,
        message: BusMessage,
        deadline: tokio::time::Instant,
    ) -> Result<(), SendRefused> {
        let kind = message.kind();
        self.bus.send_when_room(to, message, deadline).await?;
        self.stats.forwarded(kind);
        Ok(())
    }

    /// When a request sent now, or a reply to one received now, is given up: the reply
    /// deadline, which waiting for room in the bus queue counts against too.
    pub fn reply_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.reply_timeout
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, (InstanceId, Pending)>> {
        locked(&self.pending)
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
        // Requests still holding a turn of theirs keep the semaphore alive until they end;
        // a return starts with a fresh one.
        let (mut in_flight, mut probed) = (locked(&self.in_flight), locked(&self.probed));
        for instance in gone {
            in_flight.remove(instance);
            probed.remove(instance);
        }
    }

    /// Probes `instance` (see `BusHandle::probe`) unless it was probed within
    /// `probe_after`.
    fn probe(&self, instance: InstanceId) {
        let now = Instant::now();
        {
            let mut probed = locked(&self.probed);
            let recent = |at: &Instant| now.saturating_duration_since(*at) < self.probe_after;
            if probed.get(&instance).is_some_and(recent) {
                return;
            }
            if probed.len() >= MAX_PROBED {
                probed.clear();
            }
            probed.insert(instance, now);
        }
        // A probe refused for a full queue is retried by the next slice of the wait (and
        // the expiry still holds).
        if self.bus.probe(instance) {
            self.stats.forwarded("heartbeat");
        }
    }

    /// The instance request `req_id` waits for now, if it still waits.
    fn waits_for(&self, req_id: u64) -> Option<InstanceId> {
        self.pending().get(&req_id).map(|(instance, _)| *instance)
    }

    /// The turns for requests in flight to `owner`.
    fn turns_to(&self, owner: InstanceId) -> Arc<Semaphore> {
        let mut in_flight = locked(&self.in_flight);
        let limit = requests_in_flight_limit(self.bus_queue);
        in_flight
            .entry(owner)
            .or_insert_with(|| Arc::new(Semaphore::new(limit)))
            .clone()
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
    /// have not heard of yet (a newcomer) is waited for like any owner, and probed like
    /// any (see `ask`).
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

    /// Sends request `req_id` to `owner` and waits for its reply, all until the reply
    /// deadline; the round trip goes into the relay latency histogram.
    ///
    /// Paced: a request takes one of the turns of its owner first (a quarter of the bus
    /// queue, see `requests_in_flight_limit`) and holds it until its reply or its end,
    /// then waits for room in the bus queue. So a burst of announces (hundreds
    /// of clients at once, say those of a dead instance reconnecting) waits its turn
    /// instead of overflowing this instance's bus queue, the owner's subscription, or the
    /// owner's queue of replies; turns are per owner, so an owner that died silently
    /// holds up only the requests that were meant for it. A request that gets no turn, or
    /// no reply, by the deadline fails as unavailable (counted as `reply_timeout`), one
    /// that gets no room in the queue fails the same way (counted as `queue_full`); one
    /// whose owner leaves the view meanwhile comes back at once (`OwnerGone`).
    ///
    /// While it waits for the reply, the instance it waits for is probed once per
    /// `probe_after` without one (see `probe`): if that instance died after receiving the
    /// request, NATS's "no responders" to the probe releases the request, as a departure
    /// does, instead of the expiry or the deadline.
    async fn ask<T: Send + 'static>(
        self: Arc<Self>,
        owner: InstanceId,
        req_id: u64,
        message: BusMessage,
        mut reply: oneshot::Receiver<Outcome<T>>,
    ) -> Result<Outcome<T>, Failure> {
        let asked = Instant::now();
        let deadline = self.reply_deadline();
        let turns = self.turns_to(owner);
        let turn = tokio::select! {
            // Nothing sent yet, so nothing but the owner's departure can be here.
            early = &mut reply => return self.outcome(req_id, asked, early.ok()),
            turn = tokio::time::timeout_at(deadline, turns.acquire_owned()) => match turn {
                Ok(Ok(turn)) => turn,
                // No turn by the deadline (the semaphore is never closed).
                _ => return self.outcome(req_id, asked, None),
            },
        };
        if self.send_when_room(owner, message, deadline).await.is_err() {
            self.forget(req_id);
            return Err(Failure::unavailable());
        }
        let replied = loop {
            let slice = (tokio::time::Instant::now() + self.probe_after).min(deadline);
            match tokio::time::timeout_at(slice, &mut reply).await {
                Ok(replied) => break replied.ok(),
                Err(_) if slice >= deadline => break None,
                // No reply for a heartbeat interval: whoever it waits for may have died
                // after receiving it, which no message of ours has told the broker to
                // report yet; the probe does, within a round trip.
                Err(_) => {
                    if let Some(instance) = self.waits_for(req_id) {
                        self.probe(instance);
                    }
                }
            }
        };
        drop(turn);
        self.outcome(req_id, asked, replied)
    }

    /// What a request learnt by its deadline (`None`: nothing, it timed out).
    fn outcome<T>(
        &self,
        req_id: u64,
        asked: Instant,
        learnt: Option<Outcome<T>>,
    ) -> Result<Outcome<T>, Failure> {
        match learnt {
            Some(Outcome::Replied(value)) => {
                self.stats.request_round_trip(asked.elapsed());
                Ok(Outcome::Replied(value))
            }
            Some(Outcome::OwnerGone) => Ok(Outcome::OwnerGone),
            None => {
                self.forget(req_id);
                self.stats.reply_timed_out();
                Err(Failure::unavailable())
            }
        }
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
        let replied = self.clone().ask(owner, req_id, message, replied);
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
        if !self.view().live.contains(&owner) {
            // Dead or cut off: the swarm that relayed the offer went with it (and a
            // message to it would be lost). The session re-joins the swarm elsewhere.
            return Err(Failure::new("offer_lost", OFFER_LOST.to_owned()));
        }
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
        let replied = self.clone().ask(owner, req_id, message, replied);
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
        let probe_after = Duration::from_secs(60);
        let stats = Arc::new(NodeStats::new());
        let node = ClusterNode::new(bus, expiry, probe_after, 64, stats);
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

    type Announcing = BoxFuture<'static, Result<(InstanceId, AnnounceReply), NotAnnounced>>;

    /// An announce of `conn` to `to`, polled once: it is on the bus by then (see
    /// `forwarded_to`) if `to` had a turn free.
    fn announce_polled(node: &Arc<ClusterNode>, to: InstanceId, conn: ConnId) -> Announcing {
        use futures_util::FutureExt;
        let mut waiting = node.announce(to, conn, join_request(), false);
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "waits for its reply"
        );
        waiting
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
        let waiting = announce_polled(&node, OWNER, conn);
        let forwarded = forwarded_to(&mut sent, OWNER);
        // OWNER's view named another owner, which took the announce and replied.
        node.announce_replied(forwarded.req_id, ELSEWHERE, joined());
        let (taken_by, reply) = waiting.await.expect("accepted");
        assert_eq!(taken_by, ELSEWHERE, "the peer is registered there");
        assert!(reply.registered);

        // The usual case: the owner it went to replies itself.
        let waiting = announce_polled(&node, OWNER, conn);
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
        let mut waiting = announce_polled(&node, OWNER, conn_id(ME, 5));
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
        let mut waiting = announce_polled(&node, OWNER, conn);
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
        let mut waiting = announce_polled(&node, OWNER, conn);
        let forwarded = forwarded_to(&mut sent, OWNER);
        node.announce_passed_on(forwarded.req_id, NEWCOMER);
        assert!(!made_again(&mut waiting), "a newcomer is not dead");
        node.announce_replied(forwarded.req_id, NEWCOMER, joined());
        assert_eq!(waiting.await.expect("accepted").0, NEWCOMER);

        // Told after the reply (the two come from different instances): nothing to do.
        node.announce_passed_on(forwarded.req_id, ELSEWHERE);
        assert!(node.pending().is_empty());
    }

    #[tokio::test]
    async fn announces_in_flight_are_paced_per_owner() {
        let (node, mut sent) = node_seeing(&[ME, OWNER, ELSEWHERE], &[]);
        let limit = requests_in_flight_limit(64);
        let conn = conn_id(ME, 5);
        let mut in_flight: Vec<_> = (0..limit)
            .map(|_| {
                let waiting = announce_polled(&node, OWNER, conn);
                (waiting, forwarded_to(&mut sent, OWNER))
            })
            .collect();
        let mut next = announce_polled(&node, OWNER, conn);
        assert!(sent.try_recv().is_err(), "waits for a turn at OWNER");

        // Another owner's turns are its own.
        let elsewhere = announce_polled(&node, ELSEWHERE, conn);
        let forwarded = forwarded_to(&mut sent, ELSEWHERE);
        node.announce_replied(forwarded.req_id, ELSEWHERE, joined());
        assert_eq!(elsewhere.await.expect("accepted").0, ELSEWHERE);

        // A reply frees a turn, and the next one goes.
        let (first, forwarded) = in_flight.remove(0);
        node.announce_replied(forwarded.req_id, OWNER, joined());
        assert_eq!(first.await.expect("accepted").0, OWNER);
        assert!(!made_again(&mut next), "still waiting, for its reply now");
        let forwarded = forwarded_to(&mut sent, OWNER);
        node.announce_replied(forwarded.req_id, OWNER, joined());
        assert_eq!(next.await.expect("accepted").0, OWNER);

        // Waiting for a turn, it comes back at once when its owner leaves.
        let mut next = announce_polled(&node, OWNER, conn);
        node.owners_gone(&[OWNER]);
        assert!(made_again(&mut next));
        for (mut waiting, _) in in_flight {
            assert!(made_again(&mut waiting));
        }
    }

    #[test]
    fn an_answer_for_a_swarm_on_an_instance_out_of_the_view_is_refused_at_once() {
        let (node, mut sent) = node_seeing(&[ME, OWNER], &[ELSEWHERE]);
        let answer = AnswerRequest {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            to_peer_id: PeerId([3; 20]),
            offer_id: crate::protocol::OfferId([4; 20]),
            sdp: crate::protocol::Sdp::from_text("v=0"),
        };
        let refused = node
            .answer(ELSEWHERE, conn_id(ME, 5), answer.clone())
            .expect_err("ELSEWHERE is gone");
        assert_eq!(refused.kind, "offer_lost");
        assert!(sent.try_recv().is_err(), "nothing sent to the dead");
        node.answer(OWNER, conn_id(ME, 5), answer).expect("sent");
        assert!(matches!(
            sent.try_recv(),
            Ok(Outgoing {
                to: OWNER,
                message: BusMessage::Answer(_)
            })
        ));
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
