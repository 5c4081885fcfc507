//! A session's requests to the swarm side, as futures the session waits on: find the
//! swarm of an info_hash (and a fresh one when the one found has just closed), announce to
//! it, and fan a scrape out over the shards. No session state in here: the session decides
//! what to ask, these know how to ask it.

use std::sync::Arc;

use actix::prelude::*;

use crate::{
    connection::ConnId,
    protocol::{AnnounceRequest, InfoHash, ScrapeRequest, SwarmCounts},
    shared::Shared,
    swarm::{
        messages::{Announce, AnnounceReply, Deliver, GetSwarm, ScrapeShard, SwarmError, SwarmRef},
        state::Reject,
    },
};

/// A swarm request is retried this often when the swarm it reached had just emptied and
/// closed (a race that needs a peer to join at the moment the last one leaves).
const SWARM_ATTEMPTS: usize = 3;

/// A failure to report to the client: a metrics label and the `failure reason`.
#[derive(Debug)]
pub struct Failure {
    pub kind: &'static str,
    pub reason: String,
}

impl Failure {
    pub fn unavailable() -> Self {
        Self {
            kind: "unavailable",
            reason: "swarm temporarily unavailable; retry".into(),
        }
    }
}

impl From<Reject> for Failure {
    fn from(reject: Reject) -> Self {
        Self {
            kind: reject.kind(),
            reason: reject.to_string(),
        }
    }
}

/// Announces to the swarm of `request.info_hash`: through `cached` if the connection
/// already joined it, else through the swarm its shard hands out. Returns the swarm that
/// took the announce, for the connection to keep.
pub async fn announce(
    shared: Arc<Shared>,
    cached: Option<SwarmRef>,
    conn: ConnId,
    deliver: Recipient<Deliver>,
    request: AnnounceRequest,
) -> Result<(SwarmRef, AnnounceReply), Failure> {
    let info_hash = request.info_hash;
    // Shared so a retry after `SwarmError::Closed` does not copy offers.
    let request = Arc::new(request);
    let mut swarm = match cached {
        Some(swarm) => swarm,
        None => get_swarm(&shared, info_hash, None).await?,
    };
    for attempt in 1..=SWARM_ATTEMPTS {
        let message = Announce {
            conn,
            deliver: deliver.clone(),
            request: request.clone(),
        };
        match swarm.addr.send(message).await {
            Ok(Ok(reply)) => return Ok((swarm, reply)),
            Ok(Err(SwarmError::Rejected(reject))) => return Err(Failure::from(reject)),
            // After the last attempt, asking for a fresh swarm would only leave an empty
            // one behind.
            Ok(Err(SwarmError::Closed)) | Err(MailboxError::Closed) if attempt < SWARM_ATTEMPTS => {
                swarm = get_swarm(&shared, info_hash, Some(swarm.generation)).await?;
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
    shared
        .directory
        .shard_for(&info_hash)
        .send(GetSwarm { info_hash, stale })
        .await
        .map_err(|_| Failure::unavailable())
}

/// The counts of one swarm (zeros if there is none), without creating it.
pub async fn counts(shared: Arc<Shared>, info_hash: InfoHash) -> SwarmCounts {
    let reply = shared
        .directory
        .shard_for(&info_hash)
        .send(ScrapeShard {
            info_hashes: Some(vec![info_hash]),
            limit: 1,
        })
        .await;
    reply
        .ok()
        .and_then(|files| files.first().map(|(_, counts)| *counts))
        .unwrap_or_default()
}

/// Counts for a scrape: each named info_hash (grouped by shard, one request per shard),
/// or every swarm of every shard; at most `limit` entries.
pub async fn scrape(
    shared: Arc<Shared>,
    request: ScrapeRequest,
    limit: usize,
) -> Result<Vec<(InfoHash, SwarmCounts)>, Failure> {
    let directory = &shared.directory;
    let requests: Vec<_> = match request {
        ScrapeRequest::Some(hashes) => {
            let mut per_shard: Vec<Vec<InfoHash>> = vec![Vec::new(); directory.len()];
            for hash in hashes {
                per_shard[directory.shard_index(&hash)].push(hash);
            }
            per_shard
                .into_iter()
                .enumerate()
                .filter(|(_, hashes)| !hashes.is_empty())
                .map(|(index, hashes)| {
                    directory.shards()[index].send(ScrapeShard {
                        info_hashes: Some(hashes),
                        limit,
                    })
                })
                .collect()
        }
        ScrapeRequest::All => directory
            .shards()
            .iter()
            .map(|shard| {
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
