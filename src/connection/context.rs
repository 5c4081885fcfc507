//! `SessionContext`: the actix context of a `PeerSession`, which encodes each WebSocket
//! frame as it is sent, into the one buffer that `io` writes to the socket.
//!
//! It is built like any actix context on actix's `dev` API (`ContextParts` for the actor's
//! spawned futures and flags, `ContextFut` to run it), as actix-web-actors'
//! `WebsocketContext` is. That one does not suit a tracker holding tens of thousands of
//! idle sockets: it queues every outgoing message in a `VecDeque` that keeps its first
//! capacity for the life of the connection, takes each text as an owned string (one
//! allocation and one UTF-8 check per message), encodes later, and insists on a reader
//! stream of its own beside ours. Here an idle connection holds no output buffer at all:
//! `io::run_session` lets the buffer go once the kernel has taken all of it.

use actix::{
    dev::{AsyncContextParts, ContextFut, ContextParts, Envelope, Mailbox, ToEnvelope},
    prelude::*,
};
use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::BytesMut;

pub struct SessionContext<A>
where
    A: Actor<Context = Self>,
{
    parts: ContextParts<A>,
    /// Encoded frames the socket has not taken yet (empty, without an allocation, when
    /// everything was written).
    output: BytesMut,
}

impl<A> SessionContext<A>
where
    A: Actor<Context = Self>,
{
    /// Builds the context, lets `factory` make the actor with it (to add streams, or hand
    /// out its address before it runs), and returns the future that runs both. Nothing
    /// runs until that future is polled (by `io::run_session`).
    pub fn start(factory: impl FnOnce(&mut Self) -> A) -> ContextFut<A, Self> {
        let mailbox = Mailbox::default();
        let mut ctx = SessionContext {
            parts: ContextParts::new(mailbox.sender_producer()),
            output: BytesMut::new(),
        };
        let actor = factory(&mut ctx);
        ContextFut::new(ctx, actor, mailbox)
    }

    /// Queues a text frame. `utf8` must be UTF-8 (RFC 6455 5.6): the session passes the
    /// JSON that `protocol::OutMessage` writes, which is (serde_json emits UTF-8, and the
    /// SDP literals copied into it were checked when they arrived).
    pub fn text(&mut self, utf8: &[u8]) {
        debug_assert!(std::str::from_utf8(utf8).is_ok(), "text frame not UTF-8");
        self.frame(utf8, OpCode::Text);
    }

    pub fn ping(&mut self, payload: &[u8]) {
        self.frame(payload, OpCode::Ping);
    }

    pub fn pong(&mut self, payload: &[u8]) {
        self.frame(payload, OpCode::Pong);
    }

    /// Queues the close frame and stops the actor: RFC 6455 5.5.1 allows no frame after
    /// it, so a closing session is a stopping one, and what it would send later is dropped.
    pub fn close(&mut self, reason: Option<CloseReason>) {
        if !self.stopping() {
            Parser::write_close(&mut self.output, reason, false);
            self.parts.stop();
        }
    }

    pub fn set_mailbox_capacity(&mut self, capacity: usize) {
        self.parts.set_mailbox_capacity(capacity);
    }

    /// What the actor sent and the socket has not taken yet.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    fn frame(&mut self, payload: &[u8], op: OpCode) {
        // Server frames are not masked (RFC 6455 5.1).
        if !self.stopping() {
            Parser::write_message(&mut self.output, payload, op, true, false);
        }
    }

    fn stopping(&self) -> bool {
        matches!(
            self.parts.state(),
            ActorState::Stopping | ActorState::Stopped
        )
    }
}

impl<A> ActorContext for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn stop(&mut self) {
        self.parts.stop();
    }

    fn terminate(&mut self) {
        self.parts.terminate();
    }

    fn state(&self) -> ActorState {
        self.parts.state()
    }
}

impl<A> AsyncContext<A> for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn spawn<F>(&mut self, fut: F) -> SpawnHandle
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.spawn(fut)
    }

    fn wait<F>(&mut self, fut: F)
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.parts.wait(fut);
    }

    /// A stopping session handles no more messages: what it would send after its close
    /// frame is dropped anyway.
    fn waiting(&self) -> bool {
        self.parts.waiting()
            || matches!(
                self.parts.state(),
                ActorState::Stopping | ActorState::Stopped
            )
    }

    fn cancel_future(&mut self, handle: SpawnHandle) -> bool {
        self.parts.cancel_future(handle)
    }

    fn address(&self) -> Addr<A> {
        self.parts.address()
    }
}

impl<A> AsyncContextParts<A> for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn parts(&mut self) -> &mut ContextParts<A> {
        &mut self.parts
    }
}

impl<A, M> ToEnvelope<A, M> for SessionContext<A>
where
    A: Actor<Context = Self> + Handler<M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn pack(msg: M, tx: Option<actix::dev::OneshotSender<M::Result>>) -> Envelope<A> {
        Envelope::new(msg, tx)
    }
}

#[cfg(test)]
mod tests {
    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Codec, Frame};

    use super::*;

    struct Echo;

    impl Actor for Echo {
        type Context = SessionContext<Self>;
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<Frame> {
        // The client side of the connection: server frames arrive unmasked.
        let mut codec = Codec::new().client_mode().max_size(1 << 20);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut bytes).expect("valid frames") {
            frames.push(frame);
        }
        assert!(bytes.is_empty(), "trailing bytes");
        frames
    }

    #[test]
    fn frames_are_encoded_as_sent_and_nothing_follows_a_close() {
        let mut fut = SessionContext::start(|_| Echo);
        let session = fut.ctx();
        session.text(br#"{"action":"announce"}"#);
        session.ping(b"");
        session.pong(b"hi");
        session.close(Some(CloseReason {
            code: CloseCode::Away,
            description: Some("idle timeout".into()),
        }));
        session.text(b"late");
        session.close(None);
        let frames = decode_all(std::mem::take(session.output()));
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(
            frames[0],
            Frame::Text(bytes::Bytes::from_static(br#"{"action":"announce"}"#))
        );
        assert_eq!(frames[1], Frame::Ping(bytes::Bytes::new()));
        assert_eq!(frames[2], Frame::Pong(bytes::Bytes::from_static(b"hi")));
        assert_eq!(
            frames[3],
            Frame::Close(Some(CloseReason {
                code: CloseCode::Away,
                description: Some("idle timeout".into()),
            }))
        );
    }

    #[test]
    fn long_texts_get_the_extended_length_forms() {
        let mut fut = SessionContext::start(|_| Echo);
        let session = fut.ctx();
        for len in [125, 126, 65_535, 65_536] {
            session.text(&vec![b'a'; len]);
        }
        let lengths: Vec<usize> = decode_all(std::mem::take(session.output()))
            .into_iter()
            .map(|frame| match frame {
                Frame::Text(text) => text.len(),
                other => panic!("not text: {other:?}"),
            })
            .collect();
        assert_eq!(lengths, [125, 126, 65_535, 65_536]);
    }

    #[test]
    fn a_new_context_holds_no_output_buffer() {
        let mut fut = SessionContext::start(|_| Echo);
        assert_eq!(fut.ctx().output().capacity(), 0);
    }
}
