//! The integration tests, in one test binary: each module starts the real server (in
//! process on 127.0.0.1 port 0, or the binary itself) and speaks real WebSocket frames
//! and HTTP to it. `common` is the shared support.
//!
//! `faults` needs the `fault-injection` feature:
//! `cargo test --features fault-injection --test integration faults::`.

mod common;

mod abuse;
mod access_control;
mod announce;
mod cluster;
mod cluster_bus;
mod config;
#[cfg(feature = "fault-injection")]
mod faults;
mod http;
mod limits;
mod malformed;
mod offload;
mod reload;
mod scrape;
mod signalling;
mod transport;
