//! What other instances ask of this one, and what the bus tells about the live instances.
//! The bus thread hands each event over a bounded queue to one task on the system's main
//! arbiter (`run`); the task never waits on an actor itself: each request that needs a
//! swarm's reply runs as a task of its own. The kinds that need no actor, relays to local
//! sessions, replies to our own requests and word of where one was passed on, are served
//! on the bus thread itself once `run` has started (a registry lookup and a `try_send`, a
//! map update and a oneshot send: nothing that blocks), which saves them a thread hop;
//! they keep their order among themselves, as the owner sent them.
//!
//! As an owner this instance serves requests for its swarms on behalf of sockets on other
//! instances (their peers are registered with a `PeerRoute::Remote` route). A request for
//! a swarm our view gives to another instance is passed on there once (`MAX_HOPS`), and
//! the requester of a passed-on announce is told where it went (`PassedOn`), so that it
//! does not wait for an instance it knows dead. As the holder
//! of sockets it delivers what owners relay to them. When the view changes, the peers of
//! dead instances leave every swarm, swarms that now hash elsewhere close, instances back
//! in the view after leaving it are sent a `Rejoin`, and every session re-joins the swarms
//! that moved (paced: see `node::RejoinGate`). When an owner asks for a `Rejoin` (it had
//! dropped this instance's peers, and now sees it again), every session re-joins the
//! swarms that owner holds.

use std::sync::{atomic::Ordering, Arc, OnceLock};

use log::{debug, info, warn};
use tokio::sync::mpsc;

use super::{
    bus::BusEvent,
    node::{self, conn_of, ClusterNode},
    stats::RouteDrop,
    wire::{
        AnnounceReply, AnnounceResult, BusMessage, ConnKey, Deliver, Envelope, ForwardedAnnounce,
        ForwardedAnswer, ForwardedLeave, PassedOn, Relay, ScrapeQuery, ScrapeReply, MAX_HOPS,
    },
};
use crate::{
    connection::{
        requests::{self, Failure},
        InstanceId,
    },
    protocol::{InfoHash, ScrapeRequest},
    shared::Shared,
    swarm::{
        messages::{Answer, Disown, FindSwarm, InstanceGone, Leave, SwarmRef},
        route::{PeerRoute, Undelivered},
        state::Reject,
    },
};

/// Events waiting for the inbound task. Beyond it messages are dropped and counted
/// (`inbound_full`); membership changes are never dropped (see `queue`).
pub const INBOUND_QUEUE: usize = 65_536;

/// What the bus thread needs to serve relays and replies itself; set by `run`.
type Direct = Arc<OnceLock<(Arc<Shared>, Arc<ClusterNode>)>>;

/// The two ends of the inbound queue: the bus thread's callback pushes, `run` pops.
pub fn queue(node_stats: Arc<super::stats::NodeStats>) -> (super::bus::OnEvent, Inbound) {
    let (messages_tx, messages) = mpsc::channel(INBOUND_QUEUE);
    // Membership changes are rare and must not be lost (a dead instance's peers would
    // stay); they get a queue of their own without a bound, as do the broker's other
    // reports (at most one per message sent, and requests or sessions wait for them).
    let (views_tx, views) = mpsc::unbounded_channel();
    let direct = Direct::default();
    let on_bus_thread = direct.clone();
    let on_event: super::bus::OnEvent = Box::new(move |event| match event {
        BusEvent::Message(envelope) => {
            let envelope = match on_bus_thread.get() {
                Some((shared, node)) => match serve_here(shared, node, envelope) {
                    Some(rest) => rest,
                    None => return,
                },
                None => envelope,
            };
            if messages_tx.try_send(envelope).is_err() {
                node_stats.dropped(RouteDrop::InboundFull);
            }
        }
        control @ (BusEvent::Membership { .. }
        | BusEvent::AnswerLost { .. }
        | BusEvent::Unreachable(_)) => {
            let _ = views_tx.send(control);
        }
    });
    (
        on_event,
        Inbound {
            messages,
            views,
            direct,
        },
    )
}

pub struct Inbound {
    messages: mpsc::Receiver<Envelope>,
    views: mpsc::UnboundedReceiver<BusEvent>,
    direct: Direct,
}

/// Serves a relay or a reply on the calling (bus) thread; hands anything else back.
fn serve_here(shared: &Shared, node: &ClusterNode, envelope: Envelope) -> Option<Envelope> {
    let kind = envelope.body.kind();
    match envelope.body {
        BusMessage::Deliver(deliver) => on_deliver(shared, node, deliver),
        BusMessage::AnnounceReply(AnnounceReply { req_id, result, .. }) => {
            node.announce_replied(req_id, envelope.from, result)
        }
        BusMessage::ScrapeReply(ScrapeReply { req_id, files, .. }) => {
            node.scrape_replied(req_id, files)
        }
        BusMessage::PassedOn(PassedOn { req_id, owner, .. }) => {
            node.announce_passed_on(req_id, owner)
        }
        _ => return Some(envelope),
    }
    node.stats.handled(kind);
    None
}

/// Serves the inbound queue until the bus stops.
pub async fn run(shared: Arc<Shared>, node: Arc<ClusterNode>, mut inbound: Inbound) {
    let _ = inbound.direct.set((shared.clone(), node.clone()));
    loop {
        tokio::select! {
            // A view change first: requests after it must be routed by it.
            biased;
            Some(event) = inbound.views.recv() => match event {
                BusEvent::AnswerLost { from, info_hash } => {
                    tell_answerer(&shared, &node, from, node::answer_lost(info_hash))
                }
                // Out of the view: requests of ours waiting for it are released (a dead
                // newcomer's peers, if any reached our swarms before its first heartbeat
                // reached us, go by their TTL).
                BusEvent::Unreachable(instance) => node.owners_gone(&[instance]),
                event => on_view_change(&shared, &node, event),
            },
            Some(envelope) = inbound.messages.recv() => on_message(&shared, &node, envelope),
            else => break,
        }
    }
    debug!("cluster: inbound queue closed");
}

fn on_view_change(shared: &Arc<Shared>, node: &ClusterNode, event: BusEvent) {
    let BusEvent::Membership {
        joined,
        returned,
        gone,
        view,
    } = event
    else {
        return;
    };
    // Requests waiting for a lost owner are routed again by the new view.
    node.owners_gone(&gone);
    for instance in returned {
        // It was out of our view, so we dropped its peers from the swarms we own: it is
        // asked for them back (see `on_rejoin` on its side). Sent like any other message to
        // one instance, so counted as forwarded; lost only with the bus, and then its
        // next return asks again.
        let _ = node.send(instance, BusMessage::Rejoin);
    }
    for instance in &joined {
        info!(
            "cluster: instance {instance:016x} joined ({} live)",
            view.live.len()
        );
    }
    for instance in &gone {
        warn!(
            "cluster: instance {instance:016x} is gone; its peers leave ({} live)",
            view.live.len()
        );
    }
    // Shards not started yet hold no swarm, so they have nothing to drop or move.
    for instance in gone {
        for (_, shard) in shared.directory.shards() {
            shard.do_send(InstanceGone { instance });
        }
    }
    let owned_view = view.clone();
    let disown = Disown {
        owned: Arc::new(move |info_hash| owned_view.is_local(info_hash)),
    };
    for (_, shard) in shared.directory.shards() {
        shard.do_send(disown.clone());
    }
    let told = shared.connections.owners_changed(None);
    debug!(
        "cluster: view {} ({} live, bus {}); {told} sessions re-check their swarms",
        view.generation,
        view.live.len(),
        if view.bus_up { "up" } else { "down" }
    );
}

fn on_message(shared: &Arc<Shared>, node: &Arc<ClusterNode>, envelope: Envelope) {
    // Relays and replies come this way only while `run` had not started yet; from then on
    // the bus thread serves them itself, with the same function.
    let Some(envelope) = serve_here(shared, node, envelope) else {
        return;
    };
    node.stats.handled(envelope.body.kind());
    match envelope.body {
        BusMessage::Rejoin => on_rejoin(shared, envelope.from),
        BusMessage::Announce(forwarded) => on_announce(shared, node, forwarded),
        BusMessage::Answer(forwarded) => on_answer(shared, node, forwarded),
        BusMessage::Leave(forwarded) => on_leave(shared, forwarded),
        BusMessage::Scrape(query) => on_scrape(shared, node, query),
        // Served by `serve_here` above.
        BusMessage::Deliver(_)
        | BusMessage::AnnounceReply(_)
        | BusMessage::ScrapeReply(_)
        | BusMessage::PassedOn(_) => {}
        // Consumed by the bus task's membership view; never handed here.
        BusMessage::Heartbeat(_) | BusMessage::Leaving => {}
    }
}

/// The owner to pass a request on to, when this instance's view says another one owns
/// the swarm: once at most, so that differing views cannot bounce it around.
fn pass_on_to(node: &ClusterNode, info_hash: &InfoHash, hops: u8) -> Option<InstanceId> {
    let owner = node.view().owner(info_hash);
    (owner != node.self_id() && hops < MAX_HOPS).then_some(owner)
}

/// Passes a request on to `owner` (see `pass_on_to`); returns whether it was queued. Lost
/// if refused: the requester's deadline passes and its client announces again.
fn pass_on(node: &ClusterNode, owner: InstanceId, message: BusMessage) -> bool {
    node.stats.reforwarded.fetch_add(1, Ordering::Relaxed);
    node.send(owner, message).is_ok()
}

/// The swarm of `info_hash` on this instance, if there is one (never created).
async fn find_swarm(shared: &Shared, info_hash: InfoHash) -> Option<SwarmRef> {
    shared
        .directory
        .shard_for(&info_hash)?
        .send(FindSwarm { info_hash })
        .await
        .ok()
        .flatten()
}

fn on_announce(shared: &Arc<Shared>, node: &Arc<ClusterNode>, forwarded: ForwardedAnnounce) {
    if let Some(owner) = pass_on_to(node, &forwarded.request.info_hash, forwarded.hops) {
        let (requester, req_id) = (forwarded.from, forwarded.req_id);
        let again = ForwardedAnnounce {
            hops: forwarded.hops + 1,
            ..forwarded
        };
        if pass_on(node, owner, BusMessage::Announce(again)) {
            // The requester may count `owner` dead already (its view differs from ours,
            // or we would not be passing this on): told where the announce went, it makes
            // it again at once rather than wait for a reply that will not come.
            let where_to = PassedOn {
                to: requester,
                req_id,
                owner,
            };
            let _ = node.send(requester.instance, BusMessage::PassedOn(where_to));
        }
        return;
    }
    let shared = shared.clone();
    let node = node.clone();
    actix_web::rt::spawn(async move {
        let ForwardedAnnounce {
            from,
            req_id,
            request,
            ..
        } = forwarded;
        let conn = conn_of(from);
        let result = match requests::announce_on_shard(
            &shared,
            None,
            conn,
            PeerRoute::Remote,
            request,
        )
        .await
        {
            Ok((_, reply)) => AnnounceResult::Accepted {
                counts: reply.counts,
                registered: reply.registered,
            },
            Err(failure) => rejection(failure),
        };
        let reply = BusMessage::AnnounceReply(AnnounceReply {
            to: from,
            req_id,
            result,
        });
        // Waits for room in the queue (a burst of announces makes a burst of replies),
        // at most the reply timeout, beyond which the requester has given up on it.
        let _ = node
            .send_when_room(from.instance, reply, node.reply_deadline())
            .await;
    });
}

/// The wire form of a failed announce: the swarm's own refusal travels as such (so the
/// client reads the same reason as on one instance), anything else is "unavailable".
fn rejection(failure: Failure) -> AnnounceResult {
    failure
        .reject
        .map_or(AnnounceResult::Unavailable, AnnounceResult::Rejected)
}

/// An answer comes to the instance whose swarm relayed its offer (the one the answering
/// session's announce was registered at), so a swarm of that info_hash here is the one to
/// take it, whatever this instance's view says: while views differ, the view may name an
/// owner that never saw the offer (one the requester already counts dead, for a swarm this
/// instance served because of that). Passed on by the view only when there is no swarm
/// here.
fn on_answer(shared: &Arc<Shared>, node: &Arc<ClusterNode>, forwarded: ForwardedAnswer) {
    let shared = shared.clone();
    let node = node.clone();
    actix_web::rt::spawn(async move {
        let info_hash = forwarded.request.info_hash;
        let conn = conn_of(forwarded.from);
        let Some(swarm) = find_swarm(&shared, info_hash).await else {
            if let Some(owner) = pass_on_to(&node, &info_hash, forwarded.hops) {
                let again = ForwardedAnswer {
                    hops: forwarded.hops + 1,
                    ..forwarded
                };
                pass_on(&node, owner, BusMessage::Answer(again));
                return;
            }
            // No swarm here: whoever made the offer has left (or the swarm moved).
            let failure = Relay::Failure {
                info_hash,
                reason: Reject::OffererGone.to_string(),
            };
            tell_answerer(&shared, &node, forwarded.from, failure);
            return;
        };
        swarm.addr.do_send(Answer {
            conn,
            request: Arc::new(forwarded.request),
            reply_to: PeerRoute::Remote,
        });
    });
}

/// Sends `failure` to the socket `from` that sent an answer, on this instance or another.
fn tell_answerer(shared: &Shared, node: &ClusterNode, from: ConnKey, failure: Relay) {
    let deliver = Deliver {
        to: from,
        message: failure,
    };
    if from.instance == node.self_id() {
        on_deliver(shared, node, deliver);
    } else {
        let _ = node.send(from.instance, BusMessage::Deliver(deliver));
    }
}

/// `owner` dropped our peers from its swarms and sees us again: each session re-joins the
/// swarms it holds there (one announce without offers per peer_id, as after a view change).
fn on_rejoin(shared: &Shared, owner: InstanceId) {
    let told = shared.connections.owners_changed(Some(owner));
    info!("cluster: instance {owner:016x} asked us to re-join; {told} sessions re-join its swarms");
}

fn on_leave(shared: &Arc<Shared>, forwarded: ForwardedLeave) {
    let shared = shared.clone();
    actix_web::rt::spawn(async move {
        if let Some(swarm) = find_swarm(&shared, forwarded.info_hash).await {
            swarm.addr.do_send(Leave {
                conn: conn_of(forwarded.conn),
                peer_ids: forwarded.peer_ids,
            });
        }
    });
}

fn on_deliver(shared: &Shared, node: &ClusterNode, deliver: Deliver) {
    match shared
        .connections
        .deliver(conn_of(deliver.to), deliver.message.into())
    {
        Ok(()) => {}
        Err(Undelivered::Full) => node.stats.dropped(RouteDrop::SessionFull),
        Err(Undelivered::Closed) => node.stats.dropped(RouteDrop::NoSession),
    }
}

fn on_scrape(shared: &Arc<Shared>, node: &Arc<ClusterNode>, query: ScrapeQuery) {
    let shared = shared.clone();
    let node = node.clone();
    actix_web::rt::spawn(async move {
        let limit = shared.settings.tracker.max_scrape_hashes;
        let asked = ScrapeRequest::Some(query.info_hashes);
        // An owner that cannot count answers zeros rather than leave the scrape waiting.
        let files = requests::scrape_here(&shared, asked, limit)
            .await
            .unwrap_or_default();
        let reply = BusMessage::ScrapeReply(ScrapeReply {
            to: query.from,
            req_id: query.req_id,
            files,
        });
        let _ = node
            .send_when_room(query.from.instance, reply, node.reply_deadline())
            .await;
    });
}
