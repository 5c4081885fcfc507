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

// ---------------------------------------------------------------------------------------
// Helpers added for the integration suites (announce, signalling, scrape, limits,
// malformed, http, config). Existing helpers above are unchanged.
// ---------------------------------------------------------------------------------------

/// Starts a server with `test_settings()` changed by `change`.
pub fn spawn_app_configured(change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    change(&mut settings);
    spawn_app_with(settings)
}

/// The announce response fields a test checks: (complete, incomplete, interval, info_hash
/// as the JSON string it arrived as).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceReply {
    pub complete: u64,
    pub incomplete: u64,
    pub interval: u64,
    pub info_hash: String,
}

impl TestPeer {
    /// The next frame, which must be an announce response (not an offer, answer or
    /// failure).
    pub async fn recv_announce_reply(&mut self) -> AnnounceReply {
        let value = self.recv_json().await;
        assert!(
            value.get("failure reason").is_none()
                && value.get("offer").is_none()
                && value.get("answer").is_none(),
            "expected an announce response, got {value}"
        );
        assert_eq!(value["action"], "announce", "{value}");
        let number = |key: &str| {
            value[key]
                .as_u64()
                .unwrap_or_else(|| panic!("`{key}` missing in {value}"))
        };
        AnnounceReply {
            complete: number("complete"),
            incomplete: number("incomplete"),
            interval: number("interval"),
            info_hash: value["info_hash"]
                .as_str()
                .unwrap_or_else(|| panic!("info_hash missing in {value}"))
                .to_owned(),
        }
    }

    /// Announces (`event`, no `left`, no offers) and returns (complete, incomplete).
    pub async fn announce_counts(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        event: Option<&str>,
    ) -> (u64, u64) {
        self.announce(info_hash, peer_id, event, &[]).await;
        let reply = self.recv_announce_reply().await;
        assert_eq!(reply.info_hash, info_hash.to_wire());
        (reply.complete, reply.incomplete)
    }

    /// The next frame, which must be a failure; returned as JSON. Checks that it carries an
    /// `action` (never a bare failure).
    pub async fn recv_failure(&mut self) -> serde_json::Value {
        let value = self.recv_json().await;
        assert!(
            value["failure reason"].is_string(),
            "expected a failure, got {value}"
        );
        assert!(
            value["action"].is_string(),
            "a failure must carry `action`: {value}"
        );
        value
    }

    /// Every text frame that arrives until the socket has been quiet for `QUIET_PERIOD`
    /// (at most 100 frames), as JSON.
    pub async fn drain_json(&mut self) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        for _ in 0..100 {
            match self.next_event(QUIET_PERIOD).await {
                Received::Text(text) => {
                    frames.push(serde_json::from_str(&text).expect("server sent JSON"))
                }
                Received::Timeout => return frames,
                other => panic!("expected text frames or silence, got {other:?}"),
            }
        }
        panic!("more than 100 frames arrived");
    }
}

/// Connects a WebSocket client to `url` with extra request headers; returns the HTTP
/// status of a refused upgrade as `Err(status, body)`.
pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<TestPeer, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            tungstenite::http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(TestPeer { ws }),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(err) => panic!("WebSocket connect failed without an HTTP status: {err}"),
    }
}

/// A raw HTTP/1.1 exchange (for paths an URL parser would normalise, and Host headers):
/// returns (status, lower-cased header lines, body).
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(line_end) = data.windows(2).position(|window| window == b"\r\n") else {
            break;
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Polls /stats.json until `check` holds or `within` passes (then panics).
pub async fn wait_for_stats_within(
    app: &TestApp,
    within: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = app.stats().await;
        if check(&stats) {
            return stats;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("stats never reached the expected state within {within:?}: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `peersCount` and `torrentsCount` of /stats.json.
pub fn peers_and_torrents(stats: &serde_json::Value) -> (u64, u64) {
    (
        stats["peersCount"].as_u64().expect("peersCount"),
        stats["torrentsCount"].as_u64().expect("torrentsCount"),
    )
}

// ---------------------------------------------------------------------------------------
// Helpers added for the abuse, access-control and fault suites: an honest pair of peers
// that must stay unaffected by abuse elsewhere, and a hand-made WebSocket client over raw
// TCP (for frames and behaviours a WebSocket library will not produce).
// ---------------------------------------------------------------------------------------

/// Two honest peers, A and B, in their own swarm. Set up before an abuse; afterwards
/// `assert_unaffected` checks that they still signal normally.
pub struct HonestPair {
    pub a: TestPeer,
    pub b: TestPeer,
    pub swarm: InfoHash,
    pub peer_a: PeerId,
    pub peer_b: PeerId,
    round: u32,
}

/// Ids of the honest pair's swarm and peers (no test uses them otherwise).
pub const HONEST_BASE: u32 = 970_000;

impl HonestPair {
    pub async fn join(app: &TestApp) -> Self {
        Self::join_with(app, &[], &[]).await
    }

    /// `join` on `app`, keeping the server with the pair: the opening of a test in which
    /// something else happens beside the pair, `let (app, mut honest) = ...`.
    pub async fn join_app(app: TestApp) -> (TestApp, Self) {
        let pair = Self::join(&app).await;
        (app, pair)
    }

    /// As `join`, with extra upgrade request headers for A's and B's sockets.
    pub async fn join_with(
        app: &TestApp,
        headers_a: &[(&str, &str)],
        headers_b: &[(&str, &str)],
    ) -> Self {
        let url = app.ws_url();
        let mut a = try_connect(&url, headers_a)
            .await
            .unwrap_or_else(|err| panic!("honest peer A refused: {err:?}"));
        let mut b = try_connect(&url, headers_b)
            .await
            .unwrap_or_else(|err| panic!("honest peer B refused: {err:?}"));
        let swarm = info_hash(HONEST_BASE);
        let peer_a = peer_id(HONEST_BASE + 1);
        let peer_b = peer_id(HONEST_BASE + 2);
        assert_eq!(
            a.announce_counts(swarm, peer_a, Some("started")).await,
            (0, 1)
        );
        assert_eq!(
            b.announce_counts(swarm, peer_b, Some("started")).await,
            (0, 2)
        );
        Self {
            a,
            b,
            swarm,
            peer_a,
            peer_b,
            round: 0,
        }
    }

    /// Client pings on both sockets, so short idle timeouts do not close them while a test
    /// is busy elsewhere.
    pub async fn keepalive(&mut self) {
        let _ = self.a.send_raw(Message::Ping(Vec::new().into())).await;
        let _ = self.b.send_raw(Message::Ping(Vec::new().into())).await;
    }

    /// A announces with one offer; B receives it and answers; A gets the answer; both see
    /// the swarm at (0 seeders, 2 leechers). Nothing else may arrive on either socket.
    pub async fn assert_unaffected(&mut self) {
        self.round += 1;
        let offer = offer_id(HONEST_BASE + 100 + self.round);
        let sdp = format!("v=0 honest offer {}", self.round);
        self.a
            .announce(self.swarm, self.peer_a, None, &[(offer, sdp.as_str())])
            .await;
        let reply = self.a.recv_announce_reply().await;
        assert_eq!(
            (reply.complete, reply.incomplete),
            (0, 2),
            "honest A's announce counts"
        );
        assert_eq!(reply.info_hash, self.swarm.to_wire());
        match self.b.recv().await {
            TrackerMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp: got,
            } => {
                assert_eq!(info_hash, self.swarm);
                assert_eq!(peer_id, self.peer_a);
                assert_eq!(offer_id, offer);
                assert_eq!(got, sdp);
            }
            other => panic!("honest B expected A's offer, got {other:?}"),
        }
        let answer_sdp = format!("v=0 honest answer {}", self.round);
        self.b
            .answer(self.swarm, self.peer_b, self.peer_a, offer, &answer_sdp)
            .await;
        match self.a.recv().await {
            TrackerMessage::Answer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => {
                assert_eq!(info_hash, self.swarm);
                assert_eq!(peer_id, self.peer_b);
                assert_eq!(offer_id, offer);
                assert_eq!(sdp, answer_sdp);
            }
            other => panic!("honest A expected B's answer, got {other:?}"),
        }
        assert_eq!(
            self.b.announce_counts(self.swarm, self.peer_b, None).await,
            (0, 2),
            "honest B's announce counts"
        );
    }
}

/// WebSocket opcodes, for raw frames.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One client frame, masked as RFC 6455 requires of clients.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4]),
    );
    frame
}

/// A WebSocket upgrade request head for `path`, with `extra` header lines (each ending in
/// "\r\n").
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// What a raw client read.
#[derive(Debug)]
pub enum RawEvent {
    Frame {
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    },
    /// The server closed the TCP connection (or reset it).
    Eof,
    Timeout,
}

/// A WebSocket client over a raw TCP stream: frames are written and read by hand.
pub struct RawWs {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades at the tracker path.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::upgrade(stream, &upgrade_request(addr, "/announce", ""))
            .await
            .unwrap_or_else(|(status, _)| panic!("upgrade refused with {status}"))
    }

    /// Sends `request` on `stream` and reads the response head; `Err((status, head))`
    /// unless it is 101.
    pub async fn upgrade(mut stream: TcpStream, request: &str) -> Result<Self, (u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade request");
        let mut buffer = Vec::new();
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("upgrade response in time")
                .expect("read upgrade response");
            assert!(read > 0, "connection closed before the response head");
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        if status != 101 {
            return Err((status, head));
        }
        buffer.drain(..head_end);
        Ok(Self { stream, buffer })
    }

    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(&client_frame(fin, opcode, payload))
            .await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, opcode::TEXT, text.as_bytes())
            .await
            .expect("send text frame");
    }

    /// The next frame from the server, EOF (or reset), or nothing within `within`.
    pub async fn read_frame(&mut self, within: Duration) -> RawEvent {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buffer) {
                self.buffer.drain(..used);
                return frame;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return RawEvent::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return RawEvent::Eof,
                Ok(Ok(read)) => self.buffer.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// The next text frame as JSON, skipping pings and pongs; panics on anything else.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        loop {
            match self.read_frame(RECV_TIMEOUT).await {
                RawEvent::Frame {
                    opcode: opcode::TEXT,
                    payload,
                    ..
                } => return serde_json::from_slice(&payload).expect("server sent JSON"),
                RawEvent::Frame {
                    opcode: opcode::PING | opcode::PONG,
                    ..
                } => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Waits for a close frame (skipping text, pings and pongs); returns its code, or
    /// `None` when the connection ended without one.
    pub async fn expect_close(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                RawEvent::Frame {
                    opcode: opcode::CLOSE,
                    payload,
                    ..
                } => {
                    return (payload.len() >= 2)
                        .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                }
                RawEvent::Frame { .. } => continue,
                RawEvent::Eof => return None,
                RawEvent::Timeout => panic!("server did not close within {within:?}"),
            }
        }
    }

    /// Asserts that no text frame arrives within the quiet period (pings are skipped).
    pub async fn expect_silence(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                RawEvent::Timeout => return,
                RawEvent::Frame {
                    opcode: opcode::PING | opcode::PONG,
                    ..
                } => continue,
                other => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `data`.
fn parse_server_frame(data: &[u8]) -> Option<(RawEvent, usize)> {
    if data.len() < 2 {
        return None;
    }
    let fin = data[0] & 0x80 != 0;
    let opcode = data[0] & 0x0F;
    let (len, mut offset) = match data[1] & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = data.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        len => (usize::from(len), 2),
    };
    let masked = data[1] & 0x80 != 0;
    let mask = if masked {
        let mask: [u8; 4] = data.get(offset..offset + 4)?.try_into().ok()?;
        offset += 4;
        Some(mask)
    } else {
        None
    };
    let mut payload = data.get(offset..offset + len)?.to_vec();
    if let Some(mask) = mask {
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[index % 4];
        }
    }
    Some((
        RawEvent::Frame {
            fin,
            opcode,
            payload,
        },
        offset + len,
    ))
}

/// Reads a Prometheus counter (sum over its label sets) from /metrics text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, value| sum + value)
}

impl TestApp {
    /// GETs /metrics as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.http_url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// `webSocketsCount` of /stats.json.
pub fn websockets(stats: &serde_json::Value) -> u64 {
    stats["connections"].as_u64().expect("connections")
}

/// The real binary, started on 127.0.0.1 with an OS-chosen port and the given extra
/// environment (`TRACKER__…`); its stderr is drained by a thread into `lines`. Killed on
/// drop if a test did not stop it.
pub struct BinaryServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
}

impl BinaryServer {
    pub fn start(env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut command = Command::new(env!("CARGO_BIN_EXE_p2p-mediastream"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TRACKER__SERVER__HOST", "127.0.0.1")
            .env("TRACKER__SERVER__PORT", "0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the binary");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining even when nobody listens, so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no 'listening on' line; stderr so far: {seen:#?}"));
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().expect("address");
                break addr.parse().expect("socket address");
            }
            seen.push(line);
        };
        Self { child, addr, lines }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line containing {needle:?} within {timeout:?}"),
            }
        }
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shorthands shared by the suites, for the sequences they all repeat: joining a swarm,
// an announce whose counts are checked, a failure in a given swarm, a refused upgrade.
// ---------------------------------------------------------------------------------------

impl TestPeer {
    /// Joins `info_hash` as `peer_id` (event `started`, no `left`, no offers); returns the
    /// announce response.
    pub async fn join_swarm(&mut self, info_hash: InfoHash, peer_id: PeerId) -> AnnounceReply {
        self.announce(info_hash, peer_id, Some("started"), &[])
            .await;
        self.recv_announce_reply().await
    }

    /// Announces (`event`, no `left`, no offers) and asserts that the response carries
    /// `expected` (complete, incomplete). The message names the announce, so a failing
    /// step of a scripted test says which one it was.
    pub async fn assert_counts(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        event: Option<&str>,
        expected: (u64, u64),
    ) {
        let counts = self.announce_counts(info_hash, peer_id, event).await;
        assert_eq!(
            counts,
            expected,
            "(complete, incomplete) after {event:?} from peer {:?} in swarm {:?}",
            peer_id.to_wire(),
            info_hash.to_wire()
        );
    }

    /// The next frame, which must be a failure of an announce or answer in `info_hash`
    /// (`action` "announce" and that `info_hash`); returned for further checks.
    pub async fn recv_failure_in(&mut self, info_hash: InfoHash) -> serde_json::Value {
        let failure = self.recv_failure().await;
        assert_eq!(failure["action"], "announce", "{failure}");
        assert_eq!(failure["info_hash"], info_hash.to_wire(), "{failure}");
        failure
    }
}

/// A settings change for idle-timeout tests: the server pings every second and closes a
/// socket it has heard nothing from for 2 s.
pub fn short_idle_timeout(settings: &mut Settings) {
    settings.ws.ping_interval_secs = 1;
    settings.ws.idle_timeout_secs = 2;
}

impl TestApp {
    /// `N` WebSocket clients, connected one after the other.
    pub async fn peers<const N: usize>(&self) -> [TestPeer; N] {
        let mut peers = Vec::with_capacity(N);
        for _ in 0..N {
            peers.push(self.peer().await);
        }
        match peers.try_into() {
            Ok(peers) => peers,
            Err(_) => unreachable!("exactly N peers were connected"),
        }
    }
}

/// An upgrade at `url` (with extra request `headers`) that must be refused; returns the
/// (status, body) of the refusal. `what` names the attempt in the panic when it is
/// admitted instead.
pub async fn refused_upgrade(url: &str, headers: &[(&str, &str)], what: &str) -> (u16, String) {
    match try_connect(url, headers).await {
        Err(refusal) => refusal,
        Ok(_) => panic!("{what} was admitted"),
    }
}
