//! `SessionContext`: the actix context of a `PeerSession`, and `SessionRun`, the future
//! that runs the actor in it.
//!
//! A session is an actix actor like any other: messages reach it through its address and
//! are handled in its mailbox's order, futures run in it with `spawn` and `wait`, and
//! `started`, `stopping` and `stopped` come when actix would call them. What differs from
//! actix's own `Context` is what an idle connection costs, because a tracker holds tens of
//! thousands of them, each in a tokio task that tokio rounds up to 128-byte lines:
//!
//! - actix's `ContextParts` and `ContextFut` keep inline room for five spawned futures,
//!   four waited-for ones and two cancellation handles, twice over (staged in the context,
//!   merged into the future): about 370 bytes in every task, nearly all of it empty for a
//!   connection that waits for its next announce. Here spawned and waited-for futures live
//!   in plain vectors, empty and unallocated while nothing runs.
//! - The frames off the socket are the session's input stream, polled here directly as
//!   actix polls a stream given to `add_stream` (a batch of at most 16, nothing while a
//!   `wait` runs or the actor stops), rather than as one more spawned future.
//! - Each WebSocket frame is encoded as it is sent, into the one buffer that `io` writes
//!   to the socket (actix-web-actors' `WebsocketContext` queued owned strings in a
//!   `VecDeque` that kept its first capacity for the connection's life, and encoded them
//!   later). An idle connection holds no output buffer at all: `io::SessionTask` lets the
//!   buffer go once the kernel has taken all of it.
//!
//! The run loop keeps actix's order of work: the most recent waited-for future first (it
//! blocks everything else), then the mailbox, then the spawned futures, then the input;
//! and its lifecycle: a running actor with nothing left that could wake it (no address
//! held, no future, no input) is asked to stop; `stop` asks `stopping`, which may keep it
//! running; `terminate` skips the question.

use std::{
    mem,
    pin::Pin,
    task::{Context, Poll},
};

use actix::{
    dev::{
        channel::{self, AddressReceiver},
        Envelope, EnvelopeProxy, ToEnvelope,
    },
    fut::ActorFuture,
    prelude::*,
};
use actix_http::ws::{CloseReason, OpCode, Parser};
use bytes::BytesMut;

/// Messages a session's mailbox holds before senders are refused, until `started` sets
/// the configured capacity (actix's default).
const FIRST_MAILBOX_CAPACITY: usize = 16;

/// Most input items handled in one go before the session yields to the other tasks of
/// its thread, as actix does for a stream given to `add_stream`.
const INPUT_BATCH: u32 = 16;

type ActorTask<A> = Pin<Box<dyn ActorFuture<A, Output = ()>>>;

pub struct SessionContext<A>
where
    A: Actor<Context = Self>,
{
    mailbox: AddressReceiver<A>,
    /// Encoded frames the socket has not taken yet (empty, without an allocation, when
    /// everything was written).
    output: BytesMut,
    /// Futures started with `wait`, the most recent last: while any is pending nothing
    /// else of the actor runs.
    waits: Vec<ActorTask<A>>,
    /// Futures started with `spawn`, with their handles. A cancelled one has its handle
    /// reset to the default (never issued) and its future replaced by `Cancelled`.
    spawned: Vec<(SpawnHandle, ActorTask<A>)>,
    last_handle: SpawnHandle,
    state: ActorState,
    started: bool,
    /// A future was spawned since the run loop last went through them: it is polled
    /// before the loop sleeps, so that it can register its waker.
    spawned_unpolled: bool,
}

impl<A> SessionContext<A>
where
    A: Actor<Context = Self>,
{
    /// Builds the context, lets `factory` make the actor with it (to hand out its address
    /// before it runs), and returns the future that runs both, fed by `input`. Nothing
    /// runs until that future is polled (by `io::SessionTask`).
    pub fn start<S>(input: S, factory: impl FnOnce(&mut Self) -> A) -> SessionRun<A, S>
    where
        A: StreamHandler<S::Item>,
        S: Stream + Unpin,
    {
        // The channel's first sender goes: the actor's addresses are made from the
        // receiver (`address`), as actix's own mailbox does.
        let (_, mailbox) = channel::channel(FIRST_MAILBOX_CAPACITY);
        let mut ctx = SessionContext {
            mailbox,
            output: BytesMut::new(),
            waits: Vec::new(),
            spawned: Vec::new(),
            last_handle: SpawnHandle::default(),
            state: ActorState::Running,
            started: false,
            spawned_unpolled: false,
        };
        let act = factory(&mut ctx);
        SessionRun {
            act,
            ctx,
            input: Some(Box::new(input)),
        }
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
            self.stop();
        }
    }

    pub fn set_mailbox_capacity(&mut self, capacity: usize) {
        self.mailbox.set_capacity(capacity);
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
        matches!(self.state, ActorState::Stopping | ActorState::Stopped)
    }

    /// A waited-for future is due to run (a stopping actor runs none).
    fn must_wait(&self) -> bool {
        !self.waits.is_empty() && !self.stopping()
    }
}

impl<A> ActorContext for SessionContext<A>
where
    A: Actor<Context = Self>,
{
    fn stop(&mut self) {
        if self.state == ActorState::Running {
            self.state = ActorState::Stopping;
        }
    }

    fn terminate(&mut self) {
        self.state = ActorState::Stopped;
    }

    fn state(&self) -> ActorState {
        self.state
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
        self.last_handle = self.last_handle.next();
        self.spawned.push((self.last_handle, Box::pin(fut)));
        self.spawned_unpolled = true;
        self.last_handle
    }

    fn wait<F>(&mut self, fut: F)
    where
        F: ActorFuture<A, Output = ()> + 'static,
    {
        self.waits.push(Box::pin(fut));
    }

    /// A stopping session handles no more messages: what it would send after its close
    /// frame is dropped anyway.
    fn waiting(&self) -> bool {
        !self.waits.is_empty() || self.stopping()
    }

    /// The future is dropped at once, unless it is the one running now (it goes when its
    /// poll returns); its slot leaves on the run loop's next pass.
    fn cancel_future(&mut self, handle: SpawnHandle) -> bool {
        match self
            .spawned
            .iter_mut()
            .find(|(spawned, _)| *spawned == handle && handle != SpawnHandle::default())
        {
            Some(slot) => {
                *slot = (SpawnHandle::default(), Box::pin(Cancelled));
                true
            }
            None => false,
        }
    }

    fn address(&self) -> Addr<A> {
        Addr::new(self.mailbox.sender())
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

/// Stands in for a spawned future while it is polled, and for a cancelled one. A box of
/// this zero-sized type allocates nothing.
struct Cancelled;

impl<A: Actor> ActorFuture<A> for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut A, _: &mut A::Context, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// A session's actor, its context and its input: the future that runs them, polled by
/// the connection's task.
pub struct SessionRun<A, S>
where
    A: Actor<Context = SessionContext<A>>,
{
    act: A,
    ctx: SessionContext<A>,
    /// Boxed: it is as large as the rest of an idle session's task, which tokio would
    /// round up by a whole 128-byte line more. `None` once it ended.
    input: Option<Box<S>>,
}

impl<A, S> SessionRun<A, S>
where
    A: Actor<Context = SessionContext<A>> + StreamHandler<S::Item>,
    S: Stream + Unpin,
{
    pub fn ctx(&mut self) -> &mut SessionContext<A> {
        &mut self.ctx
    }

    /// Whether anything could still make the actor act: an address, a future or input
    /// (before it started, the actor is alive; once stopped, it is not).
    pub fn alive(&self) -> bool {
        let ctx = &self.ctx;
        match ctx.state {
            ActorState::Stopped => false,
            _ => {
                !ctx.started
                    || ctx.mailbox.connected()
                    || self.input.is_some()
                    || !ctx.spawned.is_empty()
                    || !ctx.waits.is_empty()
            }
        }
    }

    /// Runs the actor until nothing it has is ready; `Ready` once it stopped.
    pub fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ctx.started {
            self.ctx.started = true;
            Actor::started(&mut self.act, &mut self.ctx);
            StreamHandler::started(&mut self.act, &mut self.ctx);
        }
        loop {
            if self.poll_waits(cx).is_pending() {
                return Poll::Pending;
            }
            self.poll_mailbox(cx);
            if self.ctx.must_wait() {
                continue;
            }
            self.poll_spawned(cx);
            if self.ctx.must_wait() {
                continue;
            }
            self.poll_input(cx);
            if self.ctx.must_wait() || self.ctx.spawned_unpolled {
                continue;
            }
            match self.ctx.state {
                ActorState::Started | ActorState::Running => {
                    if !self.alive() && self.act.stopping(&mut self.ctx) == Running::Stop {
                        return self.finish();
                    }
                }
                ActorState::Stopping => {
                    if self.act.stopping(&mut self.ctx) == Running::Stop {
                        return self.finish();
                    }
                    self.ctx.state = ActorState::Running;
                    continue;
                }
                // Terminated.
                ActorState::Stopped => return self.finish(),
            }
            return Poll::Pending;
        }
    }

    fn finish(&mut self) -> Poll<()> {
        self.ctx.state = ActorState::Stopped;
        self.act.stopped(&mut self.ctx);
        Poll::Ready(())
    }

    /// The most recent waited-for future first, until none is left.
    fn poll_waits(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.ctx.stopping() {
            let Some(mut wait) = self.ctx.waits.pop() else {
                break;
            };
            let below = self.ctx.waits.len();
            if wait
                .as_mut()
                .poll(&mut self.act, &mut self.ctx, cx)
                .is_pending()
            {
                // Under any it started meanwhile, which run first (as in actix, the newest
                // wait is the one waited for).
                self.ctx.waits.insert(below, wait);
                return Poll::Pending;
            }
        }
        let_go_if_empty(&mut self.ctx.waits);
        Poll::Ready(())
    }

    fn poll_mailbox(&mut self, cx: &mut Context<'_>) {
        while !self.ctx.waiting() {
            match Pin::new(&mut self.ctx.mailbox).poll_next(cx) {
                Poll::Ready(Some(mut envelope)) => envelope.handle(&mut self.act, &mut self.ctx),
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    fn poll_spawned(&mut self, cx: &mut Context<'_>) {
        self.ctx.spawned_unpolled = false;
        let mut at = 0;
        while at < self.ctx.spawned.len() && !self.ctx.waiting() {
            let (handle, slot) = &mut self.ctx.spawned[at];
            let handle = *handle;
            // Taken out while it runs, so that it can have the context (and spawn more,
            // which go to the end, or cancel any, which only marks them).
            let mut running = mem::replace(slot, Box::pin(Cancelled));
            let done = running
                .as_mut()
                .poll(&mut self.act, &mut self.ctx, cx)
                .is_ready();
            let cancelled = self.ctx.spawned[at].0 != handle;
            if done || cancelled {
                self.ctx.spawned.swap_remove(at);
            } else {
                self.ctx.spawned[at].1 = running;
                at += 1;
            }
        }
        let_go_if_empty(&mut self.ctx.spawned);
    }

    fn poll_input(&mut self, cx: &mut Context<'_>) {
        let Some(input) = &mut self.input else {
            return;
        };
        let mut handled = 0;
        while !self.ctx.waiting() {
            match Pin::new(&mut **input).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    self.act.handle(item, &mut self.ctx);
                    handled += 1;
                    if handled == INPUT_BATCH {
                        cx.waker().wake_by_ref();
                        return;
                    }
                }
                Poll::Ready(None) => {
                    self.input = None;
                    StreamHandler::finished(&mut self.act, &mut self.ctx);
                    return;
                }
                Poll::Pending => return,
            }
        }
    }
}

/// An idle session keeps no vector it is not using.
fn let_go_if_empty<T>(vec: &mut Vec<T>) {
    if vec.is_empty() && vec.capacity() != 0 {
        *vec = Vec::new();
    }
}

impl<A, S> Drop for SessionRun<A, S>
where
    A: Actor<Context = SessionContext<A>>,
{
    /// A session dropped before it stopped (its socket failed, or the runtime is going
    /// down) still stops: `stopped` gives its connection slot and swarm places back.
    fn drop(&mut self) {
        if self.ctx.state == ActorState::Stopped {
            return;
        }
        if !self.ctx.started {
            self.ctx.started = true;
            self.act.started(&mut self.ctx);
        }
        self.ctx.stop();
        // `stopping` is asked but cannot keep a dropped actor: nothing would run it.
        let _ = self.act.stopping(&mut self.ctx);
        self.ctx.state = ActorState::Stopped;
        self.act.stopped(&mut self.ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::{Cell, RefCell},
        collections::VecDeque,
        rc::Rc,
    };

    use std::task::Waker;

    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Codec, Frame};

    use super::*;

    type Log = Rc<RefCell<Vec<String>>>;

    /// Input that the test feeds by hand: pending while empty, ended once `closed`.
    #[derive(Default, Clone)]
    struct Feed {
        items: Rc<RefCell<VecDeque<&'static str>>>,
        closed: Rc<Cell<bool>>,
    }

    impl Feed {
        fn push(&self, item: &'static str) {
            self.items.borrow_mut().push_back(item);
        }
    }

    impl Stream for Feed {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<&'static str>> {
            match self.items.borrow_mut().pop_front() {
                Some(item) => Poll::Ready(Some(item)),
                None if self.closed.get() => Poll::Ready(None),
                None => Poll::Pending,
            }
        }
    }

    /// Records what actix would call on it; input "wait" makes it wait until `gate` is
    /// set, "spawn" spawns a future that ends at the same time.
    struct Probe {
        log: Log,
        gate: Rc<Cell<bool>>,
        keep_running_once: bool,
    }

    impl Probe {
        fn new(log: &Log) -> Self {
            Probe {
                log: log.clone(),
                gate: Rc::default(),
                keep_running_once: false,
            }
        }

        fn note(&self, what: impl Into<String>) {
            self.log.borrow_mut().push(what.into());
        }

        fn gated(&self, what: &'static str) -> impl ActorFuture<Self, Output = ()> {
            let gate = self.gate.clone();
            actix::fut::wrap_future::<_, Self>(std::future::poll_fn(move |_| {
                if gate.get() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
            .map(move |(), probe: &mut Probe, _| probe.note(format!("{what} done")))
        }
    }

    impl Actor for Probe {
        type Context = SessionContext<Self>;

        fn started(&mut self, _: &mut Self::Context) {
            self.note("started");
        }

        fn stopping(&mut self, _: &mut Self::Context) -> Running {
            self.note("stopping");
            if mem::take(&mut self.keep_running_once) {
                Running::Continue
            } else {
                Running::Stop
            }
        }

        fn stopped(&mut self, _: &mut Self::Context) {
            self.note("stopped");
        }
    }

    impl StreamHandler<&'static str> for Probe {
        fn handle(&mut self, item: &'static str, ctx: &mut Self::Context) {
            self.note(item);
            match item {
                "wait" => ctx.wait(self.gated("wait")),
                "spawn" => drop(ctx.spawn(self.gated("spawn"))),
                "stop" => ctx.stop(),
                _ => {}
            }
        }

        fn finished(&mut self, ctx: &mut Self::Context) {
            self.note("input ended");
            ctx.stop();
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Note(&'static str);

    impl Handler<Note> for Probe {
        type Result = ();

        fn handle(&mut self, Note(what): Note, _: &mut Self::Context) {
            self.note(what);
        }
    }

    /// A session of a `Probe` logging to `log`, and the feed of its input.
    fn probed(log: &Log) -> (Feed, SessionRun<Probe, Feed>) {
        let feed = Feed::default();
        let session = SessionContext::start(feed.clone(), |_| Probe::new(log));
        (feed, session)
    }

    fn run(session: &mut SessionRun<Probe, Feed>) -> Poll<()> {
        session.poll_run(&mut Context::from_waker(Waker::noop()))
    }

    fn taken(log: &Log) -> Vec<String> {
        mem::take(&mut *log.borrow_mut())
    }

    #[test]
    fn messages_and_input_are_handled_and_the_end_of_input_stops_the_actor() {
        let log = Log::default();
        let (feed, mut session) = probed(&log);
        let addr = session.ctx().address();
        addr.do_send(Note("message"));
        feed.push("frame 1");
        feed.push("frame 2");
        assert!(run(&mut session).is_pending());
        assert_eq!(taken(&log), ["started", "message", "frame 1", "frame 2"]);

        feed.closed.set(true);
        assert!(run(&mut session).is_ready());
        assert_eq!(taken(&log), ["input ended", "stopping", "stopped"]);
        assert!(!session.alive());
        drop(session);
        assert!(taken(&log).is_empty(), "stopped twice");
    }

    #[test]
    fn a_wait_holds_back_the_mailbox_and_the_input_until_it_ends() {
        let log = Log::default();
        let (feed, mut session) = probed(&log);
        let addr = session.ctx().address();
        feed.push("wait");
        feed.push("frame after");
        assert!(run(&mut session).is_pending());
        addr.do_send(Note("message meanwhile"));
        assert!(run(&mut session).is_pending());
        assert_eq!(taken(&log), ["started", "wait"]);

        session.act.gate.set(true);
        assert!(run(&mut session).is_pending());
        assert_eq!(
            taken(&log),
            ["wait done", "message meanwhile", "frame after"]
        );
        assert_eq!(
            session.ctx().waits.capacity(),
            0,
            "an idle session keeps no vector"
        );
    }

    #[test]
    fn spawned_futures_run_beside_the_input_and_a_cancelled_one_is_dropped() {
        let log = Log::default();
        let (feed, mut session) = probed(&log);
        feed.push("spawn");
        feed.push("spawn");
        feed.push("frame after");
        assert!(run(&mut session).is_pending());
        assert_eq!(taken(&log), ["started", "spawn", "spawn", "frame after"]);
        assert_eq!(session.ctx().spawned.len(), 2);

        // The first spawned future has handle 1.
        let first = SpawnHandle::default().next();
        assert!(session.ctx().cancel_future(first));
        assert!(!session.ctx().cancel_future(first), "cancelled twice");
        session.act.gate.set(true);
        assert!(run(&mut session).is_pending());
        assert_eq!(taken(&log), ["spawn done"], "the cancelled one ran");
        assert!(session.ctx().spawned.is_empty());
        assert_eq!(session.ctx().spawned.capacity(), 0);
    }

    #[test]
    fn stopping_may_keep_the_actor_and_terminate_does_not_ask() {
        let log = Log::default();
        let (feed, mut session) = probed(&log);
        session.act.keep_running_once = true;
        feed.push("stop");
        assert!(run(&mut session).is_pending());
        assert_eq!(taken(&log), ["started", "stop", "stopping"]);
        assert_eq!(session.ctx().state(), ActorState::Running);

        session.ctx().terminate();
        assert!(run(&mut session).is_ready());
        assert_eq!(taken(&log), ["stopped"]);
    }

    #[test]
    fn a_session_dropped_before_it_stopped_is_stopped() {
        let log = Log::default();
        let (_, session) = probed(&log);
        drop(session);
        assert_eq!(taken(&log), ["started", "stopping", "stopped"]);

        let (_, mut session) = probed(&log);
        assert!(run(&mut session).is_pending());
        drop(session);
        assert_eq!(taken(&log), ["started", "stopping", "stopped"]);
    }

    #[test]
    fn an_address_keeps_an_idle_actor_alive() {
        let log = Log::default();
        let (feed, mut session) = probed(&log);
        let addr = session.ctx().address();
        feed.closed.set(true);
        // The end of input asks the actor to stop, which it declines once: from then on
        // only the address keeps it.
        session.act.keep_running_once = true;
        assert!(run(&mut session).is_pending());
        assert!(session.alive());
        drop(addr);
        assert!(!session.alive());
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
        let log = Log::default();
        let (_, mut fut) = probed(&log);
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
        let log = Log::default();
        let (_, mut fut) = probed(&log);
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
        let log = Log::default();
        let (_, mut fut) = probed(&log);
        assert_eq!(fut.ctx().output().capacity(), 0);
    }
}
