//! Three peers exchange offers and answers through the tracker.

mod common;

use common::*;
use p2p_mediastream::protocol::client::TrackerMessage;

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
