//! The tracker's WebSocket I/O: moves bytes between the TCP socket of an upgraded
//! connection and the `WebsocketContext` of its `PeerSession`.
//!
//! actix-http would otherwise carry a WebSocket as a streaming response of its HTTP/1
//! dispatcher, which keeps an 8 KiB read and an 8 KiB write buffer (plus the request
//! payload channel) for the life of the connection; at tens of thousands of mostly idle
//! sockets that is most of the server's memory. Here an idle connection holds no buffer at
//! all: reads go through one scratch buffer per thread and only what was read is copied
//! out, and writes keep only the bytes the kernel has not taken yet.
//!
//! Reads go through tokio's `AsyncRead`, which knows that a read shorter than the buffer
//! emptied the socket (epoll is edge-triggered): the next poll waits for new data instead
//! of asking the kernel again, which saves one failing `recv` per wake-up (nearly half of
//! all `recv` calls under load).
//!
//! Backpressure: while the kernel refuses our bytes the session is not polled, so it
//! neither reads nor queues more output (relays to it are dropped at its bounded mailbox,
//! and the connection watchdog cuts it if that lasts).

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{ready, Stream};
use log::debug;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

/// Why the frames of a connection stopped: matched by the session by variant.
#[derive(Debug)]
pub enum ReadError {
    /// A frame larger than `ws.max_frame_bytes`.
    Overflow,
    /// A text frame whose payload is not UTF-8: the client's fault, not a lost link.
    NotUtf8,
    /// Any other breach of RFC 6455 framing (unmasked frame, bad opcode, ...).
    Protocol(ProtocolError),
    /// The socket failed (reset, timeout): the client vanished without a close frame.
    Io(io::Error),
}

impl From<ProtocolError> for ReadError {
    fn from(err: ProtocolError) -> Self {
        match err {
            ProtocolError::Overflow => ReadError::Overflow,
            ProtocolError::Io(err) => ReadError::Io(err),
            other => ReadError::Protocol(other),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Overflow => f.write_str("frame too large"),
            ReadError::NotUtf8 => f.write_str("text frame is not UTF-8"),
            ReadError::Protocol(err) => write!(f, "WebSocket protocol error: {err}"),
            ReadError::Io(err) => write!(f, "connection lost: {err}"),
        }
    }
}

/// Size of the per-thread read buffer: one read takes at most this much.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Most bytes read for one connection before it yields to the others on its thread.
const READ_BUDGET: usize = 4 * SCRATCH_BYTES;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// The messages a client sends, decoded straight off the socket.
///
/// Its buffer holds only an incomplete frame; once every complete frame is handed on it is
/// let go (an emptied `BytesMut` would keep the allocation the frames were split from), so
/// a connection that sent a 10 KB announce does not keep 10 KB while it idles.
/// actix-web-actors' own reader keeps its buffer, which is why the session's context is
/// given a stream that never yields and this one is added to it instead (see `upgrade`).
pub struct FrameReader {
    io: OwnedReadHalf,
    codec: Codec,
    buf: BytesMut,
    read_since_yield: usize,
    finished: bool,
}

impl FrameReader {
    /// `early`: bytes that arrived with the HTTP request, after its head (a client may
    /// send its first frame without waiting for the 101).
    pub fn new(io: OwnedReadHalf, early: BytesMut, codec: Codec) -> Self {
        Self {
            io,
            codec,
            buf: early,
            read_since_yield: 0,
            finished: false,
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, ReadError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let frame = self.codec.decode(&mut self.buf);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        frame?.map(message_of).transpose()
    }

    /// Reads once from the socket into the buffer (at the end of the stream, marks it
    /// finished).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadError>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)).map_err(ReadError::Io)?;
            let filled = read.filled();
            if filled.is_empty() {
                self.finished = true;
            } else {
                self.read_since_yield += filled.len();
                self.buf.extend_from_slice(filled);
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl Stream for FrameReader {
    type Item = Result<Message, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.decode() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(err) => {
                    this.finished = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(err)));
                }
            }
            if this.finished {
                // An incomplete frame at the end of the stream is dropped with it.
                return Poll::Ready(None);
            }
            if this.read_since_yield >= READ_BUDGET {
                this.read_since_yield = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match this.poll_fill(cx) {
                Poll::Pending => {
                    this.read_since_yield = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }
}

/// A frame as the session sees it (the mapping actix-web-actors' reader makes).
fn message_of(frame: Frame) -> Result<Message, ReadError> {
    Ok(match frame {
        Frame::Text(data) => {
            Message::Text(ByteString::try_from(data).map_err(|_| ReadError::NotUtf8)?)
        }
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping(payload) => Message::Ping(payload),
        Frame::Pong(payload) => Message::Pong(payload),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

/// Drives a session: polls its context (which runs the actor and encodes what it sends)
/// and writes the output to the socket, until the session has stopped and all its output
/// is written, or the socket fails. Then closes the connection gracefully: our side is
/// shut down and the client's remaining bytes (its close frame) are read and dropped for
/// at most `linger`, so that the kernel does not answer them with a reset that could
/// destroy our close frame before the client reads it.
///
/// Built by hand around `WriteOutput` (awaited by reference) rather than as an `async fn`
/// taking `output`: an argument of an `async fn` is stored in its state apart from the
/// locals it is moved into, and the context is most of a session's memory.
pub fn run_session<S, E>(
    io: OwnedWriteHalf,
    output: S,
    linger: Duration,
    conn: super::ConnId,
) -> impl std::future::Future<Output = ()>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut writer = WriteOutput {
        io,
        output,
        unsent: Bytes::new(),
    };
    async move {
        let outcome = (&mut writer).await;
        let WriteOutput { io, output, .. } = writer;
        // The context (the session and its reader) goes before the linger.
        drop(output);
        match outcome {
            // Boxed: only closing sessions need its timer and read state.
            Ok(()) => Box::pin(close_gracefully(io, linger)).await,
            Err(err) => debug!("conn={conn} write failed: {err}"),
        }
    }
}

struct WriteOutput<S> {
    io: OwnedWriteHalf,
    output: S,
    unsent: Bytes,
}

impl<S, E> std::future::Future for WriteOutput<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if !this.unsent.is_empty() {
                let socket = this.io.as_ref();
                match socket.poll_write_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Ready(Ok(())) => {}
                }
                match socket.try_write(&this.unsent) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    // Dropped once written, not just advanced to empty: an empty `Bytes`
                    // still holds its allocation.
                    Ok(written) if written == this.unsent.len() => this.unsent = Bytes::new(),
                    Ok(written) => this.unsent.advance(written),
                    // Readiness was stale; poll_write_ready re-arms it.
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
                continue;
            }
            match Pin::new(&mut this.output).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.unsent = bytes,
                Poll::Ready(Some(Err(err))) => {
                    return Poll::Ready(Err(io::Error::other(err.to_string())))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn close_gracefully(mut io: OwnedWriteHalf, linger: Duration) {
    if io.shutdown().await.is_err() {
        return;
    }
    let socket = io.as_ref();
    let _ = tokio::time::timeout(linger, async {
        while socket.readable().await.is_ok() {
            let read = SCRATCH.with(|scratch| socket.try_read(&mut scratch.borrow_mut()));
            match read {
                Ok(0) => break,
                Err(err) if err.kind() != io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
    })
    .await;
}
