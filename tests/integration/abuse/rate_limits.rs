//! Floods against the per-socket rate limit (ws.max_messages_per_sec=5,
//! message_burst=10, max_rate_limited_messages=20): text and ping floods, one bucket for
//! both, recovery, and fragmented messages over the rate.

use std::time::Duration;

use futures_util::StreamExt;
use p2p_mediastream::protocol::client::announce_text;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{continuation_frame, raw_socket_sending, text_frame};
use crate::common::*;

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
    // The abuser's socket is gone, and its peer with it: the honest pair remains.
    wait_for_stats(&app, |stats| {
        websockets(stats) == 2 && peers_and_torrents(stats) == (2, 1)
    })
    .await;
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
