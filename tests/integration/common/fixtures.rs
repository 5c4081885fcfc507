//! Test data: settings for the server under test, deterministic ids, SDPs and announces.

use p2p_mediastream::{
    protocol::{InfoHash, OfferId, PeerId},
    Settings,
};
use serde_json::json;

/// Settings for tests: loopback, port 0, small worker/shard counts, a temp-free layout.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.http.public_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/public").into();
    settings.http.hls_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/hls").into();
    settings
}

/// A settings change for idle-timeout tests: the server pings every second and closes a
/// socket it has heard nothing from for 2 s.
pub fn short_idle_timeout(settings: &mut Settings) {
    settings.ws.ping_interval_secs = 1;
    settings.ws.idle_timeout_secs = 2;
}

/// Deterministic 20-byte ids for tests; `n` picks the id, `tag` keeps kinds apart.
fn id_bytes(tag: u8, n: u32) -> [u8; 20] {
    let mut bytes = [b'0'; 20];
    bytes[0] = tag;
    let digits = format!("{n:019}");
    bytes[1..].copy_from_slice(digits.as_bytes());
    bytes
}

pub fn info_hash(n: u32) -> InfoHash {
    InfoHash(id_bytes(b'h', n))
}

pub fn peer_id(n: u32) -> PeerId {
    PeerId(id_bytes(b'p', n))
}

/// Offer ids are binary in real clients; include bytes above 0x7F and control bytes.
pub fn offer_id(n: u32) -> OfferId {
    let mut bytes = id_bytes(b'o', n);
    bytes[1] = 0xE9;
    bytes[2] = 0x03;
    bytes[3] = b'"';
    OfferId(bytes)
}

/// An SDP-like body (CRLF line ends, as real ones) whose JSON-escaped form, the size
/// `tracker.max_sdp_bytes` bounds, is exactly `len` bytes (below 35 bytes, just filler).
pub fn fake_sdp(len: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n");
    if escaped_len(&sdp) > len {
        return "x".repeat(len);
    }
    // A line "a=x\r\n" is 5 bytes of text and 7 once escaped.
    while escaped_len(&sdp) + 7 <= len {
        sdp.push_str("a=x\r\n");
    }
    while escaped_len(&sdp) < len {
        sdp.push('x');
    }
    sdp
}

/// Bytes of `sdp` in a JSON string, without the quotes.
pub fn escaped_len(sdp: &str) -> usize {
    serde_json::to_string(sdp).map_or(0, |json| json.len() - 2)
}

/// An announce as JSON, with offers (id, SDP) and an arbitrary `numwant` value (`None`:
/// the field is absent).
pub fn announce_value(
    swarm: InfoHash,
    peer: PeerId,
    offers: &[(OfferId, String)],
    numwant: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut value = json!({
        "action": "announce",
        "info_hash": swarm.to_wire(),
        "peer_id": peer.to_wire(),
        "uploaded": 0,
        "downloaded": 0,
        "offers": offers
            .iter()
            .map(|(id, sdp)| json!({"offer_id": id.to_wire(), "offer": {"type": "offer", "sdp": sdp}}))
            .collect::<Vec<_>>(),
    });
    if let Some(numwant) = numwant {
        value["numwant"] = numwant;
    }
    value
}

/// `count` offers with ids `offer_id(base)` and up, each with a `fake_sdp(sdp_len)`.
pub fn offers(base: u32, count: u32, sdp_len: usize) -> Vec<(OfferId, String)> {
    (0..count)
        .map(|n| (offer_id(base + n), fake_sdp(sdp_len)))
        .collect()
}
