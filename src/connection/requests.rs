//! A session's requests to the swarm side, as futures the session waits on: find the
//! swarm of an info_hash (and a fresh one when the one found has just closed), announce to
//! it, and fan a scrape out over the shards. No session state in here: the session decides
//! what to ask, these know how to ask it.
//!
//! In a cluster a swarm may be owned by another instance: `RemoteSwarms` is the port the
//! cluster implements for those, and `SwarmHandle` says where a joined swarm lives. Outside
//! a cluster `Shared::cluster` is `None` and nothing here touches it.

use std::{collections::BTreeMap, sync::Arc};

use actix::prelude::*;
use futures_util::future::BoxFuture;

use crate::{
    connection::{ConnId, InstanceId},
    protocol::{AnnounceRequest, AnswerRequest, InfoHash, PeerId, ScrapeRequest, SwarmCounts},
    shared::Shared,
    swarm::{
        messages::{
            Announce, AnnounceReply, Deliver, GetSwarm, Leave, ScrapeShard, SwarmError, SwarmRef,
        },
        route::PeerRoute,
        state::Reject,
    },
};

/// Where a swarm a connection joined lives.
#[derive(Clone)]
pub enum SwarmHandle {
    /// On a shard of this process.
    Local(SwarmRef),
    /// Owned by another instance of the cluster.
    Remote(InstanceId),
}

impl SwarmHandle {
    /// The instance holding the swarm; `None` for this one.
    pub fn owner(&self) -> Option<InstanceId> {
        match self {
            SwarmHandle::Local(_) => None,
            SwarmHandle::Remote(owner) => Some(*owner),
        }
    }

    /// Whether both name the same swarm: the same instance, or the same local swarm (of
    /// one info_hash: its shard numbers the swarms it creates).
    pub fn same_as(&self, other: &SwarmHandle) -> bool {
        match (self, other) {
            (SwarmHandle::Local(one), SwarmHandle::Local(other)) => {
                one.generation == other.generation
            }
            (SwarmHandle::Remote(one), SwarmHandle::Remote(other)) => one == other,
            _ => false,
        }
    }
    /// Removes `peer_ids` of connection `conn` from this swarm (of `info_hash`).
    pub fn leave(self, shared: &Shared, conn: ConnId, info_hash: InfoHash, peer_ids: Vec<PeerId>) {
        match self {
            SwarmHandle::Local(swarm) => swarm.addr.do_send(Leave { conn, peer_ids }),
            SwarmHandle::Remote(owner) => {
                if let Some(cluster) = remote_swarms(shared) {
                    cluster.leave(owner, conn, info_hash, peer_ids);
                }
            }
        }
    }
}

/// The swarms owned by other instances, as the cluster offers them to sessions. Nothing
/// here waits for the bus: requests are queued (a full queue is a `Failure`), replies come
/// back as futures with a deadline.
pub trait RemoteSwarms: Send + Sync {
    /// The instance that owns the swarm of `info_hash`, or `None` if this one does.
    fn owner(&self, info_hash: &InfoHash) -> Option<InstanceId>;

    /// The generation of the current view of the live instances (see
    /// `cluster::members::LiveView`): changes whenever owners may have.
    fn view_generation(&self) -> u64;

    /// Announces to the swarm on `owner` for connection `conn` of this instance; resolves
    /// with the instance that took it, which holds the peer from then on: `owner`, or the
    /// instance `owner` passed it on to when its view named another owner. `resent`:
    /// the request is made again because the instance it waited for (the owner it first
    /// went to, or the one that owner passed it on to) left the view before replying; it
    /// has been forwarded once more already, so `owner` serves it whatever its own view
    /// says (see `cluster::inbound`), rather than pass it on to an instance it may not
    /// know is dead yet.
    fn announce(
        &self,
        owner: InstanceId,
        conn: ConnId,
        request: AnnounceRequest,
        resent: bool,
    ) -> BoxFuture<'static, Result<(InstanceId, AnnounceReply), NotAnnounced>>;

    /// Waits for this re-join's turn (see `rejoin`): held until the re-join is over.
    fn rejoin_turn(&self) -> BoxFuture<'static, Option<RejoinTurn>>;

    /// Sends an answer to the swarm on `owner`; its relay or failure comes back as a
    /// delivery to `conn`.
    fn answer(
        &self,
        owner: InstanceId,
        conn: ConnId,
        request: AnswerRequest,
    ) -> Result<(), Failure>;

    /// Connection `conn` closed: its `peer_ids` leave the swarm on `owner`.
    fn leave(&self, owner: InstanceId, conn: ConnId, info_hash: InfoHash, peer_ids: Vec<PeerId>);

    /// Counts of swarms owned by `owner` (zeros for those it does not have).
    fn scrape(
        &self,
        owner: InstanceId,
        info_hashes: Vec<InfoHash>,
    ) -> BoxFuture<'static, Result<Vec<(InfoHash, SwarmCounts)>, Failure>>;
}

/// A re-join's turn: while held, it counts against the re-joins in flight.
pub type RejoinTurn = tokio::sync::OwnedSemaphorePermit;

/// The swarms of other instances; `None` outside a cluster.
pub fn remote_swarms(shared: &Shared) -> Option<&dyn RemoteSwarms> {
    shared
        .cluster
        .as_ref()
        .map(|cluster| cluster as &dyn RemoteSwarms)
}

/// The generation of the cluster's current view; 0 outside a cluster (owners never
/// change).
pub fn view_generation(shared: &Shared) -> u64 {
    remote_swarms(shared).map_or(0, |cluster| cluster.view_generation())
}

/// An announce the swarm took: where the swarm lives, its reply, and the generation of
/// the view that chose that owner (see `Memberships::record`).
pub struct Announced {
    pub swarm: SwarmHandle,
    pub reply: AnnounceReply,
    pub routed_by: u64,
}

/// The instance owning the swarm of `info_hash` if it is not this one.
pub fn remote_owner(shared: &Shared, info_hash: &InfoHash) -> Option<InstanceId> {
    remote_swarms(shared).and_then(|cluster| cluster.owner(info_hash))
}

/// Why a forwarded announce has no reply from its owner.
#[derive(Debug)]
pub enum NotAnnounced {
    /// The owner refused it, or cannot be reached: the client gets this failure.
    Failed(Failure),
    /// The owner, or the instance it passed the request on to, left the live instances
    /// before it replied (the request may never have reached it): the request comes back,
    /// to be announced where the new view says.
    OwnerGone(AnnounceRequest),
}

/// A swarm request is retried this often when the swarm it reached had just emptied and
/// closed (a race that needs a peer to join at the moment the last one leaves).
const SWARM_ATTEMPTS: usize = 3;

/// A failure to report to the client: a metrics label and the `failure reason`.
#[derive(Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub reason: String,
    /// The swarm's refusal, when the swarm refused (the cluster passes it on as such).
    pub reject: Option<Reject>,
}

impl Failure {
    pub fn new(kind: &'static str, reason: String) -> Self {
        Self {
            kind,
            reason,
            reject: None,
        }
    }

    pub fn unavailable() -> Self {
        Self::new("unavailable", "swarm temporarily unavailable; retry".into())
    }
}

impl From<Reject> for Failure {
    fn from(reject: Reject) -> Self {
        Self {
            kind: reject.kind(),
            reason: reject.to_string(),
            reject: Some(reject),
        }
    }
}

/// Announces to the swarm of `request.info_hash` wherever it is owned: on this instance
/// through `cached` if the connection already joined it there, else through the swarm its
/// shard hands out; on another instance through the cluster. Returns where the swarm that
/// took the announce lives, for the connection to keep.
pub async fn announce(
    shared: Arc<Shared>,
    cached: Option<SwarmHandle>,
    conn: ConnId,
    deliver: Recipient<Deliver>,
    mut request: AnnounceRequest,
) -> Result<Announced, Failure> {
    let info_hash = request.info_hash;
    // An owner found gone while the request waited (or the instance it passed the request
    // on to) is replaced once, by the view that dropped it; a second loss in a row is a
    // failure the client retries.
    let mut owner_lost = false;
    let routed_by = loop {
        // Read before the owner: a view that changes in between makes the generation
        // older than the owner, which costs a needless re-join, never a missed one.
        let routed_by = view_generation(&shared);
        let Some(owner) = remote_owner(&shared, &info_hash) else {
            break routed_by;
        };
        let cluster = remote_swarms(&shared).ok_or_else(Failure::unavailable)?;
        match cluster.announce(owner, conn, request, owner_lost).await {
            Ok((taken_by, reply)) => {
                return Ok(Announced {
                    swarm: SwarmHandle::Remote(taken_by),
                    reply,
                    routed_by,
                })
            }
            Err(NotAnnounced::OwnerGone(back)) if !owner_lost => {
                owner_lost = true;
                request = back;
            }
            Err(NotAnnounced::OwnerGone(_)) => return Err(Failure::unavailable()),
            Err(NotAnnounced::Failed(failure)) => return Err(failure),
        }
    };
    // A swarm cached as remote is owned here now: ask the shard for it.
    let cached = match cached {
        Some(SwarmHandle::Local(swarm)) => Some(swarm),
        _ => None,
    };
    let route = PeerRoute::Local(deliver);
    let (swarm, reply) = announce_on_shard(&shared, cached, conn, route, request).await?;
    Ok(Announced {
        swarm: SwarmHandle::Local(swarm),
        reply,
        routed_by,
    })
}

/// Re-joins a swarm this connection joined (an announce without offers) after its owner
/// changed or dropped our peers: as `announce`, once its turn comes. Thousands of sessions
/// re-join at once after a view change; the cluster lets a bounded number of them through
/// at a time so that they never overflow its bus queue.
pub async fn rejoin(
    shared: Arc<Shared>,
    conn: ConnId,
    deliver: Recipient<Deliver>,
    request: AnnounceRequest,
) -> Result<Announced, Failure> {
    let turn = match remote_swarms(&shared) {
        Some(cluster) => cluster.rejoin_turn().await,
        None => None,
    };
    let rejoined = announce(shared, None, conn, deliver, request).await;
    drop(turn);
    rejoined
}

/// Announces to the swarm of `request.info_hash` on this instance's shard, for connection
/// `conn` reached through `route` (a session of this instance, or of another one when the
/// cluster announces here on its behalf).
pub async fn announce_on_shard(
    shared: &Shared,
    cached: Option<SwarmRef>,
    conn: ConnId,
    route: PeerRoute,
    request: AnnounceRequest,
) -> Result<(SwarmRef, AnnounceReply), Failure> {
    let info_hash = request.info_hash;
    // Shared so a retry after `SwarmError::Closed` does not copy offers.
    let request = Arc::new(request);
    let mut swarm = match cached {
        Some(swarm) => swarm,
        None => get_swarm(shared, info_hash, None).await?,
    };
    for attempt in 1..=SWARM_ATTEMPTS {
        let message = Announce {
            conn,
            route: route.clone(),
            request: request.clone(),
        };
        match swarm.addr.send(message).await {
            Ok(Ok(reply)) => return Ok((swarm, reply)),
            Ok(Err(SwarmError::Rejected(reject))) => return Err(Failure::from(reject)),
            // After the last attempt, asking for a fresh swarm would only leave an empty
            // one behind.
            Ok(Err(SwarmError::Closed)) | Err(MailboxError::Closed) if attempt < SWARM_ATTEMPTS => {
                swarm = get_swarm(shared, info_hash, Some(swarm.generation)).await?;
            }
            Ok(Err(SwarmError::Closed)) | Err(MailboxError::Closed) => break,
            Err(MailboxError::Timeout) => return Err(Failure::unavailable()),
        }
    }
    Err(Failure::unavailable())
}

async fn get_swarm(
    shared: &Shared,
    info_hash: InfoHash,
    stale: Option<u64>,
) -> Result<SwarmRef, Failure> {
    let shard = shared
        .directory
        .shard_for(&info_hash)
        .ok_or_else(Failure::unavailable)?;
    shard
        .send(GetSwarm { info_hash, stale })
        .await
        .map_err(|_| Failure::unavailable())
}

/// The counts of one swarm (zeros if there is none), without creating it.
pub async fn counts(shared: Arc<Shared>, info_hash: InfoHash) -> SwarmCounts {
    scrape(shared, ScrapeRequest::Some(vec![info_hash]), 1)
        .await
        .ok()
        .and_then(|files| files.first().map(|(_, counts)| *counts))
        .unwrap_or_default()
}

/// Counts for a scrape: each named info_hash (grouped by owner instance, and here by
/// shard, one request each), or every swarm of every shard of this instance; at most
/// `limit` entries.
pub async fn scrape(
    shared: Arc<Shared>,
    request: ScrapeRequest,
    limit: usize,
) -> Result<Vec<(InfoHash, SwarmCounts)>, Failure> {
    let (request, remote) = match (request, remote_swarms(&shared)) {
        (ScrapeRequest::Some(hashes), Some(cluster)) => {
            let mut here = Vec::new();
            let mut elsewhere: BTreeMap<InstanceId, Vec<InfoHash>> = BTreeMap::new();
            for hash in hashes {
                match cluster.owner(&hash) {
                    Some(owner) => elsewhere.entry(owner).or_default().push(hash),
                    None => here.push(hash),
                }
            }
            let asked: Vec<_> = elsewhere
                .into_iter()
                .map(|(owner, hashes)| cluster.scrape(owner, hashes))
                .collect();
            (ScrapeRequest::Some(here), Some(asked))
        }
        (request, _) => (request, None),
    };
    let mut files = scrape_here(&shared, request, limit).await?;
    if let Some(asked) = remote {
        for part in futures_util::future::join_all(asked).await {
            files.extend(part?);
        }
    }
    files.truncate(limit);
    Ok(files)
}

/// Counts held by this instance's shards.
pub async fn scrape_here(
    shared: &Shared,
    request: ScrapeRequest,
    limit: usize,
) -> Result<Vec<(InfoHash, SwarmCounts)>, Failure> {
    let directory = &shared.directory;
    if !directory.is_ready() {
        return Err(Failure::unavailable());
    }
    let requests: Vec<_> = match request {
        ScrapeRequest::Some(hashes) if hashes.is_empty() => Vec::new(),
        ScrapeRequest::Some(hashes) => {
            let mut per_shard: Vec<Vec<InfoHash>> = vec![Vec::new(); directory.len()];
            for hash in hashes {
                per_shard[directory.shard_index(&hash)].push(hash);
            }
            directory
                .shards()
                .zip(per_shard)
                .filter(|(_, hashes)| !hashes.is_empty())
                .map(|((_, shard), hashes)| {
                    shard.send(ScrapeShard {
                        info_hashes: Some(hashes),
                        limit,
                    })
                })
                .collect()
        }
        ScrapeRequest::All => directory
            .shards()
            .map(|(_, shard)| {
                shard.send(ScrapeShard {
                    info_hashes: None,
                    limit,
                })
            })
            .collect(),
    };
    let mut files = Vec::new();
    for part in futures_util::future::join_all(requests).await {
        files.extend(part.map_err(|_| Failure::unavailable())?);
    }
    files.truncate(limit);
    Ok(files)
}
