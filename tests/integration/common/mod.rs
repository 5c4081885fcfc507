//! Test support, by role: the server under test (`server`, and `nats` for a cluster of
//! them, and `proxy` to cut one instance's link to it), WebSocket clients (`peers`, and
//! `raw` for hand-written bytes), bounded waits (`waits`) and test data (`fixtures`).

mod fixtures;
mod nats;
mod peers;
mod proxy;
mod raw;
mod server;
mod waits;

pub use fixtures::*;
pub use nats::*;
pub use peers::*;
pub use proxy::*;
pub use raw::*;
pub use server::*;
pub use waits::*;
