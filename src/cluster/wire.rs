//! What instances say to each other on the bus, and its byte form. Pure data, no I/O:
//! encoding runs on the bus task (so actors never pay for it), decoding too.
//!
//! # Encoding
//! One version byte ([`WIRE_VERSION`]) and then the [`Envelope`] in postcard, serde's
//! compact binary format (varint integers, length-prefixed strings, enum variants as a
//! varint index, fixed arrays as raw bytes, so a 20-byte id is 20 bytes). A relayed offer
//! costs its SDP plus about 80 bytes. Postcard is schema-less: both sides must agree on
//! the field order, which is exactly what the version byte pins down. Any change to a type
//! below that is not appending a new `BusMessage` variant at the end needs a new version;
//! instances of another version are then counted (`foreign_version`) and ignored, so a
//! rolling upgrade runs as two clusters for its duration (each with every swarm it
//! sees), never as one that misreads itself.
//!
//! Decoding never panics and never trusts a length: an unknown version, bytes that do not
//! parse, or bytes left over after the envelope are a typed [`WireError`]. A claimed length
//! cannot make us allocate much: postcard takes strings only from bytes actually present,
//! and serde caps what a sequence's claimed length preallocates (a test checks this).
//!
//! # Identities
//! [`InstanceId`] is a random `u64` drawn at every process start; [`ConnKey`] (instance +
//! connection number) therefore names one socket for all time: a restarted instance draws
//! a new id, so nothing addressed to a socket of its previous life can reach a new one.
//!
//! The protocol types (`InfoHash`, `AnnounceRequest`, ...) serialise to JSON in the
//! WebTorrent form; here they go through the `raw_id`/`raw_ids`/`sdp_literal`/`offers`
//! helpers and serde's remote derives (the `...Def` types), which give them a binary form
//! without touching them. A new
//! field or variant in one of those types fails to compile here until it is given a
//! wire form (and a new [`WIRE_VERSION`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    protocol::{
        AnnounceEvent, AnnounceRequest, AnswerRequest, InfoHash, Offer, OfferId, OutMessage,
        PeerId, Sdp, SwarmCounts, ID_LEN,
    },
    swarm::state::Reject,
};

/// The first byte of every bus message. Bump it on any incompatible change (see the module
/// doc).
pub const WIRE_VERSION: u8 = 2;

/// How many times a request may be forwarded after its first hop. Views of the live set
/// differ for up to one expiry after an instance joins or dies: an instance that receives
/// a request for a swarm it does not own (by its own view) forwards it once more at most;
/// a request that already made that extra hop is handled where it lands. An announce
/// made again because its owner died before replying counts its trip to the dead owner as
/// that extra hop: it is sent with `MAX_HOPS` and handled where it lands.
pub const MAX_HOPS: u8 = 1;

/// One tracker process, for one life: random at every start (the high half of every
/// `ConnId` of its sockets).
pub use crate::connection::InstanceId;

/// One WebSocket connection anywhere in the cluster: the instance holding the socket and
/// the connection number it gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnKey {
    pub instance: InstanceId,
    pub conn: u64,
}

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}", self.instance, self.conn)
    }
}

/// Every bus message: who sent it, when, and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending instance.
    pub from: InstanceId,
    /// The sender's wall clock when it published, in milliseconds since the Unix epoch.
    /// Gives one-way bus latency where clocks are synchronised (NTP); round trips measured
    /// on one instance (an announce and its reply) need no synchronised clocks.
    pub sent_at_ms: u64,
    pub body: BusMessage,
}

/// What one instance tells another. Control messages go to every instance on
/// `{prefix}.ctl`; the rest go to one instance's inbox, `{prefix}.inbox.{id}`.
///
/// Append new variants at the end only (postcard numbers variants by position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BusMessage {
    /// Control: "I am alive" (every heartbeat interval). An instance not heard for the
    /// expiry is dead.
    Heartbeat(Heartbeat),
    /// Control: clean shutdown; the sender is dead at once, without waiting for the expiry.
    Leaving,
    /// To the owner of `request.info_hash`: an announce (join, update, completed, stopped,
    /// with offers) from a socket on the sending instance. Answered with `AnnounceReply`
    /// to `from.instance`; each relayed offer goes as a `Deliver` to the instance holding
    /// its target's socket.
    Announce(ForwardedAnnounce),
    /// To the instance of the announcing socket: what the owner did with its announce.
    AnnounceReply(AnnounceReply),
    /// To the owner of `request.info_hash`: an answer to a relayed offer. The owner checks
    /// that the offer was relayed to `from`, then sends a `Deliver` to the offerer's
    /// instance; a refusal goes back as a `Deliver` of a `Relay::Failure` to `from`.
    Answer(ForwardedAnswer),
    /// To the owner: these registrations of a socket are gone (it closed).
    Leave(ForwardedLeave),
    /// To the instance holding `to`'s socket: one message for that session to send.
    Deliver(Deliver),
    /// To the owner of each listed swarm: counts, please.
    Scrape(ScrapeQuery),
    /// To the instance of the scraping socket: counts of the swarms it asked this owner.
    ScrapeReply(ScrapeReply),
    /// To an instance that has come back into the sender's view after leaving it (its
    /// link to the broker dropped for a moment, or the sender lost the bus): the sender
    /// dropped its peers meanwhile, so it re-joins, at the sender, every swarm of its
    /// sockets that the sender owns. An instance of an older release drops this as
    /// malformed; its peers then return with their clients' next announces.
    Rejoin,
    /// To the instance of an announcing socket, from the instance it forwarded the
    /// announce to, which passed it on to `owner` (its own view names another owner; see
    /// [`MAX_HOPS`]): the announce waits for `owner` now. An instance of an older release
    /// drops this as malformed; its announce then waits for its deadline, as before.
    PassedOn(PassedOn),
}

impl BusMessage {
    /// The instance the message is meant for, when the message itself says so; a message
    /// naming another instance arrived at the wrong inbox and is dropped (`not_for_us`).
    pub fn addressee(&self) -> Option<InstanceId> {
        match self {
            BusMessage::AnnounceReply(reply) => Some(reply.to.instance),
            BusMessage::Deliver(deliver) => Some(deliver.to.instance),
            BusMessage::ScrapeReply(reply) => Some(reply.to.instance),
            BusMessage::PassedOn(passed) => Some(passed.to.instance),
            _ => None,
        }
    }

    /// Short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BusMessage::Heartbeat(_) => "heartbeat",
            BusMessage::Leaving => "leaving",
            BusMessage::Announce(_) => "announce",
            BusMessage::AnnounceReply(_) => "announce_reply",
            BusMessage::Answer(_) => "answer",
            BusMessage::Leave(_) => "leave",
            BusMessage::Deliver(_) => "deliver",
            BusMessage::Scrape(_) => "scrape",
            BusMessage::ScrapeReply(_) => "scrape_reply",
            BusMessage::Rejoin => "rejoin",
            BusMessage::PassedOn(_) => "passed_on",
        }
    }
}

/// The body of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up by one per heartbeat of this instance's life; a receiver ignores one that
    /// does not move forward (a duplicate or a replay).
    pub seq: u64,
    /// When this instance started, in milliseconds since the Unix epoch (diagnostics).
    pub started_at_ms: u64,
    /// `cluster.instance_id`: the operator's name for the instance (diagnostics).
    pub name: String,
    /// `cluster.advertise_url`, empty when not set (diagnostics).
    pub advertise_url: String,
}

/// An announce forwarded to the swarm's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedAnnounce {
    /// The announcing socket.
    pub from: ConnKey,
    /// Chosen by the sending instance, unique among its requests in flight; echoed in the
    /// reply so it finds the waiting session.
    pub req_id: u64,
    /// Forwards after the first (see [`MAX_HOPS`]).
    pub hops: u8,
    #[serde(with = "AnnounceRequestDef")]
    pub request: AnnounceRequest,
}

/// The owner's reply to a forwarded announce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnounceReply {
    /// The announcing socket (`ForwardedAnnounce::from`).
    pub to: ConnKey,
    pub req_id: u64,
    pub result: AnnounceResult,
}

/// Where a forwarded announce went on to (see [`BusMessage::PassedOn`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassedOn {
    /// The announcing socket (`ForwardedAnnounce::from`).
    pub to: ConnKey,
    pub req_id: u64,
    /// The instance the announce was passed on to, which replies if it takes it.
    pub owner: InstanceId,
}

/// What became of a forwarded announce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnnounceResult {
    /// Done: the swarm's counts after it, and whether the peer is registered to the
    /// announcing socket now (false after `stopped`).
    Accepted {
        #[serde(with = "SwarmCountsDef")]
        counts: SwarmCounts,
        registered: bool,
    },
    /// Refused by the swarm's rules; `Display` is the failure reason for the client.
    Rejected(#[serde(with = "RejectDef")] Reject),
    /// The owner could not take it now (shutting down, or its swarm was busy); the client
    /// will announce again.
    Unavailable,
}

/// An answer forwarded to the swarm's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    /// The answering socket: only the socket the offer was relayed to may answer it.
    pub from: ConnKey,
    pub hops: u8,
    #[serde(with = "AnswerRequestDef")]
    pub request: AnswerRequest,
}

/// A socket closed (or said `stopped` for several ids): drop its registrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedLeave {
    pub conn: ConnKey,
    #[serde(with = "raw_id")]
    pub info_hash: InfoHash,
    #[serde(with = "raw_ids")]
    pub peer_ids: Vec<PeerId>,
}

/// One message for one session, sent by a swarm's owner to the instance of the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliver {
    pub to: ConnKey,
    pub message: Relay,
}

/// What an owner relays to a session on another instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Relay {
    /// Another peer's offer (`OutMessage::Offer`).
    Offer {
        #[serde(with = "raw_id")]
        info_hash: InfoHash,
        /// The offering peer.
        #[serde(with = "raw_id")]
        peer_id: PeerId,
        #[serde(with = "raw_id")]
        offer_id: OfferId,
        #[serde(with = "sdp_literal")]
        sdp: Sdp,
    },
    /// The answer to this session's offer (`OutMessage::Answer`).
    Answer {
        #[serde(with = "raw_id")]
        info_hash: InfoHash,
        /// The answering peer.
        #[serde(with = "raw_id")]
        peer_id: PeerId,
        #[serde(with = "raw_id")]
        offer_id: OfferId,
        #[serde(with = "sdp_literal")]
        sdp: Sdp,
    },
    /// A refused answer: `{"failure reason", action: "announce", info_hash}`.
    Failure {
        #[serde(with = "raw_id")]
        info_hash: InfoHash,
        reason: String,
    },
}

impl Relay {
    /// The relayable form of a swarm's output; `None` for messages that are never relayed
    /// between instances (announce and scrape responses travel as replies instead).
    pub fn from_out(message: &OutMessage) -> Option<Self> {
        match message {
            OutMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => Some(Relay::Offer {
                info_hash: *info_hash,
                peer_id: *peer_id,
                offer_id: *offer_id,
                sdp: sdp.clone(),
            }),
            OutMessage::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => Some(Relay::Answer {
                info_hash: *info_hash,
                peer_id: *peer_id,
                offer_id: *offer_id,
                sdp: sdp.clone(),
            }),
            OutMessage::Failure {
                reason,
                info_hash: Some(info_hash),
                ..
            } => Some(Relay::Failure {
                info_hash: *info_hash,
                reason: reason.to_string(),
            }),
            _ => None,
        }
    }
}

impl From<Relay> for OutMessage {
    fn from(relay: Relay) -> Self {
        match relay {
            Relay::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => OutMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            },
            Relay::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => OutMessage::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            },
            Relay::Failure { info_hash, reason } => OutMessage::Failure {
                reason: reason.into(),
                action: crate::protocol::Action::Announce,
                info_hash: Some(info_hash),
            },
        }
    }
}

/// Counts of some swarms, asked of their owner on behalf of one scraping socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrapeQuery {
    /// The scraping socket; the reply goes to its instance.
    pub from: ConnKey,
    pub req_id: u64,
    #[serde(with = "raw_ids")]
    pub info_hashes: Vec<InfoHash>,
}

/// The owner's counts for a `ScrapeQuery` (zeros for swarms it does not have).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrapeReply {
    pub to: ConnKey,
    pub req_id: u64,
    #[serde(with = "scrape_files")]
    pub files: Vec<(InfoHash, SwarmCounts)>,
}

/// Why bytes off the bus are not a message of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// No bytes at all.
    Empty,
    /// Another wire version (an instance of an incompatible release, or another program).
    ForeignVersion(u8),
    /// The body does not parse as an envelope of this version.
    Malformed(String),
    /// The envelope parsed but this many bytes followed it.
    TrailingBytes(usize),
}

impl WireError {
    /// Short label for metrics (`dropped{reason}`).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::ForeignVersion(_) => "foreign_version",
            WireError::Empty | WireError::Malformed(_) | WireError::TrailingBytes(_) => "malformed",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty message"),
            WireError::ForeignVersion(version) => {
                write!(f, "wire version {version}, expected {WIRE_VERSION}")
            }
            WireError::Malformed(err) => write!(f, "malformed message: {err}"),
            WireError::TrailingBytes(count) => {
                write!(f, "{count} bytes after the end of the message")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// The bytes of one envelope: the version byte, then postcard.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, postcard::Error> {
    // SDP bodies dominate; start big enough for a typical relayed offer.
    let mut out = Vec::with_capacity(512);
    out.push(WIRE_VERSION);
    postcard::to_extend(envelope, out)
}

/// Reads one envelope; anything but exactly one envelope of this version is an error.
pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(WireError::Empty);
    };
    if version != WIRE_VERSION {
        return Err(WireError::ForeignVersion(version));
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(body)
        .map_err(|err| WireError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(envelope)
}

// ---------------------------------------------------------------------------------------
// Binary forms of the protocol types (serde remote derives and `with` helpers).

/// The three 20-byte ids, as raw bytes.
pub(crate) trait RawId: Copy {
    fn to_raw(self) -> [u8; ID_LEN];
    fn from_raw(bytes: [u8; ID_LEN]) -> Self;
}

macro_rules! raw_id_impl {
    ($($ty:ident),*) => {$(
        impl RawId for $ty {
            fn to_raw(self) -> [u8; ID_LEN] {
                self.0
            }
            fn from_raw(bytes: [u8; ID_LEN]) -> Self {
                $ty(bytes)
            }
        }
    )*};
}
raw_id_impl!(InfoHash, PeerId, OfferId);

/// One id as 20 raw bytes (no length prefix: the size is fixed).
mod raw_id {
    use super::*;

    pub(crate) fn serialize<S: Serializer, T: RawId>(
        id: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        id.to_raw().serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: RawId>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        <[u8; ID_LEN]>::deserialize(deserializer).map(T::from_raw)
    }
}

/// A list of ids, 20 raw bytes each after the count.
mod raw_ids {
    use super::*;

    pub(crate) fn serialize<S: Serializer, T: RawId>(
        ids: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ids.iter().map(|id| id.to_raw()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: RawId>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        let raw = Vec::<[u8; ID_LEN]>::deserialize(deserializer)?;
        Ok(raw.into_iter().map(T::from_raw).collect())
    }
}

/// SDP bodies travel in the escaped JSON form clients sent and receive them in (see
/// `protocol::sdp`), as a plain string, checked again on arrival: a literal that is not
/// exactly one JSON string fails the whole message, which is then dropped and counted.
mod sdp_literal {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(sdp: &Sdp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(sdp.as_json())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Sdp, D::Error> {
        // Borrowed from the message's bytes (postcard decodes from a slice): the one copy
        // is the `Sdp`'s own.
        let json = <&'de str>::deserialize(deserializer)?;
        Sdp::from_json(json).map_err(serde::de::Error::custom)
    }
}

/// Scrape results: (id, seeders, leechers) rows.
mod scrape_files {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Row(
        #[serde(with = "raw_id")] InfoHash,
        #[serde(with = "SwarmCountsDef")] SwarmCounts,
    );

    pub(crate) fn serialize<S: Serializer>(
        files: &[(InfoHash, SwarmCounts)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(files.iter().map(|(hash, counts)| Row(*hash, *counts)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(InfoHash, SwarmCounts)>, D::Error> {
        let rows = Vec::<Row>::deserialize(deserializer)?;
        Ok(rows
            .into_iter()
            .map(|Row(hash, counts)| (hash, counts))
            .collect())
    }
}

/// The offers of an announce.
mod offers {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct OfferDef {
        #[serde(with = "raw_id")]
        offer_id: OfferId,
        #[serde(with = "sdp_literal")]
        sdp: Sdp,
    }

    pub(crate) fn serialize<S: Serializer>(
        offers: &[Offer],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(offers.iter().map(|offer| OfferDef {
            offer_id: offer.offer_id,
            sdp: offer.sdp.clone(),
        }))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Offer>, D::Error> {
        let offers = Vec::<OfferDef>::deserialize(deserializer)?;
        Ok(offers
            .into_iter()
            .map(|offer| Offer {
                offer_id: offer.offer_id,
                sdp: offer.sdp,
            })
            .collect())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "SwarmCounts")]
struct SwarmCountsDef {
    complete: u32,
    incomplete: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "AnnounceEvent")]
enum AnnounceEventDef {
    Started,
    Update,
    Completed,
    Stopped,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "AnnounceRequest")]
struct AnnounceRequestDef {
    #[serde(with = "raw_id")]
    info_hash: InfoHash,
    #[serde(with = "raw_id")]
    peer_id: PeerId,
    #[serde(with = "AnnounceEventDef")]
    event: AnnounceEvent,
    left_is_zero: Option<bool>,
    numwant: Option<usize>,
    #[serde(with = "offers")]
    offers: Vec<Offer>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "AnswerRequest")]
struct AnswerRequestDef {
    #[serde(with = "raw_id")]
    info_hash: InfoHash,
    #[serde(with = "raw_id")]
    peer_id: PeerId,
    #[serde(with = "raw_id")]
    to_peer_id: PeerId,
    #[serde(with = "raw_id")]
    offer_id: OfferId,
    #[serde(with = "sdp_literal")]
    sdp: Sdp,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Reject")]
enum RejectDef {
    SwarmFull { max_peers: usize },
    UnknownOffer,
    NotYourOffer,
    OffererGone,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id20() -> impl Strategy<Value = [u8; ID_LEN]> {
        prop::array::uniform20(any::<u8>())
    }

    fn conn_key() -> impl Strategy<Value = ConnKey> {
        (any::<u64>(), any::<u64>()).prop_map(|(instance, conn)| ConnKey { instance, conn })
    }

    fn sdp() -> impl Strategy<Value = Sdp> {
        ".{0,64}".prop_map(|text| Sdp::from_text(&text))
    }

    fn counts() -> impl Strategy<Value = SwarmCounts> {
        (any::<u32>(), any::<u32>()).prop_map(|(complete, incomplete)| SwarmCounts {
            complete,
            incomplete,
        })
    }

    fn event() -> impl Strategy<Value = AnnounceEvent> {
        prop_oneof![
            Just(AnnounceEvent::Started),
            Just(AnnounceEvent::Update),
            Just(AnnounceEvent::Completed),
            Just(AnnounceEvent::Stopped),
        ]
    }

    fn announce_request() -> impl Strategy<Value = AnnounceRequest> {
        (
            id20(),
            id20(),
            event(),
            any::<Option<bool>>(),
            any::<Option<usize>>(),
            prop::collection::vec((id20(), sdp()), 0..4),
        )
            .prop_map(
                |(info_hash, peer_id, event, left_is_zero, numwant, offers)| AnnounceRequest {
                    info_hash: InfoHash(info_hash),
                    peer_id: PeerId(peer_id),
                    event,
                    left_is_zero,
                    numwant,
                    offers: offers
                        .into_iter()
                        .map(|(offer_id, sdp)| Offer {
                            offer_id: OfferId(offer_id),
                            sdp,
                        })
                        .collect(),
                },
            )
    }

    fn answer_request() -> impl Strategy<Value = AnswerRequest> {
        (id20(), id20(), id20(), id20(), sdp()).prop_map(
            |(info_hash, peer_id, to_peer_id, offer_id, sdp)| AnswerRequest {
                info_hash: InfoHash(info_hash),
                peer_id: PeerId(peer_id),
                to_peer_id: PeerId(to_peer_id),
                offer_id: OfferId(offer_id),
                sdp,
            },
        )
    }

    fn reject() -> impl Strategy<Value = Reject> {
        prop_oneof![
            any::<usize>().prop_map(|max_peers| Reject::SwarmFull { max_peers }),
            Just(Reject::UnknownOffer),
            Just(Reject::NotYourOffer),
            Just(Reject::OffererGone),
        ]
    }

    fn relay() -> impl Strategy<Value = Relay> {
        prop_oneof![
            (id20(), id20(), id20(), sdp()).prop_map(|(info_hash, peer_id, offer_id, sdp)| {
                Relay::Offer {
                    info_hash: InfoHash(info_hash),
                    peer_id: PeerId(peer_id),
                    offer_id: OfferId(offer_id),
                    sdp,
                }
            }),
            (id20(), id20(), id20(), sdp()).prop_map(|(info_hash, peer_id, offer_id, sdp)| {
                Relay::Answer {
                    info_hash: InfoHash(info_hash),
                    peer_id: PeerId(peer_id),
                    offer_id: OfferId(offer_id),
                    sdp,
                }
            }),
            (id20(), ".{0,40}").prop_map(|(info_hash, reason)| Relay::Failure {
                info_hash: InfoHash(info_hash),
                reason,
            }),
        ]
    }

    fn message() -> impl Strategy<Value = BusMessage> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), ".{0,16}", ".{0,16}").prop_map(
                |(seq, started_at_ms, name, advertise_url)| BusMessage::Heartbeat(Heartbeat {
                    seq,
                    started_at_ms,
                    name,
                    advertise_url,
                })
            ),
            Just(BusMessage::Leaving),
            (conn_key(), any::<u64>(), any::<u8>(), announce_request()).prop_map(
                |(from, req_id, hops, request)| BusMessage::Announce(ForwardedAnnounce {
                    from,
                    req_id,
                    hops,
                    request,
                })
            ),
            (
                conn_key(),
                any::<u64>(),
                prop_oneof![
                    (counts(), any::<bool>()).prop_map(|(counts, registered)| {
                        AnnounceResult::Accepted { counts, registered }
                    }),
                    reject().prop_map(AnnounceResult::Rejected),
                    Just(AnnounceResult::Unavailable),
                ]
            )
                .prop_map(|(to, req_id, result)| BusMessage::AnnounceReply(
                    AnnounceReply { to, req_id, result }
                )),
            (conn_key(), any::<u8>(), answer_request()).prop_map(|(from, hops, request)| {
                BusMessage::Answer(ForwardedAnswer {
                    from,
                    hops,
                    request,
                })
            }),
            (conn_key(), id20(), prop::collection::vec(id20(), 0..5)).prop_map(
                |(conn, info_hash, peer_ids)| BusMessage::Leave(ForwardedLeave {
                    conn,
                    info_hash: InfoHash(info_hash),
                    peer_ids: peer_ids.into_iter().map(PeerId).collect(),
                })
            ),
            (conn_key(), relay())
                .prop_map(|(to, message)| BusMessage::Deliver(Deliver { to, message })),
            (
                conn_key(),
                any::<u64>(),
                prop::collection::vec(id20(), 0..5)
            )
                .prop_map(|(from, req_id, hashes)| BusMessage::Scrape(ScrapeQuery {
                    from,
                    req_id,
                    info_hashes: hashes.into_iter().map(InfoHash).collect(),
                })),
            (
                conn_key(),
                any::<u64>(),
                prop::collection::vec((id20(), counts()), 0..5)
            )
                .prop_map(|(to, req_id, files)| BusMessage::ScrapeReply(ScrapeReply {
                    to,
                    req_id,
                    files: files
                        .into_iter()
                        .map(|(hash, counts)| (InfoHash(hash), counts))
                        .collect(),
                })),
            Just(BusMessage::Rejoin),
            (conn_key(), any::<u64>(), any::<u64>()).prop_map(|(to, req_id, owner)| {
                BusMessage::PassedOn(PassedOn { to, req_id, owner })
            }),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (any::<u64>(), any::<u64>(), message()).prop_map(|(from, sent_at_ms, body)| Envelope {
            from,
            sent_at_ms,
            body,
        })
    }

    proptest! {
        #[test]
        fn every_message_round_trips(envelope in envelope()) {
            let bytes = encode(&envelope).expect("encodes");
            prop_assert_eq!(bytes[0], WIRE_VERSION);
            prop_assert_eq!(decode(&bytes), Ok(envelope));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bodies_after_our_version_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = vec![WIRE_VERSION];
            bytes.extend(body);
            let _ = decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error_not_a_panic(envelope in envelope()) {
            let bytes = encode(&envelope).expect("encodes");
            for len in 0..bytes.len() {
                prop_assert!(decode(&bytes[..len]).is_err(), "prefix of {} bytes decoded", len);
            }
        }

        #[test]
        fn flipped_bytes_never_panic(envelope in envelope(), index in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut bytes = encode(&envelope).expect("encodes");
            let at = index.index(bytes.len());
            bytes[at] ^= xor;
            let _ = decode(&bytes);
        }
    }

    fn sample() -> Envelope {
        Envelope {
            from: 7,
            sent_at_ms: 1_700_000_000_000,
            body: BusMessage::Deliver(Deliver {
                to: ConnKey {
                    instance: 9,
                    conn: 42,
                },
                message: Relay::Offer {
                    info_hash: InfoHash([1; 20]),
                    peer_id: PeerId([2; 20]),
                    offer_id: OfferId([3; 20]),
                    sdp: Sdp::from_text("v=0"),
                },
            }),
        }
    }

    #[test]
    fn other_versions_are_foreign() {
        let mut bytes = encode(&sample()).expect("encodes");
        bytes[0] = WIRE_VERSION + 1;
        assert_eq!(
            decode(&bytes),
            Err(WireError::ForeignVersion(WIRE_VERSION + 1))
        );
        assert_eq!(
            decode(&bytes).map_err(|err| err.kind()),
            Err("foreign_version")
        );
    }

    #[test]
    fn empty_and_trailing_bytes_are_refused() {
        assert_eq!(decode(&[]), Err(WireError::Empty));
        let mut bytes = encode(&sample()).expect("encodes");
        bytes.extend([0, 0]);
        assert_eq!(decode(&bytes), Err(WireError::TrailingBytes(2)));
    }

    #[test]
    fn ids_travel_as_raw_bytes() {
        // 1 version + 1 from + ~6 sent_at + 1 variant + 2 to + 1 relay variant + 3 x 20
        // ids + 1 length + 3 sdp: the ids are not inflated to their latin-1 JSON form.
        let bytes = encode(&sample()).expect("encodes");
        assert!(bytes.len() <= 80, "{} bytes", bytes.len());
        let needle = [2u8; 20];
        assert!(bytes.windows(20).any(|window| window == needle));
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        // ScrapeQuery whose id list claims 2^62 entries.
        let mut bytes = vec![WIRE_VERSION, 1, 0, 7];
        bytes.extend([1, 1, 0]); // from: ConnKey { 1, 1 }, req_id 0
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
    }

    #[test]
    fn relays_convert_to_and_from_out_messages() {
        let BusMessage::Deliver(deliver) = sample().body else {
            unreachable!("sample is a Deliver")
        };
        let out: OutMessage = deliver.message.clone().into();
        assert_eq!(Relay::from_out(&out), Some(deliver.message));
        let failure = OutMessage::Failure {
            reason: "no".into(),
            action: crate::protocol::Action::Announce,
            info_hash: Some(InfoHash([5; 20])),
        };
        let relay = Relay::from_out(&failure).expect("a failure with info_hash relays");
        assert_eq!(OutMessage::from(relay), failure);
        assert_eq!(
            Relay::from_out(&OutMessage::ScrapeResponse { files: vec![] }),
            None
        );
    }

    /// Variants are numbered by position: a new one goes at the end, so that every older
    /// message keeps its bytes (and an older release reads all it knows).
    #[test]
    fn the_variants_added_last_keep_their_places() {
        let envelope = |body| Envelope {
            from: 1,
            sent_at_ms: 2,
            body,
        };
        let rejoin = envelope(BusMessage::Rejoin);
        assert_eq!(encode(&rejoin).expect("encodes"), [WIRE_VERSION, 1, 2, 9]);
        let passed_on = envelope(BusMessage::PassedOn(PassedOn {
            to: ConnKey {
                instance: 3,
                conn: 4,
            },
            req_id: 5,
            owner: 6,
        }));
        assert_eq!(
            encode(&passed_on).expect("encodes"),
            [WIRE_VERSION, 1, 2, 10, 3, 4, 5, 6]
        );
    }

    #[test]
    fn addressee_names_the_target_instance() {
        assert_eq!(sample().body.addressee(), Some(9));
        assert_eq!(BusMessage::Leaving.addressee(), None);
        assert_eq!(BusMessage::Rejoin.addressee(), None);
    }
}
