//! PeerSession actor: one per WebSocket, on the HTTP worker thread that accepted it.
//!
//! It owns the protocol side of the connection: it turns frames into messages
//! (`reassembly`), applies the rate limit (`rate_limit`), the heartbeat and the idle
//! timeout, parses and serialises JSON (so swarms only route), and dispatches each request
//! to the swarm side (`requests`). Its context is a `SessionContext`, fed and drained by
//! `io` straight on the socket. It remembers which swarms and peer_ids this connection
//! registered (`memberships`), so that closing the socket removes them at once.

use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{dev::SendError, prelude::*};
use actix_http::ws::{self, CloseCode, CloseReason};
use log::{debug, trace, warn};

use super::{
    context::SessionContext,
    io::ReadError,
    memberships::Memberships,
    rate_limit::{RateLimit, Refusal},
    reassembly::{Reassembly, Received},
    requests::{self, Announced, Failure, SwarmHandle},
    ConnId, InstanceId,
};
use crate::{
    protocol::{
        self, Action, AnnounceEvent, AnnounceRequest, AnswerRequest, InMessage, InfoHash,
        OutMessage, PeerId, ScrapeRequest,
    },
    shared::Shared,
    swarm::{
        messages::{Answer, Deliver},
        route::PeerRoute,
        state::Reject,
    },
};

/// Close the WebSocket with this code (1001 on shutdown).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: CloseCode,
    pub reason: &'static str,
}

/// The cluster's view changed: swarms this connection joined may be owned by another
/// instance now. The session re-joins each swarm that moved at its new owner, so that its
/// peers are found there before their next announce. An announce or re-join still on its
/// way is not in the memberships this checks: when its reply comes, it is re-joined again
/// if the view changed since it was routed (see `PeerSession::record_membership`).
#[derive(Message, Clone, Copy, Default)]
#[rtype(result = "()")]
pub struct OwnersChanged {
    /// Rounds already tried: views of the live instances differ for up to one expiry, so
    /// a re-join may be lost on the way (sent to an owner that still forwards to a dead
    /// one); it is tried again, one expiry later, a few times.
    pub attempt: u8,
    /// Set when this owner dropped our peers (it had lost sight of this instance for a
    /// while) and asks for them back: then the swarms re-joined are those joined at it
    /// and still owned by it, instead of those that moved (which the view change that
    /// moved them re-joins, so none is announced twice).
    pub dropped_by: Option<InstanceId>,
}

/// Time for the session's heartbeat: prove it runs (see `ConnectionRegistry::touch`), close
/// it if the client has been silent for the idle timeout, else ping. Sent by the registry's
/// sweep (`ConnectionRegistry::heartbeat`) about once per ping interval.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// A thread's buffer for the JSON of outgoing messages, copied from there into the frame
/// (the frame header needs the length first); kept unless a message made it this large.
const JSON_KEPT_BYTES: usize = 64 * 1024;

thread_local! {
    static JSON: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Rounds of re-joins after one view change (see `OwnersChanged`).
const REJOIN_ATTEMPTS: u8 = 4;

pub struct PeerSession {
    conn: ConnId,
    ip: Option<IpAddr>,
    shared: Arc<Shared>,
    joined: Memberships,
    last_heard: Instant,
    reassembly: Reassembly,
    rate: RateLimit,
}

impl PeerSession {
    pub fn new(conn: ConnId, ip: Option<IpAddr>, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let rate = RateLimit::new(shared.settings.ws.message_burst, now);
        Self {
            conn,
            ip,
            shared,
            joined: Memberships::default(),
            last_heard: now,
            reassembly: Reassembly::default(),
            rate,
        }
    }

    /// One message off the socket: rate limit, reassembly, then dispatch.
    fn on_message(&mut self, message: ws::Message, now: Instant, ctx: &mut SessionContext<Self>) {
        // Every message a client can make the server work for counts against its rate:
        // text messages (once, at their first fragment) and pings.
        let starts_text = Reassembly::starts_text(&message);
        let costs_work = starts_text || matches!(message, ws::Message::Ping(_));
        let mut drop_it = false;
        if costs_work {
            let ws = &self.shared.settings.ws;
            if !self
                .rate
                .take(now, ws.max_messages_per_sec, ws.message_burst)
            {
                let expects_answer = matches!(message, ws::Message::Text(_));
                if self.refuse_for_rate(ctx, expects_answer) {
                    return;
                }
                if !matches!(message, ws::Message::Continuation(_)) {
                    return;
                }
                // A refused fragmented message is still reassembled (to stay in step with
                // the stream) and dropped when complete.
                drop_it = true;
            }
        }
        let received = self
            .reassembly
            .push(message, self.shared.settings.ws.max_message_bytes);
        if drop_it {
            self.reassembly.drop_current();
        }
        match received {
            Ok(Received::Text(text)) => self.on_text(&text, ctx),
            Ok(Received::Ping(payload)) => ctx.pong(&payload),
            Ok(Received::Close(reason)) => ctx.close(reason),
            Ok(Received::Nothing) => {}
            Err(violation) => self.close(ctx, violation.close_code(), violation.reason()),
        }
    }

    fn on_read_error(&mut self, err: ReadError, ctx: &mut SessionContext<Self>) {
        match err {
            ReadError::Overflow => self.close(ctx, CloseCode::Size, "frame too large"),
            ReadError::NotUtf8 => self.close(ctx, CloseCode::Invalid, "text frame is not UTF-8"),
            ReadError::Io(err) => {
                // The peer vanished without a close frame (tab closed, network lost): normal.
                debug!("conn={} connection lost: {err}", self.conn);
                ctx.stop();
            }
            ReadError::Protocol(err) => {
                warn!("conn={} protocol error: {err}", self.conn);
                self.close(ctx, CloseCode::Protocol, "WebSocket protocol error");
            }
        }
    }

    /// Refuses a message over the rate limit; closes the socket (1008) once the client has
    /// ignored enough refusals. Returns true if the socket is closing.
    fn refuse_for_rate(&mut self, ctx: &mut SessionContext<Self>, answer: bool) -> bool {
        let ws = &self.shared.settings.ws;
        if self.rate.refuse(ws.max_rate_limited_messages) == Refusal::Close {
            self.close(ctx, CloseCode::Policy, "rate limit exceeded");
            return true;
        }
        if answer {
            let reason = format!(
                "rate limit: at most {} messages per second; message ignored",
                ws.max_messages_per_sec
            );
            self.fail(ctx, Action::Announce, None, "rate_limited", reason);
        } else {
            self.shared.metrics.protocol_error("rate_limited");
        }
        false
    }

    fn refuse_unlisted(&self, ctx: &mut SessionContext<Self>, info_hash: InfoHash) -> bool {
        if self.shared.access.allows(&info_hash) {
            return false;
        }
        let failure = Failure::new(
            "not_allowed",
            "info_hash not allowed on this tracker".into(),
        );
        self.fail_announce(ctx, info_hash, failure);
        true
    }

    fn send(&self, ctx: &mut SessionContext<Self>, message: &OutMessage) {
        self.shared.metrics.message_out(message.kind());
        JSON.with_borrow_mut(|json| {
            json.clear();
            message.write_json(json);
            ctx.text(json);
            if json.capacity() > JSON_KEPT_BYTES {
                *json = Vec::new();
            }
        });
    }

    fn fail(
        &self,
        ctx: &mut SessionContext<Self>,
        action: Action,
        info_hash: Option<InfoHash>,
        kind: &'static str,
        reason: String,
    ) {
        self.shared.metrics.protocol_error(kind);
        debug!("conn={} failure ({kind}): {reason}", self.conn);
        self.send(
            ctx,
            &OutMessage::Failure {
                reason: reason.into(),
                action,
                info_hash,
            },
        );
    }

    fn close(&self, ctx: &mut SessionContext<Self>, code: CloseCode, reason: &'static str) {
        self.shared.metrics.closed_by_server(reason);
        debug!("conn={} closing ({code:?}): {reason}", self.conn);
        ctx.close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }));
    }

    fn heartbeat(&mut self, ctx: &mut SessionContext<Self>) {
        // Proof of life for the frozen-session watchdog: a session that still ticks is not
        // stuck behind a full socket (touching on every frame would cost a clock read per
        // message for nothing).
        self.shared.connections.touch(self.conn);
        let idle_timeout = Duration::from_secs(self.shared.settings.ws.idle_timeout_secs);
        if self.last_heard.elapsed() >= idle_timeout {
            self.close(ctx, CloseCode::Away, "idle timeout");
        } else {
            ctx.ping(b"");
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut SessionContext<Self>) {
        trace!("conn={} in: {text}", self.conn);
        match protocol::parse(text, &self.shared.parse_limits) {
            Ok(InMessage::Announce(request)) => {
                self.shared.metrics.message_in("announce");
                self.on_announce(request, ctx);
            }
            Ok(InMessage::Answer(request)) => {
                self.shared.metrics.message_in("answer");
                self.on_answer(request, ctx);
            }
            Ok(InMessage::Scrape(request)) => {
                self.shared.metrics.message_in("scrape");
                self.on_scrape(request, ctx);
            }
            Err(err) => {
                self.shared.metrics.message_in("invalid");
                self.fail(ctx, err.action, err.info_hash, err.kind, err.reason);
            }
        }
    }

    fn on_announce(&mut self, request: AnnounceRequest, ctx: &mut SessionContext<Self>) {
        let info_hash = request.info_hash;
        let peer_id = request.peer_id;
        if request.event != AnnounceEvent::Stopped && self.refuse_unlisted(ctx, info_hash) {
            return;
        }
        let joined = self.joined.get(&info_hash);
        let registered_here = joined.is_some_and(|joined| joined.peer_ids.contains(&peer_id));
        if request.event == AnnounceEvent::Stopped && !registered_here {
            // Nothing of ours to remove: answer with the swarm's counts, without creating a
            // swarm for a peer that is leaving.
            let counts = requests::counts(self.shared.clone(), info_hash);
            ctx.wait(counts.into_actor(self).map(move |counts, session, ctx| {
                session.send_announce_response(info_hash, counts, ctx);
            }));
            return;
        }
        if !registered_here {
            if let Err(failure) = self.check_join_limits(&info_hash) {
                self.fail_announce(ctx, info_hash, failure);
                return;
            }
        }
        let work = requests::announce(
            self.shared.clone(),
            joined.map(|joined| joined.swarm.clone()),
            self.conn,
            ctx.address().recipient(),
            request,
        );
        ctx.wait(
            work.into_actor(self)
                .map(move |result, session, ctx| match result {
                    Ok(announced) => {
                        let counts = announced.reply.counts;
                        session.record_membership(info_hash, peer_id, announced, 0, ctx);
                        session.send_announce_response(info_hash, counts, ctx);
                    }
                    Err(failure) => session.fail_announce(ctx, info_hash, failure),
                }),
        );
    }

    /// A peer_id new to this connection may join only within the per-connection caps.
    fn check_join_limits(&self, info_hash: &InfoHash) -> Result<(), Failure> {
        let ws = &self.shared.settings.ws;
        match self.joined.get(info_hash) {
            None if self.joined.len() >= ws.max_swarms_per_connection => Err(Failure::new(
                "too_many_swarms",
                format!(
                    "too many swarms on one connection (limit {})",
                    ws.max_swarms_per_connection
                ),
            )),
            Some(joined) if joined.peer_ids.len() >= ws.max_peer_ids_per_swarm => {
                Err(Failure::new(
                    "too_many_peer_ids",
                    format!(
                        "too many peer_ids in one swarm on one connection (limit {})",
                        ws.max_peer_ids_per_swarm
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Records where an announce of `peer_id` left it. If the cluster's view changed while
    /// the announce was on its way, the swarm is re-joined at its owner by the view of now
    /// (`attempt`: re-joins of this membership in a row so far, bounded).
    fn record_membership(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        announced: Announced,
        attempt: u8,
        ctx: &mut SessionContext<Self>,
    ) {
        let view = requests::view_generation(&self.shared);
        let held_before = self
            .joined
            .get(&info_hash)
            .filter(|joined| joined.peer_ids.contains(&peer_id))
            .map(|joined| joined.swarm.clone());
        let registered = announced.reply.registered;
        let outdated = self.joined.record(
            info_hash,
            peer_id,
            announced.swarm.clone(),
            registered,
            announced.routed_by,
            view,
        );
        // Registered under the current view somewhere else than before (an instance that
        // served it while views differed, say, whose own view never changed and so never
        // closed its swarm): the swarm that held it is told it left, or it would keep the
        // peer, relaying it offers whose answers go elsewhere, until its TTL. Not for an
        // outdated record: the re-join below moves it again, and tells this one then.
        if let Some(before) = held_before.filter(|before| !before.same_as(&announced.swarm)) {
            if registered && !outdated {
                before.leave(&self.shared, self.conn, info_hash, vec![peer_id]);
            }
        }
        if outdated && attempt + 1 < REJOIN_ATTEMPTS {
            debug!(
                "conn={} {info_hash} was joined under view {}, now {view}: re-joining",
                self.conn, announced.routed_by
            );
            let round = Rc::new(Cell::new(false));
            self.rejoin(info_hash, peer_id, attempt + 1, None, round, ctx);
        }
    }

    /// Re-announces `peer_id` (without offers) to the swarm of `info_hash` at its owner by
    /// the current view, once the cluster gives it a turn. A failure schedules one more
    /// round of `OwnersChanged` one expiry later (once per `retry_scheduled`, which the
    /// re-joins of one round share), while `attempt` stays below `REJOIN_ATTEMPTS`.
    fn rejoin(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        attempt: u8,
        dropped_by: Option<InstanceId>,
        retry_scheduled: Rc<Cell<bool>>,
        ctx: &mut SessionContext<Self>,
    ) {
        // A plain re-announce without offers: the owner learns the peer, and the client
        // is told nothing (its next announce goes there anyway).
        let request = AnnounceRequest {
            info_hash,
            peer_id,
            event: AnnounceEvent::Update,
            left_is_zero: None,
            numwant: Some(0),
            offers: Vec::new(),
        };
        let work = requests::rejoin(
            self.shared.clone(),
            self.conn,
            ctx.address().recipient(),
            request,
        );
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, session, ctx| match result {
                    Ok(announced) => {
                        session.record_membership(info_hash, peer_id, announced, attempt, ctx)
                    }
                    Err(failure) => {
                        debug!(
                            "conn={} re-join of {info_hash} failed: {}",
                            session.conn, failure.reason
                        );
                        let attempt = attempt + 1;
                        if attempt < REJOIN_ATTEMPTS && !retry_scheduled.replace(true) {
                            let later = session.shared.settings.cluster.expiry();
                            // With `dropped_by` the retry re-joins that owner's swarms that
                            // did go through as well (their handle does not change): a few
                            // harmless duplicate announces, against remembering which
                            // failed.
                            let again = OwnersChanged {
                                attempt,
                                dropped_by,
                            };
                            ctx.notify_later(again, later);
                        }
                    }
                }),
        );
    }

    fn send_announce_response(
        &self,
        info_hash: InfoHash,
        counts: protocol::SwarmCounts,
        ctx: &mut SessionContext<Self>,
    ) {
        let interval_secs = self.shared.settings.tracker.announce_interval_secs;
        self.send(
            ctx,
            &OutMessage::AnnounceResponse {
                info_hash,
                counts,
                interval_secs,
            },
        );
    }

    fn on_answer(&mut self, request: AnswerRequest, ctx: &mut SessionContext<Self>) {
        let info_hash = request.info_hash;
        if self.refuse_unlisted(ctx, info_hash) {
            return;
        }
        // An offer reaches a connection only through a swarm it registered in; an answer
        // from anywhere else cannot match one.
        let Some(joined) = self.joined.get(&info_hash) else {
            self.reject(ctx, info_hash, Reject::UnknownOffer);
            return;
        };
        let swarm = match &joined.swarm {
            // Borrowed: cloning an actix address allocates, and only a full mailbox needs
            // one of its own (the `send` below).
            SwarmHandle::Local(swarm) => swarm,
            SwarmHandle::Remote(owner) => {
                // The swarm that relayed the offer is on `owner`: the answer goes there.
                let sent = match requests::remote_swarms(&self.shared) {
                    Some(cluster) => cluster.answer(*owner, self.conn, request),
                    None => Err(Failure::unavailable()),
                };
                if let Err(failure) = sent {
                    self.fail_announce(ctx, info_hash, failure);
                }
                return;
            }
        };
        let message = Answer {
            conn: self.conn,
            request: Arc::new(request),
            reply_to: PeerRoute::Local(ctx.address().recipient()),
        };
        // Fire and forget: the swarm relays the answer, or sends the failure straight to
        // this session. Only a full swarm mailbox makes the session wait (backpressure).
        match swarm.addr.try_send(message) {
            Ok(()) => {}
            Err(SendError::Full(message)) => {
                ctx.wait(swarm.addr.send(message).into_actor(self).map(
                    move |result, session, ctx| {
                        if result.is_err() {
                            // The swarm closed: it was empty, so the offerer is gone too.
                            session.reject(ctx, info_hash, Reject::OffererGone);
                        }
                    },
                ));
            }
            Err(SendError::Closed(_)) => self.reject(ctx, info_hash, Reject::OffererGone),
        }
    }

    fn reject(&self, ctx: &mut SessionContext<Self>, info_hash: InfoHash, reject: Reject) {
        self.fail_announce(ctx, info_hash, Failure::from(reject));
    }

    /// A failure of an announce (or answer) about `info_hash`.
    fn fail_announce(&self, ctx: &mut SessionContext<Self>, info_hash: InfoHash, failure: Failure) {
        self.fail(
            ctx,
            Action::Announce,
            Some(info_hash),
            failure.kind,
            failure.reason,
        );
    }

    fn on_scrape(&mut self, request: ScrapeRequest, ctx: &mut SessionContext<Self>) {
        let tracker = &self.shared.settings.tracker;
        match &request {
            // `[]` is a keep-alive some clients send; it gets an (empty) answer.
            ScrapeRequest::Some(hashes) if hashes.is_empty() => {
                self.send(ctx, &OutMessage::ScrapeResponse { files: Vec::new() });
                return;
            }
            ScrapeRequest::All if !tracker.full_scrape => {
                self.fail(
                    ctx,
                    Action::Scrape,
                    None,
                    "full_scrape_disabled",
                    "full scrape is disabled on this tracker; name the info_hashes".into(),
                );
                return;
            }
            _ => {}
        }
        let work = requests::scrape(self.shared.clone(), request, tracker.max_scrape_hashes);
        ctx.wait(
            work.into_actor(self)
                .map(|result, session, ctx| match result {
                    Ok(files) => session.send(ctx, &OutMessage::ScrapeResponse { files }),
                    Err(failure) => {
                        session.fail(ctx, Action::Scrape, None, failure.kind, failure.reason)
                    }
                }),
        );
    }
}

impl Actor for PeerSession {
    type Context = SessionContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.settings.ws.session_mailbox);
        self.shared.metrics.connections.inc();
        self.shared.metrics.connections_total.inc();
        debug!("conn={} opened from {:?}", self.conn, self.ip);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Every registration goes at once; swarms ignore peer_ids another connection took
        // over since.
        for (info_hash, joined) in self.joined.drain() {
            joined
                .swarm
                .leave(&self.shared, self.conn, info_hash, joined.peer_ids);
        }
        self.shared.connections.release(self.conn, self.ip);
        self.shared.metrics.connections.dec();
        debug!("conn={} closed", self.conn);
    }
}

/// The frames `io::FrameReader` decodes off the socket.
impl StreamHandler<Result<ws::Message, ReadError>> for PeerSession {
    fn handle(&mut self, item: Result<ws::Message, ReadError>, ctx: &mut Self::Context) {
        let now = Instant::now();
        self.last_heard = now;
        match item {
            Ok(message) => self.on_message(message, now, ctx),
            Err(err) => self.on_read_error(err, ctx),
        }
    }
}

impl Handler<Heartbeat> for PeerSession {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, ctx: &mut Self::Context) {
        self.heartbeat(ctx);
    }
}

impl Handler<Deliver> for PeerSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        self.send(ctx, &msg.0);
    }
}

impl Handler<CloseSession> for PeerSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close(ctx, msg.code, msg.reason);
    }
}

impl Handler<OwnersChanged> for PeerSession {
    type Result = ();

    fn handle(&mut self, msg: OwnersChanged, ctx: &mut Self::Context) {
        let lost: Vec<(InfoHash, Vec<PeerId>)> = self
            .joined
            .iter()
            .filter(|(info_hash, joined)| {
                let owner = requests::remote_owner(&self.shared, info_hash);
                match msg.dropped_by {
                    Some(dropped_by) => {
                        joined.swarm.owner() == Some(dropped_by) && owner == Some(dropped_by)
                    }
                    None => joined.swarm.owner() != owner,
                }
            })
            .map(|(info_hash, joined)| (*info_hash, joined.peer_ids.clone()))
            .collect();
        // One retry per round, however many re-joins of it fail.
        let retry_scheduled = Rc::new(Cell::new(false));
        for (info_hash, peer_ids) in lost {
            for peer_id in peer_ids {
                let round = retry_scheduled.clone();
                self.rejoin(info_hash, peer_id, msg.attempt, msg.dropped_by, round, ctx);
            }
        }
    }
}
