//! Tracker -> client messages and their JSON form.
//!
//! Key order follows the reference server where clients could care (they do not parse by
//! position, but captures and diffs read better). Offers and answers are rebuilt as
//! `{type, sdp}` rather than relayed verbatim, so a client cannot smuggle extra fields to
//! another peer.

use std::{borrow::Cow, sync::Arc};

use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{
    ids::{InfoHash, OfferId, PeerId},
    incoming::Action,
};

/// Seeder/leecher counts of one swarm, as reported in announce and scrape responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SwarmCounts {
    /// Seeders.
    pub complete: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// Something to send to one client.
#[derive(Debug, Clone, PartialEq)]
pub enum OutMessage {
    /// Reply to every announce that is not an answer, `stopped` included.
    AnnounceResponse {
        info_hash: InfoHash,
        counts: SwarmCounts,
        interval_secs: u32,
    },
    /// Another peer's offer, relayed to this client.
    Offer {
        info_hash: InfoHash,
        /// The offering peer.
        peer_id: PeerId,
        offer_id: OfferId,
        sdp: Arc<str>,
    },
    /// The answer to an offer this client made.
    Answer {
        info_hash: InfoHash,
        /// The answering peer.
        peer_id: PeerId,
        offer_id: OfferId,
        sdp: Arc<str>,
    },
    /// Counts per requested swarm. `downloaded` is reported as `complete`, a lower bound, as
    /// the reference server does (no tracker here counts finished downloads).
    ScrapeResponse { files: Vec<(InfoHash, SwarmCounts)> },
    /// `{"failure reason", action, info_hash?}`. Never sent without `action`: the reference
    /// client destroys its socket and backs off for minutes on a message without one.
    Failure {
        reason: Cow<'static, str>,
        action: Action,
        info_hash: Option<InfoHash>,
    },
}

impl OutMessage {
    /// Serialises to the JSON text of one frame.
    pub fn to_text(&self) -> String {
        // Sized up front: relayed offers and answers are SDP plus ~200 bytes of envelope,
        // and growing the buffer by doubling would copy them several times.
        let mut buffer = Vec::with_capacity(self.estimated_len());
        // Serialising plain structs of ids, integers and strings cannot fail; the fallback
        // keeps the connection speaking the protocol should that ever change.
        match serde_json::to_writer(&mut buffer, self) {
            Ok(()) => String::from_utf8(buffer).unwrap_or_default(),
            Err(err) => format!(
                "{{\"failure reason\":\"internal error: {}\",\"action\":\"announce\"}}",
                err.to_string().replace(['"', '\\'], "'")
            ),
        }
    }

    /// A close upper estimate of the JSON length (SDP line breaks are escaped as `\r\n`).
    fn estimated_len(&self) -> usize {
        match self {
            OutMessage::Offer { sdp, .. } | OutMessage::Answer { sdp, .. } => {
                sdp.len() + sdp.len() / 8 + 256
            }
            OutMessage::ScrapeResponse { files } => 32 + files.len() * 120,
            OutMessage::Failure { reason, .. } => reason.len() + 160,
            OutMessage::AnnounceResponse { .. } => 160,
        }
    }

    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OutMessage::AnnounceResponse { .. } => "announce",
            OutMessage::Offer { .. } => "offer",
            OutMessage::Answer { .. } => "answer",
            OutMessage::ScrapeResponse { .. } => "scrape",
            OutMessage::Failure { .. } => "failure",
        }
    }
}

/// `{"type": ..., "sdp": ...}` as it appears under `offer` / `answer`.
#[derive(Serialize)]
struct SdpObject<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sdp: &'a str,
}

struct ScrapeFiles<'a>(&'a [(InfoHash, SwarmCounts)]);

impl Serialize for ScrapeFiles<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct FileStats {
            complete: u32,
            incomplete: u32,
            downloaded: u32,
        }
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (info_hash, counts) in self.0 {
            map.serialize_entry(
                info_hash,
                &FileStats {
                    complete: counts.complete,
                    incomplete: counts.incomplete,
                    downloaded: counts.complete,
                },
            )?;
        }
        map.end()
    }
}

impl Serialize for OutMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OutMessage::AnnounceResponse {
                info_hash,
                counts,
                interval_secs,
            } => {
                let mut map = serializer.serialize_map(Some(5))?;
                map.serialize_entry("action", "announce")?;
                map.serialize_entry("info_hash", info_hash)?;
                map.serialize_entry("complete", &counts.complete)?;
                map.serialize_entry("incomplete", &counts.incomplete)?;
                map.serialize_entry("interval", interval_secs)?;
                map.end()
            }
            OutMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => {
                let mut map = serializer.serialize_map(Some(5))?;
                map.serialize_entry("action", "announce")?;
                map.serialize_entry("info_hash", info_hash)?;
                map.serialize_entry("peer_id", peer_id)?;
                map.serialize_entry("offer_id", offer_id)?;
                map.serialize_entry("offer", &SdpObject { kind: "offer", sdp })?;
                map.end()
            }
            OutMessage::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => {
                let mut map = serializer.serialize_map(Some(5))?;
                map.serialize_entry("action", "announce")?;
                map.serialize_entry("info_hash", info_hash)?;
                map.serialize_entry("peer_id", peer_id)?;
                map.serialize_entry("offer_id", offer_id)?;
                map.serialize_entry(
                    "answer",
                    &SdpObject {
                        kind: "answer",
                        sdp,
                    },
                )?;
                map.end()
            }
            OutMessage::ScrapeResponse { files } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("action", "scrape")?;
                map.serialize_entry("files", &ScrapeFiles(files))?;
                map.end()
            }
            OutMessage::Failure {
                reason,
                action,
                info_hash,
            } => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("failure reason", reason)?;
                map.serialize_entry("action", action.as_str())?;
                if let Some(info_hash) = info_hash {
                    map.serialize_entry("info_hash", info_hash)?;
                }
                map.end()
            }
        }
    }
}
