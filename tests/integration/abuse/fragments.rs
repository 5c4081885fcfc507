//! Fragmentation abuse over a raw socket: fragment floods, continuations out of place,
//! binary and invalid UTF-8 fragments, the message cap across fragments, and pings
//! between fragments.

use p2p_mediastream::protocol::client::announce_text;
use serde_json::json;

use super::{binary_frame, continuation_frame, raw_socket_sending, text_frame};
use crate::common::*;

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
