//! What the swarm side accepts and sends: the messages between sessions, shards and
//! swarms, and `SwarmRef`, the handle a session keeps for a swarm it joined.
//!
//! | message       | from -> to        | result                        |
//! |---------------|-------------------|-------------------------------|
//! | `GetSwarm`    | session -> shard  | `SwarmRef` (created on demand)|
//! | `ScrapeShard` | session -> shard  | counts per info_hash          |
//! | `Announce`    | session -> swarm  | `Result<AnnounceReply, SwarmError>` |
//! | `Answer`      | session -> swarm  | `()`; a refusal comes back as `Deliver` |
//! | `Leave`       | session -> swarm  | `()` (socket closed)          |
//! | `Deliver`     | swarm -> session  | `()`, sent with `try_send`    |
//! | `SwarmIdle`   | swarm -> shard    | `()` (the swarm emptied)      |
//! | `FindSwarm`   | cluster -> shard  | `Option<SwarmRef>` (never creates one) |
//! | `InstanceGone`| cluster -> shard -> swarms | `()`: drop the peers of a dead instance |
//! | `Disown`      | cluster -> shard  | `()`: close swarms owned elsewhere now |
//!
//! Sessions of other instances reach swarms through the cluster, which sends these same
//! messages on their behalf with a `PeerRoute::Remote` route.
//!
//! A session waits for the reply to each announce and scrape (`ctx.wait`), so swarm
//! mailboxes stay bounded by the number of connections; answers and leaves are sent
//! without waiting (an answer waits only when the swarm's mailbox is full). Swarms never
//! wait on sessions: a full session mailbox drops the delivery (WebTorrent tolerates lost
//! offers; the client re-announces).

use std::sync::Arc;

use actix::prelude::*;

use super::{actor::Swarm, route::PeerRoute, state::Reject};
use crate::{
    connection::{ConnId, InstanceId},
    protocol::{AnnounceRequest, AnswerRequest, InfoHash, OutMessage, PeerId, SwarmCounts},
};

/// A swarm's address and the generation that tells one incarnation from the next.
///
/// One per swarm, shared by every session that joined it: a clone of an actix address
/// allocates twice, and a session keeps its handle for as long as it stays in the swarm.
#[derive(Clone)]
pub struct SwarmRef(Arc<SwarmAddress>);

pub struct SwarmAddress {
    pub addr: Addr<Swarm>,
    pub generation: u64,
}

impl SwarmRef {
    pub fn new(addr: Addr<Swarm>, generation: u64) -> Self {
        Self(Arc::new(SwarmAddress { addr, generation }))
    }
}

impl std::ops::Deref for SwarmRef {
    type Target = SwarmAddress;

    fn deref(&self) -> &SwarmAddress {
        &self.0
    }
}

/// Ask a shard for the swarm of `info_hash`, creating it if needed. `stale` names a
/// generation the session found closed, so the shard replaces it instead of handing it out
/// again.
#[derive(Message)]
#[rtype(result = "SwarmRef")]
pub struct GetSwarm {
    pub info_hash: InfoHash,
    pub stale: Option<u64>,
}

/// Counts for the given swarms held by one shard (zeros for unknown ones); `None` asks for
/// every swarm of the shard, at most `limit`.
#[derive(Message)]
#[rtype(result = "Vec<(InfoHash, SwarmCounts)>")]
pub struct ScrapeShard {
    pub info_hashes: Option<Vec<InfoHash>>,
    pub limit: usize,
}

/// Why a swarm request did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmError {
    /// Refused by the swarm's rules; the text goes back as a failure reason.
    Rejected(Reject),
    /// This swarm incarnation emptied and closed; ask the shard again.
    Closed,
}

/// What the session needs from an announce.
#[derive(Debug, Clone, Copy)]
pub struct AnnounceReply {
    pub counts: SwarmCounts,
    /// The peer is registered to this connection after the announce.
    pub registered: bool,
}

/// An announce (join, update, complete, stop) with its offers.
#[derive(Message)]
#[rtype(result = "Result<AnnounceReply, SwarmError>")]
pub struct Announce {
    pub conn: ConnId,
    /// How offers for this peer reach its session from now on.
    pub route: PeerRoute,
    /// Shared so a retry after `SwarmError::Closed` does not copy offers.
    pub request: Arc<AnnounceRequest>,
}

/// An answer to a relayed offer. Sent without waiting for a reply (a round trip per
/// answer would cost a wake-up for nothing): the swarm relays it, or delivers the failure
/// to the answerer through `reply_to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Answer {
    pub conn: ConnId,
    pub request: Arc<AnswerRequest>,
    pub reply_to: PeerRoute,
}

/// The connection closed: drop its registrations.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub conn: ConnId,
    pub peer_ids: Vec<PeerId>,
}

/// A relayed offer or answer for a session to send.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub OutMessage);

/// A swarm emptied and stopped; the shard forgets it if the generation still matches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SwarmIdle {
    pub info_hash: InfoHash,
    pub generation: u64,
}

/// The swarm of `info_hash` if the shard has one; unlike `GetSwarm`, never creates it
/// (an answer or a leave for a swarm that is gone has nothing to do).
#[derive(Message)]
#[rtype(result = "Option<SwarmRef>")]
pub struct FindSwarm {
    pub info_hash: InfoHash,
}

/// An instance of the cluster died or left: its sockets are gone, so its peers leave
/// every swarm (sent to each shard, which passes it to each of its swarms).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct InstanceGone {
    pub instance: InstanceId,
}

/// The cluster's view changed: close the swarms this instance no longer owns (`owned`
/// says which it does). Their peers' sessions re-join at the new owners.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Disown {
    pub owned: Arc<dyn Fn(&InfoHash) -> bool + Send + Sync>,
}

/// This swarm is now owned by another instance: close it (the shard has forgotten it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disowned;
