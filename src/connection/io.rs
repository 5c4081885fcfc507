//! The tracker's WebSocket I/O: moves bytes between the TCP socket of an upgraded
//! connection and the `SessionContext` of its `PeerSession`.
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
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix::{Actor, StreamHandler};
use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use futures_util::{ready, Stream};
use log::debug;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

use super::context::{SessionContext, SessionRun};

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
const READ_BUDGET: u32 = 4 * SCRATCH_BYTES as u32;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// The messages a client sends, decoded straight off the socket.
///
/// Its buffer holds only an incomplete frame; once every complete frame is handed on it is
/// let go (an emptied `BytesMut` would keep the allocation the frames were split from), so
/// a connection that sent a 10 KB announce does not keep 10 KB while it idles.
pub struct FrameReader {
    io: OwnedReadHalf,
    codec: Codec,
    buf: BytesMut,
    /// At most `READ_BUDGET` + `SCRATCH_BYTES`; u32 keeps the reader within 64 bytes
    /// (the session boxes it for the life of the connection).
    read_since_yield: u32,
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
                // A read takes at most SCRATCH_BYTES, which fits.
                self.read_since_yield += filled.len() as u32;
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

/// A frame as the session sees it: text checked to be UTF-8.
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

/// The task of one connection: runs its session's context (which runs the actor, whose
/// frames are encoded into the context's output) and writes that output to the socket,
/// until the session has stopped and all its output is written, or the socket fails.
/// Everything a session sends while it runs once (a wake-up may handle many messages) goes
/// out in one write. Then the connection is closed gracefully: our side is shut down and
/// the client's remaining bytes (its close frame) are read and dropped for at most
/// `linger`, so that the kernel does not answer them with a reset that could destroy our
/// close frame before the client reads it.
///
/// A task is the largest part of an idle connection's memory, and tokio rounds each one up
/// to a multiple of 128 bytes, so it holds nothing else: the graceful close (`linger`) is a
/// task of its own, spawned when the session is done.
pub struct SessionTask<A>
where
    A: Actor<Context = SessionContext<A>>,
{
    /// Taken by the graceful close.
    io: Option<OwnedWriteHalf>,
    session: SessionRun<A, FrameReader>,
    linger: Duration,
}

impl<A> SessionTask<A>
where
    A: Actor<Context = SessionContext<A>> + StreamHandler<Result<Message, ReadError>>,
{
    pub fn new(io: OwnedWriteHalf, session: SessionRun<A, FrameReader>, linger: Duration) -> Self {
        Self {
            io: Some(io),
            session,
            linger,
        }
    }

    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = &self.io else {
            return Poll::Ready(Ok(()));
        };
        loop {
            // All of the session's output goes before it runs again: while the kernel
            // refuses our bytes the session neither reads nor queues more (backpressure).
            let output = self.session.ctx().output();
            while !output.is_empty() {
                let socket = io.as_ref();
                ready!(socket.poll_write_ready(cx))?;
                match socket.try_write(output) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    // Let go once written, not just cleared: an idle connection keeps no
                    // buffer.
                    Ok(written) if written == output.len() => *output = BytesMut::new(),
                    Ok(written) => output.advance(written),
                    // Readiness was stale; poll_write_ready re-arms it.
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
            if !self.session.alive() {
                return Poll::Ready(Ok(()));
            }
            let stopped = self.session.poll_run(cx).is_ready();
            if self.session.ctx().output().is_empty() {
                return if stopped {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        }
    }
}

impl<A> Future for SessionTask<A>
where
    A: Actor<Context = SessionContext<A>> + StreamHandler<Result<Message, ReadError>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let outcome = ready!(this.poll_output(cx));
        if let Some(io) = this.io.take() {
            match outcome {
                // A task of its own, started once this one (and the session with it) is
                // gone.
                Ok(()) => drop(actix_web::rt::spawn(close_gracefully(io, this.linger))),
                Err(err) => debug!("write to {:?} failed: {err}", io.as_ref().peer_addr().ok()),
            }
        }
        Poll::Ready(())
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
#[cfg(test)]
mod tests {
    use super::SessionTask;
    use crate::connection::session::PeerSession;

    /// tokio stores a task in one allocation rounded up to 128 bytes: its header and
    /// trailer (about 100 bytes) and this future. At 280 bytes or less the task takes three
    /// such lines.
    #[test]
    fn a_session_task_fits_three_cache_lines() {
        let size = std::mem::size_of::<SessionTask<PeerSession>>();
        assert!(size <= 280, "SessionTask is {size} bytes");
    }

    /// The session keeps its reader boxed; within 64 bytes the box is an 80-byte malloc
    /// chunk rather than a 96-byte one.
    #[test]
    fn a_frame_reader_fits_64_bytes() {
        let size = std::mem::size_of::<super::FrameReader>();
        assert!(size <= 64, "FrameReader is {size} bytes");
    }
}
