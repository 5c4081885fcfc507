//! The WebTorrent tracker wire protocol: pure data and serde, no I/O and no actix.
//!
//! `incoming` parses and validates what clients send, `outgoing` builds what the tracker
//! sends, `ids` holds the 20-byte identifiers and their "binary string" JSON form, `sdp`
//! the SDP bodies in the escaped JSON form they are relayed in. The load tester reuses
//! these types, so they also serialise requests and parse responses (see `client`). The
//! README's "Protocol decisions" describe what the tracker decided where clients and
//! servers differ; the field docs here carry the client folklore behind them.

pub mod client;
pub mod ids;
pub mod incoming;
pub mod outgoing;
pub mod sdp;

pub use ids::{IdError, InfoHash, OfferId, PeerId, ID_LEN};
pub use incoming::{
    parse, Action, AnnounceEvent, AnnounceRequest, AnswerRequest, InMessage, Offer, ParseError,
    ParseLimits, ScrapeRequest,
};
pub use outgoing::{OutMessage, SwarmCounts};
pub use sdp::Sdp;
