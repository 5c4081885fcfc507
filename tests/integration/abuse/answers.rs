//! Forged, misrouted and replayed answers, and a peer_id claimed by two sockets.

use p2p_mediastream::protocol::{client::TrackerMessage, InfoHash, OfferId, PeerId};

use super::assert_refused;
use crate::common::*;

/// `offerer` (as `from`) announces one offer in `swarm` and gets its response.
async fn make_offer(offerer: &mut TestPeer, swarm: InfoHash, from: PeerId, offer: OfferId) {
    offerer
        .announce(swarm, from, None, &[(offer, "v=0 offer")])
        .await;
    offerer.recv_announce_reply().await;
}

/// Peer 1 (first socket) made offer 1 in swarm 1 and it reached peer 2 (second socket).
pub(super) async fn relayed_offer(app: &TestApp) -> (TestPeer, TestPeer, InfoHash, OfferId) {
    let swarm = info_hash(1);
    let mut offerer = app.peer().await;
    let mut answerer = app.peer().await;
    offerer
        .assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    answerer
        .assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;
    let offer = offer_id(1);
    make_offer(&mut offerer, swarm, peer_id(1), offer).await;
    match answerer.recv().await {
        TrackerMessage::Offer { offer_id, .. } => assert_eq!(offer_id, offer),
        other => panic!("expected the offer, got {other:?}"),
    }
    (offerer, answerer, swarm, offer)
}

/// Peer 2 answers `offer` to peer 1 in `swarm` from `answerer`, and it reaches `offerer`.
pub(super) async fn assert_answer_relayed(
    answerer: &mut TestPeer,
    offerer: &mut TestPeer,
    swarm: InfoHash,
    offer: OfferId,
) {
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    match offerer.recv().await {
        TrackerMessage::Answer {
            info_hash,
            peer_id: from,
            offer_id,
            sdp,
        } => {
            assert_eq!((info_hash, from, offer_id), (swarm, peer_id(2), offer));
            assert_eq!(sdp, "v=0 answer");
        }
        other => panic!("expected the answer, got {other:?}"),
    }
}

/// The answer just sent on `answerer` is refused with `reason` (for `swarm`), and nothing
/// reaches `offerer`.
pub(super) async fn assert_answer_refused(
    answerer: &mut TestPeer,
    offerer: &mut TestPeer,
    swarm: InfoHash,
    reason: &str,
) {
    assert_refused(answerer, Some(swarm), reason).await;
    offerer.expect_silence().await;
}

const UNKNOWN_OFFER: &str = "no offer with that offer_id from to_peer_id was relayed to you";
const NOT_RELAYED_TO_YOU: &str = "that offer was relayed to another connection";

#[tokio::test]
async fn answer_to_an_unknown_offer_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer_id(999), "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, swarm, UNKNOWN_OFFER).await;
    // The socket still works, and the real answer still goes through.
    answerer.assert_usable(swarm, peer_id(2)).await;
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_in_a_swarm_the_socket_never_joined_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, _, offer) = relayed_offer(&app).await;
    let elsewhere = info_hash(2);
    answerer
        .answer(elsewhere, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, elsewhere, UNKNOWN_OFFER).await;
    assert_eq!(
        scrape_counts(&app, elsewhere).await,
        (0, 0),
        "no swarm created"
    );
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_routed_through_another_joined_swarm_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    // Both are also in swarm 2, but the offer was made in swarm 1.
    let other = info_hash(2);
    offerer.announce_counts(other, peer_id(1), None).await;
    answerer.announce_counts(other, peer_id(2), None).await;
    answerer
        .answer(other, peer_id(2), peer_id(1), offer, "v=0 answer")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, other, UNKNOWN_OFFER).await;
    // The right swarm still routes it.
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_with_a_forged_to_peer_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let mut victim = app.peer().await;
    victim.announce_counts(swarm, peer_id(3), None).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(3), offer, "v=0 forged")
        .await;
    assert_refused(&mut answerer, Some(swarm), UNKNOWN_OFFER).await;
    answerer.assert_usable(swarm, peer_id(2)).await;
    victim.expect_silence().await;
    offerer.expect_silence().await;
    // Nor to a peer_id that is not in the swarm at all.
    answerer
        .answer(swarm, peer_id(2), peer_id(77), offer, "v=0 nobody")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, swarm, UNKNOWN_OFFER).await;
    answerer.assert_usable(swarm, peer_id(2)).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_a_connection_the_offer_was_not_relayed_to_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    let mut intruder = app.peer().await;
    intruder.announce_counts(swarm, peer_id(3), None).await;
    // The intruder claims to be peer 2 in its answer...
    intruder
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 stolen")
        .await;
    assert_answer_refused(&mut intruder, &mut offerer, swarm, NOT_RELAYED_TO_YOU).await;
    intruder.assert_usable(swarm, peer_id(3)).await;
    // ...or answers as itself.
    intruder
        .answer(swarm, peer_id(3), peer_id(1), offer, "v=0 stolen")
        .await;
    intruder.recv_failure_in(swarm).await;
    offerer.expect_silence().await;
    intruder.assert_usable(swarm, peer_id(3)).await;
    // The forgeries did not use up the offer: the real answerer still gets through.
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_replayed_answer_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    assert_answer_relayed(&mut answerer, &mut offerer, swarm, offer).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, "v=0 answer again")
        .await;
    assert_answer_refused(&mut answerer, &mut offerer, swarm, UNKNOWN_OFFER).await;
    answerer.assert_usable(swarm, peer_id(2)).await;
    honest.assert_unaffected().await;
}

// A peer_id claimed by two sockets: the last writer wins; `stopped` and answers only
// from the owner.

/// Peer 1 in swarm 1, claimed by two sockets in turn (`first`, then `second`), and peer 2
/// (`offerer`), whose offer 1 then reached the claimed peer_id's new owner. Returns the
/// sockets [first, second, offerer] and the (complete, incomplete) each join saw.
async fn claimed_twice(app: &TestApp) -> ([TestPeer; 3], [(u64, u64); 3]) {
    let (swarm, claimed) = (info_hash(1), peer_id(1));
    let [mut first, mut second, mut offerer] = app.peers().await;
    let joined = [
        first.announce_counts(swarm, claimed, Some("started")).await,
        second
            .announce_counts(swarm, claimed, Some("started"))
            .await,
        offerer
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
    ];
    make_offer(&mut offerer, swarm, peer_id(2), offer_id(1)).await;
    assert!(matches!(second.recv().await, TrackerMessage::Offer { .. }));
    ([first, second, offerer], joined)
}

#[tokio::test]
async fn peer_id_claimed_by_two_sockets_last_writer_wins() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (swarm, claimed, offer) = (info_hash(1), peer_id(1), offer_id(1));
    let ([mut first, mut second, mut offerer], joined) = claimed_twice(&app).await;
    // The second claim replaced the first: still one peer until peer 2 joined.
    assert_eq!(joined, [(0, 1), (0, 1), (0, 2)], "counts seen by the joins");
    // The offer went to the claimed peer_id's new owner only.
    first.expect_silence().await;

    // The old owner cannot stop it...
    first
        .assert_counts(swarm, claimed, Some("stopped"), (0, 2))
        .await;
    // ...nor remove it by closing.
    first.close().await;
    wait_connections(&app, 4).await;
    offerer.assert_counts(swarm, peer_id(2), None, (0, 2)).await;

    // The owner answers, and its `stopped` counts.
    second
        .answer(swarm, claimed, peer_id(2), offer, "v=0 answer")
        .await;
    assert!(matches!(
        offerer.recv().await,
        TrackerMessage::Answer { .. }
    ));
    second
        .assert_counts(swarm, claimed, Some("stopped"), (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_from_the_previous_owner_of_a_peer_id_is_refused() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let (swarm, claimed, offer) = (info_hash(1), peer_id(1), offer_id(1));
    let ([mut first, _second, mut offerer], _) = claimed_twice(&app).await;
    first
        .answer(swarm, claimed, peer_id(2), offer, "v=0 spoofed")
        .await;
    assert_answer_refused(&mut first, &mut offerer, swarm, NOT_RELAYED_TO_YOU).await;
    honest.assert_unaffected().await;
}
