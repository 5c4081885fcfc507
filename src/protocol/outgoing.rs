//! Tracker -> client messages and their JSON form.
//!
//! Key order follows the reference server where clients could care (they do not parse by
//! position, but captures and diffs read better). Offers and answers are rebuilt as
//! `{type, sdp}` rather than relayed verbatim, so a client cannot smuggle extra fields to
//! another peer; only the SDP string itself is copied as it came (see `sdp`).

use std::borrow::Cow;

use serde::{ser::SerializeMap, Serialize, Serializer};

use super::{
    ids::{InfoHash, OfferId, PeerId},
    incoming::Action,
    sdp::Sdp,
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
        sdp: Sdp,
    },
    /// The answer to an offer this client made.
    Answer {
        info_hash: InfoHash,
        /// The answering peer.
        peer_id: PeerId,
        offer_id: OfferId,
        sdp: Sdp,
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
        let mut buffer = Vec::new();
        self.write_json(&mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Appends the JSON text of one frame to `out`. What it writes is UTF-8: serde_json
    /// writes nothing else, and an SDP literal is copied from a string that was checked.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Sized up front: relayed offers and answers are SDP plus ~200 bytes of envelope,
        // and growing the buffer by doubling would copy them several times.
        out.reserve(self.estimated_len());
        let start = out.len();
        let written = match self {
            OutMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => write_relay(out, "offer", info_hash, peer_id, offer_id, sdp),
            OutMessage::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => write_relay(out, "answer", info_hash, peer_id, offer_id, sdp),
            other => serde_json::to_writer(&mut *out, &OtherJson(other)),
        };
        // Serialising plain structs of ids, integers and strings into memory cannot fail;
        // the fallback keeps the connection speaking the protocol should that ever change.
        if let Err(err) = written {
            out.truncate(start);
            let reason = err.to_string().replace(['"', '\\'], "'");
            out.extend_from_slice(
                format!(
                    "{{\"failure reason\":\"internal error: {reason}\",\"action\":\"announce\"}}"
                )
                .as_bytes(),
            );
        }
    }

    /// A close upper estimate of the JSON length.
    fn estimated_len(&self) -> usize {
        match self {
            OutMessage::Offer { sdp, .. } | OutMessage::Answer { sdp, .. } => {
                sdp.as_json().len() + 256
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

/// `{"action":"announce","info_hash":..,"peer_id":..,"offer_id":..,"<kind>":{"type":"<kind>","sdp":..}}`
/// with the SDP literal copied in as it came: serde escapes the ids, nothing touches the SDP.
fn write_relay(
    out: &mut Vec<u8>,
    kind: &str,
    info_hash: &InfoHash,
    peer_id: &PeerId,
    offer_id: &OfferId,
    sdp: &Sdp,
) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"action":"announce","info_hash":"#);
    serde_json::to_writer(&mut *out, info_hash)?;
    out.extend_from_slice(br#","peer_id":"#);
    serde_json::to_writer(&mut *out, peer_id)?;
    out.extend_from_slice(br#","offer_id":"#);
    serde_json::to_writer(&mut *out, offer_id)?;
    out.extend_from_slice(b",\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"":{"type":""#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"","sdp":"#);
    out.extend_from_slice(sdp.as_json().as_bytes());
    out.extend_from_slice(b"}}");
    Ok(())
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

/// The messages without an SDP, through serde.
struct OtherJson<'a>(&'a OutMessage);

impl Serialize for OtherJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
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
            OutMessage::Offer { .. } | OutMessage::Answer { .. } => Err(serde::ser::Error::custom(
                "offers and answers are written by write_relay",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn id<T>(make: fn([u8; 20]) -> T, first: u8) -> T {
        let mut bytes = [b'a'; 20];
        bytes[0] = first;
        make(bytes)
    }

    #[test]
    fn relays_carry_the_sdp_literal_verbatim_in_a_fresh_object() {
        let sdp: &serde_json::value::RawValue =
            serde_json::from_str(r#""v=0\r\na=\u0041""#).expect("JSON");
        let sdp = Sdp::from_raw(sdp).expect("a string");
        for (kind, message) in [
            (
                "offer",
                OutMessage::Offer {
                    info_hash: id(InfoHash, b'"'),
                    peer_id: id(PeerId, 0x01),
                    offer_id: id(OfferId, 0xE9),
                    sdp: sdp.clone(),
                },
            ),
            (
                "answer",
                OutMessage::Answer {
                    info_hash: id(InfoHash, b'"'),
                    peer_id: id(PeerId, 0x01),
                    offer_id: id(OfferId, 0xE9),
                    sdp: sdp.clone(),
                },
            ),
        ] {
            let text = message.to_text();
            assert!(text.contains(r#""sdp":"v=0\r\na=\u0041"}}"#), "{text}");
            let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(
                parsed,
                json!({
                    "action": "announce",
                    "info_hash": format!("\"{}", "a".repeat(19)),
                    "peer_id": format!("\u{1}{}", "a".repeat(19)),
                    "offer_id": format!("\u{e9}{}", "a".repeat(19)),
                    kind: {"type": kind, "sdp": "v=0\r\na=A"},
                })
            );
        }
    }
}
