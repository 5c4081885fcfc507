//! The bus task: one thread (`cluster-bus`) with its own single-threaded Tokio runtime that
//! owns the connection to the message broker, the membership view, the heartbeats, and
//! all encoding and decoding of bus messages. Nothing else in the process awaits the bus:
//! actors hand messages over with [`BusHandle::try_send`], a non-blocking push into a
//! bounded queue (full, or bus down, means the message is dropped and counted, as swarms
//! already do with full session mailboxes: WebTorrent tolerates a lost offer, the client
//! re-announces). What arrives is decoded here and handed to the callback given at start,
//! which must not block either (it forwards to actors with `try_send`/`do_send`).
//!
//! The broker sits behind the small [`Transport`] trait (publish bytes to a subject,
//! report what arrives and whether the link is up); [`NatsTransport`] is the NATS engine.
//! Another engine (Redis pub/sub, say) implements the trait and reuses all of the rest.
//!
//! Subjects: `{prefix}.ctl` carries heartbeats and `Leaving` for every instance;
//! `{prefix}.inbox.{id:016x}` carries everything addressed to one instance;
//! `{prefix}.noresp.{ours:016x}.{to:016x}` is the reply subject of every message we send
//! to instance `to` (an answer's also names its sender and swarm, see
//! `lost_answer_subject`). Nobody answers on it: the broker itself writes there
//! when `to`'s inbox has no subscriber (NATS "no responders"), i.e. when `to`'s connection
//! is gone, and then also reports a lost answer to its sender (`BusEvent::AnswerLost`).
//!
//! Liveness of other instances: heartbeats and the expiry, and sooner the broker's "no
//! responders" for a message to an instance: the broker drops a subscription the moment
//! the subscriber's connection closes (a killed process's socket is closed by its kernel),
//! so the first message sent to a dead instance after that tells us, within one bus round
//! trip instead of one expiry. A merely slow instance keeps its subscription and is never
//! reported this way; a host that vanishes without closing its sockets is still found by
//! the expiry.
//!
//! An instance can leave our view and come back alive (its link dropped for a moment, or
//! ours did): its peers left our swarms when it went, while its sessions may not have
//! noticed anything. When it comes back the bus names it as returned in the view change,
//! the tracker sends it a `Rejoin`, and it re-joins the swarms we own, so its clients need
//! not announce again to be found.
//!
//! Liveness: the bus counts as up while our own heartbeats come back to us through the
//! broker within the expiry (an end-to-end probe: a connection that looks open but
//! delivers nothing, as after a silent partition, fails it too). When it fails the view
//! becomes this instance alone, so every swarm is served locally; the transport keeps
//! reconnecting by itself, and the first heartbeat of ours that comes back restores it.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use log::{debug, error, info, trace, warn};
use tokio::sync::{mpsc, oneshot};

use super::{
    members::{Change, LiveView, Members, SharedView},
    settings::ClusterSettings,
    wire::{self, BusMessage, ConnKey, Envelope, Heartbeat, InstanceId},
};
use crate::protocol::InfoHash;

/// Why a message never made it onto, or off, the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The bus task's queue was full.
    QueueFull,
    /// Bytes that do not decode (garbage, truncated, trailing bytes).
    Malformed,
    /// Another wire version.
    ForeignVersion,
    /// Addressed to another instance (or a data message on the control subject).
    NotForUs,
    /// The bus was down when the message was to be sent.
    BusDown,
    /// The broker refused it or did not take it in time (too large, link stalled).
    PublishFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::Malformed,
        DropReason::ForeignVersion,
        DropReason::NotForUs,
        DropReason::BusDown,
        DropReason::PublishFailed,
    ];

    /// Label for metrics (`reason="queue_full"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Malformed => "malformed",
            DropReason::ForeignVersion => "foreign_version",
            DropReason::NotForUs => "not_for_us",
            DropReason::BusDown => "bus_down",
            DropReason::PublishFailed => "publish_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the bus, shared by the bus task (which writes most of them) and whoever
/// reports them (metrics, readiness). Relaxed atomics: each is a counter or a flag on its
/// own, no reader needs two of them to agree.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages handed to the broker (heartbeats included).
    pub published: AtomicU64,
    /// Messages taken off the broker and decoded (heartbeats included).
    pub received: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// The broker reported us as slow (it dropped messages for us); per report, not per
    /// message.
    pub slow_consumer: AtomicU64,
    /// Times the link to the broker came up after being down.
    pub reconnects: AtomicU64,
    /// The transport's link to the broker is up right now.
    pub connected: AtomicBool,
    /// The bus delivers (our heartbeats come back): the cluster view is shared. False at
    /// start until the first heartbeat of ours returns, and while the bus is lost.
    pub bus_up: AtomicBool,
    /// Instances in the view, this one included.
    pub live_instances: AtomicUsize,
    /// Round trip of our latest heartbeat through the broker, in microseconds.
    pub heartbeat_rtt_micros: AtomicU64,
    /// Instances taken out of the view because the broker said their inbox has no
    /// subscriber (NATS "no responders"), before their expiry.
    pub unreachable: AtomicU64,
}

impl ClusterStats {
    /// Counts one dropped message.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages dropped so far for `reason`.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    pub fn is_bus_up(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What the bus task hands to the callback given at start.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A message from another instance for this one (never a heartbeat or `Leaving`:
    /// those are consumed by the membership view).
    Message(Envelope),
    /// The view changed: `joined` appeared (new, or back after leaving it), `gone` are
    /// dead to us (expired, left, or cut off because the bus was lost: owners drop their
    /// peers and their swarms move). `returned` are those of `joined` that were in the
    /// view before: their peers were dropped from our swarms when they left, so they are
    /// to be sent a `Rejoin` (by the receiver of this event, which counts what it sends;
    /// our heartbeat to them is already out, so they have us in their view again when it
    /// arrives). `view` is the new view, also readable through [`BusHandle::view`].
    Membership {
        joined: Vec<InstanceId>,
        returned: Vec<InstanceId>,
        gone: Vec<InstanceId>,
        view: Arc<LiveView>,
    },
    /// An answer of socket `from` in `info_hash` reached no instance: the one it was sent
    /// to had no subscriber (its connection is gone, and so is the swarm there that
    /// relayed the offer). `from` is to be told, since nothing else will answer it.
    AnswerLost { from: ConnKey, info_hash: InfoHash },
    /// An instance that is not in our view had no subscriber on its inbox for a message of
    /// ours (a probe, say): one a request of ours may be waiting for without our having
    /// heard of it yet (a newcomer another instance passed it on to) is dead. (One in the
    /// view leaves it instead, by a `Membership` change.)
    Unreachable(InstanceId),
}

/// The callback that receives what the bus delivers; runs on the bus thread and must not
/// block (forward with `try_send`/`do_send`).
pub type OnEvent = Box<dyn FnMut(BusEvent) + Send + 'static>;

/// A message waiting for the bus task.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) to: InstanceId,
    pub(crate) message: BusMessage,
}

/// Why `try_send` did not take a message (it was counted as dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    QueueFull,
    BusDown,
    /// The bus task has stopped (shutdown).
    Stopped,
}

/// What the bus needs to know about this instance; built from the `[cluster]` settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub self_id: InstanceId,
    /// `cluster.instance_id`, or the hex id when that is empty.
    pub name: String,
    pub advertise_url: String,
    pub heartbeat_interval: Duration,
    pub expiry: Duration,
    pub queue: usize,
    pub subject_prefix: String,
}

impl BusConfig {
    pub fn from_settings(settings: &ClusterSettings, self_id: InstanceId) -> Self {
        Self {
            self_id,
            name: if settings.instance_id.is_empty() {
                format!("{self_id:016x}")
            } else {
                settings.instance_id.clone()
            },
            advertise_url: settings.advertise_url.clone(),
            heartbeat_interval: settings.heartbeat_interval(),
            expiry: settings.expiry(),
            queue: settings.bus_queue,
            subject_prefix: settings.subject_prefix.clone(),
        }
    }

    /// Where heartbeats and `Leaving` go.
    pub fn control_subject(&self) -> String {
        control_subject(&self.subject_prefix)
    }

    /// Where messages for `instance` go.
    pub fn inbox_subject(&self, instance: InstanceId) -> String {
        inbox_subject(&self.subject_prefix, instance)
    }

    /// The reply subject of our messages to `instance`: the broker's "no responders" for
    /// them arrives there.
    pub fn unreachable_subject(&self, instance: InstanceId) -> String {
        format!("{}.{instance:016x}", self.unreachable_prefix())
    }

    /// `{prefix}.noresp.{self_id:016x}`: subscribed with `.>` appended.
    fn unreachable_prefix(&self) -> String {
        format!("{}.noresp.{:016x}", self.subject_prefix, self.self_id)
    }
}

/// The reply subject of an answer of socket `from` in `info_hash`: `unreachable`, the
/// reply subject of every message to the instance it goes to (see
/// `BusConfig::unreachable_subject`), followed by what names the answer, so that the
/// broker's "no responders" for it says whose answer was lost (see `BusEvent::AnswerLost`).
/// One allocation: it is formatted for every answer sent.
fn lost_answer_subject(unreachable: &str, from: ConnKey, info_hash: &InfoHash) -> String {
    use std::fmt::Write;
    // Three dots, two 16-digit ids, a 40-digit hash.
    let mut subject = String::with_capacity(unreachable.len() + 3 + 2 * 16 + 40);
    let _ = write!(
        subject,
        "{unreachable}.{:016x}.{:016x}.",
        from.instance, from.conn
    );
    for byte in info_hash.0 {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

/// What follows `{prefix}.noresp.{ours}.` in a reply subject of ours: the instance a
/// message was for, and for an answer its sender and swarm (see `lost_answer_subject`).
fn parse_unreachable(rest: &str) -> Option<(InstanceId, Option<(ConnKey, InfoHash)>)> {
    let hex = |token: &str| u64::from_str_radix(token, 16).ok();
    let mut tokens = rest.split('.');
    let instance = hex(tokens.next()?)?;
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (None, ..) => Some((instance, None)),
        (Some(from), Some(conn), Some(info_hash), None) => {
            let from = ConnKey {
                instance: hex(from)?,
                conn: hex(conn)?,
            };
            Some((instance, Some((from, InfoHash::from_hex(info_hash)?))))
        }
        _ => None,
    }
}

pub fn control_subject(prefix: &str) -> String {
    format!("{prefix}.ctl")
}

pub fn inbox_subject(prefix: &str, instance: InstanceId) -> String {
    format!("{prefix}.inbox.{instance:016x}")
}

/// A fresh instance id: random, never 0 (so a zeroed field is never a live instance).
pub fn new_instance_id() -> InstanceId {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Why the bus could not start, or a transport could not publish.
#[derive(Debug)]
pub struct BusError(pub String);

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BusError {}

// ---------------------------------------------------------------------------------------
// The transport seam.

/// What a transport reports; subjects in the transport's own form (`Transport::Subject`),
/// so that a message's arrival costs no copy of its subject.
#[derive(Debug)]
pub enum TransportEvent<S = String> {
    /// Bytes published on `subject`, which this transport subscribed to.
    Message { subject: S, payload: Bytes },
    /// The link is up (first connect or reconnect; subscriptions are in place again).
    Connected,
    /// The link dropped; the transport reconnects by itself.
    Disconnected,
    /// The broker dropped messages because we read too slowly.
    SlowConsumer,
    /// A message we published with reply subject `subject` reached no subscriber (the
    /// broker's own answer; NATS status 503).
    NoResponders { subject: S },
    /// Anything else worth a log line.
    Notice(String),
}

/// A boxed future, for the trait's async methods (object-safe, no extra crate).
pub type TransportFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A message broker as the bus needs it: at-most-once publish to a subject, a stream of
/// what arrives on the subjects subscribed at creation, and whether the link is up. The
/// transport reconnects (and resubscribes) by itself. It lives on the bus thread only.
/// An engine that can tell when a message reached no subscriber reports it as
/// `NoResponders` with the message's reply subject; one that cannot simply never does
/// (the expiry still finds dead instances).
pub trait Transport {
    /// A subject in the engine's own form. The bus builds one per destination once and
    /// clones it for every message, so cloning must be cheap (a reference count).
    type Subject: Clone + AsRef<str>;
    /// The engine's form of `subject`.
    fn subject(&self, subject: String) -> Self::Subject;
    /// Publishes one message, with a reply subject when `reply` is set. Must not wait for
    /// a reconnect: the bus only calls it while `is_connected()`, and bounds it with a
    /// timeout anyway.
    fn publish(
        &mut self,
        subject: Self::Subject,
        reply: Option<Self::Subject>,
        payload: Bytes,
    ) -> TransportFuture<'_, Result<(), BusError>>;
    /// Waits until what was published has reached the broker (used at shutdown).
    fn flush(&mut self) -> TransportFuture<'_, Result<(), BusError>>;
    /// The next event; `None` once the transport is closed for good.
    fn next_event(&mut self) -> TransportFuture<'_, Option<TransportEvent<Self::Subject>>>;
    /// Whether the link to the broker is up now.
    fn is_connected(&self) -> bool;
}

// ---------------------------------------------------------------------------------------
// The handle.

struct Inner {
    self_id: InstanceId,
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<ClusterStats>,
    view: Arc<SharedView>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

/// The way into the bus from any thread; cheap to clone.
#[derive(Clone)]
pub struct BusHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BusHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusHandle")
            .field("self_id", &format_args!("{:016x}", self.inner.self_id))
            .finish_non_exhaustive()
    }
}

impl BusHandle {
    pub fn self_id(&self) -> InstanceId {
        self.inner.self_id
    }

    /// Queues `message` for the inbox of `to` without waiting. A full queue or a bus
    /// without a link refuses it; the refusal is already counted. Only for other
    /// instances: requests for swarms owned here never touch the bus.
    pub fn try_send(&self, to: InstanceId, message: BusMessage) -> Result<(), SendRefused> {
        let stats = &self.inner.stats;
        if !stats.is_connected() {
            stats.dropped(DropReason::BusDown);
            return Err(SendRefused::BusDown);
        }
        match self.inner.tx.try_send(Outgoing { to, message }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.dropped(DropReason::QueueFull);
                Err(SendRefused::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                stats.dropped(DropReason::BusDown);
                Err(SendRefused::Stopped)
            }
        }
    }

    /// Queues `message` for the inbox of `to` as soon as the queue has room, waiting until
    /// `deadline` at most: for requests whose sender waits for a reply anyway (forwarded
    /// announces and scrapes, and the owner's replies to them), so that a burst of them
    /// is paced by the bus instead of overflowing its queue. Room is handed out in the
    /// order it was asked for; `try_send` gets it only when nobody waits. No room by the
    /// deadline is a `QueueFull` refusal, counted as such.
    pub async fn send_when_room(
        &self,
        to: InstanceId,
        message: BusMessage,
        deadline: tokio::time::Instant,
    ) -> Result<(), SendRefused> {
        let stats = &self.inner.stats;
        if !stats.is_connected() {
            stats.dropped(DropReason::BusDown);
            return Err(SendRefused::BusDown);
        }
        match tokio::time::timeout_at(deadline, self.inner.tx.reserve()).await {
            Ok(Ok(room)) => {
                room.send(Outgoing { to, message });
                Ok(())
            }
            Ok(Err(_closed)) => {
                stats.dropped(DropReason::BusDown);
                Err(SendRefused::Stopped)
            }
            Err(_) => {
                stats.dropped(DropReason::QueueFull);
                Err(SendRefused::QueueFull)
            }
        }
    }

    /// Asks the broker whether `to` can still receive: our latest heartbeat goes again, to
    /// `to`'s inbox alone, with the usual reply subject, so that NATS answers "no
    /// responders" if `to`'s connection is gone (and `to` leaves the view, or requests
    /// waiting for it are released: see `BusEvent::Unreachable`). For an instance that
    /// does not reply to a request of ours: it may have died after receiving it, and
    /// nothing else would tell us before the expiry. The receiver takes it as the
    /// heartbeat it is: a duplicate of one it had (or will have) from the control subject,
    /// which changes nothing there. Queued like any message, as a `Heartbeat` (the bus
    /// task fills in the latest one; heartbeats are otherwise never queued). Returns
    /// whether it was queued; a refusal (full queue, no link) is not counted as a drop:
    /// nothing is lost, and the caller may ask again later.
    pub fn probe(&self, to: InstanceId) -> bool {
        let placeholder = Heartbeat {
            seq: 0,
            started_at_ms: 0,
            name: String::new(),
            advertise_url: String::new(),
        };
        let message = BusMessage::Heartbeat(placeholder);
        self.inner.stats.is_connected() && self.inner.tx.try_send(Outgoing { to, message }).is_ok()
    }

    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.inner.stats
    }

    /// The current membership view (who owns which swarm).
    pub fn view(&self) -> Arc<LiveView> {
        self.inner.view.load()
    }

    /// The shared view itself, for components that keep it.
    pub fn shared_view(&self) -> Arc<SharedView> {
        self.inner.view.clone()
    }

    /// Asks the bus task to say `Leaving`, flush, and stop; returns at once.
    pub fn shutdown(&self) {
        if let Some(sender) = take(&self.inner.shutdown) {
            let _ = sender.send(());
        }
    }

    /// Waits for the bus thread to end (after `shutdown`). Blocking: not for actors.
    pub fn join(&self) {
        if let Some(handle) = take(&self.inner.thread) {
            if handle.join().is_err() {
                error!("cluster bus thread panicked");
            }
        }
    }
}

#[cfg(test)]
impl BusHandle {
    /// A handle with no bus thread behind it, for unit tests of what is built on the bus:
    /// its link counts as up, its view is `view` (change it through `shared_view`), and
    /// what is sent through it waits in the returned queue (`queue` messages at most).
    pub(crate) fn detached(view: LiveView, queue: usize) -> (Self, mpsc::Receiver<Outgoing>) {
        let stats = Arc::new(ClusterStats::default());
        stats.connected.store(true, Ordering::Relaxed);
        let (tx, sent) = mpsc::channel(queue);
        let handle = BusHandle {
            inner: Arc::new(Inner {
                self_id: view.self_id,
                tx,
                stats,
                view: Arc::new(SharedView::new(view)),
                shutdown: Mutex::new(None),
                thread: Mutex::new(None),
            }),
        };
        (handle, sent)
    }
}

/// Takes what a once-only slot holds (a panic elsewhere cannot leave it half-written).
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Starts the bus on its own thread with a transport made by `connect` (called on that
/// thread, inside its runtime, with the subjects to subscribe to: the control subject and
/// this instance's inbox). Returns once the
/// transport exists; the link itself may come up later (the transport keeps trying).
pub fn start<T, F>(config: BusConfig, connect: F, on_event: OnEvent) -> Result<BusHandle, BusError>
where
    T: Transport + 'static,
    F: FnOnce(Vec<String>) -> TransportFuture<'static, Result<T, BusError>> + Send + 'static,
{
    let stats = Arc::new(ClusterStats::default());
    let view = Arc::new(SharedView::new(LiveView::alone(config.self_id)));
    stats.live_instances.store(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BusError>>();

    let task_stats = stats.clone();
    let task_view = view.clone();
    let self_id = config.self_id;
    let thread = thread::Builder::new()
        .name("cluster-bus".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(BusError(format!("cluster bus runtime: {err}"))));
                    return;
                }
            };
            runtime.block_on(async move {
                let subjects = vec![
                    config.control_subject(),
                    config.inbox_subject(self_id),
                    format!("{}.>", config.unreachable_prefix()),
                ];
                let transport = match connect(subjects).await {
                    Ok(transport) => transport,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let task = BusTask::new(config, transport, task_stats, task_view, on_event);
                task.run(rx, shutdown_rx).await;
            });
        })
        .map_err(|err| BusError(format!("cannot start the cluster bus thread: {err}")))?;

    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            let _ = thread.join();
            return Err(err);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(BusError("cluster bus thread ended while starting".into()));
        }
    }
    Ok(BusHandle {
        inner: Arc::new(Inner {
            self_id,
            tx,
            stats,
            view,
            shutdown: Mutex::new(Some(shutdown_tx)),
            thread: Mutex::new(Some(thread)),
        }),
    })
}

/// Starts the bus over NATS with the `[cluster]` settings.
pub fn start_nats(
    settings: &ClusterSettings,
    self_id: InstanceId,
    on_event: OnEvent,
) -> Result<BusHandle, BusError> {
    let config = BusConfig::from_settings(settings, self_id);
    let settings = settings.clone();
    let name = config.name.clone();
    start(
        config,
        move |subjects: Vec<String>| -> TransportFuture<'static, Result<NatsTransport, BusError>> {
            Box::pin(async move { NatsTransport::connect(&settings, &name, &subjects).await })
        },
        on_event,
    )
}

// ---------------------------------------------------------------------------------------
// The task.

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One step of the loop, taken out of `select!` so the handlers may borrow freely.
enum Step<S> {
    Tick,
    Event(Option<TransportEvent<S>>),
    Send(Option<Outgoing>),
    Shutdown,
}

/// The subjects of the messages for one other instance.
struct Route<S> {
    inbox: S,
    /// Where the broker's "no responders" for them comes back.
    reply: S,
}

/// Beyond this many cached routes the cache starts again (a bound against ids that come
/// and go without ever being reported gone; a cluster has a handful of instances).
const MAX_ROUTES: usize = 1024;

struct BusTask<T: Transport> {
    config: BusConfig,
    transport: T,
    /// The subjects per destination, formatted once: a message's subjects cost a
    /// reference count, not two `format!`s of a hex id. Dropped when the instance is gone.
    routes: HashMap<InstanceId, Route<T::Subject>>,
    /// `control` in the transport's form, for heartbeats.
    control_subject: T::Subject,
    transport_open: bool,
    stats: Arc<ClusterStats>,
    view: Arc<SharedView>,
    on_event: OnEvent,
    members: Members,
    control: String,
    inbox: String,
    /// `{prefix}.noresp.{self_id}`, the start of the subjects of "no responders" reports.
    unreachable_prefix: String,
    heartbeat_seq: u64,
    /// When each of our latest heartbeats went out, for the round trip.
    last_heartbeat: Option<(u64, Instant)>,
    started_at_ms: u64,
    was_connected: bool,
    publish_timeout: Duration,
}

impl<T: Transport> BusTask<T> {
    fn new(
        config: BusConfig,
        transport: T,
        stats: Arc<ClusterStats>,
        view: Arc<SharedView>,
        on_event: OnEvent,
    ) -> Self {
        let members = Members::new(config.self_id, config.expiry);
        let control = config.control_subject();
        let inbox = config.inbox_subject(config.self_id);
        let unreachable_prefix = config.unreachable_prefix();
        // A publish normally completes in microseconds (it only queues in the client);
        // one that takes a heartbeat interval means the link is stalling.
        let publish_timeout = config.heartbeat_interval;
        let control_subject = transport.subject(control.clone());
        Self {
            config,
            transport,
            routes: HashMap::new(),
            control_subject,
            transport_open: true,
            stats,
            view,
            on_event,
            members,
            control,
            inbox,
            unreachable_prefix,
            heartbeat_seq: 0,
            last_heartbeat: None,
            started_at_ms: unix_millis(),
            was_connected: false,
            publish_timeout,
        }
    }

    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Outgoing>,
        mut shutdown: oneshot::Receiver<()>,
    ) {
        info!(
            "cluster: instance {} (id {:016x}) on {} and {}",
            self.config.name, self.config.self_id, self.control, self.inbox
        );
        let mut ticks = tokio::time::interval(self.config.heartbeat_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let transport_open = self.transport_open;
            // Unbiased: a flood of incoming messages must not starve the outgoing queue
            // (nor the other way round).
            let step = tokio::select! {
                _ = &mut shutdown => Step::Shutdown,
                _ = ticks.tick() => Step::Tick,
                event = self.transport.next_event(), if transport_open => Step::Event(event),
                outgoing = queue.recv() => Step::Send(outgoing),
            };
            match step {
                Step::Shutdown | Step::Send(None) => break,
                Step::Tick => self.tick().await,
                Step::Event(Some(event)) => self.on_transport_event(event).await,
                Step::Event(None) => {
                    error!("cluster: the bus transport closed; serving every swarm locally");
                    self.transport_open = false;
                }
                Step::Send(Some(outgoing)) => self.send(outgoing).await,
            }
        }
        self.leave().await;
    }

    /// Heartbeat, liveness of the bus, expiry of silent instances.
    async fn tick(&mut self) {
        self.sync_connected();
        self.heartbeat().await;
        self.check_liveness();
    }

    fn sync_connected(&mut self) {
        let connected = self.transport_open && self.transport.is_connected();
        self.stats.connected.store(connected, Ordering::Relaxed);
        if connected && !self.was_connected {
            info!("cluster: connected to the bus");
        } else if !connected && self.was_connected {
            warn!("cluster: lost the link to the bus; reconnecting");
        }
        self.was_connected = connected;
    }

    fn check_liveness(&mut self) {
        let now = Instant::now();
        // Only the echo decides, not the link state: a reconnect shorter than the expiry
        // (a broker restart, a TCP reset) must not cut every other instance off, just as
        // they do not declare us dead for it. Sends during the gap are refused and counted.
        if !self.members.self_fresh(now) && !self.members.is_bus_down() {
            let gone = self.members.bus_lost();
            warn!(
                "cluster: bus lost (no heartbeat of ours came back within {} ms); every swarm \
                 is now served locally, {} other instance(s) cut off",
                self.config.expiry.as_millis(),
                gone.len()
            );
            self.publish_view(Vec::new(), gone);
            return;
        }
        let dead = self.members.expire(now);
        if !dead.is_empty() {
            for instance in &dead {
                warn!("cluster: instance {instance:016x} is dead (silent for the expiry)");
            }
            self.publish_view(Vec::new(), dead);
        }
    }

    async fn heartbeat(&mut self) {
        if !self.stats.is_connected() {
            return;
        }
        self.heartbeat_seq += 1;
        let envelope = Envelope {
            from: self.config.self_id,
            sent_at_ms: unix_millis(),
            body: self.latest_heartbeat(),
        };
        self.last_heartbeat = Some((self.heartbeat_seq, Instant::now()));
        let subject = self.control_subject.clone();
        self.publish(subject, None, &envelope).await;
    }

    /// Our heartbeat of sequence number `heartbeat_seq`.
    fn latest_heartbeat(&self) -> BusMessage {
        BusMessage::Heartbeat(Heartbeat {
            seq: self.heartbeat_seq,
            started_at_ms: self.started_at_ms,
            name: self.config.name.clone(),
            advertise_url: self.config.advertise_url.clone(),
        })
    }

    async fn on_transport_event(&mut self, event: TransportEvent<T::Subject>) {
        match event {
            TransportEvent::Message { subject, payload } => {
                self.receive(subject.as_ref(), &payload).await
            }
            TransportEvent::Connected => {
                if self.heartbeat_seq > 0 {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.sync_connected();
                // Announce ourselves at once rather than at the next tick.
                self.heartbeat().await;
            }
            TransportEvent::Disconnected => self.sync_connected(),
            TransportEvent::SlowConsumer => {
                self.stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
                warn!("cluster: the broker dropped messages for us (slow consumer)");
            }
            TransportEvent::NoResponders { subject } => self.no_responders(subject.as_ref()),
            TransportEvent::Notice(text) => info!("cluster: bus: {text}"),
        }
    }

    /// The broker found no subscriber on the inbox of the instance a message of ours was
    /// for: its connection is gone, so it is out of the view now rather than at its expiry
    /// (owners drop its peers, its swarms move, and requests waiting for it are routed
    /// again). Its next heartbeat, if it is alive after all (a reconnect), brings it back.
    ///
    /// An answer's own reply subject names it (see `lost_answer_subject`): its
    /// sender is told of its loss too, even when the instance was already out of the view.
    fn no_responders(&mut self, subject: &str) {
        let parsed = subject
            .strip_prefix(self.unreachable_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(parse_unreachable);
        let Some((instance, lost_answer)) = parsed else {
            self.stats.dropped(DropReason::NotForUs);
            return;
        };
        if let Some((from, info_hash)) = lost_answer {
            (self.on_event)(BusEvent::AnswerLost { from, info_hash });
        }
        if self.members.is_bus_down() {
            return;
        }
        if !self.members.unreachable(instance, Instant::now()) {
            // Out of the view: gone already (one report per message sent before we knew),
            // or never heard of yet.
            (self.on_event)(BusEvent::Unreachable(instance));
            return;
        }
        self.stats.unreachable.fetch_add(1, Ordering::Relaxed);
        warn!(
            "cluster: instance {instance:016x} is gone (the broker has no subscriber on its \
             inbox)"
        );
        self.publish_view(Vec::new(), vec![instance]);
    }

    async fn receive(&mut self, subject: &str, payload: &[u8]) {
        let envelope = match wire::decode(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                let reason = match err {
                    wire::WireError::ForeignVersion(_) => DropReason::ForeignVersion,
                    _ => DropReason::Malformed,
                };
                self.stats.dropped(reason);
                debug!("cluster: dropped a message on {subject}: {err}");
                return;
            }
        };
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let from = envelope.from;
        match &envelope.body {
            BusMessage::Heartbeat(heartbeat) => {
                let now = Instant::now();
                if from == self.config.self_id {
                    self.members.heard(from, heartbeat.seq, now);
                    if let Some((seq, sent)) = self.last_heartbeat {
                        if seq == heartbeat.seq {
                            let rtt = now.saturating_duration_since(sent);
                            self.stats.heartbeat_rtt_micros.store(
                                u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                        }
                    }
                    // Our heartbeat made the round trip: the link is up, whatever
                    // event about it we may have missed.
                    self.sync_connected();
                    if self.members.is_bus_down() {
                        self.members.bus_restored();
                        info!("cluster: bus up; sharing swarms with the other instances");
                        self.publish_view(Vec::new(), Vec::new());
                    }
                    return;
                }
                if let Some(change) = self.members.heard(from, heartbeat.seq, now) {
                    let instance = change.instance();
                    info!(
                        "cluster: instance {} (id {instance:016x}{}{}) {}",
                        heartbeat.name,
                        if heartbeat.advertise_url.is_empty() {
                            ""
                        } else {
                            ", at "
                        },
                        heartbeat.advertise_url,
                        match change {
                            Change::Joined(_) => "joined",
                            Change::Returned(_) => "is back; asking it to re-join",
                        }
                    );
                    // Its peers left our swarms when it left our view, and nothing on its
                    // side need have changed (a short cut of its link leaves its own view
                    // whole): the receiver of the event asks it to re-join them. Its
                    // `Rejoin` goes through the queue, so it leaves after the heartbeat
                    // below, which this call publishes before the queue is read again.
                    let returned = match change {
                        Change::Returned(_) => vec![instance],
                        Change::Joined(_) => Vec::new(),
                    };
                    self.publish_view_with(vec![instance], returned, Vec::new());
                    // Tell the newcomer about us now, not a heartbeat interval later, so
                    // that views converge within one round trip.
                    self.heartbeat().await;
                }
            }
            BusMessage::Leaving => {
                if from != self.config.self_id && self.members.leaving(from) {
                    info!("cluster: instance {from:016x} left");
                    self.publish_view(Vec::new(), vec![from]);
                }
            }
            body => {
                let misaddressed = subject != self.inbox
                    || body
                        .addressee()
                        .is_some_and(|instance| instance != self.config.self_id);
                if misaddressed {
                    self.stats.dropped(DropReason::NotForUs);
                    debug!(
                        "cluster: dropped a {} from {from:016x} on {subject}: not for us",
                        body.kind()
                    );
                    return;
                }
                trace!("cluster: {} from {from:016x}", body.kind());
                (self.on_event)(BusEvent::Message(envelope));
            }
        }
    }

    fn publish_view(&mut self, joined: Vec<InstanceId>, gone: Vec<InstanceId>) {
        self.publish_view_with(joined, Vec::new(), gone);
    }

    fn publish_view_with(
        &mut self,
        joined: Vec<InstanceId>,
        returned: Vec<InstanceId>,
        gone: Vec<InstanceId>,
    ) {
        for instance in &gone {
            self.routes.remove(instance);
        }
        let view = self.members.view();
        self.stats.bus_up.store(view.bus_up, Ordering::Relaxed);
        self.stats
            .live_instances
            .store(view.live.len(), Ordering::Relaxed);
        self.view.store(view);
        let view = self.view.load();
        (self.on_event)(BusEvent::Membership {
            joined,
            returned,
            gone,
            view,
        });
    }

    async fn send(&mut self, outgoing: Outgoing) {
        if !self.stats.is_connected() {
            self.stats.dropped(DropReason::BusDown);
            return;
        }
        let body = match outgoing.message {
            // A probe (see `BusHandle::probe`): our latest heartbeat, once there is one.
            BusMessage::Heartbeat(_) if self.heartbeat_seq == 0 => return,
            BusMessage::Heartbeat(_) => self.latest_heartbeat(),
            body => body,
        };
        let envelope = Envelope {
            from: self.config.self_id,
            sent_at_ms: unix_millis(),
            body,
        };
        let route = self.route(outgoing.to);
        let (subject, mut reply) = (route.inbox.clone(), route.reply.clone());
        if let BusMessage::Answer(answer) = &envelope.body {
            // Named, so that its loss can be told to its sender: one subject per answer
            // (about a third of the bus's messages), built on the route's cached one.
            let named = lost_answer_subject(reply.as_ref(), answer.from, &answer.request.info_hash);
            reply = self.transport.subject(named);
        }
        self.publish(subject, Some(reply), &envelope).await;
    }

    fn route(&mut self, to: InstanceId) -> &Route<T::Subject> {
        if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&to) {
            self.routes.clear();
        }
        let (config, transport) = (&self.config, &self.transport);
        self.routes.entry(to).or_insert_with(|| Route {
            inbox: transport.subject(config.inbox_subject(to)),
            reply: transport.subject(config.unreachable_subject(to)),
        })
    }

    /// Encodes and publishes; every failure is counted, none is fatal.
    async fn publish(
        &mut self,
        subject: T::Subject,
        reply: Option<T::Subject>,
        envelope: &Envelope,
    ) {
        let payload = match wire::encode(envelope) {
            Ok(payload) => Bytes::from(payload),
            Err(err) => {
                error!("cluster: cannot encode a {}: {err}", envelope.body.kind());
                self.stats.dropped(DropReason::PublishFailed);
                return;
            }
        };
        match tokio::time::timeout(
            self.publish_timeout,
            self.transport.publish(subject, reply, payload),
        )
        .await
        {
            Ok(Ok(())) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(err)) => {
                self.stats.dropped(DropReason::PublishFailed);
                debug!(
                    "cluster: publish of a {} failed: {err}",
                    envelope.body.kind()
                );
            }
            Err(_) => {
                self.stats.dropped(DropReason::PublishFailed);
                debug!("cluster: publish of a {} timed out", envelope.body.kind());
            }
        }
    }

    /// Clean shutdown: tell the others, so they need not wait for the expiry.
    async fn leave(&mut self) {
        if self.transport_open && self.transport.is_connected() {
            let envelope = Envelope {
                from: self.config.self_id,
                sent_at_ms: unix_millis(),
                body: BusMessage::Leaving,
            };
            let subject = self.control_subject.clone();
            self.publish(subject, None, &envelope).await;
            if tokio::time::timeout(self.publish_timeout, self.transport.flush())
                .await
                .is_err()
            {
                debug!("cluster: flush at shutdown timed out");
            }
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.stats.bus_up.store(false, Ordering::Relaxed);
        info!("cluster: bus stopped");
    }
}

// ---------------------------------------------------------------------------------------
// NATS.

/// Delay before reconnect attempt number `attempts` (1-based): the first at once, then
/// 50 ms doubling up to `max`. Jitter is not needed: instances lose a broker at different
/// moments of their heartbeat cycle anyway.
pub fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(50u64.saturating_mul(1u64 << exponent)).min(max)
}

/// The NATS engine (core pub/sub, at most once) with the `async-nats` client.
///
/// The client runs its own connection task (spawned on the bus runtime): it connects in
/// the background (`retry_on_initial_connect`), reconnects forever with our backoff,
/// resubscribes after each reconnect, and pings the server every `expiry / 3`, so that a
/// connection that stopped answering is dropped (after 2 unanswered pings) within about
/// one expiry and a reconnect begins. While it reconnects its command queue stops draining,
/// so a publish could wait: the bus never publishes while the state is not `Connected`,
/// and bounds every publish with a timeout.
pub struct NatsTransport {
    client: async_nats::Client,
    incoming: futures_util::stream::SelectAll<async_nats::Subscriber>,
    events: mpsc::Receiver<async_nats::Event>,
}

impl NatsTransport {
    /// Builds the client from the settings (credentials and TLS passed through) and
    /// subscribes to `subjects`. Does not wait for a server: an unreachable one is retried
    /// in the background. Fails on unusable settings (bad URL, unreadable credentials).
    pub async fn connect(
        settings: &ClusterSettings,
        name: &str,
        subjects: &[String],
    ) -> Result<Self, BusError> {
        let (events_tx, events) = mpsc::channel(256);
        let max_delay = settings.reconnect_max_delay();
        let ping_interval = (settings.expiry() / 3).max(Duration::from_millis(100));
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("p2p-mediastream {name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
            .ping_interval(ping_interval)
            .subscription_capacity(settings.bus_queue.max(1))
            // Every subject we publish to is the validated `subject_prefix` plus fixed
            // tokens and hex ids (see `valid_subject_prefix`): nothing for the client to
            // check again on each publish.
            .skip_subject_validation(true)
            .require_tls(settings.tls_required)
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    // Events only wake the bus up; the connection state is read from the
                    // client, so a dropped event loses nothing.
                    let _ = events_tx.try_send(event);
                }
            });
        if let Some(path) = &settings.credentials_file {
            options = options.credentials_file(path).await.map_err(|err| {
                BusError(format!(
                    "cluster.credentials_file {}: {err}",
                    path.display()
                ))
            })?;
        }
        if let Some(token) = &settings.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &settings.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connect(settings.nats_urls.as_slice())
            .await
            .map_err(|err| BusError(format!("cluster.nats_urls: {err}")))?;
        let mut incoming = futures_util::stream::SelectAll::new();
        for subject in subjects {
            let subscriber = client
                .subscribe(subject.clone())
                .await
                .map_err(|err| BusError(format!("subscribe to {subject}: {err}")))?;
            incoming.push(subscriber);
        }
        Ok(Self {
            client,
            incoming,
            events,
        })
    }
}

impl Transport for NatsTransport {
    type Subject = async_nats::Subject;

    fn subject(&self, subject: String) -> Self::Subject {
        async_nats::Subject::from(subject)
    }

    fn publish(
        &mut self,
        subject: Self::Subject,
        reply: Option<Self::Subject>,
        payload: Bytes,
    ) -> TransportFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match reply {
                Some(reply) => {
                    self.client
                        .publish_with_reply(subject, reply, payload)
                        .await
                }
                None => self.client.publish(subject, payload).await,
            }
            .map_err(|err| BusError(err.to_string()))
        })
    }

    fn flush(&mut self) -> TransportFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.client
                .flush()
                .await
                .map_err(|err| BusError(err.to_string()))
        })
    }

    fn next_event(&mut self) -> TransportFuture<'_, Option<TransportEvent<Self::Subject>>> {
        Box::pin(async move {
            tokio::select! {
                event = self.events.recv() => Some(match event? {
                    async_nats::Event::Connected => TransportEvent::Connected,
                    async_nats::Event::Disconnected => TransportEvent::Disconnected,
                    async_nats::Event::SlowConsumer(_) => TransportEvent::SlowConsumer,
                    other => TransportEvent::Notice(other.to_string()),
                }),
                message = self.incoming.next() => {
                    let message = message?;
                    if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                        return Some(TransportEvent::NoResponders {
                            subject: message.subject,
                        });
                    }
                    Some(TransportEvent::Message {
                        subject: message.subject,
                        payload: message.payload,
                    })
                }
            }
        })
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::{ConnKey, Deliver, Relay};
    use crate::protocol::{InfoHash, OfferId, PeerId};

    /// An in-memory broker for one instance: the link is a flag, what the test injects
    /// arrives as if from the broker, and our publishes on subscribed subjects come back
    /// (as NATS echoes them) while `echo` is on. `stall` makes every publish hang. With
    /// `no_responders` on, a publish with a reply subject to a subject nobody subscribed
    /// (any other instance's inbox) is answered as NATS does when nobody listens.
    #[derive(Clone, Default)]
    struct Broker {
        connected: Arc<AtomicBool>,
        echo: Arc<AtomicBool>,
        stall: Arc<AtomicBool>,
        no_responders: Arc<AtomicBool>,
        inject: Arc<Mutex<Option<mpsc::UnboundedSender<TransportEvent>>>>,
    }

    struct MemoryTransport {
        broker: Broker,
        subjects: Vec<String>,
        inbound: mpsc::UnboundedReceiver<TransportEvent>,
        loopback: mpsc::UnboundedSender<TransportEvent>,
    }

    impl Transport for MemoryTransport {
        type Subject = String;

        fn subject(&self, subject: String) -> String {
            subject
        }

        fn publish(
            &mut self,
            subject: String,
            reply: Option<String>,
            payload: Bytes,
        ) -> TransportFuture<'_, Result<(), BusError>> {
            Box::pin(async move {
                if self.broker.stall.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
                let nobody = !self.subjects.contains(&subject);
                if let Some(reply) = reply.filter(|_| nobody) {
                    if self.broker.no_responders.load(Ordering::Relaxed) {
                        let _ = self
                            .loopback
                            .send(TransportEvent::NoResponders { subject: reply });
                    }
                    return Ok(());
                }
                if self.broker.echo.load(Ordering::Relaxed) && !nobody {
                    let _ = self
                        .loopback
                        .send(TransportEvent::Message { subject, payload });
                }
                Ok(())
            })
        }

        fn flush(&mut self) -> TransportFuture<'_, Result<(), BusError>> {
            Box::pin(async { Ok(()) })
        }

        fn next_event(&mut self) -> TransportFuture<'_, Option<TransportEvent>> {
            Box::pin(async move { self.inbound.recv().await })
        }

        fn is_connected(&self) -> bool {
            self.broker.connected.load(Ordering::Relaxed)
        }
    }

    impl Broker {
        fn new() -> Self {
            let broker = Self::default();
            broker.connected.store(true, Ordering::Relaxed);
            broker.echo.store(true, Ordering::Relaxed);
            broker
        }

        fn inject(&self, subject: &str, envelope: &Envelope) {
            let payload = Bytes::from(wire::encode(envelope).expect("encodes"));
            self.inject_raw(subject, payload);
        }

        fn inject_raw(&self, subject: &str, payload: Bytes) {
            let inject = self.inject.lock().expect("test lock");
            inject
                .as_ref()
                .expect("the bus started")
                .send(TransportEvent::Message {
                    subject: subject.to_owned(),
                    payload,
                })
                .expect("the bus listens");
        }
    }

    const ME: InstanceId = 0xaaaa;
    const OTHER: InstanceId = 0xbbbb;

    fn config(heartbeat_ms: u64, expiry_ms: u64, queue: usize) -> BusConfig {
        BusConfig {
            self_id: ME,
            name: "me".into(),
            advertise_url: String::new(),
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            expiry: Duration::from_millis(expiry_ms),
            queue,
            subject_prefix: "t".into(),
        }
    }

    fn start_memory(
        config: BusConfig,
        broker: &Broker,
    ) -> (BusHandle, std::sync::mpsc::Receiver<BusEvent>) {
        let (events_tx, events) = std::sync::mpsc::channel();
        let broker_for_bus = broker.clone();
        let bus = start(
            config,
            move |subjects: Vec<String>| -> TransportFuture<'static, Result<MemoryTransport, BusError>> {
                Box::pin(async move {
                    let (loopback, inbound) = mpsc::unbounded_channel();
                    *broker_for_bus.inject.lock().expect("test lock") = Some(loopback.clone());
                    Ok(MemoryTransport {
                        broker: broker_for_bus,
                        subjects,
                        inbound,
                        loopback,
                    })
                })
            },
            Box::new(move |event| {
                let _ = events_tx.send(event);
            }),
        )
        .expect("starts");
        (bus, events)
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn deliver_to(instance: InstanceId) -> BusMessage {
        BusMessage::Deliver(Deliver {
            to: ConnKey { instance, conn: 1 },
            message: Relay::Offer {
                info_hash: InfoHash([1; 20]),
                peer_id: PeerId([2; 20]),
                offer_id: OfferId([3; 20]),
                sdp: crate::protocol::Sdp::from_text("v=0"),
            },
        })
    }

    fn from_other(body: BusMessage) -> Envelope {
        Envelope {
            from: OTHER,
            sent_at_ms: 0,
            body,
        }
    }

    fn heartbeat(seq: u64) -> BusMessage {
        BusMessage::Heartbeat(Heartbeat {
            seq,
            started_at_ms: 0,
            name: "other".into(),
            advertise_url: String::new(),
        })
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_counts() {
        let broker = Broker::new();
        broker.stall.store(true, Ordering::Relaxed);
        // The first heartbeat hangs in publish (for up to a minute), so nothing drains.
        let (bus, _events) = start_memory(config(60_000, 180_000, 2), &broker);
        wait_for("the link", || bus.stats().is_connected());
        assert_eq!(bus.try_send(OTHER, deliver_to(OTHER)), Ok(()));
        assert_eq!(bus.try_send(OTHER, deliver_to(OTHER)), Ok(()));
        assert_eq!(
            bus.try_send(OTHER, deliver_to(OTHER)),
            Err(SendRefused::QueueFull)
        );
        assert_eq!(bus.stats().dropped_count(DropReason::QueueFull), 1);
        bus.shutdown();
    }

    /// Waits for an event that satisfies `wanted`, skipping others (events are queued,
    /// so none is missed however late this looks).
    fn wait_event(
        events: &std::sync::mpsc::Receiver<BusEvent>,
        what: &str,
        mut wanted: impl FnMut(&BusEvent) -> bool,
    ) -> BusEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(event) if wanted(&event) => return event,
                Ok(_) => continue,
                Err(err) => panic!("no event for {what}: {err}"),
            }
        }
    }

    /// Waits for a membership change: whether `OTHER` joined, whether it is gone, and
    /// the bus state of the new view.
    fn wait_membership(
        events: &std::sync::mpsc::Receiver<BusEvent>,
        what: &str,
        joined_other: bool,
        gone_other: bool,
        bus_up: bool,
    ) {
        wait_event(events, what, |event| {
            matches!(event, BusEvent::Membership { joined, gone, view, .. }
                if joined.contains(&OTHER) == joined_other
                    && gone.contains(&OTHER) == gone_other
                    && view.bus_up == bus_up)
        });
    }

    /// A bus over a fresh in-memory broker, once its first heartbeat has come back.
    fn started(
        heartbeat_ms: u64,
        expiry_ms: u64,
    ) -> (Broker, BusHandle, std::sync::mpsc::Receiver<BusEvent>) {
        let broker = Broker::new();
        let (bus, events) = start_memory(config(heartbeat_ms, expiry_ms, 16), &broker);
        wait_membership(&events, "bus up", false, false, true);
        (broker, bus, events)
    }

    #[test]
    fn the_bus_is_lost_when_our_heartbeats_stop_coming_back_even_on_an_open_link() {
        let (broker, bus, events) = started(20, 100);

        // A silent stall: the link claims to be up but nothing comes back.
        broker.echo.store(false, Ordering::Relaxed);
        wait_membership(&events, "bus lost", false, false, false);
        assert_eq!(bus.view().live, vec![ME]);
        assert!(
            bus.stats().is_connected(),
            "the link itself never went down"
        );

        broker.echo.store(true, Ordering::Relaxed);
        wait_membership(&events, "bus back", false, false, true);
        assert!(bus.stats().is_bus_up());
        bus.shutdown();
        bus.join();
        assert!(!bus.stats().is_bus_up());
    }

    #[test]
    fn losing_the_bus_cuts_the_other_instances_off() {
        let (broker, bus, events) = started_with_other(1_000, 1);
        let control = control_subject("t");
        assert_eq!(bus.view().live, vec![ME, OTHER]);
        broker.echo.store(false, Ordering::Relaxed);
        // The other instance keeps beating (injected heartbeats bypass the echo switch),
        // so the only reason it can go is the cut: a lone expiry would come with the bus
        // still up and fail this wait, however slow the machine.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seq = 1;
        let cut = loop {
            assert!(Instant::now() < deadline, "no event for the cut");
            seq += 1;
            broker.inject(&control, &from_other(heartbeat(seq)));
            match events.recv_timeout(Duration::from_millis(20)) {
                Ok(BusEvent::Membership { gone, view, .. }) if gone.contains(&OTHER) => {
                    break view;
                }
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(err) => panic!("the event channel closed: {err}"),
            }
        };
        assert!(!cut.bus_up, "the other instance went while the bus was up");
        assert_eq!(cut.live, vec![ME]);
        bus.shutdown();
    }

    #[test]
    fn only_well_addressed_messages_reach_the_callback() {
        let (broker, bus, events) = started(20, 100);
        let inbox = inbox_subject("t", ME);
        broker.inject(&inbox, &from_other(deliver_to(OTHER)));
        broker.inject(&control_subject("t"), &from_other(deliver_to(ME)));
        wait_for("not_for_us", || {
            bus.stats().dropped_count(DropReason::NotForUs) == 2
        });
        broker.inject_raw(&inbox, Bytes::from_static(&[wire::WIRE_VERSION, 200]));
        wait_for("malformed", || {
            bus.stats().dropped_count(DropReason::Malformed) == 1
        });

        broker.inject(&inbox, &from_other(deliver_to(ME)));
        let event = wait_event(&events, "a message", |event| {
            matches!(event, BusEvent::Message(_))
        });
        assert!(matches!(event, BusEvent::Message(envelope) if envelope.body == deliver_to(ME)));
        bus.shutdown();
    }

    #[test]
    fn a_silent_instance_expires_and_a_leaving_one_goes_at_once() {
        let (broker, bus, events) = started_with_other(100, 1);
        let control = control_subject("t");
        wait_membership(&events, "the expiry", false, true, true);

        broker.inject(&control, &from_other(heartbeat(2)));
        wait_membership(&events, "the rejoin", true, false, true);
        broker.inject(&control, &from_other(BusMessage::Leaving));
        // Unless it expired first (a slow machine), the Leaving removes it.
        wait_membership(&events, "the leave", false, true, true);
        assert_eq!(bus.view().live, vec![ME]);
        bus.shutdown();
    }

    /// `started`, and then `OTHER` joined with heartbeat `seq`: a newcomer, not to be
    /// asked to re-join (it has no peers in our swarms).
    fn started_with_other(
        expiry_ms: u64,
        seq: u64,
    ) -> (Broker, BusHandle, std::sync::mpsc::Receiver<BusEvent>) {
        let (broker, bus, events) = started(20, expiry_ms);
        broker.inject(&control_subject("t"), &from_other(heartbeat(seq)));
        let join = wait_event(
            &events,
            "the join",
            |event| matches!(event, BusEvent::Membership { joined, .. } if joined.contains(&OTHER)),
        );
        assert!(
            matches!(&join, BusEvent::Membership { returned, .. } if returned.is_empty()),
            "{join:?}"
        );
        (broker, bus, events)
    }

    /// `OTHER`, out of the view, beats with `seq`: it is back in the view, and named as
    /// returned (to be asked to re-join).
    fn returns_and_is_asked_to_rejoin(
        broker: &Broker,
        events: &std::sync::mpsc::Receiver<BusEvent>,
        seq: u64,
    ) {
        broker.inject(&control_subject("t"), &from_other(heartbeat(seq)));
        wait_event(events, "the return", |event| {
            matches!(event, BusEvent::Membership { joined, returned, view, .. }
                if joined.contains(&OTHER) && returned == &[OTHER] && view.bus_up)
        });
    }

    #[test]
    fn an_instance_without_a_subscriber_on_its_inbox_leaves_before_its_expiry() {
        // An expiry of a minute: only the broker's report can take the instance out.
        let (broker, bus, events) = started_with_other(60_000, 7);
        let control = control_subject("t");

        // Delivered somewhere while it lives: nothing happens.
        assert_eq!(bus.try_send(OTHER, deliver_to(OTHER)), Ok(()));
        broker.no_responders.store(true, Ordering::Relaxed);
        assert_eq!(bus.try_send(OTHER, deliver_to(OTHER)), Ok(()));
        wait_membership(&events, "the report", false, true, true);
        assert_eq!(bus.view().live, vec![ME]);
        assert_eq!(bus.stats().unreachable.load(Ordering::Relaxed), 1);

        // Its heartbeat sent before the report does not bring it back (the message after
        // it arrives with no view change in between); a later one does.
        broker.inject(&control, &from_other(heartbeat(7)));
        broker.inject(&inbox_subject("t", ME), &from_other(deliver_to(ME)));
        let event = wait_event(&events, "the marker", |event| {
            matches!(event, BusEvent::Message(_) | BusEvent::Membership { .. })
        });
        assert!(matches!(event, BusEvent::Message(_)), "{event:?}");
        assert_eq!(bus.view().live, vec![ME]);
        broker.inject(&control, &from_other(heartbeat(8)));
        wait_membership(&events, "the return", true, false, true);
        // Reports about an instance already out of the view change nothing.
        bus.try_send(OTHER, deliver_to(OTHER)).expect("queued");
        wait_membership(&events, "the second report", false, true, true);
        assert_eq!(bus.stats().unreachable.load(Ordering::Relaxed), 2);
        bus.shutdown();
    }

    /// An answer sent to an instance without a subscriber is reported lost to whoever
    /// sent it (the socket named in it, whichever instance that is on: the answer may be
    /// passed on from another instance), also once that instance is out of the view.
    #[test]
    fn an_answer_that_reaches_nobody_is_reported_lost_to_its_sender() {
        use crate::cluster::wire::ForwardedAnswer;
        use crate::protocol::AnswerRequest;
        let (broker, bus, events) = started_with_other(60_000, 7);
        broker.no_responders.store(true, Ordering::Relaxed);
        for answerer in [
            ConnKey {
                instance: 0xcccc,
                conn: 3,
            },
            ConnKey {
                instance: ME,
                conn: 9,
            },
        ] {
            let answer = BusMessage::Answer(ForwardedAnswer {
                from: answerer,
                hops: 1,
                request: AnswerRequest {
                    info_hash: InfoHash([4; 20]),
                    peer_id: PeerId([5; 20]),
                    to_peer_id: PeerId([6; 20]),
                    offer_id: OfferId([7; 20]),
                    sdp: crate::protocol::Sdp::from_text("v=0"),
                },
            });
            bus.try_send(OTHER, answer).expect("queued");
            let lost = wait_event(&events, "the lost answer", |event| {
                matches!(event, BusEvent::AnswerLost { .. })
            });
            assert!(
                matches!(lost, BusEvent::AnswerLost { from, info_hash }
                    if from == answerer && info_hash == InfoHash([4; 20])),
                "{lost:?}"
            );
        }
        assert_eq!(
            bus.view().live,
            vec![ME],
            "OTHER is gone, by the first report"
        );
        bus.shutdown();
    }

    /// A probe is our latest heartbeat, to one inbox: one to an instance without a
    /// subscriber takes it out of the view, or, for one not in it (never heard of), is
    /// reported as such, for the requests that may wait for it.
    #[test]
    fn a_probe_finds_a_dead_instance_in_the_view_or_out_of_it() {
        const UNHEARD: InstanceId = 0xcccc;
        let (broker, bus, events) = started_with_other(60_000, 7);
        broker.no_responders.store(true, Ordering::Relaxed);
        assert!(bus.probe(UNHEARD), "queued");
        let event = wait_event(&events, "the report", |event| {
            matches!(
                event,
                BusEvent::Unreachable(_) | BusEvent::Membership { .. }
            )
        });
        assert!(matches!(event, BusEvent::Unreachable(UNHEARD)), "{event:?}");
        assert_eq!(bus.view().live, vec![ME, OTHER], "nothing else changes");
        assert!(bus.probe(OTHER), "queued");
        wait_membership(&events, "the report", false, true, true);
        assert_eq!(bus.view().live, vec![ME]);
        bus.shutdown();
    }

    #[test]
    fn reply_subjects_name_the_instance_and_an_answer_s_sender() {
        let config = config(20, 60, 16);
        let answerer = ConnKey {
            instance: 0xcccc,
            conn: u64::MAX,
        };
        let info_hash = InfoHash([0xab; 20]);
        let prefix = format!("{}.", config.unreachable_prefix());
        let plain = config.unreachable_subject(OTHER);
        let answer = lost_answer_subject(&plain, answerer, &info_hash);
        let parse = |subject: &str| parse_unreachable(subject.strip_prefix(&prefix)?);
        assert_eq!(parse(&plain), Some((OTHER, None)));
        assert_eq!(parse(&answer), Some((OTHER, Some((answerer, info_hash)))));
        for bad in ["zz", "bbbb.1.2", "bbbb.1.2.00.4", "bbbb.cccc.1.abc"] {
            assert_eq!(parse_unreachable(bad), None, "{bad}");
        }
    }

    /// An instance that left our view and comes back is asked to re-join our swarms (we
    /// dropped its peers); a new one is not (it has none here).
    #[test]
    fn an_instance_back_in_the_view_is_asked_to_rejoin_and_a_new_one_is_not() {
        // An expiry of a minute: only the broker's report takes the instance out.
        let (broker, bus, events) = started_with_other(60_000, 1);
        broker.no_responders.store(true, Ordering::Relaxed);
        bus.try_send(OTHER, deliver_to(OTHER)).expect("queued");
        wait_membership(&events, "the report", false, true, true);
        broker.no_responders.store(false, Ordering::Relaxed);
        returns_and_is_asked_to_rejoin(&broker, &events, 2);
        bus.shutdown();
    }

    #[test]
    fn after_our_bus_was_lost_every_instance_coming_back_is_asked_to_rejoin() {
        let (broker, bus, events) = started_with_other(200, 1);
        // Our heartbeats stop coming back: we cut the other instance off (and, in the
        // tracker, dropped its peers from our swarms).
        broker.echo.store(false, Ordering::Relaxed);
        wait_membership(&events, "the cut", false, true, false);
        broker.echo.store(true, Ordering::Relaxed);
        wait_membership(&events, "bus back", false, false, true);
        returns_and_is_asked_to_rejoin(&broker, &events, 2);
        bus.shutdown();
    }

    #[test]
    fn reconnects_start_at_once_and_back_off_to_the_cap() {
        let max = Duration::from_secs(2);
        assert_eq!(reconnect_delay(0, max), Duration::ZERO);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        assert_eq!(reconnect_delay(2, max), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3, max), Duration::from_millis(100));
        assert_eq!(reconnect_delay(7, max), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(8, max), max);
        assert_eq!(reconnect_delay(usize::MAX, max), max);
    }

    #[test]
    fn subjects_carry_the_prefix_and_the_id() {
        assert_eq!(control_subject("p2pms"), "p2pms.ctl");
        assert_eq!(inbox_subject("a.b", 0xab), "a.b.inbox.00000000000000ab");
    }

    #[test]
    fn drop_reasons_have_distinct_labels_and_counters() {
        let stats = ClusterStats::default();
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=n {
                stats.dropped(*reason);
            }
        }
        for (n, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(
                stats.dropped_count(*reason),
                n as u64 + 1,
                "{}",
                reason.as_str()
            );
        }
        let labels: std::collections::HashSet<_> = DropReason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }

    #[test]
    fn instance_ids_are_never_zero_and_differ() {
        let a = new_instance_id();
        let b = new_instance_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn config_names_the_instance_by_its_id_when_unnamed() {
        let settings = ClusterSettings::default();
        let config = BusConfig::from_settings(&settings, 0x1234);
        assert_eq!(config.name, "0000000000001234");
        let named = ClusterSettings {
            instance_id: "edge-1".into(),
            ..ClusterSettings::default()
        };
        assert_eq!(BusConfig::from_settings(&named, 1).name, "edge-1");
    }
}
