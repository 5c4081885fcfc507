//! The swarm side: one `Swarm` actor per info_hash, grouped on shard threads.
//!
//! - `state`: `SwarmState`, the logic of one swarm as plain data (peers, random offer
//!   fan-out, the offers awaiting answers, expiry); no actix, no clock of its own.
//! - `actor`: the `Swarm` actor, a thin shell that feeds `SwarmState` and delivers what
//!   comes out.
//! - `shard`: `SwarmShard` (one per Arbiter: info_hash -> swarm, scrape counts) and
//!   `SwarmDirectory` (which shard holds an info_hash).
//! - `messages`: what sessions, shards and swarms send each other, and `SwarmRef`.
//!
//! The swarm side knows nothing of sockets: it names a peer's connection by its
//! `connection::ConnId` and reaches it through a `Recipient<Deliver>`.

pub mod actor;
pub mod messages;
pub mod shard;
pub mod state;
