//! Abuse battery: hostile or broken clients, each checked for its exact outcome and for
//! an honest pair of peers in another swarm that must keep signalling normally
//! (`HonestPair::assert_unaffected`).
//!
//! Covered here (not in limits.rs / malformed.rs): fragmentation abuse, ids outside
//! U+00FF, offer/SDP/numwant abuse, forged answers, peer_id takeover, rate-limit floods
//! (text and ping), per-connection caps, per-IP caps behind proxies, slow readers,
//! half-open and slowloris connections, bad upgrades, and huge-but-legal JSON.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use p2p_mediastream::protocol::{
    client::{announce_text, answer_text, TrackerMessage},
    InfoHash, OfferId, PeerId,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The next frame on `peer` is a failure of an announce containing `reason` (naming
/// `swarm`, if given); returned for further checks.
async fn assert_refused(
    peer: &mut TestPeer,
    swarm: Option<InfoHash>,
    reason: &str,
) -> serde_json::Value {
    let failure = match swarm {
        Some(swarm) => peer.recv_failure_in(swarm).await,
        None => peer.recv_failure().await,
    };
    assert_eq!(failure["action"], "announce", "{failure}");
    let got = failure["failure reason"].as_str().unwrap_or_default();
    assert!(
        got.contains(reason),
        "failure {got:?} should contain {reason:?}"
    );
    failure
}

/// `peer` announces `peer_id` in `swarm` (no event, no offers); it must be refused with a
/// failure containing `reason`.
async fn assert_announce_refused(
    peer: &mut TestPeer,
    swarm: InfoHash,
    peer_id: PeerId,
    reason: &str,
) {
    peer.announce(swarm, peer_id, None, &[]).await;
    assert_refused(peer, Some(swarm), reason).await;
}

/// Encoded client frames of each kind (`fin` false: more fragments follow).
fn text_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::TEXT, payload)
}

fn continuation_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::CONTINUATION, payload)
}

fn binary_frame(fin: bool, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, opcode::BINARY, payload)
}

/// Opens a raw socket and sends `writes`, each in one write: a test chooses how its
/// frames are split over writes (one frame each, or a whole flood at once).
async fn raw_socket_sending(app: &TestApp, writes: &[Vec<u8>]) -> RawWs {
    let mut raw = RawWs::connect(app.addr).await;
    for bytes in writes {
        raw.stream.write_all(bytes).await.expect("send");
    }
    raw
}

// ---------------------------------------------------------------------------------------
// Fragmentation
// ---------------------------------------------------------------------------------------

/// The server closes `raw` with `code`, and only the honest pair's two sockets remain.
async fn assert_closed_with(app: &TestApp, raw: &mut RawWs, code: u16) {
    assert_eq!(raw.expect_close(RECV_TIMEOUT).await, Some(code));
    wait_connections(app, 2).await;
}

/// Most frame-level abuses: a raw socket beside an honest pair sends `writes`; the server
/// must close it with `code`, and the pair must not notice.
async fn writes_close_with(writes: &[Vec<u8>], code: u16) {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut raw = raw_socket_sending(&app, writes).await;
    assert_closed_with(&app, &mut raw, code).await;
    honest.assert_unaffected().await;
}

/// A fragmented announce (from peer 1, alone in its swarm) that must be reassembled: a
/// raw socket beside an honest pair sends `writes`, and the reply counts the announcer;
/// the pair must not notice. Returns the reply.
async fn reassembled_reply(writes: &[Vec<u8>]) -> serde_json::Value {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut raw = raw_socket_sending(&app, writes).await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["incomplete"], 1, "{reply}");
    honest.assert_unaffected().await;
    reply
}

#[tokio::test]
async fn more_than_64_fragments_close_with_1008() {
    // A first frame and 64 continuations: 65 fragments, none of them final.
    let mut writes = vec![text_frame(false, b"{")];
    writes.extend((0..64).map(|_| continuation_frame(false, b" ")));
    writes_close_with(&writes, 1008).await;
}

#[tokio::test]
async fn exactly_64_fragments_are_reassembled() {
    let text = announce_text(info_hash(1), peer_id(1), Some("started"), None, &[]);
    let bytes = text.as_bytes();
    // 64 frames: the first, 62 continuations and the last (empty ones fill up the count).
    let chunk = bytes.len().div_ceil(64);
    let mut pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    assert!(pieces.len() <= 64);
    pieces.resize(64, b"");
    let writes: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| match index {
            0 => text_frame(false, piece),
            _ => continuation_frame(index == 63, piece),
        })
        .collect();
    let reply = reassembled_reply(&writes).await;
    assert_eq!(reply["info_hash"], info_hash(1).to_wire());
}

#[tokio::test]
async fn empty_continuation_flood_closes_with_1008() {
    // One write: a first frame and a thousand empty continuations.
    let mut flood = text_frame(false, b"");
    flood.extend((0..1000).flat_map(|_| continuation_frame(false, b"")));
    writes_close_with(&[flood], 1008).await;
}

#[tokio::test]
async fn one_byte_fragment_flood_closes_with_1008() {
    // One write: a first frame and 500 one-byte continuations.
    let mut flood = text_frame(false, b"[");
    flood.extend((0..500).flat_map(|_| continuation_frame(false, b"1")));
    writes_close_with(&[flood], 1008).await;
}

#[tokio::test]
async fn final_continuation_without_a_first_frame_closes_with_1002() {
    writes_close_with(&[continuation_frame(true, b"{}")], 1002).await;
}

#[tokio::test]
async fn unfinished_continuation_without_a_first_frame_closes_with_1002() {
    writes_close_with(&[continuation_frame(false, b"{")], 1002).await;
}

#[tokio::test]
async fn final_text_frame_inside_a_fragmented_message_closes_with_1002() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    // A whole announce in a new text frame while another message is unfinished...
    let announce = announce_text(info_hash(1), peer_id(1), None, None, &[]);
    let writes = [
        text_frame(false, b"{\"action\":"),
        text_frame(true, announce.as_bytes()),
    ];
    let mut raw = raw_socket_sending(&app, &writes).await;
    assert_closed_with(&app, &mut raw, 1002).await;
    // ...is not processed.
    assert_eq!(scrape_counts(&app, info_hash(1)).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn unfinished_text_frame_inside_a_fragmented_message_closes_with_1002() {
    writes_close_with(&[text_frame(false, b"{"), text_frame(false, b"{")], 1002).await;
}

#[tokio::test]
async fn binary_frame_inside_a_fragmented_text_message_closes_with_1002() {
    writes_close_with(&[text_frame(false, b"{"), binary_frame(true, b"}")], 1002).await;
}

#[tokio::test]
async fn fragmented_binary_message_closes_with_1003() {
    let writes = [
        binary_frame(false, b"\x00\x01"),
        continuation_frame(true, b"\x02"),
    ];
    writes_close_with(&writes, 1003).await;
}

#[tokio::test]
async fn fragmented_message_above_the_message_cap_closes_with_1009() {
    // Each frame is within the 64 KiB frame cap; together they are not.
    let piece = vec![b' '; 40 * 1024];
    let writes = [text_frame(false, &piece), continuation_frame(true, &piece)];
    writes_close_with(&writes, 1009).await;
}

#[tokio::test]
async fn fragmented_message_exactly_at_the_message_cap_is_accepted() {
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
    reassembled_reply(&[text_frame(false, first), continuation_frame(true, rest)]).await;
}

#[tokio::test]
async fn utf8_character_split_across_fragments_is_reassembled() {
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
    let (first, rest) = bytes.split_at(cut);
    reassembled_reply(&[text_frame(false, first), continuation_frame(true, rest)]).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_message_closes_with_1007() {
    let writes = [
        text_frame(false, b"{\"action\":\""),
        continuation_frame(true, b"\xff\xfe\"}"),
    ];
    writes_close_with(&writes, 1007).await;
}

#[tokio::test]
async fn pings_between_fragments_are_answered_and_the_message_completes() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let text = announce_text(info_hash(1), peer_id(1), None, None, &[]);
    let (first, rest) = text.as_bytes().split_at(10);
    let writes = [
        text_frame(false, first),
        client_frame(true, opcode::PING, b"mid"),
        continuation_frame(true, rest),
    ];
    let mut raw = raw_socket_sending(&app, &writes).await;
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
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let mut value = announce_value(info_hash(1), peer_id(1), &[], None);
    value["info_hash"] = json!(format!("{}\u{0100}", &info_hash(1).to_wire()[..19]));
    abuser.send_json(value).await;
    let reason = "invalid info_hash: has a character above U+00FF";
    assert_refused(&mut abuser, None, reason).await;
    // The socket stays usable.
    abuser
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn peer_id_with_an_astral_character_escape_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    // 19 ASCII characters and one emoji written as a JSON surrogate pair.
    let text = format!(
        r#"{{"action":"announce","info_hash":{},"peer_id":"-XX0001-0123456789a\ud83d\ude00"}}"#,
        serde_json::to_string(&swarm.to_wire()).expect("json")
    );
    abuser.send_text(text).await;
    let reason = "invalid peer_id: has a character above U+00FF";
    assert_refused(&mut abuser, Some(swarm), reason).await;
    assert_eq!(scrape_counts(&app, swarm).await, (0, 0));
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn lone_surrogate_escape_in_an_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    abuser
        .send_text(r#"{"action":"announce","info_hash":"0123456789012345678\ud800","peer_id":"-XX0001-0123456789ab"}"#)
        .await;
    assert_refused(&mut abuser, None, "invalid message").await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_id_above_u00ff_is_refused_and_nothing_is_relayed() {
    let mut value = announce_value(info_hash(1), peer_id(1), &offers(1, 1, 100), Some(json!(1)));
    value["offers"][0]["offer_id"] = json!("\u{2603}123456789012345678X");
    let reason = "invalid offer_id: has a character above U+00FF";
    offer_announce_is_refused(spawn_app(), value, reason).await;
}

#[tokio::test]
async fn to_peer_id_above_u00ff_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let answer = answer_text(swarm, peer_id(2), peer_id(1), offer, "v=0 answer");
    let mut value: serde_json::Value = serde_json::from_str(&answer).expect("json");
    value["to_peer_id"] = json!("\u{0101}".repeat(20));
    answerer.send_json(value).await;
    let reason = "invalid to_peer_id: has a character above U+00FF";
    assert_answer_refused(&mut answerer, &mut offerer, swarm, reason).await;
    // The offer is still answerable.
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Offers, SDP, numwant
// ---------------------------------------------------------------------------------------

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

/// `receivers` peers (100 and up) wait in swarm 1; the abuser, peer 1 on its own socket,
/// sends `text`, an announce with offers that must be answered. Returns the answer, how
/// many offers each receiver got, and the abuser's socket (for further checks).
async fn announce_offers(
    app: &TestApp,
    receivers: u32,
    text: String,
) -> (AnnounceReply, Vec<usize>, TestPeer) {
    let swarm = info_hash(1);
    let mut peers = joined_peers(app.addr, swarm, 100..100 + receivers, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    abuser.send_text(text).await;
    let reply = abuser.recv_announce_reply().await;
    let received = offers_received(&mut peers, peer_id(1)).await;
    (reply, received, abuser)
}

/// Two peers wait in swarm 1 beside an honest pair; the abuser, peer 1 on its own socket,
/// sends `value`, an announce with offers, which must be refused with `reason`: no offer
/// is relayed, the abuser is not registered, and the honest pair does not notice.
async fn offer_announce_is_refused(app: TestApp, value: serde_json::Value, reason: &str) {
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(app.addr, swarm, 100..102, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    abuser.send_json(value).await;
    assert_refused(&mut abuser, Some(swarm), reason).await;
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2), "not registered");
    honest.assert_unaffected().await;
}

/// Exactly `total` offers were relayed, each to a different receiver.
fn assert_relayed_to_distinct_receivers(received: &[usize], total: usize) {
    assert_eq!(received.iter().sum::<usize>(), total, "{received:?}");
    assert!(
        received.iter().all(|&n| n <= 1),
        "distinct receivers: {received:?}"
    );
}

#[tokio::test]
async fn offers_above_max_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| settings.tracker.max_offers = 3);
    let mut honest = HonestPair::join(&app).await;
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 12, 200),
        Some(json!(12)),
    );
    let (reply, received, mut abuser) = announce_offers(&app, 6, value.to_string()).await;
    assert_eq!((reply.complete, reply.incomplete), (0, 7));
    abuser.expect_silence().await;
    assert_relayed_to_distinct_receivers(&received, 3);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_thousand_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 128 * 1024;
        settings.ws.max_message_bytes = 128 * 1024;
    });
    let mut honest = HonestPair::join(&app).await;
    let text = announce_value(info_hash(1), peer_id(1), &offers(1, 1000, 1), None).to_string();
    assert!(text.len() < 128 * 1024, "fits one frame: {}", text.len());
    let (reply, received, mut abuser) = announce_offers(&app, 12, text).await;
    assert_eq!(reply.incomplete, 13);
    abuser.expect_silence().await;
    assert_relayed_to_distinct_receivers(&received, 10);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_sdp_above_the_limit_is_refused_and_nothing_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 1025),
        Some(json!(2)),
    );
    offer_announce_is_refused(app, value, "offer.sdp is 1025 bytes, the limit is 1024").await;
}

#[tokio::test]
async fn offer_sdp_exactly_at_the_limit_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(app.addr, swarm, 100..101, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    let value = announce_value(swarm, peer_id(1), &offers(1, 1, 1024), Some(json!(1)));
    abuser.send_json(value).await;
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
    let reason = "answer.sdp is 1025 bytes, the limit is 1024";
    assert_answer_refused(&mut answerer, &mut offerer, swarm, reason).await;
    honest.assert_unaffected().await;
}

/// numwant 1e300 saturates: the offers sent are the only cap.
#[tokio::test]
async fn numwant_1e300_is_capped_by_the_offers_sent() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let text = announce_value(info_hash(1), peer_id(1), &offers(1, 2, 50), Some(json!(0)))
        .to_string()
        .replace("\"numwant\":0", "\"numwant\":1e300");
    assert!(text.contains("1e300"));
    let (reply, received, _abuser) = announce_offers(&app, 3, text).await;
    assert_eq!(reply.incomplete, 4);
    assert_eq!(received.iter().sum::<usize>(), 2, "{received:?}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn negative_numwant_is_refused_and_nothing_is_relayed() {
    let value = announce_value(info_hash(1), peer_id(1), &offers(1, 2, 50), Some(json!(-1)));
    offer_announce_is_refused(spawn_app(), value, "numwant must not be negative").await;
}

/// numwant 0.5 rounds down to 0: the peer is registered, no offer is relayed.
#[tokio::test]
async fn fractional_numwant_rounds_down() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 50),
        Some(json!(0.5)),
    );
    let (reply, received, _abuser) = announce_offers(&app, 2, value.to_string()).await;
    assert_eq!(reply.incomplete, 3);
    assert_eq!(received, [0, 0]);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn numwant_as_a_string_is_refused() {
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 50),
        Some(json!("5")),
    );
    offer_announce_is_refused(spawn_app(), value, "invalid message").await;
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// `offerer` (as `from`) announces one offer in `swarm` and gets its response.
async fn make_offer(offerer: &mut TestPeer, swarm: InfoHash, from: PeerId, offer: OfferId) {
    offerer
        .announce(swarm, from, None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
}

/// Peer 1 (first socket) made offer 1 in swarm 1 and it reached peer 2 (second socket).
async fn relayed_offer(app: &TestApp) -> (TestPeer, TestPeer, InfoHash, OfferId) {
    let swarm = info_hash(1);
    let mut offerer = app.peer().await;
    let mut answerer = app.peer().await;
    offerer
        .assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    answerer
        .assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;
    let offer = offer_id(1);
    make_offer(&mut offerer, swarm, peer_id(1), offer).await;
    match answerer.recv().await {
        TrackerMessage::Offer { offer_id, .. } => assert_eq!(offer_id, offer),
        other => panic!("expected the offer, got {other:?}"),
    }
    (offerer, answerer, swarm, offer)
}

/// Peer 2 answers `offer` to peer 1 in `swarm` from `answerer`, and it reaches `offerer`.
async fn assert_answer_relayed(
    answerer: &mut TestPeer,
    offerer: &mut TestPeer,
    swarm: InfoHash,
    offer: OfferId,
) {
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
}

/// The answer just sent on `answerer` is refused with `reason` (for `swarm`), and nothing
/// reaches `offerer`.
async fn assert_answer_refused(
    answerer: &mut TestPeer,
    offerer: &mut TestPeer,
    swarm: InfoHash,
    reason: &str,
) {
    assert_refused(answerer, Some(swarm), reason).await;
    offerer.expect_silence().await;
}

const UNKNOWN_OFFER: &str = "no offer with that offer_id from to_peer_id was relayed to you";
const NOT_RELAYED_TO_YOU: &str = "that offer was relayed to another connection";

#[tokio::test]
async fn answer_to_an_unknown_offer_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, _) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(999), "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, swarm, UNKNOWN_OFFER).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_in_a_swarm_the_socket_never_joined_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, _, offer) = relayed_offer(&app).await;
    let elsewhere = info_hash(2);
    answerer
        .answer(elsewhere, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, elsewhere, UNKNOWN_OFFER).await;
    assert_eq!(
        scrape_counts(&app, elsewhere).await,
        (0, 0),
        "no swarm created"
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_routed_through_another_joined_swarm_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    // Both are also in swarm 2, but the offer was made in swarm 1.
    let other = info_hash(2);
    offerer.announce_counts(other, peer_id(1), None).await;
    answerer.announce_counts(other, peer_id(2), None).await;
    answerer
        .answer(other, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, other, UNKNOWN_OFFER).await;
    // The right swarm still routes it.
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_with_a_forged_to_peer_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let mut victim = app.peer().await;
    victim.announce_counts(swarm, peer_id(3), None).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(3), offer, "v=0 forged")
        .await;
    assert_refused(&mut answerer, Some(swarm), UNKNOWN_OFFER).await;
    victim.expect_silence().await;
    offerer.expect_silence().await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_a_connection_the_offer_was_not_relayed_to_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, _answerer, swarm, offer) = relayed_offer(&app).await;
    let mut intruder = app.peer().await;
    intruder.announce_counts(swarm, peer_id(3), None).await;
    // The intruder claims to be peer 2 in its answer.
    intruder
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 stolen")
        .await;
    assert_answer_refused(&mut intruder, &mut offerer, swarm, NOT_RELAYED_TO_YOU).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_replayed_answer_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer again")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, swarm, UNKNOWN_OFFER).await;
    honest.assert_unaffected().await;
}

// A peer_id claimed by two sockets: the last writer wins; `stopped` and answers only
// from the owner.

// ---------------------------------------------------------------------------------------

/// Peer 1 in swarm 1, claimed by two sockets in turn (`first`, then `second`), and peer 2
/// (`offerer`), whose offer 1 then reached the claimed peer_id's new owner. Returns the
/// sockets [first, second, offerer] and the (complete, incomplete) each join saw.
async fn claimed_twice(app: &TestApp) -> ([TestPeer; 3], [(u64, u64); 3]) {
    let (swarm, claimed) = (info_hash(1), peer_id(1));
    let [mut first, mut second, mut offerer] = app.peers().await;
    let joined = [
        first.announce_counts(swarm, claimed, Some("started")).await,
        second
            .announce_counts(swarm, claimed, Some("started"))
            .await,
        offerer
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
    ];
    make_offer(&mut offerer, swarm, peer_id(2), offer_id(1)).await;
    assert!(matches!(second.recv().await, TrackerMessage::Offer { .. }));
    ([first, second, offerer], joined)
}

#[tokio::test]
async fn peer_id_claimed_by_two_sockets_last_writer_wins() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (swarm, claimed, offer) = (info_hash(1), peer_id(1), offer_id(1));
    let ([mut first, mut second, mut offerer], joined) = claimed_twice(&app).await;
    // The second claim replaced the first: still one peer until peer 2 joined.
    assert_eq!(joined, [(0, 1), (0, 1), (0, 2)], "counts seen by the joins");
    // The offer went to the claimed peer_id's new owner only.
    first.expect_silence().await;

    // The old owner cannot stop it...
    first
        .assert_counts(swarm, claimed, Some("stopped"), (0, 2))
        .await;
    // ...nor remove it by closing.
    first.close().await;
    wait_connections(&app, 4).await;
    offerer.assert_counts(swarm, peer_id(2), None, (0, 2)).await;

    // The owner answers, and its `stopped` counts.
    second
        .answer(swarm, claimed, peer_id(2), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    second
        .assert_counts(swarm, claimed, Some("stopped"), (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_the_previous_owner_of_a_peer_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (swarm, claimed, offer) = (info_hash(1), peer_id(1), offer_id(1));
    let ([mut first, _second, mut offerer], _) = claimed_twice(&app).await;
    first
        .answer(swarm, claimed, peer_id(2), offer, "v=0 spoofed")
        .await;
    assert_answer_refused(&mut first, &mut offerer, swarm, NOT_RELAYED_TO_YOU).await;
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

/// A rate-limited server with an honest pair, and the abuser's socket.
async fn rate_limited_abuser() -> (TestApp, HonestPair, TestPeer) {
    let app = spawn_app_with(rate_limited_settings());
    let honest = HonestPair::join(&app).await;
    let abuser = app.peer().await;
    (app, honest, abuser)
}

/// Sends one ping per payload byte of `payloads`, in order.
async fn send_pings(abuser: &mut TestPeer, payloads: std::ops::Range<u8>) {
    for n in payloads {
        abuser
            .send_raw(Message::Ping(vec![n].into()))
            .await
            .expect("send ping");
    }
}

/// Waits for the bucket to refill: retries `announce` (which sends an announce and
/// returns the reply) 250 ms apart, about one token each, at most 12 times; every refusal
/// must be a rate-limit failure. Returns the first reply that is not a failure, `None`
/// when the bucket never refilled.
async fn first_reply_after_refill(
    mut announce: impl AsyncFnMut() -> serde_json::Value,
) -> Option<serde_json::Value> {
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let reply = announce().await;
        if reply.get("failure reason").is_none() {
            return Some(reply);
        }
        assert!(is_rate_failure(&reply), "{reply}");
    }
    None
}

#[tokio::test]
async fn announce_flood_is_refused_beyond_the_burst_then_closed_with_1008() {
    let (app, mut honest, mut abuser) = rate_limited_abuser().await;
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
    let (app, mut honest, mut abuser) = rate_limited_abuser().await;
    send_pings(&mut abuser, 0..30).await;
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
    let (app, mut honest, mut abuser) = rate_limited_abuser().await;
    send_pings(&mut abuser, 0..10).await;
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
    let (_app, mut honest, mut abuser) = rate_limited_abuser().await;
    let swarm = info_hash(1);
    let scrape = json!({"action": "scrape", "info_hash": []}).to_string();
    for _ in 0..11 {
        abuser.send_text(scrape.clone()).await;
    }
    for _ in 0..10 {
        assert_eq!(abuser.recv_json().await["action"], "scrape");
    }
    assert!(is_rate_failure(&abuser.recv_json().await));
    let reply = first_reply_after_refill(async || {
        abuser.announce(swarm, peer_id(1), None, &[]).await;
        abuser.recv_json().await
    })
    .await
    .expect("the bucket never refilled");
    assert_eq!(reply["incomplete"], 1, "{reply}");
    honest.assert_unaffected().await;
}

/// A fragmented message that starts over the rate is reassembled (to stay in step) and
/// dropped whole, without a failure (the session sends failures only for single-frame
/// text: the session's `refuse_for_rate`).
#[tokio::test]
async fn a_fragmented_message_over_the_rate_is_dropped_whole() {
    let app = spawn_app_with(rate_limited_settings());
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    // One write: ten scrapes spend the burst, then a fragmented announce of peer 7.
    let scrape = json!({"action": "scrape", "info_hash": []}).to_string();
    let mut burst: Vec<u8> = (0..10)
        .flat_map(|_| text_frame(true, scrape.as_bytes()))
        .collect();
    let dropped = announce_text(swarm, peer_id(7), Some("started"), None, &[]);
    let (first, rest) = dropped.as_bytes().split_at(20);
    burst.extend(text_frame(false, first));
    burst.extend(continuation_frame(true, rest));
    let mut raw = raw_socket_sending(&app, &[burst]).await;
    for _ in 0..10 {
        assert_eq!(raw.recv_json().await["action"], "scrape");
    }
    raw.expect_silence().await;
    // After a refill the stream is still in step, and the dropped announce left no trace.
    let reply = first_reply_after_refill(async || {
        raw.send_text(&announce_text(swarm, peer_id(1), None, None, &[]))
            .await;
        raw.recv_json().await
    })
    .await
    .expect("the bucket never refilled");
    assert_eq!(
        reply["incomplete"], 1,
        "peer 7 was never registered: {reply}"
    );
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
        abuser
            .assert_counts(info_hash(n), peer_id(1), None, (0, 1))
            .await;
    }
    let reason = "too many swarms on one connection (limit 3)";
    assert_announce_refused(&mut abuser, info_hash(4), peer_id(1), reason).await;
    assert_eq!(scrape_counts(&app, info_hash(4)).await, (0, 0));
    // Re-announcing in a joined swarm is still fine; leaving one frees a place.
    abuser
        .assert_counts(info_hash(2), peer_id(1), None, (0, 1))
        .await;
    abuser
        .assert_counts(info_hash(1), peer_id(1), Some("stopped"), (0, 0))
        .await;
    abuser
        .assert_counts(info_hash(4), peer_id(1), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn too_many_peer_ids_in_one_swarm_on_one_socket_are_refused() {
    let app = spawn_app_configured(|settings| settings.ws.max_peer_ids_per_swarm = 2);
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    abuser.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    abuser.assert_counts(swarm, peer_id(2), None, (0, 2)).await;
    let reason = "too many peer_ids in one swarm on one connection (limit 2)";
    assert_announce_refused(&mut abuser, swarm, peer_id(3), reason).await;
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2));
    // Another swarm is a separate budget.
    abuser
        .assert_counts(info_hash(2), peer_id(3), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_full_swarm_refuses_new_peers_but_keeps_its_members() {
    let app = spawn_app_configured(|settings| settings.tracker.max_peers_per_swarm = 3);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut members = joined_peers(app.addr, swarm, 100..103, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    assert_announce_refused(&mut abuser, swarm, peer_id(1), "swarm is full (3 peers)").await;
    members[0]
        .assert_counts(swarm, peer_id(100), None, (0, 3))
        .await;
    honest.assert_unaffected().await;
}

// Sockets per IP, and X-Forwarded-For.

#[tokio::test]
async fn too_many_sockets_from_one_ip_get_503_and_the_slot_comes_back() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let abuser = app.peer().await;
    let (status, body) = refused_upgrade(&app.ws_url(), &[], "a fourth socket from one IP").await;
    assert_eq!(status, 503);
    assert!(body.contains("max_connections_per_ip"), "{body}");
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

/// An upgrade forwarded for `client` (an X-Forwarded-For value); `Err` with the status
/// when refused.
async fn forwarded_for(app: &TestApp, client: &str) -> Result<TestPeer, (u16, String)> {
    try_connect(&app.ws_url(), &[("X-Forwarded-For", client)]).await
}

/// An upgrade forwarded for `client` that the per-IP cap must refuse with 503; `what`
/// names it in the panic when it is admitted.
async fn assert_forwarded_refused(app: &TestApp, client: &str, what: &str) {
    let headers = [("X-Forwarded-For", client)];
    let (status, _) = refused_upgrade(&app.ws_url(), &headers, what).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_capped() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let _one = forwarded_for(&app, "203.0.113.7")
        .await
        .expect("first client admitted");
    let _two = forwarded_for(&app, "203.0.113.8")
        .await
        .expect("another client admitted");
    assert_forwarded_refused(&app, "203.0.113.7", "a second socket of 203.0.113.7").await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_without_a_trusted_proxy() {
    let app = spawn_app_configured(|settings| settings.server.max_connections_per_ip = 3);
    let mut honest = HonestPair::join(&app).await;
    let _third = forwarded_for(&app, "203.0.113.7")
        .await
        .expect("third socket from 127.0.0.1 admitted");
    let what = "a socket with a forged X-Forwarded-For (escaping the per-IP cap)";
    assert_forwarded_refused(&app, "203.0.113.8", what).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_spoofed_leftmost_forwarded_hop_does_not_escape_the_cap() {
    let app = spawn_app_configured(behind_proxy);
    let mut honest = honest_behind_proxy(&app).await;
    let _one = forwarded_for(&app, "6.6.6.6, 203.0.113.9")
        .await
        .expect("admitted as 203.0.113.9");
    let what = "a socket whose client-chosen leftmost hop was believed";
    assert_forwarded_refused(&app, "7.7.7.7, 203.0.113.9", what).await;
    let _other = forwarded_for(&app, "203.0.113.9, 203.0.113.10")
        .await
        .expect("admitted as 203.0.113.10");
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Slow readers, half-open and slow connections
// ---------------------------------------------------------------------------------------

/// A ping from a client that does not read: given up after 50 ms, as the write may block
/// once the server stops reading too.
async fn ping_briefly(raw: &mut RawWs) {
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        raw.send_frame(true, opcode::PING, b""),
    )
    .await;
}

/// A client that announces into a busy swarm and then never reads: the server's memory
/// stays bounded, the peer leaves its swarm after `swarm.max_dropped_deliveries` relays
/// it could not take, and the server cuts the TCP connection within a bounded time.
#[tokio::test]
async fn a_slow_reader_is_bounded_removed_and_cut() {
    let app = spawn_app_configured(|settings| {
        short_idle_timeout(settings);
        settings.ws.session_mailbox = 4;
        settings.swarm.max_dropped_deliveries = 3;
        settings.tracker.max_sdp_bytes = 60_000;
        settings.ws.max_messages_per_sec = 100_000;
        settings.ws.message_burst = 100_000;
    });
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut sender = app.peer().await;
    sender
        .assert_counts(swarm, peer_id(2), Some("started"), (0, 1))
        .await;

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
            ping_briefly(&mut slow).await;
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
        ping_briefly(&mut slow).await;
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
    let app = spawn_app_configured(short_idle_timeout);
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

/// The server ends `stream` within 5 s, answering at most a 408; returns how long after
/// `opened` it ended.
async fn assert_cut_since(stream: &mut tokio::net::TcpStream, opened: Instant) -> Duration {
    let raw = read_until_closed(stream, Duration::from_secs(5)).await;
    let elapsed = opened.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        raw.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected response: {text}"
    );
    elapsed
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
    let elapsed = assert_cut_since(&mut stream, opened).await;
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
    let elapsed = assert_cut_since(&mut stream, opened).await;
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Bad upgrades release their slot
// ---------------------------------------------------------------------------------------

/// Sends an upgrade request for /announce with the header lines `headers` (each ending in
/// "\r\n"); it must be refused with `status`. The server admits at most 3 sockets (the
/// honest pair plus one), so a leaked slot would refuse the final check.
async fn refused_upgrade_releases_its_slot(headers: &str, status: u16) {
    let app = spawn_app_configured(|settings| settings.server.max_connections = 3);
    let mut honest = HonestPair::join(&app).await;
    let request = format!(
        "GET /announce HTTP/1.1\r\nHost: {}\r\n{headers}\r\n",
        app.addr
    );
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        match RawWs::upgrade(stream, &request).await {
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
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}

/// RFC 6455 4.2.2: an unknown version gets 426 Upgrade Required.
#[tokio::test]
async fn upgrade_with_an_unsupported_version_is_426_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n",
        426,
    )
    .await;
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}

/// RFC 6455 4.2.1: the key must be base64 of 16 bytes, else 400 (4.2.2).
#[tokio::test]
async fn upgrade_with_a_malformed_sec_websocket_key_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: not base64 at all!\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Huge but legal JSON
// ---------------------------------------------------------------------------------------

/// Peer 1's announce in swarm 1, led by `extra` (a JSON object body fragment, no braces).
fn announce_with_extra(extra: &str) -> String {
    let base = announce_text(info_hash(1), peer_id(1), None, None, &[]);
    format!("{{{extra},{}", &base[1..])
}

/// The abuser's announce `text`, padded with fields the tracker does not know, is answered
/// as if they were absent; the honest pair does not notice.
async fn unknown_fields_are_ignored(app: TestApp, text: String) {
    let mut honest = HonestPair::join(&app).await;
    let mut abuser = app.peer().await;
    abuser.send_text(text).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn ten_thousand_distinct_unknown_keys_are_ignored() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 256 * 1024;
        settings.ws.max_message_bytes = 256 * 1024;
    });
    let extra: Vec<String> = (0..10_000).map(|n| format!("\"k{n}\":0")).collect();
    unknown_fields_are_ignored(app, announce_with_extra(&extra.join(","))).await;
}

#[tokio::test]
async fn ten_thousand_repeats_of_an_unknown_key_are_ignored() {
    let text = announce_with_extra(&vec!["\"x\":0"; 10_000].join(","));
    assert!(text.len() < 65_536, "{}", text.len());
    unknown_fields_are_ignored(spawn_app(), text).await;
}

#[tokio::test]
async fn a_60_kib_string_in_an_unknown_field_is_ignored() {
    let extra = format!("\"trackerid\":\"{}\"", "z".repeat(60 * 1024));
    unknown_fields_are_ignored(spawn_app(), announce_with_extra(&extra)).await;
}

#[tokio::test]
async fn a_60_kib_event_is_refused_without_echoing_it() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut abuser = app.peer().await;
    let swarm = info_hash(1);
    let text = announce_text(swarm, peer_id(1), Some(&"e".repeat(60 * 1024)), None, &[]);
    abuser.send_text(text).await;
    let failure = assert_refused(&mut abuser, Some(swarm), "unknown event").await;
    let reason = failure["failure reason"].as_str().expect("reason");
    assert!(
        reason.len() < 200,
        "the failure echoes the input: {} bytes",
        reason.len()
    );
    // The socket stays open.
    abuser.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    honest.assert_unaffected().await;
}
