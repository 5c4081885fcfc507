//! Offers, their SDPs and `numwant`: caps on what is relayed, and refusals that relay
//! nothing.

use p2p_mediastream::protocol::{client::TrackerMessage, PeerId};
use serde_json::json;

use super::{
    answers::{assert_answer_refused, relayed_offer},
    assert_refused,
};
use crate::common::*;

/// How many offers each peer received until quiet; fails on any other frame.
async fn offers_received(peers: &mut [TestPeer], from: PeerId) -> Vec<usize> {
    let mut counts = Vec::new();
    for peer in peers.iter_mut() {
        let frames = peer.drain_json().await;
        for frame in &frames {
            assert!(frame.get("offer").is_some(), "unexpected frame: {frame}");
            assert_eq!(frame["peer_id"], from.to_wire());
        }
        counts.push(frames.len());
    }
    counts
}

/// `receivers` peers (100 and up) wait in swarm 1; the abuser, peer 1 on its own socket,
/// sends `text`, an announce with offers that must be answered. Returns the answer, how
/// many offers each receiver got, and the abuser's socket (for further checks).
async fn announce_offers(
    app: &TestApp,
    receivers: u32,
    text: String,
) -> (AnnounceReply, Vec<usize>, TestPeer) {
    let swarm = info_hash(1);
    let mut peers = joined_peers(app.addr, swarm, 100..100 + receivers, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    abuser.send_text(text).await;
    let reply = abuser.recv_announce_reply().await;
    let received = offers_received(&mut peers, peer_id(1)).await;
    (reply, received, abuser)
}

/// Two peers wait in swarm 1 beside an honest pair; the abuser, peer 1 on its own socket,
/// sends `value`, an announce with offers, which must be refused with `reason`: no offer
/// is relayed, the abuser is not registered, and the honest pair does not notice.
pub(super) async fn offer_announce_is_refused(
    app: TestApp,
    value: serde_json::Value,
    reason: &str,
) {
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(app.addr, swarm, 100..102, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    abuser.send_json(value).await;
    assert_refused(&mut abuser, Some(swarm), reason).await;
    assert_eq!(offers_received(&mut receivers, peer_id(1)).await, [0, 0]);
    assert_eq!(scrape_counts(&app, swarm).await, (0, 2), "not registered");
    honest.assert_unaffected().await;
}

/// Exactly `total` offers were relayed, each to a different receiver.
fn assert_relayed_to_distinct_receivers(received: &[usize], total: usize) {
    assert_eq!(received.iter().sum::<usize>(), total, "{received:?}");
    assert!(
        received.iter().all(|&n| n <= 1),
        "distinct receivers: {received:?}"
    );
}

#[tokio::test]
async fn offers_above_max_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| settings.tracker.max_offers = 3);
    let mut honest = HonestPair::join(&app).await;
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 12, 200),
        Some(json!(12)),
    );
    let (reply, received, mut abuser) = announce_offers(&app, 6, value.to_string()).await;
    assert_eq!((reply.complete, reply.incomplete), (0, 7));
    abuser.expect_silence().await;
    assert_relayed_to_distinct_receivers(&received, 3);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_thousand_offers_relay_only_max_offers() {
    let app = spawn_app_configured(|settings| {
        settings.ws.max_frame_bytes = 128 * 1024;
        settings.ws.max_message_bytes = 128 * 1024;
    });
    let mut honest = HonestPair::join(&app).await;
    let text = announce_value(info_hash(1), peer_id(1), &offers(1, 1000, 1), None).to_string();
    assert!(text.len() < 128 * 1024, "fits one frame: {}", text.len());
    let (reply, received, mut abuser) = announce_offers(&app, 12, text).await;
    assert_eq!(reply.incomplete, 13);
    abuser.expect_silence().await;
    assert_relayed_to_distinct_receivers(&received, 10);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn offer_sdp_above_the_limit_is_refused_and_nothing_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 1025),
        Some(json!(2)),
    );
    offer_announce_is_refused(app, value, "offer.sdp is 1025 bytes, the limit is 1024").await;
}

#[tokio::test]
async fn offer_sdp_exactly_at_the_limit_is_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let swarm = info_hash(1);
    let mut receivers = joined_peers(app.addr, swarm, 100..101, Some("started"), 0).await;
    let mut abuser = app.peer().await;
    let value = announce_value(swarm, peer_id(1), &offers(1, 1, 1024), Some(json!(1)));
    abuser.send_json(value).await;
    assert_eq!(abuser.recv_announce_reply().await.incomplete, 2);
    match receivers[0].recv().await {
        TrackerMessage::Offer { sdp, .. } => assert_eq!(escaped_len(&sdp), 1024),
        other => panic!("expected the offer, got {other:?}"),
    }
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn answer_sdp_above_the_limit_is_refused_and_not_relayed() {
    let app = spawn_app_configured(|settings| settings.tracker.max_sdp_bytes = 1024);
    let mut honest = HonestPair::join(&app).await;
    let (mut offerer, mut answerer, swarm, offer) = relayed_offer(&app).await;
    answerer
        .answer(swarm, peer_id(2), peer_id(1), offer, &fake_sdp(1025))
        .await;
    let reason = "answer.sdp is 1025 bytes, the limit is 1024";
    assert_answer_refused(&mut answerer, &mut offerer, swarm, reason).await;
    honest.assert_unaffected().await;
}

/// numwant 1e300 saturates: the offers sent are the only cap.
#[tokio::test]
async fn numwant_1e300_is_capped_by_the_offers_sent() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let text = announce_value(info_hash(1), peer_id(1), &offers(1, 2, 50), Some(json!(0)))
        .to_string()
        .replace("\"numwant\":0", "\"numwant\":1e300");
    assert!(text.contains("1e300"));
    let (reply, received, _abuser) = announce_offers(&app, 3, text).await;
    assert_eq!(reply.incomplete, 4);
    assert_eq!(received.iter().sum::<usize>(), 2, "{received:?}");
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn negative_numwant_is_refused_and_nothing_is_relayed() {
    let value = announce_value(info_hash(1), peer_id(1), &offers(1, 2, 50), Some(json!(-1)));
    offer_announce_is_refused(spawn_app(), value, "numwant must not be negative").await;
}

/// numwant 0.5 rounds down to 0: the peer is registered, no offer is relayed.
#[tokio::test]
async fn fractional_numwant_rounds_down() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 50),
        Some(json!(0.5)),
    );
    let (reply, received, _abuser) = announce_offers(&app, 2, value.to_string()).await;
    assert_eq!(reply.incomplete, 3);
    assert_eq!(received, [0, 0]);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn numwant_as_a_string_is_refused() {
    let value = announce_value(
        info_hash(1),
        peer_id(1),
        &offers(1, 2, 50),
        Some(json!("5")),
    );
    offer_announce_is_refused(spawn_app(), value, "invalid message").await;
}
