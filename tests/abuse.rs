//! Abuse battery: hostile or broken clients, each checked for its exact outcome and for
//! an honest pair of peers in another swarm that must keep signalling normally
//! (`HonestPair::assert_unaffected`).
//!
//! Covered here (not in limits.rs / malformed.rs): fragmentation abuse, ids outside
//! U+00FF, offer/SDP/numwant abuse, forged answers, peer_id takeover, rate-limit floods
//! (text and ping), per-connection caps, per-IP caps behind proxies, slow readers,
//! half-open and slowloris connections, bad upgrades, and huge-but-legal JSON.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use p2p_mediastream::protocol::{
    client::{announce_text, answer_text, TrackerMessage},
    InfoHash, OfferId, PeerId,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An announce as JSON, with offers and an arbitrary `numwant` value (or none).
fn announce_value(
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

fn offers(base: u32, count: u32, sdp_len: usize) -> Vec<(OfferId, String)> {
    (0..count)
        .map(|n| (offer_id(base + n), fake_sdp(sdp_len)))
        .collect()
}

/// `count` peers (one socket each) joined to `swarm`, ids from `base`.
async fn joined_peers(app: &TestApp, swarm: InfoHash, base: u32, count: u32) -> Vec<TestPeer> {
    let mut peers = Vec::new();
    for n in 0..count {
        let mut peer = app.peer().await;
        let (_, incomplete) = peer
            .announce_counts(swarm, peer_id(base + n), Some("started"))
            .await;
        assert_eq!(incomplete, u64::from(n) + 1);
        peers.push(peer);
    }
    peers
}

/// How many offers each peer received until quiet; fails on any other frame.
async fn offers_received(peers: &mut [TestPeer], from: PeerId) -> Vec<usize> {
    let mut counts = Vec::new();
    for peer in peers.iter_mut() {
        let frames = peer.drain_json().await;
        for frame in &frames {
            assert!(frame.get("offer").is_some(), "unexpected frame: {frame}");
            assert_eq!(frame["peer_id"], from.to_wire());
        }
        counts.push(frames.len());
    }
    counts
}

/// (complete, incomplete) of `swarm` by scrape from a fresh socket.
async fn scrape_counts(app: &TestApp, swarm: InfoHash) -> (u64, u64) {
    let mut probe = app.peer().await;
    probe
        .send_json(json!({"action": "scrape", "info_hash": swarm.to_wire()}))
        .await;
    let reply = probe.recv_json().await;
    let file = &reply["files"][swarm.to_wire()];
    let counts = (
        file["complete"].as_u64().expect("complete"),
        file["incomplete"].as_u64().expect("incomplete"),
    );
    probe.close().await;
    counts
}

fn assert_failure(value: &serde_json::Value, swarm: Option<InfoHash>, contains: &str) {
    let reason = value["failure reason"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a failure, got {value}"));
    assert!(
        reason.contains(contains),
        "failure {reason:?} should contain {contains:?}"
    );
    assert_eq!(value["action"], "announce", "{value}");
    if let Some(swarm) = swarm {
        assert_eq!(value["info_hash"], swarm.to_wire(), "{value}");
    }
}

/// Waits until /stats.json counts `open` WebSocket connections.
async fn wait_connections(app: &TestApp, open: u64) {
    wait_for_stats(app, |stats| websockets(stats) == open).await;
}

// ---------------------------------------------------------------------------------------
// Fragmentation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn more_than_64_fragments_close_with_1008() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::TEXT, b"{")
        .await
        .expect("send");
    for _ in 0..64 {
        raw.send_frame(false, opcode::CONTINUATION, b" ")
            .await
            .expect("send");
    }
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1008));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn exactly_64_fragments_are_reassembled() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    let text = announce_text(info_hash(1), peer_id(1), Some("started"), None, &[]);
    let bytes = text.as_bytes();
    // 64 frames: the first, 62 continuations and the last.
    let chunk = bytes.len().div_ceil(64);
    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    assert!(pieces.len() <= 64);
    let mut frames: Vec<&[u8]> = pieces.clone();
    while frames.len() < 64 {
        frames.push(b"");
    }
    for (index, piece) in frames.iter().enumerate() {
        let opcode = if index == 0 {
            opcode::TEXT
        } else {
            opcode::CONTINUATION
        };
        raw.send_frame(index == 63, opcode, piece)
            .await
            .expect("send");
    }
    let reply = raw.recv_json().await;
    assert_eq!(reply["incomplete"], 1, "{reply}");
    assert_eq!(reply["info_hash"], info_hash(1).to_wire());
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn empty_continuation_flood_closes_with_1008() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    // One write: a first frame and a thousand empty continuations.
    let mut flood = client_frame(false, opcode::TEXT, b"");
    for _ in 0..1000 {
        flood.extend(client_frame(false, opcode::CONTINUATION, b""));
    }
    raw.stream.write_all(&flood).await.expect("send flood");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1008));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn one_byte_fragment_flood_closes_with_1008() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    let mut flood = client_frame(false, opcode::TEXT, b"[");
    for _ in 0..500 {
        flood.extend(client_frame(false, opcode::CONTINUATION, b"1"));
    }
    raw.stream.write_all(&flood).await.expect("send flood");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1008));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn final_continuation_without_a_first_frame_closes_with_1002() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(true, opcode::CONTINUATION, b"{}")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1002));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn unfinished_continuation_without_a_first_frame_closes_with_1002() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::CONTINUATION, b"{")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1002));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn final_text_frame_inside_a_fragmented_message_closes_with_1002() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::TEXT, b"{\"action\":")
        .await
        .expect("send");
    raw.send_text(&announce_text(info_hash(1), peer_id(1), None, None, &[]))
        .await;
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1002));
    wait_connections(&app, 2).await;
    assert_eq!(scrape_counts(&app, info_hash(1)).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn unfinished_text_frame_inside_a_fragmented_message_closes_with_1002() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::TEXT, b"{")
        .await
        .expect("send");
    raw.send_frame(false, opcode::TEXT, b"{")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1002));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn binary_frame_inside_a_fragmented_text_message_closes_with_1002() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::TEXT, b"{")
        .await
        .expect("send");
    raw.send_frame(true, opcode::BINARY, b"}")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1002));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn fragmented_binary_message_closes_with_1003() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::BINARY, b"\x00\x01")
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, b"\x02")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1003));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn fragmented_message_above_the_message_cap_closes_with_1009() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    // Each frame is within the 64 KiB frame cap; together they are not.
    let piece = vec![b' '; 40 * 1024];
    raw.send_frame(false, opcode::TEXT, &piece)
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, &piece)
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1009));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn fragmented_message_exactly_at_the_message_cap_is_accepted() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    let base = announce_value(info_hash(1), peer_id(1), &[], None);
    let empty = {
        let mut value = base.clone();
        value["pad"] = json!("");
        value.to_string().len()
    };
    let mut value = base;
    value["pad"] = json!("x".repeat(65_536 - empty));
    let text = value.to_string();
    assert_eq!(text.len(), 65_536);
    let (first, rest) = text.as_bytes().split_at(30_000);
    raw.send_frame(false, opcode::TEXT, first)
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, rest)
        .await
        .expect("send");
    let reply = raw.recv_json().await;
    assert_eq!(reply["incomplete"], 1, "{reply}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn utf8_character_split_across_fragments_is_reassembled() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    // A peer_id with 0xE9 travels as C3 A9; cut the message between those two bytes.
    let mut peer = peer_id(1);
    peer.0[5] = 0xE9;
    let text = announce_text(info_hash(1), peer, None, None, &[]);
    let bytes = text.as_bytes();
    let cut = bytes
        .windows(2)
        .position(|pair| pair == [0xC3, 0xA9])
        .expect("two-byte character")
        + 1;
    raw.send_frame(false, opcode::TEXT, &bytes[..cut])
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, &bytes[cut..])
        .await
        .expect("send");
    let reply = raw.recv_json().await;
    assert_eq!(reply["incomplete"], 1, "{reply}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_message_closes_with_1007() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    raw.send_frame(false, opcode::TEXT, b"{\"action\":\"")
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, b"\xff\xfe\"}")
        .await
        .expect("send");
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(1007));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn pings_between_fragments_are_answered_and_the_message_completes() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    let text = announce_text(info_hash(1), peer_id(1), None, None, &[]);
    let (first, rest) = text.as_bytes().split_at(10);
    raw.send_frame(false, opcode::TEXT, first)
        .await
        .expect("send");
    raw.send_frame(true, opcode::PING, b"mid")
        .await
        .expect("send");
    raw.send_frame(true, opcode::CONTINUATION, rest)
        .await
        .expect("send");
    let mut pong = false;
    loop {
        match raw.read_frame(RECV_TIMEOUT).await {
            RawEvent::Frame {
                opcode: opcode::PONG,
                payload,
                ..
            } => {
                assert_eq!(payload, b"mid");
                pong = true;
            }
            RawEvent::Frame {
                opcode: opcode::TEXT,
                payload,
                ..
            } => {
                let reply: serde_json::Value = serde_json::from_slice(&payload).expect("json");
                assert_eq!(reply["incomplete"], 1, "{reply}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pong,
        "the ping inside the fragmented message got its pong first"
    );
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Ids outside U+00FF
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn info_hash_with_a_character_above_u00ff_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let mut value = announce_value(info_hash(1), peer_id(1), &[], None);
    value["info_hash"] = json!(format!("{}\u{0100}", &info_hash(1).to_wire()[..19]));
    abuser.send_json(value).await;
    let failure = abuser.recv_failure().await;
    assert_failure(
        &failure,
        None,
        "invalid info_hash: has a character above U+00FF",
    );
    // The socket stays usable.
    assert_eq!(
        abuser.announce_counts(info_hash(1), peer_id(1), None).await,
        (0, 1)
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn peer_id_with_an_astral_character_escape_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    // 19 ASCII characters and one emoji written as a JSON surrogate pair.
    let text = format!(
        r#"{{"action":"announce","info_hash":{},"peer_id":"-XX0001-0123456789a\ud83d\ude00"}}"#,
        serde_json::to_string(&swarm.to_wire()).expect("json")
    );
    abuser.send_text(text).await;
    let failure = abuser.recv_failure().await;
    assert_failure(
        &failure,
        Some(swarm),
        "invalid peer_id: has a character above U+00FF",
    );
    assert_eq!(scrape_counts(&app, swarm).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn lone_surrogate_escape_in_an_id_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    abuser
        .send_text(r#"{"action":"announce","info_hash":"0123456789012345678\ud800","peer_id":"-XX0001-0123456789ab"}"#)
        .await;
    let failure = abuser.recv_failure().await;
    assert_failure(&failure, None, "invalid message");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_id_above_u00ff_is_refused_and_nothing_is_relayed() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 2).await;
    let mut abuser = app.peer().await;
    let mut value = announce_value(swarm, peer_id(1), &offers(1, 1, 100), Some(json!(1)));
    value["offers"][0]["offer_id"] = json!("\u{2603}123456789012345678X");
    abuser.send_json(value).await;
    let failure = abuser.recv_failure().await;
    assert_failure(
        &failure,
        Some(swarm),
        "invalid offer_id: has a character above U+00FF",
    );
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn to_peer_id_above_u00ff_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let mut value: serde_json::Value = serde_json::from_str(&answer_text(
        swarm,
        peer_id(2),
        peer_id(1),
        offer,
        "v=0 answer",
    ))
    .expect("json");
    value["to_peer_id"] = json!("\u{0101}".repeat(20));
    answerer.send_json(value).await;
    let failure = answerer.recv_failure().await;
    assert_failure(
        &failure,
        Some(swarm),
        "invalid to_peer_id: has a character above U+00FF",
    );
    offerer.expect_silence().await;
    // The offer is still answerable.
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Offers, SDP, numwant
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn offers_above_max_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| settings.tracker.max_offers = 3);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 6).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 12, 200),
            Some(json!(12)),
        ))
        .await;
    let reply = abuser.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (0, 7));
    abuser.expect_silence().await;
    let received = offers_received(&mut receivers, peer_id(1)).await;
    assert_eq!(received.iter().sum::<usize>(), 3, "{received:?}");
    assert!(
        received.iter().all(|&n| n <= 1),
        "distinct receivers: {received:?}"
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_thousand_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 128 * 1024;
        settings.ws.max_message_bytes = 128 * 1024;
    });
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 12).await;
    let mut abuser = app.peer().await;
    let value = announce_value(swarm, peer_id(1), &offers(1, 1000, 1), None);
    let text = value.to_string();
    assert!(text.len() < 128 * 1024, "fits one frame: {}", text.len());
    abuser.send_text(text).await;
    let reply = abuser.recv_announce_reply().await;
    assert_eq!(reply.incomplete, 13);
    abuser.expect_silence().await;
    let received = offers_received(&mut receivers, peer_id(1)).await;
    assert_eq!(received.iter().sum::<usize>(), 10, "{received:?}");
    assert!(received.iter().all(|&n| n <= 1), "{received:?}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_sdp_above_the_limit_is_refused_and_nothing_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 2).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 2, 1025),
            Some(json!(2)),
        ))
        .await;
    let failure = abuser.recv_failure().await;
    assert_failure(
        &failure,
        Some(swarm),
        "offer.sdp is 1025 bytes, the limit is 1024",
    );
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2), "not registered");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_sdp_exactly_at_the_limit_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 1).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 1, 1024),
            Some(json!(1)),
        ))
        .await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 2);
    match receivers[0].recv().await {
        TrackerMessage::Offer { sdp, .. } => assert_eq!(sdp.len(), 1024),
        other => panic!("expected the offer, got {other:?}"),
    }
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_sdp_above_the_limit_is_refused_and_not_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, &fake_sdp(1025))
        .await;
    let failure = answerer.recv_failure().await;
    assert_failure(
        &failure,
        Some(swarm),
        "answer.sdp is 1025 bytes, the limit is 1024",
    );
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

/// numwant 1e300 saturates: the offers sent are the only cap.
#[tokio::test]
async fn numwant_1e300_is_capped_by_the_offers_sent() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 3).await;
    let mut abuser = app.peer().await;
    let text = announce_value(swarm, peer_id(1), &offers(1, 2, 50), Some(json!(0)))
        .to_string()
        .replace("\"numwant\":0", "\"numwant\":1e300");
    assert!(text.contains("1e300"));
    abuser.send_text(text).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 4);
    let received = offers_received(&mut receivers, peer_id(1)).await;
    assert_eq!(received.iter().sum::<usize>(), 2, "{received:?}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn negative_numwant_is_refused_and_nothing_is_relayed() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 2).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 2, 50),
            Some(json!(-1)),
        ))
        .await;
    let failure = abuser.recv_failure().await;
    assert_failure(&failure, Some(swarm), "numwant must not be negative");
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    honest.assert_unaffected().await;
}

/// numwant 0.5 rounds down to 0: the peer is registered, no offer is relayed.
#[tokio::test]
async fn fractional_numwant_rounds_down() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 2).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 2, 50),
            Some(json!(0.5)),
        ))
        .await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 3);
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn numwant_as_a_string_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(&app, swarm, 100, 2).await;
    let mut abuser = app.peer().await;
    abuser
        .send_json(announce_value(
            swarm,
            peer_id(1),
            &offers(1, 2, 50),
            Some(json!("5")),
        ))
        .await;
    let failure = abuser.recv_failure().await;
    assert_failure(&failure, Some(swarm), "invalid message");
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// Peer 1 (first socket) made offer 1 in swarm 1 and it reached peer 2 (second socket).
async fn relayed_offer(app: &TestApp) -> (TestPeer, TestPeer, InfoHash, OfferId) {
    let swarm = info_hash(1);
    let mut offerer = app.peer().await;
    let mut answerer = app.peer().await;
    assert_eq!(
        offerer
            .announce_counts(swarm, peer_id(1), Some("started"))
            .await,
        (0, 1)
    );
    assert_eq!(
        answerer
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
        (0, 2)
    );
    let offer = offer_id(1);
    offerer
        .announce(swarm, peer_id(1), None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
    match answerer.recv().await {
        TrackerMessage::Offer { offer_id, .. } => assert_eq!(offer_id, offer),
        other => panic!("expected the offer, got {other:?}"),
    }
    (offerer, answerer, swarm, offer)
}

const UNKNOWN_OFFER: &str = "no offer with that offer_id from to_peer_id was relayed to you";

#[tokio::test]
async fn answer_to_an_unknown_offer_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, _) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(999), "v=0 answer")
        .await;
    assert_failure(&answerer.recv_failure().await, Some(swarm), UNKNOWN_OFFER);
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_in_a_swarm_the_socket_never_joined_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, _, offer) = relayed_offer(&app).await;
    let elsewhere = info_hash(2);
    answerer
        .answer(elsewhere, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_failure(
        &answerer.recv_failure().await,
        Some(elsewhere),
        UNKNOWN_OFFER,
    );
    offerer.expect_silence().await;
    assert_eq!(
        scrape_counts(&app, elsewhere).await,
        (0, 0),
        "no swarm created"
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_routed_through_another_joined_swarm_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    // Both are also in swarm 2, but the offer was made in swarm 1.
    let other = info_hash(2);
    offerer.announce_counts(other, peer_id(1), None).await;
    answerer.announce_counts(other, peer_id(2), None).await;
    answerer
        .answer(other, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_failure(&answerer.recv_failure().await, Some(other), UNKNOWN_OFFER);
    offerer.expect_silence().await;
    // The right swarm still routes it.
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_with_a_forged_to_peer_id_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let mut victim = app.peer().await;
    victim.announce_counts(swarm, peer_id(3), None).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(3), offer, "v=0 forged")
        .await;
    assert_failure(&answerer.recv_failure().await, Some(swarm), UNKNOWN_OFFER);
    victim.expect_silence().await;
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_a_connection_the_offer_was_not_relayed_to_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, _answerer, swarm, offer) = relayed_offer(&app).await;
    let mut intruder = app.peer().await;
    intruder.announce_counts(swarm, peer_id(3), None).await;
    // The intruder claims to be peer 2 in its answer.
    intruder
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 stolen")
        .await;
    assert_failure(
        &intruder.recv_failure().await,
        Some(swarm),
        "that offer was relayed to another connection",
    );
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_replayed_answer_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer again")
        .await;
    assert_failure(&answerer.recv_failure().await, Some(swarm), UNKNOWN_OFFER);
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// A peer_id claimed by two sockets: the last writer wins; `stopped` and answers only
// from the owner.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn peer_id_claimed_by_two_sockets_last_writer_wins() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let claimed = peer_id(1);
    let mut first = app.peer().await;
    let mut second = app.peer().await;
    let mut offerer = app.peer().await;
    assert_eq!(
        first.announce_counts(swarm, claimed, Some("started")).await,
        (0, 1)
    );
    assert_eq!(
        second
            .announce_counts(swarm, claimed, Some("started"))
            .await,
        (0, 1)
    );
    assert_eq!(
        offerer
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
        (0, 2)
    );

    // The offer goes to the claimed peer_id's new owner.
    let offer = offer_id(1);
    offerer
        .announce(swarm, peer_id(2), None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
    assert!(matches!(second.recv().await, TrackerMessage::Offer { .. }));
    first.expect_silence().await;

    // The old owner cannot stop it...
    assert_eq!(
        first.announce_counts(swarm, claimed, Some("stopped")).await,
        (0, 2)
    );
    // ...nor remove it by closing.
    first.close().await;
    wait_connections(&app, 4).await;
    assert_eq!(
        offerer.announce_counts(swarm, peer_id(2), None).await,
        (0, 2)
    );

    // The owner answers, and its `stopped` counts.
    second
        .answer(swarm, claimed, peer_id(2), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    assert_eq!(
        second
            .announce_counts(swarm, claimed, Some("stopped"))
            .await,
        (0, 1)
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_the_previous_owner_of_a_peer_id_is_refused() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let claimed = peer_id(1);
    let mut first = app.peer().await;
    let mut second = app.peer().await;
    let mut offerer = app.peer().await;
    first.announce_counts(swarm, claimed, Some("started")).await;
    second
        .announce_counts(swarm, claimed, Some("started"))
        .await;
    offerer
        .announce_counts(swarm, peer_id(2), Some("started"))
        .await;
    let offer = offer_id(1);
    offerer
        .announce(swarm, peer_id(2), None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
    assert!(matches!(second.recv().await, TrackerMessage::Offer { .. }));
    first
        .answer(swarm, claimed, peer_id(2), offer, "v=0 spoofed")
        .await;
    assert_failure(
        &first.recv_failure().await,
        Some(swarm),
        "that offer was relayed to another connection",
    );
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Rate limits (ws.max_messages_per_sec=5, message_burst=10, max_rate_limited_messages=20)
// ---------------------------------------------------------------------------------------

fn rate_limited_settings() -> p2p_mediastream::Settings {
    let mut settings = test_settings();
    settings.ws.max_messages_per_sec = 5;
    settings.ws.message_burst = 10;
    settings.ws.max_rate_limited_messages = 20;
    settings
}

fn is_rate_failure(value: &serde_json::Value) -> bool {
    value["failure reason"]
        .as_str()
        .is_some_and(|reason| reason.contains("rate limit"))
        && value["action"] == "announce"
}

#[tokio::test]
async fn announce_flood_is_refused_beyond_the_burst_then_closed_with_1008() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    let text = announce_text(swarm, peer_id(1), None, None, &[]);
    for _ in 0..30 {
        abuser.send_text(text.clone()).await;
    }
    let mut frames: Vec<serde_json::Value> = Vec::new();
    let mut extra_batches = 0;
    let code = loop {
        match abuser.next_event(Duration::from_millis(600)).await {
            Received::Text(text) => frames.push(serde_json::from_str(&text).expect("json")),
            Received::Closed(frame) => break frame.map(|frame| u16::from(frame.code)),
            Received::Timeout => {
                // Tokens refilled during the flood let a few more through; keep flooding.
                extra_batches += 1;
                assert!(extra_batches <= 5, "never closed; got {frames:?}");
                for _ in 0..10 {
                    let _ = abuser.send_raw(Message::text(text.clone())).await;
                }
            }
            Received::Error(err) => panic!("connection error before the close: {err}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(frames.len() > 10, "{frames:?}");
    for (index, frame) in frames.iter().take(10).enumerate() {
        assert_eq!(frame["action"], "announce", "frame {index}: {frame}");
        assert!(frame["incomplete"].is_u64(), "frame {index}: {frame}");
    }
    assert!(
        is_rate_failure(&frames[10]),
        "the 11th message is refused: {}",
        frames[10]
    );
    let refused = frames.iter().filter(|frame| is_rate_failure(frame)).count();
    assert_eq!(refused, 19, "the 20th refusal closes instead of answering");
    assert!(frames
        .iter()
        .all(|frame| is_rate_failure(frame) || frame["incomplete"] == 1));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn ping_flood_gets_no_pong_beyond_the_burst_then_closed_with_1008() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    for n in 0u8..30 {
        abuser
            .send_raw(Message::Ping(vec![n].into()))
            .await
            .expect("send ping");
    }
    let mut pongs: Vec<u8> = Vec::new();
    let mut extra_batches = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_millis(600), abuser.ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => pongs.push(payload[0]),
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|frame| u16::from(frame.code)),
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(err))) => panic!("connection error before the close: {err}"),
            Ok(None) => break None,
            Err(_) => {
                extra_batches += 1;
                assert!(extra_batches <= 5, "never closed; pongs {pongs:?}");
                for _ in 0..10 {
                    let _ = abuser.send_raw(Message::Ping(vec![99].into())).await;
                }
            }
        }
    };
    assert_eq!(code, Some(1008));
    assert!(pongs.len() >= 10, "{pongs:?}");
    assert_eq!(&pongs[..10], &(0u8..10).collect::<Vec<_>>()[..]);
    // Of the first 30 pings, only a refill's worth beyond the burst is answered.
    assert!(
        pongs.iter().filter(|&&n| n < 30).count() <= 12,
        "pings beyond the burst got pongs: {pongs:?}"
    );
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn pings_and_text_messages_share_one_bucket() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    for n in 0u8..10 {
        abuser
            .send_raw(Message::Ping(vec![n].into()))
            .await
            .expect("send ping");
    }
    abuser
        .announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    // Pongs are skipped by recv_json; the announce is refused.
    let failure = abuser.recv_failure().await;
    assert!(is_rate_failure(&failure), "{failure}");
    assert_eq!(scrape_counts(&app, info_hash(1)).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_rate_limited_socket_recovers_as_the_bucket_refills() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    let scrape = json!({"action": "scrape", "info_hash": []}).to_string();
    for _ in 0..11 {
        abuser.send_text(scrape.clone()).await;
    }
    for _ in 0..10 {
        assert_eq!(abuser.recv_json().await["action"], "scrape");
    }
    assert!(is_rate_failure(&abuser.recv_json().await));
    // Bounded retries, 250 ms apart (about one token each).
    let mut accepted = false;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        abuser.announce(swarm, peer_id(1), None, &[]).await;
        let reply = abuser.recv_json().await;
        if reply.get("failure reason").is_none() {
            assert_eq!(reply["incomplete"], 1, "{reply}");
            accepted = true;
            break;
        }
        assert!(is_rate_failure(&reply), "{reply}");
    }
    assert!(accepted, "the bucket never refilled");
    honest.assert_unaffected().await;
}

/// A fragmented message that starts over the rate is reassembled (to stay in step) and
/// dropped whole, without a failure (the session sends failures only for single-frame
/// text; see session.rs `refuse_for_rate`).
#[tokio::test]
async fn a_fragmented_message_over_the_rate_is_dropped_whole() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let mut raw = RawWs::connect(app.addr).await;
    let swarm = info_hash(1);
    let scrape = json!({"action": "scrape", "info_hash": []}).to_string();
    let mut burst = Vec::new();
    for _ in 0..10 {
        burst.extend(client_frame(true, opcode::TEXT, scrape.as_bytes()));
    }
    let dropped = announce_text(swarm, peer_id(7), Some("started"), None, &[]);
    let (first, rest) = dropped.as_bytes().split_at(20);
    burst.extend(client_frame(false, opcode::TEXT, first));
    burst.extend(client_frame(true, opcode::CONTINUATION, rest));
    raw.stream.write_all(&burst).await.expect("send");
    for _ in 0..10 {
        assert_eq!(raw.recv_json().await["action"], "scrape");
    }
    raw.expect_silence().await;
    // After a refill the stream is still in step, and the dropped announce left no trace.
    let mut accepted = false;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        raw.send_text(&announce_text(swarm, peer_id(1), None, None, &[]))
            .await;
        let reply = raw.recv_json().await;
        if reply.get("failure reason").is_none() {
            assert_eq!(
                reply["incomplete"], 1,
                "peer 7 was never registered: {reply}"
            );
            accepted = true;
            break;
        }
        assert!(is_rate_failure(&reply), "{reply}");
    }
    assert!(accepted);
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Per-connection caps
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn too_many_swarms_on_one_socket_are_refused() {
    let app = spawn_app_configured(|settings| settings.ws.max_swarms_per_connection = 3);
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    for n in 1..=3 {
        assert_eq!(
            abuser.announce_counts(info_hash(n), peer_id(1), None).await,
            (0, 1)
        );
    }
    abuser.announce(info_hash(4), peer_id(1), None, &[]).await;
    assert_failure(
        &abuser.recv_failure().await,
        Some(info_hash(4)),
        "too many swarms on one connection (limit 3)",
    );
    assert_eq!(scrape_counts(&app, info_hash(4)).await, (0, 0));
    // Re-announcing in a joined swarm is still fine; leaving one frees a place.
    assert_eq!(
        abuser.announce_counts(info_hash(2), peer_id(1), None).await,
        (0, 1)
    );
    assert_eq!(
        abuser
            .announce_counts(info_hash(1), peer_id(1), Some("stopped"))
            .await,
        (0, 0)
    );
    assert_eq!(
        abuser.announce_counts(info_hash(4), peer_id(1), None).await,
        (0, 1)
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn too_many_peer_ids_in_one_swarm_on_one_socket_are_refused() {
    let app = spawn_app_configured(|settings| settings.ws.max_peer_ids_per_swarm = 2);
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    assert_eq!(
        abuser.announce_counts(swarm, peer_id(1), None).await,
        (0, 1)
    );
    assert_eq!(
        abuser.announce_counts(swarm, peer_id(2), None).await,
        (0, 2)
    );
    abuser.announce(swarm, peer_id(3), None, &[]).await;
    assert_failure(
        &abuser.recv_failure().await,
        Some(swarm),
        "too many peer_ids in one swarm on one connection (limit 2)",
    );
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    // Another swarm is a separate budget.
    assert_eq!(
        abuser.announce_counts(info_hash(2), peer_id(3), None).await,
        (0, 1)
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_full_swarm_refuses_new_peers_but_keeps_its_members() {
    let app = spawn_app_configured(|settings| settings.tracker.max_peers_per_swarm = 3);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut members = joined_peers(&app, swarm, 100, 3).await;
    let mut abuser = app.peer().await;
    abuser.announce(swarm, peer_id(1), None, &[]).await;
    assert_failure(
        &abuser.recv_failure().await,
        Some(swarm),
        "swarm is full (3 peers)",
    );
    assert_eq!(
        members[0].announce_counts(swarm, peer_id(100), None).await,
        (0, 3)
    );
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Per-IP caps, X-Forwarded-For
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn too_many_sockets_from_one_ip_get_503_and_the_slot_comes_back() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let abuser = app.peer().await;
    let refused = try_connect(&app.ws_url(), &[]).await;
    match refused {
        Err((status, body)) => {
            assert_eq!(status, 503);
            assert!(body.contains("max_connections_per_ip"), "{body}");
        }
        Ok(_) => panic!("a fourth socket from one IP was admitted"),
    }
    abuser.close().await;
    wait_connections(&app, 2).await;
    let again = try_connect(&app.ws_url(), &[]).await;
    assert!(again.is_ok(), "the slot was not released");
    honest.assert_unaffected().await;
}

fn behind_proxy(settings: &mut p2p_mediastream::Settings) {
    settings.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    settings.server.max_connections_per_ip = 1;
}

async fn honest_behind_proxy(app: &TestApp) -> HonestPair {
    HonestPair::join_with(
        app,
        &[("X-Forwarded-For", "198.51.100.1")],
        &[("X-Forwarded-For", "198.51.100.2")],
    )
    .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_capped() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let url = app.ws_url();
    let _one = try_connect(&url, &[("X-Forwarded-For", "203.0.113.7")])
        .await
        .expect("first client admitted");
    let _two = try_connect(&url, &[("X-Forwarded-For", "203.0.113.8")])
        .await
        .expect("another client admitted");
    match try_connect(&url, &[("X-Forwarded-For", "203.0.113.7")]).await {
        Err((status, _)) => assert_eq!(status, 503),
        Ok(_) => panic!("a second socket of 203.0.113.7 was admitted"),
    }
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_without_a_trusted_proxy() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let url = app.ws_url();
    let _third = try_connect(&url, &[("X-Forwarded-For", "203.0.113.7")])
        .await
        .expect("third socket from 127.0.0.1 admitted");
    match try_connect(&url, &[("X-Forwarded-For", "203.0.113.8")]).await {
        Err((status, _)) => assert_eq!(status, 503),
        Ok(_) => panic!("a forged X-Forwarded-For escaped the per-IP cap"),
    }
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_spoofed_leftmost_forwarded_hop_does_not_escape_the_cap() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let url = app.ws_url();
    let _one = try_connect(&url, &[("X-Forwarded-For", "6.6.6.6, 203.0.113.9")])
        .await
        .expect("admitted as 203.0.113.9");
    match try_connect(&url, &[("X-Forwarded-For", "7.7.7.7, 203.0.113.9")]).await {
        Err((status, _)) => assert_eq!(status, 503),
        Ok(_) => panic!("the client-chosen leftmost hop was believed"),
    }
    let _other = try_connect(&url, &[("X-Forwarded-For", "203.0.113.9, 203.0.113.10")])
        .await
        .expect("admitted as 203.0.113.10");
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Slow readers, half-open and slow connections
// ---------------------------------------------------------------------------------------

/// A client that announces into a busy swarm and then never reads: the server's memory
/// stays bounded, the peer leaves its swarm after `swarm.max_dropped_deliveries` relays
/// it could not take, and the server cuts the TCP connection within a bounded time.
#[tokio::test]
async fn a_slow_reader_is_bounded_removed_and_cut() {
    let app = spawn_app_configured(|settings| {
        settings.ws.idle_timeout_secs = 2;
        settings.ws.ping_interval_secs = 1;
        settings.ws.session_mailbox = 4;
        settings.swarm.max_dropped_deliveries = 3;
        settings.tracker.max_sdp_bytes = 60_000;
        settings.ws.max_messages_per_sec = 100_000;
        settings.ws.message_burst = 100_000;
    });
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut sender = app.peer().await;
    assert_eq!(
        sender
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
        (0, 1)
    );

    // The slow reader: a small receive buffer, a hand-made handshake, one announce.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(app.addr).await.expect("connect");
    let mut slow = RawWs::upgrade(stream, &upgrade_request(app.addr, "/announce", ""))
        .await
        .expect("upgrade");
    slow.send_text(&announce_text(
        swarm,
        peer_id(1),
        Some("started"),
        None,
        &[],
    ))
    .await;
    wait_for_stats(&app, |stats| stats["peersCount"] == 4).await;

    let rss = |stats: &serde_json::Value| stats["memory"]["rss"].as_u64();
    let rss_before = rss(&app.stats().await);

    // Offers with big SDPs, all to the slow reader (the only other peer), until the
    // sender sees it gone. The slow reader keeps pinging (it is alive, just not reading).
    // No CR/LF: it must stay under the 64 KiB frame cap once JSON-escaped.
    let sdp = format!("v=0 {}", "x".repeat(59_000));
    let started = Instant::now();
    let mut last_keepalive = Instant::now();
    let mut removed_after = None;
    for n in 0..2_000u32 {
        sender
            .announce(swarm, peer_id(2), None, &[(offer_id(n), sdp.as_str())])
            .await;
        let reply = sender.recv_announce_reply().await;
        if reply.incomplete == 1 {
            removed_after = Some(n + 1);
            break;
        }
        assert_eq!(reply.incomplete, 2);
        if last_keepalive.elapsed() > Duration::from_millis(300) {
            last_keepalive = Instant::now();
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                slow.send_frame(true, opcode::PING, b""),
            )
            .await;
            honest.keepalive().await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow reader was never removed"
        );
    }
    let removed_after = removed_after.expect("slow reader removed from the swarm");
    eprintln!(
        "slow reader removed after {removed_after} offers of {} bytes",
        sdp.len()
    );
    sender.expect_silence().await;
    let metrics = app.metrics_text().await;
    assert!(
        metric_value(
            &metrics,
            r#"tracker_deliveries_dropped_total{reason="mailbox_full"}"#
        ) >= 3.0,
        "removed through dropped deliveries:\n{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"tracker_peers_removed_total{reason="unreachable"}"#
        ),
        1.0
    );

    let rss_after = rss(&app.stats().await);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        assert!(
            after < before + 64 * 1024 * 1024,
            "RSS grew from {before} to {after}"
        );
    }

    // The watchdog cuts the frozen session: the connection count drops to the honest
    // pair and the sender.
    let cut_started = Instant::now();
    loop {
        honest.keepalive().await;
        // Still alive (it keeps pinging), just never reading.
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            slow.send_frame(true, opcode::PING, b""),
        )
        .await;
        if websockets(&app.stats().await) == 3 {
            break;
        }
        if cut_started.elapsed() >= Duration::from_secs(20) {
            let metrics = app.metrics_text().await;
            panic!(
                "the frozen session was never cut; stats {}\n{}",
                app.stats().await,
                metrics
                    .lines()
                    .filter(|line| line.contains("closed_by_server") || line.contains("connections"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "slow reader's connection closed after {:?}",
        cut_started.elapsed()
    );
    // Whichever comes first cuts it: the watchdog (the session never runs again) or the
    // heartbeat's idle timeout (the session runs its timer, but the client's frames are
    // not read while its output is stuck).
    let metrics = app.metrics_text().await;
    let watchdog = metric_value(
        &metrics,
        r#"tracker_ws_closed_by_server_total{reason="stopped_reading"}"#,
    );
    let idle = metric_value(
        &metrics,
        r#"tracker_ws_closed_by_server_total{reason="idle timeout"}"#,
    );
    eprintln!("cut by: watchdog {watchdog}, idle timeout {idle}");
    assert_eq!(watchdog + idle, 1.0, "closed by the server:\n{metrics}");

    // Reading at last: whatever was buffered, then EOF or a reset.
    let mut sink = vec![0u8; 64 * 1024];
    let drain_started = Instant::now();
    loop {
        honest.keepalive().await;
        match tokio::time::timeout(Duration::from_millis(200), slow.stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(
            drain_started.elapsed() < Duration::from_secs(20),
            "the slow reader's TCP connection was not closed"
        );
    }
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_handshaken_socket_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let app = spawn_app_configured(|settings| {
        settings.ws.idle_timeout_secs = 2;
        settings.ws.ping_interval_secs = 1;
    });
    let mut honest = HonestPair::join(&app).await;
    let mut silent = RawWs::connect(app.addr).await;
    let opened = Instant::now();
    let mut pings = 0;
    let code = loop {
        honest.keepalive().await;
        match silent.read_frame(Duration::from_millis(300)).await {
            RawEvent::Frame {
                opcode: opcode::PING,
                ..
            } => pings += 1,
            RawEvent::Frame {
                opcode: opcode::CLOSE,
                payload,
                ..
            } => break Some(u16::from_be_bytes([payload[0], payload[1]])),
            RawEvent::Frame { opcode, .. } => panic!("unexpected opcode {opcode}"),
            RawEvent::Eof => break None,
            RawEvent::Timeout => {}
        }
        assert!(opened.elapsed() < Duration::from_secs(8), "never closed");
    };
    let elapsed = opened.elapsed();
    assert_eq!(code, Some(1001));
    assert!(pings >= 1, "the server pinged before giving up");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed before the idle timeout: {elapsed:?}"
    );
    assert!(matches!(
        silent.read_frame(RECV_TIMEOUT).await,
        RawEvent::Eof
    ));
    wait_connections(&app, 2).await;
    honest.assert_unaffected().await;
}

/// Reads until EOF (or reset); returns what arrived and when the connection ended.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let result = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => raw.extend_from_slice(&chunk[..read]),
            }
        }
    })
    .await;
    assert!(result.is_ok(), "the server kept the connection open");
    raw
}

#[tokio::test]
async fn slowloris_request_head_is_cut_after_the_client_request_timeout() {
    let app = spawn_app_configured(|settings| settings.server.client_request_timeout_secs = 1);
    let mut honest = HonestPair::join(&app).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let opened = Instant::now();
    stream
        .write_all(b"GET /announce HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    // Meanwhile honest traffic flows.
    honest.assert_unaffected().await;
    let raw = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let elapsed = opened.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        raw.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected response: {text}"
    );
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(websockets(&app.stats().await), 2);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_cut() {
    let app = spawn_app_configured(|settings| settings.server.client_request_timeout_secs = 1);
    let mut honest = HonestPair::join(&app).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let opened = Instant::now();
    let raw = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let elapsed = opened.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        raw.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected response: {text}"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Bad upgrades release their slot
// ---------------------------------------------------------------------------------------

/// Sends `request`; the upgrade must be refused with `status`. The server admits at most
/// 3 sockets (the honest pair plus one), so a leaked slot would refuse the final check.
async fn refused_upgrade_releases_its_slot(
    request: impl Fn(std::net::SocketAddr) -> String,
    status: u16,
) {
    let app = spawn_app_configured(|settings| settings.server.max_connections = 3);
    let mut honest = HonestPair::join(&app).await;
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        match RawWs::upgrade(stream, &request(app.addr)).await {
            Err((got, head)) => assert_eq!(got, status, "{head}"),
            Ok(_) => panic!("a bad upgrade was accepted"),
        }
    }
    assert_eq!(websockets(&app.stats().await), 2);
    let mut third = RawWs::connect(app.addr).await;
    third
        .send_text(&announce_text(info_hash(1), peer_id(1), None, None, &[]))
        .await;
    assert_eq!(third.recv_json().await["incomplete"], 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn upgrade_without_sec_websocket_key_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        |addr| {
            format!(
                "GET /announce HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        },
        400,
    )
    .await;
}

/// RFC 6455 4.2.2: an unknown version gets 426 Upgrade Required.
#[tokio::test]
async fn upgrade_with_an_unsupported_version_is_426_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        |addr| {
            format!(
                "GET /announce HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 12\r\n\r\n"
            )
        },
        426,
    )
    .await;
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        |addr| {
            format!(
                "GET /announce HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        },
        400,
    )
    .await;
}

/// RFC 6455 4.2.1: the key must be base64 of 16 bytes, else 400 (4.2.2).
#[tokio::test]
async fn upgrade_with_a_malformed_sec_websocket_key_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        |addr| {
            format!(
                "GET /announce HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: not base64 at all!\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
        },
        400,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Huge but legal JSON
// ---------------------------------------------------------------------------------------

/// The announce fields followed by `extra` (a JSON object body fragment, no braces).
fn announce_with_extra(swarm: InfoHash, peer: PeerId, extra: &str) -> String {
    let base = announce_text(swarm, peer, None, None, &[]);
    format!("{{{extra},{}", &base[1..])
}

#[tokio::test]
async fn ten_thousand_distinct_unknown_keys_are_ignored() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 256 * 1024;
        settings.ws.max_message_bytes = 256 * 1024;
    });
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let extra: Vec<String> = (0..10_000).map(|n| format!("\"k{n}\":0")).collect();
    let text = announce_with_extra(info_hash(1), peer_id(1), &extra.join(","));
    abuser.send_text(text).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn ten_thousand_repeats_of_an_unknown_key_are_ignored() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let extra = vec!["\"x\":0"; 10_000].join(",");
    let text = announce_with_extra(info_hash(1), peer_id(1), &extra);
    assert!(text.len() < 65_536, "{}", text.len());
    abuser.send_text(text).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_60_kib_string_in_an_unknown_field_is_ignored() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let extra = format!("\"trackerid\":\"{}\"", "z".repeat(60 * 1024));
    abuser
        .send_text(announce_with_extra(info_hash(1), peer_id(1), &extra))
        .await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_60_kib_event_is_refused_without_echoing_it() {
    let app = spawn_app();
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    let text = announce_text(swarm, peer_id(1), Some(&"e".repeat(60 * 1024)), None, &[]);
    abuser.send_text(text).await;
    let failure = abuser.recv_failure().await;
    assert_failure(&failure, Some(swarm), "unknown event");
    let reason = failure["failure reason"].as_str().expect("reason");
    assert!(
        reason.len() < 200,
        "the failure echoes the input: {} bytes",
        reason.len()
    );
    // The socket stays open.
    assert_eq!(
        abuser.announce_counts(swarm, peer_id(1), None).await,
        (0, 1)
    );
    honest.assert_unaffected().await;
}
