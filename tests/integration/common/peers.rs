//! WebSocket clients for tests: `TestPeer` (tokio-tungstenite) with the tracker's
//! messages, plain upgrades that must be refused, groups of joined peers, and the honest
//! pair that must keep signalling while something else goes wrong.

use std::{net::SocketAddr, ops::Range, time::Duration};

use futures_util::{SinkExt, StreamExt};
use p2p_mediastream::protocol::{
    client::{announce_text, answer_text, parse_tracker_message, TrackerMessage},
    InfoHash, OfferId, PeerId,
};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{self, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

use super::{info_hash, offer_id, peer_id, TestApp, QUIET_PERIOD, RECV_TIMEOUT};

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

    /// Scrapes `swarm` and returns its (complete, incomplete).
    pub async fn scrape_counts(&mut self, swarm: InfoHash) -> (u64, u64) {
        self.send_json(json!({"action": "scrape", "info_hash": swarm.to_wire()}))
            .await;
        let reply = self.recv_json().await;
        let file = &reply["files"][swarm.to_wire()];
        (
            file["complete"].as_u64().expect("complete"),
            file["incomplete"].as_u64().expect("incomplete"),
        )
    }

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

    /// The socket still works (after a refusal): an announce as `peer_id` in `swarm` gets
    /// its response.
    pub async fn assert_usable(&mut self, swarm: InfoHash, peer_id: PeerId) {
        self.announce(swarm, peer_id, None, &[]).await;
        let reply = self.recv_announce_reply().await;
        assert_eq!(reply.info_hash, swarm.to_wire());
    }

    /// The next frame, which must be a failure of an announce or answer in `info_hash`
    /// (`action` "announce" and that `info_hash`); returned for further checks.
    pub async fn recv_failure_in(&mut self, info_hash: InfoHash) -> serde_json::Value {
        let failure = self.recv_failure().await;
        assert_eq!(failure["action"], "announce", "{failure}");
        assert_eq!(failure["info_hash"], info_hash.to_wire(), "{failure}");
        failure
    }
    /// The next frame, which must be a failure in `info_hash` (see `recv_failure_in`)
    /// whose reason contains `words`.
    pub async fn recv_failure_saying(&mut self, info_hash: InfoHash, words: &str) {
        let failure = self.recv_failure_in(info_hash).await;
        assert!(
            failure["failure reason"]
                .as_str()
                .is_some_and(|reason| reason.contains(words)),
            "{failure}"
        );
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

/// An upgrade at `url` (with extra request `headers`) that must be refused; returns the
/// (status, body) of the refusal. `what` names the attempt in the panic when it is
/// admitted instead.
pub async fn refused_upgrade(url: &str, headers: &[(&str, &str)], what: &str) -> (u16, String) {
    match try_connect(url, headers).await {
        Err(refusal) => refusal,
        Ok(_) => panic!("{what} was admitted"),
    }
}

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

/// `count` peers, one socket each to the tracker at `addr`, that announced (`event`) in
/// `swarm` one after the other as `peer_id(n)` for each `n` of `ids`; each saw itself counted
/// after the `already` peers of the swarm and the ones before it.
pub async fn joined_peers(
    addr: SocketAddr,
    swarm: InfoHash,
    ids: Range<u32>,
    event: Option<&str>,
    already: u64,
) -> Vec<TestPeer> {
    let url = format!("ws://{addr}/announce");
    let mut peers = Vec::new();
    for (joined, n) in (1..).zip(ids) {
        let mut peer = TestPeer::connect(&url).await;
        let (_, incomplete) = peer.announce_counts(swarm, peer_id(n), event).await;
        assert_eq!(incomplete, already + joined);
        peers.push(peer);
    }
    peers
}

/// (complete, incomplete) of `swarm` by scrape from a fresh socket, closed afterwards.
pub async fn scrape_counts(app: &TestApp, swarm: InfoHash) -> (u64, u64) {
    let mut probe = app.peer().await;
    let counts = probe.scrape_counts(swarm).await;
    probe.close().await;
    counts
}
