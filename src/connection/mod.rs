//! The connection side: everything between a client's TCP socket and the swarms.
//!
//! - `upgrade`: the WebSocket upgrade (path, Origin, handshake, admission), then hands the
//!   raw socket to a session.
//! - `io`: frames off the socket into the session, and its output back onto the socket.
//! - `session`: the `PeerSession` actor, one per socket, on the HTTP worker that accepted it.
//! - `reassembly` and `rate_limit`: the session's plain-data parts (message reassembly and
//!   RFC 6455 checks; the token bucket), unit-tested without a runtime.
//! - `requests`: the session's requests to the swarm side.
//! - `memberships`: the swarms a connection joined, and its peer_ids in each.
//! - `registry`: admission caps, connection ids, the live sessions (for shutdown and the
//!   frozen-session watchdog).

pub mod io;
pub mod memberships;
pub mod rate_limit;
pub mod reassembly;
pub mod registry;
pub mod requests;
pub mod session;
pub mod upgrade;

/// Identifies one WebSocket connection for the lifetime of the process. Swarms record it
/// with each peer: only the connection that registered a peer_id may stop it, and only the
/// connection an offer was relayed to may answer it.
pub type ConnId = u64;
