//! Any bytes a client could send as a text frame: the parser must return a request or a
//! failure that carries an action, and never panic. Valid requests must survive a round
//! trip through the client codec; the tracker-reply parser must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_mediastream::protocol::{
    client::parse_tracker_message, parse, InMessage, OutMessage, ParseLimits,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = ParseLimits::default();
    match parse(text, &limits) {
        Ok(InMessage::Announce(request)) => {
            assert!(request.offers.len() <= limits.max_offers);
            for offer in &request.offers {
                assert!(offer.sdp.escaped_len() <= limits.max_sdp_bytes);
            }
            let reply = OutMessage::AnnounceResponse {
                info_hash: request.info_hash,
                counts: Default::default(),
                interval_secs: 120,
            };
            let echoed = parse_tracker_message(&reply.to_text()).expect("our reply parses");
            assert!(matches!(echoed, p2p_mediastream::protocol::client::TrackerMessage::AnnounceResponse { info_hash, .. } if info_hash == request.info_hash));
        }
        Ok(InMessage::Answer(request)) => {
            assert!(request.sdp.escaped_len() <= limits.max_sdp_bytes)
        }
        Ok(InMessage::Scrape(_)) => {}
        Err(err) => {
            // The failure must serialise to JSON with `failure reason` and `action`.
            let failure = OutMessage::Failure {
                reason: err.reason.into(),
                action: err.action,
                info_hash: err.info_hash,
            };
            let value: serde_json::Value =
                serde_json::from_str(&failure.to_text()).expect("failure is JSON");
            assert!(value.get("failure reason").is_some());
            assert!(value.get("action").is_some());
        }
    }
    let _ = parse_tracker_message(text);
});
