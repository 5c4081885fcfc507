//! Many instances, one swarm: the cluster's building blocks. Several tracker processes
//! share their swarms over a NATS bus: each swarm has one owner instance, chosen by
//! rendezvous hashing of its info_hash over the live instances; an instance forwards the
//! requests of its sockets for swarms owned elsewhere to the owner's inbox, and the owner
//! sends each relayed offer or answer to the inbox of the instance holding the target
//! socket. When the owner is local nothing touches the bus. Clustering is off unless
//! `[cluster] nats_urls` is set.
//!
//! # Layout
//! - `settings`: the `[cluster]` section and its validation.
//! - `wire`: the bus messages and their versioned binary encoding (pure data).
//! - `ring`: who owns a swarm (rendezvous hashing; pure functions).
//! - `members`: who is alive (plain data, `now` passed in) and the shared live view.
//! - `bus`: the bus task on its own thread, behind the `Transport` trait, with NATS as the
//!   engine; actors only ever `try_send` to its bounded queue.
//!
//! # Threads
//! Everything here is plain data except `bus`, which runs one thread (`cluster-bus`) with
//! its own Tokio runtime: the NATS client, heartbeats, encoding and decoding live there and
//! never on an actix worker or shard.

pub mod bus;
pub mod members;
pub mod ring;
pub mod settings;
pub mod wire;
