//! Announces: counts, interval, leaving, closing, multiplexing, takeover, TTL sweep, ids.

use std::time::{Duration, Instant};

use crate::common::*;
use p2p_mediastream::protocol::{
    client::{announce_text, TrackerMessage},
    InfoHash, OfferId, PeerId,
};
use serde_json::json;

/// Announces (no offers) with `event` and an explicit `left`; returns the response.
async fn announce_with_left(
    peer: &mut TestPeer,
    swarm: InfoHash,
    peer_id: PeerId,
    event: Option<&str>,
    left: u64,
) -> AnnounceReply {
    peer.send_text(announce_text(swarm, peer_id, event, Some(left), &[]))
        .await;
    peer.recv_announce_reply().await
}

#[tokio::test]
async fn counts_follow_started_update_completed_and_stopped() {
    let app = spawn_app();
    let swarm = info_hash(1);
    let mut sockets: [TestPeer; 3] = app.peers().await;
    let (a, b) = (0, 1);

    // Announces with `left`, in order: (socket, peer_id, event, left, expected counts).
    let steps = [
        // A joins as a leecher (left > 0): it counts itself.
        (a, 1, Some("started"), 1000, (0, 1)),
        // B joins with left:0: a seeder.
        (b, 2, Some("started"), 0, (1, 1)),
        // A periodic update (no event) changes nothing.
        (a, 1, None, 500, (1, 1)),
        // `update` spelled out is the same.
        (a, 1, Some("update"), 400, (1, 1)),
        // A completes: two seeders.
        (a, 1, Some("completed"), 0, (2, 0)),
    ];
    for (step, (socket, n, event, left, expected)) in steps.into_iter().enumerate() {
        let reply = announce_with_left(&mut sockets[socket], swarm, peer_id(n), event, left).await;
        assert_eq!(
            (reply.complete, reply.incomplete),
            expected,
            "step {step}: peer {n}, event {event:?}, left {left}"
        );
    }
    let [a, b, c] = &mut sockets;

    // C announces as P2P Media Loader does: no `left` at all -> a leecher.
    c.assert_counts(swarm, peer_id(3), None, (2, 1)).await;
    // `left: null` (JavaScript NaN) from another peer_id of C: also a leecher.
    c.send_json(json!({
        "action": "announce", "info_hash": swarm.to_wire(), "peer_id": peer_id(4).to_wire(),
        "left": null, "uploaded": 0, "downloaded": 0, "event": "started",
    }))
    .await;
    let reply = c.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (2, 2));

    // A stops: the response comes, and already excludes A.
    let reply = announce_with_left(a, swarm, peer_id(1), Some("stopped"), 0).await;
    assert_eq!(reply.info_hash, swarm.to_wire());
    assert_eq!((reply.complete, reply.incomplete), (1, 2));

    // Others see it too.
    b.assert_counts(swarm, peer_id(2), None, (1, 2)).await;
}

#[tokio::test]
async fn a_seeder_announcing_without_left_stays_a_seeder_and_left_above_zero_makes_it_a_leecher() {
    let app = spawn_app();
    let swarm = info_hash(2);
    let mut a = app.peer().await;
    let reply = announce_with_left(&mut a, swarm, peer_id(1), Some("started"), 0).await;
    assert_eq!(reply.complete, 1, "left:0 is a seeder");
    a.assert_counts(swarm, peer_id(1), None, (1, 0)).await;
    let reply = announce_with_left(&mut a, swarm, peer_id(1), None, 7).await;
    assert_eq!((reply.complete, reply.incomplete), (0, 1));
}

#[tokio::test]
async fn interval_in_the_response_equals_the_configured_announce_interval() {
    let app = spawn_app_configured(|settings| {
        settings.tracker.announce_interval_secs = 77;
        settings.tracker.peer_ttl_secs = 200;
    });
    let mut a = app.peer().await;
    // On started, on updates and on stopped.
    for event in [Some("started"), None, Some("stopped")] {
        a.announce(info_hash(1), peer_id(1), event, &[]).await;
        let interval = a.recv_announce_reply().await.interval;
        assert_eq!(interval, 77, "event {event:?}");
    }
}

#[tokio::test]
async fn stopped_gets_a_response_and_removes_the_peer() {
    let app = spawn_app();
    let swarm = info_hash(3);
    let [mut a, mut b] = app.peers().await;
    a.assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    b.assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;
    a.assert_counts(swarm, peer_id(1), Some("stopped"), (0, 1))
        .await;
    b.assert_counts(swarm, peer_id(2), None, (0, 1)).await;
    let stats = wait_for_stats(&app, |stats| peers_and_torrents(stats) == (1, 1)).await;
    assert_eq!(peers_and_torrents(&stats), (1, 1));

    // Offers from B no longer reach A.
    let sdp = fake_sdp(100);
    b.announce(swarm, peer_id(2), None, &[(offer_id(1), sdp.as_str())])
        .await;
    assert_eq!(b.recv_announce_reply().await.incomplete, 1);
    a.expect_silence().await;

    // The last peer stopping empties and deletes the swarm; a stopped for an unknown peer
    // still gets a response (zeros) and creates nothing.
    b.assert_counts(swarm, peer_id(2), Some("stopped"), (0, 0))
        .await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (0, 0)).await;
    a.assert_counts(swarm, peer_id(9), Some("stopped"), (0, 0))
        .await;
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (0, 0));
}

#[tokio::test]
async fn a_closed_socket_removes_all_its_peers_from_every_swarm_it_joined() {
    let app = spawn_app();
    let (one, two, three) = (info_hash(10), info_hash(11), info_hash(12));
    let [mut leaver, mut stayer] = app.peers().await;
    // The leaver: two peer_ids in swarm one, one in swarm two, one in swarm three.
    let started = Some("started");
    leaver.assert_counts(one, peer_id(1), started, (0, 1)).await;
    leaver.assert_counts(one, peer_id(2), started, (0, 2)).await;
    leaver.assert_counts(two, peer_id(1), started, (0, 1)).await;
    leaver
        .assert_counts(three, peer_id(3), started, (0, 1))
        .await;
    // The stayer is in swarms one and two.
    stayer
        .assert_counts(one, peer_id(50), started, (0, 3))
        .await;
    stayer
        .assert_counts(two, peer_id(50), started, (0, 2))
        .await;
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (6, 3));

    leaver.close().await;
    let stats = wait_for_stats(&app, |stats| peers_and_torrents(stats) == (2, 2)).await;
    assert_eq!(stats["servers"][0]["webSocketsCount"], 1);

    stayer.assert_counts(one, peer_id(50), None, (0, 1)).await;
    stayer.assert_counts(two, peer_id(50), None, (0, 1)).await;
    // Nobody is left in swarm three: it was deleted, and a stopped there sees zeros.
    stayer
        .assert_counts(three, peer_id(50), Some("stopped"), (0, 0))
        .await;
}

#[tokio::test]
async fn a_socket_dropped_without_a_close_frame_also_removes_its_peers() {
    let app = spawn_app();
    let swarm = info_hash(13);
    let [mut leaver, mut stayer] = app.peers().await;
    leaver
        .announce_counts(swarm, peer_id(1), Some("started"))
        .await;
    stayer
        .announce_counts(swarm, peer_id(2), Some("started"))
        .await;
    drop(leaver);
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (1, 1)).await;
    stayer.assert_counts(swarm, peer_id(2), None, (0, 1)).await;
}

#[tokio::test]
async fn one_socket_takes_part_in_several_swarms_independently() {
    let app = spawn_app();
    let [mut multi, mut other] = app.peers().await;
    for n in 0..5 {
        multi
            .assert_counts(info_hash(20 + n), peer_id(1), Some("started"), (0, 1))
            .await;
    }
    other
        .assert_counts(info_hash(22), peer_id(2), Some("started"), (0, 2))
        .await;
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (6, 5));

    // An offer in swarm 22 goes to `multi` and names swarm 22.
    let sdp = fake_sdp(200);
    other
        .announce(
            info_hash(22),
            peer_id(2),
            None,
            &[(offer_id(7), sdp.as_str())],
        )
        .await;
    other.recv_announce_reply().await;
    match multi.recv().await {
        TrackerMessage::Offer {
            info_hash: got,
            peer_id: from,
            offer_id: id,
            ..
        } => {
            assert_eq!(got, info_hash(22));
            assert_eq!(from, peer_id(2));
            assert_eq!(id, offer_id(7));
        }
        other => panic!("expected an offer, got {other:?}"),
    }
    // Stopping in one swarm leaves the others alone.
    multi
        .assert_counts(info_hash(20), peer_id(1), Some("stopped"), (0, 0))
        .await;
    multi
        .assert_counts(info_hash(21), peer_id(1), None, (0, 1))
        .await;
    multi
        .assert_counts(info_hash(22), peer_id(1), None, (0, 2))
        .await;
    let stats = wait_for_stats(&app, |stats| peers_and_torrents(stats) == (5, 4)).await;
    assert_eq!(peers_and_torrents(&stats), (5, 4));
}

#[tokio::test]
async fn one_socket_with_two_peer_ids_in_one_swarm_counts_twice() {
    let app = spawn_app();
    let swarm = info_hash(30);
    let mut a = app.peer().await;
    a.assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    a.assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;
    // Re-announcing either does not add a third.
    a.assert_counts(swarm, peer_id(1), None, (0, 2)).await;
    // Stopping one leaves the other.
    a.assert_counts(swarm, peer_id(1), Some("stopped"), (0, 1))
        .await;
    a.assert_counts(swarm, peer_id(2), None, (0, 1)).await;
}

/// `offerer`, as peer 2, announces `offer` (with `sdp`) in `swarm` and gets its response.
async fn offer_as_peer_2(offerer: &mut TestPeer, swarm: InfoHash, offer: OfferId, sdp: &str) {
    offerer
        .announce(swarm, peer_id(2), None, &[(offer, sdp)])
        .await;
    offerer.recv_announce_reply().await;
}

#[tokio::test]
async fn a_second_socket_announcing_an_existing_peer_id_takes_it_over() {
    let app = spawn_app();
    let swarm = info_hash(40);
    let [mut old, mut new, mut offerer] = app.peers().await;

    old.assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    // Same (info_hash, peer_id) from another socket: still one peer.
    new.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    offerer
        .assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;

    // Offers for peer 1 now reach the new socket only.
    let sdp = fake_sdp(150);
    offer_as_peer_2(&mut offerer, swarm, offer_id(1), &sdp).await;
    match new.recv().await {
        TrackerMessage::Offer {
            peer_id: from,
            offer_id: id,
            ..
        } => {
            assert_eq!(from, peer_id(2));
            assert_eq!(id, offer_id(1));
        }
        other => panic!("expected the offer on the new socket, got {other:?}"),
    }
    old.expect_silence().await;

    // The old socket's `stopped` for peer 1 is answered but ignored.
    old.assert_counts(swarm, peer_id(1), Some("stopped"), (0, 2))
        .await;
    offerer.assert_counts(swarm, peer_id(2), None, (0, 2)).await;

    // The old socket closing does not remove it either.
    old.close().await;
    wait_for_stats(&app, |stats| stats["servers"][0]["webSocketsCount"] == 2).await;
    offerer.assert_counts(swarm, peer_id(2), None, (0, 2)).await;
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (2, 1));

    // And the new socket still gets offers and may stop it.
    offer_as_peer_2(&mut offerer, swarm, offer_id(2), &sdp).await;
    assert!(
        matches!(new.recv().await, TrackerMessage::Offer { offer_id: id, .. } if id == offer_id(2))
    );
    new.assert_counts(swarm, peer_id(1), Some("stopped"), (0, 1))
        .await;
}

#[tokio::test]
async fn an_answer_from_the_socket_an_offer_was_relayed_to_is_relayed_even_after_a_takeover() {
    let app = spawn_app();
    let swarm = info_hash(41);
    let [mut old, mut offerer] = app.peers().await;
    old.announce_counts(swarm, peer_id(1), Some("started"))
        .await;
    offerer
        .announce_counts(swarm, peer_id(2), Some("started"))
        .await;
    offer_as_peer_2(&mut offerer, swarm, offer_id(1), &fake_sdp(150)).await;
    assert!(matches!(old.recv().await, TrackerMessage::Offer { .. }));

    // Peer 1 moves to a new socket; the old socket then answers the offer it received.
    let mut new = app.peer().await;
    new.announce_counts(swarm, peer_id(1), None).await;
    old.answer(swarm, peer_id(1), peer_id(2), offer_id(1), "answer")
        .await;
    // The offer was relayed to the old socket, and that socket answers it: the WebRTC
    // connection it completes is genuine, so the answer is relayed. Answers are bound to
    // the connection the offer went to, never to whoever holds the peer_id now.
    match offerer.recv().await {
        TrackerMessage::Answer {
            peer_id: from,
            offer_id: answered,
            ..
        } => {
            assert_eq!(from, peer_id(1));
            assert_eq!(answered, offer_id(1));
        }
        other => panic!("expected the answer, got {other:?}"),
    }
    // The new socket cannot answer an offer that was never relayed to it.
    new.answer(swarm, peer_id(1), peer_id(2), offer_id(1), "answer")
        .await;
    new.recv_failure_in(swarm).await;
    offerer.expect_silence().await;
}

/// Settings in which a peer that stops announcing is swept after 2 s.
fn short_ttl(settings: &mut p2p_mediastream::Settings) {
    settings.tracker.peer_ttl_secs = 2;
    settings.tracker.announce_interval_secs = 1;
    settings.tracker.sweep_interval_secs = 1;
}

#[tokio::test]
async fn peers_that_stop_announcing_are_swept_after_the_peer_ttl() {
    let app = spawn_app_configured(short_ttl);
    let swarm = info_hash(50);
    let [mut silent, mut active] = app.peers().await;
    silent
        .assert_counts(swarm, peer_id(1), Some("started"), (0, 1))
        .await;
    let joined = Instant::now();
    active
        .assert_counts(swarm, peer_id(2), Some("started"), (0, 2))
        .await;

    // `active` keeps announcing every 500 ms; `silent` never again (its socket stays open).
    let deadline = joined + Duration::from_secs(8);
    let swept_after = loop {
        let (_, incomplete) = active.announce_counts(swarm, peer_id(2), None).await;
        if incomplete == 1 {
            break joined.elapsed();
        }
        assert_eq!(incomplete, 2);
        assert!(Instant::now() < deadline, "silent peer was never swept");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        swept_after >= Duration::from_millis(1900),
        "swept after {swept_after:?}, before the 2 s TTL"
    );
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (1, 1));
    // The silent socket itself is still open and may come back (a new joiner).
    assert_eq!(stats["servers"][0]["webSocketsCount"], 2);
    silent.assert_counts(swarm, peer_id(1), None, (0, 2)).await;
}

#[tokio::test]
async fn a_swarm_whose_peers_all_went_silent_is_deleted() {
    let app = spawn_app_configured(short_ttl);
    let mut silent = app.peer().await;
    silent
        .announce_counts(info_hash(51), peer_id(1), Some("started"))
        .await;
    silent
        .announce_counts(info_hash(52), peer_id(1), Some("started"))
        .await;
    assert_eq!(peers_and_torrents(&app.stats().await), (2, 2));
    let stats = wait_for_stats_within(&app, Duration::from_secs(8), |stats| {
        peers_and_torrents(stats) == (0, 0)
    })
    .await;
    assert_eq!(stats["servers"][0]["webSocketsCount"], 1);
    // Re-joining after the sweep works (the session's cached swarm is gone).
    silent
        .assert_counts(info_hash(51), peer_id(1), None, (0, 1))
        .await;
}

/// An announce written by hand, so the JSON escapes are exactly ours.
fn hand_written_announce(info_hash_json: &str, peer_id_json: &str) -> String {
    format!(
        r#"{{"action":"announce","info_hash":"{info_hash_json}","peer_id":"{peer_id_json}","event":"started","uploaded":0,"downloaded":0}}"#
    )
}

#[tokio::test]
async fn ids_are_echoed_byte_exact_for_every_byte_value() {
    let app = spawn_app();
    let mut a = app.peer().await;
    // 13 info_hashes cover the bytes 0x00..=0xFF.
    for start in (0u16..=255).step_by(20) {
        let bytes: [u8; 20] = std::array::from_fn(|i| ((start + i as u16) % 256) as u8);
        let hash = InfoHash(bytes);
        a.send_text(announce_text(hash, peer_id(1), Some("started"), None, &[]))
            .await;
        let reply = a.recv_announce_reply().await;
        assert_eq!(reply.info_hash, hash.to_wire(), "bytes from {start}");
        let echoed: Vec<u32> = reply.info_hash.chars().map(u32::from).collect();
        let sent: Vec<u32> = bytes.iter().map(|&byte| u32::from(byte)).collect();
        assert_eq!(echoed, sent);
    }
}

#[tokio::test]
async fn escaped_control_characters_in_ids_are_echoed_as_the_same_characters() {
    let app = spawn_app();
    let mut a = app.peer().await;
    let mut b = app.peer().await;
    // Escapes for 0x00, 0x01, 0x1F, quote, backslash, newline, tab, 0x7F, 0x80 (escaped),
    // 0xFF (escaped) and literal latin-1 characters (UTF-8 on the wire).
    let info_hash_json = r#"\u0000\u0001\u001f\"\\\n\t\u007f\u0080\u00ffé\u00e9ÿabcdefg"#;
    let expected: String = serde_json::from_str(&format!("\"{info_hash_json}\"")).expect("json");
    assert_eq!(expected.chars().count(), 20);
    let peer_json = r#"-PM0203-\u0000\u00ff\r\u0010abcdefgh"#;
    let expected_peer: String = serde_json::from_str(&format!("\"{peer_json}\"")).expect("json");
    assert_eq!(expected_peer.chars().count(), 20);

    a.send_text(hand_written_announce(info_hash_json, peer_json))
        .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!(reply.info_hash, expected);

    // The peer_id and an offer_id with control bytes come back byte-exact in a relay.
    let hash = InfoHash::from_wire(&expected).expect("valid id");
    b.announce(hash, peer_id(2), Some("started"), &[]).await;
    b.recv_announce_reply().await;
    let offer = format!(
        r#"{{"action":"announce","info_hash":"{info_hash_json}","peer_id":"{peer_json}","numwant":1,"offers":[{{"offer_id":"\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u00fe\u00ff\"\\","offer":{{"type":"offer","sdp":"v=0"}}}}]}}"#
    );
    a.send_text(offer).await;
    assert_eq!(a.recv_announce_reply().await.info_hash, expected);
    let relayed = b.recv_json().await;
    assert_eq!(relayed["info_hash"].as_str(), Some(expected.as_str()));
    assert_eq!(relayed["peer_id"].as_str(), Some(expected_peer.as_str()));
    let expected_offer_id: String = (0u8..16)
        .chain([0xFE, 0xFF, b'"', b'\\'])
        .map(char::from)
        .collect();
    assert_eq!(
        relayed["offer_id"].as_str(),
        Some(expected_offer_id.as_str())
    );
    assert_eq!(relayed["offer"], json!({"type": "offer", "sdp": "v=0"}));

    // And the answer routes back to the binary peer_id.
    let offer_id = OfferId::from_wire(&expected_offer_id).expect("valid id");
    let offerer = PeerId::from_wire(&expected_peer).expect("valid id");
    b.answer(hash, peer_id(2), offerer, offer_id, "answer sdp")
        .await;
    let answer = a.recv_json().await;
    assert_eq!(
        answer["offer_id"].as_str(),
        Some(expected_offer_id.as_str())
    );
    assert_eq!(answer["info_hash"].as_str(), Some(expected.as_str()));
    assert_eq!(
        answer["answer"],
        json!({"type": "answer", "sdp": "answer sdp"})
    );
}
