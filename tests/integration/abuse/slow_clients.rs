//! Slow and silent clients: a reader that stops reading, a socket that sends nothing, a
//! request head that never ends, a connection that never sends a request.

use std::time::{Duration, Instant};

use p2p_mediastream::protocol::client::announce_text;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::*;

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
    let (pings, code) = silent
        .pings_until_close(Duration::from_secs(8), async || honest.keepalive().await)
        .await;
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
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
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
async fn assert_cut_since(stream: &mut TcpStream, opened: Instant) -> Duration {
    let raw = read_until_closed(stream, Duration::from_secs(5)).await;
    let elapsed = opened.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        raw.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected response: {text}"
    );
    elapsed
}

/// A server that cuts a connection whose request head is not in within 1 s, an honest
/// pair on it, and a new TCP connection to it with the moment it was opened.
async fn connected_under_a_1_s_request_timeout() -> (TestApp, HonestPair, TcpStream, Instant) {
    let app = spawn_app_configured(|settings| settings.server.client_request_timeout_secs = 1);
    let honest = HonestPair::join(&app).await;
    let stream = TcpStream::connect(app.addr).await.expect("connect");
    (app, honest, stream, Instant::now())
}

#[tokio::test]
async fn slowloris_request_head_is_cut_after_the_client_request_timeout() {
    let (app, mut honest, mut stream, opened) = connected_under_a_1_s_request_timeout().await;
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
    let (_app, mut honest, mut stream, opened) = connected_under_a_1_s_request_timeout().await;
    let elapsed = assert_cut_since(&mut stream, opened).await;
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    honest.assert_unaffected().await;
}
