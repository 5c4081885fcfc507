//! The connection side: everything between a client's TCP socket and the swarms.
//!
//! - `upgrade`: the WebSocket upgrade (path, Origin, handshake, admission), then hands the
//!   raw socket to a session.
//! - `io`: frames off the socket into the session, and its output back onto the socket.
//! - `context`: the session's actix context, which encodes frames as they are sent.
//! - `session`: the `PeerSession` actor, one per socket, on the HTTP worker that accepted it.
//! - `reassembly` and `rate_limit`: the session's plain-data parts (message reassembly and
//!   RFC 6455 checks; the token bucket), unit-tested without a runtime.
//! - `requests`: the session's requests to the swarm side.
//! - `memberships`: the swarms a connection joined, and its peer_ids in each.
//! - `registry`: admission caps, connection ids, the live sessions (for shutdown and the
//!   frozen-session watchdog).

pub mod context;
pub mod io;
pub mod memberships;
pub mod rate_limit;
pub mod reassembly;
pub mod registry;
pub mod requests;
pub mod session;
pub mod upgrade;

/// Identifies one WebSocket connection, never reused: the high 64 bits name the instance
/// holding the socket (0 for a process that is not part of a cluster; random per process
/// start otherwise), the low 64 bits count that instance's connections. Swarms record it
/// with each peer: only the connection that registered a peer_id may stop it, and only the
/// connection an offer was relayed to may answer it, wherever that connection is.
pub type ConnId = u128;

/// Names one process of a cluster for as long as it runs.
pub type InstanceId = u64;

/// The id of the `local`-th connection of `instance`.
pub fn conn_id(instance: InstanceId, local: u64) -> ConnId {
    (u128::from(instance) << 64) | u128::from(local)
}

/// The instance holding the socket of `conn`.
pub fn instance_of(conn: ConnId) -> InstanceId {
    (conn >> 64) as InstanceId
}
