//! How a swarm reaches the session of one of its peers: a local actor, or, in a cluster,
//! the bus to the instance that holds the socket. The swarm side defines this port; the
//! cluster implements `RemoteSessions`, so the swarm logic knows nothing of the bus.

use actix::{dev::SendError, Recipient};

use super::messages::Deliver;
use crate::{connection::ConnId, protocol::OutMessage};

/// Where a peer's session runs.
#[derive(Clone)]
pub enum PeerRoute {
    /// In this process.
    Local(Recipient<Deliver>),
    /// On another instance of the cluster: the connection id names it (see `ConnId`).
    Remote,
}

/// Why a relay did not reach a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The session's mailbox (or the bus's queue) is full: dropped, the peer may recover.
    Full,
    /// The session is gone for good.
    Closed,
}

/// The sessions of other instances, as the cluster offers them to swarms.
pub trait RemoteSessions: Send + Sync {
    /// Queues `message` for connection `to`, held by another instance. Never waits: a full
    /// bus queue or a bus that is down is `Full`, an instance known dead is `Closed`.
    fn deliver(&self, to: ConnId, message: OutMessage) -> Result<(), Undelivered>;
}

impl PeerRoute {
    /// Hands `message` to the session of connection `conn`, reached through this route.
    pub fn deliver(
        &self,
        conn: ConnId,
        message: OutMessage,
        remote: Option<&dyn RemoteSessions>,
    ) -> Result<(), Undelivered> {
        match self {
            PeerRoute::Local(recipient) => match recipient.try_send(Deliver(message)) {
                Ok(()) => Ok(()),
                Err(SendError::Full(_)) => Err(Undelivered::Full),
                Err(SendError::Closed(_)) => Err(Undelivered::Closed),
            },
            PeerRoute::Remote => match remote {
                Some(remote) => remote.deliver(conn, message),
                // A remote peer in a process without a cluster cannot exist; if it did,
                // nobody could reach it.
                None => Err(Undelivered::Closed),
            },
        }
    }
}
