//! Offer fan-out and answer routing, including forged answers.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use p2p_mediastream::protocol::{InfoHash, OfferId, PeerId};
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
    let offers: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "offer": {"type": "offer", "sdp": sdp_for(base + i)},
                "offer_id": offer_id(base + i).to_wire(),
            })
        })
        .collect();
    let mut body = json!({
        "action": "announce",
        "info_hash": info_hash.to_wire(),
        "peer_id": peer_id.to_wire(),
        "uploaded": 0,
        "downloaded": 0,
        "offers": offers,
    });
    if let Some(numwant) = numwant {
        body["numwant"] = numwant;
    }
    body
}

fn sdp_for(n: u32) -> String {
    format!("v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\n")
}

/// `count` sockets, each with one peer `peer_id(first + i)` in `swarm`.
async fn join_peers(app: &TestApp, swarm: InfoHash, first: u32, count: u32) -> Vec<TestPeer> {
    let mut peers = Vec::new();
    for i in 0..count {
        let mut peer = app.peer().await;
        peer.announce(swarm, peer_id(first + i), Some("started"), &[])
            .await;
        peer.recv_announce_reply().await;
        peers.push(peer);
    }
    peers
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

#[tokio::test]
async fn fan_out_is_capped_by_numwant() {
    let app = spawn_app();
    let swarm = info_hash(1);
    let mut others = join_peers(&app, swarm, 10, 6).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            5,
            1,
            Some(json!(2)),
        ))
        .await;
    assert_eq!(sender.recv_announce_reply().await.incomplete, 7);
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 2);
    sender.expect_silence().await;
}

#[tokio::test]
async fn fan_out_with_numwant_zero_relays_nothing() {
    let app = spawn_app();
    let swarm = info_hash(2);
    let mut others = join_peers(&app, swarm, 10, 3).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            3,
            1,
            Some(json!(0)),
        ))
        .await;
    assert_eq!(sender.recv_announce_reply().await.incomplete, 4);
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 0);
}

#[tokio::test]
async fn fan_out_without_numwant_is_capped_by_the_offers_sent() {
    let app = spawn_app();
    let swarm = info_hash(3);
    let mut others = join_peers(&app, swarm, 10, 6).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(swarm, peer_id(1), 4, 1, None))
        .await;
    sender.recv_announce_reply().await;
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 4);
}

#[tokio::test]
async fn fan_out_is_capped_by_max_offers() {
    let app = spawn_app_configured(|settings| settings.tracker.max_offers = 3);
    let swarm = info_hash(4);
    let mut others = join_peers(&app, swarm, 10, 6).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            6,
            1,
            Some(json!(6)),
        ))
        .await;
    sender.recv_announce_reply().await;
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 3);
}

#[tokio::test]
async fn fan_out_is_capped_by_swarm_size_and_reaches_every_other_peer_once() {
    let app = spawn_app();
    let swarm = info_hash(5);
    let mut others = join_peers(&app, swarm, 10, 3).await;
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            8,
            1,
            Some(json!(8)),
        ))
        .await;
    assert_eq!(sender.recv_announce_reply().await.incomplete, 4);
    let received = collect_offers(&mut others, swarm, peer_id(1)).await;
    assert_eq!(assert_distinct(&received), 3);
    assert!(received.iter().all(|ids| ids.len() == 1), "{received:?}");
    sender.expect_silence().await;
}

#[tokio::test]
async fn a_lone_peer_s_offers_go_nowhere() {
    let app = spawn_app();
    let mut sender = app.peer().await;
    sender
        .send_json(announce_with_offers(
            info_hash(6),
            peer_id(1),
            5,
            1,
            Some(json!(5)),
        ))
        .await;
    assert_eq!(sender.recv_announce_reply().await.incomplete, 1);
    sender.expect_silence().await;
}

#[tokio::test]
async fn offers_never_go_back_to_the_sender_nor_to_another_peer_id_of_its_connection() {
    let app = spawn_app();
    let swarm = info_hash(7);
    let mut sender = app.peer().await;
    // The sender's socket holds three peer_ids in the swarm.
    for n in 1..=3 {
        sender
            .announce(swarm, peer_id(n), Some("started"), &[])
            .await;
        sender.recv_announce_reply().await;
    }
    let mut others = join_peers(&app, swarm, 10, 2).await;
    for round in 0..10 {
        sender
            .send_json(announce_with_offers(
                swarm,
                peer_id(1),
                5,
                round * 10 + 1,
                Some(json!(5)),
            ))
            .await;
        assert_eq!(sender.recv_announce_reply().await.incomplete, 5);
        let received = collect_offers(&mut others, swarm, peer_id(1)).await;
        assert_eq!(assert_distinct(&received), 2, "round {round}");
        sender.expect_silence().await;
    }
}

#[tokio::test]
async fn offers_are_spread_over_random_peers_not_a_fixed_window() {
    let app = spawn_app();
    let swarm = info_hash(8);
    let mut others = join_peers(&app, swarm, 10, 6).await;
    let mut sender = app.peer().await;
    let mut reached: HashMap<usize, usize> = HashMap::new();
    const ROUNDS: u32 = 30;
    for round in 0..ROUNDS {
        sender
            .send_json(announce_with_offers(
                swarm,
                peer_id(1),
                1,
                round + 1,
                Some(json!(1)),
            ))
            .await;
        sender.recv_announce_reply().await;
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
    offerer
        .announce(swarm, peer_id(1), Some("started"), &[])
        .await;
    offerer.recv_announce_reply().await;
    let mut others = join_peers(&app, swarm, 10, 3).await;
    offerer
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            3,
            1,
            Some(json!(3)),
        ))
        .await;
    offerer.recv_announce_reply().await;
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

/// A swarm with an offerer (peer 1) and an answerer (peer 2) that received `offer_id(1)`.
struct Pair {
    offerer: TestPeer,
    answerer: TestPeer,
    swarm: InfoHash,
}

async fn pair_with_pending_offer(app: &TestApp, swarm: InfoHash) -> Pair {
    let mut offerer = app.peer().await;
    offerer
        .announce(swarm, peer_id(1), Some("started"), &[])
        .await;
    offerer.recv_announce_reply().await;
    let mut answerer = app.peer().await;
    answerer
        .announce(swarm, peer_id(2), Some("started"), &[])
        .await;
    answerer.recv_announce_reply().await;
    offerer
        .send_json(announce_with_offers(
            swarm,
            peer_id(1),
            1,
            1,
            Some(json!(1)),
        ))
        .await;
    offerer.recv_announce_reply().await;
    let offer = answerer.recv_json().await;
    assert_eq!(
        offer["offer_id"].as_str(),
        Some(offer_id(1).to_wire().as_str())
    );
    Pair {
        offerer,
        answerer,
        swarm,
    }
}

/// The failure for a refused answer: action "announce", the swarm's info_hash; then the
/// socket still works (a valid announce gets its response).
async fn expect_refused(peer: &mut TestPeer, swarm: InfoHash, peer_id: PeerId) {
    let failure = peer.recv_failure().await;
    assert_eq!(failure["action"], "announce", "{failure}");
    assert_eq!(
        failure["info_hash"].as_str(),
        Some(swarm.to_wire().as_str()),
        "{failure}"
    );
    peer.announce(swarm, peer_id, None, &[]).await;
    let reply = peer.recv_announce_reply().await;
    assert_eq!(reply.info_hash, swarm.to_wire());
}

#[tokio::test]
async fn an_answer_with_an_unknown_offer_id_is_refused_and_the_socket_stays_usable() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(20)).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(999), "forged")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    offerer.expect_silence().await;
    // The real answer still goes through.
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "real")
        .await;
    assert_eq!(offerer.recv_json().await["answer"]["sdp"], "real");
}

#[tokio::test]
async fn an_answer_to_the_wrong_to_peer_id_is_refused() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(21)).await;
    // A third peer that exists in the swarm, but did not make the offer.
    let mut third = app.peer().await;
    third
        .announce(swarm, peer_id(3), Some("started"), &[])
        .await;
    third.recv_announce_reply().await;
    answerer
        .answer(swarm, peer_id(2), peer_id(3), offer_id(1), "misrouted")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    third.expect_silence().await;
    offerer.expect_silence().await;
    // And to a peer_id that is not in the swarm at all.
    answerer
        .answer(swarm, peer_id(2), peer_id(77), offer_id(1), "nobody")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    offerer.expect_silence().await;
}

#[tokio::test]
async fn an_answer_from_another_connection_than_the_one_the_offer_was_relayed_to_is_refused() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(22)).await;
    // A forger in the same swarm answers in the name of peer 2 (whose id it saw nowhere,
    // but ids are guessable).
    let mut forger = app.peer().await;
    forger
        .announce(swarm, peer_id(3), Some("started"), &[])
        .await;
    forger.recv_announce_reply().await;
    forger
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "forged")
        .await;
    expect_refused(&mut forger, swarm, peer_id(3)).await;
    // Also when it answers with its own peer_id.
    forger
        .answer(swarm, peer_id(3), peer_id(1), offer_id(1), "forged")
        .await;
    expect_refused(&mut forger, swarm, peer_id(3)).await;
    offerer.expect_silence().await;
    // The forgery did not use up the offer: the real answerer still gets through.
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "real")
        .await;
    let answer = offerer.recv_json().await;
    assert_eq!(answer["answer"]["sdp"], "real");
    assert_eq!(
        answer["peer_id"].as_str(),
        Some(peer_id(2).to_wire().as_str())
    );
}

#[tokio::test]
async fn an_answer_in_a_swarm_the_socket_never_joined_is_refused() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        answerer: _answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(23)).await;
    let mut outsider = app.peer().await;
    outsider
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "forged")
        .await;
    let failure = outsider.recv_failure().await;
    assert_eq!(failure["action"], "announce");
    assert_eq!(
        failure["info_hash"].as_str(),
        Some(swarm.to_wire().as_str())
    );
    offerer.expect_silence().await;
    // The outsider's socket still works, in that swarm too.
    outsider
        .announce(swarm, peer_id(5), Some("started"), &[])
        .await;
    assert_eq!(outsider.recv_announce_reply().await.incomplete, 3);
}

#[tokio::test]
async fn a_second_answer_to_the_same_offer_is_refused() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(24)).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "first")
        .await;
    assert_eq!(offerer.recv_json().await["answer"]["sdp"], "first");
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "second")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    offerer.expect_silence().await;
}

#[tokio::test]
async fn an_answer_to_an_offer_whose_offerer_stopped_is_refused() {
    let app = spawn_app();
    let Pair {
        mut offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(25)).await;
    offerer
        .announce(swarm, peer_id(1), Some("stopped"), &[])
        .await;
    assert_eq!(offerer.recv_announce_reply().await.incomplete, 1);
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "late")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
    offerer.expect_silence().await;
}

#[tokio::test]
async fn an_answer_to_an_offer_whose_offerer_disconnected_is_refused() {
    let app = spawn_app();
    let Pair {
        offerer,
        mut answerer,
        swarm,
    } = pair_with_pending_offer(&app, info_hash(26)).await;
    offerer.close().await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (1, 1)).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(1), "late")
        .await;
    expect_refused(&mut answerer, swarm, peer_id(2)).await;
}

#[tokio::test]
async fn offers_sent_with_stopped_or_completed_are_not_relayed() {
    let app = spawn_app();
    let swarm = info_hash(27);
    let mut others = join_peers(&app, swarm, 10, 2).await;
    let mut sender = app.peer().await;
    sender
        .announce(swarm, peer_id(1), Some("started"), &[])
        .await;
    sender.recv_announce_reply().await;
    for event in ["completed", "stopped"] {
        let mut body = announce_with_offers(swarm, peer_id(1), 2, 1, Some(json!(2)));
        body["event"] = json!(event);
        sender.send_json(body).await;
        sender.recv_announce_reply().await;
        let received = collect_offers(&mut others, swarm, peer_id(1)).await;
        assert_eq!(assert_distinct(&received), 0, "event {event}");
    }
}
