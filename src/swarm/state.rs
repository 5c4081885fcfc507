//! SwarmState: the peers of one info_hash and the offers waiting for answers. Plain data:
//! no actix, no clock of its own (callers pass `now`), no I/O. Every operation returns what
//! must be delivered to whom, and the actor shell (`swarm::Swarm`) delivers it.
//!
//! Invariants:
//! - `seeders` equals the number of entries in `peers` with `seeder == true`.
//! - `conn_registrations[c]` equals the number of entries in `peers` owned by connection
//!   `c`, and no connection has an entry with count 0.
//! - every `pending` entry has exactly one record in `pending_order`, which is sorted by
//!   expiry (all offers share one TTL, so insertion order is expiry order); stale records
//!   (answered offers) are skipped when they reach the front.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use indexmap::IndexMap;
use rand::Rng;

use crate::{
    connection::{instance_of, ConnId, InstanceId},
    protocol::{
        AnnounceEvent, AnnounceRequest, AnswerRequest, InfoHash, OfferId, OutMessage, PeerId,
        SwarmCounts,
    },
};

/// Limits one swarm enforces: built from the `[tracker]` settings (`config`), whose
/// defaults are also this struct's `Default`.
#[derive(Debug, Clone, Copy)]
pub struct SwarmLimits {
    pub max_offers: usize,
    pub max_peers: usize,
    pub peer_ttl: Duration,
    pub offer_ttl: Duration,
    /// Most offers waiting for an answer; the oldest is forgotten beyond it.
    pub max_pending_offers: usize,
}

/// Why a request was not carried out; `Display` is the `failure reason` sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    SwarmFull {
        max_peers: usize,
    },
    /// No unexpired offer with this offer_id was relayed to this peer by `to_peer_id`.
    UnknownOffer,
    /// The offer exists but was relayed to another connection.
    NotYourOffer,
    /// The offering peer left the swarm before its answer arrived.
    OffererGone,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::SwarmFull { max_peers } => {
                write!(f, "swarm is full ({max_peers} peers)")
            }
            Reject::UnknownOffer => f.write_str(
                "no offer with that offer_id from to_peer_id was relayed to you; it may have expired",
            ),
            Reject::NotYourOffer => {
                f.write_str("that offer was relayed to another connection")
            }
            Reject::OffererGone => f.write_str("the peer that made this offer has left the swarm"),
        }
    }
}

impl Reject {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Reject::SwarmFull { .. } => "swarm_full",
            Reject::UnknownOffer => "unknown_offer",
            Reject::NotYourOffer => "not_your_offer",
            Reject::OffererGone => "offerer_gone",
        }
    }
}

/// One message for one peer of this swarm.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub to: PeerId,
    pub message: OutMessage,
}

/// What an announce did.
#[derive(Debug, Default)]
pub struct AnnounceOutcome {
    /// Counts after the announce (the announcer included).
    pub counts: SwarmCounts,
    /// Offers to relay.
    pub deliveries: Vec<Delivery>,
    /// The peer is registered to the announcing connection after this announce.
    pub registered: bool,
    /// The announce took the peer_id over from another connection.
    pub took_over: bool,
}

#[derive(Debug)]
struct PeerEntry<R> {
    conn: ConnId,
    seeder: bool,
    last_announce: Instant,
    /// Consecutive relays the peer's session could not take (full mailbox).
    dropped: u32,
    recipient: R,
}

#[derive(Debug, Clone, Copy)]
struct PendingOffer {
    offerer: PeerId,
    /// The connection the offer was delivered to: only it may answer.
    answerer_conn: ConnId,
    expires: Instant,
}

/// The hasher of the maps keyed by ids: foldhash (hashbrown's default) rather than std's
/// SipHash, which cost ~5 % of the server's instructions under load. Each map draws its own
/// random seed, so clients cannot aim ids at one bucket without knowing it.
pub type IdHasher = foldhash::quality::RandomState;

/// The state of one swarm. `R` is how a peer is reached (a `Recipient` in the server, a
/// plain value in tests).
#[derive(Debug)]
pub struct SwarmState<R> {
    info_hash: InfoHash,
    limits: SwarmLimits,
    /// Every map here is keyed by what clients chose or control; foldhash's per-map random
    /// seed keeps its collisions unpredictable to them (see `IdHasher`).
    peers: IndexMap<PeerId, PeerEntry<R>, IdHasher>,
    seeders: usize,
    conn_registrations: HashMap<ConnId, usize, IdHasher>,
    /// Keyed by (answering peer, offer_id).
    pending: HashMap<(PeerId, OfferId), PendingOffer, IdHasher>,
    pending_order: VecDeque<(Instant, PeerId, OfferId)>,
}

impl<R: Clone> SwarmState<R> {
    pub fn new(info_hash: InfoHash, limits: SwarmLimits) -> Self {
        Self {
            info_hash,
            limits,
            peers: IndexMap::default(),
            seeders: 0,
            conn_registrations: HashMap::default(),
            pending: HashMap::default(),
            pending_order: VecDeque::new(),
        }
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    pub fn counts(&self) -> SwarmCounts {
        SwarmCounts {
            complete: saturating_u32(self.seeders),
            incomplete: saturating_u32(self.peers.len() - self.seeders),
        }
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn pending_offer_count(&self) -> usize {
        self.pending.len()
    }

    /// Whether `peer_id` is registered, and to which connection.
    pub fn owner(&self, peer_id: &PeerId) -> Option<ConnId> {
        self.peers.get(peer_id).map(|entry| entry.conn)
    }

    /// Every peer's connection and recipient (to tell them all something).
    pub fn routes(&self) -> impl Iterator<Item = (ConnId, &R)> + '_ {
        self.peers
            .values()
            .map(|entry| (entry.conn, &entry.recipient))
    }

    /// How to reach a peer.
    pub fn recipient(&self, peer_id: &PeerId) -> Option<&R> {
        self.peers.get(peer_id).map(|entry| &entry.recipient)
    }

    /// Join, re-announce, complete or leave; relays the announce's offers.
    pub fn announce(
        &mut self,
        conn: ConnId,
        recipient: R,
        request: &AnnounceRequest,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<AnnounceOutcome, Reject> {
        let peer_id = request.peer_id;
        #[cfg(feature = "fault-injection")]
        if request.info_hash.0.starts_with(b"PANIC") {
            panic!("injected fault in swarm {}", request.info_hash);
        }
        if request.event == AnnounceEvent::Stopped {
            // Only the owning connection may remove a registration, so `stopped` cannot be
            // spoofed by someone who learnt the peer_id from a relayed offer.
            if self.owner(&peer_id) == Some(conn) {
                self.remove_peer(&peer_id);
            }
            return Ok(AnnounceOutcome {
                counts: self.counts(),
                ..AnnounceOutcome::default()
            });
        }

        let becomes_seeder = match (request.event, request.left_is_zero) {
            (AnnounceEvent::Completed, _) | (_, Some(true)) => Some(true),
            (_, Some(false)) => Some(false),
            // No `left` (P2P Media Loader never sends it): keep what we knew.
            (_, None) => None,
        };

        let mut took_over = false;
        match self.peers.get_mut(&peer_id) {
            Some(entry) => {
                if entry.conn != conn {
                    // Last writer wins: the client reconnected (or a second tab reuses the
                    // id); offers must now reach the new socket.
                    let old_conn = entry.conn;
                    entry.conn = conn;
                    took_over = true;
                    Self::unregister_conn(&mut self.conn_registrations, old_conn);
                    *self.conn_registrations.entry(conn).or_insert(0) += 1;
                }
                entry.recipient = recipient;
                entry.last_announce = now;
                entry.dropped = 0;
                if let Some(seeder) = becomes_seeder {
                    if seeder != entry.seeder {
                        entry.seeder = seeder;
                        if seeder {
                            self.seeders += 1;
                        } else {
                            self.seeders -= 1;
                        }
                    }
                }
            }
            None => {
                if self.peers.len() >= self.limits.max_peers {
                    return Err(Reject::SwarmFull {
                        max_peers: self.limits.max_peers,
                    });
                }
                let seeder = becomes_seeder.unwrap_or(false);
                self.peers.insert(
                    peer_id,
                    PeerEntry {
                        conn,
                        seeder,
                        last_announce: now,
                        dropped: 0,
                        recipient,
                    },
                );
                if seeder {
                    self.seeders += 1;
                }
                *self.conn_registrations.entry(conn).or_insert(0) += 1;
            }
        }

        let deliveries = self.relay_offers(conn, request, now, rng);
        Ok(AnnounceOutcome {
            counts: self.counts(),
            deliveries,
            registered: true,
            took_over,
        })
    }

    /// Picks distinct random recipients for the announce's offers and records each offer
    /// as waiting for an answer from its recipient.
    fn relay_offers(
        &mut self,
        conn: ConnId,
        request: &AnnounceRequest,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Vec<Delivery> {
        // Never the sender, nor another registration of the sender's own connection (its
        // other peer_ids would only connect the page to itself).
        let excluded = self.conn_registrations.get(&conn).copied().unwrap_or(0);
        let eligible = self.peers.len().saturating_sub(excluded);
        let wanted = request
            .offers
            .len()
            .min(request.numwant.unwrap_or(usize::MAX))
            .min(self.limits.max_offers)
            .min(eligible);
        if wanted == 0 {
            return Vec::new();
        }
        // Sampling `wanted + excluded` distinct indices leaves at least `wanted` that belong
        // to other connections once the sender's own are filtered out.
        let draw = (wanted + excluded).min(self.peers.len());
        let chosen: Vec<usize> = rand::seq::index::sample(rng, self.peers.len(), draw)
            .into_iter()
            .filter(|&index| {
                self.peers
                    .get_index(index)
                    .is_some_and(|(_, entry)| entry.conn != conn)
            })
            .take(wanted)
            .collect();

        let expires = now + self.limits.offer_ttl;
        let mut deliveries = Vec::with_capacity(chosen.len());
        for (offer, index) in request.offers.iter().zip(chosen) {
            let Some((receiver, entry)) = self.peers.get_index(index) else {
                continue;
            };
            let receiver = *receiver;
            self.remember_offer(
                receiver,
                offer.offer_id,
                PendingOffer {
                    offerer: request.peer_id,
                    answerer_conn: entry.conn,
                    expires,
                },
            );
            deliveries.push(Delivery {
                to: receiver,
                message: OutMessage::Offer {
                    info_hash: self.info_hash,
                    peer_id: request.peer_id,
                    offer_id: offer.offer_id,
                    sdp: offer.sdp.clone(),
                },
            });
        }
        deliveries
    }

    fn remember_offer(&mut self, receiver: PeerId, offer_id: OfferId, pending: PendingOffer) {
        while self.pending.len() >= self.limits.max_pending_offers {
            let Some((expires, peer, offer)) = self.pending_order.pop_front() else {
                break;
            };
            // Skip stale records (answered, or replaced by a later relay of the same id).
            if self
                .pending
                .get(&(peer, offer))
                .is_some_and(|entry| entry.expires == expires)
            {
                self.pending.remove(&(peer, offer));
            }
        }
        // A client may reuse an offer_id; the newer relay wins, and it needs its own expiry
        // record (the older one goes stale).
        self.pending.insert((receiver, offer_id), pending);
        self.pending_order
            .push_back((pending.expires, receiver, offer_id));
    }

    /// Routes an answer back to the peer whose offer it answers.
    pub fn answer(
        &mut self,
        conn: ConnId,
        request: &AnswerRequest,
        now: Instant,
    ) -> Result<Delivery, Reject> {
        let key = (request.peer_id, request.offer_id);
        let pending = match self.pending.get(&key) {
            Some(pending) if pending.expires > now && pending.offerer == request.to_peer_id => {
                *pending
            }
            _ => return Err(Reject::UnknownOffer),
        };
        if pending.answerer_conn != conn {
            return Err(Reject::NotYourOffer);
        }
        // One answer per offer; its record in `pending_order` goes stale and is skipped.
        self.pending.remove(&key);
        if !self.peers.contains_key(&request.to_peer_id) {
            return Err(Reject::OffererGone);
        }
        Ok(Delivery {
            to: request.to_peer_id,
            message: OutMessage::Answer {
                info_hash: self.info_hash,
                peer_id: request.peer_id,
                offer_id: request.offer_id,
                sdp: request.sdp.clone(),
            },
        })
    }

    /// Removes the connection's registrations among `peer_ids` (a closed socket).
    /// Returns how many were removed.
    pub fn leave(&mut self, conn: ConnId, peer_ids: &[PeerId]) -> usize {
        let mut removed = 0;
        for peer_id in peer_ids {
            if self.owner(peer_id) == Some(conn) {
                self.remove_peer(peer_id);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every peer whose socket is on `instance` (an instance of the cluster died or
    /// left). Returns how many were removed. A scan of the swarm: it happens once per lost
    /// instance, not per message.
    pub fn leave_instance(&mut self, instance: InstanceId) -> usize {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, entry)| instance_of(entry.conn) == instance)
            .map(|(peer_id, _)| *peer_id)
            .collect();
        for peer_id in &gone {
            self.remove_peer(peer_id);
        }
        gone.len()
    }

    /// Removes peers that have not announced within the peer TTL and forgets expired
    /// offers. Returns the peers removed.
    pub fn sweep(&mut self, now: Instant) -> Vec<PeerId> {
        let ttl = self.limits.peer_ttl;
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, entry)| now.saturating_duration_since(entry.last_announce) >= ttl)
            .map(|(peer_id, _)| *peer_id)
            .collect();
        for peer_id in &stale {
            self.remove_peer(peer_id);
        }
        while let Some(&(expires, peer, offer)) = self.pending_order.front() {
            if expires > now {
                break;
            }
            self.pending_order.pop_front();
            if self
                .pending
                .get(&(peer, offer))
                .is_some_and(|pending| pending.expires == expires)
            {
                self.pending.remove(&(peer, offer));
            }
        }
        stale
    }

    /// Notes that a relay to `peer_id` could not be queued. After `max_dropped`
    /// consecutive failures the peer is removed (its client stopped reading); returns true
    /// when that happened.
    pub fn delivery_dropped(&mut self, peer_id: &PeerId, max_dropped: u32) -> bool {
        let Some(entry) = self.peers.get_mut(peer_id) else {
            return false;
        };
        entry.dropped += 1;
        if entry.dropped >= max_dropped {
            self.remove_peer(peer_id);
            true
        } else {
            false
        }
    }

    /// Notes a relay that was queued, ending a run of drops.
    pub fn delivery_succeeded(&mut self, peer_id: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer_id) {
            entry.dropped = 0;
        }
    }

    /// Removes a peer whose session is gone for good (its mailbox is closed).
    pub fn remove_unreachable(&mut self, peer_id: &PeerId) {
        self.remove_peer(peer_id);
    }

    fn remove_peer(&mut self, peer_id: &PeerId) {
        if let Some(entry) = self.peers.swap_remove(peer_id) {
            if entry.seeder {
                self.seeders -= 1;
            }
            Self::unregister_conn(&mut self.conn_registrations, entry.conn);
        }
    }

    fn unregister_conn(registrations: &mut HashMap<ConnId, usize, IdHasher>, conn: ConnId) {
        if let Some(count) = registrations.get_mut(&conn) {
            *count -= 1;
            if *count == 0 {
                registrations.remove(&conn);
            }
        }
    }
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{rngs::SmallRng, SeedableRng};

    use super::*;
    use crate::protocol::{Offer, Sdp};

    fn id(n: u8) -> [u8; 20] {
        let mut bytes = [b'a'; 20];
        bytes[19] = n;
        bytes
    }

    fn peer(n: u8) -> PeerId {
        PeerId(id(n))
    }

    fn offer_id(n: u8) -> OfferId {
        OfferId(id(n))
    }

    fn hash() -> InfoHash {
        InfoHash(id(0))
    }

    fn announce(peer_id: PeerId, event: AnnounceEvent, offers: usize) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: hash(),
            peer_id,
            event,
            left_is_zero: None,
            numwant: (offers > 0).then_some(offers),
            offers: (0..offers)
                .map(|n| Offer {
                    offer_id: offer_id(100 + n as u8),
                    sdp: Sdp::from_text(&format!("sdp {n}")),
                })
                .collect(),
        }
    }

    /// An answer from `from` to the offer `offer` of `to`, carrying `sdp`.
    fn answer_request(from: PeerId, to: PeerId, offer: OfferId, sdp: &str) -> AnswerRequest {
        AnswerRequest {
            info_hash: hash(),
            peer_id: from,
            to_peer_id: to,
            offer_id: offer,
            sdp: Sdp::from_text(sdp),
        }
    }

    struct Fixture {
        state: SwarmState<ConnId>,
        rng: SmallRng,
        now: Instant,
    }

    impl Fixture {
        fn new(limits: SwarmLimits) -> Self {
            Self {
                state: SwarmState::new(hash(), limits),
                rng: SmallRng::seed_from_u64(7),
                now: Instant::now(),
            }
        }

        /// A swarm in which peers `1..=count` joined, each on its own connection (the
        /// connection id equals the peer's number).
        fn with_peers(limits: SwarmLimits, count: u8) -> Self {
            let mut swarm = Self::new(limits);
            for n in 1..=count {
                swarm.join(ConnId::from(n), peer(n));
            }
            swarm
        }

        fn join(&mut self, conn: ConnId, peer_id: PeerId) -> AnnounceOutcome {
            self.announce(conn, announce(peer_id, AnnounceEvent::Started, 0))
                .expect("join")
        }

        /// `peer_id` (on `conn`) announces an update with `offers` offers; it must be
        /// accepted.
        fn offer(&mut self, conn: ConnId, peer_id: PeerId, offers: usize) -> AnnounceOutcome {
            self.announce(conn, announce(peer_id, AnnounceEvent::Update, offers))
                .expect("announce")
        }

        fn announce(
            &mut self,
            conn: ConnId,
            request: AnnounceRequest,
        ) -> Result<AnnounceOutcome, Reject> {
            self.state
                .announce(conn, conn, &request, self.now, &mut self.rng)
        }
    }

    /// Limits that differ from the defaults only where `change` says.
    fn limits(change: impl FnOnce(&mut SwarmLimits)) -> SwarmLimits {
        let mut limits = SwarmLimits::default();
        change(&mut limits);
        limits
    }

    #[test]
    fn counts_include_the_announcer() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        let outcome = swarm.join(1, peer(1));
        assert_eq!(
            outcome.counts,
            SwarmCounts {
                complete: 0,
                incomplete: 1
            }
        );
        assert!(outcome.registered);
    }

    #[test]
    fn completed_or_left_zero_makes_a_seeder_and_left_positive_reverts() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        swarm.join(1, peer(1));
        let outcome = swarm
            .announce(1, announce(peer(1), AnnounceEvent::Completed, 0))
            .expect("completed");
        assert_eq!((outcome.counts.complete, outcome.counts.incomplete), (1, 0));

        let mut request = announce(peer(2), AnnounceEvent::Started, 0);
        request.left_is_zero = Some(true);
        let outcome = swarm.announce(2, request).expect("seeder joins");
        assert_eq!((outcome.counts.complete, outcome.counts.incomplete), (2, 0));

        // An update without `left` keeps the status...
        let outcome = swarm
            .announce(2, announce(peer(2), AnnounceEvent::Update, 0))
            .expect("update");
        assert_eq!(outcome.counts.complete, 2);
        // ...and `left > 0` turns it back into a leecher.
        let mut request = announce(peer(2), AnnounceEvent::Update, 0);
        request.left_is_zero = Some(false);
        let outcome = swarm.announce(2, request).expect("update");
        assert_eq!((outcome.counts.complete, outcome.counts.incomplete), (1, 1));
    }

    #[test]
    fn stopped_removes_only_for_the_owning_connection() {
        let mut swarm = Fixture::with_peers(SwarmLimits::default(), 2);
        let stopped = || announce(peer(1), AnnounceEvent::Stopped, 0);
        let spoofed = swarm.announce(3, stopped()).expect("stopped");
        assert_eq!(spoofed.counts.incomplete, 2);
        assert!(!spoofed.registered);
        let real = swarm.announce(1, stopped()).expect("stopped");
        assert_eq!(real.counts.incomplete, 1);
        assert_eq!(swarm.state.owner(&peer(1)), None);
    }

    /// The peers `outcome` relays offers to, in order.
    fn receivers(outcome: &AnnounceOutcome) -> Vec<PeerId> {
        outcome
            .deliveries
            .iter()
            .map(|delivery| delivery.to)
            .collect()
    }

    #[test]
    fn offers_go_to_distinct_random_peers_never_the_sender() {
        let mut swarm = Fixture::with_peers(SwarmLimits::default(), 20);
        let mut seen_receivers = HashSet::new();
        for _ in 0..50 {
            let outcome = swarm.offer(1, peer(1), 5);
            assert_eq!(outcome.deliveries.len(), 5);
            let receivers: HashSet<PeerId> = receivers(&outcome).into_iter().collect();
            assert_eq!(receivers.len(), 5, "receivers must be distinct");
            assert!(!receivers.contains(&peer(1)), "never the sender");
            seen_receivers.extend(receivers);
            for delivery in &outcome.deliveries {
                match &delivery.message {
                    OutMessage::Offer { peer_id, .. } => assert_eq!(*peer_id, peer(1)),
                    other => panic!("expected an offer, got {other:?}"),
                }
            }
        }
        // Uniform sampling reaches every other peer over many announces, unlike a fixed
        // contiguous window.
        assert_eq!(seen_receivers.len(), 19);
    }

    #[test]
    fn fan_out_is_capped_by_numwant_max_offers_and_swarm_size() {
        let mut swarm = Fixture::with_peers(limits(|limits| limits.max_offers = 3), 10);
        let outcome = swarm.offer(1, peer(1), 8);
        assert_eq!(outcome.deliveries.len(), 3, "max_offers caps");

        let mut request = announce(peer(1), AnnounceEvent::Update, 8);
        request.numwant = Some(2);
        let outcome = swarm.announce(1, request).expect("announce");
        assert_eq!(outcome.deliveries.len(), 2, "numwant caps");

        let mut small = Fixture::with_peers(SwarmLimits::default(), 2);
        let outcome = small.offer(1, peer(1), 5);
        assert_eq!(outcome.deliveries.len(), 1, "only one other peer");
    }

    #[test]
    fn offers_skip_other_registrations_of_the_same_connection() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        swarm.join(1, peer(1));
        swarm.join(1, peer(2));
        swarm.join(2, peer(3));
        for _ in 0..20 {
            let outcome = swarm.offer(1, peer(1), 5);
            assert_eq!(receivers(&outcome), vec![peer(3)]);
        }
    }

    #[test]
    fn answer_is_routed_only_for_a_relayed_offer() {
        let mut swarm = Fixture::with_peers(SwarmLimits::default(), 2);
        let outcome = swarm.offer(1, peer(1), 1);
        assert_eq!(outcome.deliveries[0].to, peer(2));
        let offered = offer_id(100);

        let now = swarm.now;
        let answer = |from: PeerId, to: PeerId, offer: OfferId| {
            answer_request(from, to, offer, "answer sdp")
        };

        // A made-up offer_id, a forged to_peer_id, or the wrong connection: refused.
        let made_up = answer(peer(2), peer(1), offer_id(9));
        assert_eq!(
            swarm.state.answer(2, &made_up, now),
            Err(Reject::UnknownOffer)
        );
        swarm.join(3, peer(3));
        let forged = answer(peer(2), peer(3), offered);
        assert_eq!(
            swarm.state.answer(2, &forged, now),
            Err(Reject::UnknownOffer)
        );
        let real = answer(peer(2), peer(1), offered);
        assert_eq!(swarm.state.answer(3, &real, now), Err(Reject::NotYourOffer));

        let delivery = swarm.state.answer(2, &real, now).expect("relayed");
        assert_eq!(delivery.to, peer(1));
        assert_eq!(
            delivery.message,
            OutMessage::Answer {
                info_hash: hash(),
                peer_id: peer(2),
                offer_id: offered,
                sdp: Sdp::from_text("answer sdp"),
            }
        );
        // Only one answer per offer.
        assert_eq!(swarm.state.answer(2, &real, now), Err(Reject::UnknownOffer));
    }

    /// Peers 1 and 2, offers pending for 60 s, and peer 1's offer 100 pending for peer 2.
    fn one_pending_offer() -> Fixture {
        let ttl = limits(|limits| limits.offer_ttl = Duration::from_secs(60));
        let mut swarm = Fixture::with_peers(ttl, 2);
        swarm.offer(1, peer(1), 1);
        swarm
    }

    #[test]
    fn pending_offers_expire() {
        let mut swarm = one_pending_offer();
        assert_eq!(swarm.state.pending_offer_count(), 1);
        let later = swarm.now + Duration::from_secs(61);
        let request = answer_request(peer(2), peer(1), offer_id(100), "late");
        assert_eq!(
            swarm.state.answer(2, &request, later),
            Err(Reject::UnknownOffer)
        );
        swarm.state.sweep(later);
        assert_eq!(swarm.state.pending_offer_count(), 0);
    }

    #[test]
    fn a_reused_offer_id_still_expires() {
        let mut swarm = one_pending_offer();
        swarm.now += Duration::from_secs(30);
        // Same offer_id again, to the only other peer.
        swarm.offer(1, peer(1), 1);
        assert_eq!(swarm.state.pending_offer_count(), 1);
        // The first record's expiry passes: the renewed offer survives it...
        swarm.state.sweep(swarm.now + Duration::from_secs(31));
        assert_eq!(swarm.state.pending_offer_count(), 1);
        // ...and goes at its own expiry.
        swarm.state.sweep(swarm.now + Duration::from_secs(61));
        assert_eq!(swarm.state.pending_offer_count(), 0);
    }

    #[test]
    fn pending_offers_are_bounded() {
        let mut swarm = Fixture::with_peers(limits(|limits| limits.max_pending_offers = 4), 10);
        for _ in 0..10 {
            swarm.offer(1, peer(1), 5);
        }
        assert!(swarm.state.pending_offer_count() <= 4);
    }

    #[test]
    fn silent_peers_are_swept_after_the_ttl() {
        let ttl = limits(|limits| limits.peer_ttl = Duration::from_secs(240));
        let mut swarm = Fixture::new(ttl);
        swarm.join(1, peer(1));
        swarm.now += Duration::from_secs(200);
        swarm.join(2, peer(2));
        let removed = swarm.state.sweep(swarm.now + Duration::from_secs(41));
        assert_eq!(removed, vec![peer(1)]);
        assert_eq!(swarm.state.counts().incomplete, 1);
    }

    #[test]
    fn leave_removes_every_registration_of_the_connection_and_nothing_else() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        swarm.join(1, peer(1));
        swarm.join(1, peer(2));
        swarm.join(2, peer(3));
        assert_eq!(swarm.state.leave(1, &[peer(1), peer(2), peer(3)]), 2);
        assert_eq!(swarm.state.owner(&peer(3)), Some(2));
        assert_eq!(swarm.state.peer_count(), 1);
    }

    #[test]
    fn a_lost_instance_takes_exactly_its_peers_and_their_offers_along() {
        use crate::connection::conn_id;
        let mut swarm = Fixture::new(SwarmLimits::default());
        let (here, there) = (conn_id(1, 1), conn_id(2, 1));
        swarm.join(here, peer(1));
        swarm.join(there, peer(2));
        swarm.join(conn_id(2, 2), peer(3));
        // Same local number on another instance: a different connection.
        swarm.join(conn_id(3, 1), peer(4));
        assert_eq!(swarm.state.leave_instance(2), 2);
        assert_eq!(swarm.state.peer_count(), 2);
        assert_eq!(swarm.state.owner(&peer(1)), Some(here));
        assert_eq!(swarm.state.owner(&peer(4)), Some(conn_id(3, 1)));
        // Offers now reach only the survivors.
        let outcome = swarm.offer(here, peer(1), 5);
        assert_eq!(outcome.deliveries.len(), 1);
        assert_eq!(outcome.deliveries[0].to, peer(4));
        assert_eq!(swarm.state.leave_instance(2), 0, "nothing left of it");
    }

    #[test]
    fn a_second_connection_takes_the_peer_id_over() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        swarm.join(1, peer(1));
        let outcome = swarm.join(2, peer(1));
        assert!(outcome.took_over);
        assert_eq!(swarm.state.owner(&peer(1)), Some(2));
        assert_eq!(swarm.state.peer_count(), 1);
        // The old connection closing no longer removes the peer.
        assert_eq!(swarm.state.leave(1, &[peer(1)]), 0);
        assert_eq!(swarm.state.peer_count(), 1);
    }

    #[test]
    fn a_full_swarm_refuses_new_peers_but_not_known_ones() {
        let mut swarm = Fixture::with_peers(limits(|limits| limits.max_peers = 2), 2);
        assert_eq!(
            swarm
                .announce(3, announce(peer(3), AnnounceEvent::Started, 0))
                .err(),
            Some(Reject::SwarmFull { max_peers: 2 })
        );
        assert!(swarm
            .announce(1, announce(peer(1), AnnounceEvent::Update, 0))
            .is_ok());
    }

    #[test]
    fn repeated_drops_evict_a_peer_and_a_success_resets_the_run() {
        let mut swarm = Fixture::new(SwarmLimits::default());
        swarm.join(1, peer(1));
        assert!(!swarm.state.delivery_dropped(&peer(1), 3));
        assert!(!swarm.state.delivery_dropped(&peer(1), 3));
        swarm.state.delivery_succeeded(&peer(1));
        assert!(!swarm.state.delivery_dropped(&peer(1), 3));
        assert!(!swarm.state.delivery_dropped(&peer(1), 3));
        assert!(swarm.state.delivery_dropped(&peer(1), 3));
        assert!(swarm.state.is_empty());
    }

    #[test]
    fn counts_stay_consistent_under_random_operations() {
        let mut swarm = Fixture::new(limits(|limits| limits.max_peers = 50));
        let mut rng = SmallRng::seed_from_u64(42);
        for step in 0..5_000u32 {
            let n: u8 = rng.random_range(1..40);
            let conn = ConnId::from(rng.random_range(1u8..10));
            let event = match rng.random_range(0..5) {
                0 => AnnounceEvent::Started,
                1 => AnnounceEvent::Completed,
                2 => AnnounceEvent::Stopped,
                _ => AnnounceEvent::Update,
            };
            let mut request = announce(peer(n), event, rng.random_range(0..6));
            request.left_is_zero = match rng.random_range(0..3) {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            };
            let _ = swarm.announce(conn, request);
            if step % 97 == 0 {
                swarm.state.leave(conn, &[peer(n)]);
            }
            let counts = swarm.state.counts();
            let seeders = swarm
                .state
                .peers
                .values()
                .filter(|peer| peer.seeder)
                .count();
            assert_eq!(counts.complete as usize, seeders);
            assert_eq!(
                (counts.complete + counts.incomplete) as usize,
                swarm.state.peer_count()
            );
            let registrations: usize = swarm.state.conn_registrations.values().sum();
            assert_eq!(registrations, swarm.state.peer_count());
            assert!(swarm
                .state
                .conn_registrations
                .values()
                .all(|&count| count > 0));
        }
    }
}
