//! Limits: frame and message sizes, the connection cap, the idle timeout, the Origin
//! allow-list, upgrades at the root path. Caps per socket, per swarm and per IP, SDP
//! sizes, offers per announce and the per-socket message rate are in `abuse`.

use std::time::{Duration, Instant};

use crate::common::*;
use p2p_mediastream::protocol::client::announce_text;
use serde_json::json;
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

fn text_fragment(payload: impl Into<Vec<u8>>, first: bool, last: bool) -> Message {
    let opcode = if first { Data::Text } else { Data::Continue };
    Message::Frame(Frame::message(payload.into(), OpCode::Data(opcode), last))
}

/// A valid announce padded with spaces to exactly `len` bytes.
fn padded_announce(len: usize) -> String {
    let mut text = announce_text(info_hash(1), peer_id(1), Some("started"), None, &[]);
    assert!(text.len() <= len);
    text.insert_str(text.len() - 1, &" ".repeat(len - text.len()));
    assert_eq!(text.len(), len);
    text
}

/// Frames up to 4 KiB, messages (reassembled fragments) up to 8 KiB.
fn small_frames_and_messages(settings: &mut p2p_mediastream::Settings) {
    settings.ws.max_frame_bytes = 4096;
    settings.ws.max_message_bytes = 8192;
}

#[tokio::test]
async fn a_frame_of_exactly_max_frame_bytes_is_processed() {
    let app = spawn_app();
    let mut peer = app.peer().await;
    peer.send_text(padded_announce(64 * 1024)).await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
}

#[tokio::test]
async fn a_frame_above_max_frame_bytes_closes_with_1009() {
    let app = spawn_app();
    let mut peer = app.peer().await;
    peer.send_text(padded_announce(64 * 1024 + 1)).await;
    assert_eq!(peer.expect_close().await, Some(1009));
    let stats = wait_for_stats(&app, |stats| stats["servers"][0]["webSocketsCount"] == 0).await;
    assert_eq!(peers_and_torrents(&stats), (0, 0));
}

#[tokio::test]
async fn a_frame_above_a_configured_max_frame_bytes_closes_with_1009() {
    let app = spawn_app_configured(small_frames_and_messages);
    let mut peer = app.peer().await;
    peer.send_text(padded_announce(4096)).await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
    peer.send_text(padded_announce(4097)).await;
    assert_eq!(peer.expect_close().await, Some(1009));
}

#[tokio::test]
async fn a_fragmented_message_above_max_message_bytes_closes_with_1009() {
    let app = spawn_app_configured(small_frames_and_messages);
    let mut peer = app.peer().await;
    // Three fragments, each within the frame limit, 9000 bytes together.
    let chunk = " ".repeat(3000);
    peer.send_raw(text_fragment(chunk.clone(), true, false))
        .await
        .expect("send");
    peer.send_raw(text_fragment(chunk.clone(), false, false))
        .await
        .expect("send");
    // The server may already have closed; the write error is then expected.
    let _ = peer.send_raw(text_fragment(chunk, false, true)).await;
    assert_eq!(peer.expect_close().await, Some(1009));
}

#[tokio::test]
async fn a_fragmented_message_within_the_limits_is_processed_normally() {
    let app = spawn_app_configured(small_frames_and_messages);
    let mut peer = app.peer().await;
    // 7000 bytes in three frames, with a ping between fragments (allowed by RFC 6455).
    let text = padded_announce(7000);
    let bytes = text.as_bytes();
    peer.send_raw(text_fragment(&bytes[..3000], true, false))
        .await
        .expect("send");
    peer.send_raw(Message::Ping(b"between".to_vec().into()))
        .await
        .expect("ping");
    peer.send_raw(text_fragment(&bytes[3000..6000], false, false))
        .await
        .expect("send");
    peer.send_raw(text_fragment(&bytes[6000..], false, true))
        .await
        .expect("send");
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
    // And the next unfragmented message too.
    peer.announce(info_hash(1), peer_id(1), None, &[]).await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
}

#[tokio::test]
async fn max_connections_refuses_further_upgrades_with_503() {
    let app = spawn_app_configured(|settings| {
        settings.server.max_connections = 2;
        settings.server.max_connections_per_ip = 0;
    });
    let first = app.peer().await;
    let mut second = app.peer().await;
    let (status, body) = refused_upgrade(&app.ws_url(), &[], "a third connection").await;
    assert_eq!(status, 503);
    assert!(body.contains("max_connections"), "{body}");
    // The two admitted ones work.
    let reply = second.join_swarm(info_hash(1), peer_id(2)).await;
    assert_eq!(reply.incomplete, 1);
    // Closing one frees its slot.
    first.close().await;
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok(peer) = try_connect(&app.ws_url(), &[]).await {
            admitted = Some(peer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = admitted.expect("a slot was freed");
    let reply = third.join_swarm(info_hash(1), peer_id(3)).await;
    assert_eq!(reply.incomplete, 2);
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_after_the_idle_timeout_and_its_peers_leave() {
    let app = spawn_app_configured(short_idle_timeout);
    let mut silent = RawWs::connect(app.addr).await;
    let announce = announce_text(info_hash(1), peer_id(1), Some("started"), None, &[]);
    silent.send_text(&announce).await;
    let last_sent = Instant::now();
    let reply: serde_json::Value = match silent.read_frame(RECV_TIMEOUT).await {
        RawEvent::Frame {
            opcode: opcode::TEXT,
            payload,
            ..
        } => serde_json::from_slice(&payload).expect("json"),
        other => panic!("expected the announce response, got {other:?}"),
    };
    assert_eq!(reply["incomplete"], 1);
    assert_eq!(peers_and_torrents(&app.stats().await), (1, 1));

    // From now on the client sends nothing. It sees pings, then a close with 1001.
    let (pings, code) = silent
        .pings_until_close(Duration::from_secs(8), async || {})
        .await;
    let closed_after = last_sent.elapsed();
    assert!(pings >= 1, "the server pinged before giving up");
    assert_eq!(code, Some(1001));
    assert!(
        closed_after >= Duration::from_millis(1900),
        "closed after {closed_after:?}, before the 2 s idle timeout"
    );
    let stats = wait_for_stats(&app, |stats| {
        stats["servers"][0]["webSocketsCount"] == 0 && peers_and_torrents(stats) == (0, 0)
    })
    .await;
    assert_eq!(peers_and_torrents(&stats), (0, 0));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_open_beyond_the_idle_timeout() {
    let app = spawn_app_configured(short_idle_timeout);
    let mut peer = app.peer().await;
    peer.join_swarm(info_hash(1), peer_id(1)).await;
    // Reading answers pings automatically; nothing else is sent for 4.5 s (> 2 x idle).
    match peer.next_event(Duration::from_millis(4500)).await {
        Received::Timeout => {}
        other => panic!("expected the socket to stay open and quiet, got {other:?}"),
    }
    peer.announce(info_hash(1), peer_id(1), None, &[]).await;
    assert_eq!(peer.recv_announce_reply().await.incomplete, 1);
    assert_eq!(peers_and_torrents(&app.stats().await), (1, 1));
}

#[tokio::test]
async fn the_origin_allow_list_refuses_wrong_and_missing_origins_with_403() {
    let app = spawn_app_configured(|settings| {
        settings.ws.allowed_origins = vec!["https://player.example".into()];
    });
    for headers in [
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "https://player.example.evil")],
        vec![("Origin", "http://player.example")],
        vec![],
    ] {
        let what = format!("upgrade with {headers:?}");
        let (status, _) = refused_upgrade(&app.ws_url(), &headers, &what).await;
        assert_eq!(status, 403, "{headers:?}");
    }
    let mut peer = try_connect(&app.ws_url(), &[("Origin", "https://player.example")])
        .await
        .unwrap_or_else(|(status, body)| panic!("allowed origin refused: {status} {body}"));
    let reply = peer.join_swarm(info_hash(1), peer_id(1)).await;
    assert_eq!(reply.incomplete, 1);
    // Refused upgrades took no connection slot.
    assert_eq!(app.stats().await["servers"][0]["webSocketsCount"], 1);
}

#[tokio::test]
async fn without_an_allow_list_any_origin_is_accepted() {
    let app = spawn_app();
    let mut peer = try_connect(&app.ws_url(), &[("Origin", "https://anything.example")])
        .await
        .unwrap_or_else(|(status, body)| panic!("refused: {status} {body}"));
    peer.send_json(json!({"action": "scrape", "info_hash": []}))
        .await;
    assert_eq!(
        peer.recv_json().await,
        json!({"action": "scrape", "files": {}})
    );
}

#[tokio::test]
async fn the_tracker_also_accepts_upgrades_at_the_root_path() {
    let app = spawn_app();
    let mut peer = TestPeer::connect(&format!("ws://{}/", app.addr)).await;
    let reply = peer.join_swarm(info_hash(1), peer_id(1)).await;
    assert_eq!(reply.incomplete, 1);
}
