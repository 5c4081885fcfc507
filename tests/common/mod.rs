//! Shared test harness: start the real server in-process on 127.0.0.1:0 (its own actix
//! System on a thread), and speak real WebSocket frames to it with tokio-tungstenite.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::mpsc, thread, time::Duration};

use futures_util::{SinkExt, StreamExt};
use p2p_mediastream::{
    protocol::{
        client::{announce_text, answer_text, parse_tracker_message, TrackerMessage},
        InfoHash, OfferId, PeerId,
    },
    Settings,
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{self, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

/// How long a test waits for a frame it expects.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure that nothing arrives.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A running server; stopped when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<thread::JoinHandle<()>>,
}

/// Settings for tests: loopback, port 0, small worker/shard counts, a temp-free layout.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.swarm.shards = 2;
    settings.http.public_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/public").into();
    settings.http.hls_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/hls").into();
    settings
}

pub fn spawn_app() -> TestApp {
    spawn_app_with(test_settings())
}

pub fn spawn_app_with(settings: Settings) -> TestApp {
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let system = actix_web::rt::System::new();
        system.block_on(async move {
            match p2p_mediastream::start(settings) {
                Ok(running) => {
                    let _ = tx.send(Ok((running.addrs[0], running.handle.clone())));
                    let _ = running.server.await;
                }
                Err(err) => {
                    let _ = tx.send(Err(err.to_string()));
                }
            }
        });
    });
    let (addr, handle) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server did not start in time")
        .expect("server failed to start");
    TestApp {
        addr,
        handle,
        thread: Some(thread),
    }
}

impl TestApp {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/announce", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn peer(&self) -> TestPeer {
        TestPeer::connect(&self.ws_url()).await
    }

    /// GETs /stats.json.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.http_url("/stats.json"))
            .await
            .expect("GET /stats.json")
            .json()
            .await
            .expect("stats json")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command at once; the returned future only waits for completion.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A WebSocket client speaking to the tracker.
pub struct TestPeer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a receive produced, when it was not a text frame.
#[derive(Debug)]
pub enum Received {
    Text(String),
    Closed(Option<CloseFrame>),
    Timeout,
    Error(String),
}

impl TestPeer {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connect");
        Self { ws }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send text");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_raw(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(message).await
    }

    /// Next text frame, close, or timeout; pings and pongs are skipped.
    pub async fn next_event(&mut self, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Received::Timeout,
                Ok(None) => return Received::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => return Received::Text(text.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => return Received::Closed(frame),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(err))) => return Received::Error(err.to_string()),
            }
        }
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        match self.next_event(RECV_TIMEOUT).await {
            Received::Text(text) => serde_json::from_str(&text).expect("server sent JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame parsed as a tracker message.
    pub async fn recv(&mut self) -> TrackerMessage {
        match self.next_event(RECV_TIMEOUT).await {
            Received::Text(text) => parse_tracker_message(&text).expect("tracker message"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts that no text frame arrives within the quiet period.
    pub async fn expect_silence(&mut self) {
        match self.next_event(QUIET_PERIOD).await {
            Received::Timeout => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_event(RECV_TIMEOUT).await {
                Received::Closed(frame) => return frame.map(|frame| u16::from(frame.code)),
                Received::Text(_) => continue,
                Received::Error(_) => return None,
                Received::Timeout => panic!("server did not close the socket"),
            }
        }
    }

    pub async fn announce(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        event: Option<&str>,
        offers: &[(OfferId, &str)],
    ) {
        self.send_text(announce_text(info_hash, peer_id, event, None, offers))
            .await;
    }

    pub async fn answer(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        to_peer_id: PeerId,
        offer_id: OfferId,
        sdp: &str,
    ) {
        self.send_text(answer_text(info_hash, peer_id, to_peer_id, offer_id, sdp))
            .await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
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

pub fn fake_sdp(len: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n");
    while sdp.len() < len {
        sdp.push_str("a=x\r\n");
    }
    sdp.truncate(len);
    sdp
}

/// Polls /stats.json until `check` holds (bounded), for effects that happen after a
/// socket closes.
pub async fn wait_for_stats(
    app: &TestApp,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let stats = app.stats().await;
        if check(&stats) {
            return stats;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("stats never reached the expected state: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
