//! PeerSession actor: one per WebSocket, on the HTTP worker thread that accepted it.
//!
//! It owns the protocol side of the connection: message caps, continuation reassembly,
//! heartbeat, rate limit, JSON parsing and serialising (so swarms only route). Its context
//! is actix-web-actors' `WebsocketContext`, fed and drained by `http::ws_io` straight on the
//! socket. It remembers which swarms and peer_ids this connection registered, so that
//! closing the socket removes them at once.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{dev::SendError, prelude::*};
use actix_web::web::{Bytes, BytesMut};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use log::{debug, trace, warn};

use crate::{
    app::Shared,
    connections::{ConnSocket, Progress},
    memberships::Memberships,
    messages::{
        Announce, Answer, CloseSession, Deliver, GetSwarm, Leave, ScrapeShard, SwarmError, SwarmRef,
    },
    protocol::{
        self, Action, AnnounceEvent, AnnounceRequest, AnswerRequest, InMessage, InfoHash,
        OutMessage, PeerId, ScrapeRequest, SwarmCounts,
    },
    swarm::state::ConnId,
};

/// A swarm request is retried this often when the swarm it reached had just emptied and
/// closed (a race that needs a peer to join at the moment the last one leaves).
const SWARM_ATTEMPTS: usize = 3;

/// A text message arriving in fragments.
struct Fragments {
    buffer: BytesMut,
    frames: usize,
}

/// Most fragments one message may arrive in; empty continuation frames would otherwise
/// cost work without growing the buffer.
const MAX_FRAGMENTS: usize = 64;

/// Token bucket for the per-connection message rate.
struct RateLimit {
    tokens: f64,
    refilled: Instant,
    /// Messages refused so far; the socket is closed when it reaches the configured cap.
    refused: u32,
}

pub struct PeerSession {
    conn: ConnId,
    ip: Option<IpAddr>,
    socket: ConnSocket,
    shared: Arc<Shared>,
    joined: Memberships,
    last_heard: Instant,
    /// Boxed: rare, and the session's size counts at every idle connection.
    fragments: Option<Box<Fragments>>,
    rate: RateLimit,
    /// The fragmented message being reassembled was refused by the rate limit.
    drop_fragmented: bool,
    progress: Arc<Progress>,
}

impl PeerSession {
    pub fn new(conn: ConnId, ip: Option<IpAddr>, socket: ConnSocket, shared: Arc<Shared>) -> Self {
        let burst = f64::from(shared.settings.ws.message_burst);
        Self {
            conn,
            ip,
            socket,
            shared,
            joined: Memberships::default(),
            last_heard: Instant::now(),
            fragments: None,
            rate: RateLimit {
                tokens: burst,
                refilled: Instant::now(),
                refused: 0,
            },
            drop_fragmented: false,
            progress: Arc::default(),
        }
    }

    /// Takes one message's worth from the bucket; false when the client is over its rate.
    fn take_token(&mut self, now: Instant) -> bool {
        let ws = &self.shared.settings.ws;
        let elapsed = now
            .saturating_duration_since(self.rate.refilled)
            .as_secs_f64();
        self.rate.refilled = now;
        self.rate.tokens = (self.rate.tokens + elapsed * f64::from(ws.max_messages_per_sec))
            .min(f64::from(ws.message_burst));
        if self.rate.tokens >= 1.0 {
            self.rate.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Refuses a message over the rate limit; closes the socket (1008) once the client has
    /// ignored enough refusals. Returns true if the socket is closing.
    fn refuse_for_rate(&mut self, ctx: &mut ws::WebsocketContext<Self>, answer: bool) -> bool {
        self.rate.refused += 1;
        let ws = &self.shared.settings.ws;
        if self.rate.refused >= ws.max_rate_limited_messages {
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

    fn refuse_unlisted(&self, ctx: &mut ws::WebsocketContext<Self>, info_hash: InfoHash) -> bool {
        if self.shared.access.allows(&info_hash) {
            return false;
        }
        self.fail(
            ctx,
            Action::Announce,
            Some(info_hash),
            "not_allowed",
            "info_hash not allowed on this tracker".into(),
        );
        true
    }

    fn send(&self, ctx: &mut ws::WebsocketContext<Self>, message: &OutMessage) {
        self.shared.metrics.message_out(message.kind());
        ctx.text(message.to_text());
    }

    fn fail(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
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

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, reason: &'static str) {
        self.shared.metrics.closed_by_server(reason);
        debug!("conn={} closing ({code:?}): {reason}", self.conn);
        ctx.close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        // Proof of life for the frozen-session watchdog: a session that still ticks is not
        // stuck behind a full socket (touching on every frame would cost a clock read per
        // message for nothing).
        self.progress.touch(&self.shared.connections);
        let idle_timeout = Duration::from_secs(self.shared.settings.ws.idle_timeout_secs);
        if self.last_heard.elapsed() >= idle_timeout {
            self.close(ctx, CloseCode::Away, "idle timeout");
        } else {
            ctx.ping(b"");
        }
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
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

    fn on_announce(&mut self, request: AnnounceRequest, ctx: &mut ws::WebsocketContext<Self>) {
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
            self.reply_with_counts(info_hash, ctx);
            return;
        }
        if !registered_here {
            let ws_settings = &self.shared.settings.ws;
            match joined {
                None if self.joined.len() >= ws_settings.max_swarms_per_connection => {
                    let reason = format!(
                        "too many swarms on one connection (limit {})",
                        ws_settings.max_swarms_per_connection
                    );
                    self.fail(
                        ctx,
                        Action::Announce,
                        Some(info_hash),
                        "too_many_swarms",
                        reason,
                    );
                    return;
                }
                Some(joined) if joined.peer_ids.len() >= ws_settings.max_peer_ids_per_swarm => {
                    let reason = format!(
                        "too many peer_ids in one swarm on one connection (limit {})",
                        ws_settings.max_peer_ids_per_swarm
                    );
                    self.fail(
                        ctx,
                        Action::Announce,
                        Some(info_hash),
                        "too_many_peer_ids",
                        reason,
                    );
                    return;
                }
                _ => {}
            }
        }

        let cached = joined.map(|joined| joined.swarm.clone());
        let shared = self.shared.clone();
        let conn = self.conn;
        let deliver = ctx.address().recipient();
        let request = Arc::new(request);
        let work = async move {
            let mut swarm = match cached {
                Some(swarm) => swarm,
                None => get_swarm(&shared, info_hash, None).await?,
            };
            for attempt in 1..=SWARM_ATTEMPTS {
                let message = Announce {
                    conn,
                    deliver: deliver.clone(),
                    request: request.clone(),
                };
                match swarm.addr.send(message).await {
                    Ok(Ok(reply)) => return Ok((swarm, reply)),
                    Ok(Err(SwarmError::Rejected(reject))) => return Err(Failure::from(reject)),
                    // After the last attempt, asking for a fresh swarm would only leave an
                    // empty one behind.
                    Ok(Err(SwarmError::Closed)) | Err(MailboxError::Closed)
                        if attempt < SWARM_ATTEMPTS =>
                    {
                        swarm = get_swarm(&shared, info_hash, Some(swarm.generation)).await?;
                    }
                    Ok(Err(SwarmError::Closed)) | Err(MailboxError::Closed) => break,
                    Err(MailboxError::Timeout) => return Err(Failure::unavailable()),
                }
            }
            Err(Failure::unavailable())
        };
        ctx.wait(
            work.into_actor(self)
                .map(move |result, session, ctx| match result {
                    Ok((swarm, reply)) => {
                        session.record_membership(info_hash, peer_id, swarm, reply.registered);
                        let interval_secs = session.shared.settings.tracker.announce_interval_secs;
                        session.send(
                            ctx,
                            &OutMessage::AnnounceResponse {
                                info_hash,
                                counts: reply.counts,
                                interval_secs,
                            },
                        );
                    }
                    Err(failure) => session.fail(
                        ctx,
                        Action::Announce,
                        Some(info_hash),
                        failure.kind,
                        failure.reason,
                    ),
                }),
        );
    }

    fn record_membership(
        &mut self,
        info_hash: InfoHash,
        peer_id: PeerId,
        swarm: SwarmRef,
        registered: bool,
    ) {
        if registered {
            self.joined.add(info_hash, peer_id, swarm);
        } else {
            self.joined.remove(&info_hash, &peer_id);
        }
    }

    fn reply_with_counts(&mut self, info_hash: InfoHash, ctx: &mut ws::WebsocketContext<Self>) {
        let shard = self.shared.directory.shard_for(&info_hash).clone();
        let work = shard.send(ScrapeShard {
            info_hashes: Some(vec![info_hash]),
            limit: 1,
        });
        ctx.wait(work.into_actor(self).map(move |result, session, ctx| {
            let counts = result
                .ok()
                .and_then(|files| files.first().map(|(_, counts)| *counts))
                .unwrap_or_default();
            let interval_secs = session.shared.settings.tracker.announce_interval_secs;
            session.send(
                ctx,
                &OutMessage::AnnounceResponse {
                    info_hash,
                    counts,
                    interval_secs,
                },
            );
        }));
    }

    fn on_answer(&mut self, request: AnswerRequest, ctx: &mut ws::WebsocketContext<Self>) {
        let info_hash = request.info_hash;
        if self.refuse_unlisted(ctx, info_hash) {
            return;
        }
        // An offer reaches a connection only through a swarm it registered in; an answer
        // from anywhere else cannot match one.
        let Some(joined) = self.joined.get(&info_hash) else {
            let reject = crate::swarm::state::Reject::UnknownOffer;
            self.fail(
                ctx,
                Action::Announce,
                Some(info_hash),
                reject.kind(),
                reject.to_string(),
            );
            return;
        };
        let swarm = joined.swarm.clone();
        let message = Answer {
            conn: self.conn,
            request: Arc::new(request),
            reply_to: ctx.address().recipient(),
        };
        // Fire and forget: the swarm relays the answer, or sends the failure straight to
        // this session. Only a full swarm mailbox makes the session wait (backpressure).
        match swarm.addr.try_send(message) {
            Ok(()) => {}
            Err(SendError::Full(message)) => {
                ctx.wait(swarm.addr.send(message).into_actor(self).map(
                    move |result, session, ctx| {
                        if result.is_err() {
                            session.answer_swarm_gone(ctx, info_hash);
                        }
                    },
                ));
            }
            Err(SendError::Closed(_)) => self.answer_swarm_gone(ctx, info_hash),
        }
    }

    /// The swarm of an answer closed: it was empty, so the offerer is gone too.
    fn answer_swarm_gone(&self, ctx: &mut ws::WebsocketContext<Self>, info_hash: InfoHash) {
        let reject = crate::swarm::state::Reject::OffererGone;
        self.fail(
            ctx,
            Action::Announce,
            Some(info_hash),
            reject.kind(),
            reject.to_string(),
        );
    }

    fn on_scrape(&mut self, request: ScrapeRequest, ctx: &mut ws::WebsocketContext<Self>) {
        let tracker = &self.shared.settings.tracker;
        let limit = tracker.max_scrape_hashes;
        let directory = self.shared.directory.clone();
        let requests: Vec<_> = match request {
            ScrapeRequest::Some(hashes) if hashes.is_empty() => {
                // `[]` is a keep-alive some clients send; it gets an (empty) answer.
                self.send(ctx, &OutMessage::ScrapeResponse { files: Vec::new() });
                return;
            }
            ScrapeRequest::Some(hashes) => {
                let mut per_shard: Vec<Vec<InfoHash>> = vec![Vec::new(); directory.len()];
                for hash in hashes {
                    per_shard[directory.shard_index(&hash)].push(hash);
                }
                per_shard
                    .into_iter()
                    .enumerate()
                    .filter(|(_, hashes)| !hashes.is_empty())
                    .map(|(index, hashes)| {
                        directory.shards()[index].send(ScrapeShard {
                            info_hashes: Some(hashes),
                            limit,
                        })
                    })
                    .collect()
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
            ScrapeRequest::All => directory
                .shards()
                .iter()
                .map(|shard| {
                    shard.send(ScrapeShard {
                        info_hashes: None,
                        limit,
                    })
                })
                .collect(),
        };
        let work = futures_util::future::join_all(requests);
        ctx.wait(work.into_actor(self).map(move |results, session, ctx| {
            let mut files: Vec<(InfoHash, SwarmCounts)> = Vec::new();
            for result in results {
                match result {
                    Ok(part) => files.extend(part),
                    Err(_) => {
                        let failure = Failure::unavailable();
                        session.fail(ctx, Action::Scrape, None, failure.kind, failure.reason);
                        return;
                    }
                }
            }
            files.truncate(limit);
            session.send(ctx, &OutMessage::ScrapeResponse { files });
        }));
    }

    /// A new message may not start while a fragmented one is unfinished (RFC 6455 5.4);
    /// closes the socket (1002) and returns true if one is.
    fn interrupts_fragmented_message(&self, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        if self.fragments.is_none() {
            return false;
        }
        self.close(
            ctx,
            CloseCode::Protocol,
            "new message before the last ended",
        );
        true
    }

    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let max_message = self.shared.settings.ws.max_message_bytes;
        let (chunk, last) = match item {
            actix_http::ws::Item::FirstText(chunk) => {
                if self.interrupts_fragmented_message(ctx) {
                    return;
                }
                self.fragments = Some(Box::new(Fragments {
                    buffer: BytesMut::new(),
                    frames: 0,
                }));
                (chunk, false)
            }
            actix_http::ws::Item::FirstBinary(_) => {
                self.close(
                    ctx,
                    CloseCode::Unsupported,
                    "binary frames are not supported",
                );
                return;
            }
            actix_http::ws::Item::Continue(chunk) => (chunk, false),
            actix_http::ws::Item::Last(chunk) => (chunk, true),
        };
        let Some(fragments) = self.fragments.as_mut() else {
            self.close(
                ctx,
                CloseCode::Protocol,
                "continuation without a first frame",
            );
            return;
        };
        fragments.frames += 1;
        if fragments.buffer.len() + chunk.len() > max_message {
            self.close(ctx, CloseCode::Size, "message too large");
            return;
        }
        if fragments.frames > MAX_FRAGMENTS {
            self.close(ctx, CloseCode::Policy, "too many fragments");
            return;
        }
        fragments.buffer.extend_from_slice(&chunk);
        if last {
            let complete: Bytes = self
                .fragments
                .take()
                .map(|fragments| fragments.buffer.freeze())
                .unwrap_or_default();
            if std::mem::take(&mut self.drop_fragmented) {
                return;
            }
            match std::str::from_utf8(&complete) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.close(ctx, CloseCode::Invalid, "text message is not UTF-8"),
            }
        }
    }
}

/// A failure to report to the client.
struct Failure {
    kind: &'static str,
    reason: String,
}

impl Failure {
    fn unavailable() -> Self {
        Self {
            kind: "unavailable",
            reason: "swarm temporarily unavailable; retry".into(),
        }
    }
}

impl From<crate::swarm::state::Reject> for Failure {
    fn from(reject: crate::swarm::state::Reject) -> Self {
        Self {
            kind: reject.kind(),
            reason: reject.to_string(),
        }
    }
}

async fn get_swarm(
    shared: &Shared,
    info_hash: InfoHash,
    stale: Option<u64>,
) -> Result<SwarmRef, Failure> {
    shared
        .directory
        .shard_for(&info_hash)
        .send(GetSwarm { info_hash, stale })
        .await
        .map_err(|_| Failure::unavailable())
}

impl Actor for PeerSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.settings.ws.session_mailbox);
        let ping_interval = Duration::from_secs(self.shared.settings.ws.ping_interval_secs);
        ctx.run_interval(ping_interval, Self::heartbeat);
        self.shared.connections.register(
            self.conn,
            ctx.address().recipient(),
            self.progress.clone(),
            self.socket,
        );
        self.shared.metrics.connections.inc();
        self.shared.metrics.connections_total.inc();
        debug!("conn={} opened from {:?}", self.conn, self.ip);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Every registration goes at once; swarms ignore peer_ids another connection took
        // over since.
        for (_, joined) in self.joined.drain() {
            joined.swarm.addr.do_send(Leave {
                conn: self.conn,
                peer_ids: joined.peer_ids,
            });
        }
        self.shared.connections.release(self.conn, self.ip);
        self.shared.metrics.connections.dec();
        debug!("conn={} closed", self.conn);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for PeerSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let now = Instant::now();
        self.last_heard = now;
        // Every message a client can make the server work for counts against its rate:
        // text messages (once, at their first fragment) and pings.
        let starts_fragmented = matches!(
            item,
            Ok(ws::Message::Continuation(actix_http::ws::Item::FirstText(
                _
            )))
        );
        let costs_work = starts_fragmented
            || matches!(item, Ok(ws::Message::Text(_)) | Ok(ws::Message::Ping(_)));
        if costs_work && !self.take_token(now) {
            let is_text = matches!(item, Ok(ws::Message::Text(_)));
            if self.refuse_for_rate(ctx, is_text) || !starts_fragmented {
                return;
            }
            // A refused fragmented message is still reassembled (to stay in step with the
            // stream) and dropped when complete.
            self.drop_fragmented = true;
        }
        match item {
            Ok(ws::Message::Text(text)) => {
                if self.interrupts_fragmented_message(ctx) {
                    return;
                }
                self.on_text(&text, ctx);
            }
            Ok(ws::Message::Binary(_)) => {
                self.close(
                    ctx,
                    CloseCode::Unsupported,
                    "binary frames are not supported",
                );
            }
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ws::ProtocolError::Overflow) => {
                self.close(ctx, CloseCode::Size, "frame too large");
            }
            // actix-web-actors reports a text frame that is not UTF-8 as an I/O error
            // carrying the `Utf8Error` text; it is the client's fault, not a lost link.
            Err(ws::ProtocolError::Io(err)) if err.to_string().starts_with("invalid utf-8") => {
                self.close(ctx, CloseCode::Invalid, "text frame is not UTF-8");
            }
            Err(ws::ProtocolError::Io(err)) => {
                // The peer vanished without a close frame (tab closed, network lost): normal.
                debug!("conn={} connection lost: {err}", self.conn);
                ctx.stop();
            }
            Err(err) => {
                warn!("conn={} protocol error: {err}", self.conn);
                self.close(ctx, CloseCode::Protocol, "WebSocket protocol error");
            }
        }
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
