//! Faults: a swarm that panics (fault injection: an info_hash starting with "PANIC"),
//! abrupt disconnects, and the real binary's SIGTERM shutdown and restart.
//!
//! Built with the `fault-injection` feature only (see main.rs).

use std::time::{Duration, Instant};

use crate::common::*;
use p2p_mediastream::{
    protocol::{client::announce_text, InfoHash},
    Settings,
};

fn panicking_swarm(n: u8) -> InfoHash {
    let mut bytes = *b"PANIC000000000000000";
    bytes[19] = b'0' + n;
    InfoHash(bytes)
}

async fn swarm_panics(app: &TestApp) -> f64 {
    metric_value(&app.metrics_text().await, "tracker_swarm_panics_total")
}

const UNAVAILABLE: &str = "swarm temporarily unavailable; retry";

// ---------------------------------------------------------------------------------------
// A panicking swarm
// ---------------------------------------------------------------------------------------

/// A server with one worker, so one shard (a panicking swarm shares its thread with every
/// other swarm and every session), further changed by `change`, and an honest pair signalling on it.
async fn one_shard(change: impl FnOnce(&mut Settings)) -> (TestApp, HonestPair) {
    let app = spawn_app_configured(|settings| {
        settings.server.workers = 1;
        change(settings);
    });
    HonestPair::join_app(app).await
}

/// `victim`, as peer 1, announces (`event`) in the panicking swarm `n`; returns the
/// failure it gets instead of a response.
async fn announce_into_panic(
    victim: &mut TestPeer,
    n: u8,
    event: Option<&str>,
) -> serde_json::Value {
    victim
        .announce(panicking_swarm(n), peer_id(1), event, &[])
        .await;
    victim.recv_failure().await
}

#[tokio::test]
async fn a_panicking_swarm_answers_with_a_failure_and_the_process_keeps_working() {
    let (app, mut honest) = one_shard(|_| {}).await;
    assert_eq!(swarm_panics(&app).await, 0.0);

    let mut victim = app.peer().await;
    let failure = announce_into_panic(&mut victim, 1, Some("started")).await;
    assert_eq!(failure["failure reason"], UNAVAILABLE, "{failure}");
    assert_eq!(failure["action"], "announce");
    assert_eq!(failure["info_hash"], panicking_swarm(1).to_wire());

    // Each of the session's bounded attempts met a fresh incarnation that panicked.
    let panics = swarm_panics(&app).await;
    assert!((1.0..=3.0).contains(&panics), "panics: {panics}");
    eprintln!("one announce made {panics} swarm panics");

    // The honest swarm is intact (the panicking swarm's leftovers: see
    // `a_panicking_swarm_leaves_no_empty_swarm_behind`).
    let stats = app.stats().await;
    assert_eq!(peers_and_torrents(&stats).0, 2);
    assert_eq!(stats["seedersCount"], 0);
    // The same socket keeps working, in another swarm on the same shard.
    victim
        .assert_counts(info_hash(1), peer_id(1), None, (0, 1))
        .await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn repeated_panics_are_contained_and_counted() {
    let (app, mut honest) = one_shard(|_| {}).await;
    let mut victim = app.peer().await;
    let mut last = 0.0;
    for round in 0..5u8 {
        let failure = announce_into_panic(&mut victim, round % 2, None).await;
        assert_eq!(failure["failure reason"], UNAVAILABLE, "{failure}");
        let panics = swarm_panics(&app).await;
        assert!(panics > last, "round {round}: the panic was not counted");
        last = panics;
        honest.assert_unaffected().await;
    }
    assert!(app
        .metrics_text()
        .await
        .contains("tracker_swarm_panics_total"));
    assert_eq!(peers_and_torrents(&app.stats().await).0, 2);
}

/// After its bounded retries the session has asked the shard for yet another incarnation
/// of the panicking swarm, which it never uses: an empty swarm that lingers (counted in
/// torrentsCount and answered by scrapes) until the next sweep.
#[tokio::test]
async fn a_panicking_swarm_leaves_no_empty_swarm_behind() {
    only_the_honest_swarm_remains_after_a_panic(|_| {}).await;
}

/// The leftover above is bounded: the sweep closes the empty swarm.
#[tokio::test]
async fn the_sweep_closes_what_a_panicking_swarm_left_behind() {
    only_the_honest_swarm_remains_after_a_panic(|settings| {
        settings.tracker.sweep_interval_secs = 1;
    })
    .await;
}

/// On one shard (changed by `change`), a victim's announce in a panicking swarm fails;
/// then the stats count only the honest pair's two peers in its one swarm, and the pair
/// does not notice.
async fn only_the_honest_swarm_remains_after_a_panic(change: impl FnOnce(&mut Settings)) {
    let (app, mut honest) = one_shard(change).await;
    let mut victim = app.peer().await;
    announce_into_panic(&mut victim, 1, None).await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (2, 1)).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_panicking_swarm_does_not_disturb_a_busy_swarm_on_the_same_shard() {
    let (app, mut honest) = one_shard(|_| {}).await;
    // A third swarm with three peers, mid-signalling.
    let busy = info_hash(1);
    let mut peers = Vec::new();
    for n in 0..3u32 {
        let mut peer = app.peer().await;
        peer.assert_counts(
            busy,
            peer_id(10 + n),
            Some("started"),
            (0, u64::from(n) + 1),
        )
        .await;
        peers.push(peer);
    }
    let offer = offer_id(1);
    peers[0]
        .announce(busy, peer_id(10), None, &[(offer, "v=0 busy offer")])
        .await;
    peers[0].recv_announce_reply().await;

    let mut victim = app.peer().await;
    announce_into_panic(&mut victim, 1, None).await;

    // The pending offer survived: whoever got it can still answer.
    let mut answered = false;
    for index in 1..3 {
        let frames = peers[index].drain_json().await;
        if let Some(frame) = frames.iter().find(|frame| frame.get("offer").is_some()) {
            assert_eq!(frame["offer_id"], offer.to_wire());
            let me = peer_id(10 + index as u32);
            peers[index]
                .answer(busy, me, peer_id(10), offer, "v=0 a")
                .await;
            let answer = peers[0].recv_json().await;
            assert_eq!(answer["offer_id"], offer.to_wire(), "{answer}");
            answered = true;
        }
    }
    assert!(answered, "the offer reached one of the other peers");
    peers[2]
        .assert_counts(busy, peer_id(12), None, (0, 3))
        .await;
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// Abrupt disconnects
// ---------------------------------------------------------------------------------------

/// A raw socket on which peer `n` joined `swarm` (`started`) for each `(swarm, n)` of
/// `joins`, one answered announce at a time.
async fn raw_socket_joined(app: &TestApp, joins: &[(InfoHash, u32)]) -> RawWs {
    let mut raw = RawWs::connect(app.addr).await;
    for &(swarm, n) in joins {
        raw.send_text(&announce_text(
            swarm,
            peer_id(n),
            Some("started"),
            None,
            &[],
        ))
        .await;
        raw.recv_json().await;
    }
    raw
}

/// Closes `raw` with a TCP reset (SO_LINGER 0), not a FIN.
fn reset(raw: RawWs) {
    socket2::SockRef::from(&raw.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(raw);
}

/// A server with an honest pair, and peer 1 joined to swarm 1 on its own socket: it stays
/// while the peers of another socket go.
async fn with_a_staying_peer() -> (TestApp, HonestPair, TestPeer) {
    let app = spawn_app();
    let honest = HonestPair::join(&app).await;
    let mut staying = app.peer().await;
    staying
        .announce_counts(info_hash(1), peer_id(1), Some("started"))
        .await;
    (app, honest, staying)
}

#[tokio::test]
async fn a_dropped_tcp_stream_without_a_close_frame_removes_its_peers_at_once() {
    let (app, mut honest, mut staying) = with_a_staying_peer().await;
    let swarm = info_hash(1);
    // One socket with two peer_ids in this swarm and one in another.
    let raw = raw_socket_joined(&app, &[(swarm, 2), (swarm, 3), (info_hash(2), 2)]).await;
    staying.assert_counts(swarm, peer_id(1), None, (0, 3)).await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (6, 3)).await;

    drop(raw); // FIN, no close frame.
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (3, 2)).await;
    staying.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_reset_tcp_connection_removes_its_peers_at_once() {
    let (app, mut honest, mut staying) = with_a_staying_peer().await;
    let swarm = info_hash(1);
    let raw = raw_socket_joined(&app, &[(swarm, 2)]).await;
    wait_for_stats(&app, |stats| peers_and_torrents(stats) == (4, 2)).await;

    reset(raw);
    wait_for_stats(&app, |stats| {
        peers_and_torrents(stats) == (3, 2) && websockets(stats) == 3
    })
    .await;
    staying.assert_counts(swarm, peer_id(1), None, (0, 1)).await;
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_a_fragmented_message_removes_its_peers() {
    let (app, mut honest) = HonestPair::join_app(spawn_app()).await;
    let mut raw = raw_socket_joined(&app, &[(info_hash(1), 2)]).await;
    raw.send_frame(false, opcode::TEXT, b"{\"action\":")
        .await
        .expect("send");
    reset(raw);
    wait_for_stats(&app, |stats| {
        peers_and_torrents(stats) == (2, 1) && websockets(stats) == 2
    })
    .await;
    honest.assert_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// The binary: SIGTERM closes every socket with 1001 and exits 0; a restart rebuilds.
// ---------------------------------------------------------------------------------------

fn start_binary() -> BinaryServer {
    BinaryServer::start(&[("TRACKER__SERVER__WORKERS", "2")])
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_exits_0_and_a_restart_rebuilds() {
    let mut first = start_binary();
    let mut peers = joined_peers(first.addr, info_hash(1), 0..3, Some("started"), 0).await;

    let sent = Instant::now();
    first.signal("TERM");
    for peer in &mut peers {
        assert_eq!(peer.expect_close().await, Some(1001));
    }
    let exit = wait_exit(
        &mut first.child,
        Duration::from_secs(5).saturating_sub(sent.elapsed()),
    )
    .await
    .unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    let took = sent.elapsed();
    eprintln!("exited {exit:?} {took:?} after SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    drop(peers);

    // A new process (on a new port): the clients reconnect and re-announce without
    // `started`, as the reference client does after a reconnect.
    let second = start_binary();
    assert_ne!(second.addr, first.addr);
    let mut peers = joined_peers(second.addr, info_hash(1), 0..3, None, 0).await;
    assert_eq!(
        peers[0]
            .announce_counts(info_hash(1), peer_id(0), None)
            .await,
        (0, 3)
    );
    let stats: serde_json::Value = reqwest::get(format!("http://{}/stats.json", second.addr))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(peers_and_torrents(&stats), (3, 1));
    drop(peers);
    drop(second);
}
