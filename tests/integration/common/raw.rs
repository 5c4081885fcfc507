//! Clients written by hand over TCP, for bytes and behaviours a WebSocket or HTTP library
//! will not produce: `RawWs` writes and reads WebSocket frames itself (and answers nothing,
//! not even pings, unless told to); `raw_http` is one HTTP/1.1 exchange as written.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{QUIET_PERIOD, RECV_TIMEOUT};

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

    /// For a client that sends nothing: reads until the server closes, for at most
    /// `within`, running `between` about every 300 ms. Returns the pings that arrived and
    /// the close frame's code (`None`: the connection ended without one).
    pub async fn pings_until_close(
        &mut self,
        within: Duration,
        mut between: impl AsyncFnMut(),
    ) -> (u32, Option<u16>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut pings = 0;
        loop {
            between().await;
            match self.read_frame(Duration::from_millis(300)).await {
                RawEvent::Frame {
                    opcode: opcode::PING,
                    ..
                } => pings += 1,
                RawEvent::Frame {
                    opcode: opcode::CLOSE,
                    payload,
                } => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (pings, code);
                }
                RawEvent::Frame { opcode, payload } => {
                    panic!("unexpected frame {opcode:#x}: {payload:?}")
                }
                RawEvent::Eof => return (pings, None),
                RawEvent::Timeout => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not closed within {within:?}"
            );
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
    let opcode = data[0] & 0x0F;
    let (len, offset) = match data[1] & 0x7F {
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
    assert_eq!(data[1] & 0x80, 0, "server frames are not masked");
    let payload = data.get(offset..offset + len)?.to_vec();
    Some((RawEvent::Frame { opcode, payload }, offset + len))
}

/// A raw HTTP/1.1 exchange (for paths an URL parser would normalise, and Host headers):
/// returns (status, lower-cased header lines, body).
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
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
