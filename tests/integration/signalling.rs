//! Offer fan-out and answer routing, and answers that can no longer be routed (forged,
//! misrouted and replayed answers: `abuse::answers`).

use std::collections::{HashMap, HashSet};

use crate::common::*;
use p2p_mediastream::protocol::{client::TrackerMessage, InfoHash, OfferId, PeerId};
use serde_json::{json, Value};

/// An announce with `n` offers (offer ids `offer_id(base + i)`, SDP naming the offer) and
/// an explicit `numwant` (`None` = the field is absent).
fn announce_with_offers(
    info_hash: InfoHash,
    peer_id: PeerId,
    n: u32,
    base: u32,
    numwant: Option<Value>,
) -> Value {
    let offers: Vec<(OfferId, String)> = (base..base + n)
        .map(|n| (offer_id(n), sdp_for(n)))
        .collect();
    announce_value(info_hash, peer_id, &offers, numwant)
}

fn sdp_for(n: u32) -> String {
    format!("v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\n")
}

/// Every offer each peer received (after the sender got its response), checked to be
/// well-formed relays from `from` in `swarm`. Returns, per receiver index, the offer ids.
async fn collect_offers(
    receivers: &mut [TestPeer],
    swarm: InfoHash,
    from: PeerId,
) -> Vec<Vec<OfferId>> {
    let drained =
        futures_util::future::join_all(receivers.iter_mut().map(|peer| peer.drain_json())).await;
    let mut all = Vec::new();
    for frames in drained {
        let mut ids = Vec::new();
        for frame in frames {
            assert_eq!(frame["action"], "announce", "{frame}");
            assert_eq!(frame["info_hash"].as_str(), Some(swarm.to_wire().as_str()));
            assert_eq!(frame["peer_id"].as_str(), Some(from.to_wire().as_str()));
            let id = OfferId::from_wire(frame["offer_id"].as_str().expect("offer_id"))
                .expect("20-byte offer_id");
            // The SDP relayed is the one sent with that offer_id.
            let n = (1..=1000)
                .find(|n| offer_id(*n) == id)
                .expect("an offer id we sent");
            assert_eq!(frame["offer"], json!({"type": "offer", "sdp": sdp_for(n)}));
            assert_eq!(
                frame.as_object().map(|map| map.len()),
                Some(5),
                "offer relays carry exactly action, info_hash, peer_id, offer_id, offer: {frame}"
            );
            ids.push(id);
        }
        all.push(ids);
    }
    all
}

fn assert_distinct(received: &[Vec<OfferId>]) -> usize {
    let mut seen = HashSet::new();
    for ids in received {
        assert!(
            ids.len() <= 1,
            "a peer got more than one offer: {received:?}"
        );
        for id in ids {
            assert!(seen.insert(*id), "offer {id:?} relayed twice");
        }
    }
    seen.len()
}

/// What a fan-out did: the sender's socket and announce response, and the offer ids each
/// other peer received (the other peers' sockets stay open until it is dropped).
struct FanOut {
    sender: TestPeer,
    reply: AnnounceReply,
    received: Vec<Vec<OfferId>>,
    _others: Vec<TestPeer>,
}

/// `others` peers (10 and up) wait in `swarm`; then peer 1, on its own socket, announces
/// `offers` offers with `numwant` (`None`: absent).
async fn fan_out(
    app: &TestApp,
    swarm: InfoHash,
    others: u32,
    offers: u32,
    numwant: Option<Value>,
) -> FanOut {
    let mut others = joined_peers(app.addr, swarm, 10..10 + others, Some("started"), 0).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(swarm, peer_id(1), offers, 1, numwant))
        .await;
    let reply = sender.recv_announce_reply().await;
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    FanOut {
        sender,
        reply,
        received,
        _others: others,
    }
}

#[tokio::test]
async fn fan_out_is_capped_by_numwant() {
    let app = spawn_app();
    let mut fan_out = fan_out(&app, info_hash(1), 6, 5, Some(json!(2))).await;
    assert_eq!(fan_out.reply.incomplete, 7);
    assert_eq!(assert_distinct(&fan_out.received), 2);
    fan_out.sender.expect_silence().await;
}

#[tokio::test]
async fn fan_out_with_numwant_zero_relays_nothing() {
    let app = spawn_app();
    let fan_out = fan_out(&app, info_hash(2), 3, 3, Some(json!(0))).await;
    assert_eq!(fan_out.reply.incomplete, 4);
    assert_eq!(assert_distinct(&fan_out.received), 0);
}

#[tokio::test]
async fn fan_out_without_numwant_is_capped_by_the_offers_sent() {
    let app = spawn_app();
    let fan_out = fan_out(&app, info_hash(3), 6, 4, None).await;
    assert_eq!(assert_distinct(&fan_out.received), 4);
}

#[tokio::test]
async fn fan_out_is_capped_by_max_offers() {
    let app = spawn_app_configured(|settings| settings.tracker.max_offers = 3);
    let fan_out = fan_out(&app, info_hash(4), 6, 6, Some(json!(6))).await;
    assert_eq!(assert_distinct(&fan_out.received), 3);
}

#[tokio::test]
async fn fan_out_is_capped_by_swarm_size_and_reaches_every_other_peer_once() {
    let app = spawn_app();
    let mut fan_out = fan_out(&app, info_hash(5), 3, 8, Some(json!(8))).await;
    assert_eq!(fan_out.reply.incomplete, 4);
    let received = &fan_out.received;
    assert_eq!(assert_distinct(received), 3);
    assert!(received.iter().all(|ids| ids.len() == 1), "{received:?}");
    fan_out.sender.expect_silence().await;
}

#[tokio::test]
async fn a_lone_peer_s_offers_go_nowhere() {
    let app = spawn_app();
    let mut fan_out = fan_out(&app, info_hash(6), 0, 5, Some(json!(5))).await;
    assert_eq!(fan_out.reply.incomplete, 1);
    fan_out.sender.expect_silence().await;
}

/// Peer 1 announces `n` offers (ids from `base`) with `numwant` in `swarm` from `sender`;
/// returns the announce response.
async fn offer_as_peer_1(
    sender: &mut TestPeer,
    swarm: InfoHash,
    n: u32,
    base: u32,
    numwant: Option<Value>,
) -> AnnounceReply {
    sender
        .send_json(announce_with_offers(swarm, peer_id(1), n, base, numwant))
        .await;
    sender.recv_announce_reply().await
}

#[tokio::test]
async fn offers_never_go_back_to_the_sender_nor_to_another_peer_id_of_its_connection() {
    let app = spawn_app();
    let swarm = info_hash(7);
    let mut sender = app.peer().await;
    // The sender's socket holds three peer_ids in the swarm.
    for n in 1..=3 {
        sender.join_swarm(swarm, peer_id(n)).await;
    }
    let mut others = joined_peers(app.addr, swarm, 10..12, Some("started"), 3).await;
    for round in 0..10 {
        let reply = offer_as_peer_1(&mut sender, swarm, 5, round * 10 + 1, Some(json!(5))).await;
        assert_eq!(reply.incomplete, 5);
        let received = collect_offers(&mut others, swarm, peer_id(1)).await;
        assert_eq!(assert_distinct(&received), 2, "round {round}");
        sender.expect_silence().await;
    }
}

#[tokio::test]
async fn offers_are_spread_over_random_peers_not_a_fixed_window() {
    let app = spawn_app();
    let swarm = info_hash(8);
    let mut others = joined_peers(app.addr, swarm, 10..16, Some("started"), 0).await;
    let mut sender = app.peer().await;
    let mut reached: HashMap<usize, usize> = HashMap::new();
    const ROUNDS: u32 = 30;
    for round in 0..ROUNDS {
        offer_as_peer_1(&mut sender, swarm, 1, round + 1, Some(json!(1))).await;
        // Whoever gets the offer first; a second offer anywhere is caught below.
        let (offer, index, _) = futures_util::future::select_all(
            others.iter_mut().map(|peer| Box::pin(peer.recv_json())),
        )
        .await;
        assert_eq!(
            offer["offer_id"].as_str(),
            Some(offer_id(round + 1).to_wire().as_str())
        );
        *reached.entry(index).or_default() += 1;
    }
    // Exactly one offer per round was relayed.
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 0, "extra offers: {received:?}");
    assert_eq!(reached.values().sum::<usize>(), ROUNDS as usize);
    // 30 uniform draws over 6 peers: reaching 3 or fewer has probability < 1e-5.
    assert!(reached.len() >= 4, "offers reached only {reached:?}");
}

#[tokio::test]
async fn an_answer_is_routed_to_the_offerer_with_the_answerer_s_peer_id_and_the_offer_id() {
    let app = spawn_app();
    let swarm = info_hash(9);
    let mut offerer = app.peer().await;
    offerer.join_swarm(swarm, peer_id(1)).await;
    let mut others = joined_peers(app.addr, swarm, 10..13, Some("started"), 1).await;
    offer_as_peer_1(&mut offerer, swarm, 3, 1, Some(json!(3))).await;
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 3);
    for (index, other) in others.iter_mut().enumerate() {
        let id = received[index][0];
        let me = peer_id(10 + index as u32);
        let sdp = format!("answer from {index}");
        other.answer(swarm, me, peer_id(1), id, &sdp).await;
        let answer = offerer.recv_json().await;
        assert_eq!(
            answer,
            json!({
                "action": "announce",
                "info_hash": swarm.to_wire(),
                "peer_id": me.to_wire(),
                "offer_id": id.to_wire(),
                "answer": {"type": "answer", "sdp": sdp},
            })
        );
        // The answerer gets no reply of its own.
        other.expect_silence().await;
    }
}

// ---------------------------------------------------------------------------------------
// Refused answers: each starts from an offerer (peer 1) whose offer 1 reached an answerer
// (peer 2), and checks that a bad answer neither reaches the offerer nor breaks a socket.
// ---------------------------------------------------------------------------------------

/// In `swarm`: the offerer (peer 1) and the answerer (peer 2) on their own sockets; the
/// answerer has received the offerer's `offer_id(1)`. Returns (offerer, answerer).
async fn pending_offer(app: &TestApp, swarm: InfoHash) -> (TestPeer, TestPeer) {
    let mut offerer = app.peer().await;
    offerer.join_swarm(swarm, peer_id(1)).await;
    let mut answerer = app.peer().await;
    answerer.join_swarm(swarm, peer_id(2)).await;
    offer_as_peer_1(&mut offerer, swarm, 1, 1, Some(json!(1))).await;
    let offer = answerer.recv_json().await;
    assert_eq!(
        offer["offer_id"].as_str(),
        Some(offer_id(1).to_wire().as_str())
    );
    (offerer, answerer)
}

/// An answer in peer 2's name to peer 1's `offer_id(1)` in `swarm`, sent from `socket`
/// (the answerer itself, or another socket posing as it).
async fn answer_as_peer_2(socket: &mut TestPeer, swarm: InfoHash, sdp: &str) {
    socket
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), sdp)
        .await;
}

/// The failure for a refused answer: action "announce", the swarm's info_hash; then the
/// socket still works (a valid announce gets its response).
async fn expect_refused(peer: &mut TestPeer, swarm: InfoHash, peer_id: PeerId) {
    peer.recv_failure_in(swarm).await;
    peer.assert_usable(swarm, peer_id).await;
}

#[tokio::test]
async fn an_answer_from_a_socket_that_joined_no_swarm_is_refused() {
    let app = spawn_app();
    let swarm = info_hash(23);
    let (mut offerer, _answerer) = pending_offer(&app, swarm).await;
    let mut outsider = app.peer().await;
    answer_as_peer_2(&mut outsider, swarm, "forged").await;
    outsider.recv_failure_in(swarm).await;
    offerer.expect_silence().await;
    // The outsider's socket still works, in that swarm too.
    assert_eq!(outsider.join_swarm(swarm, peer_id(5)).await.incomplete, 3);
}

#[tokio::test]
async fn an_answer_to_an_offer_whose_offerer_stopped_is_refused() {
    let app = spawn_app();
    let swarm = info_hash(25);
    let (mut offerer, mut answerer) = pending_offer(&app, swarm).await;
    offerer
        .announce(swarm, peer_id(1), Some("stopped"), &[])
        .await;
    assert_eq!(offerer.recv_announce_reply().await.incomplete, 1);
    answer_as_peer_2(&mut answerer, swarm, "late").await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    offerer.expect_silence().await;
}

#[tokio::test]
async fn an_answer_to_an_offer_whose_offerer_disconnected_is_refused() {
    let app = spawn_app();
    let swarm = info_hash(26);
    let (offerer, mut answerer) = pending_offer(&app, swarm).await;
    offerer.close().await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (1, 1)).await;
    answer_as_peer_2(&mut answerer, swarm, "late").await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
}

#[tokio::test]
async fn offers_sent_with_stopped_or_completed_are_not_relayed() {
    let app = spawn_app();
    let swarm = info_hash(27);
    let mut others = joined_peers(app.addr, swarm, 10..12, Some("started"), 0).await;
    let mut sender = app.peer().await;
    sender.join_swarm(swarm, peer_id(1)).await;
    for event in ["completed", "stopped"] {
        let mut body = announce_with_offers(swarm, peer_id(1), 2, 1, Some(json!(2)));
        body["event"] = json!(event);
        sender.send_json(body).await;
        sender.recv_announce_reply().await;
        let received = collect_offers(&mut others, swarm, peer_id(1)).await;
        assert_eq!(assert_distinct(&received), 0, "event {event}");
    }
}

#[tokio::test]
async fn three_peers_exchange_offers_and_answers() {
    let app = spawn_app();
    let swarm = info_hash(1);
    let mut peers = Vec::new();
    for n in 0..3 {
        let mut peer = app.peer().await;
        peer.announce(swarm, peer_id(n), Some("started"), &[]).await;
        match peer.recv().await {
            TrackerMessage::AnnounceResponse { counts, .. } => {
                assert_eq!(counts.incomplete, n + 1)
            }
            other => panic!("expected announce response, got {other:?}"),
        }
        peers.push(peer);
    }
    let sdp = fake_sdp(400);
    let offers = [(offer_id(1), sdp.as_str()), (offer_id(2), sdp.as_str())];
    peers[0].announce(swarm, peer_id(0), None, &offers).await;
    assert!(matches!(
        peers[0].recv().await,
        TrackerMessage::AnnounceResponse { .. }
    ));
    for n in 1..3 {
        let (offer_peer, offer) = match peers[n as usize].recv().await {
            TrackerMessage::Offer {
                peer_id,
                offer_id,
                sdp: got,
                ..
            } => {
                assert_eq!(got, sdp);
                (peer_id, offer_id)
            }
            other => panic!("expected an offer, got {other:?}"),
        };
        assert_eq!(offer_peer, peer_id(0));
        peers[n as usize]
            .answer(swarm, peer_id(n), peer_id(0), offer, "answer")
            .await;
        match peers[0].recv().await {
            TrackerMessage::Answer {
                peer_id: from,
                offer_id: answered,
                ..
            } => {
                assert_eq!(from, peer_id(n));
                assert_eq!(answered, offer);
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}
