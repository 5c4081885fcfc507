//! The tracker's WebSocket transport on the raw socket (src/connection/upgrade.rs, io.rs): what
//! the HTTP layer hands over at the upgrade, how frames are cut out of the byte stream,
//! and how connections end. Raw frames over TCP, so that the byte boundaries are ours.

use crate::common::*;
use p2p_mediastream::protocol::client::announce_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An announce with no offers, as text.
fn announce(swarm: u32, peer: u32) -> String {
    announce_text(info_hash(swarm), peer_id(peer), None, None, &[])
}

#[tokio::test]
async fn a_first_frame_sent_together_with_the_upgrade_request_is_served() {
    let app = spawn_app();
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // Request head and first frame in one write: the frame reaches the server in the
    // same read as the head, so it sits in the HTTP layer's buffer at the upgrade.
    let mut bytes = upgrade_request(app.addr, "/announce", "").into_bytes();
    bytes.extend(client_frame(true, opcode::TEXT, announce(1, 1).as_bytes()));
    stream.write_all(&bytes).await.expect("write");
    let mut ws = RawWs::upgrade(stream, "").await.expect("101");
    let reply = ws.recv_json().await;
    assert_eq!(reply["action"], "announce");
    assert_eq!(reply["incomplete"], 1);
}

#[tokio::test]
async fn frames_split_across_many_writes_and_many_frames_in_one_write_are_both_decoded() {
    let app = spawn_app();
    let mut ws = RawWs::connect(app.addr).await;

    // One announce, one byte per write.
    for byte in client_frame(true, opcode::TEXT, announce(1, 1).as_bytes()) {
        ws.stream.write_all(&[byte]).await.expect("write");
        ws.stream.flush().await.expect("flush");
    }
    assert_eq!(ws.recv_json().await["incomplete"], 1);

    // Three announces (three swarms) in one write: three replies, in order.
    let mut batch = Vec::new();
    for swarm in 2..=4 {
        batch.extend(client_frame(
            true,
            opcode::TEXT,
            announce(swarm, 1).as_bytes(),
        ));
    }
    ws.stream.write_all(&batch).await.expect("write");
    for swarm in 2..=4 {
        let reply = ws.recv_json().await;
        assert_eq!(
            reply["info_hash"],
            info_hash(swarm).to_wire(),
            "reply order"
        );
        assert_eq!(reply["incomplete"], 1);
    }
}

#[tokio::test]
async fn a_websocket_upgrade_off_the_tracker_path_is_refused_with_404() {
    let app = spawn_app();
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    match RawWs::upgrade(stream, &upgrade_request(app.addr, "/hls/live.m3u8", "")).await {
        Err((status, head)) => {
            assert_eq!(status, 404, "{head}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
        }
        Ok(_) => panic!("an upgrade off the tracker path was accepted"),
    }
    assert_eq!(websockets(&app.stats().await), 0);
}

#[tokio::test]
async fn after_its_close_frame_the_server_ends_the_tcp_connection() {
    let app = spawn_app();
    let mut ws = RawWs::connect(app.addr).await;
    ws.send_frame(true, opcode::BINARY, b"binary is not supported")
        .await
        .expect("send");
    assert_eq!(ws.expect_close(RECV_TIMEOUT).await, Some(1003));
    // The server shuts its side down once the close frame is out: the next read is EOF,
    // without our close frame having to answer first.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(RECV_TIMEOUT, ws.stream.read_to_end(&mut rest))
        .await
        .expect("EOF in time");
    assert!(read.is_ok(), "{read:?}");
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_frame_is_cleaned_up() {
    let app = spawn_app();
    let mut ws = RawWs::connect(app.addr).await;
    ws.send_text(&announce(1, 1)).await;
    assert_eq!(ws.recv_json().await["incomplete"], 1);
    let frame = client_frame(true, opcode::TEXT, announce(1, 2).as_bytes());
    ws.stream
        .write_all(&frame[..frame.len() / 2])
        .await
        .expect("write half a frame");
    drop(ws);

    // Its slot is freed and its peer leaves the swarm (the swarm, on its shard's thread,
    // hears of it a moment after the session has stopped).
    wait_for_stats(&app, |stats| {
        websockets(stats) == 0 && stats["peersCount"] == 0
    })
    .await;
}
