//! Announces: counts, interval, leaving, closing, multiplexing, takeover, TTL sweep, ids.

mod common;

use std::time::{Duration, Instant};

use common::*;
use p2p_mediastream::protocol::{
    client::{announce_text, TrackerMessage},
    InfoHash, OfferId, PeerId,
};
use serde_json::json;

#[tokio::test]
async fn counts_follow_started_update_completed_and_stopped() {
    let app = spawn_app();
    let swarm = info_hash(1);
    let mut a = app.peer().await;
    let mut b = app.peer().await;
    let mut c = app.peer().await;

    // A joins as a leecher (left > 0): it counts itself.
    a.send_text(announce_text(
        swarm,
        peer_id(1),
        Some("started"),
        Some(1000),
        &[],
    ))
    .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (0, 1));

    // B joins with left:0: a seeder.
    b.send_text(announce_text(
        swarm,
        peer_id(2),
        Some("started"),
        Some(0),
        &[],
    ))
    .await;
    let reply = b.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (1, 1));

    // A periodic update (no event) changes nothing.
    a.send_text(announce_text(swarm, peer_id(1), None, Some(500), &[]))
        .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (1, 1));

    // `update` spelled out is the same.
    a.send_text(announce_text(
        swarm,
        peer_id(1),
        Some("update"),
        Some(400),
        &[],
    ))
    .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (1, 1));

    // A completes: two seeders.
    a.send_text(announce_text(
        swarm,
        peer_id(1),
        Some("completed"),
        Some(0),
        &[],
    ))
    .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (2, 0));

    // C announces as P2P Media Loader does: no `left` at all -> a leecher.
    assert_eq!(c.announce_counts(swarm, peer_id(3), None).await, (2, 1));
    // `left: null` (JavaScript NaN) from another peer_id of C: also a leecher.
    c.send_json(json!({
        "action": "announce", "info_hash": swarm.to_wire(), "peer_id": peer_id(4).to_wire(),
        "left": null, "uploaded": 0, "downloaded": 0, "event": "started",
    }))
    .await;
    let reply = c.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (2, 2));

    // A stops: the response comes, and already excludes A.
    a.send_text(announce_text(
        swarm,
        peer_id(1),
        Some("stopped"),
        Some(0),
        &[],
    ))
    .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!(reply.info_hash, swarm.to_wire());
    assert_eq!((reply.complete, reply.incomplete), (1, 2));

    // Others see it too.
    assert_eq!(b.announce_counts(swarm, peer_id(2), None).await, (1, 2));
}

#[tokio::test]
async fn a_seeder_announcing_without_left_stays_a_seeder_and_left_above_zero_makes_it_a_leecher() {
    let app = spawn_app();
    let swarm = info_hash(2);
    let mut a = app.peer().await;
    a.send_text(announce_text(
        swarm,
        peer_id(1),
        Some("started"),
        Some(0),
        &[],
    ))
    .await;
    assert_eq!(
        (a.recv_announce_reply().await.complete),
        1,
        "left:0 is a seeder"
    );
    assert_eq!(a.announce_counts(swarm, peer_id(1), None).await, (1, 0));
    a.send_text(announce_text(swarm, peer_id(1), None, Some(7), &[]))
        .await;
    let reply = a.recv_announce_reply().await;
    assert_eq!((reply.complete, reply.incomplete), (0, 1));
}

#[tokio::test]
async fn interval_in_the_response_equals_the_configured_announce_interval() {
    let app = spawn_app_configured(|settings| {
        settings.tracker.announce_interval_secs = 77;
        settings.tracker.peer_ttl_secs = 200;
    });
    let mut a = app.peer().await;
    a.announce(info_hash(1), peer_id(1), Some("started"), &[])
        .await;
    assert_eq!(a.recv_announce_reply().await.interval, 77);
    // Also on updates and on stopped.
    a.announce(info_hash(1), peer_id(1), None, &[]).await;
    assert_eq!(a.recv_announce_reply().await.interval, 77);
    a.announce(info_hash(1), peer_id(1), Some("stopped"), &[])
        .await;
    assert_eq!(a.recv_announce_reply().await.interval, 77);
}

#[tokio::test]
async fn stopped_gets_a_response_and_removes_the_peer() {
    let app = spawn_app();
    let swarm = info_hash(3);
    let mut a = app.peer().await;
    let mut b = app.peer().await;
    assert_eq!(
        a.announce_counts(swarm, peer_id(1), Some("started")).await,
        (0, 1)
    );
    assert_eq!(
        b.announce_counts(swarm, peer_id(2), Some("started")).await,
        (0, 2)
    );
    assert_eq!(
        a.announce_counts(swarm, peer_id(1), Some("stopped")).await,
        (0, 1)
    );
    assert_eq!(b.announce_counts(swarm, peer_id(2), None).await, (0, 1));
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
    assert_eq!(
        b.announce_counts(swarm, peer_id(2), Some("stopped")).await,
        (0, 0)
    );
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (0, 0)).await;
    assert_eq!(
        a.announce_counts(swarm, peer_id(9), Some("stopped")).await,
        (0, 0)
    );
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (0, 0));
}

#[tokio::test]
async fn a_closed_socket_removes_all_its_peers_from_every_swarm_it_joined() {
    let app = spawn_app();
    let (one, two, three) = (info_hash(10), info_hash(11), info_hash(12));
    let mut leaver = app.peer().await;
    let mut stayer = app.peer().await;
    // The leaver: two peer_ids in swarm one, one in swarm two, one in swarm three.
    assert_eq!(
        leaver
            .announce_counts(one, peer_id(1), Some("started"))
            .await,
        (0, 1)
    );
    assert_eq!(
        leaver
            .announce_counts(one, peer_id(2), Some("started"))
            .await,
        (0, 2)
    );
    assert_eq!(
        leaver
            .announce_counts(two, peer_id(1), Some("started"))
            .await,
        (0, 1)
    );
    assert_eq!(
        leaver
            .announce_counts(three, peer_id(3), Some("started"))
            .await,
        (0, 1)
    );
    // The stayer is in swarms one and two.
    assert_eq!(
        stayer
            .announce_counts(one, peer_id(50), Some("started"))
            .await,
        (0, 3)
    );
    assert_eq!(
        stayer
            .announce_counts(two, peer_id(50), Some("started"))
            .await,
        (0, 2)
    );
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (6, 3));

    leaver.close().await;
    let stats = wait_for_stats(&app, |stats| peers_and_torrents(stats) == (2, 2)).await;
    assert_eq!(stats["servers"][0]["webSocketsCount"], 1);

    assert_eq!(stayer.announce_counts(one, peer_id(50), None).await, (0, 1));
    assert_eq!(stayer.announce_counts(two, peer_id(50), None).await, (0, 1));
    // Nobody is left in swarm three: it was deleted, and a stopped there sees zeros.
    assert_eq!(
        stayer
            .announce_counts(three, peer_id(50), Some("stopped"))
            .await,
        (0, 0)
    );
}

#[tokio::test]
async fn a_socket_dropped_without_a_close_frame_also_removes_its_peers() {
    let app = spawn_app();
    let swarm = info_hash(13);
    let mut leaver = app.peer().await;
    let mut stayer = app.peer().await;
    leaver
        .announce_counts(swarm, peer_id(1), Some("started"))
        .await;
    stayer
        .announce_counts(swarm, peer_id(2), Some("started"))
        .await;
    drop(leaver);
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (1, 1)).await;
    assert_eq!(
        stayer.announce_counts(swarm, peer_id(2), None).await,
        (0, 1)
    );
}

#[tokio::test]
async fn one_socket_takes_part_in_several_swarms_independently() {
    let app = spawn_app();
    let mut multi = app.peer().await;
    let mut other = app.peer().await;
    for n in 0..5 {
        assert_eq!(
            multi
                .announce_counts(info_hash(20 + n), peer_id(1), Some("started"))
                .await,
            (0, 1)
        );
    }
    assert_eq!(
        other
            .announce_counts(info_hash(22), peer_id(2), Some("started"))
            .await,
        (0, 2)
    );
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
    assert_eq!(
        multi
            .announce_counts(info_hash(20), peer_id(1), Some("stopped"))
            .await,
        (0, 0)
    );
    assert_eq!(
        multi.announce_counts(info_hash(21), peer_id(1), None).await,
        (0, 1)
    );
    assert_eq!(
        multi.announce_counts(info_hash(22), peer_id(1), None).await,
        (0, 2)
    );
    let stats = wait_for_stats(&app, |stats| peers_and_torrents(stats) == (5, 4)).await;
    assert_eq!(peers_and_torrents(&stats), (5, 4));
}

#[tokio::test]
async fn one_socket_with_two_peer_ids_in_one_swarm_counts_twice() {
    let app = spawn_app();
    let swarm = info_hash(30);
    let mut a = app.peer().await;
    assert_eq!(
        a.announce_counts(swarm, peer_id(1), Some("started")).await,
        (0, 1)
    );
    assert_eq!(
        a.announce_counts(swarm, peer_id(2), Some("started")).await,
        (0, 2)
    );
    // Re-announcing either does not add a third.
    assert_eq!(a.announce_counts(swarm, peer_id(1), None).await, (0, 2));
    // Stopping one leaves the other.
    assert_eq!(
        a.announce_counts(swarm, peer_id(1), Some("stopped")).await,
        (0, 1)
    );
    assert_eq!(a.announce_counts(swarm, peer_id(2), None).await, (0, 1));
}

#[tokio::test]
async fn a_second_socket_announcing_an_existing_peer_id_takes_it_over() {
    let app = spawn_app();
    let swarm = info_hash(40);
    let mut old = app.peer().await;
    let mut new = app.peer().await;
    let mut offerer = app.peer().await;

    assert_eq!(
        old.announce_counts(swarm, peer_id(1), Some("started"))
            .await,
        (0, 1)
    );
    // Same (info_hash, peer_id) from another socket: still one peer.
    assert_eq!(new.announce_counts(swarm, peer_id(1), None).await, (0, 1));
    assert_eq!(
        offerer
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
        (0, 2)
    );

    // Offers for peer 1 now reach the new socket only.
    let sdp = fake_sdp(150);
    offerer
        .announce(swarm, peer_id(2), None, &[(offer_id(1), sdp.as_str())])
        .await;
    offerer.recv_announce_reply().await;
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
    assert_eq!(
        old.announce_counts(swarm, peer_id(1), Some("stopped"))
            .await,
        (0, 2)
    );
    assert_eq!(
        offerer.announce_counts(swarm, peer_id(2), None).await,
        (0, 2)
    );

    // The old socket closing does not remove it either.
    old.close().await;
    wait_for_stats(&app, |stats| stats["servers"][0]["webSocketsCount"] == 2).await;
    assert_eq!(
        offerer.announce_counts(swarm, peer_id(2), None).await,
        (0, 2)
    );
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats), (2, 1));

    // And the new socket still gets offers and may stop it.
    offerer
        .announce(swarm, peer_id(2), None, &[(offer_id(2), sdp.as_str())])
        .await;
    offerer.recv_announce_reply().await;
    assert!(
        matches!(new.recv().await, TrackerMessage::Offer { offer_id: id, .. } if id == offer_id(2))
    );
    assert_eq!(
        new.announce_counts(swarm, peer_id(1), Some("stopped"))
            .await,
        (0, 1)
    );
}

#[tokio::test]
async fn an_answer_from_the_socket_an_offer_was_relayed_to_is_relayed_even_after_a_takeover() {
    let app = spawn_app();
    let swarm = info_hash(41);
    let mut old = app.peer().await;
    let mut offerer = app.peer().await;
    old.announce_counts(swarm, peer_id(1), Some("started"))
        .await;
    offerer
        .announce_counts(swarm, peer_id(2), Some("started"))
        .await;
    let sdp = fake_sdp(150);
    offerer
        .announce(swarm, peer_id(2), None, &[(offer_id(1), sdp.as_str())])
        .await;
    offerer.recv_announce_reply().await;
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
    let failure = new.recv_failure().await;
    assert_eq!(failure["action"], "announce");
    assert_eq!(failure["info_hash"], swarm.to_wire());
    offerer.expect_silence().await;
}

#[tokio::test]
async fn peers_that_stop_announcing_are_swept_after_the_peer_ttl() {
    let app = spawn_app_configured(|settings| {
        settings.tracker.peer_ttl_secs = 2;
        settings.tracker.announce_interval_secs = 1;
        settings.tracker.sweep_interval_secs = 1;
    });
    let swarm = info_hash(50);
    let mut silent = app.peer().await;
    let mut active = app.peer().await;
    assert_eq!(
        silent
            .announce_counts(swarm, peer_id(1), Some("started"))
            .await,
        (0, 1)
    );
    let joined = Instant::now();
    assert_eq!(
        active
            .announce_counts(swarm, peer_id(2), Some("started"))
            .await,
        (0, 2)
    );

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
    assert_eq!(
        silent.announce_counts(swarm, peer_id(1), None).await,
        (0, 2)
    );
}

#[tokio::test]
async fn a_swarm_whose_peers_all_went_silent_is_deleted() {
    let app = spawn_app_configured(|settings| {
        settings.tracker.peer_ttl_secs = 2;
        settings.tracker.announce_interval_secs = 1;
        settings.tracker.sweep_interval_secs = 1;
    });
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
    assert_eq!(
        silent
            .announce_counts(info_hash(51), peer_id(1), None)
            .await,
        (0, 1)
    );
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
