//! Client -> tracker messages, parsed and validated in one step.
//!
//! Parsing goes through a flat, borrowing `RawMessage` (every field optional, strings as
//! `Cow` so unescaped ones are not copied), then `validate` turns it into a typed
//! `InMessage` or a `ParseError` whose text becomes the `failure reason`. Keeping the raw
//! shape flat lets every failure name the field at fault and still echo `info_hash` when it
//! was readable: the reference client only shows failures that carry its own info_hash.

use std::{borrow::Cow, fmt};

use serde::{
    de::{self, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

use super::{
    ids::{decode_latin1, IdError, InfoHash, OfferId, PeerId, ID_LEN},
    sdp::{escaped_len_of, Sdp},
};

/// Bounds applied while validating: built from the `[tracker]` settings (`config`), whose
/// defaults are also this struct's `Default`.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest accepted SDP body (offer or answer), in bytes as sent (JSON-escaped, so a
    /// line break counts two).
    pub max_sdp_bytes: usize,
    /// Most info_hashes accepted in one scrape.
    pub max_scrape_hashes: usize,
    /// Most offers read from one announce; the rest of the array is ignored (the reference
    /// client sends at most 5 today, P2P Media Loader 0.6 sent 10).
    pub max_offers: usize,
}

/// The `action` a message (or the failure for it) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Announce,
    Scrape,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Announce => "announce",
            Action::Scrape => "scrape",
        }
    }
}

/// What an announce says about the peer's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// `started`.
    Started,
    /// absent, `update`, `paused` or `""`: a periodic re-announce. An unknown peer on an
    /// update is a joiner, since the reference client sends no `started` after a reconnect.
    Update,
    /// `completed`: the peer becomes a seeder.
    Completed,
    /// `stopped`: the peer leaves this swarm.
    Stopped,
}

/// One pre-made WebRTC offer to hand to another peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub offer_id: OfferId,
    pub sdp: Sdp,
}

/// `action: announce` without `answer`: join, re-announce or leave, maybe with offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub event: AnnounceEvent,
    /// `Some(true)` when `left` is 0, `Some(false)` when `left` > 0, `None` when `left` is
    /// absent or null (P2P Media Loader never sends it; JavaScript's NaN arrives as null).
    pub left_is_zero: Option<bool>,
    /// `numwant`, only meaningful together with offers; `None` when absent.
    pub numwant: Option<usize>,
    /// At most `ParseLimits::max_offers`; empty for `stopped` and `completed`.
    pub offers: Vec<Offer>,
}

/// `action: announce` with `answer`: the reply to an offer, for the peer `to_peer_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRequest {
    pub info_hash: InfoHash,
    /// The answering peer.
    pub peer_id: PeerId,
    /// The peer that made the offer.
    pub to_peer_id: PeerId,
    pub offer_id: OfferId,
    pub sdp: Sdp,
}

/// Which swarms a scrape asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrapeRequest {
    /// No `info_hash`: every swarm (a "full scrape"), if the config allows it.
    All,
    /// One hash or an array of them (possibly empty: clients use `[]` as a keep-alive).
    Some(Vec<InfoHash>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InMessage {
    Announce(AnnounceRequest),
    Answer(AnswerRequest),
    Scrape(ScrapeRequest),
}

/// A message that could not be accepted; becomes `{"failure reason", action, info_hash}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub reason: String,
    pub action: Action,
    pub info_hash: Option<InfoHash>,
    /// Short, fixed label for metrics (`invalid_json`, `invalid_id`, ...).
    pub kind: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A string field compared against fixed words (`action`, `event`, `type`): borrowed from
/// the frame, copied only if it holds escapes. (serde borrows a `Cow<str>` field marked
/// `borrow`, but not one inside an `Option`, which the newtype gets around.)
#[derive(Deserialize)]
struct RawText<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for RawText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// An id field, decoded while it is parsed: ids are binary strings, most of them with
/// escapes (`\u0003`), which a string field would have to copy out first. A string that is
/// not a valid id is kept as its `IdError`, so that validation can name the field.
struct RawId(Result<[u8; ID_LEN], IdError>);

impl RawId {
    fn decode(text: &str) -> Self {
        Self(decode_latin1(text))
    }
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = RawId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            // Borrowed or unescaped into serde_json's scratch buffer: either way no copy.
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawId, E> {
                Ok(RawId::decode(text))
            }
        }

        deserializer.deserialize_str(IdVisitor)
    }
}

#[derive(Deserialize)]
struct RawSdp<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<RawText<'a>>,
    /// Kept as raw JSON: relayed in its escaped form (see `sdp`).
    #[serde(borrow, default)]
    sdp: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawOffer<'a> {
    #[serde(default)]
    offer_id: Option<RawId>,
    #[serde(borrow, default)]
    offer: Option<RawSdp<'a>>,
}

/// `info_hash`: one id (announce, scrape) or an array of them (scrape). Told apart by the
/// JSON type itself rather than by `#[serde(untagged)]`, which would first copy the value
/// into serde's generic buffer.
enum RawInfoHash {
    One(RawId),
    Many(Vec<RawId>),
}

impl<'de> Deserialize<'de> for RawInfoHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InfoHashVisitor;

        impl<'de> Visitor<'de> for InfoHashVisitor {
            type Value = RawInfoHash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawInfoHash, E> {
                Ok(RawInfoHash::One(RawId::decode(text)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawInfoHash, A::Error> {
                // serde caps what a claimed length may preallocate; the scrape limit
                // applies once the array is read.
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(id) = seq.next_element::<RawId>()? {
                    ids.push(id);
                }
                Ok(RawInfoHash::Many(ids))
            }
        }

        deserializer.deserialize_any(InfoHashVisitor)
    }
}

/// Every field any client message may carry; unknown fields (`uploaded`, `downloaded`,
/// `trackerid`, ...) are ignored, as every tracker does.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    action: Option<RawText<'a>>,
    #[serde(default)]
    info_hash: Option<RawInfoHash>,
    #[serde(default)]
    peer_id: Option<RawId>,
    #[serde(borrow, default)]
    event: Option<RawText<'a>>,
    #[serde(default)]
    left: Option<f64>,
    #[serde(default)]
    numwant: Option<f64>,
    #[serde(borrow, default)]
    offers: Option<Vec<RawOffer<'a>>>,
    #[serde(borrow, default)]
    answer: Option<RawSdp<'a>>,
    #[serde(default)]
    to_peer_id: Option<RawId>,
    #[serde(default)]
    offer_id: Option<RawId>,
}

/// Only what a failure needs to be addressed; read again when the full parse failed, so
/// that a wrong type in one field still gets a failure the client will show. Both fields
/// take any JSON value, so a wrong type in one cannot hide the other.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    action: Option<serde_json::Value>,
    #[serde(default)]
    info_hash: Option<serde_json::Value>,
}

/// Parses one text frame.
pub fn parse(text: &str, limits: &ParseLimits) -> Result<InMessage, ParseError> {
    // serde fills a struct from a JSON array too (positionally); the protocol is one JSON
    // object per frame, so anything else is refused before it can be mistaken for one.
    if !text.trim_start().starts_with('{') {
        return Err(fail(
            Action::Announce,
            None,
            "invalid_json",
            "invalid message: expected a JSON object",
        ));
    }
    match serde_json::from_str::<RawMessage<'_>>(text) {
        Ok(raw) => validate(raw, limits),
        Err(err) => Err(json_failure(text, &err)),
    }
}

fn json_failure(text: &str, err: &serde_json::Error) -> ParseError {
    let envelope = serde_json::from_str::<Envelope>(text).ok();
    let action = envelope
        .as_ref()
        .and_then(|env| env.action.as_ref())
        .and_then(serde_json::Value::as_str)
        .map_or(Action::Announce, action_for_failure);
    let info_hash = envelope
        .as_ref()
        .and_then(|env| env.info_hash.as_ref())
        .and_then(serde_json::Value::as_str)
        .and_then(|text| InfoHash::from_wire(text).ok());
    let kind = if err.is_data() {
        "invalid_field"
    } else {
        "invalid_json"
    };
    ParseError {
        reason: format!("invalid message: {err}"),
        action,
        info_hash,
        kind,
    }
}

/// A failure must name an action the reference client knows, or it tears the socket down.
fn action_for_failure(action: &str) -> Action {
    if action == "scrape" {
        Action::Scrape
    } else {
        Action::Announce
    }
}

fn fail(
    action: Action,
    info_hash: Option<InfoHash>,
    kind: &'static str,
    reason: impl Into<String>,
) -> ParseError {
    ParseError {
        reason: reason.into(),
        action,
        info_hash,
        kind,
    }
}

fn id_failure(field: &str, err: IdError, info_hash: Option<InfoHash>) -> ParseError {
    fail(
        Action::Announce,
        info_hash,
        "invalid_id",
        format!("invalid {field}: {err}"),
    )
}

fn validate(raw: RawMessage<'_>, limits: &ParseLimits) -> Result<InMessage, ParseError> {
    match raw.action.as_deref() {
        Some("announce") => validate_announce(raw, limits),
        Some("scrape") => validate_scrape(raw, limits),
        Some(other) => Err(fail(
            Action::Announce,
            single_info_hash(&raw.info_hash),
            "unknown_action",
            format!(
                "unknown action {:?}: expected \"announce\" or \"scrape\"",
                truncate(other)
            ),
        )),
        None => Err(fail(
            Action::Announce,
            single_info_hash(&raw.info_hash),
            "missing_field",
            "missing field `action`",
        )),
    }
}

fn single_info_hash(raw: &Option<RawInfoHash>) -> Option<InfoHash> {
    match raw {
        Some(RawInfoHash::One(RawId(Ok(bytes)))) => Some(InfoHash(*bytes)),
        _ => None,
    }
}

/// Echoing attacker-chosen text into failures and logs is fine, but not megabytes of it.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(32) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

fn required_id<T>(
    field: &str,
    value: Option<RawId>,
    make: impl Fn([u8; ID_LEN]) -> T,
    info_hash: Option<InfoHash>,
) -> Result<T, ParseError> {
    match value {
        Some(RawId(decoded)) => decoded
            .map(make)
            .map_err(|err| id_failure(field, err, info_hash)),
        None => Err(fail(
            Action::Announce,
            info_hash,
            "missing_field",
            format!("missing field `{field}`"),
        )),
    }
}

fn sdp_body(
    raw: Option<RawSdp<'_>>,
    expected_type: &str,
    field: &str,
    limits: &ParseLimits,
    info_hash: InfoHash,
) -> Result<Sdp, ParseError> {
    let Some(raw) = raw else {
        return Err(fail(
            Action::Announce,
            Some(info_hash),
            "missing_field",
            format!("missing field `{field}`"),
        ));
    };
    // A missing `type` is tolerated (we rebuild the object with the right one on relay);
    // a wrong one means the client confused offers and answers.
    if let Some(kind) = raw.kind.as_deref() {
        if kind != expected_type {
            return Err(fail(
                Action::Announce,
                Some(info_hash),
                "invalid_field",
                format!(
                    "{field}.type must be {expected_type:?}, got {:?}",
                    truncate(kind)
                ),
            ));
        }
    }
    // `null` reads as absent, as it does for every optional field (serde's `Option`).
    let Some(raw_sdp) = raw.sdp.filter(|raw| raw.get() != "null") else {
        return Err(fail(
            Action::Announce,
            Some(info_hash),
            "missing_field",
            format!("missing field `{field}.sdp`"),
        ));
    };
    // Measured before anything is copied: the escaped body without its quotes.
    let escaped_len = escaped_len_of(raw_sdp.get());
    if escaped_len > limits.max_sdp_bytes {
        return Err(fail(
            Action::Announce,
            Some(info_hash),
            "sdp_too_large",
            format!(
                "{field}.sdp is {escaped_len} bytes, the limit is {}",
                limits.max_sdp_bytes
            ),
        ));
    }
    Sdp::from_raw(raw_sdp).ok_or_else(|| {
        fail(
            Action::Announce,
            Some(info_hash),
            "invalid_field",
            format!("{field}.sdp must be a string"),
        )
    })
}

fn validate_announce(raw: RawMessage<'_>, limits: &ParseLimits) -> Result<InMessage, ParseError> {
    let info_hash = match &raw.info_hash {
        Some(RawInfoHash::One(RawId(decoded))) => decoded
            .map(InfoHash)
            .map_err(|err| id_failure("info_hash", err, None))?,
        Some(RawInfoHash::Many(_)) => {
            return Err(fail(
                Action::Announce,
                None,
                "invalid_field",
                "info_hash of an announce must be a string, not an array",
            ))
        }
        None => {
            return Err(fail(
                Action::Announce,
                None,
                "missing_field",
                "missing field `info_hash`",
            ))
        }
    };
    let known = Some(info_hash);
    let peer_id = required_id("peer_id", raw.peer_id, PeerId, known)?;

    if raw.answer.is_some() {
        let to_peer_id = required_id("to_peer_id", raw.to_peer_id, PeerId, known)?;
        let offer_id = required_id("offer_id", raw.offer_id, OfferId, known)?;
        let sdp = sdp_body(raw.answer, "answer", "answer", limits, info_hash)?;
        return Ok(InMessage::Answer(AnswerRequest {
            info_hash,
            peer_id,
            to_peer_id,
            offer_id,
            sdp,
        }));
    }

    let event = match raw.event.as_deref() {
        None | Some("") | Some("update") | Some("paused") => AnnounceEvent::Update,
        Some("started") => AnnounceEvent::Started,
        Some("completed") => AnnounceEvent::Completed,
        Some("stopped") => AnnounceEvent::Stopped,
        Some(other) => {
            return Err(fail(
                Action::Announce,
                known,
                "invalid_field",
                format!(
                    "unknown event {:?}: expected started, completed, stopped or update",
                    truncate(other)
                ),
            ))
        }
    };

    let left_is_zero = match raw.left {
        Some(left) if left < 0.0 => {
            return Err(fail(
                Action::Announce,
                known,
                "invalid_field",
                "left must not be negative",
            ))
        }
        Some(left) => Some(left == 0.0),
        None => None,
    };

    let numwant = match raw.numwant {
        Some(numwant) if numwant < 0.0 => {
            return Err(fail(
                Action::Announce,
                known,
                "invalid_field",
                "numwant must not be negative",
            ))
        }
        // Saturating float -> integer conversion: 1e300 becomes usize::MAX, then capped by
        // the offers actually sent. A fraction is rounded down.
        Some(numwant) => Some(numwant as usize),
        None => None,
    };

    // The reference client (npm bittorrent-tracker) never sends offers with `stopped` or
    // `completed`; if one does, they are ignored rather than relayed for a peer that is
    // leaving.
    let mut offers = Vec::new();
    if matches!(event, AnnounceEvent::Started | AnnounceEvent::Update) {
        if let Some(raw_offers) = raw.offers {
            offers.reserve(raw_offers.len().min(limits.max_offers));
            for raw_offer in raw_offers.into_iter().take(limits.max_offers) {
                let offer_id = required_id("offer_id", raw_offer.offer_id, OfferId, known)?;
                let sdp = sdp_body(raw_offer.offer, "offer", "offer", limits, info_hash)?;
                offers.push(Offer { offer_id, sdp });
            }
        }
    }

    Ok(InMessage::Announce(AnnounceRequest {
        info_hash,
        peer_id,
        event,
        left_is_zero,
        numwant,
        offers,
    }))
}

fn validate_scrape(raw: RawMessage<'_>, limits: &ParseLimits) -> Result<InMessage, ParseError> {
    let scrape_failure = |kind, reason: String| fail(Action::Scrape, None, kind, reason);
    let ids: Vec<RawId> = match raw.info_hash {
        None => return Ok(InMessage::Scrape(ScrapeRequest::All)),
        Some(RawInfoHash::One(id)) => vec![id],
        Some(RawInfoHash::Many(ids)) => ids,
    };
    if ids.len() > limits.max_scrape_hashes {
        return Err(scrape_failure(
            "too_many_hashes",
            format!(
                "scrape asks for {} info_hashes, the limit is {}",
                ids.len(),
                limits.max_scrape_hashes
            ),
        ));
    }
    let hashes = ids
        .into_iter()
        .map(|RawId(decoded)| {
            decoded
                .map(InfoHash)
                .map_err(|err| scrape_failure("invalid_id", format!("invalid info_hash: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InMessage::Scrape(ScrapeRequest::Some(hashes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = r#""\u0001\u0002\"\\aaaaaaaaaaaaaaaa""#;

    fn hash_bytes() -> [u8; ID_LEN] {
        let mut bytes = [b'a'; ID_LEN];
        bytes[..4].copy_from_slice(&[1, 2, b'"', b'\\']);
        bytes
    }

    #[test]
    fn escaped_ids_decode_whether_alone_or_in_a_scrape_array() {
        let limits = ParseLimits::default();
        let one = format!(r#"{{"action":"scrape","info_hash":{HASH}}}"#);
        let many = format!(r#"{{"action":"scrape","info_hash":[{HASH},{HASH}]}}"#);
        assert_eq!(
            parse(&one, &limits),
            Ok(InMessage::Scrape(ScrapeRequest::Some(vec![InfoHash(
                hash_bytes()
            )])))
        );
        assert_eq!(
            parse(&many, &limits),
            Ok(InMessage::Scrape(ScrapeRequest::Some(vec![
                InfoHash(
                    hash_bytes()
                );
                2
            ])))
        );
    }

    #[test]
    fn a_bad_id_is_named_and_the_readable_info_hash_echoed() {
        let text = format!(
            r#"{{"action":"announce","info_hash":{HASH},"peer_id":"short","event":"started"}}"#
        );
        let err = parse(&text, &ParseLimits::default()).expect_err("refused");
        assert_eq!(err.kind, "invalid_id");
        assert_eq!(err.reason, "invalid peer_id: must be 20 characters, got 5");
        assert_eq!(err.info_hash, Some(InfoHash(hash_bytes())));
    }

    #[test]
    fn an_info_hash_of_another_json_type_is_a_typed_failure() {
        for value in ["7", "{}", "[7]", "null"] {
            let text = format!(r#"{{"action":"announce","info_hash":{value}}}"#);
            let err = parse(&text, &ParseLimits::default()).expect_err("refused");
            assert_eq!(err.action, Action::Announce, "{value}");
            assert!(
                matches!(err.kind, "invalid_field" | "missing_field"),
                "{value}: {err:?}"
            );
        }
    }
}
