//! The client's side of the protocol: building requests and reading the tracker's replies.
//!
//! Used by the load tester (`src/bin/loadtest/`) and by the tests, so they speak exactly
//! the JSON that `bittorrent-tracker`'s client and P2P Media Loader send, through the same
//! id types the server uses. Parsing replies is lenient about unknown fields, so the load
//! tester works against any WebTorrent tracker.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use super::ids::{InfoHash, OfferId, PeerId};
use super::outgoing::SwarmCounts;

#[derive(Serialize)]
struct SdpObject<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sdp: &'a str,
}

#[derive(Serialize)]
struct OfferEntry<'a> {
    offer: SdpObject<'a>,
    offer_id: OfferId,
}

/// An announce as the reference client sends it (keys in P2P Media Loader's order).
#[derive(Serialize)]
pub struct AnnounceBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numwant: Option<usize>,
    pub uploaded: u64,
    pub downloaded: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    pub action: &'static str,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offers: Vec<OfferEntry<'a>>,
}

/// Serialises an announce. `offers` are `(offer_id, sdp)`; `numwant` is set to their count,
/// as the reference client does.
pub fn announce_text(
    info_hash: InfoHash,
    peer_id: PeerId,
    event: Option<&str>,
    left: Option<u64>,
    offers: &[(OfferId, &str)],
) -> String {
    let body = AnnounceBody {
        numwant: (!offers.is_empty()).then_some(offers.len()),
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        action: "announce",
        info_hash,
        peer_id,
        offers: offers
            .iter()
            .map(|(offer_id, sdp)| OfferEntry {
                offer: SdpObject { kind: "offer", sdp },
                offer_id: *offer_id,
            })
            .collect(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// Serialises the answer to a relayed offer.
pub fn answer_text(
    info_hash: InfoHash,
    peer_id: PeerId,
    to_peer_id: PeerId,
    offer_id: OfferId,
    sdp: &str,
) -> String {
    #[derive(Serialize)]
    struct AnswerBody<'a> {
        action: &'static str,
        info_hash: InfoHash,
        peer_id: PeerId,
        to_peer_id: PeerId,
        offer_id: OfferId,
        answer: SdpObject<'a>,
    }
    serde_json::to_string(&AnswerBody {
        action: "announce",
        info_hash,
        peer_id,
        to_peer_id,
        offer_id,
        answer: SdpObject {
            kind: "answer",
            sdp,
        },
    })
    .unwrap_or_default()
}

/// Serialises a scrape; `None` asks for every swarm.
pub fn scrape_text(info_hashes: Option<&[InfoHash]>) -> String {
    #[derive(Serialize)]
    struct ScrapeBody<'a> {
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        info_hash: Option<&'a [InfoHash]>,
    }
    serde_json::to_string(&ScrapeBody {
        action: "scrape",
        info_hash: info_hashes,
    })
    .unwrap_or_default()
}

/// A message from a tracker, as a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerMessage {
    AnnounceResponse {
        info_hash: InfoHash,
        counts: SwarmCounts,
        interval: u64,
    },
    Offer {
        info_hash: InfoHash,
        peer_id: PeerId,
        offer_id: OfferId,
        sdp: String,
    },
    Answer {
        info_hash: InfoHash,
        peer_id: PeerId,
        offer_id: OfferId,
        sdp: String,
    },
    Scrape {
        files: BTreeMap<InfoHash, SwarmCounts>,
    },
    Failure {
        reason: String,
        action: Option<String>,
        info_hash: Option<InfoHash>,
    },
    /// `warning message`, or anything else a tracker may send.
    Other(String),
}

#[derive(Deserialize)]
struct RawSdp<'a> {
    #[serde(borrow)]
    sdp: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    complete: u32,
    #[serde(default)]
    incomplete: u32,
}

#[derive(Deserialize)]
struct RawReply<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(rename = "failure reason", borrow, default)]
    failure_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info_hash: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    peer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    offer_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    offer: Option<RawSdp<'a>>,
    #[serde(borrow, default)]
    answer: Option<RawSdp<'a>>,
    #[serde(default)]
    complete: Option<u32>,
    #[serde(default)]
    incomplete: Option<u32>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(borrow, default)]
    files: Option<BTreeMap<Cow<'a, str>, RawFile>>,
}

/// Reads one text frame from a tracker.
pub fn parse_tracker_message(text: &str) -> Result<TrackerMessage, String> {
    let raw: RawReply<'_> = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let id = |field: &str, value: &Option<Cow<'_, str>>| -> Result<[u8; 20], String> {
        let text = value.as_deref().ok_or(format!("missing {field}"))?;
        super::ids::decode_latin1(text).map_err(|err| format!("{field} {err}"))
    };
    if let Some(reason) = raw.failure_reason {
        return Ok(TrackerMessage::Failure {
            reason: reason.into_owned(),
            action: raw.action.map(Cow::into_owned),
            info_hash: raw
                .info_hash
                .as_deref()
                .and_then(|text| InfoHash::from_wire(text).ok()),
        });
    }
    match raw.action.as_deref() {
        Some("scrape") => {
            let mut files = BTreeMap::new();
            for (hash, file) in raw.files.unwrap_or_default() {
                let hash = InfoHash::from_wire(&hash).map_err(|err| format!("files key {err}"))?;
                files.insert(
                    hash,
                    SwarmCounts {
                        complete: file.complete,
                        incomplete: file.incomplete,
                    },
                );
            }
            Ok(TrackerMessage::Scrape { files })
        }
        Some("announce") => {
            let info_hash = InfoHash(id("info_hash", &raw.info_hash)?);
            if let Some(offer) = raw.offer {
                return Ok(TrackerMessage::Offer {
                    info_hash,
                    peer_id: PeerId(id("peer_id", &raw.peer_id)?),
                    offer_id: OfferId(id("offer_id", &raw.offer_id)?),
                    sdp: offer.sdp.into_owned(),
                });
            }
            if let Some(answer) = raw.answer {
                return Ok(TrackerMessage::Answer {
                    info_hash,
                    peer_id: PeerId(id("peer_id", &raw.peer_id)?),
                    offer_id: OfferId(id("offer_id", &raw.offer_id)?),
                    sdp: answer.sdp.into_owned(),
                });
            }
            Ok(TrackerMessage::AnnounceResponse {
                info_hash,
                counts: SwarmCounts {
                    complete: raw.complete.unwrap_or(0),
                    incomplete: raw.incomplete.unwrap_or(0),
                },
                interval: raw.interval.unwrap_or(0),
            })
        }
        _ => Ok(TrackerMessage::Other(text.to_owned())),
    }
}
