//! The simulated peers. Each worker thread runs a single-threaded tokio runtime with a
//! `LocalSet`, so a connection's tasks share state through `Rc`/`RefCell` without locks;
//! only the per-swarm membership counts and the clock are shared between threads.
//!
//! A connection is two tasks: the session task (timers, reading, answering) and a writer
//! that drains a bounded queue into the socket, so a server that stops reading never
//! stops us from reading or from keeping the announce schedule (open loop).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use p2p_mediastream::protocol::client::{
    announce_text, answer_text, parse_tracker_message, scrape_text, TrackerMessage,
};
use p2p_mediastream::protocol::{InfoHash, OfferId, PeerId};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::LocalSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cli::{self, Config};
use crate::scenario::{self, Marker, SdpTemplate};
use crate::stats::{record_ns, Counter, Counters, TargetCounters, WorkerOutcome};

/// The run's timeline, as nanoseconds since `base`. Every client in the process stamps
/// and reads times against the same base, which is what makes one-way latencies valid.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub base: Instant,
    /// The scenario's t=0 (the first connection), a little after `base`.
    pub start: u64,
    pub warmup_end: u64,
    pub send_end: u64,
    pub drain_end: u64,
}

impl Clock {
    #[inline]
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an event that started at `ns` belongs to the measured window.
    #[inline]
    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.warmup_end && ns < self.send_end
    }

    pub fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_nanos(ns))
    }
}

/// Counters of one worker: for the whole run (progress, connection figures) and for
/// events that started inside the window (the report).
#[derive(Default, Debug)]
pub struct WorkerCounters {
    pub total: Counters,
    pub window: Counters,
    /// Window counters of the connections of each target (`--url`), in `urls` order.
    pub by_target: Vec<TargetCounters>,
}

impl WorkerCounters {
    pub fn new(targets: usize) -> Self {
        Self {
            by_target: (0..targets).map(|_| TargetCounters::default()).collect(),
            ..Self::default()
        }
    }
}

/// What all workers share.
pub struct Shared {
    pub config: Config,
    pub clock: Clock,
    pub run_nonce: u64,
    pub info_hashes: Vec<InfoHash>,
    /// Simulated peers currently announced in each swarm: the ground truth for how many
    /// offers an announce should fan out to.
    pub members: Vec<AtomicU32>,
    pub workers: Vec<WorkerCounters>,
}

/// One simulated peer position; it keeps its swarm across reconnects and churn.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub index: u32,
    pub swarm: u32,
}

/// Announce sends kept for matching responses; beyond this the oldest are forgotten
/// (a server that never answers shows up as responses << announces anyway).
const MAX_PENDING: usize = 1024;
/// Reconnects per slot: far above what any bounded run produces, but a hard bound.
const MAX_GENERATIONS: u32 = 1 << 24;
/// How long a clean close may take before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(1000);
/// Frames written per flush at most, so one busy socket cannot hog the thread.
const WRITE_BATCH: usize = 64;

struct Worker {
    shared: Arc<Shared>,
    index: usize,
    outcome: RefCell<WorkerOutcome>,
}

impl Worker {
    fn counters(&self) -> &WorkerCounters {
        &self.shared.workers[self.index]
    }

    /// Adds to a counter for the whole run, and to the window copy if the event started
    /// inside the window.
    #[inline]
    fn count(&self, origin_ns: u64, field: fn(&Counters) -> &Counter, n: u64) {
        let counters = self.counters();
        field(&counters.total).add(n);
        if self.shared.clock.in_window(origin_ns) {
            field(&counters.window).add(n);
        }
    }

    /// Adds to a window counter of the connections of `target`.
    #[inline]
    fn count_target(
        &self,
        target: usize,
        origin_ns: u64,
        field: fn(&TargetCounters) -> &Counter,
        n: u64,
    ) {
        if self.shared.clock.in_window(origin_ns) {
            if let Some(counters) = self.counters().by_target.get(target) {
                field(counters).add(n);
            }
        }
    }
}

/// Runs one worker thread to completion and returns its histograms and text counts.
pub fn run_worker(
    shared: Arc<Shared>,
    index: usize,
    slots: Vec<Slot>,
) -> Result<WorkerOutcome, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("worker {index}: cannot start a runtime: {err}"))?;
    let worker = Rc::new(Worker {
        shared,
        index,
        outcome: RefCell::new(WorkerOutcome::default()),
    });
    let local = LocalSet::new();
    let task_worker = worker.clone();
    local.block_on(&runtime, async move {
        let worker = task_worker;
        let churn: Vec<Rc<Notify>> = slots.iter().map(|_| Rc::new(Notify::new())).collect();
        let mut tasks = Vec::with_capacity(slots.len() + 1);
        for (slot, notify) in slots.into_iter().zip(churn.iter().cloned()) {
            tasks.push(tokio::task::spawn_local(run_slot(
                worker.clone(),
                slot,
                notify,
            )));
        }
        if worker.shared.config.churn_per_sec > 0.0 && !churn.is_empty() {
            tasks.push(tokio::task::spawn_local(churn_loop(worker.clone(), churn)));
        }
        for task in tasks {
            // A panicking connection task loses that connection only.
            let _ = task.await;
        }
    });
    let outcome = worker.outcome.take();
    Ok(outcome)
}

/// Closes random connections of this worker at its share of --churn-per-sec; each one
/// reconnects at once with a new peer_id, like a viewer reloading the page.
async fn churn_loop(worker: Rc<Worker>, slots: Vec<Rc<Notify>>) {
    let shared = &worker.shared;
    let per_sec = shared.config.churn_per_sec / shared.config.threads as f64;
    let step = Duration::from_millis(10);
    let mut ticker = tokio::time::interval(step);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rng = SmallRng::seed_from_u64(shared.config.seed ^ (worker.index as u64) << 32);
    let mut credit = 0.0f64;
    let stop = shared.clock.instant(shared.clock.send_end);
    while tokio::time::Instant::now() < stop {
        ticker.tick().await;
        credit += per_sec * step.as_secs_f64();
        // Bounded by the rate: at most per_sec / 100 + 1 closes per tick.
        while credit >= 1.0 {
            credit -= 1.0;
            let pick = rng.random_range(0..slots.len());
            // Wakes the slot's session only if one is open; a slot that is connecting
            // ignores it (no permit is stored), so churn never kills a fresh socket.
            slots[pick].notify_waiters();
        }
    }
}

/// One slot's life: connect, run a session, reconnect after churn or loss, until the
/// sending phase is over.
async fn run_slot(worker: Rc<Worker>, slot: Slot, churn: Rc<Notify>) {
    let shared = worker.shared.clone();
    let clock = shared.clock;
    let config = &shared.config;
    // Slots start in index order at --connect-rate, whichever worker holds them.
    let start_ns = clock.start + (f64::from(slot.index) / config.connect_rate * 1e9) as u64;
    if start_ns >= clock.send_end {
        return;
    }
    tokio::time::sleep_until(clock.instant(start_ns)).await;
    for generation in 0..MAX_GENERATIONS {
        let attempt_ns = clock.now_ns();
        if attempt_ns >= clock.send_end {
            break;
        }
        let token = scenario::peer_token(shared.run_nonce, slot.index, generation);
        worker.count(attempt_ns, |c| &c.conn_attempted, 1);
        let ws = match connect(config, slot.index).await {
            Ok(ws) => ws,
            Err(cause) => {
                worker.count(attempt_ns, |c| &c.conn_failed, 1);
                worker.outcome.borrow_mut().connect_failures.bump(&cause, 1);
                backoff(&clock, config.reconnect_delay).await;
                continue;
            }
        };
        let connected_ns = clock.now_ns();
        record_ns(
            &mut worker.outcome.borrow_mut().histograms.handshake,
            connected_ns.saturating_sub(attempt_ns),
        );
        worker.count(connected_ns, |c| &c.conn_established, 1);
        let end = Session::new(&worker, slot, token).run(ws, &churn).await;
        let ended_ns = clock.now_ns();
        worker.count(ended_ns, |c| &c.conn_ended, 1);
        match end {
            End::Finished => break,
            End::Churned => worker.count(ended_ns, |c| &c.conn_churned, 1),
            End::ClosedByServer => {
                worker.count(ended_ns, |c| &c.conn_closed_by_server, 1);
                backoff(&clock, config.reconnect_delay).await;
            }
            End::Lost => {
                worker.count(ended_ns, |c| &c.conn_lost, 1);
                backoff(&clock, config.reconnect_delay).await;
            }
        }
    }
}

/// Waits before a reconnect, but never past the end of the sending phase.
async fn backoff(clock: &Clock, delay: Duration) {
    let until = (tokio::time::Instant::now() + delay).min(clock.instant(clock.send_end));
    tokio::time::sleep_until(until).await;
}

fn ws_config() -> WebSocketConfig {
    // Small read buffers: the default 128 KiB each would cost 1.3 GB at 10k connections.
    // Frames are buffered up to 16 KiB between explicit flushes (one syscall per batch).
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(4 << 20))
}

/// TCP connect from the slot's source address.
async fn tcp_connect(config: &Config, slot: u32) -> std::io::Result<TcpStream> {
    let addr = config.addrs[config.target_of(slot)];
    if config.source_ips <= 1 {
        return TcpStream::connect(addr).await;
    }
    let socket = TcpSocket::new_v4()?;
    let local = SocketAddr::new(IpAddr::V4(cli::source_ip(slot, config.source_ips)), 0);
    socket.bind(local)?;
    socket.connect(addr).await
}

/// TCP connect + WebSocket upgrade, with the cause of a failure as a short label.
async fn connect(config: &Config, slot: u32) -> Result<WebSocketStream<TcpStream>, String> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let tcp = match tokio::time::timeout_at(deadline, tcp_connect(config, slot)).await {
        Err(_) => return Err("timeout (tcp connect)".to_owned()),
        Ok(Err(err)) => return Err(io_cause(&err)),
        Ok(Ok(tcp)) => tcp,
    };
    // Without it Nagle holds small frames back until the previous one is acknowledged,
    // which adds tens of milliseconds to exactly the latencies we measure.
    tcp.set_nodelay(true).map_err(|err| io_cause(&err))?;
    let request = config.urls[config.target_of(slot)]
        .as_str()
        .into_client_request()
        .map_err(|err| format!("bad request: {err}"))?;
    let upgrade = tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config()));
    match tokio::time::timeout_at(deadline, upgrade).await {
        Err(_) => Err("timeout (websocket upgrade)".to_owned()),
        Ok(Err(err)) => Err(ws_cause(&err)),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

fn io_cause(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => "refused".to_owned(),
        ErrorKind::ConnectionReset => "reset".to_owned(),
        ErrorKind::TimedOut => "timeout".to_owned(),
        ErrorKind::AddrNotAvailable => "no free local port (EADDRNOTAVAIL)".to_owned(),
        ErrorKind::UnexpectedEof => "eof".to_owned(),
        kind => format!("io: {kind}"),
    }
}

fn ws_cause(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => format!("http {}", response.status().as_u16()),
        tungstenite::Error::Io(err) => io_cause(err),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "closed during upgrade".to_owned()
        }
        tungstenite::Error::Protocol(err) => format!("handshake: {err}"),
        other => format!("other: {other}"),
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The run is over.
    Finished,
    /// We closed it to simulate churn.
    Churned,
    /// The server sent a close frame.
    ClosedByServer,
    /// Read error or EOF without a close frame.
    Lost,
}

/// Drains the outbound queue into the socket, flushing once per batch.
async fn write_loop(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut queue: mpsc::Receiver<Message>,
) {
    while let Some(message) = queue.recv().await {
        if sink.feed(message).await.is_err() {
            return;
        }
        for _ in 1..WRITE_BATCH {
            match queue.try_recv() {
                Ok(message) => {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// One connected simulated peer.
struct Session {
    worker: Rc<Worker>,
    slot: Slot,
    token: u64,
    peer_id: PeerId,
    info_hash: InfoHash,
    /// Whether this peer counts in `members` (from its first announce on).
    registered: bool,
    /// Send times of announces awaiting a response, oldest first.
    pending_announces: VecDeque<u64>,
    pending_scrapes: VecDeque<u64>,
    offer_counter: u64,
    scrape_credit: f64,
    /// SDP templates: an announce carries one SDP text K times.
    offer_sdp: SdpTemplate,
    answer_sdp: SdpTemplate,
    queue: Option<mpsc::Sender<Message>>,
}

impl Session {
    fn new(worker: &Rc<Worker>, slot: Slot, token: u64) -> Session {
        let shared = &worker.shared;
        Session {
            worker: worker.clone(),
            slot,
            token,
            peer_id: scenario::peer_id(token),
            info_hash: shared.info_hashes[slot.swarm as usize],
            registered: false,
            pending_announces: VecDeque::new(),
            pending_scrapes: VecDeque::new(),
            offer_counter: 0,
            // A per-slot head start spreads scrapes over connections, so a ratio like
            // 0.05 still yields scrapes when each connection announces fewer than 20 times.
            scrape_credit: scenario::spread(slot.index),
            offer_sdp: SdpTemplate::new(shared.config.sdp_bytes),
            answer_sdp: SdpTemplate::new(shared.config.sdp_bytes),
            queue: None,
        }
    }

    async fn run(mut self, ws: WebSocketStream<TcpStream>, churn: &Notify) -> End {
        let shared = self.worker.shared.clone();
        let clock = shared.clock;
        let config = &shared.config;
        let (sink, mut stream) = ws.split();
        let (queue, outbound) = mpsc::channel(config.queue);
        self.queue = Some(queue);
        let mut writer = tokio::task::spawn_local(write_loop(sink, outbound));

        // Every slot announces on its own phase of a common grid, so the total rate is
        // flat over time and does not bunch up after a reconnect.
        let period = config.interval;
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
        let phase_ns =
            (period_ns as f64 * f64::from(self.slot.index) / f64::from(config.connections)) as u64;
        let now = clock.now_ns();
        let next = if now < phase_ns {
            phase_ns
        } else {
            phase_ns + ((now - phase_ns) / period_ns + 1) * period_ns
        };
        let mut ticker = tokio::time::interval_at(clock.instant(next), period);
        // Open loop: if this process falls behind, catch up rather than silently lowering
        // the rate; the lateness is reported as send lag.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);

        let mut sending = now < clock.send_end;
        if sending {
            // Joining: the reference client's first announce carries event=started.
            self.announce(Some("started"));
        }
        let send_end = tokio::time::sleep_until(clock.instant(clock.send_end));
        let drain_end = tokio::time::sleep_until(clock.instant(clock.drain_end));
        tokio::pin!(send_end, drain_end);

        let end = loop {
            tokio::select! {
                // Timers first: a flood of incoming frames must not delay announces.
                biased;
                scheduled = ticker.tick(), if sending => {
                    let lag = tokio::time::Instant::now().saturating_duration_since(scheduled);
                    if clock.in_window(clock.now_ns()) {
                        let lag_ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
                        record_ns(&mut self.worker.outcome.borrow_mut().histograms.send_lag, lag_ns);
                    }
                    self.announce(None);
                }
                () = churn.notified(), if sending => break End::Churned,
                () = &mut send_end, if sending => sending = false,
                () = &mut drain_end => break End::Finished,
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        let label = match &frame {
                            Some(frame) => close_label(frame.code, &frame.reason),
                            None => "close frame without code".to_owned(),
                        };
                        self.worker.outcome.borrow_mut().close_codes.bump(&label, 1);
                        break End::ClosedByServer;
                    }
                    // tungstenite answers pings itself; binary frames are not part of
                    // the protocol and are ignored like the reference client does.
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        let label = format!("lost: {}", ws_cause(&err));
                        self.worker.outcome.borrow_mut().close_codes.bump(&label, 1);
                        break End::Lost;
                    }
                    None => {
                        self.worker.outcome.borrow_mut().close_codes.bump("lost: eof", 1);
                        break End::Lost;
                    }
                },
            }
        };

        if self.registered {
            shared.members[self.slot.swarm as usize].fetch_sub(1, Ordering::Relaxed);
            self.registered = false;
        }
        match end {
            End::Finished | End::Churned => {
                // Close like a browser tab does, so the server frees the peer at once.
                if let Some(queue) = self.queue.take() {
                    let _ = queue.try_send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })));
                }
                if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                    .await
                    .is_err()
                {
                    writer.abort();
                }
                wait_for_close(&mut stream).await;
            }
            End::ClosedByServer | End::Lost => {
                self.queue = None;
                writer.abort();
            }
        }
        end
    }

    /// The target (`--url`) this connection talks to.
    fn target(&self) -> usize {
        self.worker.shared.config.target_of(self.slot.index)
    }

    /// Queues a frame; false if it was not sent.
    fn send(&mut self, text: String, now: u64) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let len = text.len() as u64;
        match queue.try_send(Message::text(text)) {
            Ok(()) => {
                self.worker.count(now, |c| &c.msgs_out, 1);
                self.worker.count(now, |c| &c.bytes_out, len);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.worker.count(now, |c| &c.queue_drops, 1);
                false
            }
            // The writer is gone because the socket failed; the read side reports it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn announce(&mut self, event: Option<&str>) {
        let shared = self.worker.shared.clone();
        let config = &shared.config;
        let now = shared.clock.now_ns();
        let members = &shared.members[self.slot.swarm as usize];
        if !self.registered {
            members.fetch_add(1, Ordering::Relaxed);
            self.registered = true;
        }
        let swarm_size = u64::from(members.load(Ordering::Relaxed));
        let offers = config.offers;
        let text = {
            let sdp = self.offer_sdp.stamp(Marker {
                offerer: self.token,
                offer_ns: now,
                answer_ns: 0,
            });
            let first = self.offer_counter;
            let token = self.token;
            let list: Vec<(OfferId, &str)> = (0..offers as u64)
                .map(|i| (scenario::offer_id(token, first + i), sdp))
                .collect();
            announce_text(self.info_hash, self.peer_id, event, None, &list)
        };
        self.offer_counter += offers as u64;
        if self.send(text, now) {
            let expected = (offers as u64).min(swarm_size.saturating_sub(1));
            self.worker.count(now, |c| &c.announces_sent, 1);
            self.worker.count(now, |c| &c.offers_sent, offers as u64);
            self.worker.count(now, |c| &c.offers_expected, expected);
            let target = self.target();
            self.worker
                .count_target(target, now, |c| &c.announces_sent, 1);
            self.worker
                .count_target(target, now, |c| &c.offers_expected, expected);
            if self.pending_announces.len() >= MAX_PENDING {
                self.pending_announces.pop_front();
            }
            self.pending_announces.push_back(now);
        }
        // Scrapes ride on the announce schedule, so their rate follows --rate.
        self.scrape_credit += config.scrape_ratio;
        while self.scrape_credit >= 1.0 {
            self.scrape_credit -= 1.0;
            let text = scrape_text(Some(&[self.info_hash]));
            if self.send(text, now) {
                self.worker.count(now, |c| &c.scrapes_sent, 1);
                if self.pending_scrapes.len() >= MAX_PENDING {
                    self.pending_scrapes.pop_front();
                }
                self.pending_scrapes.push_back(now);
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        let clock = self.worker.shared.clock;
        let now = clock.now_ns();
        self.worker.count(now, |c| &c.msgs_in, 1);
        self.worker.count(now, |c| &c.bytes_in, text.len() as u64);
        let message = match parse_tracker_message(text) {
            Ok(message) => message,
            Err(err) => {
                self.worker.count(now, |c| &c.unparseable, 1);
                let sample: String = text.chars().take(60).collect();
                self.worker
                    .outcome
                    .borrow_mut()
                    .unparseable
                    .bump(&format!("{err}: {sample}"), 1);
                return;
            }
        };
        match message {
            TrackerMessage::AnnounceResponse { .. } => match self.pending_announces.pop_front() {
                Some(sent) => {
                    self.worker.count(sent, |c| &c.announce_responses, 1);
                    if clock.in_window(sent) {
                        record_ns(
                            &mut self.worker.outcome.borrow_mut().histograms.announce_rtt,
                            now.saturating_sub(sent),
                        );
                    }
                }
                None => self
                    .worker
                    .count(now, |c| &c.announce_responses_unmatched, 1),
            },
            TrackerMessage::Offer {
                info_hash,
                peer_id,
                offer_id,
                sdp,
            } => self.on_offer(now, info_hash, peer_id, offer_id, &sdp),
            TrackerMessage::Answer { sdp, .. } => self.on_answer(now, &sdp),
            TrackerMessage::Scrape { .. } => {
                if let Some(sent) = self.pending_scrapes.pop_front() {
                    self.worker.count(sent, |c| &c.scrape_responses, 1);
                    if clock.in_window(sent) {
                        record_ns(
                            &mut self.worker.outcome.borrow_mut().histograms.scrape_rtt,
                            now.saturating_sub(sent),
                        );
                    }
                }
            }
            TrackerMessage::Failure { reason, .. } => {
                self.worker.count(now, |c| &c.failures, 1);
                if clock.in_window(now) {
                    self.worker
                        .outcome
                        .borrow_mut()
                        .failure_reasons
                        .bump(&reason, 1);
                }
            }
            TrackerMessage::Other(_) => self.worker.count(now, |c| &c.other_messages, 1),
        }
    }

    fn on_offer(
        &mut self,
        now: u64,
        info_hash: InfoHash,
        from: PeerId,
        offer_id: OfferId,
        sdp: &str,
    ) {
        let clock = self.worker.shared.clock;
        if info_hash != self.info_hash {
            self.worker.count(now, |c| &c.offers_wrong_swarm, 1);
        }
        let marker = scenario::read_marker(sdp);
        let origin = match marker {
            Some(marker) if marker.offerer == self.token => {
                // Relayed back to its sender: a server bug, and nothing to answer.
                self.worker.count(marker.offer_ns, |c| &c.offers_to_self, 1);
                return;
            }
            Some(marker) => {
                self.worker
                    .count(marker.offer_ns, |c| &c.offers_received, 1);
                self.worker
                    .count_target(self.target(), marker.offer_ns, |c| &c.offers_received, 1);
                if clock.in_window(marker.offer_ns) {
                    record_ns(
                        &mut self.worker.outcome.borrow_mut().histograms.offer_relay,
                        now.saturating_sub(marker.offer_ns),
                    );
                }
                Some(marker)
            }
            None => {
                self.worker.count(now, |c| &c.offers_foreign, 1);
                None
            }
        };
        // Every offer gets exactly one answer, as the reference client does.
        let sdp = self.answer_sdp.stamp(Marker {
            offerer: origin.map_or(0, |m| m.offerer),
            offer_ns: origin.map_or(0, |m| m.offer_ns),
            answer_ns: now,
        });
        let text = answer_text(info_hash, self.peer_id, from, offer_id, sdp);
        if self.send(text, now) {
            if let Some(marker) = origin {
                // Keyed to the offer's time, like answers_received, so the two compare.
                self.worker.count(marker.offer_ns, |c| &c.answers_sent, 1);
                self.worker
                    .count_target(self.target(), marker.offer_ns, |c| &c.answers_sent, 1);
            }
        }
    }

    fn on_answer(&mut self, now: u64, sdp: &str) {
        let clock = self.worker.shared.clock;
        match scenario::read_marker(sdp) {
            Some(marker) if marker.offerer == self.token => {
                self.worker
                    .count(marker.offer_ns, |c| &c.answers_received, 1);
                self.worker.count_target(
                    self.target(),
                    marker.offer_ns,
                    |c| &c.answers_received,
                    1,
                );
                if clock.in_window(marker.offer_ns) {
                    let mut outcome = self.worker.outcome.borrow_mut();
                    record_ns(
                        &mut outcome.histograms.signalling_rtt,
                        now.saturating_sub(marker.offer_ns),
                    );
                    record_ns(
                        &mut outcome.histograms.answer_relay,
                        now.saturating_sub(marker.answer_ns),
                    );
                }
            }
            _ => self.worker.count(now, |c| &c.answers_misrouted, 1),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped mid-way (its task aborted) must still leave the swarm count.
        if self.registered {
            self.worker.shared.members[self.slot.swarm as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Reads until the server's close frame (or EOF), so the close handshake completes.
async fn wait_for_close(stream: &mut SplitStream<WebSocketStream<TcpStream>>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // Bounded by CLOSE_GRACE; each frame is discarded.
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

fn close_label(code: CloseCode, reason: &str) -> String {
    let code = u16::from(code);
    if reason.is_empty() {
        format!("{code}")
    } else {
        format!("{code} {reason}")
    }
}
