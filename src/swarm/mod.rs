//! The swarm side: one `Swarm` actor per info_hash, grouped in one shard per HTTP worker thread.
//!
//! - `state`: `SwarmState`, the logic of one swarm as plain data (peers, random offer
//!   fan-out, the offers awaiting answers, expiry); no actix, no clock of its own.
//! - `actor`: the `Swarm` actor, a thin shell that feeds `SwarmState` and delivers what
//!   comes out.
//! - `shard`: `SwarmShard` (one per HTTP worker: info_hash -> swarm, scrape counts) and
//!   `SwarmDirectory` (which shard holds an info_hash).
//! - `messages`: what sessions, shards and swarms send each other, and `SwarmRef`.
//! - `route`: how a swarm reaches a peer's session: a local `Recipient<Deliver>`, or the
//!   `RemoteSessions` port that the cluster implements for sockets on other instances.
//!
//! The swarm side knows nothing of sockets or of the bus: it names a peer's connection by
//! its `connection::ConnId` and reaches it through its `PeerRoute`.

pub mod actor;
pub mod messages;
pub mod route;
pub mod shard;
pub mod state;
